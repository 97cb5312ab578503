//! [`NotificationStore`]: notification targets (webhooks, Slack-compatible incoming webhooks) and
//! the deliveries queued for them from the audit trail.
//!
//! The record types live here with their trait rather than in `model.rs`, which they would push
//! past a thousand lines.
//!
//! Every audit event has a kind, `ENTITY.ACTION` (`edge.status_changed`,
//! `edge.config_rejected`, `certificate.failed`, ...). A target subscribes to kinds with
//! patterns ([`event_matches`]), so a kind added later is delivered without code changes.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::error::Result;
use super::model::{Actor, Event, Id};
use super::token::Secret;

/// How a target wants its notifications.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// A JSON body signed with HMAC-SHA256 (header `Kokoa-Signature`).
    Webhook,
    /// A Slack-compatible incoming webhook (`{"text": ...}`).
    Slack,
}

impl NotificationKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Webhook => "webhook",
            NotificationKind::Slack => "slack",
        }
    }

    /// Parses [`NotificationKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "webhook" => Some(NotificationKind::Webhook),
            "slack" => Some(NotificationKind::Slack),
            _ => None,
        }
    }
}

/// A notification target as the API shows it: never its URL's path or its secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NotificationTarget {
    /// Id.
    pub id: Id,
    /// Unique name.
    pub name: String,
    /// Webhook or Slack.
    pub kind: NotificationKind,
    /// The URL's scheme, host and port only (a Slack URL's path is its credential).
    pub url: String,
    /// Event-kind patterns; empty means every kind.
    pub events: Vec<String>,
    /// Whether deliveries are signed (webhooks always are).
    pub signed: bool,
    /// Created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Input of [`NotificationStore::create_notification_target`].
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct NewNotificationTarget {
    /// Unique name.
    pub name: String,
    /// Webhook or Slack.
    pub kind: NotificationKind,
    /// Where to POST (http or https).
    pub url: String,
    /// Webhook signing secret (at least 16 characters); generated when absent. Not for Slack.
    #[serde(default)]
    pub secret: Option<String>,
    /// Event-kind patterns (`edge.status_changed`, `edge.*`, `*.config_rejected`, `*`); empty
    /// or absent means every kind.
    #[serde(default)]
    pub events: Vec<String>,
}

/// A created target, with the signing secret control generated for it (shown once; a secret the
/// caller gave is never echoed back).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreatedNotificationTarget {
    /// The target.
    pub target: NotificationTarget,
    /// The generated webhook signing secret; `None` for Slack or when the caller gave one.
    pub secret: Option<Secret>,
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Queued or waiting for its next attempt.
    Pending,
    /// The target answered 2xx.
    Delivered,
    /// Given up: the attempt limit was reached, or the target refused it for good (4xx).
    Failed,
    /// Dropped unsent because the target's queue was full.
    Dropped,
}

impl DeliveryStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Dropped => "dropped",
        }
    }

    /// Parses [`DeliveryStatus::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => DeliveryStatus::Pending,
            "delivered" => DeliveryStatus::Delivered,
            "failed" => DeliveryStatus::Failed,
            "dropped" => DeliveryStatus::Dropped,
            _ => return None,
        })
    }
}

/// One notification to one target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Id (sent as the `Kokoa-Delivery` header).
    pub id: Id,
    /// The target.
    pub target_id: Id,
    /// The audit event it carries.
    pub event_id: u64,
    /// The event's kind, `ENTITY.ACTION`.
    pub kind: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// The HTTP status of the last attempt, when one was received.
    pub last_status: Option<u16>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the next attempt is due (pending only).
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// Queued.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last changed.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Which deliveries to list (newest first).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeliveryQuery {
    /// Only to this target.
    #[serde(default)]
    pub target_id: Option<Id>,
    /// Only in this state.
    #[serde(default)]
    pub status: Option<DeliveryStatus>,
    /// At most this many (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// A delivery due for an attempt, with what sending it needs.
#[derive(Clone, Debug)]
pub struct DueDelivery {
    /// The delivery.
    pub delivery: Delivery,
    /// The event it carries.
    pub event: Event,
    /// Webhook or Slack.
    pub kind: NotificationKind,
    /// The full URL.
    pub url: Secret,
    /// The signing secret (webhooks).
    pub secret: Option<Secret>,
}

/// How an attempt ended (see [`NotificationStore::finish_delivery_attempt`]).
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptOutcome {
    /// 2xx.
    Delivered {
        /// The status received.
        status: u16,
    },
    /// Failed; try again after `retry_in`.
    Retry {
        /// The status received, if any.
        status: Option<u16>,
        /// What went wrong.
        error: String,
        /// Backoff before the next attempt.
        retry_in: Duration,
    },
    /// Failed for good (attempt limit reached, or refused with a 4xx).
    Failed {
        /// The status received, if any.
        status: Option<u16>,
        /// What went wrong.
        error: String,
    },
}

