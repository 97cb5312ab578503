//! Conversions between the model and the wire (`kokoa.v1`): `from_proto` validates every value
//! with the same constructors the TOML and JSON forms use, and names the field of the snapshot
//! that failed (`routes[2].limits.allow[0]`) and the object it belongs to; `to_proto` writes
//! the typed messages control sends.

use kokoa_proto::v1 as pb;

use crate::cert::Certificate;
use crate::error::{At, ModelError, ObjectKind, ObjectRef};
use crate::key::PublicKey;
use crate::limits::{EdgeLimits, EdgeLimitsFields, RouteLimits};
use crate::name::{HostPattern, Name};
use crate::net::{AccessRules, Endpoint, Overlay, TcpListen, TunnelIp};
use crate::number::{BodyLimit, Bounded, Burst, Port, Rate};
use crate::peer::{EdgePeer, Keepalive, OriginPeer};
use crate::route::{HttpRoute, ProxyProtocol, TcpRoute};
use crate::service::{HealthPath, Protocol, Service};
use crate::spec::{EdgeSpec, OriginSpec};
use crate::tunnel::{Mtu, StallSecs, TcpBuffer, TunnelOptions, WindowBytes, WindowLimits};

fn public_key(text: &str) -> Result<PublicKey, ModelError> {
    PublicKey::from_base64(text).map_err(|e| {
        ModelError::new(
            "public_key",
            format!("not a WireGuard public key ({e}); use the peer's `pubkey` output"),
        )
    })
}

fn optional_endpoint(text: &str) -> Result<Option<Endpoint>, ModelError> {
    if text.is_empty() {
        Ok(None)
    } else {
        Endpoint::parse(text).map(Some).at("endpoint")
    }
}

impl RouteLimits {
    /// Validates a route's limits from the wire.
    pub fn from_proto(limits: &pb::RouteLimits) -> Result<Self, ModelError> {
        let rate = limits.rate.map(Rate::new).transpose().at("rate")?;
        let burst = limits.burst.map(Burst::new).transpose().at("burst")?;
        let access = AccessRules::parse(&limits.allow, &limits.deny)?;
        RouteLimits::new(
            rate,
            burst,
            limits.max_body_bytes.map(BodyLimit::new),
            access,
        )
    }

    /// The wire form.
    pub fn to_proto(&self) -> pb::RouteLimits {
        let (allow, deny) = self.access.to_strings();
        pb::RouteLimits {
            rate: self.rate().map(Rate::get),
            burst: self.burst().map(Burst::get),
            max_body_bytes: self.max_body_bytes.map(BodyLimit::get),
            allow,
            deny,
        }
    }
}

impl HttpRoute {
    /// Validates a route from the wire.
    pub fn from_proto(route: &pb::Route) -> Result<Self, ModelError> {
        let object = ObjectRef::new(ObjectKind::Route, route.host.as_str());
        let convert = || -> Result<Self, ModelError> {
            Ok(Self {
                host: HostPattern::new(&route.host).at("host")?,
                aliases: route
                    .aliases
                    .iter()
                    .enumerate()
                    .map(|(j, alias)| HostPattern::new(alias).at(&format!("aliases[{j}]")))
                    .collect::<Result<_, _>>()?,
                origin: Name::new(&route.origin).at("origin")?,
                port: Port::new(route.port).at("port")?,
                limits: match &route.limits {
                    Some(limits) => RouteLimits::from_proto(limits).at("limits")?,
                    None => RouteLimits::default(),
                },
            })
        };
        convert().map_err(|e| e.about(object))
    }

    /// The wire form.
    pub fn to_proto(&self) -> pb::Route {
        pb::Route {
            host: self.host.to_string(),
            aliases: self.aliases.iter().map(ToString::to_string).collect(),
            origin: self.origin.to_string(),
            port: u32::from(self.port.get()),
            limits: (!self.limits.is_empty()).then(|| self.limits.to_proto()),
        }
    }
}

