//! Tunnel peers: an origin as an edge sees it ([`OriginPeer`], a `[[origins]]` entry) and an
//! edge as an origin sees it ([`EdgePeer`], an `[[edges]]` entry).
//!
//! On the wire (`kokoa.v1`) the first is an `EdgePeer` message (a peer inside an
//! `EdgeSnapshot`) and the second an `OriginPeer` message: the proto names the snapshot a peer
//! sits in, the model names what the peer is.

use std::fmt;
use std::num::NonZeroU16;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ModelError, ObjectKind, ObjectRef};
use crate::key::PublicKey;
use crate::name::Name;
use crate::net::{Endpoint, TunnelIp};

/// Persistent keepalive an origin sends its edges by default (seconds): keeps the NAT mapping
/// of an origin behind NAT open so its edges can reach it.
pub const DEFAULT_ORIGIN_KEEPALIVE: u16 = 25;

/// A persistent keepalive interval in seconds, or off (`0`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Keepalive(Option<NonZeroU16>);

impl Keepalive {
    /// No keepalive.
    pub const OFF: Keepalive = Keepalive(None);

    /// `seconds` (0 = off, at most 65535).
    pub fn new(seconds: impl Into<i128>) -> Result<Self, ModelError> {
        let seconds = seconds.into();
        u16::try_from(seconds)
            .map(|s| Self(NonZeroU16::new(s)))
            .map_err(|_| {
                ModelError::value(format!(
                    "{seconds} is not a keepalive: use 0 (off) to 65535 seconds, typically 25"
                ))
            })
    }

    /// The interval in seconds, `None` when off.
    pub fn seconds(self) -> Option<u16> {
        self.0.map(NonZeroU16::get)
    }

    /// The interval in seconds, 0 when off.
    pub fn get(self) -> u16 {
        self.seconds().unwrap_or(0)
    }
}

impl fmt::Display for Keepalive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

impl Serialize for Keepalive {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u16(self.get())
    }
}

impl<'de> Deserialize<'de> for Keepalive {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let seconds = crate::number::integer(d, "a keepalive in seconds (0 = off)")?;
        Keepalive::new(seconds).map_err(|e| de::Error::custom(e.message))
    }
}

fn origin_keepalive() -> Keepalive {
    Keepalive(NonZeroU16::new(DEFAULT_ORIGIN_KEEPALIVE))
}

/// An origin as one of an edge's tunnel peers (`[[origins]]` in `edge.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginPeer {
    /// The origin's name; routes refer to it.
    pub name: Name,
    /// The origin's WireGuard public key.
    pub public_key: PublicKey,
    /// Where to send the first handshake; `None`: the origin dials in (behind NAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// The edge's own netstack address toward this origin (`10.100.X.10`-`.254`).
    pub address: TunnelIp,
    /// The origin's address (`10.100.X.1`): its only allowed IP and where streams go.
    pub origin_address: TunnelIp,
    /// Persistent keepalive toward the origin (default off: the origin keeps the path open).
    #[serde(default)]
    pub keepalive: Keepalive,
}

impl OriginPeer {
    /// The object errors about this peer name.
    pub fn object(&self) -> ObjectRef {
        ObjectRef::new(ObjectKind::Origin, self.name.as_str())
    }

    /// The rules about this peer alone: its two addresses differ and share a /24 (the
    /// origin's).
    pub fn check(&self) -> Result<(), ModelError> {
        if self.address == self.origin_address {
            return Err(ModelError::new(
                "origin_address",
                format!(
                    "{} is also `address` (the edge's own address); the origin is 10.100.X.1, the edge 10.100.X.10 or above",
                    self.origin_address
                ),
            ));
        }
        if !self.address.same_subnet(self.origin_address) {
            return Err(ModelError::new(
                "origin_address",
                format!(
                    "{} is outside the /24 of the edge's address {}: both must be in the origin's /24 (10.100.X.1 and 10.100.X.10+)",
                    self.origin_address, self.address
                ),
            ));
        }
        Ok(())
    }
}

/// An edge as one of an origin's tunnel peers (`[[edges]]` in `origin.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgePeer {
    /// The edge's name, for logs and metrics.
    pub name: Name,
    /// The edge's WireGuard public key.
    pub public_key: PublicKey,
    /// The edge's UDP endpoint (`host:port`, resolved when used); `None`: wait for the edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Endpoint>,
    /// The edge's address inside the tunnel: the only inner source address accepted from it.
    pub address: TunnelIp,
    /// Persistent keepalive toward the edge (default 25 s; 0 = off).
    #[serde(default = "origin_keepalive")]
    pub keepalive: Keepalive,
}

impl EdgePeer {
    /// The object errors about this peer name.
    pub fn object(&self) -> ObjectRef {
        ObjectRef::new(ObjectKind::Edge, self.name.as_str())
    }
}

/// The keepalive an origin uses when its config does not say.
pub fn default_origin_keepalive() -> Keepalive {
    origin_keepalive()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::PrivateKey;
    use crate::serde_util::from_toml;

    fn origin_toml(extra: &str) -> String {
        format!(
            "name = \"home\"\npublic_key = \"{}\"\naddress = \"10.100.1.10\"\norigin_address = \"10.100.1.1\"\n{extra}",
            PrivateKey::generate().public_key()
        )
    }

    #[test]
    fn origin_peer_rules() {
        let peer: OriginPeer = from_toml(&origin_toml("")).unwrap();
        assert_eq!(peer.keepalive, Keepalive::OFF);
        peer.check().unwrap();
        let same = OriginPeer {
            origin_address: peer.address,
            ..peer.clone()
        };
        assert!(same.check().unwrap_err().message.contains("also `address`"));
        let far = OriginPeer {
            origin_address: TunnelIp::parse("10.100.2.1").unwrap(),
            ..peer
        };
        let error = far.check().unwrap_err();
        assert_eq!(error.field, "origin_address");
        assert!(error.message.contains("outside the /24"), "{error}");
        for (extra, field) in [
            ("keepalive = 70000", "keepalive"),
            ("endpoint = \"nope\"", "endpoint"),
            ("bogus = 1", "bogus"),
        ] {
            let error = from_toml::<OriginPeer>(&origin_toml(extra)).unwrap_err();
            assert_eq!(error.field, field, "{extra}: {error}");
        }
        let error =
            from_toml::<OriginPeer>(&origin_toml("").replace("home", "home.lab")).unwrap_err();
        assert_eq!(error.field, "name");
    }

    #[test]
    fn edge_peer_keepalive_defaults_to_25() {
        let text = format!(
            "name = \"vps1\"\npublic_key = \"{}\"\naddress = \"10.100.1.10\"\nendpoint = \"edge.example.com:51820\"",
            PrivateKey::generate().public_key()
        );
        let peer: EdgePeer = from_toml(&text).unwrap();
        assert_eq!(peer.keepalive.seconds(), Some(25));
        assert_eq!(peer.endpoint.unwrap().to_string(), "edge.example.com:51820");
        let peer: EdgePeer = from_toml(&format!("{text}\nkeepalive = 0")).unwrap();
        assert_eq!(peer.keepalive.seconds(), None);
    }
}
