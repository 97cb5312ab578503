//! Property tests of the edge's applier against the shared model: any valid spec, sent as
//! control sends it (protobuf), is applied and ACKed by the real applier; the same values
//! written as the edge's TOML file parse into the same model; a snapshot with one invalid
//! value is refused with a NACK naming that field and its object.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use kokoa_edge::apply::EdgeApplier;
use kokoa_edge::dial::{OriginMap, TunnelDialer};
use kokoa_edge::metrics::Metrics;
use kokoa_edge::sni::CertStore;
use kokoa_edge::{Edge, EdgeConfig};
use kokoa_model::strategy::edge_spec;
use kokoa_model::{EdgeSpec, ModelError};
use kokoa_node::control::Applier;
use kokoa_proto::v1::{self as pb, snapshot, Snapshot};
use kokoa_tunnel::key::PrivateKey;
use kokoa_tunnel::{Incoming, Tunnel};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// TCP routes of generated specs listen on these loopback ports.
const TCP_PORTS: std::ops::Range<u16> = 41_000..41_200;

struct Node {
    runtime: tokio::runtime::Runtime,
    applier: EdgeApplier<TunnelDialer>,
    _tunnel: Tunnel,
    _incoming: Incoming,
}

fn node() -> Node {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let key = PrivateKey::generate();
    let text = format!(
        "[edge]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[tunnel]\nprivate_key = \"{}\"\nlisten = \"127.0.0.1:0\"\n",
        key.to_base64()
    );
    let config = EdgeConfig::from_toml(&text, None).expect("a bootstrap config");
    let (applier, tunnel, incoming) = runtime.block_on(async {
        let (tunnel, incoming) =
            Tunnel::bind(config.tunnel.tunnel_config(key, config.tunnel.options))
                .await
                .expect("a tunnel on loopback");
        let origins = Arc::new(ArcSwap::from_pointee(OriginMap::new()));
        let dialer = TunnelDialer::new(tunnel.clone(), origins.clone(), Duration::from_secs(1));
        let edge = Edge::new(
            config.clone(),
            CertStore::placeholder().expect("placeholder"),
            dialer,
            Metrics::default(),
        );
        let applier = EdgeApplier::new(config, tunnel.clone(), edge.handles(origins));
        (applier, tunnel, incoming)
    });
    Node {
        runtime,
        applier,
        _tunnel: tunnel,
        _incoming: incoming,
    }
}

fn snapshot(version: u64, edge: pb::EdgeSnapshot) -> Snapshot {
    Snapshot {
        version,
        heartbeat_interval_seconds: 1,
        node: Some(snapshot::Node::Edge(edge)),
    }
}

impl Node {
    fn apply(&self, snapshot: &Snapshot) -> Result<(), ModelError> {
        self.runtime
            .block_on(Applier::apply(&self.applier, snapshot))
    }
}

#[test]
fn any_valid_spec_is_acked_by_the_real_applier() {
    let node = node();
    let mut runner = TestRunner::new(Config::with_cases(48));
    let version = std::cell::Cell::new(0u64);
    runner
        .run(&edge_spec(TCP_PORTS), |spec| {
            version.set(version.get() + 1);
            let version = version.get();
            let result = node.apply(&snapshot(version, spec.to_proto()));
            prop_assert!(result.is_ok(), "{:?} refused: {:?}", spec, result);
            Ok(())
        })
        .expect("every valid spec applies");
}

#[test]
fn the_toml_file_and_the_snapshot_give_the_same_model() {
    let mut runner = TestRunner::new(Config::with_cases(48));
    runner
        .run(&edge_spec(TCP_PORTS), |spec| {
            #[derive(serde::Serialize)]
            // Empty lists are left out: `tcp_routes = []` written after the `[tunnel]` text
            // would land in that table (and be refused as an unknown tunnel key).
            struct Tables<'a> {
                #[serde(skip_serializing_if = "Option::is_none")]
                limits: &'a Option<kokoa_model::EdgeLimits>,
                #[serde(skip_serializing_if = "<[_]>::is_empty")]
                origins: &'a [kokoa_model::OriginPeer],
                #[serde(skip_serializing_if = "<[_]>::is_empty")]
                routes: &'a [kokoa_model::HttpRoute],
                #[serde(skip_serializing_if = "<[_]>::is_empty")]
                tcp_routes: &'a [kokoa_model::TcpRoute],
            }
            let tables = toml::to_string(&Tables {
                limits: &spec.limits,
                origins: &spec.origins,
                routes: &spec.routes,
                tcp_routes: &spec.tcp_routes,
            })
            .expect("TOML");
            let mut text = format!(
                "[edge]\nhttps = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[tunnel]\nprivate_key = \"{}\"\n",
                PrivateKey::generate().to_base64()
            );
            if let Some(options) = &spec.tunnel {
                text.push_str(&format!(
                    "mtu = {}\ntcp_buffer = {}\noverlay = \"{}\"\n",
                    options.mtu, options.tcp_buffer, options.overlay
                ));
            }
            text.push_str(&tables);
            let file = EdgeConfig::from_toml(&text, None)
                .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
            let wire = EdgeSpec::from_proto(&spec.to_proto()).expect("the wire form");
            prop_assert_eq!(&file.spec.origins, &wire.origins);
            prop_assert_eq!(&file.spec.routes, &wire.routes);
            prop_assert_eq!(&file.spec.tcp_routes, &wire.tcp_routes);
            prop_assert_eq!(
                file.spec.limits.clone().unwrap_or_default(),
                wire.limits.clone().unwrap_or_default()
            );
            if let Some(options) = wire.tunnel {
                prop_assert_eq!(file.spec.tunnel, Some(options));
            }
            Ok(())
        })
        .expect("both forms agree");
}

