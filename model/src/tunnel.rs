//! The tunnel settings control may set for a node: inner MTU, per-stream TCP buffer and the
//! overlay range ([`TunnelOptions`]). The node's own key and UDP socket are the tunnel crate's
//! business (`kokoa_tunnel::settings`).

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ModelError;
use crate::net::Overlay;

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

/// The tunnel settings a node may get from control (or its `[tunnel]` table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TunnelOptions {
    /// Inner MTU.
    pub mtu: Mtu,
    /// Per-direction TCP buffer per stream.
    pub tcp_buffer: TcpBuffer,
    /// The range tunnel addresses must come from.
    pub overlay: Overlay,
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
