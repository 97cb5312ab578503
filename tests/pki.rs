//! A certificate authority made at test time (no committed secrets) and rustls client
//! configs that trust only it.

use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;

/// A test CA that issues server certificates.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A PEM certificate chain and its PEM private key.
pub struct Issued {
    /// Leaf certificate followed by the CA certificate.
    pub chain_pem: String,
    /// PKCS#8 private key.
    pub key_pem: String,
}

impl TestCa {
    /// A fresh CA.
    pub fn new() -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kokoa test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().context("generating the CA key")?;
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        Ok(Self { cert, key })
    }

    /// Issues a server certificate for `names` (DNS names, wildcards allowed).
    pub fn issue(&self, names: &[&str]) -> anyhow::Result<Issued> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let key = KeyPair::generate().context("generating a server key")?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .context("signing a server certificate")?;
        Ok(Issued {
            chain_pem: format!("{}{}", cert.pem(), self.cert.pem()),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA certificate in PEM (for curl's `--cacert`).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A rustls client config that trusts only this CA and offers `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        trusting(vec![CertificateDer::from(self.cert.der().to_vec())], alpn)
    }
}

/// A rustls client config that trusts only the CA certificates in `pem` (a file such as
/// `kokoa-control dev`'s `dev-ca.pem`) and offers `alpn`.
pub fn client_config_trusting_pem(
    pem: &str,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("reading the CA PEM")?;
    anyhow::ensure!(!certificates.is_empty(), "no certificate in the CA PEM");
    trusting(certificates, alpn)
}

fn trusting(
    certificates: Vec<CertificateDer<'static>>,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots.add(certificate).context("trusting the CA")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
