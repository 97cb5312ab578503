//! Certificate selection by SNI.
//!
//! A [`CertStore`] is an immutable snapshot of the certificates the edge serves, indexed by the
//! DNS names in each certificate's subjectAltName extension. [`SniResolver`] is the rustls
//! `ResolvesServerCert` that reads the current store from an `ArcSwap` on every handshake:
//! exact name first, then a `*.domain` wildcard (one extra label), then the default certificate
//! if one is configured; otherwise it returns `None` and rustls aborts the handshake with an
//! alert (`unrecognized_name` family), never a panic.
//!
//! A handshake offering the `acme-tls/1` ALPN protocol is an ACME TLS-ALPN-01 validation
//! (RFC 8737): it gets the pending challenge's validation certificate for its SNI from
//! [`AcmeChallenges`], or is refused; never a regular certificate.
//!
//! [`HostCheck`] (`[edge] sni_host_check`) optionally makes a request's host agree with the
//! name its connection's handshake asked for: a request for another name is answered
//! `421 Misdirected Request`, which tells the client to retry on a connection of its own.
//! `certificate` (the mode that keeps HTTP/2 connection coalescing) accepts any host the
//! connection's certificate is the one the edge serves for: a browser that reuses a connection
//! for a second name the certificate covers (RFC 9113 section 9.1.1) is served, and a request
//! for a name served with another certificate (domain fronting) is not. `exact` wants the host
//! to be the SNI name itself (no coalescing, every name gets its own connections; a client
//! without SNI is refused).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::acme::{AcmeChallenges, ACME_TLS_ALPN};
use crate::config::TlsSettings;

/// ALPN protocols offered, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The name in the self-signed placeholder certificate made when none is configured.
pub const PLACEHOLDER_NAME: &str = "kokoa-edge.invalid";

/// A certificate that could not be loaded. Messages name the file to fix.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{0} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate(PathBuf),
    /// The key file holds no PEM private key.
    #[error("{0} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    /// The key is of an unsupported type or does not match the certificate.
    #[error("{path}: {reason}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The leaf certificate cannot be parsed.
    #[error("{path}: not a valid X.509 certificate: {reason}")]
    BadCertificate {
        /// The certificate file.
        path: PathBuf,
        /// What webpki said.
        reason: String,
    },
    /// The certificate names no DNS host in its subjectAltName.
    #[error(
        "{0}: the certificate has no DNS names in its subjectAltName, so no SNI can select it"
    )]
    NoNames(PathBuf),
    /// `tls.default` names a host no certificate covers.
    #[error("tls.default: no certificate covers `{0}`; add one or remove the setting")]
    UnknownDefault(String),
    /// The self-signed placeholder could not be made.
    #[error("cannot generate the placeholder certificate: {0}")]
    Placeholder(String),
    /// `tls.cert_dir` cannot be listed.
    #[error("tls.cert_dir: cannot list {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// rustls rejected the protocol setup (should not happen with the bundled provider).
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// Whether a request's host must agree with its connection's TLS server name (SNI).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostCheck {
    /// Any routed host may be asked for on any connection.
    #[default]
    Off,
    /// The host must be served with the same certificate as the connection's SNI.
    Certificate,
    /// The host must be the connection's SNI name.
    Exact,
}

impl HostCheck {
    /// Parses `off`, `certificate` or `exact`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "off" => Ok(Self::Off),
            "certificate" => Ok(Self::Certificate),
            "exact" => Ok(Self::Exact),
            other => Err(format!(
                "`{other}` is not one of \"off\", \"certificate\", \"exact\""
            )),
        }
    }

    /// Whether a request for `host` (normalized: lowercase, no port, no trailing dot) may be
    /// served on a connection whose handshake asked for `sni`, the edge serving `certificates`.
    pub fn permits(self, sni: Option<&str>, host: &str, certificates: &CertStore) -> bool {
        match self {
            Self::Off => true,
            Self::Exact => sni.is_some_and(|sni| {
                sni.strip_suffix('.')
                    .unwrap_or(sni)
                    .eq_ignore_ascii_case(host)
            }),
            Self::Certificate => {
                match (certificates.select(sni), certificates.select(Some(host))) {
                    (Some(served), Some(wanted)) => Arc::ptr_eq(&served, &wanted),
                    _ => false,
                }
            }
        }
    }
}

/// An immutable set of certificates indexed by name.
#[derive(Clone, Debug, Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the domain under `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    placeholder: bool,
}