/// Bounds of [`NotificationStore::fan_out_notifications`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Events read from the audit trail per call.
    pub events_per_pass: u32,
    /// Pending deliveries per target; beyond it the oldest are dropped.
    pub pending_per_target: u32,
    /// Finished (delivered, failed, dropped) deliveries kept per target for the API.
    pub history_per_target: u32,
}

/// What one [`NotificationStore::fan_out_notifications`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FanOut {
    /// Audit events read.
    pub events: u32,
    /// Deliveries queued.
    pub queued: u32,
    /// Pending deliveries dropped because a target's queue was full.
    pub dropped: u32,
}

/// Whether an event kind (`ENTITY.ACTION`) matches a target's patterns: empty matches every
/// kind; a pattern is `*`, `ENTITY.ACTION`, `ENTITY.*` or `*.ACTION`.
pub fn event_matches(patterns: &[String], kind: &str) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let (entity, action) = kind.split_once('.').unwrap_or((kind, ""));
    patterns.iter().any(|pattern| {
        if pattern == "*" {
            return true;
        }
        let (p_entity, p_action) = pattern.split_once('.').unwrap_or((pattern, ""));
        (p_entity == "*" || p_entity == entity) && (p_action == "*" || p_action == action)
    })
}

/// The kind of an audit event as notifications name it: `ENTITY.ACTION`.
pub fn event_kind(event: &Event) -> String {
    format!("{}.{}", event.entity.as_str(), event.action)
}

/// The notifications part of [`Store`](super::Store).
#[async_trait]
pub trait NotificationStore: Send + Sync {
    /// Creates a target (URL and secret sealed with the master key).
    async fn create_notification_target(
        &self,
        actor: &Actor,
        new: NewNotificationTarget,
    ) -> Result<CreatedNotificationTarget>;

    /// All targets, by name.
    async fn list_notification_targets(&self) -> Result<Vec<NotificationTarget>>;

    /// One target by id.
    async fn get_notification_target(&self, id: Id) -> Result<NotificationTarget>;

    /// One target by name.
    async fn notification_target_by_name(&self, name: &str) -> Result<NotificationTarget>;

    /// Deletes a target with its deliveries.
    async fn delete_notification_target(&self, actor: &Actor, id: Id) -> Result<()>;

    /// Records a `notification_target.test` event and queues it for this target only.
    async fn test_notification_target(&self, actor: &Actor, id: Id) -> Result<Delivery>;

    /// Reads the audit trail past the notifier's cursor (at most `limits.events_per_pass`
    /// events), queues one delivery per event and matching target, drops the oldest pending
    /// deliveries of a target beyond `limits.pending_per_target`, prunes finished ones beyond
    /// `limits.history_per_target`, and advances the cursor, all in one transaction. On the
    /// first call ever the cursor starts at the newest event (history is not replayed).
    async fn fan_out_notifications(&self, limits: QueueLimits) -> Result<FanOut>;

    /// Pending deliveries whose attempt is due, oldest first, at most `limit`, skipping
    /// `busy` targets (those with an attempt in flight).
    async fn due_notification_deliveries(
        &self,
        busy: &[Id],
        limit: u32,
    ) -> Result<Vec<DueDelivery>>;

    /// Records an attempt's outcome. A delivery that is no longer pending (dropped meanwhile)
    /// keeps its state but counts the attempt.
    async fn finish_delivery_attempt(&self, id: Id, outcome: AttemptOutcome) -> Result<Delivery>;

    /// Deliveries, newest first.
    async fn list_notification_deliveries(&self, query: DeliveryQuery) -> Result<Vec<Delivery>>;

    /// The earliest `next_attempt_at` of any pending delivery.
    async fn next_delivery_due(&self) -> Result<Option<OffsetDateTime>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_by_entity_and_action() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(event_matches(&[], "edge.status_changed"));
        assert!(event_matches(&p(&["*"]), "certificate.failed"));
        assert!(event_matches(&p(&["edge.*"]), "edge.status_changed"));
        assert!(!event_matches(&p(&["edge.*"]), "origin.status_changed"));
        assert!(event_matches(
            &p(&["*.config_rejected"]),
            "origin.config_rejected"
        ));
        assert!(!event_matches(&p(&["*.config_rejected"]), "origin.created"));
        assert!(event_matches(
            &p(&["route.created", "certificate.failed"]),
            "certificate.failed"
        ));
        assert!(!event_matches(
            &p(&["certificate.failed"]),
            "certificate.issued"
        ));
    }
}
