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
//! [`host_permitted`] (`[edge] sni_host_check`, [`SniHostCheck`]) optionally makes a request's host agree with the
//! name its connection's handshake asked for: a request for another name is answered
//! `421 Misdirected Request`, which tells the client to retry on a connection of its own.
//! `certificate` (the mode that keeps HTTP/2 connection coalescing) accepts any host the
//! connection's certificate is the one the edge serves for: a browser that reuses a connection
//! for a second name the certificate covers (RFC 9113 section 9.1.1) is served, and a request
//! for a name served with another certificate (domain fronting) is not. `exact` wants the host
//! to be the SNI name itself (no coalescing, every name gets its own connections; a client
//! without SNI is refused).

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
pub use kokoa_model::SniHostCheck;
use kokoa_model::{Certificate, HostPattern};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;

use crate::acme::{AcmeChallenges, ACME_TLS_ALPN};

/// ALPN protocols offered, in order of preference.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The name in the self-signed placeholder certificate made when none is configured.
pub const PLACEHOLDER_NAME: &str = "kokoa-edge.invalid";

/// A certificate store that could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The default name is covered by no certificate.
    #[error("tls.default: no certificate covers `{0}`; add one or remove the setting")]
    UnknownDefault(String),
    /// The self-signed placeholder could not be made.
    #[error("cannot generate the placeholder certificate: {0}")]
    Placeholder(String),
    /// rustls rejected the protocol setup (should not happen with the bundled provider).
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// Whether, under `check`, a request for `host` (normalized: lowercase, no port, no trailing
/// dot) may be served on a connection whose handshake asked for `sni`, the edge serving
/// `certificates`.
pub fn host_permitted(
    check: SniHostCheck,
    sni: Option<&str>,
    host: &str,
    certificates: &CertStore,
) -> bool {
    match check {
        SniHostCheck::Off => true,
        SniHostCheck::Exact => sni.is_some_and(|sni| {
            sni.strip_suffix('.')
                .unwrap_or(sni)
                .eq_ignore_ascii_case(host)
        }),
        SniHostCheck::Certificate => {
            match (certificates.select(sni), certificates.select(Some(host))) {
                (Some(served), Some(wanted)) => Arc::ptr_eq(&served, &wanted),
                _ => false,
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
    /// Each served name with its certificate's notAfter (Unix seconds), for metrics.
    expiries: Vec<(String, i64)>,
}

impl CertStore {
    /// A store serving `certificates` (each for the names of its own leaf, as the model read
    /// them), with `default` for unknown or absent SNI. With no certificate at all, the
    /// self-signed placeholder (served for every name), and a warning: clients will refuse it.
    pub fn from_certificates(
        certificates: &[Certificate],
        default: Option<&HostPattern>,
    ) -> Result<Self, CertError> {
        if certificates.is_empty() {
            if let Some(name) = default {
                return Err(CertError::UnknownDefault(name.to_string()));
            }
            return Self::placeholder();
        }
        let mut store = Self::default();
        for certificate in certificates {
            let certified = certificate.certified_key();
            let not_after = certificate.not_after().unix_timestamp();
            for name in certificate.names() {
                match name.wildcard_domain() {
                    Some(domain) => {
                        store.wildcard.insert(domain.to_owned(), certified.clone());
                    }
                    None => {
                        store.exact.insert(name.to_string(), certified.clone());
                    }
                }
                store.expiries.push((name.to_string(), not_after));
            }
        }
        store.expiries.sort();
        if let Some(name) = default {
            store.default = Some(
                store
                    .select_named(name.as_str())
                    .ok_or_else(|| CertError::UnknownDefault(name.to_string()))?,
            );
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

    /// Whether this store is the self-signed placeholder.
    pub fn is_placeholder(&self) -> bool {
        self.placeholder
    }

    /// Each served name with its certificate's notAfter in Unix seconds, sorted by name.
    pub fn expiries(&self) -> &[(String, i64)] {
        &self.expiries
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

    /// A self-signed certificate for `names`, through the model's parser.
    pub(crate) fn certificate(names: &[&str]) -> Certificate {
        let generated = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        Certificate::from_pem(&generated.cert.pem(), &generated.key_pair.serialize_pem()).unwrap()
    }

    fn leaf_names(certified: &CertifiedKey) -> Vec<String> {
        let (_, leaf) = x509_parser::parse_x509_certificate(&certified.cert[0]).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        san.value
            .general_names
            .iter()
            .map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => (*dns).to_owned(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn exact_wildcard_default_and_refusal() {
        let certs = [
            certificate(&["app.example.com"]),
            certificate(&["*.example.com", "example.com"]),
        ];
        let store = CertStore::from_certificates(&certs, None).unwrap();
        assert_eq!(
            store.names(),
            ["*.example.com", "app.example.com", "example.com"]
        );
        assert_eq!(store.expiries().len(), 3);
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

        let default = HostPattern::new("app.example.com").unwrap();
        let store = CertStore::from_certificates(&certs, Some(&default)).unwrap();
        let names = |sni| store.select(sni).map(|c| leaf_names(&c));
        assert_eq!(
            names(Some("unknown.test")),
            Some(vec!["app.example.com".into()])
        );
        assert_eq!(names(None), Some(vec!["app.example.com".into()]));

        let nope = HostPattern::new("nope.test").unwrap();
        assert!(matches!(
            CertStore::from_certificates(&certs, Some(&nope)),
            Err(CertError::UnknownDefault(_))
        ));
    }

    #[test]
    fn host_check_modes() {
        let certs = [
            certificate(&["*.example.com", "example.com"]),
            certificate(&["other.test"]),
        ];
        let default = HostPattern::new("other.test").unwrap();
        let store = CertStore::from_certificates(&certs, Some(&default)).unwrap();
        let check = |mode, sni, host| host_permitted(mode, sni, host, &store);
        for (sni, host) in [
            (Some("a.example.com"), "b.example.com"),
            (None, "unknown.test"),
            (Some("a.example.com"), "other.test"),
        ] {
            assert!(check(SniHostCheck::Off, sni, host));
        }
        // Coalescing onto a connection whose certificate covers the host is fine.
        assert!(check(
            SniHostCheck::Certificate,
            Some("a.example.com"),
            "b.example.com"
        ));
        assert!(check(
            SniHostCheck::Certificate,
            Some("a.example.com"),
            "example.com"
        ));
        // A host served with another certificate is not, nor one without SNI that has its own.
        assert!(!check(
            SniHostCheck::Certificate,
            Some("a.example.com"),
            "other.test"
        ));
        assert!(!check(SniHostCheck::Certificate, None, "a.example.com"));
        // Without SNI, the default certificate's names and names without a certificate pass.
        assert!(check(SniHostCheck::Certificate, None, "other.test"));
        assert!(check(SniHostCheck::Certificate, None, "unknown.test"));

        assert!(check(
            SniHostCheck::Exact,
            Some("A.Example.com."),
            "a.example.com"
        ));
        assert!(!check(
            SniHostCheck::Exact,
            Some("a.example.com"),
            "b.example.com"
        ));
        assert!(!check(SniHostCheck::Exact, None, "other.test"));
    }

    #[test]
    fn placeholder_when_nothing_is_configured() {
        let store = CertStore::from_certificates(&[], None).unwrap();
        assert!(store.is_placeholder());
        assert!(store.select(Some("anything.test")).is_some());
        assert!(store.select(None).is_some());
    }
}
