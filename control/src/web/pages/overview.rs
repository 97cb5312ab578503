//! `/`: the fleet at a glance. Edges with their state and live figures, origins with their
//! services' health, routes, certificates about to expire, recent events. The panels are one
//! partial (`/overview/live`) the page's script fetches again every few seconds and whenever the
//! event feed reports a change.

use std::collections::HashMap;

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use serde_json::Value;
use time::OffsetDateTime;

use super::{ago, failed, render, seg, when, Layout};
use crate::api::{ApiError, EdgeView, OriginView, RouteView, ServiceView, StatusSummary};
use crate::store::{Certificate, Event, HealthCheck};
use crate::web::session::{viewer, Viewer};
use crate::web::Web;

/// Certificates expiring within this many days are listed.
pub const EXPIRY_WARNING_DAYS: i64 = 30;

/// One edge row.
#[derive(Clone, Debug)]
pub struct EdgeRow {
    /// Name.
    pub name: String,
    /// Detail link.
    pub href: String,
    /// State word.
    pub state: String,
    /// Last heartbeat's age.
    pub heartbeat: String,
    /// Active connections.
    pub connections: String,
    /// Requests per second.
    pub rps: String,
    /// Tunnel peers up / total.
    pub peers: String,
    /// Applied config version, and whether it is current.
    pub version: String,
    /// The last rejected config.
    pub nack: Option<String>,
}

/// One service of an origin.
#[derive(Clone, Debug)]
pub struct ServiceRow {
    /// Name.
    pub name: String,
    /// Tunnel port.
    pub port: u16,
    /// `ok`, `failing` or `unchecked`.
    pub health: String,
}

/// One origin row.
#[derive(Clone, Debug)]
pub struct OriginRow {
    /// Name.
    pub name: String,
    /// Detail link.
    pub href: String,
    /// State word.
    pub state: String,
    /// Its services.
    pub services: Vec<ServiceRow>,
}

/// One route row.
#[derive(Clone, Debug)]
pub struct RouteRow {
    /// Host names.
    pub hosts: String,
    /// `origin / service`.
    pub target: String,
}

/// A certificate about to expire (or failing).
#[derive(Clone, Debug)]
pub struct CertRow {
    /// Names.
    pub names: String,
    /// Expiry.
    pub expires: String,
    /// Days left (negative: expired).
    pub days: i64,
    /// Last error.
    pub error: Option<String>,
}

/// One event row (also used by the events page).
#[derive(Clone, Debug)]
pub struct EventRow {
    /// Id.
    pub id: u64,
    /// When.
    pub at: String,
    /// Who.
    pub actor: String,
    /// `route created`.
    pub what: String,
    /// Entity id.
    pub entity_id: String,
}

impl From<&Event> for EventRow {
    fn from(event: &Event) -> Self {
        EventRow {
            id: event.id,
            at: when(event.at),
            actor: event.actor.clone(),
            what: format!("{} {}", event.entity, event.action.replace('_', " ")),
            entity_id: event.entity_id.clone(),
        }
    }
}

