//! [`ProvisionStore`] on SQL: the `edge_instances` and `edge_replacements` tables.

use std::net::IpAddr;
use std::str::FromStr;

use async_trait::async_trait;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::column::{ms_of, opt_ts, opt_uuid, ts, uuid};
use super::SqlStore;
use crate::store::error::{Entity, Result, StoreError};
use crate::store::model::{Actor, Id};
use crate::store::provision::{
    EdgeInstance, InstanceState, ProvisionStore, ReplaceCause, Replacement, ReplacementStage,
};

const INSTANCE_COLS: &str = "edge_id, edge_name, provider, instance_id, state, public_ip, region, \
                             size, error, created_at, updated_at";
const REPLACEMENT_COLS: &str = "id, old_edge_id, old_edge_name, new_edge_id, new_edge_name, \
                                stage, cause, reason, error, started_at, updated_at, finished_at";

fn instance_row(row: &AnyRow) -> Result<EdgeInstance> {
    const T: &str = "edge_instances";
    let state: String = row.try_get("state")?;
    let public_ip: Option<String> = row.try_get("public_ip")?;
    Ok(EdgeInstance {
        edge_id: uuid(T, &row.try_get::<String, _>("edge_id")?)?,
        edge_name: row.try_get("edge_name")?,
        provider: row.try_get("provider")?,
        instance_id: row.try_get("instance_id")?,
        state: InstanceState::parse(&state)
            .ok_or_else(|| StoreError::corrupt(T, format!("state {state:?}")))?,
        public_ip: public_ip
            .map(|ip| IpAddr::from_str(&ip).map_err(|e| StoreError::corrupt(T, e)))
            .transpose()?,
        region: row.try_get("region")?,
        size: row.try_get("size")?,
        error: row.try_get("error")?,
        created_at: ts(T, row.try_get("created_at")?)?,
        updated_at: ts(T, row.try_get("updated_at")?)?,
    })
}

fn replacement_row(row: &AnyRow) -> Result<Replacement> {
    const T: &str = "edge_replacements";
    let stage: String = row.try_get("stage")?;
    let cause: String = row.try_get("cause")?;
    Ok(Replacement {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        old_edge_id: uuid(T, &row.try_get::<String, _>("old_edge_id")?)?,
        old_edge_name: row.try_get("old_edge_name")?,
        new_edge_id: opt_uuid(T, row.try_get("new_edge_id")?)?,
        new_edge_name: row.try_get("new_edge_name")?,
        stage: ReplacementStage::parse(&stage)
            .ok_or_else(|| StoreError::corrupt(T, format!("stage {stage:?}")))?,
        cause: match cause.as_str() {
            "auto" => ReplaceCause::Auto,
            "manual" => ReplaceCause::Manual,
            other => return Err(StoreError::corrupt(T, format!("cause {other:?}"))),
        },
        reason: row.try_get("reason")?,
        error: row.try_get("error")?,
        started_at: ts(T, row.try_get("started_at")?)?,
        updated_at: ts(T, row.try_get("updated_at")?)?,
        finished_at: opt_ts(T, row.try_get("finished_at")?)?,
    })
}

#[async_trait]
impl ProvisionStore for SqlStore {
    async fn put_instance(&self, instance: &EdgeInstance) -> Result<()> {
        let mut w = self.write(&Actor::System).await?;
        let now = w.now;
        sqlx::query(&format!(
            "INSERT INTO edge_instances ({INSTANCE_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (edge_id) DO UPDATE SET edge_name = $2, provider = $3, \
             instance_id = $4, state = $5, public_ip = $6, region = $7, size = $8, error = $9, \
             updated_at = $11"
        ))
        .bind(instance.edge_id.to_string())
        .bind(instance.edge_name.clone())
        .bind(instance.provider.clone())
        .bind(instance.instance_id.clone())
        .bind(instance.state.as_str())
        .bind(instance.public_ip.map(|ip| ip.to_string()))
        .bind(instance.region.clone())
        .bind(instance.size.clone())
        .bind(instance.error.clone())
        .bind(ms_of(instance.created_at))
        .bind(now)
        .execute(w.conn())
        .await?;
        w.commit().await
    }

    async fn get_instance(&self, edge_id: Id) -> Result<Option<EdgeInstance>> {
        sqlx::query(&format!(
            "SELECT {INSTANCE_COLS} FROM edge_instances WHERE edge_id = $1"
        ))
        .bind(edge_id.to_string())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(instance_row)
        .transpose()
    }

