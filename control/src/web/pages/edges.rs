//! `/edges` and `/edges/{edge}`: edges with their state, heartbeat figures, tunnel peers,
//! applied config and last NACK, and health history as a chart; add, edit, assign, unassign,
//! rotate key, replace (through control's provisioner), download a bundle, remove.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::overview::state_word;
use super::{ago, bytes, render, seg, Layout};
use crate::api::{ApiError, EdgeView, OriginView, StatusSummary};
use crate::store::HealthCheck;
use crate::web::chart;
use crate::web::form::FormState;
use crate::web::session::Viewer;
use crate::web::Web;

/// An edge in the list.
pub struct Row {
    name: String,
    href: String,
    state: String,
    endpoint: String,
    public_ip: String,
    origins: String,
    heartbeat: String,
}

#[derive(Template)]
#[template(path = "edges.html")]
struct ListPage {
    layout: Layout,
    forms: FormState,
    edges: Vec<Row>,
    origins: Vec<String>,
}

/// A tunnel peer from the last heartbeat.
pub struct Peer {
    origin: String,
    endpoint: String,
    up: bool,
    handshake: String,
    rx: String,
    tx: String,
    streams: String,
}

/// An origin the edge serves (or could).
pub struct Served {
    name: String,
    address: String,
    api: String,
}

#[derive(Template)]
#[template(path = "edge.html")]
struct DetailPage {
    layout: Layout,
    forms: FormState,
    name: String,
    api: String,
    rotate: String,
    /// `POST` here replaces the edge (a new one through control's provisioner).
    replace: String,
    href: String,
    state: String,
    endpoint: String,
    public_ip: String,
    provider: String,
    public_key: String,
    managed_key: bool,
    heartbeat: String,
    figures: Vec<(String, String)>,
    peers: Vec<Peer>,
    version: String,
    nack: Option<String>,
    served: Vec<Served>,
    unserved: Vec<Served>,
    chart: String,
    checks: usize,
    failures: usize,
}

