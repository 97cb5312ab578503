//! [`TcpRouteStore`] on SQL: the `tcp_routes` table. A public port is one route's across the
//! fleet, and may not collide with a listener of an edge that serves the route's origin (as
//! that edge last reported its listeners).

use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;
use kokoa_model::net::listeners_overlap;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use super::column::{json_text, ts, typed, uuid};
use super::edges::{fetch_assignments, fetch_edge};
use super::services::fetch_service;
use super::write::{changes, db_err};
use super::SqlStore;
use crate::store::error::{Entity, Result, StoreError};
use crate::store::model::*;
use crate::store::TcpRouteStore;

const TCP_ROUTE_SELECT: &str = "SELECT t.id, t.listen_port, t.listen_ip, t.service_id, \
     s.origin_id, t.proxy_protocol, t.allow, t.deny, t.created_at, t.updated_at \
     FROM tcp_routes t JOIN origin_services s ON s.id = t.service_id";

fn tcp_route_row(row: &AnyRow) -> Result<TcpRoute> {
    const T: &str = "tcp_routes";
    let listen_ip: Option<String> = row.try_get("listen_ip")?;
    let proxy: String = row.try_get("proxy_protocol")?;
    Ok(TcpRoute {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        listen_port: Port::new(row.try_get::<i64, _>("listen_port")?)
            .map_err(|e| StoreError::corrupt(T, e.message))?,
        listen_ip: listen_ip
            .map(|ip| ip.parse::<IpAddr>().map_err(|e| StoreError::corrupt(T, e)))
            .transpose()?,
        service_id: uuid(T, &row.try_get::<String, _>("service_id")?)?,
        origin_id: uuid(T, &row.try_get::<String, _>("origin_id")?)?,
        proxy_protocol: ProxyProtocol::parse(&proxy)
            .map_err(|e| StoreError::corrupt(T, e.message))?,
        allow: typed(T, &row.try_get::<String, _>("allow")?)?,
        deny: typed(T, &row.try_get::<String, _>("deny")?)?,
        created_at: ts(T, row.try_get("created_at")?)?,
        updated_at: ts(T, row.try_get("updated_at")?)?,
    })
}

pub(super) async fn fetch_tcp_route(conn: &mut AnyConnection, id: Id) -> Result<TcpRoute> {
    let row = sqlx::query(&format!("{TCP_ROUTE_SELECT} WHERE t.id = $1"))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::not_found(Entity::TcpRoute, id))?;
    tcp_route_row(&row)
}

pub(super) async fn fetch_tcp_routes(conn: &mut AnyConnection) -> Result<Vec<TcpRoute>> {
    sqlx::query(&format!("{TCP_ROUTE_SELECT} ORDER BY t.listen_port"))
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(tcp_route_row)
        .collect()
}

/// The service a TCP route may target: any service of any protocol (the edge forwards bytes).
async fn tcp_route_target(conn: &mut AnyConnection, service_id: Id) -> Result<Service> {
    match fetch_service(conn, service_id).await {
        Err(StoreError::NotFound { .. }) => Err(StoreError::invalid(
            "service_id",
            format!("unknown service {service_id}"),
        )),
        other => other,
    }
}