    async fn list_instances(&self) -> Result<Vec<EdgeInstance>> {
        sqlx::query(&format!(
            "SELECT {INSTANCE_COLS} FROM edge_instances ORDER BY created_at, edge_id"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(instance_row)
        .collect()
    }

    async fn delete_instance(&self, edge_id: Id) -> Result<()> {
        let mut w = self.write(&Actor::System).await?;
        sqlx::query("DELETE FROM edge_instances WHERE edge_id = $1")
            .bind(edge_id.to_string())
            .execute(w.conn())
            .await?;
        w.commit().await
    }

    async fn start_replacement(
        &self,
        actor: &Actor,
        replacement: &Replacement,
        max_in_flight: usize,
    ) -> Result<()> {
        let mut w = self.write(actor).await?;
        let unfinished = "stage NOT IN ('done', 'failed')";
        let same: i64 = sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM edge_replacements WHERE old_edge_id = $1 AND {unfinished}"
        ))
        .bind(replacement.old_edge_id.to_string())
        .fetch_one(w.conn())
        .await?
        .try_get("n")?;
        if same > 0 {
            return Err(StoreError::conflict(format!(
                "edge {:?} is already being replaced",
                replacement.old_edge_name
            )));
        }
        // Nor may an edge that is itself the new edge of an unfinished replacement be replaced.
        let newer: i64 = sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM edge_replacements WHERE new_edge_id = $1 AND {unfinished}"
        ))
        .bind(replacement.old_edge_id.to_string())
        .fetch_one(w.conn())
        .await?
        .try_get("n")?;
        if newer > 0 {
            return Err(StoreError::conflict(format!(
                "edge {:?} is the replacement being brought up for another edge",
                replacement.old_edge_name
            )));
        }
        let in_flight: i64 = sqlx::query(&format!(
            "SELECT COUNT(*) AS n FROM edge_replacements WHERE {unfinished}"
        ))
        .fetch_one(w.conn())
        .await?
        .try_get("n")?;
        if usize::try_from(in_flight).unwrap_or(usize::MAX) >= max_in_flight {
            return Err(StoreError::conflict(format!(
                "{in_flight} replacement(s) in flight, the most --replace-max-in-flight allows \
                 ({max_in_flight}); try again when one finishes"
            )));
        }
        let now = w.now;
        sqlx::query(&format!(
            "INSERT INTO edge_replacements ({REPLACEMENT_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(replacement.id.to_string())
        .bind(replacement.old_edge_id.to_string())
        .bind(replacement.old_edge_name.clone())
        .bind(replacement.new_edge_id.map(|id| id.to_string()))
        .bind(replacement.new_edge_name.clone())
        .bind(replacement.stage.as_str())
        .bind(replacement.cause.as_str())
        .bind(replacement.reason.clone())
        .bind(replacement.error.clone())
        .bind(now)
        .bind(now)
        .bind(None::<i64>)
        .execute(w.conn())
        .await?;
        w.event(
            Entity::Edge,
            &replacement.old_edge_id.to_string(),
            "replace_started",
            json!({
                "name": replacement.old_edge_name,
                "replacement": replacement.id.to_string(),
                "cause": replacement.cause.as_str(),
                "reason": replacement.reason,
            }),
        )
        .await?;
        w.commit().await
    }

    async fn update_replacement(&self, replacement: &Replacement) -> Result<()> {
        let mut w = self.write(&Actor::System).await?;
        let now = w.now;
        let finished = replacement.stage.finished().then_some(now);
        let done = sqlx::query(
            "UPDATE edge_replacements SET new_edge_id = $2, new_edge_name = $3, stage = $4, \
             error = $5, updated_at = $6, finished_at = COALESCE(finished_at, $7) WHERE id = $1",
        )
        .bind(replacement.id.to_string())
        .bind(replacement.new_edge_id.map(|id| id.to_string()))
        .bind(replacement.new_edge_name.clone())
        .bind(replacement.stage.as_str())
        .bind(replacement.error.clone())
        .bind(now)
        .bind(finished)
        .execute(w.conn())
        .await?
        .rows_affected();
        if done == 0 {
            return Err(StoreError::not_found(Entity::Edge, replacement.id));
        }
        w.commit().await
    }

    async fn list_replacements(&self, unfinished: bool, limit: u32) -> Result<Vec<Replacement>> {
        let filter = if unfinished {
            "WHERE stage NOT IN ('done', 'failed')"
        } else {
            ""
        };
        sqlx::query(&format!(
            "SELECT {REPLACEMENT_COLS} FROM edge_replacements {filter} \
             ORDER BY started_at DESC, id LIMIT $1"
        ))
        .bind(i64::from(limit.clamp(1, 10_000)))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(replacement_row)
        .collect()
    }
}
