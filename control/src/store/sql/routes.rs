//! [`RouteStore`] on SQL: `routes` (host name, target service, limits) and `route_aliases`. A name
//! is a route's host name or one alias, never both, never of two routes.

use std::collections::BTreeSet;

use async_trait::async_trait;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::column::{ts, uuid};
use super::services::fetch_service;
use super::write::{changes, db_err, exists};
use super::SqlStore;
use crate::store::error::{Entity, Result, StoreError};
use crate::store::model::*;
use crate::store::RouteStore;

pub(super) const ROUTE_SELECT: &str =
    "SELECT r.id, r.hostname, r.service_id, s.origin_id, r.limits, \
     r.created_at, r.updated_at FROM routes r JOIN origin_services s ON s.id = r.service_id";

pub(super) fn route_row(row: &AnyRow) -> Result<Route> {
    const T: &str = "routes";
    let stored: String = row.try_get("limits")?;
    // Limits an older control stored without the model's check may not fit it: keep the route
    // readable (and fixable) and say why it is held back from the edges.
    let (limits, problem) = match kokoa_model::from_json::<RouteLimits>(&stored) {
        Ok(limits) => (limits, None),
        Err(error) => (
            RouteLimits::default(),
            Some(format!(
                "the stored limits {stored} do not fit the model ({error}); the route is not \
                 sent to edges until its limits are replaced"
            )),
        ),
    };
    Ok(Route {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        hostname: row.try_get("hostname")?,
        aliases: Vec::new(),
        service_id: uuid(T, &row.try_get::<String, _>("service_id")?)?,
        origin_id: uuid(T, &row.try_get::<String, _>("origin_id")?)?,
        limits,
        problem,
        created_at: ts(T, row.try_get("created_at")?)?,
        updated_at: ts(T, row.try_get("updated_at")?)?,
    })
}

/// The JSON a route's limits are stored as.
fn limits_text(limits: &RouteLimits) -> String {
    serde_json::to_string(limits).unwrap_or_else(|_| "{}".into())
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

/// Checks neither `hostname` nor any of `aliases` is a host name or alias of a route other than
/// `except`; a conflict names the field that collides (`hostname`, `aliases[i]`).
async fn check_hostnames_free(
    conn: &mut AnyConnection,
    hostname: &str,
    aliases: &[String],
    except: Option<Id>,
) -> Result<()> {
    let except = except.map(|id| id.to_string()).unwrap_or_default();
    let names = std::iter::once(("hostname".to_owned(), hostname)).chain(
        aliases
            .iter()
            .enumerate()
            .map(|(i, alias)| (format!("aliases[{i}]"), alias.as_str())),
    );
    for (field, name) in names {
        let taken = exists(
            conn,
            "SELECT 1 FROM routes WHERE hostname = $1 AND id <> $2 LIMIT 1",
            name.to_owned(),
            Some(except.clone()),
        )
        .await?
            || exists(
                conn,
                "SELECT 1 FROM route_aliases WHERE hostname = $1 AND route_id <> $2 LIMIT 1",
                name.to_owned(),
                Some(except.clone()),
            )
            .await?;
        if taken {
            return Err(StoreError::conflict_on(
                field,
                format!("host name {name} is already routed"),
            ));
        }
    }
    Ok(())
}

/// A route's primary name and aliases (model host patterns, already normalized), the aliases
/// sorted and without duplicates; an alias equal to the host name is refused.
fn route_names(hostname: String, aliases: Vec<String>) -> Result<(String, Vec<String>)> {
    let mut set = BTreeSet::new();
    for (i, alias) in aliases.into_iter().enumerate() {
        if alias == hostname {
            return Err(StoreError::invalid(
                format!("aliases[{i}]"),
                format!("{alias} is already the route's host name"),
            ));
        }
        set.insert(alias);
    }
    Ok((hostname, set.into_iter().collect()))
}

fn texts(patterns: Vec<HostPattern>) -> Vec<String> {
    patterns.into_iter().map(|p| p.to_string()).collect()
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
        // In the request's order, so a conflict names the alias as the caller wrote it.
        let requested = texts(new.aliases);
        let (hostname, aliases) = route_names(new.hostname.to_string(), requested.clone())?;
        let limits = limits_text(&new.limits);
        let mut w = self.write(actor).await?;
        route_target(w.conn(), new.service_id).await?;
        check_hostnames_free(w.conn(), &hostname, &requested, None).await?;
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO routes (id, hostname, service_id, limits, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(id.to_string())
        .bind(hostname)
        .bind(new.service_id.to_string())
        .bind(limits)
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
        w.check_fleet().await?;
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
        // A name that is no valid host pattern cannot be routed.
        let host = HostPattern::new(hostname)
            .map_err(|_| StoreError::not_found(Entity::Route, hostname))?
            .to_string();
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
        let hostname = update
            .hostname
            .map_or_else(|| before.hostname.clone(), |h| h.to_string());
        let aliases = update.aliases.map_or_else(|| before.aliases.clone(), texts);
        let requested = aliases.clone();
        let (hostname, aliases) = route_names(hostname, aliases)?;
        // `None` keeps the stored limits as they are (even ones held back as a problem).
        let new_limits = update.limits.as_ref().map(limits_text);
        let limits = update.limits.unwrap_or_else(|| before.limits.clone());
        let service_id = update.service_id.unwrap_or(before.service_id);
        if service_id != before.service_id {
            route_target(w.conn(), service_id).await?;
        }
        check_hostnames_free(w.conn(), &hostname, &requested, Some(id)).await?;
        if hostname == before.hostname
            && aliases == before.aliases
            && limits == before.limits
            && (new_limits.is_none() || before.problem.is_none())
            && service_id == before.service_id
        {
            return Ok(before);
        }
        sqlx::query("DELETE FROM route_aliases WHERE route_id = $1")
            .bind(id.to_string())
            .execute(w.conn())
            .await?;
        sqlx::query(
            "UPDATE routes SET hostname = $1, service_id = $2, limits = COALESCE($3, limits), \
             updated_at = $4 WHERE id = $5",
        )
        .bind(hostname)
        .bind(service_id.to_string())
        .bind(new_limits)
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
        w.check_fleet().await?;
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
