//! WireGuard keys (Curve25519 / x25519) in the standard base64 form that `wg genkey` and
//! `wg pubkey` print, so Kokoa configs interoperate with stock WireGuard tooling.
//!
//! They live in the model (not in the tunnel) so that control, which stores and hands out keys,
//! needs no data-plane crate for them; `kokoa_tunnel::key` re-exports this module.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use x25519_dalek as x25519;

/// Why a key string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// The string is not valid standard base64.
    #[error(
        "key is not valid base64 (expected 44 characters as printed by `wg genkey`/`wg pubkey`)"
    )]
    Base64,
    /// The decoded key does not have 32 bytes.
    #[error("key decodes to {0} bytes, a WireGuard key has 32 (44 base64 characters)")]
    Length(usize),
}

fn decode32(s: &str) -> Result<[u8; 32], KeyError> {
    let s = s.trim();
    let bytes = STANDARD.decode(s).map_err(|_| KeyError::Base64)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length(bytes.len()))
}

/// A node's static private key. `Debug` never prints the secret.
#[derive(Clone)]
pub struct PrivateKey(x25519::StaticSecret);

impl PrivateKey {
    /// A fresh random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        PrivateKey(x25519::StaticSecret::random_from_rng(rand::rngs::OsRng))
    }

    /// Parses a standard WireGuard base64 private key (44 characters).
    ///
    /// The key is used as x25519 does: clamped at use, so any 32 bytes are accepted, exactly
    /// like `wg pubkey`.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        Ok(PrivateKey(x25519::StaticSecret::from(decode32(s)?)))
    }

    /// The key in standard base64, as `wg genkey` prints it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.to_bytes())
    }

    /// The matching public key (what `wg pubkey` prints for this key).
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.0).to_bytes())
    }

    /// The x25519 secret itself, for the tunnel's WireGuard state. Never log or persist it
    /// other than through [`PrivateKey::to_base64`] into a 0600 file.
    pub fn secret(&self) -> &x25519::StaticSecret {
        &self.0
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(<secret>, public={:?})", self.public_key())
    }
}

impl FromStr for PrivateKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::from_base64(s)
    }
}

/// A peer's static public key: 32 bytes, shown in standard base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses a standard WireGuard base64 public key (44 characters).
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        Ok(PublicKey(decode32(s)?))
    }

    /// The key in standard base64, as `wg pubkey` prints it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.to_base64();
        write!(f, "PublicKey({}…)", &s[..8])
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::from_base64(s)
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        PublicKey::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for PrivateKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for PrivateKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        PrivateKey::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7748 §6.1 Alice; `echo dwdt… | wg pubkey` prints the public key below.
    const PRIV: &str = "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=";
    const PUB: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

    #[test]
    fn known_vector_matches_wg_pubkey() {
        let k = PrivateKey::from_base64(PRIV).unwrap();
        assert_eq!(k.public_key().to_base64(), PUB);
        assert_eq!(k.to_base64(), PRIV);
    }

    #[test]
    fn unclamped_input_is_clamped_like_wg() {
        // Flip the bits x25519 clamps away: the public key must not change.
        let mut raw = decode32(PRIV).unwrap();
        raw[0] |= 7;
        raw[31] |= 0x80;
        let k = PrivateKey::from_base64(&STANDARD.encode(raw)).unwrap();
        assert_eq!(k.public_key().to_base64(), PUB);
    }

    #[test]
    fn round_trips() {
        let k = PrivateKey::generate();
        let back: PrivateKey = k.to_base64().parse().unwrap();
        assert_eq!(back.public_key(), k.public_key());
        let p = k.public_key();
        assert_eq!(p.to_string().parse::<PublicKey>().unwrap(), p);
        assert_eq!(p.to_base64().len(), 44);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(PublicKey::from_base64("not base64!"), Err(KeyError::Base64));
        assert_eq!(PublicKey::from_base64("AAAA"), Err(KeyError::Length(3)));
        assert!(matches!(
            PrivateKey::from_base64(&STANDARD.encode([0u8; 31])),
            Err(KeyError::Length(31))
        ));
    }

    #[test]
    fn debug_hides_secret() {
        let k = PrivateKey::from_base64(PRIV).unwrap();
        let s = format!("{k:?}");
        assert!(!s.contains(&PRIV[..10]), "{s}");
    }

    #[test]
    fn serde_as_base64_string() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct W {
            k: PublicKey,
        }
        let p = PrivateKey::from_base64(PRIV).unwrap().public_key();
        let v = W { k: p };
        let s = toml::to_string(&v).unwrap();
        assert!(s.contains(PUB));
        let back: W = toml::from_str(&s).unwrap();
        assert_eq!(back.k, p);
    }
}
