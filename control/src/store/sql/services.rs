//! [`ServiceStore`] on SQL: the `origin_services` table, the apps each origin exposes.

use async_trait::async_trait;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::column::{ts, uuid};
use super::origins::fetch_origin;
use super::write::{changes, db_err, exists};
use super::SqlStore;
use crate::store::error::{Entity, Result, StoreError};
use crate::store::model::*;
use crate::store::ServiceStore;

pub(super) const SERVICE_COLS: &str =
    "id, origin_id, name, port, protocol, local_address, health_path, created_at, updated_at";

pub(super) fn service_row(row: &AnyRow) -> Result<Service> {
    const T: &str = "origin_services";
    let port: i64 = row.try_get("port")?;
    let protocol: String = row.try_get("protocol")?;
    Ok(Service {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        origin_id: uuid(T, &row.try_get::<String, _>("origin_id")?)?,
        name: row.try_get("name")?,
        port: u16::try_from(port).map_err(|e| StoreError::corrupt(T, e))?,
        protocol: Protocol::parse(&protocol)
            .map_err(|_| StoreError::corrupt(T, format!("protocol {protocol:?}")))?,
        local_address: row.try_get("local_address")?,
        health_path: row.try_get("health_path")?,
        created_at: ts(T, row.try_get("created_at")?)?,
        updated_at: ts(T, row.try_get("updated_at")?)?,
    })
}

