//! Fleet health: control's judgement of every node's state.
//!
//! [`HealthChecker::run`] is a singleton job (the `health` leadership, like ACME's; see
//! [`try_lead`](crate::store::LeaderStore::try_lead)): on the replica that leads it, it
//! judges every node once per [`HealthSettings::tick`] with [`state::judge`] from
//! - the node's Watch stream as this replica's [`NodeRegistry`] sees it,
//! - its heartbeats (their age against the interval; what they report: tunnel
//!   peers, an origin's services),
//! - its last NACK,
//! - its active checks: every [`HealthSettings::check_interval`] control [`probe`]s each
//!   edge's public HTTPS listener (at its `public_ip`) and its admin `/healthz` (at its
//!   `admin_address`), and a [`tally`] counts consecutive passes and failures against the
//!   thresholds; every result is health history (pruned after
//!   [`HealthSettings::history_retention`]) and a metric,
//! - an operator's drain,
//!
//! It also follows the services each origin probes and reports in its heartbeats
//! ([`services`]): a service going down or up is an event (`service.down`, `service.up`),
//! health history and a metric.
//!
//! and stores the state and its reason ([`set_node_state`]: a change of state is an event
//! named after the new state, `edge.offline`, `edge.online`, ...). The API, `kokoa-control
//! status` and the metrics show the stored state, so every replica shows the same thing.
//!
//! DNS steering asks the checker which edges take traffic: it is the steering's
//! [`EdgeHealth`](crate::dns::EdgeHealth). An edge is published while its stored state
//! [serves](NodeStatus::serves) (online or degraded) and withdrawn when it is offline,
//! draining or still enrolling; the stored state is what every replica reads, so the replica
//! that steers need not be the one that judges. [`HealthChecker::subscribe`] wakes steering on
//! this replica as soon as a judgement changes a state.
//!
//! [`set_node_state`]: crate::store::NodeStateStore::set_node_state

pub mod args;
pub mod heartbeat;
pub mod metrics;
pub mod probe;
pub mod services;
pub mod state;
pub mod tally;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::grpc::NodeRegistry;
use crate::store::{
    Actor, CheckKind, Edge, Id, Leadership, NewHealthCheck, NodeId, NodeState, NodeStatus, Origin,
    Store,
};
use state::{CheckView, Peer};

pub use heartbeat::Heartbeat;
pub use metrics::HealthMetrics;
pub use state::{judge, Cause, Judgement, Observation, Stream, Timing};
pub use tally::{Outcome, Tally, Thresholds, Verdict};

/// The singleton job name of the health checker.
pub const LEADERSHIP_JOB: &str = "health";
/// How often a replica that does not lead tries to take over.
const LEADERSHIP_RETRY: Duration = Duration::from_secs(5);

/// Default time between two judgements of every node.
pub const DEFAULT_TICK: Duration = Duration::from_secs(1);
/// Default heartbeat silence after which a node is offline (three missed heartbeats at the
/// default 10 s interval; the seeds' 30 s).
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time between two probes of an edge: with the default fast interval and unhealthy
/// threshold, an edge that dies is offline within about 9 s (one failed probe within 5 s, two
/// more 2 s apart; the seeds' 10 s x 3 took 23 s to withdraw it).
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Default time between two probe rounds while a check is between verdicts.
pub const DEFAULT_FAST_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Default probe timeout.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Default port of the edges' public HTTPS listener, which control probes.
pub const DEFAULT_PUBLIC_PORT: u16 = 443;
/// Default time health history rows are kept.
pub const DEFAULT_HISTORY_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// How often expired history is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// How the checker judges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSettings {
    /// How often nodes heartbeat (what control tells them).
    pub heartbeat_interval: Duration,
    /// A node silent for longer is offline (unless its public listener still answers).
    pub heartbeat_timeout: Duration,
    /// Passes in a row that make a probed target healthy.
    pub healthy_threshold: u32,
    /// Failures in a row that make it unhealthy.
    pub unhealthy_threshold: u32,
    /// Time between two judgements.
    pub tick: Duration,
    /// Time between two probes of each edge.
    pub check_interval: Duration,
    /// Time between two probe rounds while any check is between verdicts (a healthy edge
    /// failed a probe, an unhealthy one passed one, a new one is not decided): a dead edge is
    /// confirmed after one slow and `unhealthy_threshold - 1` fast intervals.
    pub fast_check_interval: Duration,
    /// A probe that takes longer fails.
    pub check_timeout: Duration,
    /// The port of the edges' public HTTPS listener (probed at each edge's `public_ip`).
    pub public_port: u16,
    /// Health history older than this is pruned.
    pub history_retention: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            heartbeat_interval: crate::grpc::DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            healthy_threshold: 3,
            unhealthy_threshold: 3,
            tick: DEFAULT_TICK,
            check_interval: DEFAULT_CHECK_INTERVAL,
            fast_check_interval: DEFAULT_FAST_CHECK_INTERVAL,
            check_timeout: DEFAULT_CHECK_TIMEOUT,
            public_port: DEFAULT_PUBLIC_PORT,
            history_retention: DEFAULT_HISTORY_RETENTION,
        }
    }
}

