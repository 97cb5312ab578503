//! `/api/v1/notification-targets` (webhooks and Slack-compatible incoming webhooks, with event
//! filters) and `/api/v1/notification-deliveries` (the queue and its history).
//!
//! A target's URL path and signing secret are never returned: the URL shows as scheme, host
//! and port, and a webhook's secret only once, in the response that created it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::extract::{ApiJson, ApiQuery, Caller};
use super::{ApiError, ApiState};
use crate::store::{
    CreatedNotificationTarget, Delivery, DeliveryQuery, DeliveryStatus, NewNotificationTarget,
    NotificationTarget, Store,
};

/// A target by id or name.
pub(crate) async fn find_target(
    store: &dyn Store,
    key: &str,
) -> Result<NotificationTarget, ApiError> {
    Ok(match Uuid::parse_str(key) {
        Ok(id) => store.get_notification_target(id).await?,
        Err(_) => store.notification_target_by_name(key).await?,
    })
}

pub(super) async fn list(
    State(state): State<ApiState>,
) -> Result<Json<Vec<NotificationTarget>>, ApiError> {
    Ok(Json(state.store.list_notification_targets().await?))
}

pub(super) async fn create(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    ApiJson(new): ApiJson<NewNotificationTarget>,
) -> Result<(StatusCode, Json<CreatedNotificationTarget>), ApiError> {
    let created = state.store.create_notification_target(&actor, new).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub(super) async fn get(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<NotificationTarget>, ApiError> {
    Ok(Json(find_target(&*state.store, &key).await?))
}

pub(super) async fn delete(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
) -> Result<StatusCode, ApiError> {
    let target = find_target(&*state.store, &key).await?;
    state
        .store
        .delete_notification_target(&actor, target.id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /notification-targets/{target}/test`: queues a `notification_target.test` event for
/// this target only; its delivery shows up in the deliveries like any other.
pub(super) async fn test(
    State(state): State<ApiState>,
    Caller(actor): Caller,
    Path(key): Path<String>,
) -> Result<(StatusCode, Json<Delivery>), ApiError> {
    let target = find_target(&*state.store, &key).await?;
    let delivery = state
        .store
        .test_notification_target(&actor, target.id)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(delivery)))
}

/// Query of `GET /notification-deliveries`: `?target=ID_OR_NAME&status=failed&limit=50`.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct DeliveryFilter {
    /// Only to this target (id or name).
    #[serde(default)]
    pub target: Option<String>,
    /// Only in this state.
    #[serde(default)]
    pub status: Option<DeliveryStatus>,
    /// At most this many (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

pub(super) async fn deliveries(
    State(state): State<ApiState>,
    ApiQuery(filter): ApiQuery<DeliveryFilter>,
) -> Result<Json<Vec<Delivery>>, ApiError> {
    let target_id = match &filter.target {
        Some(key) => Some(find_target(&*state.store, key).await?.id),
        None => None,
    };
    Ok(Json(
        state
            .store
            .list_notification_deliveries(DeliveryQuery {
                target_id,
                status: filter.status,
                limit: filter.limit,
            })
            .await?,
    ))
}

pub(super) async fn target_deliveries(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    ApiQuery(filter): ApiQuery<DeliveryFilter>,
) -> Result<Json<Vec<Delivery>>, ApiError> {
    let target = find_target(&*state.store, &key).await?;
    Ok(Json(
        state
            .store
            .list_notification_deliveries(DeliveryQuery {
                target_id: Some(target.id),
                status: filter.status,
                limit: filter.limit,
            })
            .await?,
    ))
}
