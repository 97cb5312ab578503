//! `/api/v1/origins/{origin}/services` and `/api/v1/services`: what origins publish into the
//! tunnel.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{ApiJson, ApiQuery, Caller};
use super::{find_origin, find_service_in, parse_id, ApiError, ApiState};
use crate::store::{NewService, Origin, Service, ServiceUpdate};

/// A service as the API shows it, with its origin's name.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceView {
    /// The stored service.
    #[serde(flatten)]
    pub service: Service,
    /// The origin's name.
    pub origin: String,
}

fn view(service: Service, origins: &[Origin]) -> ServiceView {
    let origin = origins
        .iter()
        .find(|o| o.id == service.origin_id)
        .map(|o| o.name.clone())
        .unwrap_or_default();
    ServiceView { service, origin }
}

/// `GET /services` filter.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ServiceFilter {
    /// Only this origin's (id or name).
    #[serde(default)]
    origin: Option<String>,
}

pub(super) async fn list(
    State(state): State<ApiState>,
    ApiQuery(filter): ApiQuery<ServiceFilter>,
) -> Result<Json<Vec<ServiceView>>, ApiError> {
    let origin_id = match &filter.origin {
        Some(key) => Some(find_origin(&*state.store, key).await?.id),
        None => None,
    };
    let origins = state.store.list_origins().await?;
    let services = state.store.list_services(origin_id).await?;
    Ok(Json(
        services.into_iter().map(|s| view(s, &origins)).collect(),
    ))
}

pub(super) async fn list_of_origin(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<Vec<ServiceView>>, ApiError> {
    let origin = find_origin(&*state.store, &key).await?;
    let services = state.store.list_services(Some(origin.id)).await?;
    let origins = [origin];
    Ok(Json(
        services.into_iter().map(|s| view(s, &origins)).collect(),
    ))
}

pub(super) async fn create(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
    ApiJson(new): ApiJson<NewService>,
) -> Result<(StatusCode, Json<ServiceView>), ApiError> {
    let origin = find_origin(&*state.store, &key).await?;
    let service = state.store.create_service(&actor, origin.id, new).await?;
    Ok((StatusCode::CREATED, Json(view(service, &[origin]))))
}

pub(super) async fn get_in_origin(
    State(state): State<ApiState>,
    Path((origin, service)): Path<(String, String)>,
) -> Result<Json<ServiceView>, ApiError> {
    let origin = find_origin(&*state.store, &origin).await?;
    let service = find_service_in(&*state.store, &origin, &service).await?;
    Ok(Json(view(service, &[origin])))
}

pub(super) async fn update_in_origin(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path((origin, service)): Path<(String, String)>,
    ApiJson(update): ApiJson<ServiceUpdate>,
) -> Result<Json<ServiceView>, ApiError> {
    let origin = find_origin(&*state.store, &origin).await?;
    let service = find_service_in(&*state.store, &origin, &service).await?;
    let service = state
        .store
        .update_service(&actor, service.id, update)
        .await?;
    Ok(Json(view(service, &[origin])))
}

pub(super) async fn delete_in_origin(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path((origin, service)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let origin = find_origin(&*state.store, &origin).await?;
    let service = find_service_in(&*state.store, &origin, &service).await?;
    state.store.delete_service(&actor, service.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn get(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<ServiceView>, ApiError> {
    let service = state.store.get_service(parse_id("service", &key)?).await?;
    let origin = state.store.get_origin(service.origin_id).await?;
    Ok(Json(view(service, &[origin])))
}

pub(super) async fn update(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
    ApiJson(update): ApiJson<ServiceUpdate>,
) -> Result<Json<ServiceView>, ApiError> {
    let id = parse_id("service", &key)?;
    let service = state.store.update_service(&actor, id, update).await?;
    let origin = state.store.get_origin(service.origin_id).await?;
    Ok(Json(view(service, &[origin])))
}

pub(super) async fn delete(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id("service", &key)?;
    state.store.delete_service(&actor, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
