//! Control's own certificate authority for the gRPC listener.
//!
//! Nodes never trust the web PKI for the control stream: each node's bundle carries control's CA
//! certificate (`ca.crt`) and the node pins it as its only trust anchor. [`ControlCa`] creates
//! that CA (ECDSA P-256) on first start in the data directory and reuses it afterwards, so
//! nodes enrolled once keep trusting a restarted control. [`ControlCa::server_tls`] signs a fresh
//! server certificate for the gRPC listener at every start with the DNS names and IP addresses
//! nodes use to reach control.

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

/// File name of the CA certificate (PEM) in the data directory; this is what nodes pin.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA private key (PEM, mode 0600) in the data directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// The CA's subject common name.
pub const CA_COMMON_NAME: &str = "Kokoa control CA";

/// How long a newly created CA is valid. Nodes pin it, so replacing it means re-bundling every
/// node: make it outlive any deployment.
const CA_VALIDITY: Duration = Duration::days(365 * 20);
/// How long a gRPC server certificate is valid. It is re-signed at every start of control.
const SERVER_VALIDITY: Duration = Duration::days(365 * 2);
/// Tolerated clock skew between control and nodes for `not_before`.
const BACKDATE: Duration = Duration::hours(1);

/// Why the CA or a server certificate could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Reading or writing a file in the data directory failed.
    #[error("{path}: {source} (check that the data directory exists and is writable by control)")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Only one of `ca.crt` / `ca.key` exists.
    #[error(
        "{present} exists but {missing} does not; restore the missing file from a backup, or \
         remove both to create a new CA (every node must then be given the new ca.crt)"
    )]
    Incomplete {
        /// The file found.
        present: PathBuf,
        /// The file missing.
        missing: PathBuf,
    },
    /// A stored CA file could not be parsed, or the key does not belong to the certificate.
    #[error("{path}: {reason}; restore it from a backup, or remove ca.crt and ca.key to create a new CA")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A server name is neither a DNS name nor an IP address.
    #[error("invalid gRPC server name {name:?}: {reason}")]
    BadName {
        /// The name given.
        name: String,
        /// Why it was refused.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Control's CA: the trust anchor nodes pin for the gRPC connection.
pub struct ControlCa {
    cert_pem: String,
    /// Parameters re-read from `ca.crt` (subject and key identifier) for signing.
    params: CertificateParams,
    key: KeyPair,
    dir: PathBuf,
}

impl std::fmt::Debug for ControlCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlCa")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ControlCa {
    /// Loads the CA from `data_dir/ca.crt` + `data_dir/ca.key`, or creates both (and the
    /// directory) when neither exists. The key is written with mode 0600 and both files are
    /// written to a temporary name first and renamed, so a crash never leaves half a CA.
    ///
    /// Errors when only one of the two files exists or they do not match: silently replacing
    /// a CA would lock out every node that pinned it.
    pub fn load_or_create(data_dir: &Path) -> Result<ControlCa, PkiError> {
        let cert_path = data_dir.join(CA_CERT_FILE);
        let key_path = data_dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(data_dir, &cert_path, &key_path),
            (false, false) => Self::create(data_dir, &cert_path, &key_path),
            (true, false) => Err(PkiError::Incomplete {
                present: cert_path,
                missing: key_path,
            }),
            (false, true) => Err(PkiError::Incomplete {
                present: key_path,
                missing: cert_path,
            }),
        }
    }

    fn load(data_dir: &Path, cert_path: &Path, key_path: &Path) -> Result<ControlCa, PkiError> {
        let cert_pem = fs::read_to_string(cert_path).map_err(|source| PkiError::Io {
            path: cert_path.to_owned(),
            source,
        })?;
        let key_pem = zeroize::Zeroizing::new(fs::read_to_string(key_path).map_err(|source| {
            PkiError::Io {
                path: key_path.to_owned(),
                source,
            }
        })?);
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::Invalid {
            path: key_path.to_owned(),
            reason: format!("not a PEM private key: {e}"),
        })?;
        let params =
            CertificateParams::from_ca_cert_pem(&cert_pem).map_err(|e| PkiError::Invalid {
                path: cert_path.to_owned(),
                reason: format!("not a PEM CA certificate: {e}"),
            })?;
        let cert_der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .and_then(|c| c.ok())
            .ok_or_else(|| PkiError::Invalid {
                path: cert_path.to_owned(),
                reason: "no PEM certificate found".into(),
            })?;
        // The certificate embeds its SubjectPublicKeyInfo verbatim (DER is canonical).
        let spki = key.public_key_der();
        if !cert_der.windows(spki.len()).any(|w| w == spki.as_slice()) {
            return Err(PkiError::Invalid {
                path: key_path.to_owned(),
                reason: format!("this key does not belong to {}", cert_path.display()),
            });
        }
        Ok(ControlCa {
            cert_pem,
            params,
            key,
            dir: data_dir.to_owned(),
        })
    }

    fn create(data_dir: &Path, cert_path: &Path, key_path: &Path) -> Result<ControlCa, PkiError> {
        fs::create_dir_all(data_dir).map_err(|source| PkiError::Io {
            path: data_dir.to_owned(),
            source,
        })?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Kokoa");
        name.push(DnType::CommonName, CA_COMMON_NAME);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let cert = params.clone().self_signed(&key)?;
        let cert_pem = cert.pem();
        // Key first: a crash between the two renames leaves ca.key without ca.crt, which
        // load_or_create reports instead of silently making a second CA.
        write_atomic(key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_atomic(cert_path, cert_pem.as_bytes(), 0o644)?;
        tracing::info!(path = %cert_path.display(), "created control CA; nodes pin this certificate");
        Ok(ControlCa {
            cert_pem,
            params,
            key,
            dir: data_dir.to_owned(),
        })
    }

    /// The CA certificate (PEM): what node bundles carry as `control-ca.pem`.
    pub fn ca_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Where `ca.crt` lives.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(CA_CERT_FILE)
    }

    /// Signs a new server certificate (ECDSA P-256, valid two years) for `names`: each one a DNS
    /// name (`control.example.com`, `localhost`) or an IP address (`127.0.0.1`, `::1`). The
    /// first DNS name is also the subject common name. At least one name is required.
    pub fn server_tls(&self, names: &[String]) -> Result<ServerTls, PkiError> {
        if names.is_empty() {
            return Err(PkiError::BadName {
                name: String::new(),
                reason: "at least one DNS name or IP address is needed".into(),
            });
        }
        let mut params = CertificateParams::default();
        let mut sans = Vec::new();
        for raw in names {
            let name = raw.trim().trim_end_matches('.');
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    validate_dns_name(name).map_err(|reason| PkiError::BadName {
                        name: raw.clone(),
                        reason,
                    })?;
                    SanType::DnsName(name.to_ascii_lowercase().try_into().map_err(
                        |e: rcgen::Error| PkiError::BadName {
                            name: raw.clone(),
                            reason: e.to_string(),
                        },
                    )?)
                }
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let common_name = names
            .iter()
            .map(|n| n.trim().trim_end_matches('.'))
            .find(|n| n.parse::<IpAddr>().is_err())
            .unwrap_or(names[0].as_str())
            .to_ascii_lowercase();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Kokoa");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + SERVER_VALIDITY;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let issuer = self.params.clone().self_signed(&self.key)?;
        let cert = params.signed_by(&key, &issuer, &self.key)?;
        Ok(ServerTls {
            cert_pem: cert.pem(),
            key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
            ca_pem: self.cert_pem.clone(),
        })
    }
}

