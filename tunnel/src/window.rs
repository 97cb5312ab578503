//! How much memory the tunnel's stream buffers may hold ("window memory"), and who pays for it.
//!
//! A stream's TCP buffers are its window: smoltcp advertises the free space of the receive
//! buffer and keeps every unacknowledged byte in the send buffer, so a stream with `N`-byte
//! buffers can move `N / RTT` bytes per second, and a stream whose reader stalls holds up to
//! `2 × N` bytes on each node until it ends. Left unbounded, a client that opens thousands of
//! streams and never reads makes both nodes hold gigabytes (issue 16).
//!
//! smoltcp fixes a socket's buffers (and the window scale it announces) when the socket is
//! created; they cannot grow or shrink afterwards. And memory handed out is resident at once:
//! the nodes' allocator (mimalloc) serves the zeroed buffers from memory that is already
//! backed (measured: 1,000 zeroed 256 KiB buffers cost 256 MB of RSS before a byte was
//! written), so "a large buffer that is mostly empty" still costs its full size. What is
//! bounded is therefore the buffers' *size*, chosen when a stream opens:
//!
//! - [`WindowSettings::budget`]: every stream's buffers together, node-wide. It is handed out
//!   in slices of what is free: while at least half of it is free streams get full-size
//!   buffers, below that a new stream's size halves each time the free budget halves, down to
//!   [`WindowSettings::min`] (with the defaults: 257 streams at full size, about 2,000 before
//!   any is refused). So a busy node (a thousand clients with a request each) serves every
//!   stream with smaller windows instead of refusing the ones after the first 512. Beyond the
//!   budget no stream opens (the edge answers 503; the origin refuses the connection).
//! - A share per owner: the edge charges each stream to the client it serves
//!   ([`WindowSettings::per_client`]), the origin to the edge that opened it
//!   ([`WindowSettings::per_peer`]). A stream gets the largest buffer size (from
//!   [`WindowSettings::max`], halving down to [`WindowSettings::min`]) that fits in what its
//!   owner and the node have left; once the owner's share is used up its further streams get
//!   `min`. So a client that stalls hundreds of streams holds its share plus `2 × min` per
//!   stream, and every other client keeps full-size windows.
//! - The origin sizes an inbound stream's buffers from the receive buffer the edge announced in
//!   its SYN (window and window scale): a send buffer larger than what the receiver can ever
//!   accept holds data that cannot be in flight, so the edge's choice, made with the client in
//!   view, decides the origin's memory for that stream too.
//! - Memory comes back: a closed stream's buffers return to the owner and the node at once (a
//!   few sockets of the minimum size are kept for reuse for a short while; larger ones are
//!   freed), and the nodes return freed pages to the system at once (`node/src/alloc.rs`).

use std::time::Duration;

use kokoa_model::tunnel::{self as model, TunnelOptions, WindowLimits};
use kokoa_model::ModelError;

/// Default largest per-direction buffer of one stream: 256 KiB, sized for bulk transfers
/// (the model's `DEFAULT_TCP_BUFFER`).
pub const DEFAULT_MAX_WINDOW: usize = model::DEFAULT_TCP_BUFFER as usize;

/// Default smallest per-direction buffer: what a stream gets once its owner's share is used.
pub const DEFAULT_MIN_WINDOW: usize = model::DEFAULT_MIN_TCP_BUFFER as usize;

/// Default budget for every stream's buffers on a node (e.g. 256 bulk streams at full size,
/// or 32,768 streams at the minimum).
pub const DEFAULT_WINDOW_BUDGET: usize = model::DEFAULT_WINDOW_BUDGET as usize;

/// Default share of one client key at the edge.
pub const DEFAULT_WINDOW_PER_CLIENT: usize = model::DEFAULT_WINDOW_PER_CLIENT as usize;

/// Default share of one edge at the origin.
pub const DEFAULT_WINDOW_PER_PEER: usize = model::DEFAULT_WINDOW_PER_PEER as usize;

/// Default time a stream may fail to get any of its data acknowledged before it is reset
/// (as Nginx's `send_timeout`, 60 s).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(model::DEFAULT_STALL_TIMEOUT_SECS);

