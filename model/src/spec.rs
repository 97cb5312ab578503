//! What a node runs, as a whole: an edge's origins, routes, TCP routes, certificates, limits
//! and tunnel settings ([`EdgeSpec`]), and an origin's address, edges, services and tunnel
//! settings ([`OriginSpec`]), with the rules that span several objects (references between
//! them, duplicates, address plans, listeners). Control checks these before it stores a
//! change, the nodes check them before they apply a config: the same functions.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use time::OffsetDateTime;

use crate::cert::Certificate;
use crate::error::{ModelError, ObjectKind, ObjectRef};
use crate::key::PublicKey;
use crate::limits::EdgeLimits;
use crate::name::Name;
use crate::net::{listeners_overlap, Overlay, TcpListen, TunnelIp};
use crate::peer::{EdgePeer, OriginPeer};
use crate::route::{HttpRoute, TcpRoute};
use crate::service::Service;
use crate::tunnel::TunnelOptions;

/// Everything an edge serves: what control's `EdgeSnapshot` carries and what the routing
/// tables of `edge.toml` hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EdgeSpec {
    /// The origins (tunnel peers) this edge forwards to.
    pub origins: Vec<OriginPeer>,
    /// HTTP routes.
    pub routes: Vec<HttpRoute>,
    /// Raw TCP routes.
    pub tcp_routes: Vec<TcpRoute>,
    /// Certificates; each serves the names in its own subjectAltName.
    pub certificates: Vec<Certificate>,
    /// The `[limits]` defaults; `None`: the node keeps its own (its bootstrap file's).
    pub limits: Option<EdgeLimits>,
    /// Tunnel settings; `None`: the node keeps its own.
    pub tunnel: Option<TunnelOptions>,
}

/// Everything an origin runs: what control's `OriginSnapshot` carries and what `origin.toml`
/// holds besides its listeners.
#[derive(Clone, Debug, PartialEq)]
pub struct OriginSpec {
    /// The origin's own address inside the tunnel (`10.100.X.1`).
    pub address: TunnelIp,
    /// The edges (tunnel peers) that serve this origin.
    pub edges: Vec<EdgePeer>,
    /// The services reachable through the tunnel.
    pub services: Vec<Service>,
    /// Tunnel settings; `None`: the node keeps its own.
    pub tunnel: Option<TunnelOptions>,
}

/// A rule broken by an object at `list[index]`.
fn item_error(list: &str, index: usize, object: ObjectRef, error: ModelError) -> ModelError {
    error.within(&format!("{list}[{index}]")).about(object)
}

/// Checks a list for duplicate keys; the error names the later entry.
struct Unique<K> {
    seen: HashMap<K, usize>,
}

impl<K: std::hash::Hash + Eq> Unique<K> {
    fn new() -> Self {
        Self {
            seen: HashMap::new(),
        }
    }

    /// `Err(first index)` when `key` was seen before.
    fn insert(&mut self, key: K, index: usize) -> Result<(), usize> {
        match self.seen.insert(key, index) {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }
}

fn check_overlay(field: &str, ip: TunnelIp, overlay: Overlay) -> Result<(), ModelError> {
    if overlay.contains(ip) {
        Ok(())
    } else {
        Err(ModelError::new(
            field,
            format!(
                "{ip} is outside the overlay range {overlay}: tunnel addresses come from it (set [tunnel] overlay if yours differs)"
            ),
        ))
    }
}

impl EdgeSpec {
    /// The overlay range in force: the spec's own, or `fallback` (the node's).
    pub fn overlay_or(&self, fallback: Overlay) -> Overlay {
        self.tunnel.map_or(fallback, |t| t.overlay)
    }

