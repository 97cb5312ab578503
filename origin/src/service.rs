//! The service table: which tunnel port leads to which local address.
//!
//! It is the origin's whole firewall: the tunnel accepts streams only on the table's ports
//! (everything else gets a TCP reset), and a stream is only ever connected to the local address
//! its port maps to. The table is an immutable snapshot behind [`ArcSwap`], so a later hot reload
//! swaps it without locking the data path; streams already bridged keep their address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use kokoa_tunnel::Tunnel;

/// One service with its local address resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Name for logs and metrics.
    pub name: String,
    /// Port inside the tunnel.
    pub port: u16,
    /// Where the local app listens.
    pub local: SocketAddr,
}

/// A service table that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Two services claim one tunnel port.
    #[error(
        "services `{first}` and `{second}` both use tunnel port {port}; give each its own port"
    )]
    DuplicatePort {
        /// The port.
        port: u16,
        /// The service already holding it.
        first: String,
        /// The service that also asked for it.
        second: String,
    },
    /// Port 0 cannot be connected to.
    #[error("service `{0}` has tunnel port 0; use a port from 1 to 65535")]
    ZeroPort(String),
}

/// An immutable map from tunnel port to service.
#[derive(Clone, Debug, Default)]
pub struct ServiceTable {
    by_port: BTreeMap<u16, Arc<Service>>,
}

impl ServiceTable {
    /// Builds a table; ports must be unique and non-zero.
    pub fn new(services: impl IntoIterator<Item = Service>) -> Result<Self, ServiceError> {
        let mut by_port = BTreeMap::new();
        for service in services {
            if service.port == 0 {
                return Err(ServiceError::ZeroPort(service.name));
            }
            if let Some(first) = by_port.get(&service.port) {
                let first: &Arc<Service> = first;
                return Err(ServiceError::DuplicatePort {
                    port: service.port,
                    first: first.name.clone(),
                    second: service.name,
                });
            }
            by_port.insert(service.port, Arc::new(service));
        }
        Ok(Self { by_port })
    }

    /// The service behind a tunnel port, if any.
    pub fn lookup(&self, port: u16) -> Option<&Arc<Service>> {
        self.by_port.get(&port)
    }

    /// The ports the tunnel should accept, ascending.
    pub fn ports(&self) -> Vec<u16> {
        self.by_port.keys().copied().collect()
    }

    /// Every service, by ascending port.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.by_port.values()
    }

    /// Number of services.
    pub fn len(&self) -> usize {
        self.by_port.len()
    }

    /// Whether the table has no service.
    pub fn is_empty(&self) -> bool {
        self.by_port.is_empty()
    }
}

/// The current service table, shared by the accept loop and the bridges.
#[derive(Debug)]
pub struct Services {
    current: ArcSwap<ServiceTable>,
}

impl Services {
    /// Starts with `table`.
    pub fn new(table: ServiceTable) -> Self {
        Self {
            current: ArcSwap::from_pointee(table),
        }
    }

    /// The current snapshot. Cheap; never blocks.
    pub fn load(&self) -> Arc<ServiceTable> {
        self.current.load_full()
    }

    /// Installs a new table and tells the tunnel which ports to accept.
    ///
    /// The table is swapped first so that a SYN on a newly added port finds its service; a
    /// stream that raced onto a just-removed port finds no service and is closed.
    pub fn replace(&self, table: ServiceTable, tunnel: &Tunnel) {
        let ports = table.ports();
        self.current.store(Arc::new(table));
        tunnel.set_accept_ports(ports);
    }

    /// Stops accepting streams on every port (used when draining); the table stays for streams
    /// already open.
    pub fn stop_accepting(&self, tunnel: &Tunnel) {
        tunnel.set_accept_ports(Vec::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, port: u16, local: &str) -> Service {
        Service {
            name: name.into(),
            port,
            local: local.parse().unwrap(),
        }
    }

    #[test]
    fn lookup_by_port() {
        let table = ServiceTable::new([
            service("web", 8001, "127.0.0.1:8001"),
            service("p2p", 4001, "127.0.0.1:4101"),
        ])
        .unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table.ports(), vec![4001, 8001]);
        assert_eq!(table.lookup(8001).unwrap().name, "web");
        assert_eq!(
            table.lookup(4001).unwrap().local,
            "127.0.0.1:4101".parse().unwrap()
        );
        assert!(table.lookup(22).is_none());
        assert!(table.lookup(0).is_none());
    }

    #[test]
    fn duplicate_and_zero_ports_are_rejected() {
        let error = ServiceTable::new([
            service("a", 8001, "127.0.0.1:1"),
            service("b", 8001, "127.0.0.1:2"),
        ])
        .unwrap_err();
        assert!(
            matches!(&error, ServiceError::DuplicatePort { port: 8001, first, second } if first == "a" && second == "b"),
            "{error}"
        );
        assert!(matches!(
            ServiceTable::new([service("z", 0, "127.0.0.1:1")]),
            Err(ServiceError::ZeroPort(_))
        ));
    }

    #[test]
    fn snapshots_are_independent() {
        let services = Services::new(ServiceTable::new([service("a", 1, "127.0.0.1:1")]).unwrap());
        let old = services.load();
        services.current.store(Arc::new(
            ServiceTable::new([service("b", 2, "127.0.0.1:2")]).unwrap(),
        ));
        assert_eq!(old.ports(), vec![1]);
        assert_eq!(services.load().ports(), vec![2]);
        assert!(ServiceTable::default().is_empty());
    }
}
