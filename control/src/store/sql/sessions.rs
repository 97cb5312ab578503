//! [`SessionStore`] on SQL: `sessions`, keyed by the SHA-256 of the cookie secret.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::column::{add_ms, ms_of, now_ms, ts, uuid};
use super::users::fetch_user;
use super::SqlStore;
use crate::store::error::{Entity, Result, StoreError};
use crate::store::model::{Actor, Id};
use crate::store::sessions::{IssuedSession, NewSession, Session, SessionStage, TOUCH_INTERVAL};
use crate::store::users::User;
use crate::store::{token, SessionStore};

const T: &str = "sessions";
const COLS: &str = "id, user_id, stage, address, user_agent, created_at, last_seen_at, expires_at";
/// Longest User-Agent kept.
const USER_AGENT_MAX: usize = 200;

fn session_row(row: &AnyRow) -> Result<Session> {
    let stage: String = row.try_get("stage")?;
    Ok(Session {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        user_id: uuid(T, &row.try_get::<String, _>("user_id")?)?,
        stage: SessionStage::parse(&stage)
            .ok_or_else(|| StoreError::corrupt(T, format!("stage {stage:?}")))?,
        address: row.try_get("address")?,
        user_agent: row.try_get("user_agent")?,
        created_at: ts(T, row.try_get("created_at")?)?,
        last_seen_at: ts(T, row.try_get("last_seen_at")?)?,
        expires_at: ts(T, row.try_get("expires_at")?)?,
    })
}

async fn fetch_session(conn: &mut AnyConnection, id: Id) -> Result<Session> {
    let row = sqlx::query(&format!("SELECT {COLS} FROM sessions WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::not_found(Entity::Session, id))?;
    session_row(&row)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl SessionStore for SqlStore {
    async fn create_session(&self, actor: &Actor, new: NewSession) -> Result<IssuedSession> {
        if new.lifetime.is_zero() {
            return Err(StoreError::invalid("lifetime", "must be positive"));
        }
        let mut w = self.write(actor).await?;
        let user = fetch_user(w.conn(), new.user_id).await?;
        let uid = new.user_id.to_string();
        sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND expires_at <= $2")
            .bind(uid.clone())
            .bind(w.now)
            .execute(w.conn())
            .await?;
        // Keep at most max_per_user - 1 so the new one fits: the oldest logins go first.
        let keep = i64::from(new.max_per_user.max(1)) - 1;
        let old = sqlx::query(
            "SELECT id FROM sessions WHERE user_id = $1 ORDER BY created_at DESC, id DESC",
        )
        .bind(uid.clone())
        .fetch_all(w.conn())
        .await?;
        for row in old.iter().skip(usize::try_from(keep).unwrap_or(0)) {
            let id: String = row.try_get("id")?;
            sqlx::query("DELETE FROM sessions WHERE id = $1")
                .bind(id)
                .execute(w.conn())
                .await?;
        }
        let secret = token::generate("session");
        let id = Uuid::new_v4();
        let agent = new.user_agent.map(|a| {
            let mut a: String = a.chars().filter(|c| !c.is_control()).collect();
            if a.len() > USER_AGENT_MAX {
                let mut end = USER_AGENT_MAX;
                while !a.is_char_boundary(end) {
                    end -= 1;
                }
                a.truncate(end);
            }
            a
        });
        sqlx::query(
            "INSERT INTO sessions (id, token_hash, user_id, stage, address, user_agent, \
             created_at, last_seen_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
        )
        .bind(id.to_string())
        .bind(token::hash(secret.expose()))
        .bind(uid)
        .bind(new.stage.as_str())
        .bind(new.address.map(|a| a.to_string()))
        .bind(agent)
        .bind(w.now)
        .bind(add_ms(w.now, new.lifetime))
        .execute(w.conn())
        .await?;
        if new.stage == SessionStage::Active {
            w.event(
                Entity::Session,
                &id.to_string(),
                "logged_in",
                json!({"user": user.name, "address": new.address.map(|a| a.to_string())}),
            )
            .await?;
        }
        let session = fetch_session(w.conn(), id).await?;
        w.commit().await?;
        Ok(IssuedSession { session, secret })
    }

    async fn authenticate_session(&self, secret: &str, idle: Duration) -> Result<(Session, User)> {
        let refused = |reason| StoreError::Unauthenticated { reason };
        let mut conn = self.conn().await?;
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM sessions WHERE token_hash = $1"
        ))
        .bind(token::hash(secret.trim()))
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(refused("unknown session"))?;
        let session = session_row(&row)?;
        let now = now_ms();
        let last_seen = ms_of(session.last_seen_at);
        let expired = ms_of(session.expires_at) <= now;
        let idle_out = add_ms(last_seen, idle) <= now;
        if expired || idle_out {
            sqlx::query("DELETE FROM sessions WHERE id = $1")
                .bind(session.id.to_string())
                .execute(&mut *conn)
                .await?;
            return Err(refused(if expired {
                "session reached its absolute timeout"
            } else {
                "session idle for too long"
            }));
        }
        if now - last_seen >= ms(TOUCH_INTERVAL) {
            sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id = $2")
                .bind(now)
                .bind(session.id.to_string())
                .execute(&mut *conn)
                .await?;
        }
        let user = fetch_user(&mut conn, session.user_id).await?;
        Ok((session, user))
    }

    async fn delete_session(&self, actor: &Actor, id: Id, event: bool) -> Result<()> {
        let mut w = self.write(actor).await?;
        let session = match fetch_session(w.conn(), id).await {
            Ok(session) => session,
            Err(StoreError::NotFound { .. }) => return Ok(()),
            Err(error) => return Err(error),
        };
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(id.to_string())
            .execute(w.conn())
            .await?;
        if event {
            let user = fetch_user(w.conn(), session.user_id).await?;
            w.event(
                Entity::Session,
                &id.to_string(),
                "logged_out",
                json!({"user": user.name}),
            )
            .await?;
        }
        w.commit().await
    }

    async fn list_sessions(&self, user_id: Id) -> Result<Vec<Session>> {
        sqlx::query(&format!(
            "SELECT {COLS} FROM sessions WHERE user_id = $1 ORDER BY created_at DESC"
        ))
        .bind(user_id.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(session_row)
        .collect()
    }
}
