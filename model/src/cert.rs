//! TLS certificates: one parser for a PEM chain and its key, used by control when a
//! certificate is uploaded and by the edge when it applies one (from a snapshot or from files).
//!
//! A [`Certificate`] is only made when the key belongs to the leaf and the leaf names at least
//! one DNS host in its subjectAltName. The names a certificate serves are always the leaf's
//! own (never a list written next to it), so control lists exactly what the edge serves.
//! Expiry is read, not enforced: an expired certificate still parses (the edge warns loudly and
//! exports its expiry as a metric; refusing it would take every other name down with it).

use std::fmt;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use zeroize::Zeroizing;

use crate::error::ModelError;
use crate::name::HostPattern;

/// A certificate chain with its private key, checked to belong together.
#[derive(Clone)]
pub struct Certificate {
    chain_pem: String,
    key_pem: Zeroizing<String>,
    names: Vec<HostPattern>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    issuer: String,
    certified: Arc<CertifiedKey>,
}

impl Certificate {
    /// Parses a PEM chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or SEC1). Errors
    /// name `chain_pem` or `key_pem`.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self, ModelError> {
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| ModelError::new("chain_pem", format!("bad PEM: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(ModelError::new(
                "chain_pem",
                "no PEM certificate (expected -----BEGIN CERTIFICATE-----, the leaf first)",
            ));
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| {
            ModelError::new(
                "chain_pem",
                format!("the leaf is not an X.509 certificate: {e}"),
            )
        })?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(dns) = name {
                    // A SAN that is no valid host name can never be selected by SNI.
                    if let Ok(name) = HostPattern::new(dns) {
                        if !names.contains(&name) {
                            names.push(name);
                        }
                    }
                }
            }
        }
        if names.is_empty() {
            return Err(ModelError::new(
                "chain_pem",
                "the certificate has no DNS names in its subjectAltName, so no SNI can select it; get one issued for the host names it should serve",
            ));
        }
        let time = |asn1: x509_parser::time::ASN1Time| {
            OffsetDateTime::from_unix_timestamp(asn1.timestamp()).map_err(|e| {
                ModelError::new(
                    "chain_pem",
                    format!("the leaf's validity is unreadable: {e}"),
                )
            })
        };
        let not_before = time(parsed.validity().not_before)?;
        let not_after = time(parsed.validity().not_after)?;
        let issuer = parsed.issuer().to_string();

        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(|e| ModelError::new("key_pem", format!("bad PEM: {e}")))?
            .ok_or_else(|| {
                ModelError::new(
                    "key_pem",
                    "no PEM private key (PKCS#8, PKCS#1 or SEC1 -----BEGIN ... PRIVATE KEY-----)",
                )
            })?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| ModelError::new("key_pem", format!("unsupported private key: {e}")))?;
        let certified = CertifiedKey::new(chain, signing);
        certified.keys_match().map_err(|e| {
            ModelError::new(
                "key_pem",
                format!("the key does not match the certificate ({e}): upload the key the leaf was issued for"),
            )
        })?;
        Ok(Self {
            chain_pem: chain_pem.to_owned(),
            key_pem: Zeroizing::new(key_pem.to_owned()),
            names,
            not_before,
            not_after,
            issuer,
            certified: Arc::new(certified),
        })
    }

    /// The DNS names from the leaf's subjectAltName, in its order, lowercase.
    pub fn names(&self) -> &[HostPattern] {
        &self.names
    }

    /// Whether one of the names covers `host`.
    pub fn covers(&self, host: &HostPattern) -> bool {
        self.names.iter().any(|name| name.covers(host))
    }

    /// The leaf's notBefore.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// The leaf's notAfter.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The leaf's issuer, as a distinguished name.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Whether the leaf is outside its validity at `now` (expired or not yet valid).
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// The PEM chain as given.
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// The PEM key as given.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The chain and signing key in the form rustls serves.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.chain_pem == other.chain_pem && *self.key_pem == *other.key_pem
    }
}

impl Eq for Certificate {}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// A certificate upload as written in JSON: `{"chain_pem": ..., "key_pem": ...}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CertificateFields {
    chain_pem: String,
    key_pem: String,
}

impl<'de> Deserialize<'de> for Certificate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fields = CertificateFields::deserialize(d)?;
        let key_pem = Zeroizing::new(fields.key_pem);
        Certificate::from_pem(&fields.chain_pem, &key_pem).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A self-signed certificate for `names` and its key, PEM.
    pub(crate) fn self_signed(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let generated = rcgen::generate_simple_self_signed(names).unwrap();
        (generated.cert.pem(), generated.key_pair.serialize_pem())
    }

    #[test]
    fn names_come_from_the_leaf() {
        let (chain, key) = self_signed(&["App.example.com", "*.example.org"]);
        let cert = Certificate::from_pem(&chain, &key).unwrap();
        let names: Vec<&str> = cert.names().iter().map(HostPattern::as_str).collect();
        assert_eq!(names, ["app.example.com", "*.example.org"]);
        assert!(cert.covers(&HostPattern::new("a.example.org").unwrap()));
        assert!(!cert.covers(&HostPattern::new("example.org").unwrap()));
        assert!(cert.is_valid_at(OffsetDateTime::now_utc()));
        assert!(cert.not_before() < cert.not_after());
        assert!(
            !format!("{cert:?}").contains("PRIVATE"),
            "Debug hides the key"
        );
    }

    #[test]
    fn mismatched_key_and_missing_names_are_refused() {
        let (chain, _) = self_signed(&["a.example.com"]);
        let (_, other_key) = self_signed(&["b.example.com"]);
        let error = Certificate::from_pem(&chain, &other_key).unwrap_err();
        assert_eq!(error.field, "key_pem");
        assert!(error.message.contains("does not match"), "{error}");

        let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let unnamed = params.self_signed(&key).unwrap();
        let error = Certificate::from_pem(&unnamed.pem(), &key.serialize_pem()).unwrap_err();
        assert_eq!(error.field, "chain_pem");
        assert!(error.message.contains("no DNS names"), "{error}");

        let (chain, key) = self_signed(&["a.example.com"]);
        assert_eq!(
            Certificate::from_pem("garbage", &key).unwrap_err().field,
            "chain_pem"
        );
        assert_eq!(
            Certificate::from_pem(&chain, "garbage").unwrap_err().field,
            "key_pem"
        );
    }

    #[test]
    fn expired_certificates_parse_and_say_so() {
        let mut params = rcgen::CertificateParams::new(vec!["old.example.com".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let parsed = Certificate::from_pem(&cert.pem(), &key.serialize_pem()).unwrap();
        assert!(!parsed.is_valid_at(OffsetDateTime::now_utc()));
        assert_eq!(parsed.not_after().year(), 2001);
    }

    #[test]
    fn json_uploads_go_through_the_same_parser() {
        let (chain, key) = self_signed(&["a.example.com"]);
        let json = serde_json::json!({"chain_pem": chain, "key_pem": key}).to_string();
        let cert: Certificate = crate::from_json(&json).unwrap();
        assert_eq!(cert.names()[0].as_str(), "a.example.com");
        let json =
            serde_json::json!({"chain_pem": chain, "key_pem": key, "names": ["x"]}).to_string();
        let error = crate::from_json::<Certificate>(&json).unwrap_err();
        assert_eq!(error.field, "names");
    }
}
