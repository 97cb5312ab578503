//! [`EdgeStore`] on SQL: the `edge_nodes` table and `edge_origins`, which edge serves which origin
//! at which address of the origin's subnet.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use async_trait::async_trait;
use kokoa_model::key::{PrivateKey, PublicKey};
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::column::{json_text, opt_typed, public_key, ts, uuid};
use super::keys::check_key_free;
use super::node_state::{node_state, NODE_STATE_COLS};
use super::origins::fetch_origin;
use super::write::{changes, db_err, exists, lowest_free, Write};
use super::SqlStore;
use crate::store::error::{Entity, Result, StoreError};
use crate::store::model::*;
use crate::store::EdgeStore;

pub(super) fn edge_cols() -> String {
    format!(
        "id, name, public_ip, endpoint, provider, region, public_key, private_key_sealed, limits, \
         tunnel, listeners, {NODE_STATE_COLS}, created_at, updated_at"
    )
}

pub(super) fn edge_row(row: &AnyRow) -> Result<Edge> {
    const T: &str = "edge_nodes";
    let sealed: Option<String> = row.try_get("private_key_sealed")?;
    let public_ip: Option<String> = row.try_get("public_ip")?;
    Ok(Edge {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        name: row.try_get("name")?,
        public_ip: public_ip
            .map(|ip| IpAddr::from_str(&ip).map_err(|e| StoreError::corrupt(T, e)))
            .transpose()?,
        endpoint: row.try_get("endpoint")?,
        provider: row.try_get("provider")?,
        region: row.try_get("region")?,
        public_key: public_key(T, &row.try_get::<String, _>("public_key")?)?,
        managed_key: sealed.is_some(),
        limits: opt_typed(T, row.try_get("limits")?)?,
        tunnel: opt_typed(T, row.try_get("tunnel")?)?,
        listeners: opt_typed(T, row.try_get("listeners")?)?.unwrap_or_default(),
        state: node_state(row, T)?,
        created_at: ts(T, row.try_get("created_at")?)?,
        updated_at: ts(T, row.try_get("updated_at")?)?,
    })
}

pub(super) const ASSIGNMENT_SELECT: &str =
    "SELECT eo.edge_id, eo.origin_id, eo.host, o.subnet, eo.created_at \
     FROM edge_origins eo JOIN origins o ON o.id = eo.origin_id";

pub(super) fn assignment_row(row: &AnyRow) -> Result<Assignment> {
    const T: &str = "edge_origins";
    let subnet =
        u8::try_from(row.try_get::<i64, _>("subnet")?).map_err(|e| StoreError::corrupt(T, e))?;
    let host =
        u8::try_from(row.try_get::<i64, _>("host")?).map_err(|e| StoreError::corrupt(T, e))?;
    Ok(Assignment {
        edge_id: uuid(T, &row.try_get::<String, _>("edge_id")?)?,
        origin_id: uuid(T, &row.try_get::<String, _>("origin_id")?)?,
        address: Ipv4Addr::new(POOL_PREFIX[0], POOL_PREFIX[1], subnet, host),
        origin_address: Ipv4Addr::new(POOL_PREFIX[0], POOL_PREFIX[1], subnet, 1),
        created_at: ts(T, row.try_get("created_at")?)?,
    })
}

pub(super) async fn fetch_edge(conn: &mut AnyConnection, id: Id) -> Result<Edge> {
    let row = sqlx::query(&format!(
        "SELECT {} FROM edge_nodes WHERE id = $1",
        edge_cols()
    ))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found(Entity::Edge, id))?;
    edge_row(&row)
}

pub(super) async fn fetch_edges(conn: &mut AnyConnection) -> Result<Vec<Edge>> {
    sqlx::query(&format!(
        "SELECT {} FROM edge_nodes ORDER BY name",
        edge_cols()
    ))
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(edge_row)
    .collect()
}

pub(super) async fn fetch_assignments(
    conn: &mut AnyConnection,
    filter: AssignmentFilter,
) -> Result<Vec<Assignment>> {
    let rows = match (filter.edge_id, filter.origin_id) {
        (Some(edge), Some(origin)) => {
            sqlx::query(&format!(
                "{ASSIGNMENT_SELECT} WHERE eo.edge_id = $1 AND eo.origin_id = $2"
            ))
            .bind(edge.to_string())
            .bind(origin.to_string())
            .fetch_all(&mut *conn)
            .await?
        }
        (Some(edge), None) => {
            sqlx::query(&format!(
                "{ASSIGNMENT_SELECT} WHERE eo.edge_id = $1 ORDER BY o.subnet"
            ))
            .bind(edge.to_string())
            .fetch_all(&mut *conn)
            .await?
        }
        (None, Some(origin)) => {
            sqlx::query(&format!(
                "{ASSIGNMENT_SELECT} WHERE eo.origin_id = $1 ORDER BY eo.host"
            ))
            .bind(origin.to_string())
            .fetch_all(&mut *conn)
            .await?
        }
        (None, None) => {
            sqlx::query(&format!("{ASSIGNMENT_SELECT} ORDER BY o.subnet, eo.host"))
                .fetch_all(&mut *conn)
                .await?
        }
    };
    rows.iter().map(assignment_row).collect()
}