/// Bounds on stream buffer memory, in the units the tunnel works in. Built from the model's
/// [`WindowLimits`] ([`WindowSettings::from_options`]), whose one validator
/// ([`kokoa_model::tunnel::check_window`]) [`WindowSettings::validate`] also runs, so the
/// config file, control's snapshots and [`crate::Tunnel::bind`] accept the same values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowSettings {
    /// Largest per-direction buffer (and TCP window) of one stream, in bytes: what a stream
    /// gets while its owner and the node have memory to spare. Throughput per stream is at
    /// most `max / RTT`. TOML: `[tunnel] tcp_buffer`.
    pub max: usize,
    /// Smallest per-direction buffer: what a stream gets when its owner's share (or the
    /// node's budget, short of running out) leaves no room for more. TOML:
    /// `[tunnel] min_tcp_buffer`.
    pub min: usize,
    /// Node-wide bytes of stream buffers (both directions of every stream, plus sockets kept
    /// for reuse). A stream that does not fit even at `min` is refused. TOML:
    /// `[tunnel] window_budget`.
    pub budget: usize,
    /// Bytes of buffers one client key may hold through the streams opened for it (edge).
    /// TOML: `[tunnel] window_per_client`.
    pub per_client: usize,
    /// Bytes of buffers the streams one peer opened may hold (origin: per edge). TOML:
    /// `[tunnel] window_per_peer`.
    pub per_peer: usize,
}

impl Default for WindowSettings {
    fn default() -> Self {
        Self::from_options(&TunnelOptions::default())
    }
}

impl WindowSettings {
    /// The window bounds of the model's tunnel options (`tcp_buffer` and [`WindowLimits`]).
    pub fn from_options(options: &TunnelOptions) -> Self {
        let w = &options.window;
        let bytes = |b: u64| usize::try_from(b).unwrap_or(usize::MAX);
        WindowSettings {
            max: options.tcp_buffer.bytes(),
            min: w.min_tcp_buffer.bytes(),
            budget: bytes(w.budget.get()),
            per_client: bytes(w.per_client.get()),
            per_peer: bytes(w.per_peer.get()),
        }
    }

    /// Checks every bound with the model's validator: sizes within the model's
    /// `MIN_TCP_BUFFER..=MAX_TCP_BUFFER`, `min <= max`, and room in the budget and in each
    /// share for at least one stream at full size (both directions). Errors name the
    /// `[tunnel]` key.
    pub fn validate(&self) -> Result<(), ModelError> {
        model::check_window(
            self.max as u64,
            self.min as u64,
            self.budget as u64,
            self.per_client as u64,
            self.per_peer as u64,
        )
    }

    /// The buffer sizes a stream can get, largest first: `max`, then halving while above
    /// `min`, then `min`.
    pub fn sizes(&self) -> impl Iterator<Item = usize> + '_ {
        let min = self.min;
        std::iter::successors(Some(self.max), move |&s| {
            if s <= min {
                None
            } else {
                Some((s / 2).max(min))
            }
        })
    }

    /// The largest size of [`WindowSettings::sizes`] that is at most `limit` (`min` when even
    /// `min` is larger).
    pub fn size_at_most(&self, limit: usize) -> usize {
        self.sizes().find(|&s| s <= limit).unwrap_or(self.min)
    }
}

/// The stall timeout of the model's [`WindowLimits`] (`0`: never).
pub fn stall_timeout(limits: &WindowLimits) -> Option<Duration> {
    match limits.stall_timeout.get() {
        0 => None,
        secs => Some(Duration::from_secs(secs)),
    }
}

