//! DNS steering: [`DnsManager`] keeps, for every route host name, the A/AAAA records equal to
//! the public addresses of the healthy edges that serve it.
//!
//! The caller (the fleet manager) owns the facts: it builds a [`DesiredState`] (name ->
//! addresses of the healthy edges serving that name) from the store and the health checker,
//! and hands each new one to [`DnsManager::run`] through a `watch` channel. The manager owns
//! the provider side:
//!
//! - **Reconciled, not replayed.** Every pass reads the provider's current records (one
//!   listing per provider) and writes only names that differ, so a lost update or a record
//!   edited by hand converges back at the next pass ([`SteeringOptions::interval`], and at once
//!   on every new desired state). A name that already matches is never written.
//! - **Fail open.** A name whose desired set is empty (no healthy edge serves it) keeps the
//!   last addresses the manager published there (or, right after a control restart, whatever
//!   it holds): withdrawing the last edge would turn a degraded service into an outage. This is
//!   logged and sent as [`DnsEvent::FailOpen`] once, when it starts.
//! - **Routes that go away.** A name that leaves the desired state (its route was deleted)
//!   loses the addresses this manager published there; records someone else put there stay.
//!   Names dropped while control was down are not known, so they are not touched.
//! - **Zones.** A name goes to the provider whose zone is its longest suffix; a name inside no
//!   provider's zone is reported ([`NameOutcome::OutsideZone`], a log line, an event, a gauge)
//!   and never sent. Wildcard route names (`*.example.com`) get wildcard records.
//!
//! What happened is visible as Prometheus metrics ([`DnsMetrics`], registered by the caller on
//! control's registry), as a [`DnsStatus`] snapshot, and as [`DnsEvent`]s for notifiers.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::{
    addresses, in_zone, normalize_name, AddressChange, DnsProvider, DnsRecord, RecordData,
};

/// Default TTL of steered records, in seconds: short, so a withdrawn edge leaves resolvers'
/// caches quickly.
pub const DEFAULT_TTL: u32 = 30;
/// Default time between two reconcile passes when nothing changes.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Events kept for a slow subscriber before it starts losing the oldest.
pub const EVENT_BUFFER: usize = 256;

/// How the manager steers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SteeringOptions {
    /// TTL of the A/AAAA records, seconds (a provider may raise it to its minimum).
    pub ttl: u32,
    /// Time between passes when the desired state does not change.
    pub interval: Duration,
}

impl Default for SteeringOptions {
    fn default() -> Self {
        SteeringOptions {
            ttl: DEFAULT_TTL,
            interval: DEFAULT_INTERVAL,
        }
    }
}

/// What DNS should say: for each route host name, the public addresses of the healthy edges
/// serving it. An empty set means "no healthy edge" (the manager fails open); a name absent
/// from the state is not steered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    names: BTreeMap<String, BTreeSet<IpAddr>>,
}

impl DesiredState {
    /// An empty state (no name steered).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name`'s addresses (lower-cased, trailing dot dropped). Called twice for one name
    /// (a route's host name and another's alias cannot collide, but a caller may merge
    /// sources), the sets are united.
    pub fn insert(&mut self, name: &str, addresses: impl IntoIterator<Item = IpAddr>) {
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        self.names.entry(name).or_default().extend(addresses);
    }

    /// The names and their addresses, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &BTreeSet<IpAddr>)> {
        self.names.iter().map(|(name, set)| (name.as_str(), set))
    }

    /// The addresses of `name`, if it is steered.
    pub fn get(&self, name: &str) -> Option<&BTreeSet<IpAddr>> {
        self.names.get(name)
    }

    /// How many names are steered.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no name is steered.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl<S: AsRef<str>, I: IntoIterator<Item = IpAddr>> FromIterator<(S, I)> for DesiredState {
    fn from_iter<T: IntoIterator<Item = (S, I)>>(iter: T) -> Self {
        let mut state = DesiredState::new();
        for (name, addresses) in iter {
            state.insert(name.as_ref(), addresses);
        }
        state
    }
}

