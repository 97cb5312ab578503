//! [`OriginStore`] on SQL: the `origins` table, each origin owning one `/24` of the tunnel pool.

use std::collections::BTreeSet;

use async_trait::async_trait;
use kokoa_model::key::{PrivateKey, PublicKey};
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::column::{json_text, opt_typed, public_key, ts, uuid};
use super::keys::check_key_free;
use super::node_state::{node_state, NODE_STATE_COLS};
use super::write::{changes, db_err, exists, lowest_free};
use super::SqlStore;
use crate::store::error::{Entity, Result, StoreError};
use crate::store::model::*;
use crate::store::OriginStore;

pub(super) fn origin_cols() -> String {
    format!(
        "id, name, subnet, public_key, private_key_sealed, tunnel, {NODE_STATE_COLS}, created_at, \
         updated_at"
    )
}

pub(super) fn origin_row(row: &AnyRow) -> Result<Origin> {
    const T: &str = "origins";
    let subnet: i64 = row.try_get("subnet")?;
    let sealed: Option<String> = row.try_get("private_key_sealed")?;
    Ok(Origin {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        name: row.try_get("name")?,
        subnet: u8::try_from(subnet).map_err(|e| StoreError::corrupt(T, e))?,
        public_key: public_key(T, &row.try_get::<String, _>("public_key")?)?,
        managed_key: sealed.is_some(),
        tunnel: opt_typed(T, row.try_get("tunnel")?)?,
        state: node_state(row, T)?,
        created_at: ts(T, row.try_get("created_at")?)?,
        updated_at: ts(T, row.try_get("updated_at")?)?,
    })
}

pub(super) async fn fetch_origin(conn: &mut AnyConnection, id: Id) -> Result<Origin> {
    let row = sqlx::query(&format!(
        "SELECT {} FROM origins WHERE id = $1",
        origin_cols()
    ))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found(Entity::Origin, id))?;
    origin_row(&row)
}

pub(super) async fn fetch_origins(conn: &mut AnyConnection) -> Result<Vec<Origin>> {
    sqlx::query(&format!(
        "SELECT {} FROM origins ORDER BY name",
        origin_cols()
    ))
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(origin_row)
    .collect()
}

impl SqlStore {
    async fn check_origin_unrouted(conn: &mut AnyConnection, origin: &Origin) -> Result<()> {
        let rows = sqlx::query(
            "SELECT r.hostname FROM routes r JOIN origin_services s ON s.id = r.service_id \
             WHERE s.origin_id = $1 \
             UNION ALL SELECT CAST(t.listen_port AS TEXT) AS hostname FROM tcp_routes t \
             JOIN origin_services s ON s.id = t.service_id WHERE s.origin_id = $1 \
             ORDER BY hostname",
        )
        .bind(origin.id.to_string())
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = rows
            .iter()
            .map(|r| r.try_get::<String, _>("hostname"))
            .collect::<std::result::Result<_, _>>()?;
        Err(StoreError::conflict(format!(
            "origin {} still has routes ({}); delete them first",
            origin.name,
            names.join(", ")
        )))
    }
}

