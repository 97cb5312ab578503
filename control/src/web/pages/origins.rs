//! `/origins` and `/origins/{origin}`: origins and their services (create, edit, delete, rotate
//! key, download a node bundle).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::overview::state_word;
use super::{ago, render, seg, Layout};
use crate::api::{
    ApiError, EdgeView, NodeDetail, OriginView, RouteView, ServiceView, StatusSummary,
};
use crate::web::form::FormState;
use crate::web::session::Viewer;
use crate::web::Web;

/// An origin in the list.
pub struct Row {
    name: String,
    href: String,
    network: String,
    state: String,
    heartbeat: String,
    services: usize,
    managed_key: bool,
}

#[derive(Template)]
#[template(path = "origins.html")]
struct ListPage {
    layout: Layout,
    forms: FormState,
    origins: Vec<Row>,
}

/// A service on the origin's page.
pub struct ServiceRow {
    name: String,
    port: u16,
    protocol: String,
    local_address: String,
    health_path: String,
    /// `up`, `down: why`, or empty when the origin has not reported it (its probes).
    health: String,
    routes: String,
    api: String,
    form: String,
}

#[derive(Template)]
#[template(path = "origin.html")]
struct DetailPage {
    layout: Layout,
    forms: FormState,
    name: String,
    api: String,
    rotate: String,
    services_api: String,
    href: String,
    network: String,
    address: String,
    public_key: String,
    managed_key: bool,
    state: String,
    heartbeat: String,
    version: String,
    nack: Option<String>,
    services: Vec<ServiceRow>,
    edges: Vec<String>,
}

/// Renders the list with `forms`.
pub async fn render_list(
    web: &Web,
    viewer: &Viewer,
    forms: FormState,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let p = &viewer.principal;
    let origins: Vec<OriginView> = web.get(p, "/origins").await?;
    let services: Vec<ServiceView> = web.get(p, "/services").await?;
    let summary: StatusSummary = web.get(p, "/status").await?;
    let rows = origins
        .iter()
        .map(|o| {
            let node = summary.nodes.iter().find(|n| n.id == o.origin.id);
            Row {
                name: o.origin.name.clone(),
                href: format!("/origins/{}", seg(&o.origin.name)),
                network: o.network.to_string(),
                state: state_word(
                    o.origin.state.status.as_str(),
                    node.and_then(|n| n.connected),
                ),
                heartbeat: ago(node.and_then(|n| n.last_heartbeat)),
                services: services
                    .iter()
                    .filter(|s| s.service.origin_id == o.origin.id)
                    .count(),
                managed_key: o.origin.managed_key,
            }
        })
        .collect();
    let layout = Layout::new(viewer, "Origins", "origins");
    Ok(render(
        web,
        status,
        &layout.clone(),
        &ListPage {
            layout,
            forms,
            origins: rows,
        },
    ))
}

/// `GET /origins`.
pub async fn list(State(web): State<Web>, headers: HeaderMap) -> Response {
    super::show(&web, &headers, async |viewer| {
        render_list(&web, viewer, FormState::default(), StatusCode::OK).await
    })
    .await
}

/// Renders one origin's page with `forms`.
pub async fn render_detail(
    web: &Web,
    viewer: &Viewer,
    key: &str,
    forms: FormState,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let p = &viewer.principal;
    let path = format!("/origins/{}", seg(key));
    let origin: OriginView = web.get(p, &path).await?;
    let services: Vec<ServiceView> = web.get(p, &format!("{path}/services")).await?;
    let edges: Vec<EdgeView> = web.get(p, &format!("{path}/edge-nodes")).await?;
    let routes: Vec<RouteView> = web.get(p, "/routes").await?;
    let summary: StatusSummary = web.get(p, "/status").await?;
    let detail: NodeDetail = web.get(p, &format!("{path}/status")).await?;
    let reported = detail.heartbeat.map(|h| h.services).unwrap_or_default();
    let health = |name: &str| {
        reported
            .iter()
            .find(|s| s.name == name)
            .map(|s| match (&s.error, s.healthy) {
                (_, true) => "up".to_owned(),
                (Some(error), false) => format!("down: {error}"),
                (None, false) => "down".to_owned(),
            })
            .unwrap_or_default()
    };
    let node = summary.nodes.iter().find(|n| n.id == origin.origin.id);
    let path = format!("/origins/{}", seg(&origin.origin.name));
    let services = services
        .iter()
        .map(|s| ServiceRow {
            name: s.service.name.clone(),
            port: s.service.port,
            protocol: s.service.protocol.as_str().to_string(),
            local_address: s.service.local_address.clone(),
            health_path: s.service.health_path.clone().unwrap_or_default(),
            health: health(&s.service.name),
            routes: routes
                .iter()
                .filter(|r| r.route.service_id == s.service.id)
                .map(|r| r.route.hostname.clone())
                .collect::<Vec<_>>()
                .join(", "),
            api: format!("{path}/services/{}", seg(&s.service.name)),
            form: format!("service-{}", s.service.name),
        })
        .collect();
    let layout = Layout::new(viewer, format!("Origin {}", origin.origin.name), "origins");
    let page = DetailPage {
        layout: layout.clone(),
        forms,
        href: path.clone(),
        rotate: format!("{path}/rotate-key"),
        services_api: format!("{path}/services"),
        api: path.clone(),
        name: origin.origin.name.clone(),
        network: origin.network.to_string(),
        address: origin.address.to_string(),
        public_key: origin.origin.public_key.to_string(),
        managed_key: origin.origin.managed_key,
        state: state_word(
            origin.origin.state.status.as_str(),
            node.and_then(|n| n.connected),
        ),
        heartbeat: ago(node.and_then(|n| n.last_heartbeat)),
        version: node
            .and_then(|n| n.applied_version)
            .map(|v| format!("v{v}"))
            .unwrap_or_else(|| "none".into()),
        nack: node.and_then(|n| n.nack.as_ref()).map(super::nack),
        services,
        edges: edges.iter().map(|e| e.edge.name.clone()).collect(),
    };
    Ok(render(web, status, &layout, &page))
}

/// `GET /origins/{origin}`.
pub async fn detail(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Response {
    super::show(&web, &headers, async |viewer| {
        render_detail(&web, viewer, &key, FormState::default(), StatusCode::OK).await
    })
    .await
}
