//! Per-node snapshots: what one edge or origin may see of the store.
//!
//! [`SharedSnapshot`] is built once per config version (the store's snapshot plus the private
//! keys and certificate keys the nodes need) and shared by every Watch stream; [`for_node`]
//! filters it for one node without touching the database. The filters are pure functions so the
//! isolation rules are unit-tested here:
//! - an edge gets its own private key, one peer per origin it is assigned to, the routes and
//!   TCP routes whose service belongs to one of those origins, the certificates covering those
//!   routes' names, and its `[limits]` and tunnel settings when control sets them;
//! - an origin gets its own private key, its services, one peer per edge assigned to it, and
//!   its tunnel settings when control sets them.
//!
//! What goes into them is built by [`store::spec`] as values of the shared model, the same
//! values the store checked before it committed them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kokoa_proto::v1 as pb;
use zeroize::Zeroizing;

use crate::store::{self, Id, NodeId};

/// Everything node snapshots of one config version are built from, shared by all streams.
pub struct SharedSnapshot {
    /// The store's snapshot (its `version` is the config version).
    pub store: store::Snapshot,
    /// Private keys (WireGuard base64) of nodes whose key control manages.
    pub node_keys: HashMap<NodeId, Arc<Zeroizing<String>>>,
    /// PEM private keys of issued certificates, by certificate id.
    pub certificate_keys: HashMap<Id, Arc<Zeroizing<String>>>,
    /// Pending ACME HTTP-01 challenges, sent to every edge (any edge may get the validation
    /// request, since DNS points at all of them).
    pub acme_http_challenges: Vec<pb::AcmeHttpChallenge>,
    /// Pending ACME TLS-ALPN-01 challenges, sent to every edge.
    pub acme_tls_alpn_challenges: Vec<pb::AcmeTlsAlpnChallenge>,
    /// Sent in every snapshot: how often nodes heartbeat.
    pub heartbeat_interval_seconds: u32,
}

impl std::fmt::Debug for SharedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSnapshot")
            .field("version", &self.store.version)
            .field("origins", &self.store.origins.len())
            .field("edges", &self.store.edges.len())
            .field("routes", &self.store.routes.len())
            .finish_non_exhaustive()
    }
}

impl SharedSnapshot {
    /// A shared snapshot of `store` without keys or challenges (add them to the public fields).
    pub fn new(store: store::Snapshot, heartbeat_interval_seconds: u32) -> Self {
        SharedSnapshot {
            store,
            node_keys: HashMap::new(),
            certificate_keys: HashMap::new(),
            acme_http_challenges: Vec::new(),
            acme_tls_alpn_challenges: Vec::new(),
            heartbeat_interval_seconds,
        }
    }

    /// The config version.
    pub fn version(&self) -> u64 {
        self.store.version
    }
}

/// The snapshot for `node`, tagged with the shared snapshot's version, or `None` when the node
/// is not in it (deleted, or created after this version).
pub fn for_node(shared: &SharedSnapshot, node: NodeId) -> Option<pb::Snapshot> {
    let body = match node {
        NodeId::Edge(id) => pb::snapshot::Node::Edge(edge_snapshot(shared, id)?),
        NodeId::Origin(id) => pb::snapshot::Node::Origin(origin_snapshot(shared, id)?),
    };
    Some(pb::Snapshot {
        version: shared.version(),
        heartbeat_interval_seconds: shared.heartbeat_interval_seconds,
        node: Some(body),
    })
}

fn key_of(shared: &SharedSnapshot, node: NodeId) -> String {
    shared
        .node_keys
        .get(&node)
        .map(|k| k.as_str().to_owned())
        .unwrap_or_default()
}

/// What edge `edge_id` runs: its config as the store's [`spec`](store::spec) builds it (the
/// same values the store checked with the model before committing them), its private key, the
/// certificates covering its routes' names and the pending ACME challenges.
pub fn edge_snapshot(shared: &SharedSnapshot, edge_id: Id) -> Option<pb::EdgeSnapshot> {
    let s = &shared.store;
    let edge = s.edges.iter().find(|e| e.id == edge_id)?;
    let config = store::spec::edge_spec(s, edge_id)?;
    for held in &config.held_back {
        tracing::warn!(edge = %edge.name, object = %held.object, reason = %held.reason, "not sent to the edge until fixed");
    }
    let names: Vec<&str> = config
        .spec
        .routes
        .iter()
        .flat_map(|route| route.names().map(|name| name.as_str()))
        .collect();
    let mut certificates = Vec::new();
    for cert in &s.certificates {
        let (Some(chain), Some(key)) = (&cert.chain_pem, shared.certificate_keys.get(&cert.id))
        else {
            continue;
        };
        if !names
            .iter()
            .any(|name| cert.names.iter().any(|c| covers(c, name)))
        {
            continue;
        }
        certificates.push(pb::Certificate {
            chain_pem: chain.clone(),
            key_pem: key.as_str().to_owned(),
            id: cert.id.to_string(),
        });
    }
    certificates.sort_by(|a, b| a.id.cmp(&b.id));

    let mut snapshot = config.spec.to_proto();
    snapshot.name = edge.name.clone();
    snapshot.private_key = key_of(shared, NodeId::Edge(edge_id));
    snapshot.certificates = certificates;
    snapshot.acme_http_challenges = shared.acme_http_challenges.clone();
    snapshot.acme_tls_alpn_challenges = shared.acme_tls_alpn_challenges.clone();
    Some(snapshot)
}