impl TcpRoute {
    /// Validates a TCP route from the wire (its listen port must not be 0).
    pub fn from_proto(route: &pb::TcpRoute) -> Result<Self, ModelError> {
        let object = ObjectRef::new(ObjectKind::TcpRoute, route.listen_port.to_string());
        let convert = || -> Result<Self, ModelError> {
            let port = Port::new(route.listen_port).at("listen_port")?;
            let ip = if route.listen_ip.is_empty() {
                None
            } else {
                Some(route.listen_ip.parse().map_err(|_| {
                    ModelError::new(
                        "listen_ip",
                        format!("`{}` is not an IP address", route.listen_ip),
                    )
                })?)
            };
            Ok(Self {
                listen: TcpListen {
                    ip,
                    port: port.get(),
                },
                origin: Name::new(&route.origin).at("origin")?,
                port: Port::new(route.port).at("port")?,
                proxy_protocol: if route.proxy_protocol_v2 {
                    ProxyProtocol::V2
                } else {
                    ProxyProtocol::None
                },
                access: AccessRules::parse(&route.allow, &route.deny)?,
            })
        };
        convert().map_err(|e| e.about(object))
    }

    /// The wire form.
    pub fn to_proto(&self) -> pb::TcpRoute {
        let (allow, deny) = self.access.to_strings();
        pb::TcpRoute {
            listen_port: u32::from(self.listen.port),
            listen_ip: self.listen.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            origin: self.origin.to_string(),
            port: u32::from(self.port.get()),
            proxy_protocol_v2: self.proxy_protocol == ProxyProtocol::V2,
            allow,
            deny,
        }
    }
}

impl OriginPeer {
    /// Validates an origin peer from an edge snapshot (an `EdgePeer` message).
    pub fn from_proto(peer: &pb::EdgePeer) -> Result<Self, ModelError> {
        let object = ObjectRef::new(ObjectKind::Origin, peer.name.as_str());
        let convert = || -> Result<Self, ModelError> {
            Ok(Self {
                name: Name::new(&peer.name).at("name")?,
                public_key: public_key(&peer.public_key)?,
                endpoint: optional_endpoint(&peer.endpoint)?,
                address: TunnelIp::parse(&peer.address).at("address")?,
                origin_address: TunnelIp::parse(&peer.origin_address).at("origin_address")?,
                keepalive: Keepalive::new(peer.keepalive).at("keepalive")?,
            })
        };
        convert().map_err(|e| e.about(object))
    }

    /// The wire form (an `EdgePeer` message).
    pub fn to_proto(&self) -> pb::EdgePeer {
        pb::EdgePeer {
            name: self.name.to_string(),
            public_key: self.public_key.to_base64(),
            endpoint: self
                .endpoint
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            address: self.address.to_string(),
            origin_address: self.origin_address.to_string(),
            keepalive: u32::from(self.keepalive.get()),
        }
    }
}

impl EdgePeer {
    /// Validates an edge peer from an origin snapshot (an `OriginPeer` message). Its keepalive
    /// is taken as sent (0 = off).
    pub fn from_proto(peer: &pb::OriginPeer) -> Result<Self, ModelError> {
        let object = ObjectRef::new(ObjectKind::Edge, peer.name.as_str());
        let convert = || -> Result<Self, ModelError> {
            Ok(Self {
                name: Name::new(&peer.name).at("name")?,
                public_key: public_key(&peer.public_key)?,
                endpoint: optional_endpoint(&peer.endpoint)?,
                address: TunnelIp::parse(&peer.address).at("address")?,
                keepalive: Keepalive::new(peer.keepalive).at("keepalive")?,
            })
        };
        convert().map_err(|e| e.about(object))
    }

    /// The wire form (an `OriginPeer` message).
    pub fn to_proto(&self) -> pb::OriginPeer {
        pb::OriginPeer {
            name: self.name.to_string(),
            public_key: self.public_key.to_base64(),
            endpoint: self
                .endpoint
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            address: self.address.to_string(),
            keepalive: u32::from(self.keepalive.get()),
        }
    }
}

impl Service {
    /// Validates a service from the wire.
    pub fn from_proto(service: &pb::Service) -> Result<Self, ModelError> {
        let object = ObjectRef::new(ObjectKind::Service, service.name.as_str());
        let convert = || -> Result<Self, ModelError> {
            Ok(Self {
                name: Name::new(&service.name).at("name")?,
                port: Port::new(service.port).at("port")?,
                local: Endpoint::parse(&service.local).at("local")?,
                protocol: Protocol::parse(&service.protocol).at("protocol")?,
                health_path: if service.health_path.is_empty() {
                    None
                } else {
                    Some(HealthPath::new(&service.health_path).at("health_path")?)
                },
            })
        };
        convert().map_err(|e| e.about(object))
    }

