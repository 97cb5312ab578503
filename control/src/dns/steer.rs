//! Where steering's desired state comes from: the store's routes, edge assignments and edges'
//! public addresses, filtered by an [`EdgeHealth`] judge, fed to [`DnsManager::run`] by
//! [`Steering::run`] (started by `kokoa-control serve` when a `--dns-provider` is set).
//!
//! - A route's names (host name and aliases, wildcards included) are steered when at least one
//!   edge serving its origin has a public address; they get the addresses of those edges that
//!   are healthy. When none is healthy the set is empty and the manager fails open.
//! - [`EdgeHealth`] is the seam for the health checker (issue 13): until it lands,
//!   [`ConnectedEdges`] judges from what control already knows, the gRPC node registry
//!   (connection and heartbeats on this replica) and the heartbeats recorded in the store (an
//!   edge connected to another replica).
//! - One control replica steers at a time (the `dns` leadership, like ACME's): the others
//!   would fight it with views of their own connections. SQLite grants it always.
//! - The state is rebuilt at once when a node connects, disconnects or heartbeats, and when the
//!   config version moves (routes, assignments, addresses), and every [`Steering::recheck`]
//!   besides, so a heartbeat that stops arriving is noticed without any event.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{oneshot, watch};

use super::manager::{DesiredState, DnsManager};
use crate::grpc::NodeRegistry;
use crate::store::sql::Leadership;
use crate::store::{self, AssignmentFilter, Edge, Id, NodeId, Store};

/// The leadership job steering runs under.
pub const LEADERSHIP_JOB: &str = "dns";
/// How often a replica that does not steer tries to take over.
const LEAD_RETRY: Duration = Duration::from_secs(15);
/// Default [`Steering::recheck`].
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(2);
/// Heartbeats an edge may miss before [`ConnectedEdges`] judges it down.
pub const MISSED_HEARTBEATS: u32 = 3;

/// Judges whether an edge may receive traffic. The health checker implements it when it lands;
/// [`ConnectedEdges`] does until then.
pub trait EdgeHealth: Send + Sync + 'static {
    /// Whether `edge` (as stored) is healthy at `now`.
    fn healthy(&self, edge: &Edge, now: OffsetDateTime) -> bool;
    /// Changes whenever an answer of [`EdgeHealth::healthy`] may have changed, apart from the
    /// passing of time (which [`Steering`] covers by rechecking).
    fn changes(&self) -> watch::Receiver<u64>;
}

/// An edge is healthy while its control stream is open on this replica and it heartbeats
/// (at most [`MISSED_HEARTBEATS`] intervals of silence), or, when this replica does not have
/// it connected, while the store shows a heartbeat that recent (recorded after it left this
/// replica, if it did). An edge killed outright closes its stream and is down at once; one
/// that hangs or loses its network is down after the silence.
#[derive(Clone, Debug)]
pub struct ConnectedEdges {
    registry: NodeRegistry,
    max_silence: time::Duration,
}

impl ConnectedEdges {
    /// Judges from `registry`, allowing `max_silence` without a heartbeat (normally
    /// [`MISSED_HEARTBEATS`] heartbeat intervals).
    pub fn new(registry: NodeRegistry, max_silence: Duration) -> Self {
        Self {
            registry,
            max_silence: time::Duration::try_from(max_silence).unwrap_or(time::Duration::MAX),
        }
    }
}