impl CertStore {
    /// Loads every certificate named by `tls` (explicit files, then `cert_dir`). When none is
    /// configured at all, makes a self-signed placeholder (served for every name) and logs a
    /// warning: browsers will refuse it until real certificates are configured.
    pub fn load(tls: &TlsSettings) -> Result<Self, CertError> {
        let mut pairs: Vec<(PathBuf, PathBuf)> = tls
            .certificates
            .iter()
            .map(|files| (files.cert.clone(), files.key.clone()))
            .collect();
        if let Some(dir) = &tls.cert_dir {
            pairs.extend(dir_pairs(dir)?);
        }
        if pairs.is_empty() {
            if let Some(name) = &tls.default {
                return Err(CertError::UnknownDefault(name.clone()));
            }
            tracing::warn!(
                name = PLACEHOLDER_NAME,
                "no TLS certificate is configured ([[tls.certificates]] or tls.cert_dir): \
                 serving a self-signed placeholder that clients will not trust"
            );
            return Self::placeholder();
        }
        let mut store = Self::default();
        for (cert, key) in pairs {
            let certified = load_pair(&cert, &key)?;
            store.insert(&cert, Arc::new(certified))?;
        }
        if let Some(name) = &tls.default {
            let certified = store
                .select_named(name)
                .ok_or_else(|| CertError::UnknownDefault(name.clone()))?;
            store.default = Some(certified);
        }
        Ok(store)
    }

    /// A store holding one self-signed certificate for [`PLACEHOLDER_NAME`], used as the
    /// default for every SNI.
    pub fn placeholder() -> Result<Self, CertError> {
        let generated = rcgen::generate_simple_self_signed(vec![PLACEHOLDER_NAME.to_owned()])
            .map_err(|e| CertError::Placeholder(e.to_string()))?;
        let key = PrivateKeyDer::Pkcs8(generated.key_pair.serialize_der().into());
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| CertError::Placeholder(e.to_string()))?;
        let certified = Arc::new(CertifiedKey::new(
            vec![generated.cert.der().clone()],
            signing,
        ));
        let mut store = Self::default();
        store
            .exact
            .insert(PLACEHOLDER_NAME.to_owned(), certified.clone());
        store.default = Some(certified);
        store.placeholder = true;
        Ok(store)
    }

    /// Builds a store from certificates already in memory (the control plane's path). Names
    /// come from each leaf's DNS SANs; `default` must be covered by one of them.
    pub fn from_certified(
        certificates: Vec<Arc<CertifiedKey>>,
        default: Option<&str>,
    ) -> Result<Self, CertError> {
        let mut store = Self::default();
        for (i, certified) in certificates.into_iter().enumerate() {
            store.insert(Path::new(&format!("certificate #{i}")), certified)?;
        }
        if let Some(name) = default {
            store.default = Some(
                store
                    .select_named(name)
                    .ok_or_else(|| CertError::UnknownDefault(name.to_owned()))?,
            );
        }
        Ok(store)
    }

    fn insert(&mut self, origin: &Path, certified: Arc<CertifiedKey>) -> Result<(), CertError> {
        let leaf = certified
            .cert
            .first()
            .ok_or_else(|| CertError::NoCertificate(origin.to_owned()))?;
        let names = san_names(leaf).map_err(|reason| CertError::BadCertificate {
            path: origin.to_owned(),
            reason,
        })?;
        if names.is_empty() {
            return Err(CertError::NoNames(origin.to_owned()));
        }
        for name in names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(domain) => {
                    self.wildcard.insert(domain.to_owned(), certified.clone());
                }
                None => {
                    self.exact.insert(name, certified.clone());
                }
            }
        }
        Ok(())
    }

    /// Whether this store is the self-signed placeholder.
    pub fn is_placeholder(&self) -> bool {
        self.placeholder
    }

    /// Every name served (wildcards as `*.domain`), sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .exact
            .keys()
            .cloned()
            .chain(self.wildcard.keys().map(|d| format!("*.{d}")))
            .collect();
        names.sort();
        names
    }

    fn select_named(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(certified) = self.exact.get(&name) {
            return Some(certified.clone());
        }
        let domain = match name.strip_prefix("*.") {
            Some(domain) => domain,
            None => {
                let (label, domain) = name.split_once('.')?;
                if label.is_empty() {
                    return None;
                }
                domain
            }
        };
        self.wildcard.get(domain).cloned()
    }

    /// The certificate for `sni`: exact, then wildcard, then the default. `None` means the
    /// handshake must be refused.
    pub fn select(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        sni.and_then(|name| self.select_named(name))
            .or_else(|| self.default.clone())
    }
}

