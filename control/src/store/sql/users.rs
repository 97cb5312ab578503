//! [`UserStore`] on SQL: `users` (password hash, sealed TOTP secret, failure count) and
//! `user_recovery_codes` (SHA-256 only).

use async_trait::async_trait;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use super::column::{add_ms, opt_ts, ts, u64_of, uuid};
use super::write::{db_err, exists};
use super::SqlStore;
use crate::store::error::{Entity, Result, StoreError};
use crate::store::model::{Actor, Id, Name};
use crate::store::users::{
    FailureOutcome, LockoutPolicy, NewUser, Role, User, UserSecrets, UserUpdate,
};
use crate::store::UserStore;

const T: &str = "users";

fn user_cols() -> &'static str {
    "u.id, u.name, u.role, u.totp_sealed, u.locked_until, u.last_login_at, u.created_at, \
     u.updated_at, (SELECT COUNT(*) FROM user_recovery_codes c WHERE c.user_id = u.id AND \
     c.used_at IS NULL) AS codes_left"
}

fn user_row(row: &AnyRow) -> Result<User> {
    let role: String = row.try_get("role")?;
    let totp: Option<String> = row.try_get("totp_sealed")?;
    let codes: i64 = row.try_get("codes_left")?;
    Ok(User {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        name: row.try_get("name")?,
        role: Role::parse(&role).ok_or_else(|| StoreError::corrupt(T, format!("role {role:?}")))?,
        totp_enabled: totp.is_some(),
        recovery_codes_left: u32::try_from(codes).unwrap_or(0),
        locked_until: opt_ts(T, row.try_get("locked_until")?)?
            .filter(|t| *t > OffsetDateTime::now_utc()),
        last_login_at: opt_ts(T, row.try_get("last_login_at")?)?,
        created_at: ts(T, row.try_get("created_at")?)?,
        updated_at: ts(T, row.try_get("updated_at")?)?,
    })
}

pub(super) async fn fetch_user(conn: &mut AnyConnection, id: Id) -> Result<User> {
    let row = sqlx::query(&format!(
        "SELECT {} FROM users u WHERE u.id = $1",
        user_cols()
    ))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found(Entity::User, id))?;
    user_row(&row)
}

/// Refuses a change that would leave no admin: `id` is the user losing the role.
async fn check_other_admin(conn: &mut AnyConnection, id: Id, what: &str) -> Result<()> {
    let others: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM users WHERE role = 'admin' AND id <> $1")
            .bind(id.to_string())
            .fetch_one(&mut *conn)
            .await?
            .try_get("n")?;
    if others == 0 {
        return Err(StoreError::conflict(format!(
            "{what} would leave no admin; make another user admin first"
        )));
    }
    Ok(())
}

impl SqlStore {
    fn seal_totp(&self, id: Id, secret: &[u8]) -> Result<String> {
        Ok(self.key.seal(secret, &Self::aad(Entity::User, id))?)
    }
}