/// A gRPC server certificate signed by [`ControlCa`], with its key. `Debug` hides the key.
#[derive(Clone)]
pub struct ServerTls {
    cert_pem: String,
    key_pem: zeroize::Zeroizing<String>,
    ca_pem: String,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The server certificate chain (PEM, leaf then CA).
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.ca_pem)
    }

    /// The server certificate alone (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The server's private key (PEM, PKCS#8).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate nodes pin (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The certificate and key as a tonic identity.
    pub fn identity(&self) -> tonic::transport::Identity {
        tonic::transport::Identity::from_pem(self.chain_pem(), self.key_pem.as_bytes())
    }

    /// A tonic server TLS configuration presenting this certificate (no client certificates:
    /// nodes authenticate with their bearer credential).
    pub fn tonic_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(self.identity())
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and non-zero as RFC 5280 asks.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn validate_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("must be 1 to 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("every label must be 1 to 63 characters".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("only letters, digits, '-' and '_' are allowed".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label must not start or end with '-'".into());
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file in the same directory (created with
/// `mode`, fsynced, then renamed over `path`).
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let io_err = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(io_err)?;
    file.write_all(bytes).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_reuses_with_a_private_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ControlCa::load_or_create(dir.path()).expect("create");
        let again = ControlCa::load_or_create(dir.path()).expect("load");
        assert_eq!(ca.ca_pem(), again.ca_pem());
        assert!(ca.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.path().join(CA_KEY_FILE))
                .expect("ca.key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A certificate signed after reloading chains to the original ca.crt.
        let tls = again
            .server_tls(&["localhost".into(), "127.0.0.1".into()])
            .expect("server cert");
        verify(ca.ca_pem(), &tls, "localhost").expect("valid for localhost");
        verify(ca.ca_pem(), &tls, "127.0.0.1").expect("valid for 127.0.0.1");
        assert!(verify(ca.ca_pem(), &tls, "other.example").is_err());
        let other = tempfile::tempdir().expect("tempdir");
        let other = ControlCa::load_or_create(other.path()).expect("other CA");
        assert!(verify(other.ca_pem(), &tls, "localhost").is_err());
    }

    /// Verifies the server certificate of `tls` for `name` as a node pinning `ca_pem` does.
    fn verify(ca_pem: &str, tls: &ServerTls, name: &str) -> Result<(), rustls::Error> {
        use rustls::client::danger::ServerCertVerifier as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(cert.expect("ca pem")).expect("add root");
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .expect("verifier");
        let chain: Vec<_> = rustls_pemfile::certs(&mut tls.chain_pem().as_bytes())
            .collect::<Result<_, _>>()
            .expect("chain pem");
        let name = rustls_pki_types::ServerName::try_from(name.to_owned()).expect("name");
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &name,
                &[],
                rustls_pki_types::UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn refuses_half_a_ca_and_a_foreign_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        ControlCa::load_or_create(dir.path()).expect("create");
        let key = fs::read(dir.path().join(CA_KEY_FILE)).expect("read key");
        fs::remove_file(dir.path().join(CA_KEY_FILE)).expect("rm");
        assert!(matches!(
            ControlCa::load_or_create(dir.path()),
            Err(PkiError::Incomplete { .. })
        ));
        let other = tempfile::tempdir().expect("tempdir");
        ControlCa::load_or_create(other.path()).expect("create other");
        fs::copy(other.path().join(CA_KEY_FILE), dir.path().join(CA_KEY_FILE)).expect("copy");
        assert!(matches!(
            ControlCa::load_or_create(dir.path()),
            Err(PkiError::Invalid { .. })
        ));
        fs::write(dir.path().join(CA_KEY_FILE), key).expect("restore");
        ControlCa::load_or_create(dir.path()).expect("load restored");
    }

    #[test]
    fn rejects_bad_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ControlCa::load_or_create(dir.path()).expect("create");
        assert!(ca.server_tls(&[]).is_err());
        assert!(ca.server_tls(&["bad name".into()]).is_err());
        assert!(ca.server_tls(&["-x.example.com".into()]).is_err());
        assert!(ca.server_tls(&["::1".into()]).is_ok());
    }
}
