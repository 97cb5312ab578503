//! Provisioned edges: `POST /provision/edges` (an edge on a new machine),
//! `POST /edge-nodes/{edge}/replace`, `POST /edge-nodes/{edge}/destroy`, and what is on record
//! (`GET /provision/replacements`, `GET /provision/instances`). They need `serve
//! --provisioner`; without one they answer 409 saying so.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{ApiJson, Caller};
use super::{find_edge, find_origin, ApiError, ApiState};
use crate::provision::replace::ReplaceError;
use crate::provision::{ProvisionError, Replacer};
use crate::store::{EdgeInstance, Name, ReplaceCause, Replacement};

impl From<ReplaceError> for ApiError {
    fn from(error: ReplaceError) -> Self {
        match error {
            ReplaceError::Store(error) => error.into(),
            ReplaceError::Invalid(message) => ApiError::new(StatusCode::CONFLICT, message),
            ReplaceError::Provision(error) => {
                let status = match &error {
                    ProvisionError::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
                    ProvisionError::RateLimited { .. } => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::BAD_GATEWAY,
                };
                ApiError::new(status, error.to_string())
            }
        }
    }
}

fn replacer(state: &ApiState) -> Result<&Replacer, ApiError> {
    state.replacer.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no edge provisioner is configured: start control with --provisioner \
             local|digitalocean|vultr|hetzner",
        )
    })
}

/// Body of `POST /provision/edges`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionRequest {
    /// Unique name (also the machine's name).
    pub name: Name,
    /// Origins it serves, by id or name.
    #[serde(default)]
    pub origins: Vec<String>,
}

pub(super) async fn provision(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    ApiJson(body): ApiJson<ProvisionRequest>,
) -> Result<(StatusCode, Json<super::edges::EdgeView>), ApiError> {
    let replacer = replacer(&state)?;
    let mut origins = Vec::with_capacity(body.origins.len());
    for (i, key) in body.origins.iter().enumerate() {
        let origin = find_origin(&*state.store, key).await.map_err(|e| {
            if e.status == StatusCode::NOT_FOUND {
                ApiError::invalid(format!("origins[{i}]"), format!("unknown origin {key:?}"))
            } else {
                e
            }
        })?;
        origins.push(origin.id);
    }
    let edge = replacer.provision_edge(&actor, body.name, origins).await?;
    Ok((
        StatusCode::CREATED,
        Json(super::edges::view_of(&*state.store, edge).await?),
    ))
}

pub(super) async fn replace(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
) -> Result<(StatusCode, Json<Replacement>), ApiError> {
    let replacer = replacer(&state)?;
    let edge = find_edge(&*state.store, &key).await?;
    let reason = format!("requested by {actor}");
    let replacement = replacer
        .replace(&actor, &edge, ReplaceCause::Manual, reason)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(replacement)))
}

pub(super) async fn destroy(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    let replacer = replacer(&state)?;
    let edge = find_edge(&*state.store, &key).await?;
    replacer.destroy_edge(&actor, &edge).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /provision/replacements`.
#[derive(Debug, Default, Deserialize)]
pub struct ReplacementQuery {
    /// Only unfinished ones.
    #[serde(default)]
    pub unfinished: bool,
    /// At most this many (default 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

pub(super) async fn replacements(
    State(state): State<ApiState>,
    Query(query): Query<ReplacementQuery>,
) -> Result<Json<Vec<Replacement>>, ApiError> {
    Ok(Json(
        state
            .store
            .list_replacements(query.unfinished, query.limit.unwrap_or(100).min(1000))
            .await?,
    ))
}

pub(super) async fn instances(
    State(state): State<ApiState>,
) -> Result<Json<Vec<EdgeInstance>>, ApiError> {
    Ok(Json(state.store.list_instances().await?))
}

/// `GET /edge-nodes/{edge}/instance`: the machine a provisioner made for the edge (404 when
/// none did).
pub(super) async fn instance(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<EdgeInstance>, ApiError> {
    let edge = find_edge(&*state.store, &key).await?;
    state
        .store
        .get_instance(edge.id)
        .await?
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!("edge {:?} has no provisioned machine", edge.name))
        })
}