    /// The wire form.
    pub fn to_proto(&self) -> pb::Service {
        pb::Service {
            name: self.name.to_string(),
            port: u32::from(self.port.get()),
            local: self.local.to_string(),
            protocol: self.protocol.as_str().to_owned(),
            health_path: self
                .health_path
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        }
    }
}

impl Certificate {
    /// Parses a certificate from the wire (the same parser as an upload or a file).
    pub fn from_proto(certificate: &pb::Certificate) -> Result<Self, ModelError> {
        Certificate::from_pem(&certificate.chain_pem, &certificate.key_pem)
    }

    /// The wire form, tagged with control's `id` for the certificate.
    pub fn to_proto(&self, id: &str) -> pb::Certificate {
        pb::Certificate {
            chain_pem: self.chain_pem().to_owned(),
            key_pem: self.key_pem().to_owned(),
            id: id.to_owned(),
        }
    }
}

impl EdgeLimits {
    /// Validates an edge's `[limits]` from the wire; absent fields take their defaults.
    pub fn from_proto(limits: &pb::EdgeLimits) -> Result<Self, ModelError> {
        fn opt<const MIN: u64, const MAX: u64>(
            value: Option<impl Into<i128>>,
            field: &str,
        ) -> Result<Option<Bounded<MIN, MAX>>, ModelError> {
            value.map(Bounded::new).transpose().at(field)
        }
        let fields = EdgeLimitsFields {
            rate: limits.rate.map(Rate::new).transpose().at("rate")?,
            burst: limits.burst.map(Burst::new).transpose().at("burst")?,
            ipv4_prefix: opt(limits.ipv4_prefix, "ipv4_prefix")?,
            ipv6_prefix: opt(limits.ipv6_prefix, "ipv6_prefix")?,
            max_tracked_clients: opt(limits.max_tracked_clients, "max_tracked_clients")?,
            connections_per_client: opt(limits.connections_per_client, "connections_per_client")?,
            max_connections: opt(limits.max_connections, "max_connections")?,
            max_headers: opt(limits.max_headers, "max_headers")?,
            max_body_bytes: limits.max_body_bytes.map(BodyLimit::new),
            idle_timeout: opt(limits.idle_timeout_seconds, "idle_timeout_seconds")?,
            h2_max_concurrent_streams: opt(
                limits.h2_max_concurrent_streams,
                "h2_max_concurrent_streams",
            )?,
            h2_max_pending_reset_streams: opt(
                limits.h2_max_pending_reset_streams,
                "h2_max_pending_reset_streams",
            )?,
            h2_max_local_error_reset_streams: opt(
                limits.h2_max_local_error_reset_streams,
                "h2_max_local_error_reset_streams",
            )?,
            h2_keepalive_interval: opt(
                limits.h2_keepalive_interval_seconds,
                "h2_keepalive_interval_seconds",
            )?,
            send_timeout: opt(limits.send_timeout_seconds, "send_timeout_seconds")?,
            send_min_rate: opt(limits.send_min_rate, "send_min_rate")?,
            client_body_timeout: opt(
                limits.client_body_timeout_seconds,
                "client_body_timeout_seconds",
            )?,
            client_body_min_rate: opt(limits.client_body_min_rate, "client_body_min_rate")?,
            lingering_time: opt(limits.lingering_time_seconds, "lingering_time_seconds")?,
            lingering_timeout: opt(
                limits.lingering_timeout_seconds,
                "lingering_timeout_seconds",
            )?,
        };
        EdgeLimits::try_from(fields)
    }

