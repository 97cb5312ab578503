//! What each node runs, as values of the shared model, built from a store [`Snapshot`].
//!
//! One construction serves two purposes, so they cannot disagree:
//! - the gRPC snapshot builder sends what [`edge_spec`] and [`origin_spec`] return;
//! - before the store commits a change it builds every node's spec from the changed state and
//!   checks it with the model's rules across objects ([`check`]), the same functions a node
//!   runs before it applies a snapshot. A change control accepts is a change every node
//!   accepts.
//!
//! A stored value the model refuses can only come from an older control (everything written
//! now went through the model first). Such an object is held back from the node, with the
//! reason ([`HeldBack`]), rather than sent and refused with everything else.

use std::collections::HashMap;
use std::net::SocketAddr;

use kokoa_model::error::{ObjectKind, ObjectRef};
use kokoa_model::net::TcpListen;
use kokoa_model::peer::{default_origin_keepalive, Keepalive};
use kokoa_model::{
    AccessRules, EdgePeer, EdgeSpec, Endpoint, HealthPath, HostPattern, HttpRoute, ModelError,
    Name, OriginPeer, OriginSpec, Overlay, Port, TcpRoute as ModelTcpRoute, TunnelIp,
};

use super::error::StoreError;
use super::model::{Edge, Id, Origin, Service, Snapshot};

/// An object left out of a node's config because a stored value no longer fits the model.
#[derive(Clone, Debug, PartialEq)]
pub struct HeldBack {
    /// Which object.
    pub object: ObjectRef,
    /// Why.
    pub reason: String,
}

/// A node's config and what was held back from it.
#[derive(Clone, Debug)]
pub struct NodeConfig<S> {
    /// What the node runs.
    pub spec: S,
    /// Objects left out (see [`HeldBack`]).
    pub held_back: Vec<HeldBack>,
}

fn name(text: &str) -> Result<Name, ModelError> {
    Name::new(text)
}

fn tunnel_ip(ip: std::net::Ipv4Addr) -> Result<TunnelIp, ModelError> {
    TunnelIp::new(ip)
}

/// The config of edge `edge_id` in `snapshot` (`None` when there is no such edge): one peer per
/// origin it serves, the routes and TCP routes of those origins, its `[limits]` and tunnel
/// settings when control sets them. Certificates are not part of it (each was parsed with the
/// model when it was stored; the snapshot builder adds those the routes need).
pub fn edge_spec(snapshot: &Snapshot, edge_id: Id) -> Option<NodeConfig<EdgeSpec>> {
    let edge = snapshot.edges.iter().find(|e| e.id == edge_id)?;
    let origins: HashMap<Id, &Origin> = snapshot.origins.iter().map(|o| (o.id, o)).collect();
    let services: HashMap<Id, &Service> = snapshot.services.iter().map(|s| (s.id, s)).collect();
    let mut held_back = Vec::new();
    let mut hold = |kind, key: &str, error: String| {
        held_back.push(HeldBack {
            object: ObjectRef::new(kind, key),
            reason: error,
        });
    };

    let mut peers = Vec::new();
    let mut served: HashMap<Id, Name> = HashMap::new();
    for assignment in snapshot.assignments.iter().filter(|a| a.edge_id == edge_id) {
        let Some(origin) = origins.get(&assignment.origin_id) else {
            continue;
        };
        let peer = (|| {
            Ok::<_, ModelError>(OriginPeer {
                name: name(&origin.name)?,
                public_key: origin.public_key,
                // Origins sit behind NAT and dial in; the edge learns their endpoint from
                // their packets (WireGuard roaming).
                endpoint: None,
                address: tunnel_ip(assignment.address)?,
                origin_address: tunnel_ip(assignment.origin_address)?,
                // The origin keeps the path open; the edge has nowhere to send keepalives to
                // before the origin is heard from.
                keepalive: Keepalive::OFF,
            })
        })();
        match peer {
            Ok(peer) => {
                served.insert(origin.id, peer.name.clone());
                peers.push(peer);
            }
            Err(error) => hold(ObjectKind::Origin, &origin.name, error.to_string()),
        }
    }
    peers.sort_by(|a, b| a.name.cmp(&b.name));

    let mut routes = Vec::new();
    for route in &snapshot.routes {
        let (Some(origin), Some(service)) = (
            served.get(&route.origin_id),
            services.get(&route.service_id),
        ) else {
            continue;
        };
        if let Some(problem) = &route.problem {
            hold(ObjectKind::Route, &route.hostname, problem.clone());
            continue;
        }
        let converted = (|| {
            Ok::<_, ModelError>(HttpRoute {
                host: HostPattern::new(&route.hostname)?,
                aliases: route
                    .aliases
                    .iter()
                    .map(|alias| HostPattern::new(alias))
                    .collect::<Result<_, _>>()?,
                origin: origin.clone(),
                port: Port::new(service.port)?,
                limits: route.limits.clone(),
            })
        })();
        match converted {
            Ok(route) => routes.push(route),
            Err(error) => hold(ObjectKind::Route, &route.hostname, error.to_string()),
        }
    }
    routes.sort_by(|a, b| a.host.as_str().cmp(b.host.as_str()));

    let mut tcp_routes = Vec::new();
    for route in &snapshot.tcp_routes {
        let (Some(origin), Some(service)) = (
            served.get(&route.origin_id),
            services.get(&route.service_id),
        ) else {
            continue;
        };
        match Port::new(service.port) {
            Ok(port) => tcp_routes.push(ModelTcpRoute {
                listen: TcpListen {
                    ip: route.listen_ip,
                    port: route.listen_port.get(),
                },
                origin: origin.clone(),
                port,
                proxy_protocol: route.proxy_protocol,
                access: AccessRules {
                    allow: route.allow.clone(),
                    deny: route.deny.clone(),
                },
            }),
            Err(error) => hold(
                ObjectKind::TcpRoute,
                &route.listen_port.to_string(),
                error.to_string(),
            ),
        }
    }
    tcp_routes.sort_by_key(|r| r.listen.port);

    Some(NodeConfig {
        spec: EdgeSpec {
            origins: peers,
            routes,
            tcp_routes,
            certificates: Vec::new(),
            limits: edge.limits.clone(),
            tunnel: edge.tunnel.map(|t| t.options()),
        },
        held_back,
    })
}

