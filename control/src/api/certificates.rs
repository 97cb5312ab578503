//! `/api/v1/certificates`: TLS certificates served by edges. Listing and reading never return
//! private keys. A manual upload takes a PEM chain and key; the store checks them with the
//! model's certificate parser (the one the edge uses: the key matches the leaf, the leaf has DNS
//! names) and lists the certificate by the names it serves.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{ApiJson, Caller};
use super::{parse_id, ApiError, ApiState};
use crate::store::{
    Certificate, CertificateMaterial, CertificateSource, HostPattern, NewCertificate,
};

/// Body of `POST /certificates` (manual upload).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateUpload {
    /// PEM chain, leaf first.
    pub chain_pem: String,
    /// PEM private key of the leaf.
    pub key_pem: String,
    /// Names the certificate is expected to serve: each must be covered by the leaf's DNS
    /// subjectAltNames (422 naming `names[i]` otherwise). The certificate is listed, and
    /// served, by its own names either way.
    #[serde(default)]
    pub names: Vec<HostPattern>,
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
    let certificate = state
        .store
        .create_certificate(
            &actor,
            NewCertificate {
                names: body.names,
                source: CertificateSource::Manual,
                material: Some(CertificateMaterial {
                    chain_pem: body.chain_pem,
                    key_pem: body.key_pem,
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