/// Checks `route` is the only TCP route on its port and collides with no listener of an edge
/// serving its origin (as reported by that edge), so no edge has to report it as failed.
async fn check_port_free(conn: &mut AnyConnection, route: &TcpRoute) -> Result<()> {
    let port = route.listen_port.get();
    let taken = sqlx::query("SELECT id FROM tcp_routes WHERE listen_port = $1 AND id <> $2")
        .bind(i64::from(port))
        .bind(route.id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    if taken.is_some() {
        return Err(StoreError::conflict_on(
            "listen_port",
            format!("port {port} is already a TCP route's; each TCP route has its own port"),
        ));
    }
    let serving = fetch_assignments(
        conn,
        AssignmentFilter {
            edge_id: None,
            origin_id: Some(route.origin_id),
        },
    )
    .await?;
    for assignment in serving {
        let edge = fetch_edge(conn, assignment.edge_id).await?;
        // The edge listens where its HTTPS listener does unless the route names an address.
        let Some(https) = edge.listeners.iter().find(|l| l.name == "https") else {
            continue;
        };
        let ip = route.listen_ip.unwrap_or(https.address.ip());
        let addr = SocketAddr::new(ip, port);
        if let Some(listener) = edge
            .listeners
            .iter()
            .find(|l| listeners_overlap(addr, l.address))
        {
            return Err(StoreError::conflict_on(
                "listen_port",
                format!(
                    "{addr} would collide with the {} listener of edge {} ({}); pick another port",
                    listener.name, edge.name, listener.address
                ),
            ));
        }
    }
    Ok(())
}

impl SqlStore {
    /// Writes `route` (new or changed) in the write transaction `w`.
    async fn save_tcp_route(
        w: &mut super::write::Write<'_>,
        route: &TcpRoute,
        insert: bool,
    ) -> Result<()> {
        let sql = if insert {
            "INSERT INTO tcp_routes (listen_port, listen_ip, service_id, proxy_protocol, allow, \
             deny, updated_at, id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7)"
        } else {
            "UPDATE tcp_routes SET listen_port = $1, listen_ip = $2, service_id = $3, \
             proxy_protocol = $4, allow = $5, deny = $6, updated_at = $7 WHERE id = $8"
        };
        let now = w.now;
        sqlx::query(sql)
            .bind(i64::from(route.listen_port.get()))
            .bind(route.listen_ip.map(|ip| ip.to_string()))
            .bind(route.service_id.to_string())
            .bind(route.proxy_protocol.to_string())
            .bind(json_text(Some(&route.allow)))
            .bind(json_text(Some(&route.deny)))
            .bind(now)
            .bind(route.id.to_string())
            .execute(w.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

#[async_trait]
impl TcpRouteStore for SqlStore {
    async fn create_tcp_route(&self, actor: &Actor, new: NewTcpRoute) -> Result<TcpRoute> {
        let mut w = self.write(actor).await?;
        let service = tcp_route_target(w.conn(), new.service_id).await?;
        let now = ts("tcp_routes", w.now)?;
        let route = TcpRoute {
            id: Uuid::new_v4(),
            listen_port: new.listen_port,
            listen_ip: new.listen_ip,
            service_id: service.id,
            origin_id: service.origin_id,
            proxy_protocol: new.proxy_protocol,
            allow: new.allow,
            deny: new.deny,
            created_at: now,
            updated_at: now,
        };
        check_port_free(w.conn(), &route).await?;
        Self::save_tcp_route(&mut w, &route, true).await?;
        let route = fetch_tcp_route(w.conn(), route.id).await?;
        w.check_fleet().await?;
        w.bump().await?;
        w.event(
            Entity::TcpRoute,
            &route.id.to_string(),
            "created",
            serde_json::to_value(&route).unwrap_or_default(),
        )
        .await?;
        w.commit().await?;
        Ok(route)
    }

    async fn list_tcp_routes(&self) -> Result<Vec<TcpRoute>> {
        fetch_tcp_routes(&mut *self.conn().await?).await
    }

    async fn get_tcp_route(&self, id: Id) -> Result<TcpRoute> {
        fetch_tcp_route(&mut *self.conn().await?, id).await
    }

    async fn tcp_route_by_port(&self, port: u16) -> Result<TcpRoute> {
        let mut conn = self.conn().await?;
        let row = sqlx::query(&format!("{TCP_ROUTE_SELECT} WHERE t.listen_port = $1"))
            .bind(i64::from(port))
            .fetch_optional(&mut *conn)
            .await?
            .ok_or_else(|| StoreError::not_found(Entity::TcpRoute, port))?;
        tcp_route_row(&row)
    }

    async fn update_tcp_route(
        &self,
        actor: &Actor,
        id: Id,
        update: TcpRouteUpdate,
    ) -> Result<TcpRoute> {
        let mut w = self.write(actor).await?;
        let before = fetch_tcp_route(w.conn(), id).await?;
        let mut after = before.clone();
        if let Some(service_id) = update.service_id {
            if service_id != before.service_id {
                let service = tcp_route_target(w.conn(), service_id).await?;
                after.service_id = service.id;
                after.origin_id = service.origin_id;
            }
        }
        if let Some(port) = update.listen_port {
            after.listen_port = port;
        }
        if let Some(ip) = update.listen_ip {
            after.listen_ip = ip;
        }
        if let Some(proxy) = update.proxy_protocol {
            after.proxy_protocol = proxy;
        }
        if let Some(allow) = update.allow {
            after.allow = allow;
        }
        if let Some(deny) = update.deny {
            after.deny = deny;
        }
        if after == before {
            return Ok(before);
        }
        check_port_free(w.conn(), &after).await?;
        Self::save_tcp_route(&mut w, &after, false).await?;
        let after = fetch_tcp_route(w.conn(), id).await?;
        w.check_fleet().await?;
        w.bump().await?;
        w.event(
            Entity::TcpRoute,
            &id.to_string(),
            "updated",
            changes(&before, &after),
        )
        .await?;
        w.commit().await?;
        Ok(after)
    }

    async fn delete_tcp_route(&self, actor: &Actor, id: Id) -> Result<()> {
        let mut w = self.write(actor).await?;
        let route = fetch_tcp_route(w.conn(), id).await?;
        sqlx::query("DELETE FROM tcp_routes WHERE id = $1")
            .bind(id.to_string())
            .execute(w.conn())
            .await?;
        w.bump().await?;
        w.event(
            Entity::TcpRoute,
            &id.to_string(),
            "deleted",
            json!({"listen_port": route.listen_port, "service_id": route.service_id}),
        )
        .await?;
        w.commit().await
    }
}
