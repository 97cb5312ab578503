//! The window-memory ledger: which size each new stream's buffers get, who is charged for them,
//! and the sockets kept for reuse (see [`crate::window`] for the policy).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use smoltcp::socket::tcp;

use crate::window::WindowSettings;

/// Who a stream's buffers are charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Charge {
    /// A client key the edge opened the stream for.
    Client(u128),
    /// The peer (by index): inbound streams, and outbound ones opened for no client.
    Peer(u32),
}

/// Sockets kept for reuse are dropped after this long unused, so memory returns after load.
const SPARE_TTL: Duration = Duration::from_secs(10);
/// Most bytes of buffers kept in spare sockets (also bounded by a sixteenth of the budget).
///
/// Only sockets with buffers of the minimum size are kept (see [`Ledger::release`]): a spare
/// full-size socket (2 x 256 KiB with the defaults) is memory that serves no stream, resident
/// for [`SPARE_TTL`], and with every full-size stream that closed during a burst parked here
/// the cache alone held 16 MiB per node after the burst (the idle keep-alive benchmark counted
/// it as memory per connection). What reuse saves, one allocation per stream, is worth keeping
/// only for the small sockets that churn by the thousand (streams opened at the minimum once
/// their client's share is used up).
const SPARE_BYTES: usize = 16 * 1024 * 1024;

struct Spare {
    socket: tcp::Socket<'static>,
    since: Instant,
}

/// Bytes of stream buffers by owner and in total, and the spare sockets (by buffer size).
pub(crate) struct Ledger {
    settings: WindowSettings,
    /// Buffers of open streams and of spare sockets, both directions.
    total: usize,
    held: HashMap<Charge, usize>,
    spare: HashMap<usize, Vec<Spare>>,
    spare_bytes: usize,
}

impl Ledger {
    pub(crate) fn new(settings: WindowSettings) -> Ledger {
        Ledger {
            settings,
            total: 0,
            held: HashMap::new(),
            spare: HashMap::new(),
            spare_bytes: 0,
        }
    }

    pub(crate) fn settings(&self) -> &WindowSettings {
        &self.settings
    }

    /// Bytes of buffers allocated: open streams and spare sockets.
    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// Bytes held by `charge`'s open streams.
    #[cfg(test)]
    pub(crate) fn held(&self, charge: Charge) -> usize {
        self.held.get(&charge).copied().unwrap_or(0)
    }

    fn share(&self, charge: Charge) -> usize {
        match charge {
            Charge::Client(_) => self.settings.per_client,
            Charge::Peer(_) => self.settings.per_peer,
        }
    }