    /// The wire form, every field set.
    pub fn to_proto(&self) -> pb::EdgeLimits {
        pb::EdgeLimits {
            rate: self.rate.map(|r| r.per_second),
            burst: self.rate.map(|r| r.burst),
            ipv4_prefix: Some(self.ipv4_prefix.as_u32()),
            ipv6_prefix: Some(self.ipv6_prefix.as_u32()),
            max_tracked_clients: Some(self.max_tracked_clients.get()),
            connections_per_client: Some(self.connections_per_client.get()),
            max_connections: Some(self.max_connections.get()),
            max_headers: Some(self.max_headers.as_u32()),
            max_body_bytes: Some(self.max_body_bytes.get()),
            idle_timeout_seconds: Some(self.idle_timeout.as_u32()),
            h2_max_concurrent_streams: Some(self.h2_max_concurrent_streams.as_u32()),
            h2_max_pending_reset_streams: Some(self.h2_max_pending_reset_streams.as_u32()),
            h2_max_local_error_reset_streams: Some(self.h2_max_local_error_reset_streams.as_u32()),
            h2_keepalive_interval_seconds: Some(self.h2_keepalive_interval.as_u32()),
            send_timeout_seconds: Some(self.send_timeout.as_u32()),
            send_min_rate: Some(self.send_min_rate.get()),
            client_body_timeout_seconds: Some(self.client_body_timeout.as_u32()),
            client_body_min_rate: Some(self.client_body_min_rate.get()),
            lingering_time_seconds: Some(self.lingering_time.as_u32()),
            lingering_timeout_seconds: Some(self.lingering_timeout.as_u32()),
        }
    }
}

impl TunnelOptions {
    /// Validates tunnel settings from the wire (0 or empty: the default).
    pub fn from_proto(tunnel: &pb::TunnelSettings) -> Result<Self, ModelError> {
        let options = Self {
            mtu: match tunnel.mtu {
                0 => Mtu::default(),
                mtu => Mtu::new(mtu).at("mtu")?,
            },
            tcp_buffer: match tunnel.tcp_buffer {
                0 => TcpBuffer::default(),
                bytes => TcpBuffer::new(bytes).at("tcp_buffer")?,
            },
            overlay: if tunnel.overlay.is_empty() {
                Overlay::default()
            } else {
                Overlay::parse(&tunnel.overlay).at("overlay")?
            },
            window: WindowLimits::with(
                match tunnel.min_tcp_buffer {
                    0 => None,
                    bytes => Some(TcpBuffer::new(bytes).at("min_tcp_buffer")?),
                },
                window_bytes(tunnel.window_budget, "window_budget")?,
                window_bytes(tunnel.window_per_client, "window_per_client")?,
                window_bytes(tunnel.window_per_peer, "window_per_peer")?,
                tunnel
                    .stall_timeout_seconds
                    .map(|secs| StallSecs::new(secs).at("stall_timeout_seconds"))
                    .transpose()?,
            ),
        };
        options.validate()?;
        Ok(options)
    }

    /// The wire form.
    pub fn to_proto(&self) -> pb::TunnelSettings {
        pb::TunnelSettings {
            mtu: u32::from(self.mtu.get()),
            tcp_buffer: self.tcp_buffer.get(),
            overlay: self.overlay.to_string(),
            min_tcp_buffer: self.window.min_tcp_buffer.get(),
            window_budget: self.window.budget.get(),
            window_per_client: self.window.per_client.get(),
            window_per_peer: self.window.per_peer.get(),
            stall_timeout_seconds: Some(self.window.stall_timeout.as_u32()),
        }
    }
}

/// A window size from the wire: 0 is the default (`None`).
fn window_bytes(bytes: u64, field: &'static str) -> Result<Option<WindowBytes>, ModelError> {
    match bytes {
        0 => Ok(None),
        bytes => WindowBytes::new(bytes).at(field).map(Some),
    }
}

/// Converts each element of a repeated field, naming `list[i]` in errors.
fn list<P, T>(
    name: &str,
    items: &[P],
    convert: impl Fn(usize, &P) -> Result<T, ModelError>,
) -> Result<Vec<T>, ModelError> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| convert(i, item).map_err(|e| e.within(&format!("{name}[{i}]"))))
        .collect()
}