/// What a pass did for one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameOutcome {
    /// The name already held exactly its addresses with the TTL: nothing was written.
    Unchanged,
    /// The name was written.
    Changed(AddressChange),
    /// No healthy edge serves the name: its last addresses (`kept`) stay published. `change`
    /// is non-empty when they had to be restored (e.g. someone removed them by hand).
    FailOpen {
        /// The addresses kept.
        kept: BTreeSet<IpAddr>,
        /// What was written to keep them.
        change: AddressChange,
    },
    /// The name left the desired state: the addresses the manager had published were removed.
    Retired(AddressChange),
    /// No provider's zone contains the name: nothing was sent.
    OutsideZone,
    /// Reading or writing failed; the next pass tries again.
    Failed(String),
}

/// What one [`DnsManager::reconcile`] pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Every name the pass looked at.
    pub names: BTreeMap<String, NameOutcome>,
    /// Providers whose records could not be read (`kind zone`, error).
    pub provider_errors: Vec<(String, String)>,
}

impl ReconcileReport {
    /// The outcome for `name`.
    pub fn outcome(&self, name: &str) -> Option<&NameOutcome> {
        self.names.get(name)
    }

    /// How many names were written (changed, restored or retired).
    pub fn writes(&self) -> usize {
        self.names
            .values()
            .filter(|outcome| match outcome {
                NameOutcome::Changed(change) | NameOutcome::Retired(change) => !change.is_empty(),
                NameOutcome::FailOpen { change, .. } => !change.is_empty(),
                _ => false,
            })
            .count()
    }
}

/// Something a notifier may want to tell an operator. Serialized as JSON with an `event` tag
/// (`{"event": "fail_open", "name": ..., "kept": [...]}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DnsEvent {
    /// Records were written.
    AddressesChanged {
        /// Provider kind.
        provider: String,
        /// The provider's zone.
        zone: String,
        /// The name.
        name: String,
        /// Addresses published.
        added: Vec<IpAddr>,
        /// Addresses withdrawn.
        removed: Vec<IpAddr>,
        /// Addresses whose TTL was rewritten.
        retimed: Vec<IpAddr>,
        /// The TTL written.
        ttl: u32,
        /// `steering`, `fail_open` (restoring kept addresses) or `retired` (route gone).
        reason: &'static str,
    },
    /// No healthy edge serves `name`; its last addresses stay published.
    FailOpen {
        /// The name.
        name: String,
        /// The addresses kept (empty when the name held none to keep).
        kept: Vec<IpAddr>,
    },
    /// A healthy edge serves `name` again.
    FailOpenEnded {
        /// The name.
        name: String,
        /// Its addresses now.
        addresses: Vec<IpAddr>,
    },
    /// `name` is inside no provider's zone; its records must be managed by hand.
    OutsideZone {
        /// The name.
        name: String,
    },
    /// Reading a provider (`name: None`) or writing a name failed (sent when the error starts
    /// or changes, not on every pass).
    ReconcileFailed {
        /// Provider kind.
        provider: String,
        /// The provider's zone.
        zone: String,
        /// The name, for a write.
        name: Option<String>,
        /// The error.
        error: String,
    },
    /// A failure reported by [`DnsEvent::ReconcileFailed`] is over.
    ReconcileRecovered {
        /// Provider kind.
        provider: String,
        /// The provider's zone.
        zone: String,
        /// The name, for a write.
        name: Option<String>,
    },
}

/// Labels of the per-provider metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Provider kind (`rfc2136`, `powerdns`, `cloudflare`).
    pub provider: String,
    /// The provider's zone.
    pub zone: String,
}

/// Labels of [`DnsMetrics::changes`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    /// Provider kind.
    pub provider: String,
    /// The provider's zone.
    pub zone: String,
    /// `added`, `removed` or `retimed`.
    pub change: String,
}

/// Prometheus metrics of DNS steering; [`DnsMetrics::register`] puts them on a registry.
#[derive(Clone, Debug, Default)]
pub struct DnsMetrics {
    /// Addresses added, removed or re-timed.
    pub changes: Family<ChangeLabels, Counter>,
    /// Failed reads and writes.
    pub errors: Family<ProviderLabels, Counter>,
    /// Completed passes (the provider's records were read).
    pub passes: Family<ProviderLabels, Counter>,
    /// Unix time of the last completed pass.
    pub last_reconcile: Family<ProviderLabels, Gauge>,
    /// Names the provider steers.
    pub names: Family<ProviderLabels, Gauge>,
    /// Names held open (no healthy edge).
    pub fail_open: Gauge,
    /// Names inside no provider's zone.
    pub outside_zone: Gauge,
}

