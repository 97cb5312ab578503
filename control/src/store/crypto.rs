//! Secrets at rest: the master key and the AEAD that seals private keys with it.
//!
//! Every secret control keeps (WireGuard private keys it generated, certificate keys) is sealed
//! with ChaCha20-Poly1305 under a 32-byte master key that never enters the database. A sealed
//! value is `base64(nonce || ciphertext)` with a fresh random 96-bit nonce, and the owning
//! entity's id as associated data, so a sealed value copied onto another row does not open.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use zeroize::{Zeroize, Zeroizing};

/// The environment variable holding the base64 master key.
pub const MASTER_KEY_ENV: &str = "KOKOA_MASTER_KEY";

const NONCE_LEN: usize = 12;

/// How to create a master key; shown whenever none or a bad one is given.
const HOW_TO_CREATE: &str = "create one with `head -c 32 /dev/urandom | base64 > /etc/kokoa/master.key && chmod 600 /etc/kokoa/master.key` and pass `--master-key-file /etc/kokoa/master.key`, or put the base64 text in the KOKOA_MASTER_KEY environment variable; keep a backup: secrets sealed with a lost key cannot be recovered";

/// Errors of master-key loading and of sealing / opening secrets.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// No master key was configured.
    #[error("no master key configured: {HOW_TO_CREATE}")]
    Missing,
    /// The key file could not be read or written.
    #[error("master key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configured key is not base64 of exactly 32 bytes.
    #[error("master key from {origin} is not base64 of 32 bytes ({reason}); {HOW_TO_CREATE}")]
    Malformed {
        /// Where it came from (a file path or the environment variable).
        origin: String,
        /// What was wrong.
        reason: String,
    },
    /// A sealed value did not open: the master key differs from the one it was sealed with, or
    /// the value was altered or moved to another row.
    #[error("cannot decrypt a stored secret: wrong master key, or the stored value was altered")]
    Open,
    /// A sealed value is not well-formed base64 of nonce || ciphertext.
    #[error("stored secret is not a sealed value: {0}")]
    Format(String),
}

/// The 32-byte key that seals secrets at rest. Its `Debug` never prints the key.
#[derive(Clone)]
pub struct MasterKey {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Loads the master key from `file` when given (the `--master-key-file` flag), else from the
    /// `KOKOA_MASTER_KEY` environment variable. Refuses with a message telling the operator how
    /// to create one when neither is set.
    pub fn load(file: Option<&Path>) -> Result<MasterKey, CryptoError> {
        let env = std::env::var(MASTER_KEY_ENV).ok();
        MasterKey::load_from(file, env.as_deref())
    }

    /// [`MasterKey::load`] with the environment value passed in (for tests and embedding).
    pub fn load_from(file: Option<&Path>, env: Option<&str>) -> Result<MasterKey, CryptoError> {
        if let Some(path) = file {
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
                CryptoError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            })?);
            return MasterKey::from_base64(&text).map_err(|reason| CryptoError::Malformed {
                origin: path.display().to_string(),
                reason,
            });
        }
        match env {
            Some(text) if !text.trim().is_empty() => {
                MasterKey::from_base64(text).map_err(|reason| CryptoError::Malformed {
                    origin: MASTER_KEY_ENV.to_string(),
                    reason,
                })
            }
            _ => Err(CryptoError::Missing),
        }
    }

    /// For `dev` mode: loads the key at `path`, creating it first (random, file mode 0600) when
    /// the file does not exist, so a dev control restarted on the same directory keeps opening
    /// its own secrets.
    pub fn generate_dev(path: &Path) -> Result<MasterKey, CryptoError> {
        let io = |source| CryptoError::Io {
            path: path.to_path_buf(),
            source,
        };
        if path.exists() {
            return MasterKey::load_from(Some(path), None);
        }
        let key = MasterKey::generate();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io)?;
        let mut text = Zeroizing::new(key.to_base64());
        text.push('\n');
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(key)
    }

    /// A new random key.
    pub fn generate() -> MasterKey {
        let key = ChaCha20Poly1305::generate_key(&mut OsRng);
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&key);
        MasterKey { key: bytes }
    }

    /// Parses base64 of exactly 32 bytes (surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<MasterKey, String> {
        let mut raw = STANDARD
            .decode(text.trim())
            .map_err(|e| format!("bad base64: {e}"))?;
        if raw.len() != 32 {
            let len = raw.len();
            raw.zeroize();
            return Err(format!("decodes to {len} bytes"));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&raw);
        raw.zeroize();
        Ok(MasterKey { key })
    }

    /// The key as base64 (what [`MasterKey::generate_dev`] writes).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(*self.key)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&*self.key))
    }

    /// Seals `plaintext` bound to `aad` (the owning entity's id): `base64(nonce || ciphertext)`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<String, CryptoError> {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = self
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| CryptoError::Format("encryption failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(STANDARD.encode(out))
    }

    /// Opens a value made by [`MasterKey::seal`] with the same `aad`.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let raw = STANDARD
            .decode(sealed.trim())
            .map_err(|e| CryptoError::Format(e.to_string()))?;
        if raw.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Format(format!(
                "{} bytes is too short",
                raw.len()
            )));
        }
        let (nonce, ciphertext) = raw.split_at(NONCE_LEN);
        self.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let key = MasterKey::generate();
        let sealed = key.seal(b"secret", b"id-1").expect("seal");
        assert!(!sealed.contains("secret"));
        assert_eq!(&**key.open(&sealed, b"id-1").expect("open"), b"secret");
        // Bound to its row: another id does not open it.
        assert!(matches!(key.open(&sealed, b"id-2"), Err(CryptoError::Open)));
        // Another key does not open it.
        let other = MasterKey::generate();
        assert!(matches!(
            other.open(&sealed, b"id-1"),
            Err(CryptoError::Open)
        ));
        // A fresh nonce per value.
        assert_ne!(sealed, key.seal(b"secret", b"id-1").expect("seal"));
    }

    #[test]
    fn load_refuses_missing_and_malformed_with_instructions() {
        let missing = MasterKey::load_from(None, None).expect_err("missing");
        assert!(missing.to_string().contains("--master-key-file"));
        assert!(missing.to_string().contains("KOKOA_MASTER_KEY"));
        let short = MasterKey::load_from(None, Some("c2hvcnQ=")).expect_err("short");
        assert!(short.to_string().contains("decodes to 5 bytes"), "{short}");
        let env = MasterKey::generate().to_base64();
        MasterKey::load_from(None, Some(&env)).expect("env key");
    }

    #[test]
    fn generate_dev_creates_private_file_and_reloads_it() {
        let dir = std::env::temp_dir().join(format!("kokoa-mk-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("master.key");
        let first = MasterKey::generate_dev(&path).expect("create");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = MasterKey::generate_dev(&path).expect("reload");
        assert_eq!(first.to_base64(), again.to_base64());
        let loaded = MasterKey::load_from(Some(&path), None).expect("load");
        assert_eq!(first.to_base64(), loaded.to_base64());
        std::fs::remove_dir_all(&dir).ok();
    }
}
