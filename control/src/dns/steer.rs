//! Where steering's desired state comes from: the store's routes, edge assignments and edges'
//! public addresses, filtered by an [`EdgeHealth`] judge, fed to [`DnsManager::run`] by
//! [`Steering::run`] (started by `kokoa-control serve` when a `--dns-provider` is set).
//!
//! - A route's names (host name and aliases, wildcards included) are steered when at least one
//!   edge serving its origin has a public address; they get the addresses of those edges that
//!   are healthy. When none is healthy the set is empty and the manager fails open.
//! - [`EdgeHealth`] judges which edges take traffic; `serve` hands it the health checker
//!   ([`HealthChecker`](crate::health::HealthChecker)): an edge is published while its
//!   stored state is online or degraded, withdrawn when it is offline, draining or enrolling.
//! - One control replica steers at a time (the `dns` leadership, like ACME's): the others
//!   would fight it with views of their own connections. SQLite grants it always.
//! - The state is rebuilt at once when the judge reports a change, when the config version
//!   moves (routes, assignments, addresses), and every [`Steering::recheck`] besides (a state
//!   judged by another replica reaches this one through the store).
//! - What the manager reports ([`DnsEvent`]: fail open and its end, addresses changed, names
//!   outside the zone, provider failures) goes to the audit trail as `dns.<event>` events
//!   (entity id: the name, or the zone), so notification targets can match `dns.fail_open`.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{broadcast, oneshot, watch};

use super::manager::{DesiredState, DnsEvent, DnsManager};
use crate::store::sql::Leadership;
use crate::store::{self, Actor, AssignmentFilter, Edge, Entity, Id, Store};

/// The leadership job steering runs under.
pub const LEADERSHIP_JOB: &str = "dns";
/// How often a replica that does not steer tries to take over.
const LEAD_RETRY: Duration = Duration::from_secs(15);
/// Default [`Steering::recheck`].
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(2);
/// Judges whether an edge may receive traffic (the health checker implements it).
pub trait EdgeHealth: Send + Sync + 'static {
    /// Whether `edge` (as stored) is healthy at `now`.
    fn healthy(&self, edge: &Edge, now: OffsetDateTime) -> bool;
    /// Changes whenever an answer of [`EdgeHealth::healthy`] may have changed, apart from the
    /// passing of time (which [`Steering`] covers by rechecking).
    fn changes(&self) -> watch::Receiver<u64>;
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
        let recorder = tokio::spawn(record_events(self.store.clone(), self.manager.subscribe()));
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
        // The manager is stopped: nothing more to record (an event it sent in its last moment
        // may be lost with the shutdown).
        recorder.abort();
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

/// Writes the manager's events to the audit trail (actor `system`, entity `dns`, action the
/// event: `fail_open`, `fail_open_ended`, `addresses_changed`, `outside_zone`,
/// `reconcile_failed`, `reconcile_recovered`) until the manager is gone.
async fn record_events(store: Arc<dyn Store>, mut events: broadcast::Receiver<DnsEvent>) {
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "DNS steering events came faster than the audit trail took them; some are not recorded"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let (entity_id, action, detail) = audit_entry(&event);
        if let Err(error) = store
            .record_event(&Actor::System, Entity::Dns, &entity_id, &action, detail)
            .await
        {
            tracing::warn!(%error, %action, name = %entity_id, "cannot record a DNS steering event");
        }
    }
}

/// A [`DnsEvent`] as an audit entry: (entity id: the name, else the zone; action: the event's
/// tag; detail: its other fields).
fn audit_entry(event: &DnsEvent) -> (String, String, serde_json::Value) {
    let mut detail = serde_json::to_value(event).unwrap_or_default();
    let action = detail
        .as_object_mut()
        .and_then(|fields| fields.remove("event"))
        .and_then(|tag| tag.as_str().map(str::to_owned))
        .unwrap_or_else(|| "event".to_owned());
    let entity_id = ["name", "zone"]
        .iter()
        .find_map(|key| detail.get(*key).and_then(|v| v.as_str()))
        .unwrap_or_default()
        .to_owned();
    (entity_id, action, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_audit_entries_named_by_their_tag() {
        let (id, action, detail) = audit_entry(&DnsEvent::FailOpen {
            name: "app.example.com".into(),
            kept: vec!["192.0.2.1".parse().expect("ip")],
        });
        assert_eq!(
            (id.as_str(), action.as_str()),
            ("app.example.com", "fail_open")
        );
        assert_eq!(
            detail,
            serde_json::json!({"name": "app.example.com", "kept": ["192.0.2.1"]})
        );
        let (id, action, _) = audit_entry(&DnsEvent::ReconcileFailed {
            provider: "rfc2136".into(),
            zone: "example.com".into(),
            name: None,
            error: "refused".into(),
        });
        assert_eq!(
            (id.as_str(), action.as_str()),
            ("example.com", "reconcile_failed")
        );
    }
}
