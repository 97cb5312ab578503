//! The service table: which tunnel port leads to which local app, and how each app is doing.
//!
//! It is the origin's whole firewall: the tunnel accepts streams only on the table's ports
//! (everything else gets a TCP reset), and a stream is only ever connected to the local address
//! its port maps to. The table is an immutable snapshot behind [`ArcSwap`], so a reload swaps
//! it without locking the data path; streams already bridged keep their address.
//!
//! A service's local address is kept as written (the model's [`Endpoint`]): a host name is
//! resolved when a stream or a probe needs it, the answer cached for [`RESOLVE_TTL`]. A name
//! that does not resolve, or an app that refuses, makes that one service unhealthy (in
//! `/metrics` and in heartbeats) while every other service keeps serving; nothing about it is a
//! config error.
//!
//! Health: every probe ([`crate::probe`]) and every stream's local connect is a result counted
//! against the [`ServiceChecks`] thresholds. A service that is **down** (`unhealthy_threshold`
//! failures in a row) has its tunnel port closed ([`Services`] tells the tunnel the ports of the
//! services that are up), so an edge's connect to it is refused at once by a TCP reset, which
//! the edge answers with a 503 "service down" page instead of waiting for a connect timeout per
//! request. `healthy_threshold` passes in a row reopen the port. A new service starts up.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use kokoa_model::{Endpoint, Protocol, ServiceChecks};
use kokoa_proto::v1::ServiceHealth;
use kokoa_tunnel::Tunnel;
use tokio::sync::Notify;

/// How long a resolved local address is used before the name is looked up again.
pub const RESOLVE_TTL: Duration = Duration::from_secs(5);
/// How long a failed lookup is remembered, so a broken name costs one lookup per second at
/// most, whatever the stream rate.
pub const RESOLVE_FAILURE_TTL: Duration = Duration::from_secs(1);

/// How a service is probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// `GET` of this path; 2xx and 3xx pass.
    Http(String),
    /// A TCP connect.
    Tcp,
}

/// One service: its tunnel port, its local address as written, and its health.
#[derive(Debug)]
pub struct Service {
    /// Name for logs and metrics.
    pub name: String,
    /// Port inside the tunnel.
    pub port: u16,
    /// Where the local app listens, as written.
    pub local: Endpoint,
    /// How it is probed: HTTP `GET` of its `health_path` (HTTP services that have one), else a
    /// TCP connect.
    pub check: Check,
    /// The model's service this was made from (to keep the health of unchanged services).
    model: kokoa_model::Service,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The last lookup of a host name: its answer and when.
    resolved: Option<(Result<SocketAddr, String>, Instant)>,
    /// Up (its port accepts streams) or down.
    up: bool,
    /// Results in a row.
    passes: u32,
    failures: u32,
    /// The last failure.
    error: Option<String>,
    /// When `up` last changed (or the service was made).
    since: Instant,
}

/// A health change one result caused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flip {
    /// The service is down now.
    Down,
    /// The service is up again.
    Up,
}

