//! [`RouteStore`] on SQL: `routes` (host name, target service, limits) and `route_aliases`. A name
//! is a route's host name or one alias, never both, never of two routes.

use std::collections::BTreeSet;

use async_trait::async_trait;
use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::column::{json_of, ts, uuid};
use super::services::fetch_service;
use super::write::{changes, db_err, exists};
use super::SqlStore;
use crate::store::error::{Entity, Result, StoreError};
use crate::store::model::*;
use crate::store::{validate, RouteStore};

pub(super) const ROUTE_SELECT: &str =
    "SELECT r.id, r.hostname, r.service_id, s.origin_id, r.limits, \
     r.created_at, r.updated_at FROM routes r JOIN origin_services s ON s.id = r.service_id";

pub(super) fn route_row(row: &AnyRow) -> Result<Route> {
    const T: &str = "routes";
    Ok(Route {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        hostname: row.try_get("hostname")?,
        aliases: Vec::new(),
        service_id: uuid(T, &row.try_get::<String, _>("service_id")?)?,
        origin_id: uuid(T, &row.try_get::<String, _>("origin_id")?)?,
        limits: json_of(T, &row.try_get::<String, _>("limits")?)?,
        created_at: ts(T, row.try_get("created_at")?)?,
        updated_at: ts(T, row.try_get("updated_at")?)?,
    })
}

async fn route_aliases(conn: &mut AnyConnection, route: Id) -> Result<Vec<String>> {
    let rows =
        sqlx::query("SELECT hostname FROM route_aliases WHERE route_id = $1 ORDER BY hostname")
            .bind(route.to_string())
            .fetch_all(&mut *conn)
            .await?;
    rows.iter()
        .map(|r| r.try_get::<String, _>("hostname").map_err(StoreError::from))
        .collect()
}

pub(super) async fn fetch_route(conn: &mut AnyConnection, id: Id) -> Result<Route> {
    let row = sqlx::query(&format!("{ROUTE_SELECT} WHERE r.id = $1"))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::not_found(Entity::Route, id))?;
    let mut route = route_row(&row)?;
    route.aliases = route_aliases(conn, id).await?;
    Ok(route)
}

pub(super) async fn fetch_routes(conn: &mut AnyConnection) -> Result<Vec<Route>> {
    let mut routes: Vec<Route> = sqlx::query(&format!("{ROUTE_SELECT} ORDER BY r.hostname"))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(route_row)
        .collect::<Result<_>>()?;
    let aliases = sqlx::query("SELECT hostname, route_id FROM route_aliases ORDER BY hostname")
        .fetch_all(&mut *conn)
        .await?;
    let mut by_route: std::collections::HashMap<String, Vec<String>> = Default::default();
    for row in aliases {
        by_route
            .entry(row.try_get("route_id")?)
            .or_default()
            .push(row.try_get("hostname")?);
    }
    for route in &mut routes {
        if let Some(list) = by_route.remove(&route.id.to_string()) {
            route.aliases = list;
        }
    }
    Ok(routes)
}

/// Checks none of `names` is a host name or alias of a route other than `except`.
async fn check_hostnames_free(
    conn: &mut AnyConnection,
    names: &[String],
    except: Option<Id>,
) -> Result<()> {
    let except = except.map(|id| id.to_string()).unwrap_or_default();
    for name in names {
        let taken = exists(
            conn,
            "SELECT 1 FROM routes WHERE hostname = $1 AND id <> $2 LIMIT 1",
            name.clone(),
            Some(except.clone()),
        )
        .await?
            || exists(
                conn,
                "SELECT 1 FROM route_aliases WHERE hostname = $1 AND route_id <> $2 LIMIT 1",
                name.clone(),
                Some(except.clone()),
            )
            .await?;
        if taken {
            return Err(StoreError::conflict(format!(
                "host name {name} is already routed"
            )));
        }
    }
    Ok(())
}

/// Validates a route's primary name and aliases; returns them normalized, without duplicates.
fn route_names(hostname: &str, aliases: &[String]) -> Result<(String, Vec<String>)> {
    let hostname = validate::hostname("hostname", hostname)?;
    let mut set = BTreeSet::new();
    for alias in aliases {
        let alias = validate::hostname("aliases", alias)?;
        if alias == hostname {
            return Err(StoreError::invalid(
                "aliases",
                format!("{alias} is already the route's host name"),
            ));
        }
        set.insert(alias);
    }
    Ok((hostname, set.into_iter().collect()))
}

fn check_limits(limits: Option<Value>) -> Result<Value> {
    match limits {
        None => Ok(json!({})),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(other) => Err(StoreError::invalid(
            "limits",
            format!("must be a JSON object, not {other}"),
        )),
    }
}

/// The service a route may target: it must exist and speak HTTP.
async fn route_target(conn: &mut AnyConnection, service_id: Id) -> Result<Service> {
    let service = match fetch_service(conn, service_id).await {
        Err(StoreError::NotFound { .. }) => {
            return Err(StoreError::invalid(
                "service_id",
                format!("unknown service {service_id}"),
            ))
        }
        other => other?,
    };
    if service.protocol != Protocol::Http {
        return Err(StoreError::invalid(
            "service_id",
            format!(
                "service {} speaks {}; HTTP routes need an http service",
                service.name,
                service.protocol.as_str()
            ),
        ));
    }
    Ok(service)
}

