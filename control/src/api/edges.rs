//! `/api/v1/edge-nodes`: public VPSes running `kokoa-edge`, and which origins each serves.

use std::net::{IpAddr, Ipv4Addr};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{ApiJson, Caller};
use super::origins::RotateKey;
use super::{find_edge, find_origin, ApiError, ApiState};
use crate::store::{
    Assignment, AssignmentFilter, Edge, EdgeLimits, EdgeUpdate, Endpoint, Id, Name, NewEdge,
    Origin, PublicKey, Store, TunnelSettings,
};

/// One origin an edge serves, with the edge's address toward it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EdgeOrigin {
    /// The origin's id.
    pub origin_id: Id,
    /// The origin's name.
    pub origin: String,
    /// The edge's netstack address toward the origin (`10.100.X.10..=254`).
    pub address: Ipv4Addr,
    /// The origin's address (`10.100.X.1`).
    pub origin_address: Ipv4Addr,
}

/// An edge as the API shows it: the stored edge plus the origins it serves.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EdgeView {
    /// The stored edge.
    #[serde(flatten)]
    pub edge: Edge,
    /// The origins it serves.
    pub origins: Vec<EdgeOrigin>,
}

impl EdgeView {
    /// `edge` with its entries of `assignments`, named from `origins`.
    pub fn new(edge: Edge, assignments: &[Assignment], origins: &[Origin]) -> Self {
        let served = assignments
            .iter()
            .filter(|a| a.edge_id == edge.id)
            .map(|a| EdgeOrigin {
                origin_id: a.origin_id,
                origin: origins
                    .iter()
                    .find(|o| o.id == a.origin_id)
                    .map(|o| o.name.clone())
                    .unwrap_or_default(),
                address: a.address,
                origin_address: a.origin_address,
            })
            .collect();
        EdgeView {
            edge,
            origins: served,
        }
    }
}

/// `edge` as the API shows it (with the origins it serves).
pub(super) async fn view_of(store: &dyn Store, edge: Edge) -> Result<EdgeView, ApiError> {
    view(store, edge).await
}

async fn view(store: &dyn Store, edge: Edge) -> Result<EdgeView, ApiError> {
    let assignments = store
        .list_assignments(AssignmentFilter {
            edge_id: Some(edge.id),
            origin_id: None,
        })
        .await?;
    let origins = store.list_origins().await?;
    Ok(EdgeView::new(edge, &assignments, &origins))
}

/// Body of `POST /edge-nodes`: [`NewEdge`] with origins by id or name.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeCreate {
    /// Unique name.
    pub name: Name,
    /// Public address (what DNS points at).
    #[serde(default)]
    pub public_ip: Option<IpAddr>,
    /// WireGuard endpoint origins dial (`host:port`).
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
    /// VPS provider.
    #[serde(default)]
    pub provider: Option<String>,
    /// Provider region.
    #[serde(default)]
    pub region: Option<String>,
    /// The admin listener (`host:port`) control probes `/healthz` on, when it can reach it.
    #[serde(default)]
    pub admin_address: Option<Endpoint>,
    /// The operator's own public key; absent: control generates a key pair.
    #[serde(default)]
    pub public_key: Option<PublicKey>,
    /// Origins (ids or names) the edge serves from the start.
    #[serde(default)]
    pub origins: Vec<String>,
    /// `[limits]` defaults to send the edge (the keys of its file's `[limits]` table; unset
    /// keys take the model's defaults); absent: the edge keeps its file's.
    #[serde(default)]
    pub limits: Option<EdgeLimits>,
    /// Tunnel settings (`mtu`, `tcp_buffer`) to send the edge; absent: it keeps its file's.
    #[serde(default)]
    pub tunnel: Option<TunnelSettings>,
}

pub(super) async fn list(State(state): State<ApiState>) -> Result<Json<Vec<EdgeView>>, ApiError> {
    let assignments = state
        .store
        .list_assignments(AssignmentFilter::default())
        .await?;
    let origins = state.store.list_origins().await?;
    let edges = state.store.list_edges().await?;
    Ok(Json(
        edges
            .into_iter()
            .map(|edge| EdgeView::new(edge, &assignments, &origins))
            .collect(),
    ))
}

pub(super) async fn create(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    ApiJson(body): ApiJson<EdgeCreate>,
) -> Result<(StatusCode, Json<EdgeView>), ApiError> {
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
    let new = NewEdge {
        name: body.name,
        public_ip: body.public_ip,
        endpoint: body.endpoint,
        provider: body.provider,
        region: body.region,
        admin_address: body.admin_address,
        public_key: body.public_key,
        origins,
        limits: body.limits,
        tunnel: body.tunnel,
    };
    let edge = state.store.create_edge(&actor, new).await?;
    Ok((StatusCode::CREATED, Json(view(&*state.store, edge).await?)))
}

pub(super) async fn get(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<EdgeView>, ApiError> {
    let edge = find_edge(&*state.store, &key).await?;
    Ok(Json(view(&*state.store, edge).await?))
}

pub(super) async fn update(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
    ApiJson(update): ApiJson<EdgeUpdate>,
) -> Result<Json<EdgeView>, ApiError> {
    let edge = find_edge(&*state.store, &key).await?;
    let edge = state.store.update_edge(&actor, edge.id, update).await?;
    Ok(Json(view(&*state.store, edge).await?))
}

pub(super) async fn delete(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    let edge = find_edge(&*state.store, &key).await?;
    state.store.delete_edge(&actor, edge.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn rotate_key(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<RotateKey>,
) -> Result<Json<EdgeView>, ApiError> {
    let edge = find_edge(&*state.store, &key).await?;
    let edge = state
        .store
        .rotate_edge_key(&actor, edge.id, body.public_key)
        .await?;
    Ok(Json(view(&*state.store, edge).await?))
}

pub(super) async fn assignments(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<Vec<EdgeOrigin>>, ApiError> {
    let edge = find_edge(&*state.store, &key).await?;
    Ok(Json(view(&*state.store, edge).await?.origins))
}

pub(super) async fn assign(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path((edge, origin)): Path<(String, String)>,
) -> Result<(StatusCode, Json<EdgeOrigin>), ApiError> {
    let edge = find_edge(&*state.store, &edge).await?;
    let origin = find_origin(&*state.store, &origin).await?;
    let assignment = state.store.assign_edge(&actor, edge.id, origin.id).await?;
    Ok((
        StatusCode::CREATED,
        Json(EdgeOrigin {
            origin_id: origin.id,
            origin: origin.name,
            address: assignment.address,
            origin_address: assignment.origin_address,
        }),
    ))
}

pub(super) async fn unassign(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path((edge, origin)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let edge = find_edge(&*state.store, &edge).await?;
    let origin = find_origin(&*state.store, &origin).await?;
    state
        .store
        .unassign_edge(&actor, edge.id, origin.id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