impl DnsMetrics {
    /// Registers `kokoa_dns_record_changes_total{provider,zone,change}`,
    /// `kokoa_dns_errors_total{provider,zone}`, `kokoa_dns_reconciles_total{provider,zone}`,
    /// `kokoa_dns_last_reconcile_timestamp_seconds{provider,zone}`,
    /// `kokoa_dns_names{provider,zone}`, `kokoa_dns_fail_open_names` and
    /// `kokoa_dns_outside_zone_names`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kokoa_dns_record_changes",
            "DNS addresses added, removed or re-timed by steering",
            self.changes.clone(),
        );
        registry.register(
            "kokoa_dns_errors",
            "Failed DNS reads and writes",
            self.errors.clone(),
        );
        registry.register(
            "kokoa_dns_reconciles",
            "Completed DNS reconcile passes",
            self.passes.clone(),
        );
        registry.register(
            "kokoa_dns_last_reconcile_timestamp_seconds",
            "Unix time of the last completed DNS reconcile pass",
            self.last_reconcile.clone(),
        );
        registry.register(
            "kokoa_dns_names",
            "Route names steered by the provider",
            self.names.clone(),
        );
        registry.register(
            "kokoa_dns_fail_open_names",
            "Names with no healthy edge whose last addresses are kept",
            self.fail_open.clone(),
        );
        registry.register(
            "kokoa_dns_outside_zone_names",
            "Route names inside no DNS provider's zone",
            self.outside_zone.clone(),
        );
    }
}

/// One provider's counters, as [`DnsManager::status`] reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderStatus {
    /// Provider kind.
    pub kind: &'static str,
    /// The provider's zone.
    pub zone: String,
    /// Addresses added, removed or re-timed so far.
    pub changes: u64,
    /// Failed reads and writes so far.
    pub errors: u64,
    /// When a pass last read the provider's records.
    pub last_reconcile: Option<SystemTime>,
    /// The last failure, cleared by a pass without one.
    pub last_error: Option<String>,
}

/// A snapshot of the manager.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsStatus {
    /// Per provider, in the order given to [`DnsManager::new`].
    pub providers: Vec<ProviderStatus>,
    /// Names held open.
    pub fail_open: Vec<String>,
    /// Names inside no provider's zone.
    pub outside_zone: Vec<String>,
}

#[derive(Default)]
struct State {
    /// The last non-empty address set this manager made (or found) true at each name.
    published: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Names of the last desired state (plus retirements still to finish).
    previous: BTreeSet<String>,
    fail_open: BTreeSet<String>,
    outside: BTreeSet<String>,
    /// Current failures by (provider index, name), for events on change only.
    failures: BTreeMap<(usize, Option<String>), String>,
    providers: Vec<ProviderStatus>,
}

