//! `/api/v1/routes`: host names to origin services.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{ApiJson, Caller};
use super::{find_origin, find_route, find_service_in, ApiError, ApiState};
use crate::store::{
    HostPattern, Id, NewRoute, Origin, Route, RouteLimits, RouteUpdate, Service, Store,
};

/// A route as the API shows it, with its target's names.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RouteView {
    /// The stored route.
    #[serde(flatten)]
    pub route: Route,
    /// The origin's name.
    pub origin: String,
    /// The service's name.
    pub service: String,
    /// The service's tunnel port.
    pub port: u16,
}

fn view(route: Route, origins: &[Origin], services: &[Service]) -> RouteView {
    let origin = origins
        .iter()
        .find(|o| o.id == route.origin_id)
        .map(|o| o.name.clone())
        .unwrap_or_default();
    let (service, port) = services
        .iter()
        .find(|s| s.id == route.service_id)
        .map(|s| (s.name.clone(), s.port))
        .unwrap_or_default();
    RouteView {
        route,
        origin,
        service,
        port,
    }
}

async fn view_one(store: &dyn Store, route: Route) -> Result<RouteView, ApiError> {
    let origin = store.get_origin(route.origin_id).await?;
    let service = store.get_service(route.service_id).await?;
    Ok(view(route, &[origin], &[service]))
}

/// Body of `POST /routes`: the target is `service_id`, or `origin` (id or name) and `service`
/// (id or name within the origin).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCreate {
    /// Host name, exact or `*.` wildcard.
    pub hostname: HostPattern,
    /// Further host names.
    #[serde(default)]
    pub aliases: Vec<HostPattern>,
    /// Target service id.
    #[serde(default)]
    pub service_id: Option<Id>,
    /// Target origin (id or name), with `service`.
    #[serde(default)]
    pub origin: Option<String>,
    /// Target service (id or name within `origin`).
    #[serde(default)]
    pub service: Option<String>,
    /// Per-route limits (`rate`, `burst`, `max_body_bytes`, `allow`, `deny`); unset ones take
    /// the edge's `[limits]` defaults.
    #[serde(default)]
    pub limits: RouteLimits,
}

/// Body of `PATCH /routes/{route}`; absent fields are unchanged. A new target is `service_id`,
/// or `service` (with `origin`, or within the route's current origin).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePatch {
    /// New host name.
    #[serde(default)]
    pub hostname: Option<HostPattern>,
    /// Replaces the aliases.
    #[serde(default)]
    pub aliases: Option<Vec<HostPattern>>,
    /// New target service id.
    #[serde(default)]
    pub service_id: Option<Id>,
    /// New target origin (id or name), with `service`.
    #[serde(default)]
    pub origin: Option<String>,
    /// New target service (id or name).
    #[serde(default)]
    pub service: Option<String>,
    /// Replaces the limits (the whole object).
    #[serde(default)]
    pub limits: Option<RouteLimits>,
}

/// Resolves `origin` + `service` names to a service id; unknown ones are 422 naming the field.
pub(super) async fn target(
    store: &dyn Store,
    origin: Option<&str>,
    current_origin: Option<Id>,
    service: &str,
) -> Result<Id, ApiError> {
    let origin = match (origin, current_origin) {
        (Some(key), _) => find_origin(store, key).await.map_err(|e| {
            if e.status == StatusCode::NOT_FOUND {
                ApiError::invalid("origin", format!("unknown origin {key:?}"))
            } else {
                e
            }
        })?,
        (None, Some(id)) => store.get_origin(id).await?,
        (None, None) => {
            return Err(ApiError::invalid(
                "origin",
                "name the service's origin (or give service_id)",
            ))
        }
    };
    let service = find_service_in(store, &origin, service)
        .await
        .map_err(|e| {
            if e.status == StatusCode::NOT_FOUND {
                ApiError::invalid(
                    "service",
                    format!("origin {:?} has no service {service:?}", origin.name),
                )
            } else {
                e
            }
        })?;
    Ok(service.id)
}

pub(super) async fn list(State(state): State<ApiState>) -> Result<Json<Vec<RouteView>>, ApiError> {
    let origins = state.store.list_origins().await?;
    let services = state.store.list_services(None).await?;
    let routes = state.store.list_routes().await?;
    Ok(Json(
        routes
            .into_iter()
            .map(|r| view(r, &origins, &services))
            .collect(),
    ))
}

pub(super) async fn create(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    ApiJson(body): ApiJson<RouteCreate>,
) -> Result<(StatusCode, Json<RouteView>), ApiError> {
    let service_id = match (body.service_id, &body.service) {
        (Some(id), _) => id,
        (None, Some(service)) => {
            target(&*state.store, body.origin.as_deref(), None, service).await?
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "service_id",
                "give the target as service_id, or as origin and service",
            ))
        }
    };
    let route = state
        .store
        .create_route(
            &actor,
            NewRoute {
                hostname: body.hostname,
                aliases: body.aliases,
                service_id,
                limits: body.limits,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(view_one(&*state.store, route).await?),
    ))
}

pub(super) async fn get(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<RouteView>, ApiError> {
    let route = find_route(&*state.store, &key).await?;
    Ok(Json(view_one(&*state.store, route).await?))
}

pub(super) async fn update(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<RoutePatch>,
) -> Result<Json<RouteView>, ApiError> {
    let route = find_route(&*state.store, &key).await?;
    let service_id = match (body.service_id, &body.service) {
        (Some(id), _) => Some(id),
        (None, Some(service)) => Some(
            target(
                &*state.store,
                body.origin.as_deref(),
                Some(route.origin_id),
                service,
            )
            .await?,
        ),
        (None, None) if body.origin.is_some() => {
            return Err(ApiError::invalid(
                "service",
                "a new origin needs the service to route to",
            ))
        }
        (None, None) => None,
    };
    let route = state
        .store
        .update_route(
            &actor,
            route.id,
            RouteUpdate {
                hostname: body.hostname,
                aliases: body.aliases,
                service_id,
                limits: body.limits,
            },
        )
        .await?;
    Ok(Json(view_one(&*state.store, route).await?))
}

pub(super) async fn delete(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    let route = find_route(&*state.store, &key).await?;
    state.store.delete_route(&actor, route.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
