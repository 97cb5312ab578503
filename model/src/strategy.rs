//! proptest strategies for valid model values and whole specs (feature `proptest`), shared by
//! the property tests of the model, the nodes' appliers and control: any value these generate
//! is valid, so every node must accept it.

use std::net::{IpAddr, Ipv4Addr};

use proptest::collection::{btree_set, vec};
use proptest::prelude::*;

use crate::key::PrivateKey;
use crate::limits::{EdgeLimits, EdgeLimitsFields, RouteLimits};
use crate::name::{HostPattern, Name};
use crate::net::{AccessRules, Endpoint, Network, Overlay, TcpListen, TunnelIp};
use crate::number::{BodyLimit, Bounded, Burst, Port, Rate};
use crate::peer::{EdgePeer, Keepalive, OriginPeer};
use crate::route::{HttpRoute, ProxyProtocol, TcpRoute};
use crate::service::{HealthPath, Protocol, Service};
use crate::spec::{EdgeSpec, OriginSpec};
use crate::tunnel::{Mtu, StallSecs, TcpBuffer, TunnelOptions, WindowLimits, MAX_MTU, MIN_MTU};

/// A node or service name.
pub fn name() -> impl Strategy<Value = Name> {
    "[a-z][a-z0-9_-]{0,12}".prop_filter_map("a name", |s| Name::new(&s).ok())
}

/// An exact host name or a wildcard.
pub fn host_pattern() -> impl Strategy<Value = HostPattern> {
    (any::<bool>(), vec("[a-z][a-z0-9-]{0,6}[a-z0-9]", 2..4)).prop_filter_map(
        "a host",
        |(wildcard, labels)| {
            let host = labels.join(".");
            let text = if wildcard { format!("*.{host}") } else { host };
            HostPattern::new(&text).ok()
        },
    )
}

/// A port.
pub fn port() -> impl Strategy<Value = Port> {
    (1u16..=65535).prop_map(|p| Port::new(p).expect("1-65535"))
}

/// A client network, IPv4 or IPv6.
pub fn network() -> impl Strategy<Value = Network> {
    prop_oneof![
        (any::<u32>(), 0u8..=32).prop_map(|(ip, len)| Network::parse(&format!(
            "{}/{len}",
            Ipv4Addr::from(ip)
        ))
        .expect("an IPv4 CIDR")),
        (any::<u128>(), 0u8..=128).prop_map(|(ip, len)| Network::parse(&format!(
            "{}/{len}",
            std::net::Ipv6Addr::from(ip)
        ))
        .expect("an IPv6 CIDR")),
    ]
}

/// Allow and deny lists.
pub fn access_rules() -> impl Strategy<Value = AccessRules> {
    (vec(network(), 0..3), vec(network(), 0..3))
        .prop_map(|(allow, deny)| AccessRules { allow, deny })
}

/// A request rate, sometimes 0 (off).
pub fn rate() -> impl Strategy<Value = Rate> {
    prop_oneof![
        Just(Rate::new(0.0).expect("0")),
        (1u32..=100_000).prop_map(|r| Rate::new(f64::from(r) / 4.0).expect("in range")),
    ]
}

/// A route's limits (a burst only next to a non-zero rate).
pub fn route_limits() -> impl Strategy<Value = RouteLimits> {
    (
        proptest::option::of(rate()),
        proptest::option::of(1u32..=10_000),
        proptest::option::of(0u64..=1 << 40),
        access_rules(),
    )
        .prop_map(|(rate, burst, body, access)| {
            let burst = burst
                .filter(|_| rate.is_some_and(|r| !r.is_off()))
                .map(|b| Burst::new(b).expect("1 or more"));
            RouteLimits::new(rate, burst, body.map(BodyLimit::new), access)
                .expect("burst only with a rate")
        })
}

fn bounded<const MIN: u64, const MAX: u64>() -> impl Strategy<Value = Option<Bounded<MIN, MAX>>> {
    proptest::option::of((MIN..=MAX).prop_map(|v| Bounded::new(v).expect("in range")))
}

