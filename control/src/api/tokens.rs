//! Node enrollment tokens, API tokens and node bundles (which carry a fresh enrollment token).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{ApiJson, Caller};
use super::{find_edge, find_origin, parse_id, ApiError, ApiState};
use crate::bundle::{self, BundleNode};
use crate::store::{
    Actor, ApiToken, IssuedApiToken, IssuedNodeToken, NodeId, NodeToken, Role, Store,
};

/// How long an enrollment token is valid unless the request says otherwise.
pub const DEFAULT_ENROLLMENT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest enrollment token lifetime accepted.
pub const MAX_ENROLLMENT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Body of `POST .../tokens`.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct TokenRequest {
    /// Lifetime in seconds (enrollment tokens: default 86400, at most 30 days).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

fn enrollment_ttl(request: &TokenRequest) -> Result<Duration, ApiError> {
    match request.ttl_seconds {
        None => Ok(DEFAULT_ENROLLMENT_TTL),
        Some(0) => Err(ApiError::invalid("ttl_seconds", "must be at least 1")),
        Some(s) if Duration::from_secs(s) > MAX_ENROLLMENT_TTL => Err(ApiError::invalid(
            "ttl_seconds",
            format!("at most {} (30 days)", MAX_ENROLLMENT_TTL.as_secs()),
        )),
        Some(s) => Ok(Duration::from_secs(s)),
    }
}

async fn create_enrollment(
    store: &dyn Store,
    actor: &Actor,
    node: NodeId,
    request: &TokenRequest,
) -> Result<(StatusCode, Json<IssuedNodeToken>), ApiError> {
    let ttl = enrollment_ttl(request)?;
    let issued = store.create_enrollment_token(actor, node, ttl).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

pub(super) async fn create_origin(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<(StatusCode, Json<IssuedNodeToken>), ApiError> {
    let origin = find_origin(&*state.store, &key).await?;
    create_enrollment(&*state.store, &actor, NodeId::Origin(origin.id), &request).await
}

pub(super) async fn create_edge(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<(StatusCode, Json<IssuedNodeToken>), ApiError> {
    let edge = find_edge(&*state.store, &key).await?;
    create_enrollment(&*state.store, &actor, NodeId::Edge(edge.id), &request).await
}

pub(super) async fn list_origin(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<Vec<NodeToken>>, ApiError> {
    let origin = find_origin(&*state.store, &key).await?;
    Ok(Json(
        state
            .store
            .list_node_tokens(Some(NodeId::Origin(origin.id)))
            .await?,
    ))
}

pub(super) async fn list_edge(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<Vec<NodeToken>>, ApiError> {
    let edge = find_edge(&*state.store, &key).await?;
    Ok(Json(
        state
            .store
            .list_node_tokens(Some(NodeId::Edge(edge.id)))
            .await?,
    ))
}

pub(super) async fn list_all(
    State(state): State<ApiState>,
) -> Result<Json<Vec<NodeToken>>, ApiError> {
    Ok(Json(state.store.list_node_tokens(None).await?))
}

pub(super) async fn revoke(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
) -> Result<Json<NodeToken>, ApiError> {
    let id = parse_id("node token", &key)?;
    Ok(Json(state.store.revoke_node_token(&actor, id).await?))
}

/// Body of `POST /api-tokens`.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ApiTokenRequest {
    /// Unique name; changes made with the token are recorded as `api:<name>`.
    pub name: String,
    /// Lifetime in seconds; absent: never expires.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// What requests with it may do; absent: `admin`.
    #[serde(default)]
    pub role: Option<Role>,
}

pub(super) async fn list_api(
    State(state): State<ApiState>,
) -> Result<Json<Vec<ApiToken>>, ApiError> {
    Ok(Json(state.store.list_api_tokens().await?))
}

pub(super) async fn create_api(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    ApiJson(request): ApiJson<ApiTokenRequest>,
) -> Result<(StatusCode, Json<IssuedApiToken>), ApiError> {
    if request.ttl_seconds == Some(0) {
        return Err(ApiError::invalid("ttl_seconds", "must be at least 1"));
    }
    let ttl = request.ttl_seconds.map(Duration::from_secs);
    let issued = state
        .store
        .create_api_token_with_role(&actor, &request.name, ttl, request.role.unwrap_or_default())
        .await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

pub(super) async fn revoke_api(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
) -> Result<Json<ApiToken>, ApiError> {
    let id = parse_id("API token", &key)?;
    Ok(Json(state.store.revoke_api_token(&actor, id).await?))
}

// ---- bundles ------------------------------------------------------------------------------

fn bundle_response(file_name: &str, bytes: Vec<u8>) -> Response {
    let mut response = (StatusCode::OK, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/gzip"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn bundle_for(
    state: &ApiState,
    actor: &Actor,
    node: BundleNode,
    id: NodeId,
) -> Result<Response, ApiError> {
    let settings = state.bundle.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "bundles need control's gRPC URL and CA; this API runs without them",
        )
    })?;
    let issued = state
        .store
        .create_enrollment_token(actor, id, settings.enrollment_ttl)
        .await?;
    let file_name = format!("kokoa-{}-{}.tar.gz", node.kind(), node.name());
    let bytes =
        bundle::build(settings, &node, issued.secret.expose()).map_err(ApiError::internal)?;
    Ok(bundle_response(&file_name, bytes))
}

pub(super) async fn origin_bundle(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let origin = find_origin(&*state.store, &key).await?;
    let id = NodeId::Origin(origin.id);
    bundle_for(&state, &actor, BundleNode::Origin(origin), id).await
}

pub(super) async fn edge_bundle(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    let edge = find_edge(&*state.store, &key).await?;
    let id = NodeId::Edge(edge.id);
    bundle_for(&state, &actor, BundleNode::Edge(edge), id).await
}