/// The DNS names in a certificate's subjectAltName (wildcards included).
fn san_names(leaf: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let parsed = webpki::EndEntityCert::try_from(leaf).map_err(|e| e.to_string())?;
    Ok(parsed.valid_dns_names().map(str::to_owned).collect())
}

/// `NAME.crt` + `NAME.key` pairs in `dir`, sorted by name. A `.crt` without its `.key` is an
/// error, so a half-copied certificate is noticed.
fn dir_pairs(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>, CertError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CertError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    let mut pairs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| CertError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("crt") {
            continue;
        }
        let key = path.with_extension("key");
        if !key.is_file() {
            return Err(CertError::Read {
                path: key,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the key of this NAME.crt is missing (expected NAME.key next to it)",
                ),
            });
        }
        pairs.push((path, key));
    }
    pairs.sort();
    Ok(pairs)
}

fn open(path: &Path) -> Result<BufReader<File>, CertError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| CertError::Read {
            path: path.to_owned(),
            source,
        })
}

/// Loads a PEM chain and its key and checks that they belong together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, CertError> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut open(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|source| CertError::Read {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate(cert.to_owned()));
    }
    let private = rustls_pemfile::private_key(&mut open(key)?)
        .map_err(|source| CertError::Read {
            path: key.to_owned(),
            source,
        })?
        .ok_or_else(|| CertError::NoKey(key.to_owned()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&private).map_err(|e| {
        CertError::BadKey {
            path: key.to_owned(),
            reason: format!("unsupported private key: {e}"),
        }
    })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| CertError::BadKey {
        path: key.to_owned(),
        reason: format!("does not match the certificate in {}: {e}", cert.display()),
    })?;
    Ok(certified)
}

/// The rustls certificate resolver: reads the current [`CertStore`] on every handshake.
#[derive(Debug, Clone)]
pub struct SniResolver {
    store: Arc<ArcSwap<CertStore>>,
    acme: Option<Arc<AcmeChallenges>>,
}

impl SniResolver {
    /// A resolver over a swappable store (refusing ACME TLS-ALPN-01 validations).
    pub fn new(store: Arc<ArcSwap<CertStore>>) -> Self {
        Self { store, acme: None }
    }

    /// A resolver over a swappable store that also answers ACME TLS-ALPN-01 validations from
    /// `acme`.
    pub fn with_acme(store: Arc<ArcSwap<CertStore>>, acme: Arc<AcmeChallenges>) -> Self {
        Self {
            store,
            acme: Some(acme),
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = client_hello.server_name();
        let acme_validation = client_hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if acme_validation {
            let challenge = sni
                .zip(self.acme.as_ref())
                .and_then(|(name, acme)| acme.tls_alpn_certificate(name));
            match &challenge {
                Some(_) => tracing::info!(
                    sni = sni.unwrap_or(""),
                    "answering an ACME TLS-ALPN-01 validation"
                ),
                None => tracing::debug!(
                    sni = sni.unwrap_or(""),
                    "acme-tls/1 handshake without a pending challenge; refusing it"
                ),
            }
            return challenge;
        }
        let selected = self.store.load().select(sni);
        if selected.is_none() {
            tracing::debug!(
                sni = sni.unwrap_or(""),
                "no certificate for this name; refusing the handshake"
            );
        }
        selected
    }
}

/// The rustls server config: TLS 1.3 and 1.2, ALPN `h2` then `http/1.1` (and `acme-tls/1`,
/// which only ACME validators offer), certificates chosen by `resolver`.
pub fn server_config(resolver: SniResolver) -> Result<rustls::ServerConfig, CertError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    Ok(config)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::CertificateFiles;

