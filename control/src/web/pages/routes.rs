//! `/routes` and `/routes/{route}`: host names (with aliases) to origin services, with per-route
//! rate limits, body limit and allow/deny lists; create, edit, delete.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::{render, seg, Layout};
use crate::api::{ApiError, RouteView, ServiceView};
use crate::store::RouteLimits;
use crate::web::form::FormState;
use crate::web::session::Viewer;
use crate::web::Web;

/// A route in the list.
pub struct Row {
    hostname: String,
    aliases: String,
    target: String,
    limits: String,
    href: String,
    api: String,
}

/// A service a route can target.
pub struct Target {
    id: String,
    label: String,
    selected: bool,
}

/// A route's limits as form values.
#[derive(Default)]
pub struct Limits {
    rate: String,
    burst: String,
    max_body_bytes: String,
    allow: String,
    deny: String,
}

impl Limits {
    /// The limits in the API's JSON shape: what the form shows is what the API would return.
    fn json(limits: &RouteLimits) -> Value {
        serde_json::to_value(limits).unwrap_or(Value::Null)
    }

    fn of(limits: &RouteLimits) -> Limits {
        let limits = &Self::json(limits);
        let text = |key: &str| match &limits[key] {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let lines = |key: &str| {
            limits[key]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default()
        };
        Limits {
            rate: text("rate"),
            burst: text("burst"),
            max_body_bytes: text("max_body_bytes"),
            allow: lines("allow"),
            deny: lines("deny"),
        }
    }

    fn summary(limits: &RouteLimits) -> String {
        let limits = &Self::json(limits);
        let mut parts = Vec::new();
        if let Some(rate) = limits["rate"].as_f64() {
            let burst = limits["burst"]
                .as_u64()
                .map(|b| format!(", burst {b}"))
                .unwrap_or_default();
            parts.push(format!("{rate}/s{burst}"));
        }
        if let Some(max) = limits["max_body_bytes"].as_u64() {
            parts.push(format!("body ≤ {}", super::bytes(max)));
        }
        for key in ["allow", "deny"] {
            if let Some(list) = limits[key].as_array().filter(|l| !l.is_empty()) {
                parts.push(format!("{key} {}", list.len()));
            }
        }
        if parts.is_empty() {
            "defaults".into()
        } else {
            parts.join(" · ")
        }
    }
}

#[derive(Template)]
#[template(path = "routes.html")]
struct ListPage {
    layout: Layout,
    forms: FormState,
    routes: Vec<Row>,
    targets: Vec<Target>,
    empty: Limits,
}

#[derive(Template)]
#[template(path = "route.html")]
struct EditPage {
    layout: Layout,
    forms: FormState,
    hostname: String,
    aliases: String,
    api: String,
    targets: Vec<Target>,
    limits: Limits,
}

fn targets(services: &[ServiceView], selected: Option<crate::store::Id>) -> Vec<Target> {
    services
        .iter()
        .filter(|s| s.service.protocol == crate::store::Protocol::Http)
        .map(|s| Target {
            id: s.service.id.to_string(),
            label: format!("{} / {} (:{})", s.origin, s.service.name, s.service.port),
            selected: Some(s.service.id) == selected,
        })
        .collect()
}

/// Renders the list with `forms`.
pub async fn render_list(
    web: &Web,
    viewer: &Viewer,
    forms: FormState,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let p = &viewer.principal;
    let routes: Vec<RouteView> = web.get(p, "/routes").await?;
    let services: Vec<ServiceView> = web.get(p, "/services").await?;
    let rows = routes
        .iter()
        .map(|r| Row {
            hostname: r.route.hostname.clone(),
            aliases: r.route.aliases.join(", "),
            target: format!("{} / {}", r.origin, r.service),
            limits: Limits::summary(&r.route.limits),
            href: format!("/routes/{}", seg(&r.route.hostname)),
            api: format!("/routes/{}", r.route.id),
        })
        .collect();
    let layout = Layout::new(viewer, "Routes", "routes");
    let page = ListPage {
        layout: layout.clone(),
        forms,
        routes: rows,
        targets: targets(&services, None),
        empty: Limits::default(),
    };
    Ok(render(web, status, &layout, &page))
}

/// `GET /routes`.
pub async fn list(State(web): State<Web>, headers: HeaderMap) -> Response {
    super::show(&web, &headers, async |viewer| {
        render_list(&web, viewer, FormState::default(), StatusCode::OK).await
    })
    .await
}

/// Renders one route's edit page with `forms`.
pub async fn render_edit(
    web: &Web,
    viewer: &Viewer,
    key: &str,
    forms: FormState,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let p = &viewer.principal;
    let route: RouteView = web.get(p, &format!("/routes/{}", seg(key))).await?;
    let services: Vec<ServiceView> = web.get(p, "/services").await?;
    let layout = Layout::new(viewer, format!("Route {}", route.route.hostname), "routes");
    let page = EditPage {
        layout: layout.clone(),
        forms,
        hostname: route.route.hostname.clone(),
        aliases: route.route.aliases.join("\n"),
        api: format!("/routes/{}", route.route.id),
        targets: targets(&services, Some(route.route.service_id)),
        limits: Limits::of(&route.route.limits),
    };
    Ok(render(web, status, &layout, &page))
}

/// `GET /routes/{route}`.
pub async fn edit(State(web): State<Web>, headers: HeaderMap, Path(key): Path<String>) -> Response {
    super::show(&web, &headers, async |viewer| {
        render_edit(&web, viewer, &key, FormState::default(), StatusCode::OK).await
    })
    .await
}
