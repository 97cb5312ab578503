//! Bearer secrets: generation and hashing. Only the SHA-256 of a secret is ever stored; the
//! plaintext is returned once, at creation.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// A secret handed to its holder exactly once. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// The plaintext, to give to the node or operator.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|s| Secret(Zeroizing::new(s)))
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(Zeroizing::new(s))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A new random secret: `kokoa_<kind>_` and 256 random bits in URL-safe base64. The prefix tells
/// a leaked secret's kind at a glance (and lets secret scanners find it).
pub(crate) fn generate(kind: &str) -> Secret {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(&mut *bytes);
    Secret(Zeroizing::new(format!(
        "kokoa_{kind}_{}",
        URL_SAFE_NO_PAD.encode(*bytes)
    )))
}

/// Lower-case hex SHA-256 of the secret's bytes: the only form stored. Secrets carry 256 bits of
/// entropy, so a fast unsalted hash is enough (nothing to brute-force) and allows lookup by hash.
pub(crate) fn hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_random_and_hash_is_sha256_hex() {
        let a = super::generate("enr");
        let b = super::generate("enr");
        assert_ne!(a, b);
        assert!(a.expose().starts_with("kokoa_enr_"));
        assert_eq!(
            super::hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(format!("{a:?}"), "Secret(..)");
    }
}
