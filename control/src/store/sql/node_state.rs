//! [`NodeStateStore`] on SQL: what nodes report (heartbeats, ACKs, NACKs) and their health status,
//! kept in the `status` .. `nack_error` columns of `origins` and `edge_nodes`. Heartbeats and ACKs
//! write no event (high-frequency observation); NACKs and status transitions do.

use async_trait::async_trait;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::column::{json_of, json_text, now_ms, opt_ts, opt_typed, u64_of};
use super::SqlStore;
use crate::store::error::{Entity, Result, StoreError};
use crate::store::model::*;
use crate::store::NodeStateStore;

pub(super) const NODE_STATE_COLS: &str =
    "status, last_heartbeat, heartbeat, applied_version, nack_version, nack_error, nack_object";

pub(super) fn node_state(row: &AnyRow, table: &'static str) -> Result<NodeState> {
    let status: String = row.try_get("status")?;
    let heartbeat: Option<String> = row.try_get("heartbeat")?;
    let nack_version: Option<i64> = row.try_get("nack_version")?;
    let nack_error: Option<String> = row.try_get("nack_error")?;
    let nack_object: Option<NackObject> = opt_typed(table, row.try_get("nack_object")?)?;
    Ok(NodeState {
        status: NodeStatus::parse(&status)
            .ok_or_else(|| StoreError::corrupt(table, format!("status {status:?}")))?,
        last_heartbeat: opt_ts(table, row.try_get("last_heartbeat")?)?,
        heartbeat: heartbeat.map(|h| json_of(table, &h)).transpose()?,
        applied_version: row
            .try_get::<Option<i64>, _>("applied_version")?
            .map(|v| u64_of(table, v))
            .transpose()?,
        nack: match (nack_version, nack_error) {
            (Some(version), Some(error)) => Some(Nack {
                version: u64_of(table, version)?,
                error,
                object: nack_object,
            }),
            _ => None,
        },
    })
}

pub(super) fn node_table(node: NodeId) -> &'static str {
    match node {
        NodeId::Edge(_) => "edge_nodes",
        NodeId::Origin(_) => "origins",
    }
}

pub(super) async fn node_name(conn: &mut AnyConnection, node: NodeId) -> Result<String> {
    let row = sqlx::query(&format!(
        "SELECT name FROM {} WHERE id = $1",
        node_table(node)
    ))
    .bind(node.id().to_string())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found(node.entity(), node.id()))?;
    Ok(row.try_get("name")?)
}

impl SqlStore {
    async fn update_node_columns(
        &self,
        node: NodeId,
        sql_set: &str,
        binds: Vec<Option<i64>>,
        text: Option<String>,
    ) -> Result<()> {
        let sql = format!(
            "UPDATE {} SET {sql_set} WHERE id = ${}",
            node_table(node),
            binds.len() + usize::from(text.is_some()) + 1
        );
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = q.bind(b);
        }
        if let Some(t) = text {
            q = q.bind(t);
        }
        let done = q.bind(node.id().to_string()).execute(&self.pool).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(node.entity(), node.id()));
        }
        Ok(())
    }
}

#[async_trait]
impl NodeStateStore for SqlStore {
    async fn record_heartbeat(&self, node: NodeId, detail: Value) -> Result<()> {
        self.update_node_columns(
            node,
            "last_heartbeat = $1, heartbeat = $2",
            vec![Some(now_ms())],
            Some(detail.to_string()),
        )
        .await
    }

    async fn record_config_ack(&self, node: NodeId, version: u64) -> Result<()> {
        let v = i64::try_from(version).map_err(|_| StoreError::invalid("version", "too large"))?;
        self.update_node_columns(
            node,
            "applied_version = $1, \
             nack_error = CASE WHEN nack_version <= $1 THEN NULL ELSE nack_error END, \
             nack_object = CASE WHEN nack_version <= $1 THEN NULL ELSE nack_object END, \
             nack_version = CASE WHEN nack_version <= $1 THEN NULL ELSE nack_version END",
            vec![Some(v)],
            None,
        )
        .await
    }

    async fn record_config_nack(&self, node: NodeId, nack: &Nack) -> Result<()> {
        let v =
            i64::try_from(nack.version).map_err(|_| StoreError::invalid("version", "too large"))?;
        let bounded = |text: &str| text.chars().take(4096).collect::<String>();
        let error = bounded(&nack.error);
        let object = nack.object.as_ref().map(|object| NackObject {
            kind: bounded(&object.kind),
            key: bounded(&object.key),
            field: bounded(&object.field),
        });
        let name = node_name(&mut *self.conn().await?, node).await?;
        let mut w = self.write(&Actor::Node(name)).await?;
        sqlx::query(&format!(
            "UPDATE {} SET nack_version = $1, nack_error = $2, nack_object = $3 WHERE id = $4",
            node_table(node)
        ))
        .bind(v)
        .bind(error.clone())
        .bind(json_text(object.as_ref()))
        .bind(node.id().to_string())
        .execute(w.conn())
        .await?;
        // What a notifier picks up: which node refused which version, and the object to fix.
        w.event(
            node.entity(),
            &node.id().to_string(),
            "config_rejected",
            json!({"version": nack.version, "error": error, "object": object}),
        )
        .await?;
        w.commit().await
    }

    async fn record_edge_listeners(&self, edge_id: Id, listeners: &[Listener]) -> Result<()> {
        let done = sqlx::query("UPDATE edge_nodes SET listeners = $1 WHERE id = $2")
            .bind(json_text(Some(&listeners)))
            .bind(edge_id.to_string())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(Entity::Edge, edge_id));
        }
        Ok(())
    }

    async fn set_node_status(
        &self,
        actor: &Actor,
        node: NodeId,
        status: NodeStatus,
    ) -> Result<bool> {
        let mut w = self.write(actor).await?;
        let row = sqlx::query(&format!(
            "SELECT status FROM {} WHERE id = $1",
            node_table(node)
        ))
        .bind(node.id().to_string())
        .fetch_optional(w.conn())
        .await?
        .ok_or_else(|| StoreError::not_found(node.entity(), node.id()))?;
        let current: String = row.try_get("status")?;
        if current == status.as_str() {
            return Ok(false);
        }
        sqlx::query(&format!(
            "UPDATE {} SET status = $1 WHERE id = $2",
            node_table(node)
        ))
        .bind(status.as_str())
        .bind(node.id().to_string())
        .execute(w.conn())
        .await?;
        w.event(
            node.entity(),
            &node.id().to_string(),
            "status_changed",
            json!({"from": current, "to": status.as_str()}),
        )
        .await?;
        w.commit().await?;
        Ok(true)
    }
}