/// The live panels.
#[derive(Template)]
#[template(path = "overview_live.html")]
pub struct Live {
    config_version: u64,
    edges: Vec<EdgeRow>,
    origins: Vec<OriginRow>,
    routes: Vec<RouteRow>,
    certificates: Vec<CertRow>,
    events: Vec<EventRow>,
    counts: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Page {
    layout: Layout,
    live: Live,
}

fn number(value: Option<&Value>, decimals: usize) -> String {
    match value.and_then(Value::as_f64) {
        Some(n) => format!("{n:.decimals$}"),
        None => "–".into(),
    }
}

/// The state word of a node: the health model's state (`enrolling`, `online`, `degraded`,
/// `offline`, `draining`), the same word the API, `kokoa-control status` and control's metrics
/// show. `connected` is the live view of the gRPC stream; the health model already judges it,
/// so it only fills in a state for a record that has none.
pub fn state_word(status: &str, connected: Option<bool>) -> String {
    match (status, connected) {
        ("", Some(false)) => "offline".into(),
        ("", _) => "enrolling".into(),
        (status, _) => status.into(),
    }
}

async fn collect(web: &Web, viewer: &Viewer) -> Result<Live, ApiError> {
    let p = &viewer.principal;
    let status: StatusSummary = web.get(p, "/status").await?;
    let edges: Vec<EdgeView> = web.get(p, "/edge-nodes").await?;
    let origins: Vec<OriginView> = web.get(p, "/origins").await?;
    let services: Vec<ServiceView> = web.get(p, "/services").await?;
    let routes: Vec<RouteView> = web.get(p, "/routes").await?;
    let certificates: Vec<Certificate> = web.get(p, "/certificates").await?;
    let checks: Vec<HealthCheck> = web.get(p, "/health-checks?limit=500").await?;
    let events: Vec<Event> = web.get(p, "/events?limit=8").await?;

    let node = |id| status.nodes.iter().find(|n| n.id == id);
    let edge_rows = edges
        .iter()
        .map(|view| {
            let edge = &view.edge;
            let n = node(edge.id);
            let hb = edge.state.heartbeat.as_ref();
            let peers = hb.and_then(|h| h["peers"].as_array());
            EdgeRow {
                name: edge.name.clone(),
                href: format!("/edges/{}", seg(&edge.name)),
                state: state_word(edge.state.status.as_str(), n.and_then(|n| n.connected)),
                heartbeat: ago(n
                    .and_then(|n| n.last_heartbeat)
                    .or(edge.state.last_heartbeat)),
                connections: number(hb.map(|h| &h["active_connections"]), 0),
                rps: number(hb.map(|h| &h["requests_per_second"]), 1),
                peers: peers
                    .map(|p| {
                        let up = p.iter().filter(|p| p["up"].as_bool() == Some(true)).count();
                        format!("{up}/{}", p.len())
                    })
                    .unwrap_or_else(|| "–".into()),
                version: match n.and_then(|n| n.applied_version) {
                    Some(v) if n.is_some_and(|n| n.in_sync) => format!("v{v}"),
                    Some(v) => format!("v{v} (behind)"),
                    None => "none".into(),
                },
                nack: n.and_then(|n| n.nack.as_ref()).map(super::nack),
            }
        })
        .collect();
    // The newest check of each service decides its health.
    let mut latest: HashMap<crate::store::Id, &HealthCheck> = HashMap::new();
    for check in &checks {
        if let Some(service) = check.service_id {
            let entry = latest.entry(service).or_insert(check);
            if check.checked_at > entry.checked_at {
                *entry = check;
            }
        }
    }
    let origin_rows = origins
        .iter()
        .map(|view| {
            let origin = &view.origin;
            OriginRow {
                name: origin.name.clone(),
                href: format!("/origins/{}", seg(&origin.name)),
                state: state_word(
                    origin.state.status.as_str(),
                    node(origin.id).and_then(|n| n.connected),
                ),
                services: services
                    .iter()
                    .filter(|s| s.service.origin_id == origin.id)
                    .map(|s| ServiceRow {
                        name: s.service.name.clone(),
                        port: s.service.port,
                        health: match latest.get(&s.service.id) {
                            Some(check) if check.success => "ok".into(),
                            Some(_) => "failing".into(),
                            None => "unchecked".into(),
                        },
                    })
                    .collect(),
            }
        })
        .collect();
    let route_rows = routes
        .iter()
        .map(|r| RouteRow {
            hosts: std::iter::once(r.route.hostname.clone())
                .chain(r.route.aliases.iter().cloned())
                .collect::<Vec<_>>()
                .join(", "),
            target: format!("{} / {}", r.origin, r.service),
        })
        .collect();
    let now = OffsetDateTime::now_utc();
    let cert_rows = certificates
        .iter()
        .filter_map(|c| {
            let days = c.not_after.map(|t| (t - now).whole_days());
            let soon = days.is_none_or(|d| d <= EXPIRY_WARNING_DAYS);
            (soon || c.last_error.is_some()).then(|| CertRow {
                names: c.names.join(", "),
                expires: c.not_after.map(when).unwrap_or_else(|| "not issued".into()),
                days: days.unwrap_or(0),
                error: c.last_error.clone(),
            })
        })
        .collect();
    let mut event_rows: Vec<EventRow> = events.iter().map(EventRow::from).collect();
    event_rows.reverse();
    Ok(Live {
        config_version: status.config_version,
        counts: format!(
            "{} edges, {} origins, {} services, {} routes, {} certificates",
            edges.len(),
            origins.len(),
            services.len(),
            routes.len(),
            certificates.len()
        ),
        edges: edge_rows,
        origins: origin_rows,
        routes: route_rows,
        certificates: cert_rows,
        events: event_rows,
    })
}

/// `GET /`.
pub async fn page(State(web): State<Web>, headers: HeaderMap) -> Response {
    let viewer = match viewer(&web, &headers).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    match collect(&web, &viewer).await {
        Ok(live) => {
            let layout = Layout::new(&viewer, "Overview", "overview");
            render(
                &web,
                StatusCode::OK,
                &layout.clone(),
                &Page { layout, live },
            )
        }
        Err(error) => failed(&viewer, error),
    }
}

/// The panels alone.
async fn live_partial(web: &Web, viewer: &Viewer) -> Response {
    match collect(web, viewer).await {
        Ok(live) => match live.render() {
            Ok(body) => Html(body).into_response(),
            Err(error) => ApiError::internal(error).into_response(),
        },
        Err(error) => error.into_response(),
    }
}

/// `GET /overview/live`: the panels alone (401 once the session ended, so the script stops).
pub async fn live(State(web): State<Web>, headers: HeaderMap) -> Response {
    match viewer(&web, &headers).await {
        Ok(viewer) => live_partial(&web, &viewer).await,
        Err(_) => StatusCode::UNAUTHORIZED.into_response(),
    }
}