/// Renders the list with `forms`.
pub async fn render_list(
    web: &Web,
    viewer: &Viewer,
    forms: FormState,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let p = &viewer.principal;
    let edges: Vec<EdgeView> = web.get(p, "/edge-nodes").await?;
    let origins: Vec<OriginView> = web.get(p, "/origins").await?;
    let summary: StatusSummary = web.get(p, "/status").await?;
    let rows = edges
        .iter()
        .map(|e| {
            let node = summary.nodes.iter().find(|n| n.id == e.edge.id);
            Row {
                name: e.edge.name.clone(),
                href: format!("/edges/{}", seg(&e.edge.name)),
                state: state_word(e.edge.state.status.as_str(), node.and_then(|n| n.connected)),
                endpoint: e.edge.endpoint.clone().unwrap_or_default(),
                public_ip: e
                    .edge
                    .public_ip
                    .map(|ip| ip.to_string())
                    .unwrap_or_default(),
                origins: e
                    .origins
                    .iter()
                    .map(|o| o.origin.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
                heartbeat: ago(node.and_then(|n| n.last_heartbeat)),
            }
        })
        .collect();
    let layout = Layout::new(viewer, "Edges", "edges");
    let page = ListPage {
        layout: layout.clone(),
        forms,
        edges: rows,
        origins: origins.iter().map(|o| o.origin.name.clone()).collect(),
    };
    Ok(render(web, status, &layout, &page))
}

/// `GET /edges`.
pub async fn list(State(web): State<Web>, headers: HeaderMap) -> Response {
    super::show(&web, &headers, async |viewer| {
        render_list(&web, viewer, FormState::default(), StatusCode::OK).await
    })
    .await
}

fn figure(hb: &Value, key: &str) -> Option<f64> {
    hb.get(key).and_then(Value::as_f64)
}

/// Renders one edge's page with `forms`.
pub async fn render_detail(
    web: &Web,
    viewer: &Viewer,
    key: &str,
    forms: FormState,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let p = &viewer.principal;
    let path = format!("/edge-nodes/{}", seg(key));
    let edge: EdgeView = web.get(p, &path).await?;
    let history: Vec<HealthCheck> = web
        .get(p, &format!("{path}/health-history?limit=120"))
        .await?;
    let origins: Vec<OriginView> = web.get(p, "/origins").await?;
    let summary: StatusSummary = web.get(p, "/status").await?;
    let node = summary.nodes.iter().find(|n| n.id == edge.edge.id);
    let path = format!("/edge-nodes/{}", seg(&edge.edge.name));
    let href = format!("/edges/{}", seg(&edge.edge.name));
    let hb = edge.edge.state.heartbeat.clone().unwrap_or(Value::Null);
    let mut figures = Vec::new();
    if let Some(n) = figure(&hb, "active_connections") {
        figures.push(("Active connections".into(), format!("{n:.0}")));
    }
    if let Some(n) = figure(&hb, "requests_per_second") {
        figures.push(("Requests/s".into(), format!("{n:.1}")));
    }
    if let Some(n) = figure(&hb, "errors_per_second") {
        figures.push(("Errors/s".into(), format!("{n:.2}")));
    }
    if let Some(n) = figure(&hb, "cpu_cores") {
        figures.push(("CPU".into(), format!("{:.0}% of a core", n * 100.0)));
    }
    if let Some(n) = hb.get("memory_bytes").and_then(Value::as_u64) {
        figures.push(("Memory".into(), bytes(n)));
    }
    if let Some(n) = hb.get("uptime_seconds").and_then(Value::as_u64) {
        figures.push((
            "Uptime".into(),
            format!("{}h {}m", n / 3600, (n % 3600) / 60),
        ));
    }
    let peers = hb
        .get("peers")
        .and_then(Value::as_array)
        .map(|peers| {
            peers
                .iter()
                .map(|peer| {
                    let key = peer["public_key"].as_str().unwrap_or_default();
                    Peer {
                        origin: origins
                            .iter()
                            .find(|o| o.origin.public_key.to_string() == key)
                            .map(|o| o.origin.name.clone())
                            .unwrap_or_else(|| key.chars().take(12).collect()),
                        endpoint: peer["endpoint"].as_str().unwrap_or("–").to_string(),
                        up: peer["up"].as_bool().unwrap_or(false),
                        handshake: peer["last_handshake_age_ms"]
                            .as_u64()
                            .map(|ms| format!("{}s ago", ms / 1000))
                            .unwrap_or_else(|| "never".into()),
                        rx: bytes(peer["rx_bytes"].as_u64().unwrap_or(0)),
                        tx: bytes(peer["tx_bytes"].as_u64().unwrap_or(0)),
                        streams: peer["active_streams"].as_u64().unwrap_or(0).to_string(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let served: Vec<Served> = edge
        .origins
        .iter()
        .map(|o| Served {
            name: o.origin.clone(),
            address: o.address.to_string(),
            api: format!("{path}/origins/{}", seg(&o.origin)),
        })
        .collect();
    let unserved = origins
        .iter()
        .filter(|o| !edge.origins.iter().any(|s| s.origin_id == o.origin.id))
        .map(|o| Served {
            name: o.origin.name.clone(),
            address: String::new(),
            api: format!("{path}/origins/{}", seg(&o.origin.name)),
        })
        .collect();
    let layout = Layout::new(viewer, format!("Edge {}", edge.edge.name), "edges");
    let page = DetailPage {
        layout: layout.clone(),
        forms,
        name: edge.edge.name.clone(),
        rotate: format!("{path}/rotate-key"),
        replace: format!("{path}/replace"),
        api: path.clone(),
        href,
        state: state_word(
            edge.edge.state.status.as_str(),
            node.and_then(|n| n.connected),
        ),
        endpoint: edge.edge.endpoint.clone().unwrap_or_default(),
        public_ip: edge
            .edge
            .public_ip
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        provider: [edge.edge.provider.clone(), edge.edge.region.clone()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" / "),
        public_key: edge.edge.public_key.to_string(),
        managed_key: edge.edge.managed_key,
        heartbeat: ago(node.and_then(|n| n.last_heartbeat)),
        figures,
        peers,
        version: match node.and_then(|n| n.applied_version) {
            Some(v) if node.is_some_and(|n| n.in_sync) => format!("v{v} (current)"),
            Some(v) => format!("v{v} (behind)"),
            None => "none yet".into(),
        },
        nack: node.and_then(|n| n.nack.as_ref()).map(super::nack),
        served,
        unserved,
        checks: history.len(),
        failures: history.iter().filter(|c| !c.success).count(),
        chart: chart::health_history(&history),
    };
    Ok(render(web, status, &layout, &page))
}

/// `GET /edges/{edge}`.
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