/// Persistent keepalive an origin uses toward its edges: keeps the NAT mapping of an origin
/// behind NAT open so edges can reach it (WireGuard's customary 25 s).
pub fn origin_keepalive() -> Keepalive {
    default_origin_keepalive()
}

/// The config of origin `origin_id` in `snapshot` (`None` when there is no such origin): its
/// address, one peer per edge serving it, its services, its tunnel settings when control sets
/// them.
pub fn origin_spec(snapshot: &Snapshot, origin_id: Id) -> Option<NodeConfig<OriginSpec>> {
    let origin = snapshot.origins.iter().find(|o| o.id == origin_id)?;
    let edges: HashMap<Id, &Edge> = snapshot.edges.iter().map(|e| (e.id, e)).collect();
    let mut held_back = Vec::new();
    let address = match tunnel_ip(origin.address()) {
        Ok(address) => address,
        Err(error) => {
            // Control allocates 10.100.X.1 with X in 1..=254: only a hand-edited row gets here.
            held_back.push(HeldBack {
                object: ObjectRef::new(ObjectKind::Node, ""),
                reason: error.to_string(),
            });
            return None;
        }
    };
    let mut peers = Vec::new();
    for assignment in snapshot
        .assignments
        .iter()
        .filter(|a| a.origin_id == origin_id)
    {
        let Some(edge) = edges.get(&assignment.edge_id) else {
            continue;
        };
        let peer = (|| {
            Ok::<_, ModelError>(EdgePeer {
                name: name(&edge.name)?,
                public_key: edge.public_key,
                // Unset while the edge's endpoint is unknown (a VPS being provisioned); the
                // origin then waits for the edge's packets.
                endpoint: edge.endpoint.as_deref().map(Endpoint::parse).transpose()?,
                address: tunnel_ip(assignment.address)?,
                keepalive: origin_keepalive(),
            })
        })();
        match peer {
            Ok(peer) => peers.push(peer),
            Err(error) => held_back.push(HeldBack {
                object: ObjectRef::new(ObjectKind::Edge, edge.name.as_str()),
                reason: error.to_string(),
            }),
        }
    }
    peers.sort_by(|a, b| a.name.cmp(&b.name));
    let mut services = Vec::new();
    for service in snapshot
        .services
        .iter()
        .filter(|s| s.origin_id == origin_id)
    {
        let converted = (|| {
            Ok::<_, ModelError>(kokoa_model::Service {
                name: name(&service.name)?,
                port: Port::new(service.port)?,
                local: Endpoint::parse(&service.local_address)?,
                protocol: service.protocol,
                health_path: service
                    .health_path
                    .as_deref()
                    .map(HealthPath::new)
                    .transpose()?,
            })
        })();
        match converted {
            Ok(service) => services.push(service),
            Err(error) => held_back.push(HeldBack {
                object: ObjectRef::new(ObjectKind::Service, service.name.as_str()),
                reason: error.to_string(),
            }),
        }
    }
    services.sort_by_key(|s| s.port);
    Some(NodeConfig {
        spec: OriginSpec {
            address,
            edges: peers,
            services,
            tunnel: origin.tunnel.map(|t| t.options()),
        },
        held_back,
    })
}

/// The TCP listeners `edge` reported, and the address its TCP routes listen on by default (its
/// HTTPS listener's), as the model's listener check takes them.
fn listeners(edge: &Edge) -> Option<(Vec<(&str, SocketAddr)>, std::net::IpAddr)> {
    let https = edge.listeners.iter().find(|l| l.name == "https")?;
    let list = edge
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.address))
        .collect();
    Some((list, https.address.ip()))
}

/// Checks every node's config in `snapshot` with the model's rules across objects (the checks
/// each node runs before applying a snapshot), plus each edge's TCP routes against the
/// listeners it reported. The error says which node would refuse what.
pub fn check(snapshot: &Snapshot) -> Result<(), StoreError> {
    let refused = |node: &str, error: ModelError| {
        let object = error
            .object
            .as_ref()
            .map(|o| format!(" ({o})"))
            .unwrap_or_default();
        StoreError::invalid(
            error.field.clone(),
            format!(
                "{node} would refuse its config with this change{object}: {}",
                error.message
            ),
        )
    };
    for edge in &snapshot.edges {
        let Some(config) = edge_spec(snapshot, edge.id) else {
            continue;
        };
        config
            .spec
            .validate(Some(edge.public_key), Overlay::default())
            .map_err(|e| refused(&format!("edge {}", edge.name), e))?;
        if let Some((listeners, tcp_ip)) = listeners(edge) {
            if let Some((_, error)) = config
                .spec
                .listener_conflicts(&listeners, tcp_ip)
                .into_iter()
                .next()
            {
                return Err(StoreError::conflict_on(
                    "listen_port",
                    format!("edge {}: {error}", edge.name),
                ));
            }
        }
    }
    for origin in &snapshot.origins {
        let Some(config) = origin_spec(snapshot, origin.id) else {
            continue;
        };
        config
            .spec
            .validate(Some(origin.public_key), Overlay::default())
            .map_err(|e| refused(&format!("origin {}", origin.name), e))?;
    }
    Ok(())
}
