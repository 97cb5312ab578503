//! The tunnel settings control may set for a node: inner MTU, per-stream TCP buffer, the
//! overlay range and the bounds on stream buffer memory ([`TunnelOptions`], [`WindowLimits`]).
//! The node's own key and UDP socket are the tunnel crate's business
//! (`kokoa_tunnel::settings`); what the window bounds mean at run time is described in
//! `kokoa_tunnel::window`.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ModelError;
use crate::net::Overlay;
use crate::number::Bounded;

/// Smallest inner MTU: IPv4's minimum reassembly size, below which TCP cannot work sensibly.
pub const MIN_MTU: u16 = 576;
/// Largest inner MTU WireGuard over UDP can carry: one UDP datagram over IPv4 holds at most
/// 65535 − 20 (IPv4 header) − 8 (UDP header) = 65507 bytes, and WireGuard adds 32 (a 16-byte
/// data header and the 16-byte Poly1305 tag) to each inner packet. A larger inner packet
/// cannot be sent at all, on any path. (What a path carries without fragmentation is usually
/// far less: 1420 for a 1500-byte path, 1280 when unsure.)
pub const MAX_MTU: u16 = 65535 - 20 - 8 - 32;
/// Default inner MTU: a 1500-byte path minus the outer IPv6 (40), UDP (8) and WireGuard (32)
/// headers, as wg-quick uses.
pub const DEFAULT_MTU: u16 = 1420;
/// Smallest per-direction TCP buffer per tunnel stream.
pub const MIN_TCP_BUFFER: u32 = 4096;
/// Largest per-direction TCP buffer per tunnel stream.
pub const MAX_TCP_BUFFER: u32 = 64 * 1024 * 1024;
/// Default per-direction TCP buffer per tunnel stream. It is also the TCP window (smoltcp has
/// no autotuning), so one stream moves at most this many bytes per round trip.
pub const DEFAULT_TCP_BUFFER: u32 = 256 * 1024;

/// Default smallest per-direction buffer of a stream (`min_tcp_buffer`): what a stream gets
/// once its owner's share is used up. Three full segments at MTU 1420: slow, but it moves.
pub const DEFAULT_MIN_TCP_BUFFER: u32 = 4096;
/// Default node-wide budget of stream buffer memory (`window_budget`): 256 MiB.
pub const DEFAULT_WINDOW_BUDGET: u64 = 256 * 1024 * 1024;
/// Default share of one client key at the edge (`window_per_client`).
pub const DEFAULT_WINDOW_PER_CLIENT: u64 = 16 * 1024 * 1024;
/// Default share of one edge at the origin (`window_per_peer`): three quarters of the default
/// budget, so that one edge (or a stock WireGuard peer announcing huge windows) cannot take
/// every buffer from the others.
pub const DEFAULT_WINDOW_PER_PEER: u64 = 192 * 1024 * 1024;
/// Default stall timeout (`stall_timeout`, seconds): a stream none of whose data is
/// acknowledged for this long is reset (as Nginx's `send_timeout`).
pub const DEFAULT_STALL_TIMEOUT_SECS: u64 = 60;

/// Bytes of stream buffers: the node's budget or one owner's share (8 KiB to 1 TiB).
pub type WindowBytes = Bounded<8_192, 1_099_511_627_776>;
/// Seconds without progress before a stream is reset; 0: never (at most a day).
pub type StallSecs = Bounded<0, 86_400>;

/// The inner MTU of the tunnel, [`MIN_MTU`] to [`MAX_MTU`]; the TCP MSS follows (MTU − 40).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mtu(u16);

impl Mtu {
    /// Validates `mtu`.
    pub fn new(mtu: impl Into<i128>) -> Result<Self, ModelError> {
        let mtu = mtu.into();
        match u16::try_from(mtu) {
            Ok(m) if (MIN_MTU..=MAX_MTU).contains(&m) => Ok(Self(m)),
            _ if mtu > i128::from(MAX_MTU) => Err(ModelError::value(format!(
                "{mtu} is above {MAX_MTU}, the largest packet WireGuard over UDP can carry; use 1420 for a 1500-byte path (1280 if unsure)"
            ))),
            _ => Err(ModelError::value(format!(
                "{mtu} is below {MIN_MTU}; use 1420 (or 1280 on unknown paths)"
            ))),
        }
    }

    /// The MTU in bytes.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl Default for Mtu {
    fn default() -> Self {
        Self(DEFAULT_MTU)
    }
}