#[async_trait]
impl OriginStore for SqlStore {
    async fn create_origin(&self, actor: &Actor, new: NewOrigin) -> Result<Origin> {
        let name = new.name.to_string();
        let mut w = self.write(actor).await?;
        if exists(
            w.conn(),
            "SELECT 1 FROM origins WHERE name = $1",
            name.clone(),
            None,
        )
        .await?
        {
            return Err(StoreError::conflict(format!(
                "an origin named {name} already exists"
            )));
        }
        let used: BTreeSet<i64> = sqlx::query("SELECT subnet FROM origins")
            .fetch_all(w.conn())
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>("subnet"))
            .collect::<std::result::Result<_, _>>()?;
        let subnet = lowest_free(SUBNETS, &used).ok_or_else(|| StoreError::PoolExhausted {
            pool: "origin subnets in 10.100.0.0/16 (all 254 /24s are in use)".into(),
        })?;
        let id = Uuid::new_v4();
        let (public, sealed) = self.key_pair(Entity::Origin, id, new.public_key)?;
        check_key_free(w.conn(), &public, None).await?;
        sqlx::query(
            "INSERT INTO origins (id, name, subnet, public_key, private_key_sealed, tunnel, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(id.to_string())
        .bind(name.clone())
        .bind(i64::from(subnet))
        .bind(public.to_base64())
        .bind(sealed.clone())
        .bind(json_text(new.tunnel.as_ref()))
        .bind(w.now)
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        w.bump().await?;
        w.event(
            Entity::Origin,
            &id.to_string(),
            "created",
            json!({"name": name, "subnet": subnet, "network": subnet_network(subnet).to_string(),
                   "public_key": public.to_base64(), "managed_key": sealed.is_some(),
                   "tunnel": new.tunnel}),
        )
        .await?;
        let origin = fetch_origin(w.conn(), id).await?;
        w.commit().await?;
        Ok(origin)
    }

    async fn list_origins(&self) -> Result<Vec<Origin>> {
        fetch_origins(&mut *self.conn().await?).await
    }

    async fn get_origin(&self, id: Id) -> Result<Origin> {
        fetch_origin(&mut *self.conn().await?, id).await
    }

    async fn origin_by_name(&self, name: &str) -> Result<Origin> {
        let row = sqlx::query(&format!(
            "SELECT {} FROM origins WHERE name = $1",
            origin_cols()
        ))
        .bind(name.trim().to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::not_found(Entity::Origin, name))?;
        origin_row(&row)
    }

    async fn update_origin(&self, actor: &Actor, id: Id, update: OriginUpdate) -> Result<Origin> {
        let mut w = self.write(actor).await?;
        let before = fetch_origin(w.conn(), id).await?;
        let name = update
            .name
            .map_or_else(|| before.name.clone(), |name| name.to_string());
        let tunnel = update.tunnel.unwrap_or(before.tunnel);
        if name == before.name && tunnel == before.tunnel {
            return Ok(before);
        }
        if name != before.name
            && exists(
                w.conn(),
                "SELECT 1 FROM origins WHERE name = $1",
                name.clone(),
                None,
            )
            .await?
        {
            return Err(StoreError::conflict(format!(
                "an origin named {name} already exists"
            )));
        }
        sqlx::query("UPDATE origins SET name = $1, tunnel = $2, updated_at = $3 WHERE id = $4")
            .bind(name)
            .bind(json_text(tunnel.as_ref()))
            .bind(w.now)
            .bind(id.to_string())
            .execute(w.conn())
            .await
            .map_err(db_err)?;
        let after = fetch_origin(w.conn(), id).await?;
        w.check_fleet().await?;
        w.bump().await?;
        w.event(
            Entity::Origin,
            &id.to_string(),
            "updated",
            changes(&before, &after),
        )
        .await?;
        w.commit().await?;
        Ok(after)
    }

    async fn rotate_origin_key(
        &self,
        actor: &Actor,
        id: Id,
        public_key: Option<PublicKey>,
    ) -> Result<Origin> {
        self.rotate_key(actor, Entity::Origin, id, public_key)
            .await?;
        self.get_origin(id).await
    }

    async fn delete_origin(&self, actor: &Actor, id: Id) -> Result<()> {
        let mut w = self.write(actor).await?;
        let origin = fetch_origin(w.conn(), id).await?;
        Self::check_origin_unrouted(w.conn(), &origin).await?;
        sqlx::query("DELETE FROM origins WHERE id = $1")
            .bind(id.to_string())
            .execute(w.conn())
            .await
            .map_err(db_err)?;
        w.bump().await?;
        w.event(
            Entity::Origin,
            &id.to_string(),
            "deleted",
            json!({"name": origin.name, "subnet": origin.subnet}),
        )
        .await?;
        w.commit().await
    }

    async fn origin_private_key(&self, id: Id) -> Result<Option<PrivateKey>> {
        self.private_key(Entity::Origin, id).await
    }
}
