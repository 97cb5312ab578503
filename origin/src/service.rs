//! The service table: which tunnel port leads to which local app, and how each app is doing.
//!
//! It is the origin's whole firewall: the tunnel accepts streams only on the table's ports
//! (everything else gets a TCP reset), and a stream is only ever connected to the local address
//! its port maps to. The table is an immutable snapshot behind [`ArcSwap`], so a reload swaps
//! it without locking the data path; streams already bridged keep their address.
//!
//! A service's local address is kept as written (the model's [`Endpoint`]): a host name is
//! resolved when a stream arrives, the answer cached for [`RESOLVE_TTL`]. A name that does not
//! resolve, or an app that refuses, makes that one service unhealthy (in `/metrics` and in
//! heartbeats) while every other service keeps serving; nothing about it is a config error.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use kokoa_model::Endpoint;
use kokoa_proto::v1::ServiceHealth;
use kokoa_tunnel::Tunnel;

/// How long a resolved local address is used before the name is looked up again.
pub const RESOLVE_TTL: Duration = Duration::from_secs(5);
/// How long a failed lookup is remembered, so a broken name costs one lookup per second at
/// most, whatever the stream rate.
pub const RESOLVE_FAILURE_TTL: Duration = Duration::from_secs(1);

/// One service: its tunnel port, its local address as written, and its health.
#[derive(Debug)]
pub struct Service {
    /// Name for logs and metrics.
    pub name: String,
    /// Port inside the tunnel.
    pub port: u16,
    /// Where the local app listens, as written.
    pub local: Endpoint,
    /// The model's service this was made from (to keep the health of unchanged services).
    model: kokoa_model::Service,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The last lookup of a host name: its answer and when.
    resolved: Option<(Result<SocketAddr, String>, Instant)>,
    /// Why the last attempt failed; `None`: healthy (or not tried yet).
    error: Option<String>,
}

impl Service {
    /// A service from the model's.
    pub fn new(model: &kokoa_model::Service) -> Self {
        Self {
            name: model.name.to_string(),
            port: model.port.get(),
            local: model.local.clone(),
            model: model.clone(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The address to connect to now: the literal one, or the host name's (cached for
    /// [`RESOLVE_TTL`]). A failure is recorded as this service's health.
    pub async fn resolve(&self) -> Result<SocketAddr, String> {
        if let Endpoint::Addr(addr) = self.local {
            return Ok(addr);
        }
        if let Some((answer, at)) = &self.state().resolved {
            let ttl = if answer.is_ok() {
                RESOLVE_TTL
            } else {
                RESOLVE_FAILURE_TTL
            };
            if at.elapsed() < ttl {
                return answer.clone();
            }
        }
        let answer = kokoa_node::resolve::endpoint(&self.local, true)
            .await
            .map_err(|error| format!("cannot resolve {}: {error}", self.local));
        let mut state = self.state();
        state.resolved = Some((answer.clone(), Instant::now()));
        if let Err(error) = &answer {
            state.error = Some(error.clone());
        }
        answer
    }

    /// Records that the app was reached.
    pub fn record_success(&self) {
        self.state().error = None;
    }

    /// Records why the app could not be reached.
    pub fn record_failure(&self, why: String) {
        self.state().error = Some(why);
    }

    /// Healthy unless the last attempt (a stream, or the check after a reload) failed.
    pub fn health(&self) -> ServiceHealth {
        let error = self.state().error.clone();
        ServiceHealth {
            name: self.name.clone(),
            port: u32::from(self.port),
            healthy: error.is_none(),
            error: error.unwrap_or_default(),
        }
    }
}

/// An immutable map from tunnel port to service.
#[derive(Clone, Debug, Default)]
pub struct ServiceTable {
    by_port: BTreeMap<u16, Arc<Service>>,
}

impl ServiceTable {
    /// A table of the model's services (ports unique, as the model guarantees). Services that
    /// are unchanged from `previous` keep their state (health, cached address).
    pub fn new(services: &[kokoa_model::Service], previous: &ServiceTable) -> Self {
        let by_port = services
            .iter()
            .map(|model| {
                let service = previous
                    .by_port
                    .get(&model.port.get())
                    .filter(|old| old.model == *model)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Service::new(model)));
                (model.port.get(), service)
            })
            .collect();
        Self { by_port }
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

    /// Looks up every host-name service now (in the background of a reload), so a name that
    /// does not resolve shows as unhealthy before the first stream needs it.
    pub async fn check_names(&self) {
        for service in self.iter() {
            if matches!(service.local, Endpoint::Host { .. }) {
                if let Err(error) = service.resolve().await {
                    tracing::warn!(service = %service.name, %error, "service unhealthy: its local address does not resolve; the other services are not affected");
                }
            }
        }
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

    /// Every service's health, by ascending port.
    pub fn health(&self) -> Vec<ServiceHealth> {
        self.load().iter().map(|service| service.health()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, port: u16, local: &str) -> kokoa_model::Service {
        kokoa_model::from_toml(&format!(
            "name = \"{name}\"\nport = {port}\nlocal = \"{local}\""
        ))
        .unwrap()
    }

    #[test]
    fn lookup_by_port() {
        let table = ServiceTable::new(
            &[
                service("web", 8001, "127.0.0.1:8001"),
                service("p2p", 4001, "127.0.0.1:4101"),
            ],
            &ServiceTable::default(),
        );
        assert_eq!(table.len(), 2);
        assert_eq!(table.ports(), vec![4001, 8001]);
        assert_eq!(table.lookup(8001).unwrap().name, "web");
        assert!(table.lookup(22).is_none());
        assert!(table.lookup(0).is_none());
    }

    #[tokio::test]
    async fn an_unresolvable_name_is_that_services_problem() {
        let table = ServiceTable::new(
            &[
                service("web", 8001, "127.0.0.1:8001"),
                service("db", 5432, "db.nowhere.invalid:5432"),
                service("local", 9000, "localhost:9000"),
            ],
            &ServiceTable::default(),
        );
        table.check_names().await;
        let db = table.lookup(5432).unwrap();
        let health = db.health();
        assert!(!health.healthy);
        assert!(
            health
                .error
                .contains("cannot resolve db.nowhere.invalid:5432"),
            "{health:?}"
        );
        assert!(table.lookup(8001).unwrap().health().healthy);
        let local = table.lookup(9000).unwrap();
        assert!(local.health().healthy);
        assert!(local.resolve().await.unwrap().ip().is_loopback());
        assert_eq!(
            table.lookup(8001).unwrap().resolve().await.unwrap(),
            "127.0.0.1:8001".parse().unwrap()
        );
        // A reload keeps the state of unchanged services.
        let again = ServiceTable::new(
            &[
                service("db", 5432, "db.nowhere.invalid:5432"),
                service("web", 8001, "127.0.0.1:8002"),
            ],
            &table,
        );
        assert!(Arc::ptr_eq(again.lookup(5432).unwrap(), db));
        assert!(!Arc::ptr_eq(
            again.lookup(8001).unwrap(),
            table.lookup(8001).unwrap()
        ));
        db.record_success();
        assert!(db.health().healthy);
    }
}