impl HealthSettings {
    fn timing(&self) -> Timing {
        Timing {
            heartbeat_interval: self.heartbeat_interval,
            heartbeat_timeout: self.heartbeat_timeout,
            healthy_threshold: self.healthy_threshold,
        }
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds {
            unhealthy: self.unhealthy_threshold,
            healthy: self.healthy_threshold,
        }
    }
}

/// Every node's current state as the leader judged it last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetStates {
    /// By node.
    pub nodes: BTreeMap<NodeId, NodeStatus>,
}

impl FleetStates {
    /// A node's state (`None`: not judged, e.g. created since the last tick).
    pub fn get(&self, node: NodeId) -> Option<NodeStatus> {
        self.nodes.get(&node).copied()
    }
}

/// What the checker keeps between judgements.
#[derive(Default)]
struct Memory {
    /// The key of each node's last stored judgement.
    keys: HashMap<NodeId, String>,
    /// Each active check's target and running score.
    tallies: HashMap<(NodeId, CheckKind), (String, Tally)>,
    /// When the last probe round started.
    last_probe: Option<Instant>,
    /// A check was between verdicts after the last round: the next comes at the fast interval.
    settling: bool,
    /// When expired history was last pruned.
    last_prune: Option<Instant>,
    /// The services origins report, to record their changes.
    services: services::ServiceWatch,
}

/// Judges node states; see the module doc.
pub struct HealthChecker {
    store: Arc<dyn Store>,
    settings: HealthSettings,
    live: Option<NodeRegistry>,
    metrics: HealthMetrics,
    states: watch::Sender<Arc<FleetStates>>,
    /// Bumped whenever `states` changes (what [`EdgeHealth::changes`] hands out).
    ///
    /// [`EdgeHealth::changes`]: crate::dns::EdgeHealth::changes
    generation: watch::Sender<u64>,
    memory: tokio::sync::Mutex<Memory>,
}

impl std::fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecker")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

const ACTOR: Actor = Actor::System;

impl HealthChecker {
    /// A checker over `store`; `live` is this process's view of the Watch streams.
    pub fn new(
        store: Arc<dyn Store>,
        settings: HealthSettings,
        live: Option<NodeRegistry>,
    ) -> Arc<Self> {
        Arc::new(HealthChecker {
            store,
            settings,
            live,
            metrics: HealthMetrics::default(),
            states: watch::channel(Arc::new(FleetStates::default())).0,
            generation: watch::channel(0).0,
            memory: tokio::sync::Mutex::new(Memory::default()),
        })
    }

    /// The checker's metrics (register them on control's registry).
    pub fn metrics(&self) -> &HealthMetrics {
        &self.metrics
    }

    /// The settings in use.
    pub fn settings(&self) -> &HealthSettings {
        &self.settings
    }

    /// The states of the latest judgement, updated after every tick on the leading replica.
    pub fn subscribe(&self) -> watch::Receiver<Arc<FleetStates>> {
        self.states.subscribe()
    }

