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
    /// in the owner's share and the node's budget, or the minimum once the share is used up.
    /// Returns the per-direction size and a socket with buffers of that size (a spare one, or
    /// a new one; spares of other sizes are given up when the budget needs their room).
    /// `None` when even the minimum does not fit in the budget.
    pub(crate) fn open(
        &mut self,
        charge: Charge,
        want: usize,
    ) -> Option<(usize, tcp::Socket<'static>)> {
        let held = self.held.get(&charge).copied().unwrap_or(0);
        let share = self.share(charge);
        let budget = self.settings.budget;
        let in_use = self.total - self.spare_bytes;
        let min = self.settings.min;
        let size = self
            .settings
            .sizes()
            .filter(|&s| s <= want.max(min))
            .find(|&s| held + 2 * s <= share && in_use + 2 * s <= budget)
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

    /// Ends a stream's charge. Its socket (if given and reusable) is kept as a spare while the
    /// spare cap allows, or dropped.
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
                if self.spare_bytes + 2 * size <= cap
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

    #[test]
    fn the_budget_is_a_hard_bound_and_release_returns_memory() {
        let mut l = Ledger::new(settings());
        let now = Instant::now();
        let mut granted = Vec::new();
        let mut clients = 0u128;
        while let Some(size) = size(&mut l, Charge::Client(clients), 64 * 1024) {
            granted.push((clients, size));
            clients += 1;
            assert!(l.total() <= 1024 * 1024);
        }
        // 1 MiB budget: eight full streams, then nothing fits, not even the minimum.
        assert_eq!(granted.len(), 8);
        assert_eq!(l.total(), 1024 * 1024);
        for (client, size) in granted {
            l.release(Charge::Client(client), size, None, now);
        }
        assert_eq!(l.total(), 0);
        assert_eq!(l.held(Charge::Client(0)), 0);
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
    fn spares_give_way_to_new_streams_when_the_budget_is_full() {
        let mut l = Ledger::new(WindowSettings {
            budget: 512 * 1024,
            per_peer: 512 * 1024,
            ..settings()
        });
        let now = Instant::now();
        let (small, s) = l.open(Charge::Client(1), 4 * 1024).unwrap();
        l.release(Charge::Client(1), small, Some(s), now);
        assert_eq!(l.total(), 8 * 1024);
        for i in 0..3 {
            assert_eq!(
                size(&mut l, Charge::Client(10 + i), 64 * 1024),
                Some(64 * 1024)
            );
        }
        // 3 x 128 KiB + the 8 KiB spare: the fourth full stream fits only without the spare.
        assert_eq!(size(&mut l, Charge::Client(20), 64 * 1024), Some(64 * 1024));
        assert_eq!(l.total(), 512 * 1024);
        assert_eq!(size(&mut l, Charge::Client(21), 4 * 1024), None);
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
