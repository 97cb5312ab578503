//! Admission limits: request rates per client (governor), concurrent connections per client
//! and in total, and idle connections.
//!
//! Clients are keyed by their address masked to a prefix ([`KeyMask`]: IPv4 /32 and IPv6 /64 by
//! default), so that one IPv6 host cannot dodge its limits by rotating through its /64.
//!
//! **Request rates** ([`RequestLimiter`]): one keyed GCRA limiter per route (its own rate and
//! burst), checked in the proxy after the route is known and before anything goes upstream:
//! for a known client two lookups in one shard of a sharded map under its read lock (is the
//! key tracked, then governor's atomic GCRA update), no lock held across an await. The
//! limiters live in the
//! route table snapshot (behind `ArcSwap`), so a new table brings new limiters.
//!
//! The key table is bounded: all limiters of one table share a [`ClientBudget`] of
//! `max_tracked_clients` keys. A key that is already tracked is always checked against its own
//! bucket. A new key takes a slot while there is one; when the table is full the new client
//! shares **one overflow bucket** (per route) with every other untracked client, and a prune is
//! requested. This is the conservative choice: during a flood of distinct addresses, new
//! clients are limited together (they may see 429 early) instead of not at all, while clients
//! already tracked keep their own buckets. A periodic task ([`RouteTable::prune_clients`],
//! every [`PRUNE_INTERVAL`] or sooner when the table fills) drops keys whose bucket is full
//! again (they are indistinguishable from new ones), which frees the slots. The cap is
//! approximate by a few keys under concurrent inserts, never by more than the number of
//! requests in flight.
//!
//! **Connections** ([`ConnectionLimiter`]): counted at `accept()`, before any TLS work, for every
//! listener together; the returned [`ConnectionPermit`] gives the slot back when dropped, which
//! happens when the connection's task ends, panics or is aborted.
//!
//! **Idle connections** ([`Activity`]): counts requests in flight on one client connection, so
//! that the listener can close a keep-alive connection that has had none for `idle_timeout`.
//!
//! [`RouteTable::prune_clients`]: crate::route::RouteTable::prune_clients

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, StateStore};
use governor::{Quota, RateLimiter};
use tokio::sync::Notify;

pub use kokoa_model::RatePolicy;

/// How often the rate limiters' key tables are pruned when nothing asks for it sooner.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(10);
/// The shortest time between two prunes (a full table asks for one on every new client).
pub const MIN_PRUNE_SPACING: Duration = Duration::from_secs(1);

/// How a client address becomes a limiter key: the address masked to a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyMask {
    /// IPv4 prefix length (0-32).
    pub ipv4_prefix: u8,
    /// IPv6 prefix length (0-128).
    pub ipv6_prefix: u8,
}

impl Default for KeyMask {
    fn default() -> Self {
        Self::from_limits(&kokoa_model::EdgeLimits::default())
    }
}

impl KeyMask {
    /// The client key prefixes of the model's `[limits]`.
    pub fn from_limits(limits: &kokoa_model::EdgeLimits) -> Self {
        Self {
            ipv4_prefix: limits.ipv4_prefix.as_u8(),
            ipv6_prefix: limits.ipv6_prefix.as_u8(),
        }
    }

    /// The key for `client`: IPv4-mapped IPv6 addresses are treated as IPv4, then the address
    /// is cut to the prefix (`2001:db8:1:2:a::1` -> `2001:db8:1:2::` with /64).
    pub fn key(&self, client: IpAddr) -> IpAddr {
        match client.to_canonical() {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.ipv4_prefix.min(32)))
                    .unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6_prefix.min(128)))
                    .unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        }
    }
}

/// A rate limiter key: a masked client address, or the bucket shared by clients that arrive
/// while the key table is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// A tracked client.
    Addr(IpAddr),
    /// Every client that could not get a slot of its own.
    Overflow,
}

/// The key slots shared by every limiter of one route table.
#[derive(Debug)]
pub struct ClientBudget {
    tracked: AtomicUsize,
    cap: usize,
    prune_wanted: Notify,
    overflowed: AtomicU64,
}

impl ClientBudget {
    /// A budget of `cap` keys (at least 1).
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            tracked: AtomicUsize::new(0),
            cap: cap.max(1),
            prune_wanted: Notify::new(),
            overflowed: AtomicU64::new(0),
        })
    }

    /// Keys tracked now (approximate while requests are being admitted).
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    /// The configured cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// How many checks went to an overflow bucket because the table was full.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Resolves when a limiter found the table full (the prune task waits on it).
    pub async fn prune_wanted(&self) {
        self.prune_wanted.notified().await
    }

    /// Records the keys counted after a prune (the sum over the table's limiters).
    pub(crate) fn set_tracked(&self, keys: usize) {
        self.tracked.store(keys, Ordering::Relaxed);
    }

    fn try_reserve(&self) -> bool {
        if self.tracked.fetch_add(1, Ordering::Relaxed) < self.cap {
            true
        } else {
            self.tracked.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }
}