impl fmt::Display for Mtu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The per-direction TCP buffer of each tunnel stream, [`MIN_TCP_BUFFER`] to
/// [`MAX_TCP_BUFFER`] bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpBuffer(u32);

impl TcpBuffer {
    /// Validates `bytes`.
    pub fn new(bytes: impl Into<i128>) -> Result<Self, ModelError> {
        let bytes = bytes.into();
        match u32::try_from(bytes) {
            Ok(b) if (MIN_TCP_BUFFER..=MAX_TCP_BUFFER).contains(&b) => Ok(Self(b)),
            _ => Err(ModelError::value(format!(
                "{bytes} bytes is outside {MIN_TCP_BUFFER}..={MAX_TCP_BUFFER}; the default is {DEFAULT_TCP_BUFFER}"
            ))),
        }
    }

    /// The buffer size in bytes.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The buffer size as a `usize`.
    pub fn bytes(self) -> usize {
        self.0 as usize
    }
}

impl Default for TcpBuffer {
    fn default() -> Self {
        Self(DEFAULT_TCP_BUFFER)
    }
}

impl fmt::Display for TcpBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

macro_rules! integer_serde {
    ($type:ty, $expecting:literal) => {
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_u64(u64::from(self.get()))
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let value = crate::number::integer(d, $expecting)?;
                <$type>::new(value).map_err(|e| de::Error::custom(e.message))
            }
        }
    };
}
integer_serde!(Mtu, "an MTU in bytes");
integer_serde!(TcpBuffer, "a buffer size in bytes");

/// The tunnel settings a node may get from control (or its `[tunnel]` table). Check a value
/// built from input with [`TunnelOptions::validate`] (the window bounds depend on each other).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TunnelOptions {
    /// Inner MTU.
    pub mtu: Mtu,
    /// Largest per-direction TCP buffer (and window) of one stream.
    pub tcp_buffer: TcpBuffer,
    /// The range tunnel addresses must come from.
    pub overlay: Overlay,
    /// Bounds on stream buffer memory.
    pub window: WindowLimits,
}

impl TunnelOptions {
    /// Checks what the single values cannot check alone: the window bounds against
    /// `tcp_buffer` ([`check_window`]).
    pub fn validate(&self) -> Result<(), ModelError> {
        let w = &self.window;
        check_window(
            self.tcp_buffer.bytes() as u64,
            u64::from(w.min_tcp_buffer.get()),
            w.budget.get(),
            w.per_client.get(),
            w.per_peer.get(),
        )
    }
}

/// How much memory stream buffers may hold, node-wide and per owner, and how long a stream may
/// make no progress (`[tunnel] min_tcp_buffer`, `window_budget`, `window_per_client`,
/// `window_per_peer`, `stall_timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WindowLimits {
    /// Smallest per-direction buffer of a stream.
    pub min_tcp_buffer: TcpBuffer,
    /// Node-wide bytes of stream buffers (both directions of every stream).
    pub budget: WindowBytes,
    /// Share of one client key (edge).
    pub per_client: WindowBytes,
    /// Share of one peer (origin: per edge).
    pub per_peer: WindowBytes,
    /// Seconds a stream may get none of its data acknowledged before it is reset; 0: never.
    pub stall_timeout: StallSecs,
}

impl Default for WindowLimits {
    fn default() -> Self {
        Self {
            min_tcp_buffer: TcpBuffer(DEFAULT_MIN_TCP_BUFFER),
            budget: WindowBytes::saturating(DEFAULT_WINDOW_BUDGET),
            per_client: WindowBytes::saturating(DEFAULT_WINDOW_PER_CLIENT),
            per_peer: WindowBytes::saturating(DEFAULT_WINDOW_PER_PEER),
            stall_timeout: StallSecs::saturating(DEFAULT_STALL_TIMEOUT_SECS),
        }
    }
}

impl WindowLimits {
    /// The limits with the values given and the defaults for the rest; a share left unset is
    /// capped at the budget, so that lowering only the budget stays valid.
    pub fn with(
        min_tcp_buffer: Option<TcpBuffer>,
        budget: Option<WindowBytes>,
        per_client: Option<WindowBytes>,
        per_peer: Option<WindowBytes>,
        stall_timeout: Option<StallSecs>,
    ) -> Self {
        let d = Self::default();
        let budget = budget.unwrap_or(d.budget);
        Self {
            min_tcp_buffer: min_tcp_buffer.unwrap_or(d.min_tcp_buffer),
            budget,
            per_client: per_client.unwrap_or(d.per_client.min(budget)),
            per_peer: per_peer.unwrap_or(d.per_peer.min(budget)),
            stall_timeout: stall_timeout.unwrap_or(d.stall_timeout),
        }
    }
}

