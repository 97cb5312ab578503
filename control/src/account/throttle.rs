//! [`AddressThrottle`]: failed logins per client address, with a lockout, in a map of bounded
//! size. (Per-account lockout lives in the store, so it holds across replicas and restarts.)
//!
//! IPv6 addresses count per /64: one host usually owns a whole /64, and counting single
//! addresses would let it rotate through them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The per-address rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Failures within `window` that lock the address.
    pub max_failures: u32,
    /// The window failures are counted in.
    pub window: Duration,
    /// How long the address stays locked.
    pub lockout: Duration,
    /// Addresses tracked at most; when full, the entry with the oldest window is dropped.
    pub capacity: usize,
}

impl Default for AddressPolicy {
    fn default() -> Self {
        AddressPolicy {
            max_failures: 20,
            window: Duration::from_secs(15 * 60),
            lockout: Duration::from_secs(15 * 60),
            capacity: 10_000,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    window_start: Instant,
    locked_until: Option<Instant>,
}

/// Failed logins per address.
#[derive(Debug)]
pub struct AddressThrottle {
    policy: AddressPolicy,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

/// The key an address is counted under.
fn key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

impl AddressThrottle {
    /// An empty throttle.
    pub fn new(policy: AddressPolicy) -> Self {
        AddressThrottle {
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long `address` must still wait, if it is locked.
    pub fn locked(&self, address: IpAddr, now: Instant) -> Option<Duration> {
        let entries = self.entries.lock();
        let until = entries.get(&key(address))?.locked_until?;
        until.checked_duration_since(now).filter(|d| !d.is_zero())
    }

    /// Counts a failure; `Some(lockout)` when this one locked the address.
    pub fn failed(&self, address: IpAddr, now: Instant) -> Option<Duration> {
        let mut entries = self.entries.lock();
        let key = key(address);
        if !entries.contains_key(&key) && entries.len() >= self.policy.capacity.max(1) {
            // Drop what is stale; if nothing is, the entry whose window began first.
            let window = self.policy.window;
            entries.retain(|_, e| {
                e.locked_until.is_some_and(|u| u > now)
                    || now.saturating_duration_since(e.window_start) < window
            });
            if entries.len() >= self.policy.capacity.max(1) {
                if let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, e)| e.window_start)
                    .map(|(k, _)| *k)
                {
                    entries.remove(&oldest);
                }
            }
        }
        let entry = entries.entry(key).or_insert(Entry {
            failures: 0,
            window_start: now,
            locked_until: None,
        });
        if now.saturating_duration_since(entry.window_start) >= self.policy.window {
            entry.failures = 0;
            entry.window_start = now;
        }
        entry.failures += 1;
        if entry.failures >= self.policy.max_failures.max(1) {
            entry.failures = 0;
            entry.window_start = now;
            entry.locked_until = Some(now + self.policy.lockout);
            return Some(self.policy.lockout);
        }
        None
    }

    /// Forgets an address's failures after a successful login from it.
    pub fn succeeded(&self, address: IpAddr) {
        let mut entries = self.entries.lock();
        if let Some(entry) = entries.get_mut(&key(address)) {
            if entry.locked_until.is_none() {
                entries.remove(&key(address));
            }
        }
    }

    /// Addresses tracked now.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(capacity: usize) -> AddressPolicy {
        AddressPolicy {
            max_failures: 3,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(300),
            capacity,
        }
    }

    #[test]
    fn locks_after_max_failures_and_unlocks_later() {
        let t = AddressThrottle::new(policy(10));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        assert_eq!(t.failed(a, now), None);
        assert_eq!(t.failed(a, now), None);
        assert_eq!(t.failed(a, now), Some(Duration::from_secs(300)));
        assert!(t.locked(a, now + Duration::from_secs(299)).is_some());
        assert!(t.locked(a, now + Duration::from_secs(300)).is_none());
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(t.locked(b, now).is_none(), "another address is not locked");
    }

    #[test]
    fn the_window_restarts_the_count() {
        let t = AddressThrottle::new(policy(10));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let now = Instant::now();
        t.failed(a, now);
        t.failed(a, now);
        assert_eq!(t.failed(a, now + Duration::from_secs(61)), None);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let t = AddressThrottle::new(policy(10));
        let now = Instant::now();
        for host in 1..=3 {
            t.failed(format!("2001:db8::{host}").parse().unwrap(), now);
        }
        assert!(t.locked("2001:db8::ffff".parse().unwrap(), now).is_some());
        assert!(t.locked("2001:db8:0:1::1".parse().unwrap(), now).is_none());
    }

    #[test]
    fn a_flood_of_addresses_stays_within_capacity() {
        let t = AddressThrottle::new(policy(100));
        let now = Instant::now();
        for i in 0..10_000u32 {
            t.failed(IpAddr::V4(i.into()), now);
        }
        assert!(t.len() <= 100, "{}", t.len());
    }
}
