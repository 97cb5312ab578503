//! Per-node snapshots: what one edge or origin may see of the store.
//!
//! [`SharedSnapshot`] is built once per config version (the store's snapshot plus the private
//! keys and certificate keys the nodes need) and shared by every Watch stream; [`for_node`]
//! filters it for one node without touching the database. The filters are pure functions so the
//! isolation rules are unit-tested here:
//! - an edge gets its own private key, one peer per origin it is assigned to, the routes whose
//!   service belongs to one of those origins, and the certificates covering those routes' names;
//! - an origin gets its own private key, its services and one peer per edge assigned to it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kokoa_proto::v1 as pb;
use zeroize::Zeroizing;

use crate::store::{self, Id, NodeId};

/// Persistent keepalive an origin uses toward its edges: keeps the NAT mapping of an origin
/// behind NAT open so edges can reach it (WireGuard's customary 25 s).
pub const ORIGIN_KEEPALIVE_SECONDS: u32 = 25;

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

/// What edge `edge_id` runs.
pub fn edge_snapshot(shared: &SharedSnapshot, edge_id: Id) -> Option<pb::EdgeSnapshot> {
    let s = &shared.store;
    let edge = s.edges.iter().find(|e| e.id == edge_id)?;
    let origins: HashMap<Id, &store::Origin> = s.origins.iter().map(|o| (o.id, o)).collect();

    let mut served: HashMap<Id, &store::Origin> = HashMap::new();
    let mut peers = Vec::new();
    for assignment in s.assignments.iter().filter(|a| a.edge_id == edge_id) {
        let Some(origin) = origins.get(&assignment.origin_id) else {
            continue;
        };
        served.insert(origin.id, origin);
        peers.push(pb::EdgePeer {
            name: origin.name.clone(),
            public_key: origin.public_key.to_base64(),
            // Origins sit behind NAT and dial in; the edge learns their endpoint from their
            // packets (WireGuard roaming).
            endpoint: String::new(),
            address: assignment.address.to_string(),
            origin_address: assignment.origin_address.to_string(),
            // The origin keeps the path open; the edge has nowhere to send keepalives to
            // before the origin is heard from.
            keepalive: 0,
        });
    }
    peers.sort_by(|a, b| a.name.cmp(&b.name));

    let services: HashMap<Id, &store::Service> = s.services.iter().map(|v| (v.id, v)).collect();
    let mut routes = Vec::new();
    let mut names = Vec::new();
    for route in &s.routes {
        let Some(origin) = served.get(&route.origin_id) else {
            continue;
        };
        let Some(service) = services.get(&route.service_id) else {
            continue;
        };
        let limits = match route_limits(&route.limits) {
            Ok(limits) => limits,
            Err(error) => {
                // Sending the route without its limits would drop its allow/deny lists and
                // open it to everyone: leave it out, loudly, and serve the others.
                tracing::error!(route = %route.hostname, %error, "stored route limits do not fit the model; the route is not sent to edges until they are fixed");
                continue;
            }
        };
        names.push(route.hostname.as_str());
        names.extend(route.aliases.iter().map(String::as_str));
        routes.push(pb::Route {
            host: route.hostname.clone(),
            aliases: route.aliases.clone(),
            origin: origin.name.clone(),
            port: u32::from(service.port),
            limits,
        });
    }
    routes.sort_by(|a, b| a.host.cmp(&b.host));

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

    Some(pb::EdgeSnapshot {
        name: edge.name.clone(),
        private_key: key_of(shared, NodeId::Edge(edge_id)),
        origins: peers,
        routes,
        // The store has no raw TCP routes yet.
        tcp_routes: Vec::new(),
        certificates,
        acme_http_challenges: shared.acme_http_challenges.clone(),
        acme_tls_alpn_challenges: shared.acme_tls_alpn_challenges.clone(),
        // The store has no per-edge limits or tunnel settings yet: the edges keep their own.
        limits: None,
        tunnel: None,
    })
}

/// What origin `origin_id` runs.
pub fn origin_snapshot(shared: &SharedSnapshot, origin_id: Id) -> Option<pb::OriginSnapshot> {
    let s = &shared.store;
    let origin = s.origins.iter().find(|o| o.id == origin_id)?;
    let edges: HashMap<Id, &store::Edge> = s.edges.iter().map(|e| (e.id, e)).collect();
    let mut peers = Vec::new();
    for assignment in s.assignments.iter().filter(|a| a.origin_id == origin_id) {
        let Some(edge) = edges.get(&assignment.edge_id) else {
            continue;
        };
        peers.push(pb::OriginPeer {
            name: edge.name.clone(),
            public_key: edge.public_key.to_base64(),
            // Empty while the edge's endpoint is unknown (a VPS being provisioned); the origin
            // then waits for the edge's packets.
            endpoint: edge.endpoint.clone().unwrap_or_default(),
            address: assignment.address.to_string(),
            keepalive: ORIGIN_KEEPALIVE_SECONDS,
        });
    }
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    let mut services: Vec<pb::Service> = s
        .services
        .iter()
        .filter(|v| v.origin_id == origin_id)
        .map(|v| pb::Service {
            name: v.name.clone(),
            port: u32::from(v.port),
            local: v.local_address.clone(),
            protocol: v.protocol.as_str().to_owned(),
            health_path: v.health_path.clone().unwrap_or_default(),
        })
        .collect();
    services.sort_by_key(|v| v.port);
    Some(pb::OriginSnapshot {
        name: origin.name.clone(),
        private_key: key_of(shared, NodeId::Origin(origin_id)),
        address: origin.address().to_string(),
        edges: peers,
        services,
        tunnel: None,
    })
}

/// The route's limits as typed wire fields, read from the JSON the store keeps through the
/// model's [`RouteLimits`](kokoa_model::RouteLimits) (the same check the edge applies); `None`
/// when the route sets none.
fn route_limits(
    limits: &serde_json::Value,
) -> Result<Option<pb::RouteLimits>, kokoa_model::ModelError> {
    if limits.is_null() {
        return Ok(None);
    }
    let limits: kokoa_model::RouteLimits = kokoa_model::from_json_value(limits.clone())?;
    Ok((!limits.is_empty()).then(|| limits.to_proto()))
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

    use kokoa_tunnel::key::PrivateKey;
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

    fn route(host: &str, service: &Service, limits: serde_json::Value) -> Route {
        Route {
            id: Id::new_v4(),
            hostname: host.into(),
            aliases: vec![format!("www.{host}")],
            service_id: service.id,
            origin_id: service.origin_id,
            limits,
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
                route("app.example.com", &web, json!({"rate": 10})),
                route("x.lab.example.com", &api, json!({})),
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
        assert_eq!(lab.edges[0].keepalive, ORIGIN_KEEPALIVE_SECONDS);
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
        w.shared.store.routes[0].limits = json!({"alow": ["10.0.0.0/8"]});
        let e1 = edge_of(&w, &w.e1);
        assert!(e1.routes.is_empty(), "{:?}", e1.routes);
        w.shared.store.routes[0].limits = json!({"rate": -1});
        assert!(edge_of(&w, &w.e1).routes.is_empty());
        let e2 = edge_of(&w, &w.e2);
        assert_eq!(e2.routes.len(), 1, "the other route is still sent");
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
