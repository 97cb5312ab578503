//! Property tests of the origin's applier against the shared model: any valid spec, sent as
//! control sends it (protobuf), is applied and ACKed by the real applier, whatever its
//! services' host names resolve to; a snapshot with one invalid value is refused with a NACK
//! naming that field and its object.

use std::sync::Arc;

use kokoa_model::strategy::origin_spec;
use kokoa_model::ModelError;
use kokoa_node::control::Applier;
use kokoa_origin::apply::OriginApplier;
use kokoa_origin::metrics::Metrics;
use kokoa_origin::service::{ServiceTable, Services};
use kokoa_origin::OriginConfig;
use kokoa_proto::v1::{self as pb, snapshot, Snapshot};
use kokoa_tunnel::key::PrivateKey;
use kokoa_tunnel::{Incoming, Tunnel};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

struct Node {
    runtime: tokio::runtime::Runtime,
    applier: OriginApplier,
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
        "[origin]\naddress = \"10.100.1.1\"\nadmin = \"127.0.0.1:0\"\n[tunnel]\nprivate_key = \"{}\"\nlisten = \"127.0.0.1:0\"\n[[edges]]\nname = \"bootstrap\"\npublic_key = \"{}\"\naddress = \"10.100.1.10\"\n",
        key.to_base64(),
        PrivateKey::generate().public_key()
    );
    let config = OriginConfig::from_toml(&text, None).expect("a config");
    let (applier, tunnel, incoming) = runtime.block_on(async {
        let (tunnel, incoming) =
            Tunnel::bind(config.tunnel.tunnel_config(key, config.tunnel.options))
                .await
                .expect("a tunnel on loopback");
        let services = Arc::new(Services::new(ServiceTable::default()));
        let applier = OriginApplier::new(config, tunnel.clone(), services, &Metrics::default());
        (applier, tunnel, incoming)
    });
    Node {
        runtime,
        applier,
        _tunnel: tunnel,
        _incoming: incoming,
    }
}

fn snapshot(version: u64, origin: pb::OriginSnapshot) -> Snapshot {
    Snapshot {
        version,
        heartbeat_interval_seconds: 1,
        node: Some(snapshot::Node::Origin(origin)),
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
        .run(&origin_spec(), |spec| {
            version.set(version.get() + 1);
            let version = version.get();
            let result = node.apply(&snapshot(version, spec.to_proto()));
            prop_assert!(result.is_ok(), "{:?} refused: {:?}", spec, result);
            Ok(())
        })
        .expect("every valid spec applies");
}

type Mutation = fn(&mut pb::OriginSnapshot) -> Option<&'static str>;

/// One invalid value each, and the field the NACK must name; `None` when the snapshot has
/// nothing to break that way.
const MUTATIONS: &[(&str, Mutation)] = &[
    ("address that is no IPv4 address", |s| {
        s.address = "home".into();
        Some("address")
    }),
    ("edge on the origin's own address", |s| {
        let address = s.address.clone();
        s.edges.first_mut()?.address = address;
        Some("edges[0].address")
    }),
    ("edge key that is no key", |s| {
        s.edges.first_mut()?.public_key = "abc".into();
        Some("edges[0].public_key")
    }),
    ("edge name with upper case", |s| {
        s.edges.first_mut()?.name = "Vps1".into();
        Some("edges[0].name")
    }),
    ("service address without a port", |s| {
        s.services.first_mut()?.local = "db.internal".into();
        Some("services[0].local")
    }),
    ("service port 0", |s| {
        s.services.first_mut()?.port = 0;
        Some("services[0].port")
    }),
    ("service protocol udp", |s| {
        s.services.first_mut()?.protocol = "udp".into();
        Some("services[0].protocol")
    }),
    ("two services on one port", |s| {
        let copy = pb::Service {
            name: "twin".into(),
            ..s.services.first()?.clone()
        };
        s.services.push(copy);
        Some("services[last].port")
    }),
];

#[test]
fn an_invalid_value_is_nacked_naming_its_field() {
    let node = node();
    let mut runner = TestRunner::new(Config::with_cases(24));
    let version = std::cell::Cell::new(0u64);
    runner
        .run(&(origin_spec(), 0..MUTATIONS.len()), |(spec, which)| {
            let (what, mutate) = MUTATIONS[which];
            let mut wire = spec.to_proto();
            let Some(field) = mutate(&mut wire) else {
                return Ok(());
            };
            if wire.services.iter().filter(|s| s.name == "twin").count() > 1 {
                return Ok(());
            }
            let field = field.replace(
                "[last]",
                &format!("[{}]", wire.services.len().saturating_sub(1)),
            );
            version.set(version.get() + 1);
            let version = version.get();
            let error = match node.apply(&snapshot(version, wire)) {
                Ok(()) => return Err(TestCaseError::fail(format!("{what}: applied"))),
                Err(error) => error,
            };
            prop_assert_eq!(&error.field, &field, "{}: {}", what, error);
            let named = error
                .to_nack(version)
                .object
                .expect("the NACK names an object");
            prop_assert_eq!(named.field, field);
            Ok(())
        })
        .expect("every invalid value is refused by name");
}