/// An edge's `[limits]`.
pub fn edge_limits() -> impl Strategy<Value = EdgeLimits> {
    (
        (
            proptest::option::of(rate()),
            proptest::option::of(1u32..=1000),
            bounded(),
            bounded(),
            bounded(),
            bounded(),
            bounded(),
        ),
        (
            bounded(),
            proptest::option::of(any::<u32>().prop_map(|b| BodyLimit::new(u64::from(b)))),
            bounded(),
            bounded(),
            bounded(),
            bounded(),
            bounded(),
        ),
        (
            bounded(),
            bounded(),
            bounded(),
            bounded(),
            bounded(),
            bounded(),
        ),
    )
        .prop_map(
            |((rate, burst, v4, v6, tracked, per_client, max), rest, transfer)| {
                let (headers, body, idle, streams, pending, local_errors, keepalive) = rest;
                let (
                    send_timeout,
                    send_min_rate,
                    client_body_timeout,
                    client_body_min_rate,
                    lingering_time,
                    lingering_timeout,
                ) = transfer;
                let burst = burst
                    .filter(|_| rate.is_some_and(|r| !r.is_off()))
                    .map(|b| Burst::new(b).expect("1 or more"));
                EdgeLimits::try_from(EdgeLimitsFields {
                    rate,
                    burst,
                    ipv4_prefix: v4,
                    ipv6_prefix: v6,
                    max_tracked_clients: tracked,
                    connections_per_client: per_client,
                    max_connections: max,
                    max_headers: headers,
                    max_body_bytes: body,
                    idle_timeout: idle,
                    h2_max_concurrent_streams: streams,
                    h2_max_pending_reset_streams: pending,
                    h2_max_local_error_reset_streams: local_errors,
                    h2_keepalive_interval: keepalive,
                    send_timeout,
                    send_min_rate,
                    client_body_timeout,
                    client_body_min_rate,
                    lingering_time,
                    lingering_timeout,
                })
                .expect("valid fields")
            },
        )
}

/// Tunnel settings inside the default overlay.
pub fn tunnel_options() -> impl Strategy<Value = TunnelOptions> {
    (
        MIN_MTU..=MAX_MTU,
        4096u32..=1 << 20,
        4096u32..=1 << 20,
        0u64..=86_400,
    )
        .prop_map(|(mtu, buffer, min, stall)| TunnelOptions {
            mtu: Mtu::new(mtu).expect("in range"),
            tcp_buffer: TcpBuffer::new(buffer).expect("in range"),
            overlay: Overlay::default(),
            window: WindowLimits {
                min_tcp_buffer: TcpBuffer::new(min.min(buffer)).expect("in range"),
                stall_timeout: StallSecs::new(stall).expect("in range"),
                ..WindowLimits::default()
            },
        })
}

/// A WireGuard key from 32 arbitrary bytes.
pub fn private_key() -> impl Strategy<Value = PrivateKey> {
    any::<[u8; 32]>().prop_map(|bytes| {
        use base64::Engine as _;
        PrivateKey::from_base64(&base64::engine::general_purpose::STANDARD.encode(bytes))
            .expect("32 bytes")
    })
}