/// The receive buffer a TCP SYN (or SYN-ACK) announces: its window scaled by the window-scale
/// option. A scale `s > 0` means the sender's buffer is at least `2^(15 + s)` bytes (smoltcp
/// and Linux pick the smallest scale that fits their buffer), so that lower bound is used;
/// without scaling the window itself is the buffer. `None` if `tcp` is not a SYN.
pub fn announced_receive_buffer(tcp: &[u8]) -> Option<usize> {
    if tcp.len() < 20 || tcp[13] & 0x02 == 0 {
        return None;
    }
    let window = usize::from(u16::from_be_bytes([tcp[14], tcp[15]]));
    let header = (usize::from(tcp[12] >> 4) * 4).min(tcp.len());
    let mut options = &tcp[20.min(header)..header];
    let mut scale = None;
    while let Some((&kind, rest)) = options.split_first() {
        match kind {
            0 => break,
            1 => options = rest,
            _ => {
                let Some(&len) = rest.first() else { break };
                let len = usize::from(len);
                if len < 2 || len > options.len() {
                    break;
                }
                if kind == 3 && len == 3 {
                    scale = Some(options[2].min(14));
                }
                options = &options[len..];
            }
        }
    }
    Some(match scale {
        Some(s) if s > 0 => 1usize << (15 + u32::from(s)),
        _ => window,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_sizes_halve_down_to_min() {
        let s = WindowSettings::default();
        s.validate().unwrap();
        let sizes: Vec<usize> = s.sizes().collect();
        assert_eq!(sizes, vec![262144, 131072, 65536, 32768, 16384, 8192, 4096]);
        assert_eq!(s.size_at_most(100_000), 65536);
        assert_eq!(s.size_at_most(1 << 30), 262144);
        assert_eq!(s.size_at_most(10), 4096);
        // A max that is not a power of two keeps its own value on top.
        let odd = WindowSettings {
            max: 100_000,
            min: 10_000,
            ..WindowSettings::default()
        };
        assert_eq!(
            odd.sizes().collect::<Vec<_>>(),
            vec![100_000, 50_000, 25_000, 12_500, 10_000]
        );
    }

    #[test]
    fn invalid_settings_name_their_field() {
        let bad = |s: WindowSettings| s.validate().unwrap_err().field;
        let d = WindowSettings::default;
        assert_eq!(bad(WindowSettings { max: 1000, ..d() }), "tcp_buffer");
        assert_eq!(
            bad(WindowSettings {
                min: 512 * 1024,
                ..d()
            }),
            "min_tcp_buffer"
        );
        assert_eq!(
            bad(WindowSettings {
                budget: 100_000,
                ..d()
            }),
            "window_budget"
        );
        assert_eq!(
            bad(WindowSettings {
                per_client: 1 << 30,
                ..d()
            }),
            "window_per_client"
        );
        assert_eq!(
            bad(WindowSettings {
                per_peer: 1000,
                ..d()
            }),
            "window_per_peer"
        );
    }

    #[test]
    fn the_model_options_become_settings() {
        assert_eq!(
            WindowSettings::from_options(&TunnelOptions::default()),
            WindowSettings {
                max: DEFAULT_MAX_WINDOW,
                min: DEFAULT_MIN_WINDOW,
                budget: DEFAULT_WINDOW_BUDGET,
                per_client: DEFAULT_WINDOW_PER_CLIENT,
                per_peer: DEFAULT_WINDOW_PER_PEER,
            }
        );
        let limits = WindowLimits::default();
        assert_eq!(stall_timeout(&limits), Some(DEFAULT_STALL_TIMEOUT));
        let never = WindowLimits {
            stall_timeout: model::StallSecs::new(0).unwrap(),
            ..limits
        };
        assert_eq!(stall_timeout(&never), None);
    }

    /// A TCP header with `flags`, `window` and the given option bytes.
    fn tcp(flags: u8, window: u16, options: &[u8]) -> Vec<u8> {
        let len = 20 + options.len().div_ceil(4) * 4;
        let mut t = vec![0u8; len];
        t[12] = ((len / 4) as u8) << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&window.to_be_bytes());
        t[20..20 + options.len()].copy_from_slice(options);
        t
    }

    #[test]
    fn the_syn_announces_the_receive_buffer() {
        // smoltcp with a 4 KiB buffer: window 4096, scale 0.
        assert_eq!(
            announced_receive_buffer(&tcp(0x02, 4096, &[2, 4, 5, 100, 3, 3, 0])),
            Some(4096)
        );
        // smoltcp with 256 KiB: window 65535, scale 3 -> at least 2^18.
        assert_eq!(
            announced_receive_buffer(&tcp(0x02, 65535, &[2, 4, 5, 100, 1, 3, 3, 3])),
            Some(262_144)
        );
        // Linux: MSS, SACK permitted, timestamps, NOP, window scale 7.
        let linux = [
            2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        assert_eq!(
            announced_receive_buffer(&tcp(0x02, 64240, &linux)),
            Some(1 << 22)
        );
        // No options: the window.
        assert_eq!(announced_receive_buffer(&tcp(0x12, 8192, &[])), Some(8192));
        // Not a SYN; truncated or malformed options end the scan.
        assert_eq!(announced_receive_buffer(&tcp(0x10, 8192, &[])), None);
        assert_eq!(
            announced_receive_buffer(&tcp(0x02, 1000, &[3, 0, 9])),
            Some(1000)
        );
        assert_eq!(announced_receive_buffer(&[0u8; 10]), None);
    }
}
