//! [`NotificationStore`] on SQL: `notification_targets` (URL and secret sealed with the master
//! key), `notification_deliveries` (the queue and its history) and the notifier's cursor over
//! the audit trail in `job_cursors`.
//!
//! Nothing here writes an audit event except target changes and tests: a delivery writing an
//! event would queue a notification about itself.

use async_trait::async_trait;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::column::{add_ms, json_of, now_ms, opt_ts, ts, u64_of, uuid};
use super::events::event_row;
use super::write::{db_err, exists};
use super::{list_limit, SqlStore};
use crate::store::error::{Entity, Result, StoreError};
use crate::store::model::{Actor, Event, Id, Secret};
use crate::store::notifications::*;
use crate::store::{notify_rules as validate, token};

/// The notifier's row in `job_cursors`.
const CURSOR_JOB: &str = "notifier";
/// Stored errors are cut to this many characters.
const MAX_ERROR: usize = 1024;

const TARGET_COLS: &str = "id, name, kind, url_shown, secret_sealed, events, created_at";
const DELIVERY_COLS: &str = "id, target_id, event_id, kind, status, attempts, last_status, \
     last_error, next_attempt_at, created_at, updated_at";

fn target_row(row: &AnyRow) -> Result<NotificationTarget> {
    const T: &str = "notification_targets";
    let kind: String = row.try_get("kind")?;
    Ok(NotificationTarget {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        name: row.try_get("name")?,
        kind: NotificationKind::parse(&kind)
            .ok_or_else(|| StoreError::corrupt(T, format!("kind {kind:?}")))?,
        url: row.try_get("url_shown")?,
        events: serde_json::from_value(json_of(T, &row.try_get::<String, _>("events")?)?)
            .map_err(|e| StoreError::corrupt(T, e))?,
        signed: row.try_get::<Option<String>, _>("secret_sealed")?.is_some(),
        created_at: ts(T, row.try_get("created_at")?)?,
    })
}

fn delivery_row(row: &AnyRow) -> Result<Delivery> {
    const T: &str = "notification_deliveries";
    let status: String = row.try_get("status")?;
    Ok(Delivery {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        target_id: uuid(T, &row.try_get::<String, _>("target_id")?)?,
        event_id: u64_of(T, row.try_get("event_id")?)?,
        kind: row.try_get("kind")?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| StoreError::corrupt(T, format!("status {status:?}")))?,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?)
            .map_err(|e| StoreError::corrupt(T, e))?,
        last_status: row
            .try_get::<Option<i64>, _>("last_status")?
            .map(|s| u16::try_from(s).map_err(|e| StoreError::corrupt(T, e)))
            .transpose()?,
        last_error: row.try_get("last_error")?,
        next_attempt_at: opt_ts(T, row.try_get("next_attempt_at")?)?,
        created_at: ts(T, row.try_get("created_at")?)?,
        updated_at: ts(T, row.try_get("updated_at")?)?,
    })
}