impl Service {
    /// A service from the model's; it starts up (its port accepts streams until results say
    /// otherwise).
    pub fn new(model: &kokoa_model::Service) -> Self {
        let check = match (&model.health_path, model.protocol) {
            (Some(path), Protocol::Http) => Check::Http(path.as_str().to_owned()),
            _ => Check::Tcp,
        };
        Self {
            name: model.name.to_string(),
            port: model.port.get(),
            local: model.local.clone(),
            check,
            model: model.clone(),
            state: Mutex::new(State {
                resolved: None,
                up: true,
                passes: 0,
                failures: 0,
                error: None,
                since: Instant::now(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the probe does, for people: `GET http://127.0.0.1:8001/healthz`,
    /// `TCP connect 127.0.0.1:5432`.
    pub fn check_text(&self) -> String {
        match &self.check {
            Check::Http(path) => format!("GET http://{}{path}", self.local),
            Check::Tcp => format!("TCP connect {}", self.local),
        }
    }

    /// The address to connect to now: the literal one, or the host name's (cached for
    /// [`RESOLVE_TTL`], a failure for [`RESOLVE_FAILURE_TTL`]).
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
        self.state().resolved = Some((answer.clone(), Instant::now()));
        answer
    }

    /// Counts one result (a probe's, or a stream's local connect) against `checks`; returns
    /// the flip it caused, if any.
    pub fn record(&self, result: Result<(), String>, checks: &ServiceChecks) -> Option<Flip> {
        let mut state = self.state();
        match result {
            Ok(()) => {
                state.failures = 0;
                state.passes = state.passes.saturating_add(1);
                if !state.up && u64::from(state.passes) >= checks.healthy_threshold.get() {
                    state.up = true;
                    state.error = None;
                    state.since = Instant::now();
                    return Some(Flip::Up);
                }
                if state.up {
                    state.error = None;
                }
            }
            Err(error) => {
                state.passes = 0;
                state.failures = state.failures.saturating_add(1);
                state.error = Some(error);
                if state.up && u64::from(state.failures) >= checks.unhealthy_threshold.get() {
                    state.up = false;
                    state.since = Instant::now();
                    return Some(Flip::Down);
                }
            }
        }
        None
    }

    /// Whether the service is up (its port accepts streams).
    pub fn is_up(&self) -> bool {
        self.state().up
    }

    /// The service's health as heartbeats report it: up or down, the last error (while down,
    /// or while failing below the threshold), the counts in a row.
    pub fn health(&self) -> ServiceHealth {
        let state = self.state();
        ServiceHealth {
            name: self.name.clone(),
            port: u32::from(self.port),
            healthy: state.up,
            error: state.error.clone().unwrap_or_default(),
            check: self.check_text(),
            consecutive_failures: state.failures,
            consecutive_passes: state.passes,
            since_ms: u64::try_from(state.since.elapsed().as_millis()).unwrap_or(u64::MAX),
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
}

/// Where a service table's open ports go: the tunnel (a trait so tests can watch it).
pub trait PortGate: Send + Sync {
    /// Accept inbound streams on exactly these ports.
    fn set_accept_ports(&self, ports: Vec<u16>);
}

impl PortGate for Tunnel {
    fn set_accept_ports(&self, ports: Vec<u16>) {
        Tunnel::set_accept_ports(self, ports);
    }
}

/// The tunnel the ports go to, and whether it still accepts (not while draining).
struct Gate {
    gate: Option<Arc<dyn PortGate>>,
    accepting: bool,
}

/// The current service table, shared by the accept loop, the bridges and the prober.
pub struct Services {
    current: ArcSwap<ServiceTable>,
    checks: ServiceChecks,
    /// Serializes port updates, so a table swap and a flip never leave stale ports behind.
    gate: Mutex<Gate>,
    /// Woken when the table changes, so the prober probes new services at once.
    changed: Notify,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("current", &self.current)
            .field("checks", &self.checks)
            .finish_non_exhaustive()
    }
}

impl Services {
    /// Starts with `table` and the default [`ServiceChecks`].
    pub fn new(table: ServiceTable) -> Self {
        Self::with_checks(table, ServiceChecks::default())
    }

    /// Starts with `table`, judging health with `checks`.
    pub fn with_checks(table: ServiceTable, checks: ServiceChecks) -> Self {
        Self {
            current: ArcSwap::from_pointee(table),
            checks,
            gate: Mutex::new(Gate {
                gate: None,
                accepting: true,
            }),
            changed: Notify::new(),
        }
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The probe settings.
    pub fn checks(&self) -> &ServiceChecks {
        &self.checks
    }

    /// The current snapshot. Cheap; never blocks.
    pub fn load(&self) -> Arc<ServiceTable> {
        self.current.load_full()
    }

    /// Installs a new table and tells `gate` (the tunnel) which ports to accept: those of the
    /// services that are up.
    ///
    /// The table is swapped first so that a SYN on a newly added port finds its service; a
    /// stream that raced onto a just-removed port finds no service and is closed.
    pub fn replace<G: PortGate + Clone + 'static>(&self, table: ServiceTable, gate: &G) {
        let mut held = self.gate();
        self.current.store(Arc::new(table));
        held.gate = Some(Arc::new(gate.clone()));
        self.open_ports(&held);
        drop(held);
        self.changed.notify_one();
    }

    /// Counts one result of `service` (see [`Service::record`]); a flip opens or closes its
    /// port at once.
    pub fn record(&self, service: &Service, result: Result<(), String>) -> Option<Flip> {
        let flip = service.record(result, &self.checks)?;
        let held = self.gate();
        self.open_ports(&held);
        drop(held);
        let health = service.health();
        match flip {
            Flip::Down => tracing::warn!(
                service = %service.name,
                port = service.port,
                check = %health.check,
                failures = health.consecutive_failures,
                error = %health.error,
                "service down: its tunnel port refuses streams until it passes again"
            ),
            Flip::Up => tracing::info!(
                service = %service.name,
                port = service.port,
                check = %health.check,
                "service up: its tunnel port accepts streams again"
            ),
        }
        Some(flip)
    }

    fn open_ports(&self, held: &Gate) {
        if !held.accepting {
            return;
        }
        if let Some(gate) = &held.gate {
            let ports = self
                .load()
                .iter()
                .filter(|service| service.is_up())
                .map(|service| service.port)
                .collect();
            gate.set_accept_ports(ports);
        }
    }

    /// Stops accepting streams on every port (used when draining); the table stays for streams
    /// already open, and no probe reopens a port.
    pub fn stop_accepting(&self, gate: &dyn PortGate) {
        let mut held = self.gate();
        held.accepting = false;
        gate.set_accept_ports(Vec::new());
    }

    /// Resolves when the table changed since the last call (or at once, once, if it changed
    /// before anyone waited).
    pub async fn changed(&self) {
        self.changed.notified().await;
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

    fn checks(unhealthy: u64, healthy: u64) -> ServiceChecks {
        kokoa_model::from_toml(&format!(
            "unhealthy_threshold = {unhealthy}\nhealthy_threshold = {healthy}"
        ))
        .unwrap()
    }

    /// A tunnel stand-in that remembers the ports it was told to accept.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u16>>>>);

    impl PortGate for Recorder {
        fn set_accept_ports(&self, ports: Vec<u16>) {
            self.0.lock().unwrap().push(ports);
        }
    }

    impl Recorder {
        fn last(&self) -> Vec<u16> {
            self.0.lock().unwrap().last().cloned().unwrap_or_default()
        }
    }

    #[tokio::test]
    async fn an_unresolvable_name_is_that_services_problem() {
        let services = Services::with_checks(ServiceTable::default(), checks(1, 1));
        let gate = Recorder::default();
        let table = ServiceTable::new(
            &[
                service("web", 8001, "127.0.0.1:8001"),
                service("db", 5432, "db.nowhere.invalid:5432"),
                service("local", 9000, "localhost:9000"),
            ],
            &ServiceTable::default(),
        );
        services.replace(table, &gate);
        assert_eq!(gate.last(), vec![5432, 8001, 9000], "new services start up");
        let table = services.load();
        let db = table.lookup(5432).unwrap();
        let error = db.resolve().await.unwrap_err();
        assert!(
            error.contains("cannot resolve db.nowhere.invalid:5432"),
            "{error}"
        );
        assert_eq!(services.record(db, Err(error)), Some(Flip::Down));
        let health = db.health();
        assert!(!health.healthy);
        assert!(health.error.contains("cannot resolve"), "{health:?}");
        assert_eq!(health.check, "TCP connect db.nowhere.invalid:5432");
        assert_eq!(gate.last(), vec![8001, 9000], "only db's port closes");
        assert!(table.lookup(8001).unwrap().health().healthy);
        let local = table.lookup(9000).unwrap();
        assert!(local.resolve().await.unwrap().ip().is_loopback());
        assert_eq!(
            table.lookup(8001).unwrap().resolve().await.unwrap(),
            "127.0.0.1:8001".parse().unwrap()
        );
        // A reload keeps the state of unchanged services: db stays down, its port closed.
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
        services.replace(again, &gate);
        assert_eq!(gate.last(), vec![8001]);
        assert_eq!(services.record(db, Ok(())), Some(Flip::Up));
        assert!(db.health().healthy);
        assert_eq!(gate.last(), vec![5432, 8001]);
    }

    #[test]
    fn thresholds_close_and_reopen_a_port_and_draining_keeps_them_closed() {
        let gate = Recorder::default();
        let services = Services::with_checks(ServiceTable::default(), checks(3, 2));
        let mut web: kokoa_model::Service = service("web", 8001, "127.0.0.1:8001");
        web.health_path = Some(kokoa_model::HealthPath::new("/healthz").unwrap());
        services.replace(
            ServiceTable::new(
                &[web, service("p2p", 4001, "127.0.0.1:4101")],
                &ServiceTable::default(),
            ),
            &gate,
        );
        let table = services.load();
        let web = table.lookup(8001).unwrap();
        assert_eq!(web.check_text(), "GET http://127.0.0.1:8001/healthz");
        assert_eq!(gate.last(), vec![4001, 8001]);
        let fail = || Err("connection refused".to_owned());
        assert_eq!(services.record(web, fail()), None);
        assert_eq!(services.record(web, fail()), None);
        // A pass below the threshold breaks the streak.
        assert_eq!(services.record(web, Ok(())), None);
        assert_eq!(services.record(web, fail()), None);
        assert_eq!(services.record(web, fail()), None);
        assert!(web.is_up());
        assert_eq!(web.health().consecutive_failures, 2);
        assert_eq!(
            web.health().error,
            "connection refused",
            "a failure is shown while up"
        );
        assert_eq!(services.record(web, fail()), Some(Flip::Down));
        assert_eq!(gate.last(), vec![4001]);
        assert_eq!(services.record(web, fail()), None, "down stays down");
        // Two passes in a row to come back.
        assert_eq!(services.record(web, Ok(())), None);
        assert!(!web.health().healthy);
        assert_eq!(services.record(web, Ok(())), Some(Flip::Up));
        let health = web.health();
        assert!(health.healthy && health.error.is_empty(), "{health:?}");
        assert_eq!(gate.last(), vec![4001, 8001]);

        services.stop_accepting(&gate);
        assert_eq!(gate.last(), Vec::<u16>::new());
        for _ in 0..3 {
            services.record(web, fail());
        }
        services.record(web, Ok(()));
        services.record(web, Ok(()));
        assert_eq!(
            gate.last(),
            Vec::<u16>::new(),
            "a drained origin reopens nothing"
        );
    }
}
