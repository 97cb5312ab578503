//! `/api/v1/events` (the audit trail) and health-check history.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;

use super::extract::ApiQuery;
use super::{find_edge, ApiError, ApiState};
use crate::store::{Event, EventQuery, HealthCheck, HealthQuery};

pub(super) async fn list(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<EventQuery>,
) -> Result<Json<Vec<Event>>, ApiError> {
    Ok(Json(state.store.list_events(query).await?))
}

pub(super) async fn health_checks(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<HealthQuery>,
) -> Result<Json<Vec<HealthCheck>>, ApiError> {
    Ok(Json(state.store.health_checks(query).await?))
}

/// `?limit=` of the seeds' `GET /edge-nodes/{id}/health-history`.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Limit {
    #[serde(default)]
    limit: Option<u32>,
}

pub(super) async fn edge_health_history(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    ApiQuery(limit): ApiQuery<Limit>,
) -> Result<Json<Vec<HealthCheck>>, ApiError> {
    let edge = find_edge(&*state.store, &key).await?;
    Ok(Json(
        state
            .store
            .health_checks(HealthQuery {
                edge_id: Some(edge.id),
                limit: limit.limit,
                ..HealthQuery::default()
            })
            .await?,
    ))
}