async fn fetch_target(conn: &mut AnyConnection, id: Id) -> Result<NotificationTarget> {
    let row = sqlx::query(&format!(
        "SELECT {TARGET_COLS} FROM notification_targets WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found(Entity::NotificationTarget, id))?;
    target_row(&row)
}

async fn fetch_delivery(conn: &mut AnyConnection, id: Id) -> Result<Delivery> {
    let row = sqlx::query(&format!(
        "SELECT {DELIVERY_COLS} FROM notification_deliveries WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::corrupt("notification_deliveries", format!("{id} vanished")))?;
    delivery_row(&row)
}

/// Queues `event` for `target_id` (nothing when already queued).
async fn insert_delivery(
    conn: &mut AnyConnection,
    target_id: &str,
    event: &Event,
    kind: &str,
    now: i64,
) -> Result<Option<Id>> {
    let already = sqlx::query(
        "SELECT 1 AS one FROM notification_deliveries WHERE target_id = $1 AND event_id = $2",
    )
    .bind(target_id.to_string())
    .bind(i64::try_from(event.id).unwrap_or(i64::MAX))
    .fetch_optional(&mut *conn)
    .await?;
    if already.is_some() {
        return Ok(None);
    }
    let id = Uuid::new_v4();
    let payload =
        serde_json::to_string(event).map_err(|e| StoreError::corrupt("events", e.to_string()))?;
    sqlx::query(
        "INSERT INTO notification_deliveries (id, target_id, event_id, kind, payload, status, \
         attempts, next_attempt_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6, $6)",
    )
    .bind(id.to_string())
    .bind(target_id.to_string())
    .bind(i64::try_from(event.id).unwrap_or(i64::MAX))
    .bind(kind.to_string())
    .bind(payload)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(db_err)?;
    Ok(Some(id))
}

impl SqlStore {
    fn target_aad(id: Id, what: &str) -> Vec<u8> {
        format!("notification_target:{id}:{what}").into_bytes()
    }

    fn open_text(&self, sealed: &str, id: Id, what: &str) -> Result<Secret> {
        let plain = self.key.open(sealed, &Self::target_aad(id, what))?;
        let text = String::from_utf8(plain.to_vec())
            .map_err(|e| StoreError::corrupt("notification_targets", e))?;
        Ok(Secret::from(text))
    }
}

#[async_trait]
impl NotificationStore for SqlStore {
    async fn create_notification_target(
        &self,
        actor: &Actor,
        new: NewNotificationTarget,
    ) -> Result<CreatedNotificationTarget> {
        let name = validate::name("name", &new.name)?;
        let (url, url_shown) = validate::notification_url("url", &new.url)?;
        let events = validate::event_patterns("events", &new.events)?;
        let secret = match (new.kind, new.secret.as_deref()) {
            (NotificationKind::Slack, Some(_)) => {
                return Err(StoreError::invalid(
                    "secret",
                    "Slack incoming webhooks are not signed; the URL is their credential",
                ))
            }
            (NotificationKind::Slack, None) => None,
            (NotificationKind::Webhook, Some(given)) => {
                Some(Secret::from(validate::signing_secret("secret", given)?))
            }
            (NotificationKind::Webhook, None) => Some(token::generate("whsec")),
        };
        let id = Uuid::new_v4();
        let url_sealed = self
            .key
            .seal(url.as_bytes(), &Self::target_aad(id, "url"))?;
        let secret_sealed = secret
            .as_ref()
            .map(|s| {
                self.key
                    .seal(s.expose().as_bytes(), &Self::target_aad(id, "secret"))
            })
            .transpose()?;
        let mut w = self.write(actor).await?;
        if exists(
            w.conn(),
            "SELECT 1 FROM notification_targets WHERE name = $1",
            name.clone(),
            None,
        )
        .await?
        {
            return Err(StoreError::conflict(format!(
                "a notification target named {name} already exists"
            )));
        }
        sqlx::query(
            "INSERT INTO notification_targets (id, name, kind, url_sealed, url_shown, \
             secret_sealed, events, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(id.to_string())
        .bind(name.clone())
        .bind(new.kind.as_str())
        .bind(url_sealed)
        .bind(url_shown.clone())
        .bind(secret_sealed)
        .bind(json!(events).to_string())
        .bind(w.now)
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        w.event(
            Entity::NotificationTarget,
            &id.to_string(),
            "created",
            json!({"name": name, "kind": new.kind.as_str(), "url": url_shown, "events": events}),
        )
        .await?;
        let target = fetch_target(w.conn(), id).await?;
        w.commit().await?;
        // A secret the caller gave is not echoed back; a generated one is shown this once.
        let secret = if new.secret.is_some() { None } else { secret };
        Ok(CreatedNotificationTarget { target, secret })
    }

    async fn list_notification_targets(&self) -> Result<Vec<NotificationTarget>> {
        sqlx::query(&format!(
            "SELECT {TARGET_COLS} FROM notification_targets ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(target_row)
        .collect()
    }

    async fn get_notification_target(&self, id: Id) -> Result<NotificationTarget> {
        fetch_target(&mut *self.conn().await?, id).await
    }

    async fn notification_target_by_name(&self, name: &str) -> Result<NotificationTarget> {
        let row = sqlx::query(&format!(
            "SELECT {TARGET_COLS} FROM notification_targets WHERE name = $1"
        ))
        .bind(name.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::not_found(Entity::NotificationTarget, name))?;
        target_row(&row)
    }

    async fn delete_notification_target(&self, actor: &Actor, id: Id) -> Result<()> {
        let mut w = self.write(actor).await?;
        let target = fetch_target(w.conn(), id).await?;
        // Explicitly, rather than trusting ON DELETE CASCADE (SQLite needs foreign_keys on).
        sqlx::query("DELETE FROM notification_deliveries WHERE target_id = $1")
            .bind(id.to_string())
            .execute(w.conn())
            .await?;
        sqlx::query("DELETE FROM notification_targets WHERE id = $1")
            .bind(id.to_string())
            .execute(w.conn())
            .await?;
        w.event(
            Entity::NotificationTarget,
            &id.to_string(),
            "deleted",
            json!({"name": target.name}),
        )
        .await?;
        w.commit().await
    }

    async fn test_notification_target(&self, actor: &Actor, id: Id) -> Result<Delivery> {
        let mut w = self.write(actor).await?;
        let target = fetch_target(w.conn(), id).await?;
        w.event(
            Entity::NotificationTarget,
            &id.to_string(),
            "test",
            json!({"name": target.name, "message": "a test notification from kokoa-control"}),
        )
        .await?;
        // The write lock is held, so the newest event is the one just written.
        let row = sqlx::query(
            "SELECT id, at, actor, entity, entity_id, action, detail, config_version FROM events \
             ORDER BY id DESC LIMIT 1",
        )
        .fetch_one(w.conn())
        .await?;
        let event = event_row(&row)?;
        let now = w.now;
        let delivery = insert_delivery(w.conn(), &id.to_string(), &event, &event_kind(&event), now)
            .await?
            .ok_or_else(|| StoreError::conflict("the test event is already queued"))?;
        let delivery = fetch_delivery(w.conn(), delivery).await?;
        w.commit().await?;
        Ok(delivery)
    }

    async fn fan_out_notifications(&self, limits: QueueLimits) -> Result<FanOut> {
        // Most passes find nothing new: check without taking the write lock.
        let idle = sqlx::query(
            "SELECT 1 AS one FROM job_cursors WHERE job = $1 \
             AND position >= (SELECT COALESCE(MAX(id), 0) FROM events)",
        )
        .bind(CURSOR_JOB)
        .fetch_optional(&self.pool)
        .await?;
        if idle.is_some() {
            return Ok(FanOut::default());
        }
        let mut w = self.write(&Actor::System).await?;
        let cursor: Option<i64> = sqlx::query("SELECT position FROM job_cursors WHERE job = $1")
            .bind(CURSOR_JOB)
            .fetch_optional(w.conn())
            .await?
            .map(|row| row.try_get("position"))
            .transpose()?;
        let Some(cursor) = cursor else {
            // First run: start at the newest event, so enabling notifications does not replay
            // the whole history.
            let newest: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) AS newest FROM events")
                .fetch_one(w.conn())
                .await?
                .try_get("newest")?;
            sqlx::query("INSERT INTO job_cursors (job, position) VALUES ($1, $2)")
                .bind(CURSOR_JOB)
                .bind(newest)
                .execute(w.conn())
                .await?;
            w.commit().await?;
            return Ok(FanOut::default());
        };
        let events: Vec<Event> = sqlx::query(
            "SELECT id, at, actor, entity, entity_id, action, detail, config_version FROM events \
             WHERE id > $1 ORDER BY id ASC LIMIT $2",
        )
        .bind(cursor)
        .bind(i64::from(limits.events_per_pass.max(1)))
        .fetch_all(w.conn())
        .await?
        .iter()
        .map(event_row)
        .collect::<Result<_>>()?;
        let Some(last) = events.last().map(|e| e.id) else {
            return Ok(FanOut::default());
        };
        let targets = sqlx::query(&format!("SELECT {TARGET_COLS} FROM notification_targets"))
            .fetch_all(w.conn())
            .await?
            .iter()
            .map(target_row)
            .collect::<Result<Vec<_>>>()?;
        let mut report = FanOut {
            events: u32::try_from(events.len()).unwrap_or(u32::MAX),
            ..FanOut::default()
        };
        let now = w.now;
        let mut touched = Vec::new();
        for event in &events {
            let kind = event_kind(event);
            // A test is queued for its own target only, by `test_notification_target`.
            if event.entity == Entity::NotificationTarget && event.action == "test" {
                continue;
            }
            for target in targets.iter().filter(|t| event_matches(&t.events, &kind)) {
                let target_id = target.id.to_string();
                if insert_delivery(w.conn(), &target_id, event, &kind, now)
                    .await?
                    .is_some()
                {
                    report.queued += 1;
                    if !touched.contains(&target_id) {
                        touched.push(target_id);
                    }
                }
            }
        }
        for target_id in &touched {
            report.dropped += drop_overflow(w.conn(), target_id, limits, now).await?;
            prune_history(w.conn(), target_id, limits).await?;
        }
        sqlx::query("UPDATE job_cursors SET position = $1 WHERE job = $2")
            .bind(i64::try_from(last).unwrap_or(i64::MAX))
            .bind(CURSOR_JOB)
            .execute(w.conn())
            .await?;
        w.commit().await?;
        Ok(report)
    }

    async fn due_notification_deliveries(
        &self,
        busy: &[Id],
        limit: u32,
    ) -> Result<Vec<DueDelivery>> {
        let mut conn = self.conn().await?;
        // Each target's deliveries go out in event order: only a target's oldest pending
        // delivery can be due.
        let heads = sqlx::query(
            "SELECT target_id, MIN(event_id) AS head FROM notification_deliveries \
             WHERE status = 'pending' GROUP BY target_id",
        )
        .fetch_all(&mut *conn)
        .await?;
        let now = now_ms();
        let mut due = Vec::new();
        for head in heads {
            if due.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
                break;
            }
            let target_id: String = head.try_get("target_id")?;
            let target = uuid("notification_deliveries", &target_id)?;
            if busy.contains(&target) {
                continue;
            }
            let row = sqlx::query(&format!(
                "SELECT {DELIVERY_COLS}, payload FROM notification_deliveries \
                 WHERE target_id = $1 AND event_id = $2 AND status = 'pending' \
                 AND next_attempt_at <= $3"
            ))
            .bind(target_id.clone())
            .bind(head.try_get::<i64, _>("head")?)
            .bind(now)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(row) = row else { continue };
            let delivery = delivery_row(&row)?;
            let event: Event = serde_json::from_str(&row.try_get::<String, _>("payload")?)
                .map_err(|e| StoreError::corrupt("notification_deliveries.payload", e))?;
            let target_row = sqlx::query(
                "SELECT kind, url_sealed, secret_sealed FROM notification_targets WHERE id = $1",
            )
            .bind(target_id)
            .fetch_one(&mut *conn)
            .await?;
            let kind: String = target_row.try_get("kind")?;
            due.push(DueDelivery {
                delivery,
                event,
                kind: NotificationKind::parse(&kind).ok_or_else(|| {
                    StoreError::corrupt("notification_targets", format!("kind {kind:?}"))
                })?,
                url: self.open_text(
                    &target_row.try_get::<String, _>("url_sealed")?,
                    target,
                    "url",
                )?,
                secret: target_row
                    .try_get::<Option<String>, _>("secret_sealed")?
                    .map(|sealed| self.open_text(&sealed, target, "secret"))
                    .transpose()?,
            });
        }
        Ok(due)
    }

    async fn finish_delivery_attempt(&self, id: Id, outcome: AttemptOutcome) -> Result<Delivery> {
        let now = now_ms();
        let cut = |e: &str| e.chars().take(MAX_ERROR).collect::<String>();
        let (status, last_status, last_error, next) = match &outcome {
            AttemptOutcome::Delivered { status } => {
                (DeliveryStatus::Delivered, Some(*status), None, None)
            }
            AttemptOutcome::Retry {
                status,
                error,
                retry_in,
            } => (
                DeliveryStatus::Pending,
                *status,
                Some(cut(error)),
                Some(add_ms(now, *retry_in)),
            ),
            AttemptOutcome::Failed { status, error } => {
                (DeliveryStatus::Failed, *status, Some(cut(error)), None)
            }
        };
        let mut conn = self.conn().await?;
        // Only a pending delivery changes state; one dropped meanwhile stays dropped.
        let done = sqlx::query(
            "UPDATE notification_deliveries SET attempts = attempts + 1, status = $1, \
             last_status = $2, last_error = $3, next_attempt_at = $4, updated_at = $5 \
             WHERE id = $6 AND status = 'pending'",
        )
        .bind(status.as_str())
        .bind(last_status.map(i64::from))
        .bind(last_error.clone())
        .bind(next)
        .bind(now)
        .bind(id.to_string())
        .execute(&mut *conn)
        .await?;
        if done.rows_affected() == 0 {
            sqlx::query(
                "UPDATE notification_deliveries SET attempts = attempts + 1, last_status = $1, \
                 updated_at = $2 WHERE id = $3",
            )
            .bind(last_status.map(i64::from))
            .bind(now)
            .bind(id.to_string())
            .execute(&mut *conn)
            .await?;
        }
        let delivery = sqlx::query(&format!(
            "SELECT {DELIVERY_COLS} FROM notification_deliveries WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        // Deleted with its target while the attempt ran.
        .ok_or_else(|| StoreError::not_found(Entity::NotificationTarget, id))?;
        delivery_row(&delivery)
    }

    async fn list_notification_deliveries(&self, query: DeliveryQuery) -> Result<Vec<Delivery>> {
        let mut sql = format!("SELECT {DELIVERY_COLS} FROM notification_deliveries WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if query.target_id.is_some() {
            sql += &format!(" AND target_id = {}", next());
        }
        if query.status.is_some() {
            sql += &format!(" AND status = {}", next());
        }
        sql += &format!(" ORDER BY event_id DESC, created_at DESC LIMIT {}", next());
        let mut q = sqlx::query(&sql);
        if let Some(target) = query.target_id {
            q = q.bind(target.to_string());
        }
        if let Some(status) = query.status {
            q = q.bind(status.as_str());
        }
        q.bind(list_limit(query.limit))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(delivery_row)
            .collect()
    }

    async fn next_delivery_due(&self) -> Result<Option<time::OffsetDateTime>> {
        let at: Option<i64> = sqlx::query(
            "SELECT MIN(next_attempt_at) AS due FROM notification_deliveries \
             WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?
        .try_get("due")?;
        opt_ts("notification_deliveries", at)
    }
}

/// Drops the oldest pending deliveries of a target beyond its queue bound; returns how many.
async fn drop_overflow(
    conn: &mut AnyConnection,
    target_id: &str,
    limits: QueueLimits,
    now: i64,
) -> Result<u32> {
    let pending: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM notification_deliveries WHERE target_id = $1 \
         AND status = 'pending'",
    )
    .bind(target_id.to_string())
    .fetch_one(&mut *conn)
    .await?
    .try_get("n")?;
    let excess = pending - i64::from(limits.pending_per_target.max(1));
    if excess <= 0 {
        return Ok(0);
    }
    let oldest: Vec<String> = sqlx::query(
        "SELECT id FROM notification_deliveries WHERE target_id = $1 AND status = 'pending' \
         ORDER BY event_id ASC LIMIT $2",
    )
    .bind(target_id.to_string())
    .bind(excess)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| row.try_get("id"))
    .collect::<Result<_, _>>()?;
    let error = format!(
        "dropped unsent: the target's queue was full ({} pending deliveries)",
        limits.pending_per_target
    );
    for id in &oldest {
        sqlx::query(
            "UPDATE notification_deliveries SET status = 'dropped', last_error = $1, \
             next_attempt_at = NULL, updated_at = $2 WHERE id = $3",
        )
        .bind(error.clone())
        .bind(now)
        .bind(id.clone())
        .execute(&mut *conn)
        .await?;
    }
    tracing::warn!(
        target_id,
        dropped = oldest.len(),
        "notification queue full; oldest deliveries dropped"
    );
    Ok(u32::try_from(oldest.len()).unwrap_or(u32::MAX))
}

/// Deletes a target's finished deliveries beyond the newest `history_per_target`.
async fn prune_history(
    conn: &mut AnyConnection,
    target_id: &str,
    limits: QueueLimits,
) -> Result<()> {
    sqlx::query(
        "DELETE FROM notification_deliveries WHERE target_id = $1 AND status <> 'pending' \
         AND id NOT IN (SELECT id FROM notification_deliveries WHERE target_id = $1 \
         AND status <> 'pending' ORDER BY event_id DESC LIMIT $2)",
    )
    .bind(target_id.to_string())
    .bind(i64::from(limits.history_per_target))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