    /// Runs until `shutdown` resolves: while this replica leads the `health` job, judges every
    /// node each tick; otherwise tries to take the lead every few seconds.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut leadership: Option<Leadership> = None;
        let mut tick = tokio::time::interval(self.settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(settings = ?self.settings, "health checker started");
        loop {
            let leading = tokio::select! {
                () = &mut shutdown => return,
                leading = self.lead(&mut leadership) => leading,
            };
            if !leading {
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(LEADERSHIP_RETRY) => continue,
                }
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = self.maintain() => {}
            }
            tokio::select! {
                () = &mut shutdown => return,
                result = self.judge_all() => {
                    if let Err(error) = result {
                        tracing::warn!(%error, "judging node states failed; retrying");
                    }
                }
            }
            tokio::select! {
                () = &mut shutdown => return,
                _ = tick.tick() => {}
            }
        }
    }

    async fn lead(&self, leadership: &mut Option<Leadership>) -> bool {
        if let Some(held) = leadership.as_ref() {
            if held.holds().await {
                return true;
            }
            tracing::warn!("lost the health leadership (database connection); trying again");
            *leadership = None;
        }
        match self.store.try_lead(LEADERSHIP_JOB).await {
            Ok(Some(held)) => {
                tracing::info!("this control replica now judges node health");
                *leadership = Some(held);
                true
            }
            Ok(None) => false,
            Err(error) => {
                tracing::warn!(%error, "cannot take the health leadership");
                false
            }
        }
    }

    /// Runs a probe round when one is due and prunes expired history when due; errors are
    /// logged (the next round retries).
    async fn maintain(&self) {
        let (probe_due, prune_due) = {
            let memory = self.memory.lock().await;
            let due = |last: Option<Instant>, every: Duration| {
                last.is_none_or(|at| at.elapsed() >= every)
            };
            (
                due(
                    memory.last_probe,
                    if memory.settling {
                        self.settings.fast_check_interval
                    } else {
                        self.settings.check_interval
                    },
                ),
                due(memory.last_prune, PRUNE_EVERY),
            )
        };
        if probe_due {
            self.memory.lock().await.last_probe = Some(Instant::now());
            if let Err(error) = self.probe_all().await {
                tracing::warn!(%error, "probing edges failed; retrying");
            }
        }
        if prune_due {
            self.memory.lock().await.last_prune = Some(Instant::now());
            if let Err(error) = self.prune_history().await {
                tracing::warn!(%error, "pruning health history failed; retrying");
            }
        }
    }

    /// Removes health history older than the retention; returns how many rows.
    pub async fn prune_history(&self) -> Result<u64, crate::store::StoreError> {
        let before = OffsetDateTime::now_utc()
            - time::Duration::try_from(self.settings.history_retention)
                .unwrap_or(time::Duration::MAX);
        let pruned = self.store.prune_health_checks(before).await?;
        if pruned > 0 {
            self.metrics.history_pruned.inc_by(pruned);
            tracing::debug!(pruned, "pruned expired health history");
        }
        Ok(pruned)
    }

    /// Probes every edge once, concurrently (each probe bounded by the check timeout): its
    /// public listener when it has a public address, its admin `/healthz` when it has an admin
    /// address. Counts the results in the tallies [`judge_all`](Self::judge_all) reads, the
    /// metrics and the health history. Returns how many probes ran. Public for tests.
    pub async fn probe_all(&self) -> Result<usize, crate::store::StoreError> {
        let edges = self.store.list_edges().await?;
        let timeout = self.settings.check_timeout;
        let mut probes = tokio::task::JoinSet::new();
        for edge in &edges {
            let node = NodeId::Edge(edge.id);
            if let Some(ip) = edge.public_ip {
                let addr = SocketAddr::new(ip, self.settings.public_port);
                let target = public_target(addr);
                probes.spawn(async move {
                    (
                        node,
                        CheckKind::Public,
                        target,
                        probe::public(addr, timeout).await,
                    )
                });
            }
            if let Some(admin) = edge.admin_address.clone() {
                let target = format!("http://{admin}/healthz");
                probes.spawn(async move {
                    (
                        node,
                        CheckKind::Admin,
                        target,
                        probe::admin(&admin, timeout).await,
                    )
                });
            }
        }
        let results = probes.join_all().await;
        let serving: HashMap<NodeId, bool> = edges
            .iter()
            .map(|e| (NodeId::Edge(e.id), e.state.status.serves()))
            .collect();
        let now = OffsetDateTime::now_utc();
        let thresholds = self.settings.thresholds();
        let mut rows = Vec::with_capacity(results.len());
        {
            let mut memory = self.memory.lock().await;
            let probed: std::collections::HashSet<(NodeId, CheckKind)> =
                results.iter().map(|(n, k, _, _)| (*n, *k)).collect();
            memory.tallies.retain(|key, _| probed.contains(key));
            for (node, kind, target, probed) in &results {
                let entry = memory.tallies.entry((*node, *kind)).or_insert_with(|| {
                    (
                        target.clone(),
                        Tally::new(serving.get(node).copied().unwrap_or(false)),
                    )
                });
                if entry.0 != *target {
                    // The address changed: a new target starts a new score.
                    *entry = (target.clone(), Tally::new(false));
                }
                entry
                    .1
                    .record(probed.outcome.clone(), probed.took, now, thresholds);
                let (result, error) = match &probed.outcome {
                    Outcome::Pass => ("pass", None),
                    Outcome::Draining => ("draining", Some("draining".to_owned())),
                    Outcome::Fail(error) => ("fail", Some(error.clone())),
                };
                self.metrics.check(*kind, result, Some(probed.took));
                rows.push(NewHealthCheck {
                    kind: *kind,
                    target: target.clone(),
                    edge_id: Some(node.id()),
                    origin_id: None,
                    service_id: None,
                    success: matches!(probed.outcome, Outcome::Pass),
                    response_time_ms: Some(
                        u32::try_from(probed.took.as_millis()).unwrap_or(u32::MAX),
                    ),
                    error,
                    checked_at: now,
                });
            }
            memory.settling = memory.tallies.values().any(|(_, tally)| tally.settling());
        }
        let count = rows.len();
        match self.store.record_health_checks(rows).await {
            Ok(_) => {}
            // An edge deleted while it was probed.
            Err(crate::store::StoreError::NotFound { .. }) => {}
            Err(error) => return Err(error),
        }
        Ok(count)
    }

    /// Judges every node once and stores what changed. Public for tests and for callers that
    /// want a judgement now.
    pub async fn judge_all(&self) -> Result<Arc<FleetStates>, crate::store::StoreError> {
        let now = OffsetDateTime::now_utc();
        let edges = self.store.list_edges().await?;
        let origins = self.store.list_origins().await?;
        let live: HashMap<NodeId, crate::grpc::NodeInfo> = self
            .live
            .as_ref()
            .map(|r| r.list().into_iter().map(|n| (n.node, n)).collect())
            .unwrap_or_default();
        let peer = |name: &String, state: &NodeState| Peer {
            name: name.clone(),
            serving: state.status.serves(),
        };
        let origin_peers: HashMap<String, Peer> = origins
            .iter()
            .map(|o| (o.public_key.to_base64(), peer(&o.name, &o.state)))
            .collect();
        let edge_peers: HashMap<String, Peer> = edges
            .iter()
            .map(|e| (e.public_key.to_base64(), peer(&e.name, &e.state)))
            .collect();
        let public: HashMap<NodeId, String> = edges
            .iter()
            .filter_map(|e| {
                let ip = e.public_ip?;
                let addr = SocketAddr::new(ip, self.settings.public_port);
                Some((NodeId::Edge(e.id), public_target(addr)))
            })
            .collect();
        let timing = self.settings.timing();
        let mut memory = self.memory.lock().await;
        let mut states = FleetStates::default();
        let mut shown = Vec::with_capacity(edges.len() + origins.len());
        let nodes =
            edges
                .iter()
                .map(|e: &Edge| {
                    (
                        NodeId::Edge(e.id),
                        &e.name,
                        &e.state,
                        e.draining,
                        &origin_peers,
                    )
                })
                .chain(origins.iter().map(|o: &Origin| {
                    (NodeId::Origin(o.id), &o.name, &o.state, false, &edge_peers)
                }));
        for (node, name, stored, drained, peers) in nodes {
            let info = live.get(&node);
            let mut checks: Vec<CheckView> = memory
                .tallies
                .iter()
                .filter(|((n, _), _)| *n == node)
                .map(|((_, kind), (target, tally))| CheckView {
                    kind: *kind,
                    target: target.clone(),
                    verdict: tally.verdict(),
                })
                .collect();
            // An edge with a public address is probed: until its first probe has run, its
            // listener is unknown, not fine (a new edge is not online before it was seen
            // serving).
            if let Some(target) = public.get(&node) {
                if !checks.iter().any(|c| c.kind == CheckKind::Public) {
                    checks.push(CheckView {
                        kind: CheckKind::Public,
                        target: target.clone(),
                        verdict: Verdict::Unknown {
                            passes: 0,
                            failures: 0,
                        },
                    });
                }
            }
            // Public first: its failure is the reason an operator needs first.
            checks.sort_by_key(|c| c.kind != CheckKind::Public);
            let judgement = judge_one(node, stored, drained, info, peers, &checks, &timing, now);
            let key = judgement.key();
            let unchanged = judgement.status == stored.status
                && stored.reason.is_some()
                && memory.keys.get(&node) == Some(&key);
            if !unchanged {
                let reason = judgement.reason();
                match self
                    .store
                    .set_node_state(&ACTOR, node, judgement.status, &reason)
                    .await
                {
                    Ok(changed) => {
                        if changed {
                            self.metrics.transition(kind(node), judgement.status);
                            tracing::info!(
                                node = %name,
                                kind = kind(node),
                                from = %stored.status,
                                to = %judgement.status,
                                %reason,
                                "node state changed"
                            );
                        }
                        memory.keys.insert(node, key);
                    }
                    // Deleted since the list was read.
                    Err(crate::store::StoreError::NotFound { .. }) => continue,
                    Err(error) => return Err(error),
                }
            }
            states.nodes.insert(node, judgement.status);
            shown.push((kind(node), name.clone(), judgement.status));
        }
        // The services origins probe and report: a change is an event and history.
        let beats: Vec<(Id, &str, Heartbeat)> = origins
            .iter()
            .filter_map(|o| {
                let info = live.get(&NodeId::Origin(o.id));
                let last = o
                    .state
                    .last_heartbeat
                    .max(info.and_then(|l| l.last_heartbeat))?;
                let age = Duration::try_from(now - last).unwrap_or_default();
                if age > self.settings.heartbeat_timeout {
                    return None;
                }
                let beat = info
                    .and_then(|l| l.heartbeat.as_ref())
                    .or(o.state.heartbeat.as_ref())
                    .and_then(Heartbeat::from_value)?;
                Some((o.id, o.name.as_str(), beat))
            })
            .collect();
        let reports: Vec<services::OriginReport<'_>> = beats
            .iter()
            .map(|(id, name, beat)| services::OriginReport {
                id: *id,
                name,
                services: &beat.services,
            })
            .collect();
        if let Err(error) = memory
            .services
            .observe(&*self.store, &self.metrics, &reports, now)
            .await
        {
            tracing::warn!(%error, "recording service health changes failed; retrying");
        }
        memory
            .keys
            .retain(|node, _| states.nodes.contains_key(node));
        self.metrics.set_states(&shown);
        let states = Arc::new(states);
        let changed = self.states.send_if_modified(|current| {
            if **current == *states {
                false
            } else {
                *current = states.clone();
                true
            }
        });
        if changed {
            self.generation.send_modify(|n| *n = n.wrapping_add(1));
        }
        Ok(states)
    }
}