/// The one check of the window bounds, in bytes, for the model and for the tunnel crate's own
/// settings: `min <= max`, room in the budget and in each share for one stream at full size
/// (both directions), and no share above the budget. Errors name the `[tunnel]` key.
pub fn check_window(
    max: u64,
    min: u64,
    budget: u64,
    per_client: u64,
    per_peer: u64,
) -> Result<(), ModelError> {
    let range = u64::from(MIN_TCP_BUFFER)..=u64::from(MAX_TCP_BUFFER);
    if !range.contains(&max) {
        return Err(ModelError::new(
            "tcp_buffer",
            format!("{max} bytes is outside {MIN_TCP_BUFFER}..={MAX_TCP_BUFFER}"),
        ));
    }
    if !range.contains(&min) || min > max {
        return Err(ModelError::new(
            "min_tcp_buffer",
            format!("{min} bytes is outside {MIN_TCP_BUFFER}..=tcp_buffer ({max})"),
        ));
    }
    let stream = 2 * max;
    for (field, value) in [
        ("window_budget", budget),
        ("window_per_client", per_client),
        ("window_per_peer", per_peer),
    ] {
        if value < stream {
            return Err(ModelError::new(
                field,
                format!("{value} bytes cannot hold one stream at full size (2 x tcp_buffer = {stream}); raise it or lower tcp_buffer"),
            ));
        }
        if value > budget {
            return Err(ModelError::new(
                field,
                format!("a share cannot exceed the node's window_budget ({budget} bytes)"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mtu_bounds() {
        assert_eq!(MAX_MTU, 65475);
        assert_eq!(Mtu::new(1420).unwrap().get(), 1420);
        assert_eq!(Mtu::new(MAX_MTU).unwrap().get(), MAX_MTU);
        let message = Mtu::new(i128::from(MAX_MTU) + 1).unwrap_err().message;
        assert!(
            message.contains("largest packet WireGuard over UDP"),
            "{message}"
        );
        assert!(Mtu::new(575).unwrap_err().message.contains("below 576"));
        assert!(Mtu::new(-1).is_err());
    }

    #[test]
    fn window_limits_check_each_other() {
        let options = TunnelOptions::default();
        options.validate().unwrap();
        let field = |f: &dyn Fn(&mut TunnelOptions)| {
            let mut o = TunnelOptions::default();
            f(&mut o);
            o.validate().unwrap_err().field
        };
        assert_eq!(
            field(&|o| o.window.min_tcp_buffer = TcpBuffer::new(512 * 1024).unwrap()),
            "min_tcp_buffer"
        );
        assert_eq!(
            field(&|o| o.window.budget = WindowBytes::new(100_000).unwrap()),
            "window_budget"
        );
        assert_eq!(
            field(&|o| o.window.per_client = WindowBytes::new(1u64 << 30).unwrap()),
            "window_per_client"
        );
        assert_eq!(
            field(&|o| o.window.per_peer = WindowBytes::new(500_000).unwrap()),
            "window_per_peer"
        );
        // A large tcp_buffer needs room in the default shares too.
        assert_eq!(
            field(&|o| o.tcp_buffer = TcpBuffer::new(MAX_TCP_BUFFER).unwrap()),
            "window_per_client"
        );
        // Lowering only the budget caps the shares that were not set.
        let w = WindowLimits::with(
            None,
            Some(WindowBytes::new(8 << 20).unwrap()),
            None,
            None,
            None,
        );
        assert_eq!((w.per_client.get(), w.per_peer.get()), (8 << 20, 8 << 20));
        TunnelOptions {
            window: w,
            ..TunnelOptions::default()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn tcp_buffer_bounds() {
        assert_eq!(TcpBuffer::default().get(), 262_144);
        assert!(TcpBuffer::new(4095).is_err());
        assert!(TcpBuffer::new(64 * 1024 * 1024 + 1).is_err());
        #[derive(Debug, Deserialize)]
        struct Doc {
            #[allow(dead_code)]
            mtu: Mtu,
        }
        let error = toml::from_str::<Doc>("mtu = 70000")
            .unwrap_err()
            .to_string();
        assert!(error.contains("above 65475"), "{error}");
        let error = toml::from_str::<Doc>("mtu = \"big\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("an MTU in bytes"), "{error}");
    }
}
