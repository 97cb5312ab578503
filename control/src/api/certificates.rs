//! `/api/v1/certificates`: TLS certificates served by edges. Listing and reading never return
//! private keys; manual upload takes a PEM chain and key and reads names, expiry and issuer from
//! the leaf.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use super::extract::{ApiJson, Caller};
use super::{parse_id, ApiError, ApiState};
use crate::store::{Certificate, CertificateMaterial, CertificateSource, NewCertificate};

/// Body of `POST /certificates` (manual upload).
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct CertificateUpload {
    /// PEM chain, leaf first.
    pub chain_pem: String,
    /// PEM private key of the leaf.
    pub key_pem: String,
    /// DNS names to serve it for; absent: the leaf's DNS subject alternative names.
    #[serde(default)]
    pub names: Option<Vec<String>>,
}

/// What the API reads from an uploaded leaf certificate.
#[derive(Debug, PartialEq)]
pub(crate) struct LeafInfo {
    pub names: Vec<String>,
    pub not_after: OffsetDateTime,
    pub issuer: String,
}

/// Reads the DNS names, expiry and issuer of the first certificate in `chain_pem`.
pub(crate) fn leaf_info(chain_pem: &str) -> Result<LeafInfo, ApiError> {
    let der = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .next()
        .ok_or_else(|| ApiError::invalid("chain_pem", "no CERTIFICATE block found"))?
        .map_err(|e| ApiError::invalid("chain_pem", format!("bad PEM: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| ApiError::invalid("chain_pem", format!("not an X.509 certificate: {e}")))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_string());
            }
        }
    }
    let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .map_err(|e| ApiError::invalid("chain_pem", format!("bad expiry: {e}")))?;
    Ok(LeafInfo {
        names,
        not_after,
        issuer: cert.issuer().to_string(),
    })
}

pub(super) async fn list(
    State(state): State<ApiState>,
) -> Result<Json<Vec<Certificate>>, ApiError> {
    Ok(Json(state.store.list_certificates().await?))
}

pub(super) async fn get(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<Certificate>, ApiError> {
    let id = parse_id("certificate", &key)?;
    Ok(Json(state.store.get_certificate(id).await?))
}

pub(super) async fn upload(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    ApiJson(body): ApiJson<CertificateUpload>,
) -> Result<(StatusCode, Json<Certificate>), ApiError> {
    let leaf = leaf_info(&body.chain_pem)?;
    if leaf.not_after <= OffsetDateTime::now_utc() {
        return Err(ApiError::invalid(
            "chain_pem",
            format!("the certificate expired at {}", leaf.not_after),
        ));
    }
    let names = match body.names {
        Some(names) => names,
        None if leaf.names.is_empty() => return Err(ApiError::invalid(
            "names",
            "the certificate has no DNS subject alternative names; list the names to serve it for",
        )),
        None => leaf.names,
    };
    let certificate = state
        .store
        .create_certificate(
            &actor,
            NewCertificate {
                names,
                source: CertificateSource::Manual,
                material: Some(CertificateMaterial {
                    chain_pem: body.chain_pem,
                    key_pem: body.key_pem,
                    issuer: Some(leaf.issuer),
                    not_after: leaf.not_after,
                }),
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(certificate)))
}

pub(super) async fn delete(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id("certificate", &key)?;
    state.store.delete_certificate(&actor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_and_expiry_of_the_leaf() {
        let cert = rcgen::generate_simple_self_signed(vec![
            "app.example.com".to_string(),
            "www.example.com".to_string(),
        ])
        .expect("cert");
        let info = leaf_info(&cert.cert.pem()).expect("leaf");
        assert_eq!(info.names, ["app.example.com", "www.example.com"]);
        assert!(info.not_after > OffsetDateTime::now_utc());
        assert!(leaf_info("garbage").is_err());
    }
}