    /// Writes a self-signed cert for `names` into `dir` as `file.crt` + `file.key`.
    pub(crate) fn write_cert(dir: &Path, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let generated = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = dir.join(format!("{file}.crt"));
        let key = dir.join(format!("{file}.key"));
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.key_pair.serialize_pem()).unwrap();
        (cert, key)
    }

    fn leaf_names(certified: &CertifiedKey) -> Vec<String> {
        san_names(&certified.cert[0]).unwrap()
    }

    #[test]
    fn exact_wildcard_default_and_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_cert(dir.path(), "app", &["app.example.com"]);
        let certs = tempfile::tempdir().unwrap();
        write_cert(certs.path(), "wild", &["*.example.com", "example.com"]);
        let mut tls = TlsSettings {
            cert_dir: Some(certs.path().to_owned()),
            default: None,
            certificates: vec![CertificateFiles { cert, key }],
        };
        let store = CertStore::load(&tls).unwrap();
        assert_eq!(
            store.names(),
            ["*.example.com", "app.example.com", "example.com"]
        );
        let names = |sni| store.select(sni).map(|c| leaf_names(&c));
        assert_eq!(
            names(Some("app.example.com")),
            Some(vec!["app.example.com".into()])
        );
        assert_eq!(
            names(Some("APP.example.com")),
            Some(vec!["app.example.com".into()])
        );
        let wild = Some(vec!["*.example.com".to_owned(), "example.com".to_owned()]);
        assert_eq!(names(Some("other.example.com")), wild);
        assert_eq!(names(Some("example.com")), wild);
        assert_eq!(names(Some("a.b.example.com")), None);
        assert_eq!(names(Some("unknown.test")), None);
        assert_eq!(names(None), None);

        tls.default = Some("app.example.com".into());
        let store = CertStore::load(&tls).unwrap();
        let names = |sni| store.select(sni).map(|c| leaf_names(&c));
        assert_eq!(
            names(Some("unknown.test")),
            Some(vec!["app.example.com".into()])
        );
        assert_eq!(names(None), Some(vec!["app.example.com".into()]));

        tls.default = Some("nope.test".into());
        assert!(matches!(
            CertStore::load(&tls),
            Err(CertError::UnknownDefault(_))
        ));
    }

    #[test]
    fn host_check_modes() {
        let certs = tempfile::tempdir().unwrap();
        write_cert(certs.path(), "wild", &["*.example.com", "example.com"]);
        write_cert(certs.path(), "other", &["other.test"]);
        let tls = TlsSettings {
            cert_dir: Some(certs.path().to_owned()),
            default: Some("other.test".into()),
            certificates: Vec::new(),
        };
        let store = CertStore::load(&tls).unwrap();
        let check = |mode: HostCheck, sni, host| mode.permits(sni, host, &store);
        for (sni, host) in [
            (Some("a.example.com"), "b.example.com"),
            (None, "unknown.test"),
            (Some("a.example.com"), "other.test"),
        ] {
            assert!(check(HostCheck::Off, sni, host));
        }
        // Coalescing onto a connection whose certificate covers the host is fine.
        assert!(check(
            HostCheck::Certificate,
            Some("a.example.com"),
            "b.example.com"
        ));
        assert!(check(
            HostCheck::Certificate,
            Some("a.example.com"),
            "example.com"
        ));
        // A host served with another certificate is not, nor one without SNI that has its own.
        assert!(!check(
            HostCheck::Certificate,
            Some("a.example.com"),
            "other.test"
        ));
        assert!(!check(HostCheck::Certificate, None, "a.example.com"));
        // Without SNI, the default certificate's names and names without a certificate pass.
        assert!(check(HostCheck::Certificate, None, "other.test"));
        assert!(check(HostCheck::Certificate, None, "unknown.test"));

        assert!(check(
            HostCheck::Exact,
            Some("A.Example.com."),
            "a.example.com"
        ));
        assert!(!check(
            HostCheck::Exact,
            Some("a.example.com"),
            "b.example.com"
        ));
        assert!(!check(HostCheck::Exact, None, "other.test"));

        assert_eq!(HostCheck::parse("certificate"), Ok(HostCheck::Certificate));
        assert!(HostCheck::parse("on").unwrap_err().contains("exact"));
    }

    #[test]
    fn placeholder_when_nothing_is_configured() {
        let store = CertStore::load(&TlsSettings::default()).unwrap();
        assert!(store.is_placeholder());
        assert!(store.select(Some("anything.test")).is_some());
        assert!(store.select(None).is_some());
    }

    #[test]
    fn mismatched_key_and_bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = write_cert(dir.path(), "a", &["a.test"]);
        let (_, other_key) = write_cert(dir.path(), "b", &["b.test"]);
        let error = load_pair(&cert, &other_key).unwrap_err();
        assert!(matches!(error, CertError::BadKey { .. }), "{error}");
        let error = load_pair(&other_key, &other_key).unwrap_err();
        assert!(matches!(error, CertError::NoCertificate(_)), "{error}");
        let error = load_pair(&dir.path().join("missing.crt"), &other_key).unwrap_err();
        assert!(error.to_string().contains("missing.crt"), "{error}");

        let lonely = tempfile::tempdir().unwrap();
        std::fs::copy(&cert, lonely.path().join("x.crt")).unwrap();
        let tls = TlsSettings {
            cert_dir: Some(lonely.path().to_owned()),
            ..TlsSettings::default()
        };
        let error = CertStore::load(&tls).unwrap_err();
        assert!(error.to_string().contains("x.key"), "{error}");
    }
}