/// DNS steering's judge: an edge takes traffic while its stored state serves (online or
/// degraded). Offline, draining and enrolling edges are withdrawn; the steering keeps the last
/// addresses of a name none of whose edges serves (fail open).
impl crate::dns::EdgeHealth for HealthChecker {
    fn healthy(&self, edge: &Edge, _now: OffsetDateTime) -> bool {
        edge.state.status.serves()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

fn kind(node: NodeId) -> &'static str {
    match node {
        NodeId::Edge(_) => "edge",
        NodeId::Origin(_) => "origin",
    }
}

/// The public probe's target as shown in reasons: `https://203.0.113.10`, with the port when it
/// is not 443.
fn public_target(addr: SocketAddr) -> String {
    if addr.port() == 443 {
        match addr {
            SocketAddr::V4(a) => format!("https://{}", a.ip()),
            SocketAddr::V6(a) => format!("https://[{}]", a.ip()),
        }
    } else {
        format!("https://{addr}")
    }
}

/// Builds a node's [`Observation`] from the store and this replica's live view, and judges it.
#[allow(clippy::too_many_arguments)]
fn judge_one(
    node: NodeId,
    stored: &NodeState,
    drained: bool,
    live: Option<&crate::grpc::NodeInfo>,
    peers: &HashMap<String, Peer>,
    checks: &[CheckView],
    timing: &Timing,
    now: OffsetDateTime,
) -> Judgement {
    let last_heartbeat = stored
        .last_heartbeat
        .max(live.and_then(|l| l.last_heartbeat));
    // The live copy is fresher than the store's when this replica has one.
    let heartbeat = live
        .and_then(|l| l.heartbeat.as_ref())
        .or(stored.heartbeat.as_ref())
        .and_then(Heartbeat::from_value);
    let stream = match live {
        Some(info) if info.connected => Stream::Open {
            since: info.connected_at,
        },
        Some(info) => info
            .disconnected_at
            .map_or(Stream::Unknown, |at| Stream::Closed { at }),
        None => Stream::Unknown,
    };
    let applied_version = stored
        .applied_version
        .max(live.and_then(|l| l.applied_version));
    let nack = live
        .and_then(|l| l.last_nack.as_ref())
        .or(stored.nack.as_ref());
    let observation = Observation {
        node,
        previous: stored.status,
        seen: live.is_some() || stored.applied_version.is_some() || stored.last_heartbeat.is_some(),
        drained,
        stream,
        last_heartbeat,
        heartbeat: heartbeat.as_ref(),
        applied_version,
        nack,
        checks,
        peers,
    };
    judge(&observation, timing, now)
}
