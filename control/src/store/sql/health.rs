//! [`HealthStore`] on SQL: `health_checks`, the history of health-check results.

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use super::column::{ms_of, opt_uuid, ts, uuid};
use super::write::db_err;
use super::{list_limit, SqlStore};
use crate::store::error::{Result, StoreError};
use crate::store::model::*;
use crate::store::HealthStore;

const HEALTH_COLS: &str =
    "id, kind, target, edge_id, origin_id, service_id, success, response_time_ms, error, checked_at";

/// Rows per INSERT statement of a batch (10 parameters each, well under both engines' limits).
const INSERT_CHUNK: usize = 100;

fn health_row(row: &AnyRow) -> Result<HealthCheck> {
    const T: &str = "health_checks";
    let kind: Option<String> = row.try_get("kind")?;
    Ok(HealthCheck {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        kind: kind
            .map(|k| {
                CheckKind::parse(&k).ok_or_else(|| StoreError::corrupt(T, format!("kind {k:?}")))
            })
            .transpose()?,
        target: row.try_get("target")?,
        edge_id: opt_uuid(T, row.try_get("edge_id")?)?,
        origin_id: opt_uuid(T, row.try_get("origin_id")?)?,
        service_id: opt_uuid(T, row.try_get("service_id")?)?,
        success: row.try_get::<i64, _>("success")? != 0,
        response_time_ms: row
            .try_get::<Option<i64>, _>("response_time_ms")?
            .map(|v| u32::try_from(v).map_err(|e| StoreError::corrupt(T, e)))
            .transpose()?,
        error: row.try_get("error")?,
        checked_at: ts(T, row.try_get("checked_at")?)?,
    })
}

#[async_trait]
impl HealthStore for SqlStore {
    async fn record_health_checks(&self, checks: Vec<NewHealthCheck>) -> Result<usize> {
        for check in &checks {
            if check.edge_id.is_none() && check.service_id.is_none() {
                return Err(StoreError::invalid(
                    "edge_id",
                    "a health check names an edge, a service, or both",
                ));
            }
        }
        if checks.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        for chunk in checks.chunks(INSERT_CHUNK) {
            let mut sql = format!("INSERT INTO health_checks ({HEALTH_COLS}) VALUES ");
            for i in 0..chunk.len() {
                let b = i * 10;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql += &format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7,
                    b + 8,
                    b + 9,
                    b + 10
                );
            }
            let mut q = sqlx::query(&sql);
            for check in chunk {
                let target: String = check.target.chars().take(1024).collect();
                let error = check
                    .error
                    .as_ref()
                    .map(|e| e.chars().take(4096).collect::<String>());
                q = q
                    .bind(Uuid::new_v4().to_string())
                    .bind(check.kind.as_str())
                    .bind(target)
                    .bind(check.edge_id.map(|e| e.to_string()))
                    .bind(check.origin_id.map(|o| o.to_string()))
                    .bind(check.service_id.map(|s| s.to_string()))
                    .bind(i64::from(check.success))
                    .bind(check.response_time_ms.map(i64::from))
                    .bind(error)
                    .bind(ms_of(check.checked_at));
            }
            q.execute(&mut *tx).await.map_err(db_err)?;
        }
        tx.commit().await?;
        Ok(checks.len())
    }

    async fn health_checks(&self, query: HealthQuery) -> Result<Vec<HealthCheck>> {
        let limit = list_limit(query.limit);
        let mut sql = format!("SELECT {HEALTH_COLS} FROM health_checks WHERE 1 = 1");
        let mut binds: Vec<String> = Vec::new();
        let mut filter = |column: &str, value: String, sql: &mut String| {
            binds.push(value);
            *sql += &format!(" AND {column} = ${}", binds.len());
        };
        if let Some(edge) = query.edge_id {
            filter("edge_id", edge.to_string(), &mut sql);
        }
        if let Some(origin) = query.origin_id {
            filter("origin_id", origin.to_string(), &mut sql);
        }
        if let Some(service) = query.service_id {
            filter("service_id", service.to_string(), &mut sql);
        }
        if let Some(kind) = query.kind {
            filter("kind", kind.as_str().to_owned(), &mut sql);
        }
        if let Some(success) = query.success {
            sql += &format!(" AND success = {}", i64::from(success));
        }
        sql += &format!(" ORDER BY checked_at DESC, id LIMIT ${}", binds.len() + 1);
        let mut q = sqlx::query(&sql);
        for value in binds {
            q = q.bind(value);
        }
        q.bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(health_row)
            .collect()
    }

    async fn prune_health_checks(&self, before: OffsetDateTime) -> Result<u64> {
        let done = sqlx::query("DELETE FROM health_checks WHERE checked_at < $1")
            .bind(ms_of(before))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