    /// The rules across objects: unique origin names, keys and addresses; each origin's two
    /// addresses in one /24 inside `overlay`; no origin with `own_key` (this edge's public
    /// key, when known); routes and TCP routes naming known origins; no host or alias routed
    /// twice; no two TCP routes on the same listener. Errors name the field and the object.
    pub fn validate(&self, own_key: Option<PublicKey>, overlay: Overlay) -> Result<(), ModelError> {
        let overlay = self.overlay_or(overlay);
        let mut names = Unique::new();
        let mut keys = Unique::new();
        let mut origin_addresses = Unique::new();
        let mut addresses = Unique::new();
        for (i, origin) in self.origins.iter().enumerate() {
            let fail = |error: ModelError| item_error("origins", i, origin.object(), error);
            if let Err(first) = names.insert(&origin.name, i) {
                return Err(fail(ModelError::new(
                    "name",
                    format!(
                        "`{}` is also origins[{first}]; names must be unique",
                        origin.name
                    ),
                )));
            }
            if Some(origin.public_key) == own_key {
                return Err(fail(ModelError::new(
                    "public_key",
                    "is this edge's own public key; use the origin's key (`kokoa-origin pubkey`)",
                )));
            }
            if let Err(first) = keys.insert(origin.public_key, i) {
                return Err(fail(ModelError::new(
                    "public_key",
                    format!("is also the key of origins[{first}]; each origin has its own key"),
                )));
            }
            origin.check().map_err(fail)?;
            check_overlay("address", origin.address, overlay).map_err(fail)?;
            check_overlay("origin_address", origin.origin_address, overlay).map_err(fail)?;
            if let Err(first) = origin_addresses.insert(origin.origin_address, i) {
                return Err(fail(ModelError::new(
                    "origin_address",
                    format!(
                        "{} is also the address of origins[{first}]; each origin owns its own /24",
                        origin.origin_address
                    ),
                )));
            }
            if let Err(first) = addresses.insert(origin.address, i) {
                return Err(fail(ModelError::new(
                    "address",
                    format!(
                        "{} is also this edge's address toward origins[{first}]; two origins cannot share an edge address",
                        origin.address
                    ),
                )));
            }
        }

        let known: HashSet<&Name> = self.origins.iter().map(|o| &o.name).collect();
        let unknown_origin = |name: &Name| {
            ModelError::new(
                "origin",
                format!(
                    "unknown origin \"{name}\": this edge has no origin of that name (add an [[origins]] entry, or assign the origin to this edge in control)"
                ),
            )
        };
        let mut hosts: HashMap<&str, String> = HashMap::new();
        for (i, route) in self.routes.iter().enumerate() {
            let fail = |error: ModelError| item_error("routes", i, route.object(), error);
            if !known.contains(&route.origin) {
                return Err(fail(unknown_origin(&route.origin)));
            }
            for (k, name) in route.names().enumerate() {
                let here = if k == 0 {
                    format!("routes[{i}].host")
                } else {
                    format!("routes[{i}].aliases[{}]", k - 1)
                };
                if let Some(previous) = hosts.insert(name.as_str(), here.clone()) {
                    return Err(ModelError::new(
                        here,
                        format!("`{name}` is already routed by {previous}"),
                    )
                    .about(route.object()));
                }
            }
        }

        for (i, route) in self.tcp_routes.iter().enumerate() {
            let fail = |error: ModelError| item_error("tcp_routes", i, route.object(), error);
            if !known.contains(&route.origin) {
                return Err(fail(unknown_origin(&route.origin)));
            }
            if let Some(first) = self.tcp_routes[..i]
                .iter()
                .position(|other| tcp_overlap(other.listen, route.listen))
            {
                return Err(fail(ModelError::new(
                    "listen",
                    format!(
                        "{} is also the listener of tcp_routes[{first}]; give each TCP route its own port",
                        route.listen
                    ),
                )));
            }
        }
        Ok(())
    }

    /// TCP routes whose listener collides with one of the node's own `listeners` (name and
    /// address; routes without an address listen on `tcp_ip`). A file-mode edge refuses the
    /// first; a control-mode edge reports each for its route and serves the others.
    pub fn listener_conflicts(
        &self,
        listeners: &[(&str, SocketAddr)],
        tcp_ip: IpAddr,
    ) -> Vec<(usize, ModelError)> {
        let mut conflicts = Vec::new();
        for (i, route) in self.tcp_routes.iter().enumerate() {
            let addr = route.listen.addr(tcp_ip);
            if let Some((name, other)) = listeners
                .iter()
                .find(|(_, other)| listeners_overlap(addr, *other))
            {
                conflicts.push((
                    i,
                    item_error(
                        "tcp_routes",
                        i,
                        route.object(),
                        ModelError::new(
                            "listen",
                            format!("{addr} overlaps {name} ({other}); pick another port"),
                        ),
                    ),
                ));
            }
        }
        conflicts
    }