/// A valid [`EdgeSpec`]: 1-4 origins with their own /24s, routes and TCP routes that name
/// them (TCP routes on ports `tcp_ports`), optional limits and tunnel settings, no
/// certificates (making them is slow; the certificate parser has its own tests).
pub fn edge_spec(tcp_ports: std::ops::Range<u16>) -> impl Strategy<Value = EdgeSpec> {
    let origins = btree_set(name(), 1..4).prop_flat_map(|names| {
        let count = names.len();
        (
            Just(names.into_iter().collect::<Vec<_>>()),
            btree_set(1u8..=254, count),
            vec(
                (10u8..=254, private_key(), proptest::option::of(0u16..120)),
                count,
            ),
        )
    });
    origins
        .prop_flat_map(move |(names, subnets, extras)| {
            let origins: Vec<OriginPeer> = names
                .iter()
                .zip(subnets)
                .zip(extras)
                .map(|((name, x), (host, key, keepalive))| OriginPeer {
                    name: name.clone(),
                    public_key: key.public_key(),
                    endpoint: None,
                    address: TunnelIp::new(Ipv4Addr::new(10, 100, x, host)).expect("not special"),
                    origin_address: TunnelIp::new(Ipv4Addr::new(10, 100, x, 1))
                        .expect("not special"),
                    keepalive: Keepalive::new(keepalive.unwrap_or(0)).expect("u16"),
                })
                .collect();
            let count = origins.len();
            let routes = btree_set(host_pattern(), 0..6).prop_flat_map(move |hosts| {
                let n = hosts.len();
                (
                    Just(hosts.into_iter().collect::<Vec<_>>()),
                    vec((0..count, port(), route_limits()), n),
                )
            });
            let tcp = btree_set(tcp_ports.clone(), 0..3).prop_flat_map(move |ports| {
                let n = ports.len();
                (
                    Just(ports.into_iter().collect::<Vec<_>>()),
                    vec((0..count, port(), any::<bool>(), access_rules()), n),
                )
            });
            (
                Just(origins),
                routes,
                tcp,
                proptest::option::of(edge_limits()),
                proptest::option::of(tunnel_options()),
            )
        })
        .prop_map(|(origins, (hosts, routes), (ports, tcp), limits, tunnel)| {
            let routes = hosts
                .into_iter()
                .zip(routes)
                .map(|(host, (origin, port, limits))| HttpRoute {
                    host,
                    aliases: Vec::new(),
                    origin: origins[origin].name.clone(),
                    port,
                    limits,
                })
                .collect();
            let tcp_routes = ports
                .into_iter()
                .zip(tcp)
                .map(|(listen, (origin, port, v2, access))| TcpRoute {
                    listen: TcpListen {
                        ip: None,
                        port: listen,
                    },
                    origin: origins[origin].name.clone(),
                    port,
                    proxy_protocol: if v2 {
                        ProxyProtocol::V2
                    } else {
                        ProxyProtocol::None
                    },
                    access,
                })
                .collect();
            EdgeSpec {
                origins,
                routes,
                tcp_routes,
                certificates: Vec::new(),
                limits,
                tunnel,
            }
        })
}

/// An endpoint: a loopback address, `localhost`, or a name under `.invalid` (which never
/// resolves, and is answered without asking a resolver, so tests stay on the machine).
pub fn endpoint() -> impl Strategy<Value = Endpoint> {
    prop_oneof![
        (1u16..=65535, 1u8..=254).prop_map(|(p, last)| Endpoint::Addr(
            (IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), p).into()
        )),
        (1u16..=65535).prop_map(|p| Endpoint::parse(&format!("localhost:{p}")).expect("valid")),
        ("[a-z][a-z0-9]{0,8}", 1u16..=65535).prop_filter_map("a host:port", |(host, p)| {
            Endpoint::parse(&format!("{host}.invalid:{p}")).ok()
        }),
    ]
}