/// governor's dashmap store with a cap on the number of keys (see the module docs).
#[derive(Debug)]
pub struct CappedStore {
    map: DashMap<ClientKey, InMemoryState>,
    budget: Arc<ClientBudget>,
}

impl CappedStore {
    fn slot_for<'a>(&self, key: &'a ClientKey) -> &'a ClientKey {
        if self.map.contains_key(key) {
            return key;
        }
        if self.budget.try_reserve() {
            match self.map.entry(*key) {
                dashmap::Entry::Vacant(vacant) => {
                    vacant.insert(InMemoryState::default());
                }
                // Another request inserted it meanwhile.
                dashmap::Entry::Occupied(_) => {
                    self.budget.tracked.fetch_sub(1, Ordering::Relaxed);
                }
            }
            return key;
        }
        self.budget.overflowed.fetch_add(1, Ordering::Relaxed);
        self.budget.prune_wanted.notify_one();
        &ClientKey::Overflow
    }
}

impl StateStore for CappedStore {
    type Key = ClientKey;

    fn measure_and_replace<T, F, E>(&self, key: &Self::Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let key = self.slot_for(key);
        StateStore::measure_and_replace(&self.map, key, f)
    }
}

impl ShrinkableKeyedStateStore<ClientKey> for CappedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        ShrinkableKeyedStateStore::retain_recent(&self.map, drop_below);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A request that was over its rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimited {
    /// When the client may try again, rounded up to whole seconds (at least 1): the value of
    /// `Retry-After`.
    pub retry_after_secs: u64,
}

/// The keyed request rate limiter of one route.
pub struct RequestLimiter {
    limiter: RateLimiter<ClientKey, CappedStore, DefaultClock>,
    clock: DefaultClock,
    mask: KeyMask,
    policy: RatePolicy,
    log: LogSampler,
}

impl std::fmt::Debug for RequestLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLimiter")
            .field("policy", &self.policy)
            .field("mask", &self.mask)
            .field("keys", &self.limiter.len())
            .finish()
    }
}

/// The governor quota for a policy: `burst` requests at once, refilled at `per_second`.
pub fn quota(policy: &RatePolicy) -> Quota {
    let period = Duration::from_secs_f64(1.0 / policy.per_second).max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(policy.burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

impl RequestLimiter {
    /// A limiter for `policy`, keying clients with `mask`, drawing key slots from `budget`.
    pub fn new(policy: RatePolicy, mask: KeyMask, budget: Arc<ClientBudget>) -> Self {
        let clock = DefaultClock::default();
        let store = CappedStore {
            map: DashMap::new(),
            budget,
        };
        Self {
            limiter: RateLimiter::new(quota(&policy), store, clock.clone()),
            clock,
            mask,
            policy,
            log: LogSampler::new(Duration::from_secs(1)),
        }
    }

    /// The policy.
    pub fn policy(&self) -> RatePolicy {
        self.policy
    }

    /// Admits one request from `client`, or says when it may retry.
    pub fn check(&self, client: IpAddr) -> Result<(), RateLimited> {
        let key = ClientKey::Addr(self.mask.key(client));
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            RateLimited {
                retry_after_secs: retry_after_secs(wait),
            }
        })
    }

    /// Whether a rejection should be logged now (see [`LogSampler`]).
    pub fn sample_log(&self) -> Option<u64> {
        self.log.sample()
    }

    /// Keys currently held (including the overflow bucket if used).
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }

    /// Drops the keys whose bucket is full again and gives their memory back; returns the
    /// keys left.
    pub fn prune(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.limiter.len()
    }
}

/// `Retry-After` seconds for a wait: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// Lets one log line through per interval and counts the ones it held back, so that a flood
/// of rejections costs a few atomics instead of a log line each.
#[derive(Debug)]
pub struct LogSampler {
    start: Instant,
    interval_ms: u64,
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogSampler {
    /// At most one line per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            start: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed)` when the caller should log now (with the number of events not logged
    /// since the previous line), `None` when it should stay quiet.
    pub fn sample(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.interval_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Why a connection was refused at `accept()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The edge holds `max_connections` already.
    Global,
    /// This client key holds `connections_per_client` already.
    PerClient,
    /// The raw TCP route's allow/deny list refuses the client.
    Acl,
}

impl Refusal {
    /// The `reason` label of `kokoa_edge_connections_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Global => "max_connections",
            Self::PerClient => "per_client",
            Self::Acl => "acl",
        }
    }
}