/// The reconciler; see the module doc. Cheap to share (`Arc`).
pub struct DnsManager {
    providers: Vec<Arc<dyn DnsProvider>>,
    options: SteeringOptions,
    metrics: DnsMetrics,
    events: broadcast::Sender<DnsEvent>,
    state: Mutex<State>,
    /// Passes run one at a time.
    pass: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for DnsManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsManager")
            .field("providers", &self.providers)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl DnsManager {
    /// A manager writing through `providers` (usually one; several for several zones, each
    /// name going to the provider with the longest matching zone).
    pub fn new(providers: Vec<Arc<dyn DnsProvider>>, options: SteeringOptions) -> Arc<Self> {
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let state = State {
            providers: providers
                .iter()
                .map(|provider| ProviderStatus {
                    kind: provider.kind(),
                    zone: provider.zone().to_owned(),
                    changes: 0,
                    errors: 0,
                    last_reconcile: None,
                    last_error: None,
                })
                .collect(),
            ..State::default()
        };
        Arc::new(Self {
            providers,
            options,
            metrics: DnsMetrics::default(),
            events,
            state: Mutex::new(state),
            pass: tokio::sync::Mutex::new(()),
        })
    }

    /// The manager's metrics (register them on control's registry).
    pub fn metrics(&self) -> &DnsMetrics {
        &self.metrics
    }

    /// The options in use.
    pub fn options(&self) -> &SteeringOptions {
        &self.options
    }

    /// Events from now on. A subscriber that falls more than [`EVENT_BUFFER`] events behind
    /// loses the oldest (its next `recv` says how many).
    pub fn subscribe(&self) -> broadcast::Receiver<DnsEvent> {
        self.events.subscribe()
    }

    /// A snapshot of counters, held-open and out-of-zone names.
    pub fn status(&self) -> DnsStatus {
        let state = self.state.lock();
        DnsStatus {
            providers: state.providers.clone(),
            fail_open: state.fail_open.iter().cloned().collect(),
            outside_zone: state.outside.iter().cloned().collect(),
        }
    }

    /// Reconciles now, then again every [`SteeringOptions::interval`] and at once whenever
    /// `desired` changes, until `shutdown` resolves (a pass in progress is abandoned then;
    /// every provider write is atomic, so nothing is left half-done). If the sender of
    /// `desired` goes away, the last state keeps being enforced.
    pub async fn run(
        self: Arc<Self>,
        mut desired: watch::Receiver<DesiredState>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut sender_alive = true;
        loop {
            let state = desired.borrow_and_update().clone();
            tokio::select! {
                () = &mut shutdown => return,
                _ = self.reconcile(&state) => {}
            }
            let changed = async {
                if sender_alive {
                    desired.changed().await.is_ok()
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                alive = changed => sender_alive = alive,
                () = tokio::time::sleep(self.options.interval) => {}
            }
        }
    }

    /// The provider for `name`: the one with the longest zone containing it.
    fn provider_for(&self, name: &str) -> Option<usize> {
        self.providers
            .iter()
            .enumerate()
            .filter(|(_, provider)| in_zone(name, provider.zone()))
            .max_by_key(|(_, provider)| provider.zone().len())
            .map(|(index, _)| index)
    }

    fn labels(&self, index: usize) -> ProviderLabels {
        ProviderLabels {
            provider: self.providers[index].kind().to_owned(),
            zone: self.providers[index].zone().to_owned(),
        }
    }

    fn emit(&self, event: DnsEvent) {
        // No subscriber is fine: events are a courtesy to notifiers.
        let _ = self.events.send(event);
    }

    /// Records a failure: metrics, status, a log line, and an event when it is new.
    fn fail(&self, index: usize, name: Option<&str>, error: String) {
        let provider = &self.providers[index];
        self.metrics.errors.get_or_create(&self.labels(index)).inc();
        let new = {
            let mut state = self.state.lock();
            state.providers[index].errors += 1;
            state.providers[index].last_error = Some(error.clone());
            let key = (index, name.map(str::to_owned));
            state.failures.insert(key, error.clone()).as_ref() != Some(&error)
        };
        tracing::warn!(
            provider = provider.kind(),
            zone = provider.zone(),
            name,
            %error,
            "DNS steering failed; retrying at the next pass"
        );
        if new {
            self.emit(DnsEvent::ReconcileFailed {
                provider: provider.kind().to_owned(),
                zone: provider.zone().to_owned(),
                name: name.map(str::to_owned),
                error,
            });
        }
    }

    /// Clears a failure recorded by [`Self::fail`], with an event if there was one.
    fn succeed(&self, index: usize, name: Option<&str>) {
        let was_failing = self
            .state
            .lock()
            .failures
            .remove(&(index, name.map(str::to_owned)))
            .is_some();
        if was_failing {
            let provider = &self.providers[index];
            tracing::info!(
                provider = provider.kind(),
                zone = provider.zone(),
                name,
                "DNS steering recovered"
            );
            self.emit(DnsEvent::ReconcileRecovered {
                provider: provider.kind().to_owned(),
                zone: provider.zone().to_owned(),
                name: name.map(str::to_owned),
            });
        }
    }

    fn count_change(&self, index: usize, name: &str, change: &AddressChange, reason: &'static str) {
        if change.is_empty() {
            return;
        }
        let labels = self.labels(index);
        for (kind, list) in [
            ("added", &change.added),
            ("removed", &change.removed),
            ("retimed", &change.retimed),
        ] {
            if !list.is_empty() {
                self.metrics
                    .changes
                    .get_or_create(&ChangeLabels {
                        provider: labels.provider.clone(),
                        zone: labels.zone.clone(),
                        change: kind.to_owned(),
                    })
                    .inc_by(list.len() as u64);
            }
        }
        self.state.lock().providers[index].changes +=
            (change.added.len() + change.removed.len() + change.retimed.len()) as u64;
        tracing::info!(
            provider = labels.provider,
            zone = labels.zone,
            name,
            added = ?change.added,
            removed = ?change.removed,
            retimed = ?change.retimed,
            ttl = self.options.ttl,
            reason,
            "DNS records steered"
        );
        self.emit(DnsEvent::AddressesChanged {
            provider: labels.provider,
            zone: labels.zone,
            name: name.to_owned(),
            added: change.added.clone(),
            removed: change.removed.clone(),
            retimed: change.retimed.clone(),
            ttl: self.providers[index].effective_ttl(self.options.ttl),
            reason,
        });
    }

    /// One pass: reads every provider's records for the names it steers, and writes the names
    /// that differ from `desired` (see the module doc for the rules). Never fails as a whole:
    /// each name's outcome and each provider's read error are in the report (and in metrics,
    /// logs and events).
    pub async fn reconcile(&self, desired: &DesiredState) -> ReconcileReport {
        let _pass = self.pass.lock().await;
        let mut report = ReconcileReport::default();

        // Which names go where; retired names are the previous pass's that are gone now.
        let mut work: Vec<Vec<(String, Option<BTreeSet<IpAddr>>)>> =
            vec![Vec::new(); self.providers.len()];
        let mut outside = BTreeSet::new();
        for (name, set) in desired.iter() {
            match self.provider_for(name) {
                Some(index) => work[index].push((name.to_owned(), Some(set.clone()))),
                None => {
                    outside.insert(name.to_owned());
                    report
                        .names
                        .insert(name.to_owned(), NameOutcome::OutsideZone);
                }
            }
        }
        let retired: Vec<String> = self
            .state
            .lock()
            .previous
            .iter()
            .filter(|name| desired.get(name).is_none())
            .cloned()
            .collect();
        for name in retired {
            if let Some(index) = self.provider_for(&name) {
                work[index].push((name, None));
            }
        }
        self.report_outside(&outside);

        let mut unfinished = BTreeSet::new();
        for (index, names) in work.into_iter().enumerate() {
            let provider = self.providers[index].clone();
            self.metrics
                .names
                .get_or_create(&self.labels(index))
                .set(names.iter().filter(|(_, set)| set.is_some()).count() as i64);
            // Invalid names fail alone rather than failing the provider's whole listing.
            let mut valid = Vec::new();
            for (name, set) in names {
                match normalize_name(&name, provider.zone()) {
                    Ok(_) => valid.push((name, set)),
                    Err(error) => {
                        let error = error.to_string();
                        self.fail(index, Some(&name), error.clone());
                        report.names.insert(name, NameOutcome::Failed(error));
                    }
                }
            }
            let listed: Vec<String> = valid.iter().map(|(name, _)| name.clone()).collect();
            let current = if listed.is_empty() {
                Ok(BTreeMap::new())
            } else {
                provider.records_of(&listed).await
            };
            let current = match current {
                Ok(current) => current,
                Err(error) => {
                    let error = error.to_string();
                    self.fail(index, None, error.clone());
                    report.provider_errors.push((
                        format!("{} {}", provider.kind(), provider.zone()),
                        error.clone(),
                    ));
                    for (name, set) in valid {
                        if set.is_none() {
                            unfinished.insert(name.clone());
                        }
                        report
                            .names
                            .insert(name, NameOutcome::Failed(error.clone()));
                    }
                    continue;
                }
            };
            self.succeed(index, None);
            let mut clean = true;
            for (name, set) in valid {
                let records = current.get(&name).map_or(&[][..], Vec::as_slice);
                let outcome = self
                    .reconcile_name(index, &name, set.as_ref(), records)
                    .await;
                if let NameOutcome::Failed(_) = outcome {
                    clean = false;
                    if set.is_none() {
                        unfinished.insert(name.clone());
                    }
                }
                report.names.insert(name, outcome);
            }
            let now = SystemTime::now();
            self.metrics.passes.get_or_create(&self.labels(index)).inc();
            self.metrics
                .last_reconcile
                .get_or_create(&self.labels(index))
                .set(unix_seconds(now));
            let mut state = self.state.lock();
            state.providers[index].last_reconcile = Some(now);
            if clean {
                state.providers[index].last_error = None;
            }
        }

        let mut state = self.state.lock();
        state.previous = desired
            .iter()
            .map(|(name, _)| name.to_owned())
            .chain(unfinished)
            .collect();
        self.metrics.fail_open.set(state.fail_open.len() as i64);
        report
    }

    fn report_outside(&self, outside: &BTreeSet<String>) {
        let new: Vec<String> = {
            let mut state = self.state.lock();
            let new = outside.difference(&state.outside).cloned().collect();
            state.outside = outside.clone();
            new
        };
        self.metrics.outside_zone.set(outside.len() as i64);
        for name in new {
            tracing::warn!(
                name,
                "route name is inside no DNS provider's zone; its records are not managed"
            );
            self.emit(DnsEvent::OutsideZone { name });
        }
    }

    /// Brings one name to its desired set (`None`: the name was retired).
    async fn reconcile_name(
        &self,
        index: usize,
        name: &str,
        desired: Option<&BTreeSet<IpAddr>>,
        current: &[DnsRecord],
    ) -> NameOutcome {
        let provider = self.providers[index].clone();
        let ttl = self.options.ttl;
        let effective = provider.effective_ttl(ttl);
        let held = addresses(current);

        if desired.is_some_and(|set| !set.is_empty()) {
            if let Some(cname) = current.iter().find_map(|r| match &r.data {
                RecordData::Cname(target) => Some(target.clone()),
                _ => None,
            }) {
                let error = format!(
                    "{name} has a CNAME record (to {cname}); addresses cannot be published \
                     beside it: remove the CNAME"
                );
                self.fail(index, Some(name), error.clone());
                return NameOutcome::Failed(error);
            }
        }

        let (target, reason) = match desired {
            None => {
                let ours = self.state.lock().published.get(name).cloned();
                let Some(ours) = ours else {
                    return NameOutcome::Unchanged;
                };
                let rest: BTreeSet<IpAddr> = held.difference(&ours).copied().collect();
                (rest, "retired")
            }
            Some(set) if set.is_empty() => {
                let (kept, entering) = {
                    let mut state = self.state.lock();
                    let kept = state
                        .published
                        .get(name)
                        .filter(|set| !set.is_empty())
                        .cloned()
                        .unwrap_or_else(|| held.clone());
                    (kept, state.fail_open.insert(name.to_owned()))
                };
                if entering {
                    tracing::warn!(
                        name,
                        kept = ?kept,
                        "no healthy edge serves this name; keeping its last addresses (fail open)"
                    );
                    self.emit(DnsEvent::FailOpen {
                        name: name.to_owned(),
                        kept: kept.iter().copied().collect(),
                    });
                }
                (kept, "fail_open")
            }
            Some(set) => {
                let ended = self.state.lock().fail_open.remove(name);
                if ended {
                    tracing::info!(name, addresses = ?set, "a healthy edge serves this name again");
                    self.emit(DnsEvent::FailOpenEnded {
                        name: name.to_owned(),
                        addresses: set.iter().copied().collect(),
                    });
                }
                (set.clone(), "steering")
            }
        };

        let plan = AddressChange::plan(current, &target, effective);
        let change = if plan.is_empty() || (reason == "fail_open" && target.is_empty()) {
            AddressChange::default()
        } else {
            match provider.set_addresses(name, &target, ttl).await {
                Ok(change) => change,
                Err(error) => {
                    let error = error.to_string();
                    self.fail(index, Some(name), error.clone());
                    return NameOutcome::Failed(error);
                }
            }
        };
        self.succeed(index, Some(name));
        self.count_change(index, name, &change, reason);
        {
            let mut state = self.state.lock();
            if reason == "retired" {
                state.published.remove(name);
            } else if !target.is_empty() {
                state.published.insert(name.to_owned(), target.clone());
            }
        }
        match reason {
            "retired" => NameOutcome::Retired(change),
            "fail_open" => NameOutcome::FailOpen {
                kept: target,
                change,
            },
            _ if change.is_empty() => NameOutcome::Unchanged,
            _ => NameOutcome::Changed(change),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The rules against an in-memory provider; the real servers are exercised in
    //! `control/tests/dns.rs`.

    use super::*;
    use crate::dns::DnsError;
    use async_trait::async_trait;

    /// A zone in memory that counts writes.
    #[derive(Debug, Default)]
    struct Memory {
        records: Mutex<BTreeMap<String, Vec<DnsRecord>>>,
        writes: Mutex<usize>,
    }

    #[async_trait]
    impl DnsProvider for Memory {
        fn kind(&self) -> &'static str {
            "memory"
        }
        fn zone(&self) -> &str {
            "kokoa.test"
        }
        async fn records(&self, name: &str) -> Result<Vec<DnsRecord>, DnsError> {
            Ok(self.records.lock().get(name).cloned().unwrap_or_default())
        }
        async fn set_addresses(
            &self,
            name: &str,
            addresses: &BTreeSet<IpAddr>,
            ttl: u32,
        ) -> Result<AddressChange, DnsError> {
            let current = self.records(name).await?;
            let change = AddressChange::plan(&current, addresses, ttl);
            if !change.is_empty() {
                *self.writes.lock() += 1;
                let mut records = self.records.lock();
                let entry = records.entry(name.to_owned()).or_default();
                entry.retain(|r| r.data.address().is_none());
                entry.extend(addresses.iter().map(|ip| DnsRecord {
                    name: name.to_owned(),
                    ttl,
                    data: RecordData::from_address(*ip),
                }));
            }
            Ok(change)
        }
        async fn add_record(&self, _: &str, _: &RecordData, _: u32) -> Result<(), DnsError> {
            Ok(())
        }
        async fn remove_record(&self, _: &str, _: &RecordData) -> Result<(), DnsError> {
            Ok(())
        }
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[tokio::test]
    async fn rules_hold_against_a_zone_in_memory() {
        let zone = Arc::new(Memory::default());
        let manager = DnsManager::new(vec![zone.clone()], SteeringOptions::default());
        let mut events = manager.subscribe();
        let name = "app.kokoa.test";

        let desired = DesiredState::from_iter([(name, ips(&["192.0.2.1", "192.0.2.2"]))]);
        let report = manager.reconcile(&desired).await;
        assert!(matches!(
            report.outcome(name),
            Some(NameOutcome::Changed(_))
        ));
        // Idempotent: the second pass writes nothing.
        let report = manager.reconcile(&desired).await;
        assert_eq!(report.outcome(name), Some(&NameOutcome::Unchanged));
        assert_eq!(*zone.writes.lock(), 1);

        // No healthy edge: the last set stays, with an event.
        let empty = DesiredState::from_iter([(name, ips(&[]))]);
        let report = manager.reconcile(&empty).await;
        assert_eq!(
            report.outcome(name),
            Some(&NameOutcome::FailOpen {
                kept: ips(&["192.0.2.1", "192.0.2.2"]),
                change: AddressChange::default()
            })
        );
        assert_eq!(
            addresses(&zone.records(name).await.unwrap()),
            ips(&["192.0.2.1", "192.0.2.2"])
        );
        assert_eq!(manager.status().fail_open, [name]);

        // Outside the zone: reported, never sent.
        let outside = DesiredState::from_iter([
            (name, ips(&["192.0.2.3"])),
            ("app.example.com", ips(&["192.0.2.3"])),
        ]);
        let report = manager.reconcile(&outside).await;
        assert_eq!(
            report.outcome("app.example.com"),
            Some(&NameOutcome::OutsideZone)
        );
        assert!(zone.records.lock().get("app.example.com").is_none());

        // The route goes away: what the manager published is withdrawn.
        let report = manager.reconcile(&DesiredState::new()).await;
        assert!(
            matches!(report.outcome(name), Some(NameOutcome::Retired(c)) if c.removed == [ips(&["192.0.2.3"]).into_iter().next().unwrap()])
        );
        assert!(addresses(&zone.records(name).await.unwrap()).is_empty());

        let mut seen = Vec::new();
        while let Ok(event) = events.try_recv() {
            seen.push(
                serde_json::to_value(&event).unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        assert_eq!(
            seen,
            [
                "addresses_changed",
                "fail_open",
                "outside_zone",
                "fail_open_ended",
                "addresses_changed",
                "addresses_changed"
            ]
        );
        let status = manager.status();
        assert_eq!(status.providers[0].changes, 2 + 2 + 1 + 1);
        assert!(status.providers[0].last_reconcile.is_some());
    }
}