pub(super) async fn fetch_service(conn: &mut AnyConnection, id: Id) -> Result<Service> {
    let row = sqlx::query(&format!(
        "SELECT {SERVICE_COLS} FROM origin_services WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found(Entity::Service, id))?;
    service_row(&row)
}

pub(super) async fn fetch_services(
    conn: &mut AnyConnection,
    origin: Option<Id>,
) -> Result<Vec<Service>> {
    let rows = match origin {
        Some(origin) => {
            sqlx::query(&format!(
                "SELECT {SERVICE_COLS} FROM origin_services WHERE origin_id = $1 ORDER BY port"
            ))
            .bind(origin.to_string())
            .fetch_all(&mut *conn)
            .await?
        }
        None => {
            sqlx::query(&format!(
                "SELECT {SERVICE_COLS} FROM origin_services ORDER BY origin_id, port"
            ))
            .fetch_all(&mut *conn)
            .await?
        }
    };
    rows.iter().map(service_row).collect()
}

#[async_trait]
impl ServiceStore for SqlStore {
    async fn create_service(
        &self,
        actor: &Actor,
        origin_id: Id,
        new: NewService,
    ) -> Result<Service> {
        let name = new.name.to_string();
        let port = new.port.get();
        let local_address = match new.local_address {
            Some(address) => address.to_string(),
            None => format!("127.0.0.1:{port}"),
        };
        let health_path = new.health_path.map(|path| path.to_string());
        let mut w = self.write(actor).await?;
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
            "SELECT 1 FROM origin_services WHERE origin_id = $1 AND name = $2",
            origin_id.to_string(),
            Some(name.clone()),
        )
        .await?
        {
            return Err(StoreError::conflict(format!(
                "origin {} already has a service named {name}",
                origin.name
            )));
        }
        let taken =
            sqlx::query("SELECT name FROM origin_services WHERE origin_id = $1 AND port = $2")
                .bind(origin_id.to_string())
                .bind(i64::from(port))
                .fetch_optional(w.conn())
                .await?;
        if let Some(row) = taken {
            let other: String = row.try_get("name")?;
            return Err(StoreError::conflict(format!(
                "origin {} already has a service on port {port} ({other})",
                origin.name
            )));
        }
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO origin_services (id, origin_id, name, port, protocol, local_address, \
             health_path, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(id.to_string())
        .bind(origin_id.to_string())
        .bind(name)
        .bind(i64::from(port))
        .bind(new.protocol.as_str())
        .bind(local_address)
        .bind(health_path)
        .bind(w.now)
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        let service = fetch_service(w.conn(), id).await?;
        w.check_fleet().await?;
        w.bump().await?;
        w.event(
            Entity::Service,
            &id.to_string(),
            "created",
            serde_json::to_value(&service).unwrap_or_default(),
        )
        .await?;
        w.commit().await?;
        Ok(service)
    }

    async fn list_services(&self, origin_id: Option<Id>) -> Result<Vec<Service>> {
        fetch_services(&mut *self.conn().await?, origin_id).await
    }

    async fn get_service(&self, id: Id) -> Result<Service> {
        fetch_service(&mut *self.conn().await?, id).await
    }

    async fn service_by_name(&self, origin_id: Id, name: &str) -> Result<Service> {
        let row = sqlx::query(&format!(
            "SELECT {SERVICE_COLS} FROM origin_services WHERE origin_id = $1 AND name = $2"
        ))
        .bind(origin_id.to_string())
        .bind(name.trim().to_string())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::not_found(Entity::Service, name))?;
        service_row(&row)
    }

    async fn update_service(
        &self,
        actor: &Actor,
        id: Id,
        update: ServiceUpdate,
    ) -> Result<Service> {
        let mut w = self.write(actor).await?;
        let before = fetch_service(w.conn(), id).await?;
        let mut after = before.clone();
        if let Some(name) = update.name {
            after.name = name.to_string();
        }
        if let Some(port) = update.port {
            after.port = port.get();
        }
        if let Some(protocol) = update.protocol {
            after.protocol = protocol;
        }
        if let Some(address) = update.local_address {
            after.local_address = address.to_string();
        }
        if let Some(path) = update.health_path {
            after.health_path = path.map(|path| path.to_string());
        }
        if after == before {
            return Ok(before);
        }
        let origin = before.origin_id.to_string();
        if after.name != before.name
            && exists(
                w.conn(),
                "SELECT 1 FROM origin_services WHERE origin_id = $1 AND name = $2",
                origin.clone(),
                Some(after.name.clone()),
            )
            .await?
        {
            return Err(StoreError::conflict(format!(
                "the origin already has a service named {}",
                after.name
            )));
        }
        if after.port != before.port
            && sqlx::query("SELECT 1 FROM origin_services WHERE origin_id = $1 AND port = $2")
                .bind(origin.clone())
                .bind(i64::from(after.port))
                .fetch_optional(w.conn())
                .await?
                .is_some()
        {
            return Err(StoreError::conflict(format!(
                "the origin already has a service on port {}",
                after.port
            )));
        }
        if after.protocol != Protocol::Http
            && exists(
                w.conn(),
                "SELECT 1 FROM routes WHERE service_id = $1 LIMIT 1",
                id.to_string(),
                None,
            )
            .await?
        {
            return Err(StoreError::conflict(
                "HTTP routes point at this service; it must stay http while they exist",
            ));
        }
        sqlx::query(
            "UPDATE origin_services SET name = $1, port = $2, protocol = $3, local_address = $4, \
             health_path = $5, updated_at = $6 WHERE id = $7",
        )
        .bind(after.name.clone())
        .bind(i64::from(after.port))
        .bind(after.protocol.as_str())
        .bind(after.local_address.clone())
        .bind(after.health_path.clone())
        .bind(w.now)
        .bind(id.to_string())
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        let after = fetch_service(w.conn(), id).await?;
        w.check_fleet().await?;
        w.bump().await?;
        w.event(
            Entity::Service,
            &id.to_string(),
            "updated",
            changes(&before, &after),
        )
        .await?;
        w.commit().await?;
        Ok(after)
    }

    async fn delete_service(&self, actor: &Actor, id: Id) -> Result<()> {
        let mut w = self.write(actor).await?;
        let service = fetch_service(w.conn(), id).await?;
        let routes = sqlx::query(
            "SELECT hostname FROM routes WHERE service_id = $1 \
             UNION ALL SELECT CAST(listen_port AS TEXT) AS hostname FROM tcp_routes \
             WHERE service_id = $1 ORDER BY hostname",
        )
        .bind(id.to_string())
        .fetch_all(w.conn())
        .await?;
        if !routes.is_empty() {
            let names: Vec<String> = routes
                .iter()
                .map(|r| r.try_get::<String, _>("hostname"))
                .collect::<std::result::Result<_, _>>()?;
            return Err(StoreError::conflict(format!(
                "service {} still has routes ({}); delete them first",
                service.name,
                names.join(", ")
            )));
        }
        sqlx::query("DELETE FROM origin_services WHERE id = $1")
            .bind(id.to_string())
            .execute(w.conn())
            .await
            .map_err(db_err)?;
        w.bump().await?;
        w.event(
            Entity::Service,
            &id.to_string(),
            "deleted",
            json!({"name": service.name, "origin_id": service.origin_id, "port": service.port}),
        )
        .await?;
        w.commit().await
    }
}