#[async_trait]
impl RouteStore for SqlStore {
    async fn create_route(&self, actor: &Actor, new: NewRoute) -> Result<Route> {
        let (hostname, aliases) = route_names(&new.hostname, &new.aliases)?;
        let limits = check_limits(new.limits)?;
        let mut w = self.write(actor).await?;
        route_target(w.conn(), new.service_id).await?;
        let mut all = vec![hostname.clone()];
        all.extend(aliases.iter().cloned());
        check_hostnames_free(w.conn(), &all, None).await?;
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO routes (id, hostname, service_id, limits, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(id.to_string())
        .bind(hostname)
        .bind(new.service_id.to_string())
        .bind(limits.to_string())
        .bind(w.now)
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        for alias in &aliases {
            sqlx::query("INSERT INTO route_aliases (hostname, route_id) VALUES ($1, $2)")
                .bind(alias.clone())
                .bind(id.to_string())
                .execute(w.conn())
                .await
                .map_err(db_err)?;
        }
        let route = fetch_route(w.conn(), id).await?;
        w.bump().await?;
        w.event(
            Entity::Route,
            &id.to_string(),
            "created",
            json!({"hostname": route.hostname, "aliases": route.aliases,
                   "service_id": route.service_id, "origin_id": route.origin_id,
                   "limits": route.limits}),
        )
        .await?;
        w.commit().await?;
        Ok(route)
    }

    async fn list_routes(&self) -> Result<Vec<Route>> {
        fetch_routes(&mut *self.conn().await?).await
    }

    async fn get_route(&self, id: Id) -> Result<Route> {
        fetch_route(&mut *self.conn().await?, id).await
    }

    async fn route_by_hostname(&self, hostname: &str) -> Result<Route> {
        let host = validate::hostname("hostname", hostname)?;
        let mut conn = self.conn().await?;
        let row = sqlx::query(
            "SELECT id FROM routes WHERE hostname = $1 \
             UNION SELECT route_id AS id FROM route_aliases WHERE hostname = $1",
        )
        .bind(host.clone())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::not_found(Entity::Route, &host))?;
        let id = uuid("routes", &row.try_get::<String, _>("id")?)?;
        fetch_route(&mut conn, id).await
    }

    async fn update_route(&self, actor: &Actor, id: Id, update: RouteUpdate) -> Result<Route> {
        let mut w = self.write(actor).await?;
        let before = fetch_route(w.conn(), id).await?;
        let hostname = update.hostname.unwrap_or_else(|| before.hostname.clone());
        let aliases = update.aliases.unwrap_or_else(|| before.aliases.clone());
        let (hostname, aliases) = route_names(&hostname, &aliases)?;
        let limits = match update.limits {
            Some(l) => check_limits(Some(l))?,
            None => before.limits.clone(),
        };
        let service_id = update.service_id.unwrap_or(before.service_id);
        if service_id != before.service_id {
            route_target(w.conn(), service_id).await?;
        }
        let mut all = vec![hostname.clone()];
        all.extend(aliases.iter().cloned());
        check_hostnames_free(w.conn(), &all, Some(id)).await?;
        if hostname == before.hostname
            && aliases == before.aliases
            && limits == before.limits
            && service_id == before.service_id
        {
            return Ok(before);
        }
        sqlx::query("DELETE FROM route_aliases WHERE route_id = $1")
            .bind(id.to_string())
            .execute(w.conn())
            .await?;
        sqlx::query(
            "UPDATE routes SET hostname = $1, service_id = $2, limits = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(hostname)
        .bind(service_id.to_string())
        .bind(limits.to_string())
        .bind(w.now)
        .bind(id.to_string())
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        for alias in &aliases {
            sqlx::query("INSERT INTO route_aliases (hostname, route_id) VALUES ($1, $2)")
                .bind(alias.clone())
                .bind(id.to_string())
                .execute(w.conn())
                .await
                .map_err(db_err)?;
        }
        let after = fetch_route(w.conn(), id).await?;
        w.bump().await?;
        w.event(
            Entity::Route,
            &id.to_string(),
            "updated",
            changes(&before, &after),
        )
        .await?;
        w.commit().await?;
        Ok(after)
    }

    async fn delete_route(&self, actor: &Actor, id: Id) -> Result<()> {
        let mut w = self.write(actor).await?;
        let route = fetch_route(w.conn(), id).await?;
        sqlx::query("DELETE FROM routes WHERE id = $1")
            .bind(id.to_string())
            .execute(w.conn())
            .await?;
        w.bump().await?;
        w.event(
            Entity::Route,
            &id.to_string(),
            "deleted",
            json!({"hostname": route.hostname, "aliases": route.aliases}),
        )
        .await?;
        w.commit().await
    }
}