/// Concurrent client connections, per client key and in total, across every listener.
///
/// The caps can change while connections are open ([`ConnectionLimiter::set_caps`], when
/// control sends new `[limits]`): connections already open keep their slots and count against
/// the new caps; each permit remembers the key it was counted under, so a new key mask never
/// unbalances the counts.
#[derive(Debug)]
pub struct ConnectionLimiter {
    per_client: AtomicUsize,
    max: AtomicUsize,
    total: AtomicUsize,
    clients: Mutex<Clients>,
}

#[derive(Debug)]
struct Clients {
    mask: KeyMask,
    counts: HashMap<IpAddr, usize>,
}

impl ConnectionLimiter {
    /// At most `per_client` connections per client key and `max` in total (0: no limit).
    pub fn new(mask: KeyMask, per_client: usize, max: usize) -> Arc<Self> {
        Arc::new(Self {
            per_client: AtomicUsize::new(per_client),
            max: AtomicUsize::new(max),
            total: AtomicUsize::new(0),
            clients: Mutex::new(Clients {
                mask,
                counts: HashMap::new(),
            }),
        })
    }

    /// The caps of the model's `[limits]`.
    pub fn from_limits(limits: &kokoa_model::EdgeLimits) -> Arc<Self> {
        Self::new(
            KeyMask::from_limits(limits),
            limits.connections_per_client.as_usize(),
            limits.max_connections.as_usize(),
        )
    }

    /// New caps for connections accepted from now on.
    pub fn set_caps(&self, limits: &kokoa_model::EdgeLimits) {
        self.per_client
            .store(limits.connections_per_client.as_usize(), Ordering::Relaxed);
        self.max
            .store(limits.max_connections.as_usize(), Ordering::Relaxed);
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).mask = KeyMask::from_limits(limits);
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Takes a slot for a connection from `client`, or says why not. The permit gives the slot
    /// back when dropped.
    pub fn try_acquire(self: &Arc<Self>, client: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let max = self.max.load(Ordering::Relaxed);
        let per_client = self.per_client.load(Ordering::Relaxed);
        if max > 0 {
            if self.total.fetch_add(1, Ordering::AcqRel) >= max {
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::Global);
            }
        } else {
            self.total.fetch_add(1, Ordering::AcqRel);
        }
        let key = if per_client > 0 {
            let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
            let key = clients.mask.key(client);
            let count = clients.counts.entry(key).or_insert(0);
            if *count >= per_client {
                drop(clients);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::PerClient);
            }
            *count += 1;
            Some(key)
        } else {
            None
        };
        Ok(ConnectionPermit {
            limiter: self.clone(),
            key,
        })
    }
}

/// One connection's slot in a [`ConnectionLimiter`]; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    key: Option<IpAddr>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let mut clients = self
                .limiter
                .clients
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(count) = clients.counts.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    // Only clients with open connections stay in the map: it is bounded by
                    // the number of open connections.
                    clients.counts.remove(&key);
                }
            }
        }
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Requests in flight on one client connection, and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    closing: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        }
    }
}

impl Activity {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Marks a request as in flight until the returned guard is dropped (at the end of its
    /// response body).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            activity: self.clone(),
        }
    }

    /// How long the connection has had no request in flight; `None` while one is.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = self.last_ms.load(Ordering::Acquire);
        Some(Duration::from_millis(self.now_ms().saturating_sub(last)))
    }

    /// Marks the connection as closing for idleness (once); returns whether this call did.
    pub fn close_once(&self) -> bool {
        !self.closing.swap(true, Ordering::AcqRel)
    }
}

/// A request in flight on a connection (see [`Activity::begin`]).
#[derive(Debug)]
pub struct InFlight {
    activity: Arc<Activity>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.activity.now_ms();
        self.activity.last_ms.store(now, Ordering::Release);
        self.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn policy(per_second: f64, burst: u32) -> RatePolicy {
        RatePolicy { per_second, burst }
    }

    #[test]
    fn keys_are_masked_to_the_prefix() {
        let mask = KeyMask::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(mask.key(ip("203.0.113.9")), ip("203.0.113.9"));
        assert_eq!(mask.key(ip("2001:db8:1:2:a:b:c:d")), ip("2001:db8:1:2::"));
        assert_eq!(mask.key(ip("::ffff:203.0.113.9")), ip("203.0.113.9"));
        let wide = KeyMask {
            ipv4_prefix: 24,
            ipv6_prefix: 48,
        };
        assert_eq!(wide.key(ip("203.0.113.9")), ip("203.0.113.0"));
        assert_eq!(wide.key(ip("2001:db8:1:2::1")), ip("2001:db8:1::"));
        let none = KeyMask {
            ipv4_prefix: 0,
            ipv6_prefix: 0,
        };
        assert_eq!(none.key(ip("203.0.113.9")), ip("0.0.0.0"));
        assert_eq!(none.key(ip("2001:db8::1")), ip("::"));
    }