    /// Loud but not fatal: certificates outside their validity at `now`, as messages naming
    /// the certificate's names and dates.
    pub fn certificate_warnings(&self, now: OffsetDateTime) -> Vec<String> {
        self.certificates
            .iter()
            .enumerate()
            .filter(|(_, cert)| !cert.is_valid_at(now))
            .map(|(i, cert)| {
                let names: Vec<&str> = cert.names().iter().map(|n| n.as_str()).collect();
                if cert.not_after() <= now {
                    format!(
                        "certificates[{i}] ({}) expired at {}: clients will refuse it; renew it",
                        names.join(", "),
                        cert.not_after()
                    )
                } else {
                    format!(
                        "certificates[{i}] ({}) is not valid before {}: check the clock or the certificate",
                        names.join(", "),
                        cert.not_before()
                    )
                }
            })
            .collect()
    }
}

/// Whether two TCP route listeners collide. A listener without an address is on the edge's
/// HTTPS address, which the model does not know: it collides with any listener on its port
/// unless both name different addresses.
fn tcp_overlap(a: TcpListen, b: TcpListen) -> bool {
    if a.port == 0 || b.port == 0 || a.port != b.port {
        return false;
    }
    match (a.ip, b.ip) {
        (Some(x), Some(y)) => {
            listeners_overlap(SocketAddr::new(x, a.port), SocketAddr::new(y, b.port))
        }
        _ => true,
    }
}

impl OriginSpec {
    /// The overlay range in force: the spec's own, or `fallback` (the node's).
    pub fn overlay_or(&self, fallback: Overlay) -> Overlay {
        self.tunnel.map_or(fallback, |t| t.overlay)
    }

