//! `/api/v1/origins`: private hosts running `kokoa-origin`.

use std::net::Ipv4Addr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ipnet::Ipv4Net;
use kokoa_tunnel::key::PublicKey;
use serde::{Deserialize, Serialize};

use super::edges::EdgeView;
use super::extract::{ApiJson, Caller};
use super::{find_origin, ApiError, ApiState};
use crate::store::{AssignmentFilter, NewOrigin, Origin, OriginUpdate};

/// An origin as the API shows it: the stored origin plus its tunnel addresses.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OriginView {
    /// The stored origin.
    #[serde(flatten)]
    pub origin: Origin,
    /// Its netstack address `10.100.X.1`.
    pub address: Ipv4Addr,
    /// Its /24.
    pub network: Ipv4Net,
}

impl From<Origin> for OriginView {
    fn from(origin: Origin) -> Self {
        OriginView {
            address: origin.address(),
            network: origin.network(),
            origin,
        }
    }
}

pub(super) async fn list(State(state): State<ApiState>) -> Result<Json<Vec<OriginView>>, ApiError> {
    let origins = state.store.list_origins().await?;
    Ok(Json(origins.into_iter().map(OriginView::from).collect()))
}

pub(super) async fn create(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    ApiJson(new): ApiJson<NewOrigin>,
) -> Result<(StatusCode, Json<OriginView>), ApiError> {
    let origin = state.store.create_origin(&actor, new).await?;
    Ok((StatusCode::CREATED, Json(origin.into())))
}

pub(super) async fn get(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<OriginView>, ApiError> {
    Ok(Json(find_origin(&*state.store, &key).await?.into()))
}

pub(super) async fn update(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
    ApiJson(update): ApiJson<OriginUpdate>,
) -> Result<Json<OriginView>, ApiError> {
    let origin = find_origin(&*state.store, &key).await?;
    let origin = state.store.update_origin(&actor, origin.id, update).await?;
    Ok(Json(origin.into()))
}

pub(super) async fn delete(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    let origin = find_origin(&*state.store, &key).await?;
    state.store.delete_origin(&actor, origin.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Body of `rotate-key`: the operator's new public key, or nothing for a generated pair.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// The operator's own new public key; absent: control generates a new pair.
    #[serde(default)]
    pub public_key: Option<PublicKey>,
}

pub(super) async fn rotate_key(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<RotateKey>,
) -> Result<Json<OriginView>, ApiError> {
    let origin = find_origin(&*state.store, &key).await?;
    let origin = state
        .store
        .rotate_origin_key(&actor, origin.id, body.public_key)
        .await?;
    Ok(Json(origin.into()))
}

/// The edges serving an origin (the seeds' `GET /origins/{id}/edge-nodes`).
pub(super) async fn edges(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<Vec<EdgeView>>, ApiError> {
    let origin = find_origin(&*state.store, &key).await?;
    let assignments = state
        .store
        .list_assignments(AssignmentFilter::default())
        .await?;
    let origins = state.store.list_origins().await?;
    let mut views = Vec::new();
    for edge in state.store.list_edges().await? {
        if assignments
            .iter()
            .any(|a| a.edge_id == edge.id && a.origin_id == origin.id)
        {
            views.push(EdgeView::new(edge, &assignments, &origins));
        }
    }
    Ok(Json(views))
}