fn clean_opt(field: &'static str, value: Option<String>) -> Result<Option<String>> {
    match value.map(|v| v.trim().to_string()) {
        Some(v) if v.is_empty() => Ok(None),
        Some(v) if v.len() > 255 || v.chars().any(char::is_control) => Err(StoreError::invalid(
            field,
            "must be at most 255 characters without control characters",
        )),
        other => Ok(other),
    }
}

impl SqlStore {
    /// Inserts an assignment inside a write transaction.
    async fn assign(w: &mut Write<'_>, edge_id: Id, origin_id: Id) -> Result<Assignment> {
        let origin = match fetch_origin(w.conn(), origin_id).await {
            Err(StoreError::NotFound { .. }) => {
                return Err(StoreError::invalid(
                    "origin_id",
                    format!("unknown origin {origin_id}"),
                ))
            }
            other => other?,
        };
        if exists(
            w.conn(),
            "SELECT 1 FROM edge_origins WHERE edge_id = $1 AND origin_id = $2",
            edge_id.to_string(),
            Some(origin_id.to_string()),
        )
        .await?
        {
            return Err(StoreError::conflict(format!(
                "the edge already serves origin {}",
                origin.name
            )));
        }
        let used: BTreeSet<i64> = sqlx::query("SELECT host FROM edge_origins WHERE origin_id = $1")
            .bind(origin_id.to_string())
            .fetch_all(w.conn())
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>("host"))
            .collect::<std::result::Result<_, _>>()?;
        let host = lowest_free(EDGE_HOSTS, &used).ok_or_else(|| StoreError::PoolExhausted {
            pool: format!(
                "edge addresses of origin {} ({}.10-254, {} in use)",
                origin.name,
                origin
                    .network()
                    .network()
                    .to_string()
                    .trim_end_matches(".0"),
                used.len()
            ),
        })?;
        sqlx::query(
            "INSERT INTO edge_origins (edge_id, origin_id, host, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(edge_id.to_string())
        .bind(origin_id.to_string())
        .bind(i64::from(host))
        .bind(w.now)
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        let assignment = Assignment {
            edge_id,
            origin_id,
            address: Ipv4Addr::new(POOL_PREFIX[0], POOL_PREFIX[1], origin.subnet, host),
            origin_address: origin.address(),
            created_at: ts("edge_origins", w.now)?,
        };
        w.bump().await?;
        w.event(
            Entity::Assignment,
            &format!("{edge_id}/{origin_id}"),
            "created",
            json!({"edge_id": edge_id, "origin_id": origin_id, "origin": origin.name,
                   "address": assignment.address.to_string()}),
        )
        .await?;
        Ok(assignment)
    }
}

#[async_trait]
impl EdgeStore for SqlStore {
    async fn create_edge(&self, actor: &Actor, new: NewEdge) -> Result<Edge> {
        let name = new.name.to_string();
        let endpoint = new.endpoint.map(|endpoint| endpoint.to_string());
        let provider = clean_opt("provider", new.provider)?;
        let region = clean_opt("region", new.region)?;
        let mut w = self.write(actor).await?;
        if exists(
            w.conn(),
            "SELECT 1 FROM edge_nodes WHERE name = $1",
            name.clone(),
            None,
        )
        .await?
        {
            return Err(StoreError::conflict(format!(
                "an edge named {name} already exists"
            )));
        }
        let id = Uuid::new_v4();
        let (public, sealed) = self.key_pair(Entity::Edge, id, new.public_key)?;
        check_key_free(w.conn(), &public, None).await?;
        sqlx::query(
            "INSERT INTO edge_nodes (id, name, public_ip, endpoint, provider, region, public_key, \
             private_key_sealed, limits, tunnel, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)",
        )
        .bind(id.to_string())
        .bind(name.clone())
        .bind(new.public_ip.map(|ip| ip.to_string()))
        .bind(endpoint)
        .bind(provider)
        .bind(region)
        .bind(public.to_base64())
        .bind(sealed.clone())
        .bind(json_text(new.limits.as_ref()))
        .bind(json_text(new.tunnel.as_ref()))
        .bind(w.now)
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        w.bump().await?;
        let edge = fetch_edge(w.conn(), id).await?;
        w.event(Entity::Edge, &id.to_string(), "created", {
            let mut detail = serde_json::to_value(&edge).unwrap_or_default();
            if let Value::Object(map) = &mut detail {
                map.remove("state");
            }
            detail
        })
        .await?;
        let mut origins = new.origins;
        origins.dedup();
        for origin in origins {
            Self::assign(&mut w, id, origin).await?;
        }
        w.check_fleet().await?;
        w.commit().await?;
        Ok(edge)
    }