type Mutation = fn(&mut pb::EdgeSnapshot) -> Option<&'static str>;

/// One invalid value each, and the field the NACK must name; `None` when the snapshot has
/// nothing to break that way.
const MUTATIONS: &[(&str, Mutation)] = &[
    ("origin name with a dot", |s| {
        s.origins[0].name = "home.lab".into();
        Some("origins[0].name")
    }),
    ("origin address outside the edge's /24", |s| {
        s.origins[0].origin_address = "10.100.0.1".into();
        s.origins[0].address = "10.100.255.10".into();
        Some("origins[0].origin_address")
    }),
    ("keepalive too long", |s| {
        s.origins[0].keepalive = 70_000;
        Some("origins[0].keepalive")
    }),
    ("host with an underscore", |s| {
        let route = s.routes.first_mut()?;
        route.host = "a_b.example.com".into();
        Some("routes[0].host")
    }),
    ("port out of range", |s| {
        s.routes.first_mut()?.port = 70_000;
        Some("routes[0].port")
    }),
    ("negative rate", |s| {
        s.routes.first_mut()?.limits = Some(pb::RouteLimits {
            rate: Some(-1.0),
            ..Default::default()
        });
        Some("routes[0].limits.rate")
    }),
    ("allow entry that is no network", |s| {
        s.routes.first_mut()?.limits = Some(pb::RouteLimits {
            allow: vec!["10.0.0.0/8".into(), "fast".into()],
            ..Default::default()
        });
        Some("routes[0].limits.allow[1]")
    }),
    ("route to an unknown origin", |s| {
        s.routes.first_mut()?.origin = "nowhere".into();
        Some("routes[0].origin")
    }),
    ("host routed twice", |s| {
        let copy = s.routes.first()?.clone();
        s.routes.push(copy);
        Some("routes[last].host")
    }),
    ("tcp route on port 0", |s| {
        s.tcp_routes.first_mut()?.listen_port = 0;
        Some("tcp_routes[0].listen_port")
    }),
    ("ipv4 prefix 33", |s| {
        s.limits = Some(pb::EdgeLimits {
            ipv4_prefix: Some(33),
            ..Default::default()
        });
        Some("limits.ipv4_prefix")
    }),
    ("MTU above what WireGuard over UDP carries", |s| {
        s.tunnel = Some(pb::TunnelSettings {
            mtu: 70_000,
            ..Default::default()
        });
        Some("tunnel.mtu")
    }),
];

#[test]
fn an_invalid_value_is_nacked_naming_its_field() {
    let node = node();
    let mut runner = TestRunner::new(Config::with_cases(24));
    let version = std::cell::Cell::new(0u64);
    runner
        .run(
            &(edge_spec(TCP_PORTS), 0..MUTATIONS.len()),
            |(spec, which)| {
                let (what, mutate) = MUTATIONS[which];
                let mut wire = spec.to_proto();
                let Some(field) = mutate(&mut wire) else {
                    return Ok(());
                };
                let field = field.replace(
                    "[last]",
                    &format!("[{}]", wire.routes.len().saturating_sub(1)),
                );
                version.set(version.get() + 1);
                let version = version.get();
                let error = match node.apply(&snapshot(version, wire)) {
                    Ok(()) => return Err(TestCaseError::fail(format!("{what}: applied"))),
                    Err(error) => error,
                };
                prop_assert_eq!(&error.field, &field, "{}: {}", what, error);
                let nack = error.to_nack(version);
                let named = nack.object.expect("the NACK names an object");
                prop_assert_eq!(named.field, field);
                prop_assert!(
                    named.kind != pb::ObjectKind::Unspecified as i32,
                    "{}: {:?}",
                    what,
                    error
                );
                Ok(())
            },
        )
        .expect("every invalid value is refused by name");
}