    #[test]
    fn burst_then_limited_with_retry_after_and_other_keys_untouched() {
        let limiter =
            RequestLimiter::new(policy(0.5, 3), KeyMask::default(), ClientBudget::new(10));
        let a: IpAddr = Ipv4Addr::new(127, 0, 0, 2).into();
        let b: IpAddr = Ipv4Addr::new(127, 0, 0, 3).into();
        for _ in 0..3 {
            assert_eq!(limiter.check(a), Ok(()));
        }
        let limited = limiter.check(a).unwrap_err();
        // One request per 2 s: the next one is due in (just under) 2 s, rounded up.
        assert_eq!(limited.retry_after_secs, 2);
        assert_eq!(limiter.check(b), Ok(()));
        // Same /64: same key.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.check(v6a), Ok(()));
        }
        assert!(limiter.check(v6b).is_err());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(100)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }

    #[test]
    fn key_table_stays_bounded_under_200k_distinct_clients() {
        const CAP: usize = 1000;
        let budget = ClientBudget::new(CAP);
        let limiter = RequestLimiter::new(policy(1000.0, 1000), KeyMask::default(), budget.clone());
        for i in 0..200_000u32 {
            let ip = IpAddr::V6(Ipv6Addr::from(u128::from(i) << 64));
            // Untracked clients share one overflow bucket of 1000 requests: some get limited.
            let _ = limiter.check(ip);
            assert!(
                limiter.tracked() <= CAP + 1,
                "at {i}: {}",
                limiter.tracked()
            );
        }
        assert_eq!(
            limiter.tracked(),
            CAP + 1,
            "the cap plus the overflow bucket"
        );
        assert!(budget.tracked() <= CAP);
        assert_eq!(budget.overflowed(), 200_000 - CAP as u64);
        // A tracked client still has its own bucket.
        let first = IpAddr::V6(Ipv6Addr::from(0u128));
        assert_eq!(limiter.check(first), Ok(()));
    }

    #[test]
    fn pruning_frees_slots_of_clients_whose_bucket_refilled() {
        let budget = ClientBudget::new(100);
        // 1000 per second, burst 1: a bucket refills within a millisecond.
        let limiter = RequestLimiter::new(policy(1000.0, 1), KeyMask::default(), budget.clone());
        for i in 0..100u32 {
            limiter.check(IpAddr::V4(Ipv4Addr::from(i))).unwrap();
        }
        assert_eq!(limiter.tracked(), 100);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(limiter.prune(), 0);
    }

    #[test]
    fn connection_limits_per_client_and_global() {
        let limiter = ConnectionLimiter::new(KeyMask::default(), 2, 3);
        let a: IpAddr = Ipv4Addr::new(127, 0, 0, 2).into();
        let b: IpAddr = Ipv4Addr::new(127, 0, 0, 3).into();
        let c: IpAddr = Ipv4Addr::new(127, 0, 0, 4).into();
        let a1 = limiter.try_acquire(a).unwrap();
        let a2 = limiter.try_acquire(a).unwrap();
        assert_eq!(limiter.try_acquire(a).unwrap_err(), Refusal::PerClient);
        let b1 = limiter.try_acquire(b).unwrap();
        assert_eq!(limiter.try_acquire(c).unwrap_err(), Refusal::Global);
        assert_eq!(limiter.open(), 3);
        drop(a1);
        let c1 = limiter.try_acquire(c).unwrap();
        drop((a2, b1, c1));
        assert_eq!(limiter.open(), 0);
        assert!(limiter.clients.lock().unwrap().counts.is_empty());
    }

    #[test]
    fn permit_is_released_when_its_task_panics() {
        let limiter = ConnectionLimiter::new(KeyMask::default(), 1, 0);
        let ip: IpAddr = Ipv4Addr::LOCALHOST.into();
        let permit = limiter.try_acquire(ip).unwrap();
        let result = std::thread::spawn(move || {
            let _permit = permit;
            panic!("connection task failed");
        })
        .join();
        assert!(result.is_err());
        assert_eq!(limiter.open(), 0);
        assert!(limiter.try_acquire(ip).is_ok());
    }

    #[test]
    fn sampler_lets_one_line_per_interval() {
        let sampler = LogSampler::new(Duration::from_millis(200));
        assert_eq!(sampler.sample(), Some(0));
        for _ in 0..1000 {
            assert_eq!(sampler.sample(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(sampler.sample(), Some(1000));
    }

    #[test]
    fn activity_tracks_requests_in_flight() {
        let activity = Arc::new(Activity::default());
        assert!(activity.idle_for().is_some());
        let request = activity.begin();
        assert_eq!(activity.idle_for(), None);
        drop(request);
        assert!(activity.idle_for().unwrap() < Duration::from_secs(1));
        assert!(activity.close_once());
        assert!(!activity.close_once());
    }
}