    /// The rules across objects: the origin's address and every edge's inside `overlay` and
    /// in the origin's /24; unique edge names, keys and addresses, none the origin's own
    /// (`own_key`, when known); unique service names and ports.
    pub fn validate(&self, own_key: Option<PublicKey>, overlay: Overlay) -> Result<(), ModelError> {
        let overlay = self.overlay_or(overlay);
        let node = ObjectRef::new(ObjectKind::Node, "");
        check_overlay("address", self.address, overlay).map_err(|e| e.about(node.clone()))?;
        let mut names = Unique::new();
        let mut keys = Unique::new();
        let mut addresses = Unique::new();
        for (i, edge) in self.edges.iter().enumerate() {
            let fail = |error: ModelError| item_error("edges", i, edge.object(), error);
            if let Err(first) = names.insert(&edge.name, i) {
                return Err(fail(ModelError::new(
                    "name",
                    format!(
                        "`{}` is also edges[{first}]; names must be unique",
                        edge.name
                    ),
                )));
            }
            if Some(edge.public_key) == own_key {
                return Err(fail(ModelError::new(
                    "public_key",
                    "is this origin's own public key; use the edge's key (`kokoa-edge pubkey`)",
                )));
            }
            if let Err(first) = keys.insert(edge.public_key, i) {
                return Err(fail(ModelError::new(
                    "public_key",
                    format!("is also the key of edges[{first}]; each edge has its own key"),
                )));
            }
            if edge.address == self.address {
                return Err(fail(ModelError::new(
                    "address",
                    format!(
                        "{} is the origin's own address; the edge's is 10.100.X.10 or above",
                        edge.address
                    ),
                )));
            }
            if !edge.address.same_subnet(self.address) {
                return Err(fail(ModelError::new(
                    "address",
                    format!(
                        "{} is outside the origin's /24 ({}); the edges of an origin use its /24",
                        edge.address, self.address
                    ),
                )));
            }
            check_overlay("address", edge.address, overlay).map_err(fail)?;
            if let Err(first) = addresses.insert(edge.address, i) {
                return Err(fail(ModelError::new(
                    "address",
                    format!("{} is also the address of edges[{first}]", edge.address),
                )));
            }
        }
        let mut service_names = Unique::new();
        let mut ports = Unique::new();
        for (i, service) in self.services.iter().enumerate() {
            let fail = |error: ModelError| item_error("services", i, service.object(), error);
            if let Err(first) = service_names.insert(&service.name, i) {
                return Err(fail(ModelError::new(
                    "name",
                    format!(
                        "`{}` is also services[{first}]; names must be unique",
                        service.name
                    ),
                )));
            }
            if let Err(first) = ports.insert(service.port, i) {
                return Err(fail(ModelError::new(
                    "port",
                    format!(
                        "{} is also the port of services[{first}]; give each service its own port",
                        service.port
                    ),
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::PrivateKey;
    use crate::serde_util::from_toml;

    #[derive(Debug, serde::Deserialize)]
    struct EdgeDoc {
        #[serde(default)]
        origins: Vec<OriginPeer>,
        #[serde(default)]
        routes: Vec<HttpRoute>,
        #[serde(default)]
        tcp_routes: Vec<TcpRoute>,
    }

    fn origin(name: &str, x: u8) -> String {
        format!(
            "[[origins]]\nname = \"{name}\"\npublic_key = \"{}\"\naddress = \"10.100.{x}.10\"\norigin_address = \"10.100.{x}.1\"\n",
            PrivateKey::generate().public_key()
        )
    }

    fn edge(text: &str) -> Result<(), ModelError> {
        let doc: EdgeDoc = from_toml(text)?;
        EdgeSpec {
            origins: doc.origins,
            routes: doc.routes,
            tcp_routes: doc.tcp_routes,
            ..EdgeSpec::default()
        }
        .validate(None, Overlay::default())
    }

    #[test]
    fn edge_cross_object_rules() {
        let base = format!("{}{}", origin("home", 1), origin("lab", 2));
        edge(&base).unwrap();
        let route = |host: &str, origin: &str| {
            format!("[[routes]]\nhost = \"{host}\"\norigin = \"{origin}\"\nport = 1\n")
        };
        for (extra, field, says) in [
            (route("a.example.com", "x"), "routes[0].origin", "unknown origin \"x\""),
            (
                format!("{}{}", route("a.example.com", "home"), route("A.example.com.", "lab")),
                "routes[1].host",
                "already routed by routes[0].host",
            ),
            (
                "[[tcp_routes]]\nlisten = 4001\norigin = \"home\"\nport = 1\n[[tcp_routes]]\nlisten = \"0.0.0.0:4001\"\norigin = \"lab\"\nport = 2\n".to_owned(),
                "tcp_routes[1].listen",
                "also the listener of tcp_routes[0]",
            ),
            (
                "[[tcp_routes]]\nlisten = 4001\norigin = \"nope\"\nport = 1\n".to_owned(),
                "tcp_routes[0].origin",
                "unknown origin",
            ),
            (origin("home", 3), "origins[2].name", "also origins[0]"),
            (
                origin("far", 4).replace("10.100.4.1\"", "10.100.5.1\""),
                "origins[2].origin_address",
                "outside the /24",
            ),
            (
                origin("out", 4).replace("10.100.4.", "10.200.4."),
                "origins[2].address",
                "outside the overlay range 10.100.0.0/16",
            ),
            (
                origin("twin", 1).replace("10.100.1.10", "10.100.1.11"),
                "origins[2].origin_address",
                "also the address of origins[0]",
            ),
            (
                origin("twin", 1).replace("10.100.1.1\"", "10.100.1.2\""),
                "origins[2].address",
                "cannot share an edge address",
            ),
        ] {
            let error = edge(&format!("{base}{extra}")).unwrap_err();
            assert_eq!(error.field, field, "{extra}: {error}");
            assert!(error.message.contains(says), "{extra}: {error}");
            assert!(error.object.is_some(), "{error}");
        }
        let error = edge(&format!("{base}{}", route("a.example.com", "x"))).unwrap_err();
        assert_eq!(
            error.object,
            Some(ObjectRef::new(ObjectKind::Route, "a.example.com"))
        );
    }

    #[test]
    fn own_key_and_duplicate_keys() {
        let key = PrivateKey::generate().public_key();
        let text =
            origin("home", 1).replace("public_key = \"", &format!("public_key = \"{key}\"\n#"));
        let doc: EdgeDoc = from_toml(&text).unwrap();
        let spec = EdgeSpec {
            origins: doc.origins,
            ..EdgeSpec::default()
        };
        let error = spec.validate(Some(key), Overlay::default()).unwrap_err();
        assert_eq!(error.field, "origins[0].public_key");
        let mut twice = spec.clone();
        let mut other = twice.origins[0].clone();
        other.name = Name::new("other").unwrap();
        other.address = TunnelIp::parse("10.100.2.10").unwrap();
        other.origin_address = TunnelIp::parse("10.100.2.1").unwrap();
        twice.origins.push(other);
        let error = twice.validate(None, Overlay::default()).unwrap_err();
        assert_eq!(error.field, "origins[1].public_key");
    }

    #[test]
    fn tcp_listeners_against_the_nodes_own() {
        let text = format!(
            "{}[[tcp_routes]]\nlisten = 443\norigin = \"home\"\nport = 1\n[[tcp_routes]]\nlisten = \"127.0.0.1:4001\"\norigin = \"home\"\nport = 2\n",
            origin("home", 1)
        );
        let doc: EdgeDoc = from_toml(&text).unwrap();
        let spec = EdgeSpec {
            origins: doc.origins,
            tcp_routes: doc.tcp_routes,
            ..EdgeSpec::default()
        };
        spec.validate(None, Overlay::default()).unwrap();
        let listeners = [
            ("edge.https", "0.0.0.0:443".parse().unwrap()),
            ("edge.admin", "127.0.0.1:9090".parse().unwrap()),
        ];
        let conflicts = spec.listener_conflicts(&listeners, "0.0.0.0".parse().unwrap());
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].0, 0);
        assert_eq!(conflicts[0].1.field, "tcp_routes[0].listen");
        assert!(
            conflicts[0].1.message.contains("edge.https"),
            "{}",
            conflicts[0].1
        );
    }

    #[derive(Debug, serde::Deserialize)]
    struct OriginDoc {
        address: TunnelIp,
        #[serde(default)]
        edges: Vec<EdgePeer>,
        #[serde(default)]
        services: Vec<Service>,
    }

    fn origin_spec(text: &str) -> Result<(), ModelError> {
        let doc: OriginDoc = from_toml(text)?;
        OriginSpec {
            address: doc.address,
            edges: doc.edges,
            services: doc.services,
            tunnel: None,
        }
        .validate(None, Overlay::default())
    }

    #[test]
    fn origin_cross_object_rules() {
        let edge = |name: &str, address: &str| {
            format!(
                "[[edges]]\nname = \"{name}\"\npublic_key = \"{}\"\naddress = \"{address}\"\n",
                PrivateKey::generate().public_key()
            )
        };
        let service = |name: &str, port: u16| {
            format!(
                "[[services]]\nname = \"{name}\"\nport = {port}\nlocal = \"127.0.0.1:{port}\"\n"
            )
        };
        let base = format!("address = \"10.100.1.1\"\n{}", edge("vps1", "10.100.1.10"));
        origin_spec(&format!("{base}{}", service("web", 8001))).unwrap();
        for (extra, field, says) in [
            (
                edge("vps2", "10.100.1.1"),
                "edges[1].address",
                "origin's own address",
            ),
            (
                edge("vps2", "10.100.2.10"),
                "edges[1].address",
                "outside the origin's /24",
            ),
            (
                edge("vps2", "10.100.1.10"),
                "edges[1].address",
                "also the address of edges[0]",
            ),
            (
                edge("vps1", "10.100.1.11"),
                "edges[1].name",
                "also edges[0]",
            ),
            (
                format!("{}{}", service("web", 8001), service("web", 8002)),
                "services[1].name",
                "also services[0]",
            ),
            (
                format!("{}{}", service("a", 8001), service("b", 8001)),
                "services[1].port",
                "also the port of services[0]",
            ),
        ] {
            let error = origin_spec(&format!("{base}{extra}")).unwrap_err();
            assert_eq!(error.field, field, "{extra}: {error}");
            assert!(error.message.contains(says), "{extra}: {error}");
        }
        let error = origin_spec("address = \"10.99.1.1\"").unwrap_err();
        assert_eq!(error.field, "address");
        assert!(error.message.contains("overlay"), "{error}");
    }
}
