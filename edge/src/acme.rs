//! ACME challenge answers: the edge's half of certificate issuance.
//!
//! Control is the fleet's only ACME client. While an order is pending it pushes the challenges
//! to every edge serving the name (over the config stream); the edge answers whichever the CA's
//! validator asks it:
//! - HTTP-01: `GET /.well-known/acme-challenge/<token>` on the plain HTTP port gets the key
//!   authorization as the body ([`crate::http`]);
//! - TLS-ALPN-01 (RFC 8737): a TLS handshake offering the `acme-tls/1` ALPN protocol gets the
//!   self-signed validation certificate for its SNI ([`crate::sni`]).
//!
//! [`AcmeChallenges`] is the table both listeners read. Each setter replaces one kind of
//! challenge as a whole (the snapshot carries the complete set), as an immutable map behind
//! `ArcSwap`: lookups never lock and never see a half-applied set.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;

/// The ALPN protocol id of TLS-ALPN-01 validation handshakes (RFC 8737 section 6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A pending HTTP-01 challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpChallenge {
    /// The token in `/.well-known/acme-challenge/<token>`.
    pub token: String,
    /// The exact response body: `token.thumbprint`.
    pub key_authorization: String,
}

/// A pending TLS-ALPN-01 challenge.
#[derive(Clone)]
pub struct TlsAlpnChallenge {
    /// The DNS name being validated (the SNI of the validation handshake).
    pub name: String,
    /// The validation certificate (with the critical acmeIdentifier extension), PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8, SEC1 or PKCS#1).
    pub key_pem: String,
}

impl std::fmt::Debug for TlsAlpnChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAlpnChallenge")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A challenge that cannot be served. The whole set it came with is rejected (and the
/// previous set stays), so a NACK can name what control sent wrong.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// An HTTP-01 token is not a base64url string (RFC 8555 section 8.3).
    #[error("ACME HTTP-01 token {0:?} is not base64url; control sent a malformed challenge")]
    BadToken(String),
    /// A TLS-ALPN-01 name is empty or not a host name.
    #[error("ACME TLS-ALPN-01 challenge name {0:?} is not a DNS name")]
    BadName(String),
    /// The validation certificate or key does not parse or they do not match.
    #[error("ACME TLS-ALPN-01 certificate for {name}: {reason}")]
    BadCertificate {
        /// The challenge's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// The pending challenges an edge answers. Cheap to share (`Arc`); see the module doc.
#[derive(Debug, Default)]
pub struct AcmeChallenges {
    http: ArcSwap<HashMap<String, String>>,
    tls_alpn: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
}

impl AcmeChallenges {
    /// An empty table.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Replaces the HTTP-01 challenges. On error nothing changes.
    pub fn set_http(&self, challenges: Vec<HttpChallenge>) -> Result<(), AcmeError> {
        let mut map = HashMap::with_capacity(challenges.len());
        for challenge in challenges {
            if !is_token(&challenge.token) {
                return Err(AcmeError::BadToken(challenge.token));
            }
            map.insert(challenge.token, challenge.key_authorization);
        }
        if !map.is_empty() || !self.http.load().is_empty() {
            tracing::info!(pending = map.len(), "ACME HTTP-01 challenges updated");
        }
        self.http.store(Arc::new(map));
        Ok(())
    }

    /// Replaces the TLS-ALPN-01 challenges. On error nothing changes.
    pub fn set_tls_alpn(&self, challenges: Vec<TlsAlpnChallenge>) -> Result<(), AcmeError> {
        let mut map = HashMap::with_capacity(challenges.len());
        for challenge in challenges {
            let name = challenge.name.trim_end_matches('.').to_ascii_lowercase();
            if kokoa_model::HostName::new(&name).is_err() {
                return Err(AcmeError::BadName(challenge.name));
            }
            // webpki (behind `keys_match`) rejects the critical acmeIdentifier extension every
            // validation certificate carries, so the pair is not cross-checked here; a wrong
            // key only fails that one validation handshake.
            let certified =
                signing_pair(&challenge.cert_pem, &challenge.key_pem).map_err(|reason| {
                    AcmeError::BadCertificate {
                        name: name.clone(),
                        reason,
                    }
                })?;
            map.insert(name, Arc::new(certified));
        }
        if !map.is_empty() || !self.tls_alpn.load().is_empty() {
            tracing::info!(pending = map.len(), "ACME TLS-ALPN-01 challenges updated");
        }
        self.tls_alpn.store(Arc::new(map));
        Ok(())
    }

    /// The key authorization to answer for `token`, if it is pending.
    pub fn key_authorization(&self, token: &str) -> Option<String> {
        self.http.load().get(token).cloned()
    }

    /// The validation certificate for `name`, if a TLS-ALPN-01 challenge for it is pending.
    pub fn tls_alpn_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.tls_alpn.load().get(&name).cloned()
    }

    /// How many HTTP-01 and TLS-ALPN-01 challenges are pending.
    pub fn pending(&self) -> (usize, usize) {
        (self.http.load().len(), self.tls_alpn.load().len())
    }
}

/// RFC 8555 tokens are base64url without padding; anything else cannot be one of ours.
fn is_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 512
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A rustls signing key pair from PEM text (not cross-checked).
fn signing_pair(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err("no PEM certificate (expected -----BEGIN CERTIFICATE-----)".into());
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| format!("bad key PEM: {e}"))?
        .ok_or("no PEM private key (PKCS#8, PKCS#1 or SEC1)")?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    Ok(CertifiedKey::new(chain, signing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let generated = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (generated.cert.pem(), generated.key_pair.serialize_pem())
    }

    #[test]
    fn http_tokens_replace_as_a_set() {
        let acme = AcmeChallenges::new();
        acme.set_http(vec![HttpChallenge {
            token: "abc_-1".into(),
            key_authorization: "abc_-1.thumb".into(),
        }])
        .unwrap();
        assert_eq!(acme.key_authorization("abc_-1").unwrap(), "abc_-1.thumb");
        assert!(acme.key_authorization("other").is_none());
        let error = acme
            .set_http(vec![HttpChallenge {
                token: "../etc".into(),
                key_authorization: "x".into(),
            }])
            .unwrap_err();
        assert!(matches!(error, AcmeError::BadToken(_)));
        // A rejected set leaves the previous one in place.
        assert!(acme.key_authorization("abc_-1").is_some());
        acme.set_http(Vec::new()).unwrap();
        assert!(acme.key_authorization("abc_-1").is_none());
    }

    #[test]
    fn tls_alpn_certificates_by_name() {
        let acme = AcmeChallenges::new();
        let (cert_pem, key_pem) = self_signed("a.example.test");
        acme.set_tls_alpn(vec![TlsAlpnChallenge {
            name: "A.Example.Test.".into(),
            cert_pem: cert_pem.clone(),
            key_pem,
        }])
        .unwrap();
        assert!(acme.tls_alpn_certificate("a.example.test").is_some());
        assert!(acme.tls_alpn_certificate("b.example.test").is_none());
        let error = acme
            .set_tls_alpn(vec![TlsAlpnChallenge {
                name: "a.example.test".into(),
                cert_pem: cert_pem.clone(),
                key_pem: "not a key".into(),
            }])
            .unwrap_err();
        assert!(matches!(error, AcmeError::BadCertificate { .. }), "{error}");
        assert_eq!(acme.pending(), (0, 1));
    }
}