    async fn list_edges(&self) -> Result<Vec<Edge>> {
        fetch_edges(&mut *self.conn().await?).await
    }

    async fn get_edge(&self, id: Id) -> Result<Edge> {
        fetch_edge(&mut *self.conn().await?, id).await
    }

    async fn edge_by_name(&self, name: &str) -> Result<Edge> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM edge_nodes WHERE name = $1",
            edge_cols()
        ))
        .bind(name.trim().to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::not_found(Entity::Edge, name))?;
        edge_row(&row)
    }

    async fn update_edge(&self, actor: &Actor, id: Id, update: EdgeUpdate) -> Result<Edge> {
        let mut w = self.write(actor).await?;
        let before = fetch_edge(w.conn(), id).await?;
        let mut after = before.clone();
        if let Some(name) = update.name {
            after.name = name.to_string();
        }
        if let Some(ip) = update.public_ip {
            after.public_ip = ip;
        }
        if let Some(endpoint) = update.endpoint {
            after.endpoint = endpoint.map(|endpoint| endpoint.to_string());
        }
        if let Some(provider) = update.provider {
            after.provider = clean_opt("provider", provider)?;
        }
        if let Some(region) = update.region {
            after.region = clean_opt("region", region)?;
        }
        if let Some(limits) = update.limits {
            after.limits = limits;
        }
        if let Some(tunnel) = update.tunnel {
            after.tunnel = tunnel;
        }
        if after == before {
            return Ok(before);
        }
        if after.name != before.name
            && exists(
                w.conn(),
                "SELECT 1 FROM edge_nodes WHERE name = $1",
                after.name.clone(),
                None,
            )
            .await?
        {
            return Err(StoreError::conflict(format!(
                "an edge named {} already exists",
                after.name
            )));
        }
        sqlx::query(
            "UPDATE edge_nodes SET name = $1, public_ip = $2, endpoint = $3, provider = $4, \
             region = $5, limits = $6, tunnel = $7, updated_at = $8 WHERE id = $9",
        )
        .bind(after.name.clone())
        .bind(after.public_ip.map(|ip| ip.to_string()))
        .bind(after.endpoint.clone())
        .bind(after.provider.clone())
        .bind(after.region.clone())
        .bind(json_text(after.limits.as_ref()))
        .bind(json_text(after.tunnel.as_ref()))
        .bind(w.now)
        .bind(id.to_string())
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        let after = fetch_edge(w.conn(), id).await?;
        w.check_fleet().await?;
        w.bump().await?;
        w.event(
            Entity::Edge,
            &id.to_string(),
            "updated",
            changes(&before, &after),
        )
        .await?;
        w.commit().await?;
        Ok(after)
    }

    async fn rotate_edge_key(
        &self,
        actor: &Actor,
        id: Id,
        public_key: Option<PublicKey>,
    ) -> Result<Edge> {
        self.rotate_key(actor, Entity::Edge, id, public_key).await?;
        self.get_edge(id).await
    }

    async fn delete_edge(&self, actor: &Actor, id: Id) -> Result<()> {
        let mut w = self.write(actor).await?;
        let edge = fetch_edge(w.conn(), id).await?;
        sqlx::query("DELETE FROM edge_nodes WHERE id = $1")
            .bind(id.to_string())
            .execute(w.conn())
            .await
            .map_err(db_err)?;
        w.bump().await?;
        w.event(
            Entity::Edge,
            &id.to_string(),
            "deleted",
            json!({"name": edge.name}),
        )
        .await?;
        w.commit().await
    }

    async fn edge_private_key(&self, id: Id) -> Result<Option<PrivateKey>> {
        self.private_key(Entity::Edge, id).await
    }

    async fn assign_edge(&self, actor: &Actor, edge_id: Id, origin_id: Id) -> Result<Assignment> {
        let mut w = self.write(actor).await?;
        fetch_edge(w.conn(), edge_id).await?;
        let assignment = Self::assign(&mut w, edge_id, origin_id).await?;
        w.check_fleet().await?;
        w.commit().await?;
        Ok(assignment)
    }

    async fn unassign_edge(&self, actor: &Actor, edge_id: Id, origin_id: Id) -> Result<()> {
        let mut w = self.write(actor).await?;
        let done = sqlx::query("DELETE FROM edge_origins WHERE edge_id = $1 AND origin_id = $2")
            .bind(edge_id.to_string())
            .bind(origin_id.to_string())
            .execute(w.conn())
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(
                Entity::Assignment,
                format!("{edge_id}/{origin_id}"),
            ));
        }
        w.bump().await?;
        w.event(
            Entity::Assignment,
            &format!("{edge_id}/{origin_id}"),
            "deleted",
            json!({"edge_id": edge_id, "origin_id": origin_id}),
        )
        .await?;
        w.commit().await
    }

    async fn list_assignments(&self, filter: AssignmentFilter) -> Result<Vec<Assignment>> {
        fetch_assignments(&mut *self.conn().await?, filter).await
    }
}
