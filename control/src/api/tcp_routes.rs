//! `/api/v1/tcp-routes`: raw TCP routes, a public port on every edge serving an origin
//! forwarded to one of its services as a byte stream. A TCP route is addressed by id or by its
//! public port.

use std::net::IpAddr;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::extract::{ApiJson, Caller};
use super::routes::target;
use super::{ApiError, ApiState};
use crate::store::model::double_option;
use crate::store::{
    Id, Network, NewTcpRoute, Origin, Port, ProxyProtocol, Service, Store, TcpRoute, TcpRouteUpdate,
};

/// A TCP route as the API shows it, with its target's names.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TcpRouteView {
    /// The stored route.
    #[serde(flatten)]
    pub route: TcpRoute,
    /// The origin's name.
    pub origin: String,
    /// The service's name.
    pub service: String,
    /// The service's tunnel port.
    pub port: u16,
}

fn view(route: TcpRoute, origins: &[Origin], services: &[Service]) -> TcpRouteView {
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
    TcpRouteView {
        route,
        origin,
        service,
        port,
    }
}

async fn view_one(store: &dyn Store, route: TcpRoute) -> Result<TcpRouteView, ApiError> {
    let origin = store.get_origin(route.origin_id).await?;
    let service = store.get_service(route.service_id).await?;
    Ok(view(route, &[origin], &[service]))
}

/// A TCP route by id or public port.
async fn find(store: &dyn Store, key: &str) -> Result<TcpRoute, ApiError> {
    if let Ok(id) = uuid::Uuid::parse_str(key) {
        return Ok(store.get_tcp_route(id).await?);
    }
    match key.parse::<u16>() {
        Ok(port) => Ok(store.tcp_route_by_port(port).await?),
        Err(_) => Err(ApiError::not_found(format!(
            "TCP route {key:?} not found (give its id or its port)"
        ))),
    }
}

/// Body of `POST /tcp-routes`: the target is `service_id`, or `origin` (id or name) and
/// `service` (id or name within the origin).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRouteCreate {
    /// The public port on the edges.
    pub listen_port: Port,
    /// The address the edges listen on; absent: each edge's HTTPS listener address.
    #[serde(default)]
    pub listen_ip: Option<IpAddr>,
    /// Target service id.
    #[serde(default)]
    pub service_id: Option<Id>,
    /// Target origin (id or name), with `service`.
    #[serde(default)]
    pub origin: Option<String>,
    /// Target service (id or name within `origin`).
    #[serde(default)]
    pub service: Option<String>,
    /// `v2`: the app first gets a PROXY protocol v2 header with the client's address; `none`
    /// (the default).
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// Only clients in these networks may connect.
    #[serde(default)]
    pub allow: Vec<Network>,
    /// Clients in these networks are refused (deny wins).
    #[serde(default)]
    pub deny: Vec<Network>,
}

/// Body of `PATCH /tcp-routes/{route}`; absent fields are unchanged.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRoutePatch {
    /// New public port.
    #[serde(default)]
    pub listen_port: Option<Port>,
    /// New listen address, or `null` for each edge's HTTPS listener address.
    #[serde(default, with = "double_option")]
    pub listen_ip: Option<Option<IpAddr>>,
    /// New target service id.
    #[serde(default)]
    pub service_id: Option<Id>,
    /// New target origin (id or name), with `service`.
    #[serde(default)]
    pub origin: Option<String>,
    /// New target service (id or name).
    #[serde(default)]
    pub service: Option<String>,
    /// New PROXY protocol setting.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Replaces the allowed networks.
    #[serde(default)]
    pub allow: Option<Vec<Network>>,
    /// Replaces the refused networks.
    #[serde(default)]
    pub deny: Option<Vec<Network>>,
}

pub(super) async fn list(
    State(state): State<ApiState>,
) -> Result<Json<Vec<TcpRouteView>>, ApiError> {
    let origins = state.store.list_origins().await?;
    let services = state.store.list_services(None).await?;
    let routes = state.store.list_tcp_routes().await?;
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
    ApiJson(body): ApiJson<TcpRouteCreate>,
) -> Result<(StatusCode, Json<TcpRouteView>), ApiError> {
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
        .create_tcp_route(
            &actor,
            NewTcpRoute {
                listen_port: body.listen_port,
                listen_ip: body.listen_ip,
                service_id,
                proxy_protocol: body.proxy_protocol,
                allow: body.allow,
                deny: body.deny,
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
) -> Result<Json<TcpRouteView>, ApiError> {
    let route = find(&*state.store, &key).await?;
    Ok(Json(view_one(&*state.store, route).await?))
}

pub(super) async fn update(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
    ApiJson(body): ApiJson<TcpRoutePatch>,
) -> Result<Json<TcpRouteView>, ApiError> {
    let route = find(&*state.store, &key).await?;
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
                "a new origin needs the service to forward to",
            ))
        }
        (None, None) => None,
    };
    let route = state
        .store
        .update_tcp_route(
            &actor,
            route.id,
            TcpRouteUpdate {
                listen_port: body.listen_port,
                listen_ip: body.listen_ip,
                service_id,
                proxy_protocol: body.proxy_protocol,
                allow: body.allow,
                deny: body.deny,
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
    let route = find(&*state.store, &key).await?;
    state.store.delete_tcp_route(&actor, route.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