#[async_trait]
impl UserStore for SqlStore {
    async fn create_user(&self, actor: &Actor, new: NewUser) -> Result<User> {
        let name = Name::new(&new.name)
            .map_err(|e| StoreError::model("name", e))?
            .to_string();
        if !new.password_hash.starts_with("$argon2id$") {
            return Err(StoreError::invalid(
                "password",
                "not an Argon2id hash (a bug in the caller)",
            ));
        }
        let mut w = self.write(actor).await?;
        if exists(
            w.conn(),
            "SELECT 1 FROM users WHERE name = $1",
            name.clone(),
            None,
        )
        .await?
        {
            return Err(StoreError::conflict(format!(
                "a user named {name} already exists"
            )));
        }
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO users (id, name, password_hash, role, failed_logins, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, 0, $5, $5)",
        )
        .bind(id.to_string())
        .bind(name.clone())
        .bind(new.password_hash)
        .bind(new.role.as_str())
        .bind(w.now)
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        w.event(
            Entity::User,
            &id.to_string(),
            "created",
            json!({"name": name, "role": new.role}),
        )
        .await?;
        let user = fetch_user(w.conn(), id).await?;
        w.commit().await?;
        Ok(user)
    }

    async fn list_users(&self) -> Result<Vec<User>> {
        sqlx::query(&format!(
            "SELECT {} FROM users u ORDER BY u.name",
            user_cols()
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(user_row)
        .collect()
    }

    async fn count_users(&self) -> Result<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        u64_of(T, n)
    }

    async fn get_user(&self, id: Id) -> Result<User> {
        fetch_user(&mut *self.conn().await?, id).await
    }

    async fn user_by_name(&self, name: &str) -> Result<User> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM users u WHERE u.name = $1",
            user_cols()
        ))
        .bind(name.trim().to_ascii_lowercase())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::not_found(Entity::User, name))?;
        user_row(&row)
    }

    async fn user_secrets(&self, id: Id) -> Result<UserSecrets> {
        let row = sqlx::query(
            "SELECT password_hash, totp_sealed, totp_pending_sealed FROM users WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::not_found(Entity::User, id))?;
        let aad = Self::aad(Entity::User, id);
        let open = |sealed: Option<String>| -> Result<_> {
            sealed
                .map(|s| self.key.open(&s, &aad))
                .transpose()
                .map_err(Into::into)
        };
        Ok(UserSecrets {
            password_hash: row.try_get("password_hash")?,
            totp: open(row.try_get("totp_sealed")?)?,
            totp_pending: open(row.try_get("totp_pending_sealed")?)?,
        })
    }

    async fn update_user(&self, actor: &Actor, id: Id, update: UserUpdate) -> Result<User> {
        let mut w = self.write(actor).await?;
        let before = fetch_user(w.conn(), id).await?;
        let mut detail = serde_json::Map::new();
        if let Some(role) = update.role.filter(|r| *r != before.role) {
            if before.role == Role::Admin {
                check_other_admin(w.conn(), id, "taking the admin role from this user").await?;
            }
            sqlx::query("UPDATE users SET role = $1, updated_at = $2 WHERE id = $3")
                .bind(role.as_str())
                .bind(w.now)
                .bind(id.to_string())
                .execute(w.conn())
                .await?;
            detail.insert("role".into(), json!({"from": before.role, "to": role}));
        }
        if let Some(hash) = update.password_hash {
            if !hash.starts_with("$argon2id$") {
                return Err(StoreError::invalid("password", "not an Argon2id hash"));
            }
            sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
                .bind(hash)
                .bind(w.now)
                .bind(id.to_string())
                .execute(w.conn())
                .await?;
            // A new password ends every session opened with the old one.
            sqlx::query("DELETE FROM sessions WHERE user_id = $1")
                .bind(id.to_string())
                .execute(w.conn())
                .await?;
            detail.insert("password".into(), json!("changed"));
        }
        if !detail.is_empty() {
            w.event(
                Entity::User,
                &id.to_string(),
                "updated",
                serde_json::Value::Object(detail),
            )
            .await?;
        }
        let user = fetch_user(w.conn(), id).await?;
        w.commit().await?;
        Ok(user)
    }

    async fn delete_user(&self, actor: &Actor, id: Id) -> Result<()> {
        let mut w = self.write(actor).await?;
        let user = fetch_user(w.conn(), id).await?;
        if user.role == Role::Admin {
            check_other_admin(w.conn(), id, "deleting this user").await?;
        }
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id.to_string())
            .execute(w.conn())
            .await?;
        w.event(
            Entity::User,
            &id.to_string(),
            "deleted",
            json!({"name": user.name}),
        )
        .await?;
        w.commit().await
    }

    async fn begin_totp(&self, actor: &Actor, id: Id, secret: &[u8]) -> Result<()> {
        let sealed = self.seal_totp(id, secret)?;
        let mut w = self.write(actor).await?;
        fetch_user(w.conn(), id).await?;
        sqlx::query("UPDATE users SET totp_pending_sealed = $1, updated_at = $2 WHERE id = $3")
            .bind(sealed)
            .bind(w.now)
            .bind(id.to_string())
            .execute(w.conn())
            .await?;
        w.event(
            Entity::User,
            &id.to_string(),
            "totp_enrolment_started",
            json!({}),
        )
        .await?;
        w.commit().await
    }

    async fn enable_totp(
        &self,
        actor: &Actor,
        id: Id,
        step: u64,
        recovery_hashes: &[String],
    ) -> Result<User> {
        let mut w = self.write(actor).await?;
        let pending: Option<String> =
            sqlx::query("SELECT totp_pending_sealed FROM users WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(w.conn())
                .await?
                .ok_or_else(|| StoreError::not_found(Entity::User, id))?
                .try_get("totp_pending_sealed")?;
        let Some(pending) = pending else {
            return Err(StoreError::invalid(
                "code",
                "no TOTP enrolment in progress; start one first",
            ));
        };
        sqlx::query(
            "UPDATE users SET totp_sealed = $1, totp_pending_sealed = NULL, totp_last_step = $2, \
             updated_at = $3 WHERE id = $4",
        )
        .bind(pending)
        .bind(i64::try_from(step).unwrap_or(i64::MAX))
        .bind(w.now)
        .bind(id.to_string())
        .execute(w.conn())
        .await?;
        sqlx::query("DELETE FROM user_recovery_codes WHERE user_id = $1")
            .bind(id.to_string())
            .execute(w.conn())
            .await?;
        for hash in recovery_hashes {
            sqlx::query("INSERT INTO user_recovery_codes (user_id, code_hash) VALUES ($1, $2)")
                .bind(id.to_string())
                .bind(hash.clone())
                .execute(w.conn())
                .await
                .map_err(db_err)?;
        }
        w.event(
            Entity::User,
            &id.to_string(),
            "totp_enabled",
            json!({"recovery_codes": recovery_hashes.len()}),
        )
        .await?;
        let user = fetch_user(w.conn(), id).await?;
        w.commit().await?;
        Ok(user)
    }

    async fn disable_totp(&self, actor: &Actor, id: Id) -> Result<User> {
        let mut w = self.write(actor).await?;
        fetch_user(w.conn(), id).await?;
        sqlx::query(
            "UPDATE users SET totp_sealed = NULL, totp_pending_sealed = NULL, \
             totp_last_step = NULL, updated_at = $1 WHERE id = $2",
        )
        .bind(w.now)
        .bind(id.to_string())
        .execute(w.conn())
        .await?;
        sqlx::query("DELETE FROM user_recovery_codes WHERE user_id = $1")
            .bind(id.to_string())
            .execute(w.conn())
            .await?;
        w.event(Entity::User, &id.to_string(), "totp_disabled", json!({}))
            .await?;
        let user = fetch_user(w.conn(), id).await?;
        w.commit().await?;
        Ok(user)
    }

    async fn accept_totp_step(&self, id: Id, step: u64) -> Result<bool> {
        let step = i64::try_from(step).unwrap_or(i64::MAX);
        // One conditional UPDATE: of two concurrent logins with the same code (on one replica
        // or two) exactly one changes the row.
        let done = sqlx::query(
            "UPDATE users SET totp_last_step = $1 WHERE id = $2 AND totp_sealed IS NOT NULL \
             AND (totp_last_step IS NULL OR totp_last_step < $1)",
        )
        .bind(step)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn use_recovery_code(&self, actor: &Actor, id: Id, code_hash: &str) -> Result<bool> {
        let mut w = self.write(actor).await?;
        let done = sqlx::query(
            "UPDATE user_recovery_codes SET used_at = $1 WHERE user_id = $2 AND code_hash = $3 \
             AND used_at IS NULL",
        )
        .bind(w.now)
        .bind(id.to_string())
        .bind(code_hash.to_string())
        .execute(w.conn())
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        let left = fetch_user(w.conn(), id).await?.recovery_codes_left;
        w.event(
            Entity::User,
            &id.to_string(),
            "recovery_code_used",
            json!({"left": left}),
        )
        .await?;
        w.commit().await?;
        Ok(true)
    }

    async fn login_failed(
        &self,
        actor: &Actor,
        id: Id,
        reason: &str,
        policy: &LockoutPolicy,
    ) -> Result<FailureOutcome> {
        let mut w = self.write(actor).await?;
        let row =
            sqlx::query("SELECT name, failed_logins, first_failure_at FROM users WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(w.conn())
                .await?
                .ok_or_else(|| StoreError::not_found(Entity::User, id))?;
        let name: String = row.try_get("name")?;
        let failed: i64 = row.try_get("failed_logins")?;
        let first: Option<i64> = row.try_get("first_failure_at")?;
        let window_open = first.is_some_and(|first| add_ms(first, policy.window) > w.now);
        let (count, first) = if window_open {
            (failed.saturating_add(1), first.unwrap_or(w.now))
        } else {
            (1, w.now)
        };
        let max = i64::from(policy.max_failures.max(1));
        let outcome = if count >= max {
            let until = add_ms(w.now, policy.lockout);
            sqlx::query(
                "UPDATE users SET failed_logins = 0, first_failure_at = NULL, locked_until = $1 \
                 WHERE id = $2",
            )
            .bind(until)
            .bind(id.to_string())
            .execute(w.conn())
            .await?;
            FailureOutcome::Locked(ts(T, until)?)
        } else {
            sqlx::query("UPDATE users SET failed_logins = $1, first_failure_at = $2 WHERE id = $3")
                .bind(count)
                .bind(first)
                .bind(id.to_string())
                .execute(w.conn())
                .await?;
            FailureOutcome::Counted {
                left: u32::try_from(max - count).unwrap_or(0),
            }
        };
        w.event(
            Entity::User,
            &id.to_string(),
            "login_failed",
            json!({"name": name, "reason": reason}),
        )
        .await?;
        if let FailureOutcome::Locked(until) = outcome {
            w.event(
                Entity::User,
                &id.to_string(),
                "locked",
                json!({
                    "name": name,
                    "until": until.format(&time::format_description::well_known::Rfc3339).ok(),
                    "failures": count,
                }),
            )
            .await?;
        }
        w.commit().await?;
        Ok(outcome)
    }

    async fn login_succeeded(&self, id: Id) -> Result<()> {
        sqlx::query(
            "UPDATE users SET failed_logins = 0, first_failure_at = NULL, locked_until = NULL, \
             last_login_at = $1 WHERE id = $2",
        )
        .bind(super::column::now_ms())
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn audit_login(
        &self,
        actor: &Actor,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<()> {
        let id = detail["address"].as_str().unwrap_or("").to_string();
        let mut w = self.write(actor).await?;
        w.event(Entity::Session, &id, action, detail).await?;
        w.commit().await
    }
}