/// What origin `origin_id` runs: its config as the store's [`spec`](store::spec) builds it and
/// its private key.
pub fn origin_snapshot(shared: &SharedSnapshot, origin_id: Id) -> Option<pb::OriginSnapshot> {
    let s = &shared.store;
    let origin = s.origins.iter().find(|o| o.id == origin_id)?;
    let config = store::spec::origin_spec(s, origin_id)?;
    for held in &config.held_back {
        tracing::warn!(origin = %origin.name, object = %held.object, reason = %held.reason, "not sent to the origin until fixed");
    }
    let mut snapshot = config.spec.to_proto();
    snapshot.name = origin.name.clone();
    snapshot.private_key = key_of(shared, NodeId::Origin(origin_id));
    Some(snapshot)
}

/// Whether certificate name `cert_name` (exact or `*.suffix`) is valid for host name `host`
/// (exact, or a `*.suffix` route, which only a wildcard certificate for the same suffix covers).
pub fn covers(cert_name: &str, host: &str) -> bool {
    if cert_name.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(suffix) = cert_name.strip_prefix("*.") else {
        return false;
    };
    if host.starts_with("*.") {
        return false;
    }
    match host.split_once('.') {
        Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
        None => false,
    }
}

/// The ids of all nodes present in `shared` (for tests and diagnostics).
pub fn nodes(shared: &SharedSnapshot) -> HashSet<NodeId> {
    let s = &shared.store;
    s.edges
        .iter()
        .map(|e| NodeId::Edge(e.id))
        .chain(s.origins.iter().map(|o| NodeId::Origin(o.id)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use kokoa_model::key::PrivateKey;
    use serde_json::json;
    use time::OffsetDateTime;

    use super::*;
    use crate::store::{
        Assignment, Certificate, CertificateSource, Edge, NodeState, NodeStatus, Origin, Protocol,
        Route, Service,
    };

    fn state() -> NodeState {
        NodeState {
            status: NodeStatus::Pending,
            last_heartbeat: None,
            heartbeat: None,
            applied_version: None,
            nack: None,
        }
    }

    fn origin(name: &str, subnet: u8) -> Origin {
        Origin {
            id: Id::new_v4(),
            name: name.into(),
            subnet,
            public_key: PrivateKey::generate().public_key(),
            managed_key: true,
            tunnel: None,
            state: state(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn edge(name: &str) -> Edge {
        Edge {
            id: Id::new_v4(),
            name: name.into(),
            public_ip: None,
            endpoint: Some(format!("{name}.example.net:51820")),
            provider: None,
            region: None,
            public_key: PrivateKey::generate().public_key(),
            managed_key: true,
            limits: None,
            tunnel: None,
            listeners: Vec::new(),
            state: state(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn service(origin: &Origin, name: &str, port: u16) -> Service {
        Service {
            id: Id::new_v4(),
            origin_id: origin.id,
            name: name.into(),
            port,
            protocol: Protocol::Http,
            local_address: format!("127.0.0.1:{port}"),
            health_path: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn assign(edge: &Edge, origin: &Origin, host: u8) -> Assignment {
        Assignment {
            edge_id: edge.id,
            origin_id: origin.id,
            address: Ipv4Addr::new(10, 100, origin.subnet, host),
            origin_address: origin.address(),
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn route(host: &str, service: &Service, limits: &str) -> Route {
        Route {
            id: Id::new_v4(),
            hostname: host.into(),
            aliases: vec![format!("www.{host}")],
            service_id: service.id,
            origin_id: service.origin_id,
            limits: kokoa_model::from_json(limits).expect("limits"),
            problem: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn cert(names: &[&str]) -> Certificate {
        Certificate {
            id: Id::new_v4(),
            names: names.iter().map(|n| n.to_string()).collect(),
            source: CertificateSource::Manual,
            chain_pem: Some(format!("CHAIN {}", names.join(","))),
            issuer: None,
            not_after: None,
            last_error: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    /// Two origins (home, lab); edge e1 serves home only, e2 serves both, e3 nothing.
    struct World {
        shared: SharedSnapshot,
        home: Origin,
        lab: Origin,
        e1: Edge,
        e2: Edge,
        e3: Edge,
    }

    fn world() -> World {
        let home = origin("home", 1);
        let lab = origin("lab", 2);
        let (e1, e2, e3) = (edge("e1"), edge("e2"), edge("e3"));
        let web = service(&home, "web", 8001);
        let api = service(&lab, "api", 9001);
        let certs = vec![
            cert(&["app.example.com", "www.app.example.com"]),
            cert(&["*.lab.example.com"]),
            cert(&["unrelated.example.org"]),
        ];
        // Through JSON so fields added to the store's snapshot later default to empty here.
        let snapshot: store::Snapshot = serde_json::from_value(json!({
            "version": 7,
            "origins": [home, lab],
            "services": [web, api],
            "edges": [e1, e2, e3],
            "assignments": [
                assign(&e1, &home, 10),
                assign(&e2, &home, 11),
                assign(&e2, &lab, 10),
            ],
            "routes": [
                route("app.example.com", &web, r#"{"rate": 10}"#),
                route("x.lab.example.com", &api, "{}"),
            ],
            "certificates": certs,
        }))
        .expect("a store snapshot");
        let mut shared = SharedSnapshot::new(snapshot, 10);
        for c in &certs {
            shared
                .certificate_keys
                .insert(c.id, Arc::new(Zeroizing::new(format!("KEY {}", c.id))));
        }
        shared.node_keys.insert(
            NodeId::Edge(e1.id),
            Arc::new(Zeroizing::new("e1-private".into())),
        );
        World {
            shared,
            home,
            lab,
            e1,
            e2,
            e3,
        }
    }

    fn edge_of(w: &World, e: &Edge) -> pb::EdgeSnapshot {
        match for_node(&w.shared, NodeId::Edge(e.id)).map(|s| (s.version, s.node)) {
            Some((7, Some(pb::snapshot::Node::Edge(edge)))) => edge,
            other => panic!("expected an edge snapshot at version 7, got {other:?}"),
        }
    }

    #[test]
    fn an_edge_sees_only_what_it_serves() {
        let w = world();
        let e1 = edge_of(&w, &w.e1);
        assert_eq!(e1.name, "e1");
        assert_eq!(e1.private_key, "e1-private");
        assert_eq!(e1.origins.len(), 1);
        assert_eq!(e1.origins[0].name, "home");
        assert_eq!(e1.origins[0].public_key, w.home.public_key.to_base64());
        assert_eq!(e1.origins[0].address, "10.100.1.10");
        assert_eq!(e1.origins[0].origin_address, "10.100.1.1");
        let hosts: Vec<&str> = e1.routes.iter().map(|r| r.host.as_str()).collect();
        assert_eq!(hosts, ["app.example.com"]);
        assert_eq!(e1.routes[0].origin, "home");
        assert_eq!(e1.routes[0].port, 8001);
        assert_eq!(e1.routes[0].aliases, ["www.app.example.com"]);
        let limits = e1.routes[0].limits.as_ref().expect("typed limits");
        assert_eq!(limits.rate, Some(10.0));
        assert_eq!(limits.burst, None);
        assert_eq!(e1.certificates.len(), 1);
        let app = w.shared.store.certificates[0].id.to_string();
        assert_eq!(e1.certificates[0].id, app);
        assert!(e1.certificates[0].key_pem.starts_with("KEY "));

        let e2 = edge_of(&w, &w.e2);
        assert_eq!(e2.private_key, "", "an unmanaged key is not sent");
        let names: Vec<&str> = e2.origins.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["home", "lab"]);
        assert_eq!(e2.routes.len(), 2);
        assert_eq!(e2.routes[1].limits, None, "empty limits are sent as none");
        assert_eq!(
            e2.certificates.len(),
            2,
            "the wildcard covers x.lab.example.com"
        );

        let e3 = edge_of(&w, &w.e3);
        assert!(e3.origins.is_empty() && e3.routes.is_empty() && e3.certificates.is_empty());
    }

    #[test]
    fn an_origin_sees_only_its_services_and_edges() {
        let w = world();
        let lab = match for_node(&w.shared, NodeId::Origin(w.lab.id)).and_then(|s| s.node) {
            Some(pb::snapshot::Node::Origin(o)) => o,
            other => panic!("expected an origin snapshot, got {other:?}"),
        };
        assert_eq!(lab.name, "lab");
        assert_eq!(lab.address, "10.100.2.1");
        assert_eq!(lab.edges.len(), 1);
        assert_eq!(lab.edges[0].name, "e2");
        assert_eq!(lab.edges[0].public_key, w.e2.public_key.to_base64());
        assert_eq!(lab.edges[0].endpoint, "e2.example.net:51820");
        assert_eq!(lab.edges[0].address, "10.100.2.10");
        assert_eq!(lab.edges[0].keepalive, 25);
        assert_eq!(lab.services.len(), 1);
        assert_eq!(lab.services[0].name, "api");
        assert_eq!(lab.services[0].local, "127.0.0.1:9001");
        assert_eq!(lab.services[0].protocol, "http");

        let home = match for_node(&w.shared, NodeId::Origin(w.home.id)).and_then(|s| s.node) {
            Some(pb::snapshot::Node::Origin(o)) => o,
            other => panic!("expected an origin snapshot, got {other:?}"),
        };
        let names: Vec<&str> = home.edges.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["e1", "e2"]);
        assert_eq!(home.services.len(), 1);
    }

    #[test]
    fn routes_whose_stored_limits_do_not_fit_the_model_are_left_out() {
        let mut w = world();
        // What the store reads back from limits an older control stored unchecked.
        w.shared.store.routes[0].problem = Some("the stored limits {\"alow\": ...}".into());
        let e1 = edge_of(&w, &w.e1);
        assert!(e1.routes.is_empty(), "{:?}", e1.routes);
        let e2 = edge_of(&w, &w.e2);
        assert_eq!(e2.routes.len(), 1, "the other route is still sent");
        assert_eq!(e2.routes[0].host, "x.lab.example.com");
    }

    #[test]
    fn tcp_routes_limits_and_tunnel_settings_reach_the_edges_that_serve_them() {
        let mut w = world();
        let api = w.shared.store.services[1].clone();
        let tcp: store::TcpRoute = serde_json::from_value(json!({
            "id": Id::new_v4(), "listen_port": 5432, "listen_ip": null,
            "service_id": api.id, "origin_id": api.origin_id, "proxy_protocol": "v2",
            "allow": ["10.0.0.0/8"], "deny": ["10.9.0.0/16"],
            "created_at": "1970-01-01T00:00:00Z", "updated_at": "1970-01-01T00:00:00Z",
        }))
        .expect("a TCP route");
        w.shared.store.tcp_routes.push(tcp);
        w.shared.store.edges[1].limits =
            Some(kokoa_model::from_json(r#"{"rate": 5, "max_connections": 100}"#).expect("limits"));
        w.shared.store.edges[1].tunnel = Some(store::TunnelSettings {
            mtu: Some(kokoa_model::Mtu::new(1280).expect("mtu")),
            tcp_buffer: None,
        });
        let e2 = edge_of(&w, &w.e2);
        assert_eq!(e2.tcp_routes.len(), 1);
        let route = &e2.tcp_routes[0];
        assert_eq!((route.listen_port, route.port), (5432, 9001));
        assert_eq!(route.origin, "lab");
        assert!(route.proxy_protocol_v2);
        assert_eq!(
            (route.allow.as_slice(), route.deny.as_slice()),
            (
                &["10.0.0.0/8".to_string()][..],
                &["10.9.0.0/16".to_string()][..]
            )
        );
        let limits = e2.limits.as_ref().expect("limits");
        assert_eq!(
            (limits.rate, limits.max_connections),
            (Some(5.0), Some(100))
        );
        assert_eq!(e2.tunnel.as_ref().map(|t| t.mtu), Some(1280));
        // e1 does not serve lab: no TCP route; its own settings stay the file's.
        let e1 = edge_of(&w, &w.e1);
        assert!(e1.tcp_routes.is_empty());
        assert!(e1.limits.is_none() && e1.tunnel.is_none());
        // And every edge would accept what it gets.
        store::spec::check(&w.shared.store).expect("the model's rules hold");
    }

    #[test]
    fn unknown_nodes_get_nothing() {
        let w = world();
        assert!(for_node(&w.shared, NodeId::Edge(Id::new_v4())).is_none());
        assert!(for_node(&w.shared, NodeId::Origin(w.e1.id)).is_none());
        assert_eq!(nodes(&w.shared).len(), 5);
    }

    #[test]
    fn certificate_name_matching() {
        assert!(covers("app.example.com", "APP.example.com"));
        assert!(covers("*.example.com", "a.example.com"));
        assert!(!covers("*.example.com", "a.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(covers("*.example.com", "*.example.com"));
        assert!(!covers("a.example.com", "*.example.com"));
        assert!(!covers("*.example.com", "*.x.example.com"));
    }
}