impl EdgeSpec {
    /// Converts an edge snapshot, validating every value (not yet the rules across objects:
    /// call [`EdgeSpec::validate`], which needs the edge's own key).
    pub fn from_proto(snapshot: &pb::EdgeSnapshot) -> Result<Self, ModelError> {
        Ok(Self {
            origins: list("origins", &snapshot.origins, |_, p| {
                OriginPeer::from_proto(p)
            })?,
            routes: list("routes", &snapshot.routes, |_, r| HttpRoute::from_proto(r))?,
            tcp_routes: list("tcp_routes", &snapshot.tcp_routes, |_, r| {
                TcpRoute::from_proto(r)
            })?,
            certificates: list("certificates", &snapshot.certificates, |i, c| {
                let key = if c.id.is_empty() {
                    format!("#{i}")
                } else {
                    c.id.clone()
                };
                Certificate::from_proto(c)
                    .map_err(|e| e.about(ObjectRef::new(ObjectKind::Certificate, key)))
            })?,
            limits: snapshot
                .limits
                .as_ref()
                .map(|l| {
                    EdgeLimits::from_proto(l)
                        .map_err(|e| e.about(ObjectRef::new(ObjectKind::Limits, "")))
                })
                .transpose()
                .at("limits")?,
            tunnel: snapshot
                .tunnel
                .as_ref()
                .map(|t| {
                    TunnelOptions::from_proto(t)
                        .map_err(|e| e.about(ObjectRef::new(ObjectKind::Tunnel, "")))
                })
                .transpose()
                .at("tunnel")?,
        })
    }

    /// The wire form (without the node's name, key and ACME challenges, which are not config
    /// values). Certificates are tagged with their position (`#0`, `#1`, ...).
    pub fn to_proto(&self) -> pb::EdgeSnapshot {
        pb::EdgeSnapshot {
            origins: self.origins.iter().map(OriginPeer::to_proto).collect(),
            routes: self.routes.iter().map(HttpRoute::to_proto).collect(),
            tcp_routes: self.tcp_routes.iter().map(TcpRoute::to_proto).collect(),
            certificates: self
                .certificates
                .iter()
                .enumerate()
                .map(|(i, c)| c.to_proto(&format!("#{i}")))
                .collect(),
            limits: self.limits.as_ref().map(EdgeLimits::to_proto),
            tunnel: self.tunnel.as_ref().map(TunnelOptions::to_proto),
            ..pb::EdgeSnapshot::default()
        }
    }
}

impl OriginSpec {
    /// Converts an origin snapshot, validating every value (not yet the rules across
    /// objects: call [`OriginSpec::validate`]).
    pub fn from_proto(snapshot: &pb::OriginSnapshot) -> Result<Self, ModelError> {
        Ok(Self {
            address: TunnelIp::parse(&snapshot.address)
                .at("address")
                .map_err(|e| e.about(ObjectRef::new(ObjectKind::Node, "")))?,
            edges: list("edges", &snapshot.edges, |_, p| EdgePeer::from_proto(p))?,
            services: list("services", &snapshot.services, |_, s| {
                Service::from_proto(s)
            })?,
            tunnel: snapshot
                .tunnel
                .as_ref()
                .map(|t| {
                    TunnelOptions::from_proto(t)
                        .map_err(|e| e.about(ObjectRef::new(ObjectKind::Tunnel, "")))
                })
                .transpose()
                .at("tunnel")?,
        })
    }

    /// The wire form (without the node's name and key).
    pub fn to_proto(&self) -> pb::OriginSnapshot {
        pb::OriginSnapshot {
            address: self.address.to_string(),
            edges: self.edges.iter().map(EdgePeer::to_proto).collect(),
            services: self.services.iter().map(Service::to_proto).collect(),
            tunnel: self.tunnel.as_ref().map(TunnelOptions::to_proto),
            ..pb::OriginSnapshot::default()
        }
    }
}

impl ObjectKind {
    /// The wire enum.
    pub fn to_proto(self) -> pb::ObjectKind {
        match self {
            ObjectKind::Route => pb::ObjectKind::Route,
            ObjectKind::TcpRoute => pb::ObjectKind::TcpRoute,
            ObjectKind::Origin => pb::ObjectKind::Origin,
            ObjectKind::Edge => pb::ObjectKind::Edge,
            ObjectKind::Service => pb::ObjectKind::Service,
            ObjectKind::Certificate => pb::ObjectKind::Certificate,
            ObjectKind::Limits => pb::ObjectKind::Limits,
            ObjectKind::Tunnel => pb::ObjectKind::Tunnel,
            ObjectKind::Node => pb::ObjectKind::Node,
        }
    }