impl EdgeHealth for ConnectedEdges {
    fn healthy(&self, edge: &Edge, now: OffsetDateTime) -> bool {
        let fresh = |at: OffsetDateTime| now - at <= self.max_silence;
        let stored = edge.state.last_heartbeat;
        match self.registry.get(NodeId::Edge(edge.id)) {
            Some(info) if info.connected => fresh(info.last_heartbeat.unwrap_or(info.connected_at)),
            // It left this replica: only a heartbeat recorded since (through another replica)
            // counts.
            Some(info) => stored
                .is_some_and(|at| info.disconnected_at.is_none_or(|left| at > left) && fresh(at)),
            None => stored.is_some_and(fresh),
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.registry.subscribe()
    }
}

/// The desired state at `now`: for every route name, the public addresses of the healthy edges
/// serving its origin; a route whose origin has no edge with a public address is not steered.
pub async fn desired_state(
    store: &dyn Store,
    health: &dyn EdgeHealth,
    now: OffsetDateTime,
) -> store::Result<DesiredState> {
    let edges: HashMap<Id, Edge> = store
        .list_edges()
        .await?
        .into_iter()
        .map(|edge| (edge.id, edge))
        .collect();
    // origin -> (has an edge with an address, addresses of its healthy edges)
    let mut serving: HashMap<Id, (bool, BTreeSet<IpAddr>)> = HashMap::new();
    for assignment in store.list_assignments(AssignmentFilter::default()).await? {
        let Some(edge) = edges.get(&assignment.edge_id) else {
            continue;
        };
        let Some(ip) = edge.public_ip else {
            continue;
        };
        let entry = serving.entry(assignment.origin_id).or_default();
        entry.0 = true;
        if health.healthy(edge, now) {
            entry.1.insert(ip);
        }
    }
    let mut desired = DesiredState::new();
    for route in store.list_routes().await? {
        let Some((true, addresses)) = serving.get(&route.origin_id) else {
            continue;
        };
        for name in std::iter::once(&route.hostname).chain(&route.aliases) {
            desired.insert(name, addresses.iter().copied());
        }
    }
    Ok(desired)
}

/// Feeds a [`DnsManager`] from the store and an [`EdgeHealth`], on the replica that holds the
/// [`LEADERSHIP_JOB`].
pub struct Steering {
    /// The reconciler (its options give TTL and pass interval).
    pub manager: Arc<DnsManager>,
    /// Routes, assignments and edges.
    pub store: Arc<dyn Store>,
    /// Who is healthy.
    pub health: Arc<dyn EdgeHealth>,
    /// How often the desired state is rebuilt without any event (heartbeat silence is only
    /// seen this way).
    pub recheck: Duration,
}

/// Resolves when `rx` changes; never, once its sender is gone.
async fn changed<T>(rx: &mut watch::Receiver<T>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Steering {
    /// Runs until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let (desired_tx, _) = watch::channel(DesiredState::new());
        let mut health_changes = self.health.changes();
        let mut config_changes = self.store.subscribe_config_version();
        let mut leadership: Option<Leadership> = None;
        let mut running: Option<(tokio::task::JoinHandle<()>, oneshot::Sender<()>)> = None;
        loop {
            let leading = self.lead(&mut leadership).await;
            if !leading {
                if let Some((task, stop)) = running.take() {
                    let _ = stop.send(());
                    let _ = task.await;
                }
            } else {
                match desired_state(&*self.store, &*self.health, OffsetDateTime::now_utc()).await {
                    Ok(state) => {
                        desired_tx.send_if_modified(|current| {
                            let differs = *current != state;
                            *current = state;
                            differs
                        });
                        if running.is_none() {
                            let (stop, stopped) = oneshot::channel::<()>();
                            let task = tokio::spawn(self.manager.clone().run(
                                desired_tx.subscribe(),
                                async move {
                                    let _ = stopped.await;
                                },
                            ));
                            running = Some((task, stop));
                        }
                    }
                    // The manager keeps enforcing the last state it was given.
                    Err(error) => tracing::warn!(%error, "DNS steering cannot read the store"),
                }
            }
            let wait = if leading { self.recheck } else { LEAD_RETRY };
            tokio::select! {
                () = &mut shutdown => break,
                () = changed(&mut health_changes) => {}
                () = changed(&mut config_changes) => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        if let Some((task, stop)) = running.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// Keeps or takes the steering leadership.
    async fn lead(&self, leadership: &mut Option<Leadership>) -> bool {
        if let Some(held) = leadership.as_ref() {
            if held.holds().await {
                return true;
            }
            tracing::warn!("lost the DNS steering leadership (database connection); trying again");
            *leadership = None;
        }
        match self.store.try_lead(LEADERSHIP_JOB).await {
            Ok(Some(held)) => {
                tracing::info!("this control replica now steers DNS");
                *leadership = Some(held);
                true
            }
            Ok(None) => {
                tracing::debug!("another control replica steers DNS");
                false
            }
            Err(error) => {
                tracing::warn!(%error, "cannot take the DNS steering leadership");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NodeState, NodeStatus};
    use kokoa_tunnel::key::PublicKey;

    const SILENCE: Duration = Duration::from_secs(30);

    fn edge(stored_heartbeat: Option<OffsetDateTime>) -> Edge {
        let now = OffsetDateTime::now_utc();
        Edge {
            id: Id::new_v4(),
            name: "e".into(),
            public_ip: Some("192.0.2.1".parse().expect("ip")),
            endpoint: None,
            provider: None,
            region: None,
            public_key: PublicKey([7; 32]),
            managed_key: false,
            limits: None,
            tunnel: None,
            listeners: Vec::new(),
            state: NodeState {
                status: NodeStatus::Pending,
                last_heartbeat: stored_heartbeat,
                heartbeat: None,
                applied_version: None,
                nack: None,
            },
            created_at: now,
            updated_at: now,
        }
    }

    fn hello() -> kokoa_proto::v1::Hello {
        kokoa_proto::v1::Hello {
            applied_version: 0,
            software_version: "test".into(),
            hostname: "h".into(),
            listeners: Vec::new(),
        }
    }

    fn secs(n: i64) -> time::Duration {
        time::Duration::seconds(n)
    }

    #[test]
    fn an_edge_unknown_here_is_judged_by_its_stored_heartbeat() {
        let judge = ConnectedEdges::new(NodeRegistry::default(), SILENCE);
        let now = OffsetDateTime::now_utc();
        assert!(judge.healthy(&edge(Some(now - secs(5))), now));
        assert!(!judge.healthy(&edge(Some(now - secs(31))), now));
        assert!(!judge.healthy(&edge(None), now));
    }

    #[test]
    fn a_connected_edge_is_healthy_until_its_heartbeats_are_late() {
        let registry = NodeRegistry::default();
        let judge = ConnectedEdges::new(registry.clone(), SILENCE);
        let edge = edge(None);
        let node = NodeId::Edge(edge.id);
        let session = registry.connect(node, "e", None, &hello());
        let now = OffsetDateTime::now_utc();
        // Just connected, no heartbeat yet: the connection time counts.
        assert!(judge.healthy(&edge, now));
        assert!(!judge.healthy(&edge, now + secs(31)));
        registry.heartbeat(node, session, 0, serde_json::Value::Null);
        let now = OffsetDateTime::now_utc();
        assert!(judge.healthy(&edge, now + secs(29)));
        assert!(!judge.healthy(&edge, now + secs(31)));
    }

    #[test]
    fn an_edge_that_left_counts_only_heartbeats_recorded_since() {
        let registry = NodeRegistry::default();
        let judge = ConnectedEdges::new(registry.clone(), SILENCE);
        let before = OffsetDateTime::now_utc() - secs(1);
        let left = edge(Some(before));
        let node = NodeId::Edge(left.id);
        let session = registry.connect(node, "e", None, &hello());
        registry.disconnect(node, session);
        let now = OffsetDateTime::now_utc();
        // The store's heartbeat predates the disconnect: down at once.
        assert!(!judge.healthy(&left, now));
        // A heartbeat recorded after it (through another replica) counts again.
        let elsewhere = Edge {
            state: NodeState {
                last_heartbeat: Some(now + secs(1)),
                ..left.state.clone()
            },
            ..left.clone()
        };
        assert!(judge.healthy(&elsewhere, now + secs(2)));
        assert!(!judge.healthy(&elsewhere, now + secs(40)));
    }
}
