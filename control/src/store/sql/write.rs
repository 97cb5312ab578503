//! Write transactions and the checks that run inside them.
//!
//! Every change goes through a [`Write`]: it holds the process's write gate and the engine's
//! write lock (SQLite `BEGIN IMMEDIATE`, PostgreSQL a transaction-scoped advisory lock), so the
//! pre-checks here ([`exists`], [`lowest_free`]) see no concurrent writer between the check and
//! the insert.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use sqlx::{Any, AnyConnection, Row, Transaction};
use tokio::sync::MutexGuard;

use super::column::now_ms;
use super::SqlStore;
use crate::store::error::{Entity, Result, StoreError};
use crate::store::migrate;
use crate::store::model::Actor;

/// Maps a uniqueness violation the pre-checks did not catch (a concurrent writer outside this
/// store's locks) to a Conflict; everything else stays a database error.
pub(super) fn db_err(e: sqlx::Error) -> StoreError {
    if let Some(db) = e.as_database_error() {
        match db.kind() {
            sqlx::error::ErrorKind::UniqueViolation => {
                return StoreError::conflict(format!("already exists: {}", db.message()))
            }
            sqlx::error::ErrorKind::ForeignKeyViolation => {
                return StoreError::invalid(
                    "reference",
                    format!("unknown entity: {}", db.message()),
                )
            }
            _ => {}
        }
    }
    StoreError::Database(e)
}

/// The lowest value of `range` not in `used`.
pub(super) fn lowest_free(range: std::ops::RangeInclusive<u8>, used: &BTreeSet<i64>) -> Option<u8> {
    range.into_iter().find(|v| !used.contains(&i64::from(*v)))
}

/// `{"field": {"from": old, "to": new}}` for each top-level field that differs.
pub(super) fn changes(before: &impl serde::Serialize, after: &impl serde::Serialize) -> Value {
    let (Ok(Value::Object(before)), Ok(Value::Object(after))) =
        (serde_json::to_value(before), serde_json::to_value(after))
    else {
        return Value::Null;
    };
    let mut out = serde_json::Map::new();
    for (field, new) in &after {
        if matches!(field.as_str(), "updated_at" | "state") {
            continue;
        }
        let old = before.get(field).cloned().unwrap_or(Value::Null);
        if &old != new {
            out.insert(field.clone(), json!({"from": old, "to": new}));
        }
    }
    Value::Object(out)
}

/// Whether `sql` (a `SELECT 1 ... LIMIT 1` with one text parameter, plus an optional second)
/// finds a row.
pub(super) async fn exists(
    conn: &mut AnyConnection,
    sql: &str,
    a: String,
    b: Option<String>,
) -> Result<bool> {
    let mut q = sqlx::query(sql).bind(a);
    if let Some(b) = b {
        q = q.bind(b);
    }
    Ok(q.fetch_optional(&mut *conn).await?.is_some())
}

/// A write transaction: holds the write locks, stamps the actor on events, bumps the config
/// version at most once, and publishes the new version after commit.
pub(super) struct Write<'a> {
    tx: Transaction<'static, Any>,
    _gate: MutexGuard<'a, ()>,
    store: &'a SqlStore,
    actor: String,
    pub(super) now: i64,
    version: Option<i64>,
}

impl Write<'_> {
    pub(super) fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Bumps the config version (once per transaction) and returns it.
    pub(super) async fn bump(&mut self) -> Result<i64> {
        if let Some(v) = self.version {
            return Ok(v);
        }
        let v: i64 = sqlx::query(
            "UPDATE config_version SET version = version + 1 WHERE id = 1 RETURNING version",
        )
        .fetch_one(&mut *self.tx)
        .await?
        .try_get("version")?;
        self.version = Some(v);
        Ok(v)
    }

    /// Appends an audit event (after [`Write::bump`] when the change affects config, so the
    /// event carries the version).
    pub(super) async fn event(
        &mut self,
        entity: Entity,
        id: &str,
        action: &str,
        detail: Value,
    ) -> Result<()> {
        let next: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) + 1 AS next FROM events")
            .fetch_one(&mut *self.tx)
            .await?
            .try_get("next")?;
        sqlx::query(
            "INSERT INTO events (id, at, actor, entity, entity_id, action, detail, config_version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(next)
        .bind(self.now)
        .bind(self.actor.clone())
        .bind(entity.as_str())
        .bind(id.to_string())
        .bind(action.to_string())
        .bind(detail.to_string())
        .bind(self.version)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Checks the config of every node as it is inside this transaction with the model's rules
    /// across objects ([`spec::check`](crate::store::spec::check)), so a change no node would
    /// accept is refused before it is committed.
    pub(super) async fn check_fleet(&mut self) -> Result<()> {
        let now = self.now;
        let snapshot = super::read_snapshot(self.conn(), now).await?;
        crate::store::spec::check(&snapshot)
    }

    pub(super) async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        if let Some(v) = self.version {
            let v = u64::try_from(v).unwrap_or_default();
            self.store.version.send_if_modified(|current| {
                if v > *current {
                    *current = v;
                    true
                } else {
                    false
                }
            });
        }
        Ok(())
    }
}

impl SqlStore {
    pub(super) async fn write(&self, actor: &Actor) -> Result<Write<'_>> {
        let gate = self.write_gate.lock().await;
        let tx = migrate::begin_locked(&self.pool, self.engine).await?;
        Ok(Write {
            tx,
            _gate: gate,
            store: self,
            actor: actor.to_string(),
            now: now_ms(),
            version: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model::{EDGE_HOSTS, SUBNETS};

    #[test]
    fn lowest_free_picks_the_first_gap() {
        let used: BTreeSet<i64> = [1, 2, 4].into_iter().collect();
        assert_eq!(lowest_free(SUBNETS, &used), Some(3));
        let full: BTreeSet<i64> = (1..=254).collect();
        assert_eq!(lowest_free(SUBNETS, &full), None);
        assert_eq!(lowest_free(EDGE_HOSTS, &BTreeSet::new()), Some(10));
    }

    #[test]
    fn changes_lists_only_differing_fields() {
        let diff = changes(
            &json!({"a": 1, "b": 2, "updated_at": 1}),
            &json!({"a": 1, "b": 3, "updated_at": 2}),
        );
        assert_eq!(diff, json!({"b": {"from": 2, "to": 3}}));
    }
}