    /// From the wire enum; `None` for unspecified or unknown values.
    pub fn from_proto(kind: i32) -> Option<Self> {
        Some(match pb::ObjectKind::try_from(kind).ok()? {
            pb::ObjectKind::Unspecified => return None,
            pb::ObjectKind::Route => ObjectKind::Route,
            pb::ObjectKind::TcpRoute => ObjectKind::TcpRoute,
            pb::ObjectKind::Origin => ObjectKind::Origin,
            pb::ObjectKind::Edge => ObjectKind::Edge,
            pb::ObjectKind::Service => ObjectKind::Service,
            pb::ObjectKind::Certificate => ObjectKind::Certificate,
            pb::ObjectKind::Limits => ObjectKind::Limits,
            pb::ObjectKind::Tunnel => ObjectKind::Tunnel,
            pb::ObjectKind::Node => ObjectKind::Node,
        })
    }
}

impl ModelError {
    /// The NACK for snapshot `version` refused with this error: the reason as text, and the
    /// object and field it names.
    pub fn to_nack(&self, version: u64) -> pb::Nack {
        pb::Nack {
            version,
            reason: self.to_string(),
            object: (self.object.is_some() || !self.field.is_empty()).then(|| pb::ConfigObject {
                kind: self
                    .object
                    .as_ref()
                    .map_or(pb::ObjectKind::Unspecified, |o| o.kind.to_proto())
                    as i32,
                key: self
                    .object
                    .as_ref()
                    .map(|o| o.key.clone())
                    .unwrap_or_default(),
                field: self.field.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert::tests::self_signed;
    use crate::key::PrivateKey;

    fn snapshot() -> pb::EdgeSnapshot {
        let (chain_pem, key_pem) = self_signed(&["app.example.com"]);
        pb::EdgeSnapshot {
            origins: vec![pb::EdgePeer {
                name: "home".into(),
                public_key: PrivateKey::generate().public_key().to_base64(),
                endpoint: String::new(),
                address: "10.100.1.10".into(),
                origin_address: "10.100.1.1".into(),
                keepalive: 0,
            }],
            routes: vec![pb::Route {
                host: "app.example.com".into(),
                aliases: vec!["www.example.com".into()],
                origin: "home".into(),
                port: 8001,
                limits: Some(pb::RouteLimits {
                    rate: Some(5.0),
                    allow: vec!["10.0.0.0/8".into()],
                    ..Default::default()
                }),
            }],
            tcp_routes: vec![pb::TcpRoute {
                listen_port: 4001,
                origin: "home".into(),
                port: 4001,
                proxy_protocol_v2: true,
                deny: vec!["192.0.2.0/24".into()],
                ..Default::default()
            }],
            certificates: vec![pb::Certificate {
                chain_pem,
                key_pem,
                id: "c1".into(),
            }],
            limits: Some(pb::EdgeLimits {
                rate: Some(10.0),
                send_timeout_seconds: Some(15),
                client_body_min_rate: Some(0),
                ..Default::default()
            }),
            tunnel: Some(pb::TunnelSettings {
                mtu: 1280,
                window_per_client: 32 << 20,
                stall_timeout_seconds: Some(0),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn edge_snapshots_round_trip() {
        let spec = EdgeSpec::from_proto(&snapshot()).unwrap();
        spec.validate(None, Overlay::default()).unwrap();
        let tunnel = spec.tunnel.unwrap();
        assert_eq!(tunnel.mtu.get(), 1280);
        assert_eq!(tunnel.window.per_client.get(), 32 << 20);
        assert_eq!(tunnel.window.stall_timeout.get(), 0);
        assert_eq!(tunnel.window.budget.get(), 256 << 20);
        let limits = spec.limits.as_ref().unwrap();
        assert_eq!(limits.rate.unwrap().burst, 10);
        assert_eq!(limits.send_timeout.get(), 15);
        assert_eq!(limits.client_body_min_rate.get(), 0);
        assert_eq!(limits.client_body_timeout.get(), 60, "absent: the default");
        let again = EdgeSpec::from_proto(&spec.to_proto()).unwrap();
        assert_eq!(again, spec);
    }

    #[test]
    fn bad_values_name_the_field_and_the_object() {
        type Change = Box<dyn Fn(&mut pb::EdgeSnapshot)>;
        let cases: Vec<(Change, &str, ObjectRef)> = vec![
            (
                Box::new(|s| {
                    s.routes[0]
                        .limits
                        .as_mut()
                        .unwrap()
                        .allow
                        .push("nope".into())
                }),
                "routes[0].limits.allow[1]",
                ObjectRef::new(ObjectKind::Route, "app.example.com"),
            ),
            (
                Box::new(|s| s.routes[0].limits.as_mut().unwrap().rate = Some(-1.0)),
                "routes[0].limits.rate",
                ObjectRef::new(ObjectKind::Route, "app.example.com"),
            ),
            (
                Box::new(|s| s.routes[0].port = 70000),
                "routes[0].port",
                ObjectRef::new(ObjectKind::Route, "app.example.com"),
            ),
            (
                Box::new(|s| s.origins[0].name = "home.lab".into()),
                "origins[0].name",
                ObjectRef::new(ObjectKind::Origin, "home.lab"),
            ),
            (
                Box::new(|s| s.origins[0].endpoint = "nope".into()),
                "origins[0].endpoint",
                ObjectRef::new(ObjectKind::Origin, "home"),
            ),
            (
                Box::new(|s| s.tcp_routes[0].listen_port = 0),
                "tcp_routes[0].listen_port",
                ObjectRef::new(ObjectKind::TcpRoute, "0"),
            ),
            (
                Box::new(|s| s.certificates[0].key_pem = "x".into()),
                "certificates[0].key_pem",
                ObjectRef::new(ObjectKind::Certificate, "c1"),
            ),
            (
                Box::new(|s| s.limits.as_mut().unwrap().ipv4_prefix = Some(33)),
                "limits.ipv4_prefix",
                ObjectRef::new(ObjectKind::Limits, ""),
            ),
            (
                Box::new(|s| s.limits.as_mut().unwrap().client_body_timeout_seconds = Some(0)),
                "limits.client_body_timeout_seconds",
                ObjectRef::new(ObjectKind::Limits, ""),
            ),
            (
                Box::new(|s| s.tunnel.as_mut().unwrap().mtu = 70000),
                "tunnel.mtu",
                ObjectRef::new(ObjectKind::Tunnel, ""),
            ),
            (
                Box::new(|s| s.tunnel.as_mut().unwrap().window_per_client = 1 << 40),
                "tunnel.window_per_client",
                ObjectRef::new(ObjectKind::Tunnel, ""),
            ),
            (
                Box::new(|s| s.tunnel.as_mut().unwrap().stall_timeout_seconds = Some(100_000)),
                "tunnel.stall_timeout_seconds",
                ObjectRef::new(ObjectKind::Tunnel, ""),
            ),
        ];
        for (change, field, object) in cases {
            let mut s = snapshot();
            change(&mut s);
            let error = EdgeSpec::from_proto(&s).unwrap_err();
            assert_eq!(error.field, field, "{error}");
            assert_eq!(error.object.as_ref(), Some(&object), "{error}");
            let nack = error.to_nack(7);
            let named = nack.object.unwrap();
            assert_eq!(named.field, field);
            assert_eq!(ObjectKind::from_proto(named.kind), Some(object.kind));
            assert_eq!(named.key, object.key);
        }
    }

    #[test]
    fn origin_snapshots_round_trip_and_refuse() {
        let snapshot = pb::OriginSnapshot {
            name: "home".into(),
            private_key: String::new(),
            address: "10.100.2.1".into(),
            edges: vec![pb::OriginPeer {
                name: "vps1".into(),
                public_key: PrivateKey::generate().public_key().to_base64(),
                endpoint: "vps1.example.net:51820".into(),
                address: "10.100.2.10".into(),
                keepalive: 25,
            }],
            services: vec![pb::Service {
                name: "db".into(),
                port: 5432,
                local: "db.internal:5432".into(),
                protocol: "tcp".into(),
                health_path: String::new(),
            }],
            tunnel: None,
        };
        let spec = OriginSpec::from_proto(&snapshot).unwrap();
        spec.validate(None, Overlay::default()).unwrap();
        assert_eq!(OriginSpec::from_proto(&spec.to_proto()).unwrap(), spec);
        let mut bad = snapshot.clone();
        bad.services[0].protocol = "udp".into();
        let error = OriginSpec::from_proto(&bad).unwrap_err();
        assert_eq!(error.field, "services[0].protocol");
        assert_eq!(
            error.object,
            Some(ObjectRef::new(ObjectKind::Service, "db"))
        );
        let mut bad = snapshot;
        bad.address = "nope".into();
        assert_eq!(OriginSpec::from_proto(&bad).unwrap_err().field, "address");
    }
}