    /// Opens a stream's buffers, charged to `charge`: the largest size up to `want` that fits
    /// in the owner's share and in the node's free budget as [`Ledger::budget_slices`] divides
    /// it, or the minimum once either is used up. Returns the per-direction size and a socket
    /// with buffers of that size (a spare one, or a new one; spares of other sizes are given
    /// up when the budget needs their room). `None` when even the minimum does not fit in the
    /// budget.
    pub(crate) fn open(
        &mut self,
        charge: Charge,
        want: usize,
    ) -> Option<(usize, tcp::Socket<'static>)> {
        let held = self.held.get(&charge).copied().unwrap_or(0);
        let share = self.share(charge);
        let budget = self.settings.budget;
        let in_use = self.total - self.spare_bytes;
        let free = budget.saturating_sub(in_use);
        let slices = self.budget_slices();
        let min = self.settings.min;
        let size = self
            .settings
            .sizes()
            .filter(|&s| s <= want.max(min))
            .find(|&s| held + 2 * s <= share && 2 * s * slices <= free)
            .unwrap_or(min);
        if in_use + 2 * size > budget {
            return None;
        }
        let reused = self.spare.get_mut(&size).and_then(Vec::pop);
        if self.spare.get(&size).is_some_and(Vec::is_empty) {
            self.spare.remove(&size);
        }
        let socket = match reused {
            Some(spare) => {
                self.spare_bytes -= 2 * size;
                spare.socket
            }
            None => {
                while self.total + 2 * size > budget {
                    let Some(&largest) = self.spare.keys().max() else {
                        break;
                    };
                    self.drop_spare(largest);
                }
                self.total += 2 * size;
                tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0u8; size]),
                    tcp::SocketBuffer::new(vec![0u8; size]),
                )
            }
        };
        *self.held.entry(charge).or_insert(0) += 2 * size;
        Some((size, socket))
    }

    /// Into how many slices the free budget is cut: a new stream's buffers (both directions)
    /// take at most one slice of what is free when it opens. The budget holds `budget / 2` of
    /// full-size streams' buffers, so while at least half of it is free every stream gets
    /// `max`; below that a new stream's size halves each time the free budget halves, down
    /// to `min`, and streams at `min` fill the rest.
    ///
    /// Handing the budget out first come at full size instead (the largest size that fits)
    /// would refuse stream `budget / (2 * max) + 1` outright: 513 concurrent streams with the
    /// defaults, so a busy edge (a thousand clients at once, each with a small request)
    /// answered 503 while the streams holding the budget carried a few hundred bytes each.
    /// Sliced, the defaults admit about 2,000 concurrent streams, the first 257 at full size,
    /// and the memory bound stays the budget.
    fn budget_slices(&self) -> usize {
        (self.settings.budget / (4 * self.settings.max)).max(1)
    }

    fn drop_spare(&mut self, size: usize) {
        if let Some(list) = self.spare.get_mut(&size) {
            if list.pop().is_some() {
                self.spare_bytes -= 2 * size;
                self.total -= 2 * size;
            }
            if list.is_empty() {
                self.spare.remove(&size);
            }
        }
    }

    /// Moves a stream's charge from `from` to `to` (the edge hands a pooled connection to
    /// another client). No share is checked: the buffers already exist.
    pub(crate) fn transfer(&mut self, from: Charge, to: Charge, size: usize) {
        if from == to {
            return;
        }
        self.uncharge(from, size);
        *self.held.entry(to).or_insert(0) += 2 * size;
    }

    fn uncharge(&mut self, charge: Charge, size: usize) {
        if let Some(held) = self.held.get_mut(&charge) {
            *held = held.saturating_sub(2 * size);
            if *held == 0 {
                self.held.remove(&charge);
            }
        }
    }

    /// Ends a stream's charge. Its socket (if given, reusable and of the minimum size) is kept
    /// as a spare while the spare cap allows, or dropped: larger buffers go back to the
    /// allocator at once (see [`SPARE_BYTES`]).
    pub(crate) fn release(
        &mut self,
        charge: Charge,
        size: usize,
        socket: Option<tcp::Socket<'static>>,
        now: Instant,
    ) {
        self.uncharge(charge, size);
        let cap = SPARE_BYTES.min(self.settings.budget / 16);
        match socket {
            Some(mut socket)
                if size == self.settings.min
                    && self.spare_bytes + 2 * size <= cap
                    && matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait) =>
            {
                // Wakes stale wakers once (harmless) and clears buffers and sequence state.
                socket.abort();
                self.spare_bytes += 2 * size;
                self.spare
                    .entry(size)
                    .or_default()
                    .push(Spare { socket, since: now });
            }
            _ => self.total -= 2 * size,
        }
    }

    /// Drops spare sockets unused for [`SPARE_TTL`].
    pub(crate) fn expire_spares(&mut self, now: Instant) {
        let mut freed = 0;
        self.spare.retain(|size, list| {
            let before = list.len();
            list.retain(|s| now.saturating_duration_since(s.since) < SPARE_TTL);
            freed += (before - list.len()) * 2 * size;
            !list.is_empty()
        });
        self.spare_bytes -= freed;
        self.total -= freed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> WindowSettings {
        WindowSettings {
            max: 64 * 1024,
            min: 4 * 1024,
            budget: 1024 * 1024,
            per_client: 256 * 1024,
            per_peer: 512 * 1024,
        }
    }

    /// Opens and returns only the size (the socket is dropped: tests of the accounting).
    fn size(l: &mut Ledger, charge: Charge, want: usize) -> Option<usize> {
        l.open(charge, want).map(|(size, socket)| {
            assert_eq!(socket.recv_capacity(), size);
            assert_eq!(socket.send_capacity(), size);
            size
        })
    }

    #[test]
    fn a_client_gets_full_windows_until_its_share_then_the_minimum() {
        let mut l = Ledger::new(settings());
        let a = Charge::Client(1);
        // 256 KiB share: two streams at 2 x 64 KiB.
        assert_eq!(size(&mut l, a, 64 * 1024), Some(64 * 1024));
        assert_eq!(size(&mut l, a, 64 * 1024), Some(64 * 1024));
        assert_eq!(l.held(a), 256 * 1024);
        // Then the minimum, and it keeps getting it.
        assert_eq!(size(&mut l, a, 64 * 1024), Some(4 * 1024));
        assert_eq!(size(&mut l, a, 64 * 1024), Some(4 * 1024));
        // Another client is unaffected.
        assert_eq!(size(&mut l, Charge::Client(2), 64 * 1024), Some(64 * 1024));
        // A partly used share gives a smaller size that fits; a smaller want is honoured.
        let mut l = Ledger::new(settings());
        assert_eq!(size(&mut l, a, 64 * 1024), Some(64 * 1024));
        assert_eq!(size(&mut l, a, 16 * 1024), Some(16 * 1024));
        // 128 + 32 KiB held: 2 x 32 KiB fills the rest exactly.
        assert_eq!(size(&mut l, a, 64 * 1024), Some(32 * 1024));
        assert_eq!(l.held(a), 224 * 1024);
        assert_eq!(size(&mut l, a, 64 * 1024), Some(16 * 1024));
        assert_eq!(size(&mut l, a, 64 * 1024), Some(4 * 1024));
        assert_eq!(size(&mut l, Charge::Client(3), 5000), Some(4 * 1024));
    }

    /// Opens streams for distinct clients until the budget refuses one; returns the sizes.
    fn fill(l: &mut Ledger, first_client: u128) -> Vec<(u128, usize)> {
        let mut granted = Vec::new();
        let mut client = first_client;
        while let Some(size) = size(l, Charge::Client(client), 64 * 1024) {
            granted.push((client, size));
            client += 1;
            assert!(l.total() <= 1024 * 1024);
        }
        granted
    }

    #[test]
    fn the_budget_is_a_hard_bound_and_release_returns_memory() {
        let mut l = Ledger::new(settings());
        let now = Instant::now();
        let granted = fill(&mut l, 0);
        let sizes: Vec<usize> = granted.iter().map(|&(_, size)| size).collect();
        // 1 MiB budget: full size while at least half of it is free (five 2 x 64 KiB
        // streams), then each stream's size halves as the free budget halves, then the
        // minimum fills the rest: more than twice the eight streams that first-come full-size
        // windows would let in, and the budget is never exceeded.
        assert_eq!(sizes.iter().filter(|&&s| s == 64 * 1024).count(), 5);
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
        assert_eq!(sizes.last(), Some(&(4 * 1024)));
        assert!(sizes.len() >= 16, "{sizes:?}");
        assert!(l.total() <= 1024 * 1024 && l.total() + 2 * 4 * 1024 > 1024 * 1024);
        for (client, size) in granted {
            l.release(Charge::Client(client), size, None, now);
        }
        assert_eq!(l.total(), 0);
        assert_eq!(l.held(Charge::Client(0)), 0);
        // Freed, the budget hands out full-size windows again.
        assert_eq!(size(&mut l, Charge::Client(0), 64 * 1024), Some(64 * 1024));
    }

    #[test]
    fn the_default_budget_admits_two_thousand_concurrent_streams() {
        let mut l = Ledger::new(WindowSettings::default());
        let max = l.settings().max;
        let mut sizes = Vec::new();
        while let Some(size) = size(&mut l, Charge::Client(sizes.len() as u128), max) {
            sizes.push(size);
        }
        // A thousand clients with a request each all get a stream; the first 257 (while at
        // least half the budget is free) at full size.
        assert!(sizes.len() >= 2000, "{} streams", sizes.len());
        assert_eq!(sizes.iter().filter(|&&s| s == max).count(), 257);
        assert!(l.total() <= l.settings().budget);
    }

    #[test]
    fn spare_sockets_are_reused_capped_and_expire() {
        let mut l = Ledger::new(settings());
        let now = Instant::now();
        let c = Charge::Peer(7);
        let (size, socket) = l.open(c, 64 * 1024).unwrap();
        l.release(c, size, Some(socket), now);
        // Spares may hold a sixteenth of the 1 MiB budget: a 2 x 64 KiB socket is dropped.
        assert_eq!(l.total(), 0);
        let (small, socket) = l.open(c, 4 * 1024).unwrap();
        l.release(c, small, Some(socket), now);
        assert_eq!(l.total(), 8 * 1024);
        let (again, socket) = l.open(c, 4 * 1024).unwrap();
        assert_eq!(again, small);
        assert_eq!(socket.recv_capacity(), small);
        assert_eq!(l.total(), 8 * 1024);
        l.release(c, small, Some(socket), now);
        l.expire_spares(now + SPARE_TTL / 2);
        assert_eq!(l.total(), 8 * 1024);
        l.expire_spares(now + SPARE_TTL);
        assert_eq!(l.total(), 0);
    }

    #[test]
    fn only_minimum_size_sockets_are_kept_as_spares() {
        // A budget whose spare cap (a sixteenth: 4 MiB) would hold many full-size sockets.
        let mut l = Ledger::new(WindowSettings {
            budget: 64 * 1024 * 1024,
            ..settings()
        });
        let now = Instant::now();
        let c = Charge::Peer(3);
        let mut open = Vec::new();
        for want in [64 * 1024, 16 * 1024, 4 * 1024] {
            open.push(l.open(c, want).unwrap());
        }
        assert_eq!(l.total(), 2 * (64 + 16 + 4) * 1024);
        for (size, socket) in open {
            l.release(c, size, Some(socket), now);
        }
        // The 64 KiB and 16 KiB sockets' buffers are freed at once; the minimum-size one waits
        // for reuse.
        assert_eq!(l.total(), 2 * 4 * 1024);
        assert_eq!(l.spare_bytes, 2 * 4 * 1024);
        let (size, _socket) = l.open(c, 64 * 1024).unwrap();
        assert_eq!(size, 64 * 1024);
        assert_eq!(l.total(), 2 * (64 + 4) * 1024);
    }

    #[test]
    fn spares_give_way_to_new_streams_when_the_budget_is_full() {
        let mut l = Ledger::new(settings());
        let now = Instant::now();
        let (small, s) = l.open(Charge::Peer(1), 4 * 1024).unwrap();
        l.release(Charge::Peer(1), small, Some(s), now);
        assert_eq!(l.total(), 8 * 1024);
        // Spares do not count as used: the same streams fit as in an empty ledger, and the
        // spare's room is given up when the last of them needs it.
        let with_spare: Vec<usize> = fill(&mut l, 10).into_iter().map(|(_, s)| s).collect();
        let mut empty = Ledger::new(settings());
        let without: Vec<usize> = fill(&mut empty, 10).into_iter().map(|(_, s)| s).collect();
        assert_eq!(with_spare, without);
        assert_eq!(l.total(), empty.total());
        assert_eq!(l.spare_bytes, 0);
    }

    #[test]
    fn transfer_moves_a_charge_between_owners() {
        let mut l = Ledger::new(settings());
        let (a, b) = (Charge::Client(1), Charge::Peer(1));
        let s = size(&mut l, a, 64 * 1024).unwrap();
        l.transfer(a, b, s);
        assert_eq!(l.held(a), 0);
        assert_eq!(l.held(b), 128 * 1024);
        assert_eq!(l.total(), 128 * 1024);
    }
}
