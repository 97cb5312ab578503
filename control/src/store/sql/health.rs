//! [`HealthStore`] on SQL: `health_checks`, the history of active health-check results.

use async_trait::async_trait;
use sqlx::any::AnyRow;
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use super::column::{ms_of, now_ms, opt_uuid, ts, uuid};
use super::write::db_err;
use super::{list_limit, SqlStore};
use crate::store::error::{Result, StoreError};
use crate::store::model::*;
use crate::store::HealthStore;

const HEALTH_COLS: &str = "id, edge_id, service_id, success, response_time_ms, error, checked_at";

fn health_row(row: &AnyRow) -> Result<HealthCheck> {
    const T: &str = "health_checks";
    Ok(HealthCheck {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        edge_id: opt_uuid(T, row.try_get("edge_id")?)?,
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
    async fn record_health_check(&self, check: NewHealthCheck) -> Result<HealthCheck> {
        if check.edge_id.is_none() && check.service_id.is_none() {
            return Err(StoreError::invalid(
                "edge_id",
                "a health check names an edge, a service, or both",
            ));
        }
        let id = Uuid::new_v4();
        let now = now_ms();
        let error = check
            .error
            .map(|e| e.chars().take(4096).collect::<String>());
        sqlx::query(&format!(
            "INSERT INTO health_checks ({HEALTH_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ))
        .bind(id.to_string())
        .bind(check.edge_id.map(|e| e.to_string()))
        .bind(check.service_id.map(|s| s.to_string()))
        .bind(i64::from(check.success))
        .bind(check.response_time_ms.map(i64::from))
        .bind(error.clone())
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(HealthCheck {
            id,
            edge_id: check.edge_id,
            service_id: check.service_id,
            success: check.success,
            response_time_ms: check.response_time_ms,
            error,
            checked_at: ts("health_checks", now)?,
        })
    }

    async fn health_checks(&self, query: HealthQuery) -> Result<Vec<HealthCheck>> {
        let limit = list_limit(query.limit);
        let mut sql = format!("SELECT {HEALTH_COLS} FROM health_checks WHERE 1 = 1");
        let mut n = 0;
        if query.edge_id.is_some() {
            n += 1;
            sql += &format!(" AND edge_id = ${n}");
        }
        if query.service_id.is_some() {
            n += 1;
            sql += &format!(" AND service_id = ${n}");
        }
        sql += &format!(" ORDER BY checked_at DESC, id LIMIT ${}", n + 1);
        let mut q = sqlx::query(&sql);
        if let Some(edge) = query.edge_id {
            q = q.bind(edge.to_string());
        }
        if let Some(service) = query.service_id {
            q = q.bind(service.to_string());
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
