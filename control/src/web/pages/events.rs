//! `/events`: the audit trail, filterable by kind of entity and entity id, with new events added
//! live from the feed (`/events/stream`).

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::overview::EventRow;
use super::{failed, render, Layout};
use crate::store::{Entity, Event};
use crate::web::session::viewer;
use crate::web::Web;

/// The filter.
#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    #[serde(default)]
    entity: Option<String>,
    #[serde(default)]
    entity_id: Option<String>,
}

#[derive(Template)]
#[template(path = "events.html")]
struct Page {
    layout: Layout,
    events: Vec<EventRow>,
    entities: Vec<String>,
    entity: String,
    entity_id: String,
    stream: String,
}

const ENTITIES: &[Entity] = &[
    Entity::Origin,
    Entity::Service,
    Entity::Edge,
    Entity::Assignment,
    Entity::Route,
    Entity::Certificate,
    Entity::NodeToken,
    Entity::ApiToken,
    Entity::HealthCheck,
    Entity::User,
    Entity::Session,
];

/// `GET /events`.
pub async fn page(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(filter): Query<Filter>,
) -> Response {
    let viewer = match viewer(&web, &headers).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    let entity = filter
        .entity
        .filter(|e| Entity::parse(e).is_some())
        .unwrap_or_default();
    let entity_id = filter.entity_id.unwrap_or_default().trim().to_string();
    let mut query = vec!["limit=200".to_string()];
    if !entity.is_empty() {
        query.push(format!("entity={entity}"));
    }
    if !entity_id.is_empty() {
        query.push(format!("entity_id={}", super::seg(&entity_id)));
    }
    let query = query.join("&");
    let events: Vec<Event> = match web
        .get(&viewer.principal, &format!("/events?{query}"))
        .await
    {
        Ok(events) => events,
        Err(error) => return failed(&viewer, error),
    };
    let layout = Layout::new(&viewer, "Events", "events");
    let page = Page {
        layout: layout.clone(),
        events: events.iter().rev().map(EventRow::from).collect(),
        entities: ENTITIES.iter().map(|e| e.as_str().to_string()).collect(),
        stream: format!("/events/stream?{query}"),
        entity,
        entity_id,
    };
    render(&web, StatusCode::OK, &layout, &page)
}
