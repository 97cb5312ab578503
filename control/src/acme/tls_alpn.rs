//! The TLS-ALPN-01 validation certificate (RFC 8737 section 3): self-signed, the validated name
//! as its only SAN, and the critical `id-pe-acmeIdentifier` extension holding the SHA-256 of the
//! key authorization.

use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};

use super::AcmeError;

/// A validation certificate and its private key, both PEM.
///
/// `digest` is the SHA-256 of the key authorization (32 bytes).
pub fn validation_certificate(
    name: &str,
    digest: &[u8],
) -> Result<(String, zeroize::Zeroizing<String>), AcmeError> {
    if digest.len() != 32 {
        return Err(AcmeError::Certificate(format!(
            "the acmeIdentifier must be a SHA-256 digest (32 bytes), got {}",
            digest.len()
        )));
    }
    let error = |e: rcgen::Error| {
        AcmeError::Certificate(format!("TLS-ALPN-01 certificate for {name}: {e}"))
    };
    let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(error)?;
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let key = KeyPair::generate().map_err(error)?;
    let cert = params.self_signed(&key).map_err(error)?;
    Ok((cert.pem(), zeroize::Zeroizing::new(key.serialize_pem())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carries_the_critical_acme_identifier() {
        let digest = [7u8; 32];
        let (pem, key) = validation_certificate("a.kokoa.test", &digest).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        let der = rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // DER OCTET STRING (0x04, 32) wrapping the digest.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &digest);
        assert!(validation_certificate("a.kokoa.test", &[1, 2]).is_err());
    }
}