/// A valid [`OriginSpec`]: an address `10.100.X.1`, 0-3 edges in its /24, 0-5 services.
pub fn origin_spec() -> impl Strategy<Value = OriginSpec> {
    (
        1u8..=254,
        btree_set(name(), 0..4),
        btree_set(name(), 0..6),
        proptest::option::of(tunnel_options()),
    )
        .prop_flat_map(|(x, edge_names, service_names, tunnel)| {
            let edges = edge_names.len();
            let services = service_names.len();
            (
                Just(x),
                Just(edge_names.into_iter().collect::<Vec<_>>()),
                btree_set(10u8..=254, edges),
                vec(
                    (private_key(), proptest::option::of(endpoint()), 0u16..60),
                    edges,
                ),
                Just(service_names.into_iter().collect::<Vec<_>>()),
                btree_set(port(), services),
                vec((endpoint(), any::<bool>(), any::<bool>()), services),
                Just(tunnel),
            )
        })
        .prop_map(
            |(x, edge_names, hosts, edge_extras, service_names, ports, services, tunnel)| {
                let edges = edge_names
                    .into_iter()
                    .zip(hosts)
                    .zip(edge_extras)
                    .map(|((name, host), (key, endpoint, keepalive))| EdgePeer {
                        name,
                        public_key: key.public_key(),
                        endpoint,
                        address: TunnelIp::new(Ipv4Addr::new(10, 100, x, host))
                            .expect("not special"),
                        keepalive: Keepalive::new(keepalive).expect("u16"),
                    })
                    .collect();
                let services = service_names
                    .into_iter()
                    .zip(ports)
                    .zip(services)
                    .map(|((name, port), (local, tcp, health))| Service {
                        name,
                        port,
                        local,
                        protocol: if tcp { Protocol::Tcp } else { Protocol::Http },
                        health_path: health.then(|| HealthPath::new("/healthz").expect("a path")),
                    })
                    .collect();
                OriginSpec {
                    address: TunnelIp::new(Ipv4Addr::new(10, 100, x, 1)).expect("not special"),
                    edges,
                    services,
                    tunnel,
                }
            },
        )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::serde_util::from_toml;

    /// The routing tables of an edge's TOML file.
    #[derive(Debug, Serialize, Deserialize)]
    struct EdgeTables {
        limits: Option<EdgeLimits>,
        origins: Vec<OriginPeer>,
        routes: Vec<HttpRoute>,
        tcp_routes: Vec<TcpRoute>,
    }

    /// What an origin's TOML file holds besides its own settings.
    #[derive(Debug, Serialize, Deserialize)]
    struct OriginTables {
        address: TunnelIp,
        edges: Vec<EdgePeer>,
        services: Vec<Service>,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn edge_specs_agree_in_every_form(spec in edge_spec(20_000..20_100)) {
            spec.validate(None, Overlay::default()).expect("generated specs are valid");
            let from_proto = EdgeSpec::from_proto(&spec.to_proto()).expect("the wire form");
            prop_assert_eq!(&from_proto, &spec);
            let text = toml::to_string(&EdgeTables {
                limits: spec.limits.clone(),
                origins: spec.origins.clone(),
                routes: spec.routes.clone(),
                tcp_routes: spec.tcp_routes.clone(),
            })
            .expect("TOML");
            let back: EdgeTables = from_toml(&text).expect("the TOML form");
            prop_assert_eq!(back.limits, spec.limits);
            prop_assert_eq!(back.origins, spec.origins);
            prop_assert_eq!(back.routes, spec.routes);
            prop_assert_eq!(back.tcp_routes, spec.tcp_routes);
        }

        #[test]
        fn origin_specs_agree_in_every_form(spec in origin_spec()) {
            spec.validate(None, Overlay::default()).expect("generated specs are valid");
            let from_proto = OriginSpec::from_proto(&spec.to_proto()).expect("the wire form");
            prop_assert_eq!(&from_proto, &spec);
            let text = toml::to_string(&OriginTables {
                address: spec.address,
                edges: spec.edges.clone(),
                services: spec.services.clone(),
            })
            .expect("TOML");
            let back: OriginTables = from_toml(&text).expect("the TOML form");
            prop_assert_eq!(back.address, spec.address);
            prop_assert_eq!(back.edges, spec.edges);
            prop_assert_eq!(back.services, spec.services);
        }

        #[test]
        fn route_limits_agree_in_json_and_proto(limits in route_limits()) {
            let json = serde_json::to_string(&limits).expect("JSON");
            prop_assert_eq!(&crate::from_json::<RouteLimits>(&json).expect("the JSON form"), &limits);
            prop_assert_eq!(&RouteLimits::from_proto(&limits.to_proto()).expect("the wire form"), &limits);
        }
    }
}
