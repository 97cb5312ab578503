//! [`SqlStore`]: the [`Store`] on SQLite or PostgreSQL through sqlx's `Any` driver, so one body of
//! SQL (with `$N` placeholders, which both engines accept) serves both engines.
//!
//! The per-engine differences, all in this file and `migrate.rs`:
//! - connecting: SQLite gets `mode=rwc` (create the file), then `PRAGMA journal_mode = WAL`,
//!   `foreign_keys = ON`, `busy_timeout` on every connection;
//! - write transactions: SQLite `BEGIN IMMEDIATE` (take the write lock up front, so a read
//!   followed by a write never fails to upgrade); PostgreSQL `pg_advisory_xact_lock`, which
//!   serializes writers across control replicas. Writes within one process also queue on a
//!   mutex. Serialized writers make "read, pick the lowest free subnet, insert" and the
//!   gap-free event ids race-free on both engines;
//! - [`Store::snapshot`]: PostgreSQL `REPEATABLE READ` (SQLite transactions already read one
//!   snapshot).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::sync::Once;
use std::time::Duration;

use async_trait::async_trait;
use kokoa_tunnel::key::{PrivateKey, PublicKey};
use serde_json::{json, Value};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Executor, Row, Transaction};
use time::OffsetDateTime;
use tokio::sync::{watch, Mutex, MutexGuard};
use uuid::Uuid;
use zeroize::Zeroizing;

use super::crypto::MasterKey;
use super::error::{Entity, Result, StoreError};
use super::model::*;
use super::{migrate, token, validate, Store};

/// The database engine behind a [`SqlStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// Connections per pool.
const SQLITE_POOL: u32 = 8;
const POSTGRES_POOL: u32 = 16;
/// How long a connection waits for a SQLite lock before giving up.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 10_000;
/// Default and maximum list sizes for events and health checks.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// The SQL implementation of [`Store`].
pub struct SqlStore {
    pool: AnyPool,
    engine: Engine,
    key: MasterKey,
    write_gate: Mutex<()>,
    version: watch::Sender<u64>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

fn ts(what: &'static str, ms: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| StoreError::corrupt(what, e))
}

fn opt_ts(what: &'static str, ms: Option<i64>) -> Result<Option<OffsetDateTime>> {
    ms.map(|ms| ts(what, ms)).transpose()
}

fn ms_of(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn add_ms(now: i64, ttl: Duration) -> i64 {
    now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
}

fn uuid(what: &'static str, s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|e| StoreError::corrupt(what, e))
}

fn opt_uuid(what: &'static str, s: Option<String>) -> Result<Option<Uuid>> {
    s.map(|s| uuid(what, &s)).transpose()
}

fn u64_of(what: &'static str, v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|e| StoreError::corrupt(what, e))
}

fn json_of(what: &'static str, s: &str) -> Result<Value> {
    serde_json::from_str(s).map_err(|e| StoreError::corrupt(what, e))
}

/// Maps a uniqueness violation the pre-checks did not catch (a concurrent writer outside this
/// store's locks) to a Conflict; everything else stays a database error.
fn db_err(e: sqlx::Error) -> StoreError {
    if let Some(db) = e.as_database_error() {
        match db.kind() {
            sqlx::error::ErrorKind::UniqueViolation => {
                return StoreError::conflict(format!("already exists: {}", db.message()))
            }
            sqlx::error::ErrorKind::ForeignKeyViolation => {
                return StoreError::invalid(
                    "reference",
                    format!("unknown entity: {}", db.message()),
                )
            }
            _ => {}
        }
    }
    StoreError::Database(e)
}

/// The lowest value of `range` not in `used`.
fn lowest_free(range: std::ops::RangeInclusive<u8>, used: &BTreeSet<i64>) -> Option<u8> {
    range.into_iter().find(|v| !used.contains(&i64::from(*v)))
}

/// `{"field": {"from": old, "to": new}}` for each top-level field that differs.
fn changes(before: &impl serde::Serialize, after: &impl serde::Serialize) -> Value {
    let (Ok(Value::Object(before)), Ok(Value::Object(after))) =
        (serde_json::to_value(before), serde_json::to_value(after))
    else {
        return Value::Null;
    };
    let mut out = serde_json::Map::new();
    for (field, new) in &after {
        if matches!(field.as_str(), "updated_at" | "state") {
            continue;
        }
        let old = before.get(field).cloned().unwrap_or(Value::Null);
        if &old != new {
            out.insert(field.clone(), json!({"from": old, "to": new}));
        }
    }
    Value::Object(out)
}

/// A write transaction: holds the write locks, stamps the actor on events, bumps the config
/// version at most once, and publishes the new version after commit.
struct Write<'a> {
    tx: Transaction<'static, Any>,
    _gate: MutexGuard<'a, ()>,
    store: &'a SqlStore,
    actor: String,
    now: i64,
    version: Option<i64>,
}

impl Write<'_> {
    fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Bumps the config version (once per transaction) and returns it.
    async fn bump(&mut self) -> Result<i64> {
        if let Some(v) = self.version {
            return Ok(v);
        }
        let v: i64 = sqlx::query(
            "UPDATE config_version SET version = version + 1 WHERE id = 1 RETURNING version",
        )
        .fetch_one(&mut *self.tx)
        .await?
        .try_get("version")?;
        self.version = Some(v);
        Ok(v)
    }

    /// Appends an audit event (after [`Write::bump`] when the change affects config, so the
    /// event carries the version).
    async fn event(&mut self, entity: Entity, id: &str, action: &str, detail: Value) -> Result<()> {
        let next: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) + 1 AS next FROM events")
            .fetch_one(&mut *self.tx)
            .await?
            .try_get("next")?;
        sqlx::query(
            "INSERT INTO events (id, at, actor, entity, entity_id, action, detail, config_version) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(next)
        .bind(self.now)
        .bind(self.actor.clone())
        .bind(entity.as_str())
        .bind(id.to_string())
        .bind(action.to_string())
        .bind(detail.to_string())
        .bind(self.version)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        if let Some(v) = self.version {
            let v = u64::try_from(v).unwrap_or_default();
            self.store.version.send_if_modified(|current| {
                if v > *current {
                    *current = v;
                    true
                } else {
                    false
                }
            });
        }
        Ok(())
    }
}

// ---- row mapping ------------------------------------------------------------------------

const NODE_STATE_COLS: &str =
    "status, last_heartbeat, heartbeat, applied_version, nack_version, nack_error";

fn node_state(row: &AnyRow, table: &'static str) -> Result<NodeState> {
    let status: String = row.try_get("status")?;
    let heartbeat: Option<String> = row.try_get("heartbeat")?;
    let nack_version: Option<i64> = row.try_get("nack_version")?;
    let nack_error: Option<String> = row.try_get("nack_error")?;
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
            }),
            _ => None,
        },
    })
}

fn public_key(what: &'static str, s: &str) -> Result<PublicKey> {
    PublicKey::from_base64(s).map_err(|e| StoreError::corrupt(what, e))
}

fn origin_cols() -> String {
    format!("id, name, subnet, public_key, private_key_sealed, {NODE_STATE_COLS}, created_at, updated_at")
}

fn origin_row(row: &AnyRow) -> Result<Origin> {
    const T: &str = "origins";
    let subnet: i64 = row.try_get("subnet")?;
    let sealed: Option<String> = row.try_get("private_key_sealed")?;
    Ok(Origin {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        name: row.try_get("name")?,
        subnet: u8::try_from(subnet).map_err(|e| StoreError::corrupt(T, e))?,
        public_key: public_key(T, &row.try_get::<String, _>("public_key")?)?,
        managed_key: sealed.is_some(),
        state: node_state(row, T)?,
        created_at: ts(T, row.try_get("created_at")?)?,
        updated_at: ts(T, row.try_get("updated_at")?)?,
    })
}

const SERVICE_COLS: &str =
    "id, origin_id, name, port, protocol, local_address, health_path, created_at, updated_at";

fn service_row(row: &AnyRow) -> Result<Service> {
    const T: &str = "origin_services";
    let port: i64 = row.try_get("port")?;
    let protocol: String = row.try_get("protocol")?;
    Ok(Service {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        origin_id: uuid(T, &row.try_get::<String, _>("origin_id")?)?,
        name: row.try_get("name")?,
        port: u16::try_from(port).map_err(|e| StoreError::corrupt(T, e))?,
        protocol: Protocol::parse(&protocol)
            .ok_or_else(|| StoreError::corrupt(T, format!("protocol {protocol:?}")))?,
        local_address: row.try_get("local_address")?,
        health_path: row.try_get("health_path")?,
        created_at: ts(T, row.try_get("created_at")?)?,
        updated_at: ts(T, row.try_get("updated_at")?)?,
    })
}

fn edge_cols() -> String {
    format!(
        "id, name, public_ip, endpoint, provider, region, public_key, private_key_sealed, \
         {NODE_STATE_COLS}, created_at, updated_at"
    )
}

fn edge_row(row: &AnyRow) -> Result<Edge> {
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
        state: node_state(row, T)?,
        created_at: ts(T, row.try_get("created_at")?)?,
        updated_at: ts(T, row.try_get("updated_at")?)?,
    })
}

const ASSIGNMENT_SELECT: &str =
    "SELECT eo.edge_id, eo.origin_id, eo.host, o.subnet, eo.created_at \
     FROM edge_origins eo JOIN origins o ON o.id = eo.origin_id";

fn assignment_row(row: &AnyRow) -> Result<Assignment> {
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

const ROUTE_SELECT: &str = "SELECT r.id, r.hostname, r.service_id, s.origin_id, r.limits, \
     r.created_at, r.updated_at FROM routes r JOIN origin_services s ON s.id = r.service_id";

fn route_row(row: &AnyRow) -> Result<Route> {
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

const CERT_COLS: &str =
    "id, names, source, chain_pem, issuer, not_after, last_error, created_at, updated_at";

fn cert_row(row: &AnyRow) -> Result<Certificate> {
    const T: &str = "certificates";
    let names: Vec<String> = serde_json::from_str(&row.try_get::<String, _>("names")?)
        .map_err(|e| StoreError::corrupt(T, e))?;
    let source: String = row.try_get("source")?;
    Ok(Certificate {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        names,
        source: CertificateSource::parse(&source)
            .ok_or_else(|| StoreError::corrupt(T, format!("source {source:?}")))?,
        chain_pem: row.try_get("chain_pem")?,
        issuer: row.try_get("issuer")?,
        not_after: opt_ts(T, row.try_get("not_after")?)?,
        last_error: row.try_get("last_error")?,
        created_at: ts(T, row.try_get("created_at")?)?,
        updated_at: ts(T, row.try_get("updated_at")?)?,
    })
}

const NODE_TOKEN_COLS: &str =
    "id, kind, edge_id, origin_id, created_at, expires_at, used_at, revoked_at";

fn node_token_row(row: &AnyRow) -> Result<NodeToken> {
    const T: &str = "node_tokens";
    let kind: String = row.try_get("kind")?;
    let edge = opt_uuid(T, row.try_get("edge_id")?)?;
    let origin = opt_uuid(T, row.try_get("origin_id")?)?;
    let node = match (edge, origin) {
        (Some(id), None) => NodeId::Edge(id),
        (None, Some(id)) => NodeId::Origin(id),
        _ => {
            return Err(StoreError::corrupt(
                T,
                "not exactly one of edge_id, origin_id",
            ))
        }
    };
    Ok(NodeToken {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        kind: NodeTokenKind::parse(&kind)
            .ok_or_else(|| StoreError::corrupt(T, format!("kind {kind:?}")))?,
        node,
        created_at: ts(T, row.try_get("created_at")?)?,
        expires_at: opt_ts(T, row.try_get("expires_at")?)?,
        used_at: opt_ts(T, row.try_get("used_at")?)?,
        revoked_at: opt_ts(T, row.try_get("revoked_at")?)?,
    })
}

const API_TOKEN_COLS: &str = "id, name, created_at, expires_at, revoked_at";

fn api_token_row(row: &AnyRow) -> Result<ApiToken> {
    const T: &str = "api_tokens";
    Ok(ApiToken {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        name: row.try_get("name")?,
        created_at: ts(T, row.try_get("created_at")?)?,
        expires_at: opt_ts(T, row.try_get("expires_at")?)?,
        revoked_at: opt_ts(T, row.try_get("revoked_at")?)?,
    })
}

fn event_row(row: &AnyRow) -> Result<Event> {
    const T: &str = "events";
    let entity: String = row.try_get("entity")?;
    Ok(Event {
        id: u64_of(T, row.try_get("id")?)?,
        at: ts(T, row.try_get("at")?)?,
        actor: row.try_get("actor")?,
        entity: Entity::parse(&entity)
            .ok_or_else(|| StoreError::corrupt(T, format!("entity {entity:?}")))?,
        entity_id: row.try_get("entity_id")?,
        action: row.try_get("action")?,
        detail: json_of(T, &row.try_get::<String, _>("detail")?)?,
        config_version: row
            .try_get::<Option<i64>, _>("config_version")?
            .map(|v| u64_of(T, v))
            .transpose()?,
    })
}

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

// ---- reads shared by the trait methods and write transactions ---------------------------

async fn fetch_origin(conn: &mut AnyConnection, id: Id) -> Result<Origin> {
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

async fn fetch_origins(conn: &mut AnyConnection) -> Result<Vec<Origin>> {
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

async fn fetch_service(conn: &mut AnyConnection, id: Id) -> Result<Service> {
    let row = sqlx::query(&format!(
        "SELECT {SERVICE_COLS} FROM origin_services WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found(Entity::Service, id))?;
    service_row(&row)
}

async fn fetch_services(conn: &mut AnyConnection, origin: Option<Id>) -> Result<Vec<Service>> {
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

async fn fetch_edge(conn: &mut AnyConnection, id: Id) -> Result<Edge> {
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

async fn fetch_edges(conn: &mut AnyConnection) -> Result<Vec<Edge>> {
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

async fn fetch_assignments(
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

async fn fetch_route(conn: &mut AnyConnection, id: Id) -> Result<Route> {
    let row = sqlx::query(&format!("{ROUTE_SELECT} WHERE r.id = $1"))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::not_found(Entity::Route, id))?;
    let mut route = route_row(&row)?;
    route.aliases = route_aliases(conn, id).await?;
    Ok(route)
}

async fn fetch_routes(conn: &mut AnyConnection) -> Result<Vec<Route>> {
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

async fn fetch_certificate(conn: &mut AnyConnection, id: Id) -> Result<Certificate> {
    let row = sqlx::query(&format!(
        "SELECT {CERT_COLS} FROM certificates WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found(Entity::Certificate, id))?;
    cert_row(&row)
}

async fn fetch_certificates(conn: &mut AnyConnection) -> Result<Vec<Certificate>> {
    sqlx::query(&format!(
        "SELECT {CERT_COLS} FROM certificates ORDER BY names, id"
    ))
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(cert_row)
    .collect()
}

const ACME_CHALLENGE_COLS: &str =
    "id, certificate_id, kind, name, token, key_authorization, cert_pem, created_at, expires_at";

fn acme_challenge_row(row: &AnyRow) -> Result<AcmeChallenge> {
    const T: &str = "acme_challenges";
    let kind: String = row.try_get("kind")?;
    let answer = match kind.as_str() {
        "http-01" => AcmeChallengeAnswer::Http01 {
            token: row
                .try_get::<Option<String>, _>("token")?
                .ok_or_else(|| StoreError::corrupt(T, "http-01 without a token"))?,
            key_authorization: row
                .try_get::<Option<String>, _>("key_authorization")?
                .ok_or_else(|| StoreError::corrupt(T, "http-01 without a key authorization"))?,
        },
        "tls-alpn-01" => AcmeChallengeAnswer::TlsAlpn01 {
            cert_pem: row
                .try_get::<Option<String>, _>("cert_pem")?
                .ok_or_else(|| StoreError::corrupt(T, "tls-alpn-01 without a certificate"))?,
        },
        other => return Err(StoreError::corrupt(T, format!("kind {other:?}"))),
    };
    Ok(AcmeChallenge {
        id: uuid(T, &row.try_get::<String, _>("id")?)?,
        certificate_id: uuid(T, &row.try_get::<String, _>("certificate_id")?)?,
        name: row.try_get("name")?,
        answer,
        created_at: ts(T, row.try_get("created_at")?)?,
        expires_at: ts(T, row.try_get("expires_at")?)?,
    })
}

/// Pending challenges that have not expired at `now` (ms), oldest first.
async fn fetch_acme_challenges(conn: &mut AnyConnection, now: i64) -> Result<Vec<AcmeChallenge>> {
    sqlx::query(&format!(
        "SELECT {ACME_CHALLENGE_COLS} FROM acme_challenges WHERE expires_at > $1 \
         ORDER BY created_at, id"
    ))
    .bind(now)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(acme_challenge_row)
    .collect()
}

async fn fetch_node_token(conn: &mut AnyConnection, id: Id) -> Result<NodeToken> {
    let row = sqlx::query(&format!(
        "SELECT {NODE_TOKEN_COLS} FROM node_tokens WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found(Entity::NodeToken, id))?;
    node_token_row(&row)
}

async fn fetch_api_token(conn: &mut AnyConnection, id: Id) -> Result<ApiToken> {
    let row = sqlx::query(&format!(
        "SELECT {API_TOKEN_COLS} FROM api_tokens WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| StoreError::not_found(Entity::ApiToken, id))?;
    api_token_row(&row)
}

async fn read_version(conn: &mut AnyConnection) -> Result<u64> {
    let v: i64 = sqlx::query("SELECT version FROM config_version WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?
        .try_get("version")?;
    u64_of("config_version", v)
}

/// Whether `sql` (a `SELECT 1 ... LIMIT 1` with one text parameter, plus an optional second)
/// finds a row.
async fn exists(conn: &mut AnyConnection, sql: &str, a: String, b: Option<String>) -> Result<bool> {
    let mut q = sqlx::query(sql).bind(a);
    if let Some(b) = b {
        q = q.bind(b);
    }
    Ok(q.fetch_optional(&mut *conn).await?.is_some())
}

fn node_table(node: NodeId) -> &'static str {
    match node {
        NodeId::Edge(_) => "edge_nodes",
        NodeId::Origin(_) => "origins",
    }
}

async fn node_name(conn: &mut AnyConnection, node: NodeId) -> Result<String> {
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

/// Checks a public key is not already used by another origin or edge (WireGuard peers are
/// identified by key, so a duplicate would make two nodes indistinguishable).
async fn check_key_free(
    conn: &mut AnyConnection,
    key: &PublicKey,
    except: Option<Id>,
) -> Result<()> {
    let except = except.map(|id| id.to_string()).unwrap_or_default();
    for table in ["origins", "edge_nodes"] {
        let sql = format!("SELECT 1 FROM {table} WHERE public_key = $1 AND id <> $2 LIMIT 1");
        if exists(conn, &sql, key.to_base64(), Some(except.clone())).await? {
            return Err(StoreError::conflict(format!(
                "public key {key} is already used by another node"
            )));
        }
    }
    Ok(())
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

fn validate_pem(material: &CertificateMaterial) -> Result<()> {
    let certs = rustls_pemfile::certs(&mut material.chain_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| StoreError::invalid("chain_pem", format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(StoreError::invalid(
            "chain_pem",
            "no CERTIFICATE block found",
        ));
    }
    match rustls_pemfile::private_key(&mut material.key_pem.as_bytes()) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(StoreError::invalid("key_pem", "no PRIVATE KEY block found")),
        Err(e) => Err(StoreError::invalid("key_pem", format!("bad PEM: {e}"))),
    }
}

fn cert_names(names: &[String]) -> Result<Vec<String>> {
    if names.is_empty() {
        return Err(StoreError::invalid(
            "names",
            "at least one DNS name is needed",
        ));
    }
    let mut set = BTreeSet::new();
    for name in names {
        set.insert(validate::hostname("names", name)?);
    }
    Ok(set.into_iter().collect())
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

/// Sealing context of an ACME account's credentials: bound to its directory URL.
fn acme_account_aad(directory_url: &str) -> Vec<u8> {
    format!("acme_account:{directory_url}").into_bytes()
}

/// Sealing context of a TLS-ALPN-01 validation key.
fn acme_challenge_aad(id: Id) -> Vec<u8> {
    format!("acme_challenge:{id}").into_bytes()
}

fn list_limit(limit: Option<u32>) -> i64 {
    i64::from(limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT))
}

// ---- singleton jobs ---------------------------------------------------------------------

/// Held leadership of a singleton job (see [`Store::try_lead`]). Dropping it releases the job:
/// on PostgreSQL the lock's connection is closed, which ends the advisory lock.
pub struct Leadership {
    job: String,
    conn: Option<Mutex<AnyConnection>>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("job", &self.job)
            .field("postgres", &self.conn.is_some())
            .finish()
    }
}

impl Leadership {
    /// The job led.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// Whether the leadership still holds: on PostgreSQL, whether the lock's connection still
    /// answers (a lost connection means another replica may have taken over).
    pub async fn holds(&self) -> bool {
        match &self.conn {
            None => true,
            Some(conn) => sqlx::query("SELECT 1 AS one")
                .fetch_one(&mut *conn.lock().await)
                .await
                .is_ok(),
        }
    }
}

/// The advisory lock key of a singleton job: FNV-1a of its name, kept apart from the write
/// lock's key.
fn job_lock_key(job: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in job.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let key = i64::from_ne_bytes(hash.to_ne_bytes());
    if key == migrate::PG_LOCK_KEY {
        key.wrapping_add(1)
    } else {
        key
    }
}

// ---- the store --------------------------------------------------------------------------

impl SqlStore {
    /// Opens (creating and migrating as needed) the database at `url`: `sqlite://PATH`,
    /// `sqlite:PATH`, a bare path, or `postgres://` / `postgresql://`.
    pub async fn open(url: &str, master_key: MasterKey) -> Result<SqlStore> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);

        let (engine, options) = if url.starts_with("postgres://")
            || url.starts_with("postgresql://")
        {
            let options = AnyConnectOptions::from_str(url)
                .map_err(|e| StoreError::invalid("database", format!("bad PostgreSQL URL: {e}")))?;
            (Engine::Postgres, options)
        } else {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            if path.is_empty() || path.contains("://") {
                return Err(StoreError::invalid(
                    "database",
                    format!("{url:?}: expected sqlite://PATH, a file path, or postgres://..."),
                ));
            }
            let path = std::path::absolute(path)
                .map_err(|e| StoreError::invalid("database", format!("{path:?}: {e}")))?;
            // Built through SqliteConnectOptions so the path is escaped correctly in the URL.
            let sqlite = SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(true);
            let options = AnyConnectOptions::from_url(&sqlite.to_url_lossy())
                .map_err(|e| StoreError::invalid("database", e.to_string()))?;
            (Engine::Sqlite, options)
        };

        let pool = AnyPoolOptions::new()
            .max_connections(match engine {
                Engine::Sqlite => SQLITE_POOL,
                Engine::Postgres => POSTGRES_POOL,
            })
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if engine == Engine::Sqlite {
                        conn.execute(
                            format!(
                                "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; \
                                 PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS};"
                            )
                            .as_str(),
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;

        migrate::run(&pool, engine).await?;
        let mut conn = pool.acquire().await?;
        let version = read_version(&mut conn).await?;
        drop(conn);
        let (tx, _) = watch::channel(version);
        tracing::debug!(?engine, version, "store opened");
        Ok(SqlStore {
            pool,
            engine,
            key: master_key,
            write_gate: Mutex::new(()),
            version: tx,
        })
    }

    /// The underlying pool (for diagnostics and tests).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn write(&self, actor: &Actor) -> Result<Write<'_>> {
        let gate = self.write_gate.lock().await;
        let tx = migrate::begin_locked(&self.pool, self.engine).await?;
        Ok(Write {
            tx,
            _gate: gate,
            store: self,
            actor: actor.to_string(),
            now: now_ms(),
            version: None,
        })
    }

    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<Any>> {
        Ok(self.pool.acquire().await?)
    }

    fn aad(entity: Entity, id: Id) -> Vec<u8> {
        format!("{entity}:{id}").into_bytes()
    }

    /// A public key and, when control generates the pair, the sealed private key.
    fn key_pair(
        &self,
        entity: Entity,
        id: Id,
        given: Option<PublicKey>,
    ) -> Result<(PublicKey, Option<String>)> {
        match given {
            Some(public) => Ok((public, None)),
            None => {
                let private = PrivateKey::generate();
                let text = Zeroizing::new(private.to_base64());
                let sealed = self.key.seal(text.as_bytes(), &Self::aad(entity, id))?;
                Ok((private.public_key(), Some(sealed)))
            }
        }
    }

    fn unseal_private_key(&self, entity: Entity, id: Id, sealed: &str) -> Result<PrivateKey> {
        let plain = self.key.open(sealed, &Self::aad(entity, id))?;
        let text = std::str::from_utf8(&plain)
            .map_err(|e| StoreError::corrupt("private_key_sealed", e))?;
        PrivateKey::from_base64(text).map_err(|e| StoreError::corrupt("private_key_sealed", e))
    }

    async fn private_key(&self, entity: Entity, id: Id) -> Result<Option<PrivateKey>> {
        let table = if entity == Entity::Origin {
            "origins"
        } else {
            "edge_nodes"
        };
        let mut conn = self.conn().await?;
        let row = sqlx::query(&format!(
            "SELECT private_key_sealed FROM {table} WHERE id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| StoreError::not_found(entity, id))?;
        let sealed: Option<String> = row.try_get("private_key_sealed")?;
        sealed
            .map(|s| self.unseal_private_key(entity, id, &s))
            .transpose()
    }

    async fn rotate_key(
        &self,
        actor: &Actor,
        entity: Entity,
        id: Id,
        given: Option<PublicKey>,
    ) -> Result<()> {
        let table = if entity == Entity::Origin {
            "origins"
        } else {
            "edge_nodes"
        };
        let mut w = self.write(actor).await?;
        if !exists(
            w.conn(),
            &format!("SELECT 1 FROM {table} WHERE id = $1"),
            id.to_string(),
            None,
        )
        .await?
        {
            return Err(StoreError::not_found(entity, id));
        }
        let (public, sealed) = self.key_pair(entity, id, given)?;
        check_key_free(w.conn(), &public, Some(id)).await?;
        sqlx::query(&format!(
            "UPDATE {table} SET public_key = $1, private_key_sealed = $2, updated_at = $3 WHERE id = $4"
        ))
        .bind(public.to_base64())
        .bind(sealed.clone())
        .bind(w.now)
        .bind(id.to_string())
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        w.bump().await?;
        w.event(
            entity,
            &id.to_string(),
            "key_rotated",
            json!({"public_key": public.to_base64(), "managed_key": sealed.is_some()}),
        )
        .await?;
        w.commit().await
    }

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

    async fn check_origin_unrouted(conn: &mut AnyConnection, origin: &Origin) -> Result<()> {
        let rows = sqlx::query(
            "SELECT r.hostname FROM routes r JOIN origin_services s ON s.id = r.service_id \
             WHERE s.origin_id = $1 ORDER BY r.hostname",
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
impl Store for SqlStore {
    fn engine(&self) -> Engine {
        self.engine
    }

    async fn create_origin(&self, actor: &Actor, new: NewOrigin) -> Result<Origin> {
        let name = validate::name("name", &new.name)?;
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
            "INSERT INTO origins (id, name, subnet, public_key, private_key_sealed, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(id.to_string())
        .bind(name.clone())
        .bind(i64::from(subnet))
        .bind(public.to_base64())
        .bind(sealed.clone())
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
                   "public_key": public.to_base64(), "managed_key": sealed.is_some()}),
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
        let Some(name) = update.name else {
            return Ok(before);
        };
        let name = validate::name("name", &name)?;
        if name == before.name {
            return Ok(before);
        }
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
        sqlx::query("UPDATE origins SET name = $1, updated_at = $2 WHERE id = $3")
            .bind(name)
            .bind(w.now)
            .bind(id.to_string())
            .execute(w.conn())
            .await
            .map_err(db_err)?;
        let after = fetch_origin(w.conn(), id).await?;
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

    async fn create_service(
        &self,
        actor: &Actor,
        origin_id: Id,
        new: NewService,
    ) -> Result<Service> {
        let name = validate::name("name", &new.name)?;
        let port = validate::port("port", new.port)?;
        let local_address = match new.local_address {
            Some(a) => validate::host_port("local_address", &a)?,
            None => format!("127.0.0.1:{port}"),
        };
        let health_path = new
            .health_path
            .map(|p| validate::health_path("health_path", &p))
            .transpose()?;
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
            after.name = validate::name("name", &name)?;
        }
        if let Some(port) = update.port {
            after.port = validate::port("port", port)?;
        }
        if let Some(protocol) = update.protocol {
            after.protocol = protocol;
        }
        if let Some(addr) = update.local_address {
            after.local_address = validate::host_port("local_address", &addr)?;
        }
        if let Some(path) = update.health_path {
            after.health_path = path
                .map(|p| validate::health_path("health_path", &p))
                .transpose()?;
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
        let routes =
            sqlx::query("SELECT hostname FROM routes WHERE service_id = $1 ORDER BY hostname")
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

    async fn create_edge(&self, actor: &Actor, new: NewEdge) -> Result<Edge> {
        let name = validate::name("name", &new.name)?;
        let endpoint = new
            .endpoint
            .map(|e| validate::host_port("endpoint", &e))
            .transpose()?;
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
             private_key_sealed, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(id.to_string())
        .bind(name.clone())
        .bind(new.public_ip.map(|ip| ip.to_string()))
        .bind(endpoint)
        .bind(provider)
        .bind(region)
        .bind(public.to_base64())
        .bind(sealed.clone())
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
            after.name = validate::name("name", &name)?;
        }
        if let Some(ip) = update.public_ip {
            after.public_ip = ip;
        }
        if let Some(endpoint) = update.endpoint {
            after.endpoint = endpoint
                .map(|e| validate::host_port("endpoint", &e))
                .transpose()?;
        }
        if let Some(provider) = update.provider {
            after.provider = clean_opt("provider", provider)?;
        }
        if let Some(region) = update.region {
            after.region = clean_opt("region", region)?;
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
             region = $5, updated_at = $6 WHERE id = $7",
        )
        .bind(after.name.clone())
        .bind(after.public_ip.map(|ip| ip.to_string()))
        .bind(after.endpoint.clone())
        .bind(after.provider.clone())
        .bind(after.region.clone())
        .bind(w.now)
        .bind(id.to_string())
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        let after = fetch_edge(w.conn(), id).await?;
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
             nack_version = CASE WHEN nack_version <= $1 THEN NULL ELSE nack_version END",
            vec![Some(v)],
            None,
        )
        .await
    }

    async fn record_config_nack(&self, node: NodeId, version: u64, error: &str) -> Result<()> {
        let v = i64::try_from(version).map_err(|_| StoreError::invalid("version", "too large"))?;
        let error: String = error.chars().take(4096).collect();
        let name = node_name(&mut *self.conn().await?, node).await?;
        let mut w = self.write(&Actor::Node(name)).await?;
        sqlx::query(&format!(
            "UPDATE {} SET nack_version = $1, nack_error = $2 WHERE id = $3",
            node_table(node)
        ))
        .bind(v)
        .bind(error.clone())
        .bind(node.id().to_string())
        .execute(w.conn())
        .await?;
        w.event(
            node.entity(),
            &node.id().to_string(),
            "config_rejected",
            json!({"version": version, "error": error}),
        )
        .await?;
        w.commit().await
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

    async fn create_certificate(&self, actor: &Actor, new: NewCertificate) -> Result<Certificate> {
        let names = cert_names(&new.names)?;
        if let Some(material) = &new.material {
            validate_pem(material)?;
        } else if new.source == CertificateSource::Manual {
            return Err(StoreError::invalid(
                "material",
                "a manual certificate needs its PEM chain and key",
            ));
        }
        let id = Uuid::new_v4();
        let sealed = new
            .material
            .as_ref()
            .map(|m| {
                self.key
                    .seal(m.key_pem.as_bytes(), &Self::aad(Entity::Certificate, id))
            })
            .transpose()?;
        let mut w = self.write(actor).await?;
        sqlx::query(
            "INSERT INTO certificates (id, names, source, chain_pem, key_sealed, issuer, not_after, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)",
        )
        .bind(id.to_string())
        .bind(serde_json::to_string(&names).unwrap_or_default())
        .bind(new.source.as_str())
        .bind(new.material.as_ref().map(|m| m.chain_pem.clone()))
        .bind(sealed)
        .bind(new.material.as_ref().and_then(|m| m.issuer.clone()))
        .bind(new.material.as_ref().map(|m| ms_of(m.not_after)))
        .bind(w.now)
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        if new.material.is_some() {
            w.bump().await?;
        }
        w.event(
            Entity::Certificate,
            &id.to_string(),
            "created",
            json!({"names": names, "source": new.source.as_str(),
                   "issued": new.material.is_some()}),
        )
        .await?;
        let cert = fetch_certificate(w.conn(), id).await?;
        w.commit().await?;
        Ok(cert)
    }

    async fn list_certificates(&self) -> Result<Vec<Certificate>> {
        fetch_certificates(&mut *self.conn().await?).await
    }

    async fn get_certificate(&self, id: Id) -> Result<Certificate> {
        fetch_certificate(&mut *self.conn().await?, id).await
    }

    async fn certificate_key(&self, id: Id) -> Result<Option<Zeroizing<String>>> {
        let row = sqlx::query("SELECT key_sealed FROM certificates WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found(Entity::Certificate, id))?;
        let Some(sealed) = row.try_get::<Option<String>, _>("key_sealed")? else {
            return Ok(None);
        };
        let plain = self
            .key
            .open(&sealed, &Self::aad(Entity::Certificate, id))?;
        let text = String::from_utf8(plain.to_vec())
            .map_err(|e| StoreError::corrupt("certificates.key_sealed", e))?;
        Ok(Some(Zeroizing::new(text)))
    }

    async fn set_certificate_material(
        &self,
        actor: &Actor,
        id: Id,
        material: CertificateMaterial,
    ) -> Result<Certificate> {
        validate_pem(&material)?;
        let sealed = self.key.seal(
            material.key_pem.as_bytes(),
            &Self::aad(Entity::Certificate, id),
        )?;
        let mut w = self.write(actor).await?;
        fetch_certificate(w.conn(), id).await?;
        sqlx::query(
            "UPDATE certificates SET chain_pem = $1, key_sealed = $2, issuer = $3, not_after = $4, \
             last_error = NULL, updated_at = $5 WHERE id = $6",
        )
        .bind(material.chain_pem.clone())
        .bind(sealed)
        .bind(material.issuer.clone())
        .bind(ms_of(material.not_after))
        .bind(w.now)
        .bind(id.to_string())
        .execute(w.conn())
        .await?;
        w.bump().await?;
        let not_after = material
            .not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        w.event(
            Entity::Certificate,
            &id.to_string(),
            "issued",
            json!({"issuer": material.issuer, "not_after": not_after}),
        )
        .await?;
        let cert = fetch_certificate(w.conn(), id).await?;
        w.commit().await?;
        Ok(cert)
    }

    async fn set_certificate_error(&self, actor: &Actor, id: Id, error: &str) -> Result<()> {
        let error: String = error.chars().take(4096).collect();
        let mut w = self.write(actor).await?;
        let done =
            sqlx::query("UPDATE certificates SET last_error = $1, updated_at = $2 WHERE id = $3")
                .bind(error.clone())
                .bind(w.now)
                .bind(id.to_string())
                .execute(w.conn())
                .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::not_found(Entity::Certificate, id));
        }
        w.event(
            Entity::Certificate,
            &id.to_string(),
            "failed",
            json!({"error": error}),
        )
        .await?;
        w.commit().await
    }

    async fn delete_certificate(&self, actor: &Actor, id: Id) -> Result<()> {
        let mut w = self.write(actor).await?;
        let cert = fetch_certificate(w.conn(), id).await?;
        sqlx::query("DELETE FROM certificates WHERE id = $1")
            .bind(id.to_string())
            .execute(w.conn())
            .await?;
        if cert.chain_pem.is_some() {
            w.bump().await?;
        }
        w.event(
            Entity::Certificate,
            &id.to_string(),
            "deleted",
            json!({"names": cert.names}),
        )
        .await?;
        w.commit().await
    }

    async fn acme_account(&self, directory_url: &str) -> Result<Option<Zeroizing<String>>> {
        let row =
            sqlx::query("SELECT credentials_sealed FROM acme_accounts WHERE directory_url = $1")
                .bind(directory_url.to_string())
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let sealed: String = row.try_get("credentials_sealed")?;
        let plain = self.key.open(&sealed, &acme_account_aad(directory_url))?;
        let text = String::from_utf8(plain.to_vec())
            .map_err(|e| StoreError::corrupt("acme_accounts.credentials_sealed", e))?;
        Ok(Some(Zeroizing::new(text)))
    }

    async fn save_acme_account(
        &self,
        actor: &Actor,
        directory_url: &str,
        contact: &[String],
        credentials: &str,
    ) -> Result<()> {
        if !(directory_url.starts_with("https://") || directory_url.starts_with("http://")) {
            return Err(StoreError::invalid(
                "directory_url",
                "must be an http(s) URL of an ACME directory",
            ));
        }
        let sealed = self
            .key
            .seal(credentials.as_bytes(), &acme_account_aad(directory_url))?;
        let contact = serde_json::to_string(contact).unwrap_or_default();
        let mut w = self.write(actor).await?;
        let existed = sqlx::query("SELECT 1 AS one FROM acme_accounts WHERE directory_url = $1")
            .bind(directory_url.to_string())
            .fetch_optional(w.conn())
            .await?
            .is_some();
        if existed {
            sqlx::query(
                "UPDATE acme_accounts SET contact = $1, credentials_sealed = $2, updated_at = $3 \
                 WHERE directory_url = $4",
            )
            .bind(contact.clone())
            .bind(sealed)
            .bind(w.now)
            .bind(directory_url.to_string())
            .execute(w.conn())
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO acme_accounts (directory_url, contact, credentials_sealed, created_at, \
                 updated_at) VALUES ($1, $2, $3, $4, $4)",
            )
            .bind(directory_url.to_string())
            .bind(contact.clone())
            .bind(sealed)
            .bind(w.now)
            .execute(w.conn())
            .await?;
        }
        // Accounts have no entity of their own: the audit trail files them under certificates,
        // keyed by directory URL.
        w.event(
            Entity::Certificate,
            directory_url,
            if existed {
                "acme_account_updated"
            } else {
                "acme_account_created"
            },
            json!({"contact": serde_json::from_str::<Value>(&contact).unwrap_or(Value::Null)}),
        )
        .await?;
        w.commit().await
    }

    async fn add_acme_challenges(
        &self,
        actor: &Actor,
        challenges: Vec<NewAcmeChallenge>,
    ) -> Result<Vec<AcmeChallenge>> {
        if challenges.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows = Vec::with_capacity(challenges.len());
        for challenge in &challenges {
            let name = challenge.name.trim_end_matches('.').to_ascii_lowercase();
            validate::hostname("name", &name)?;
            let id = Uuid::new_v4();
            let (token, key_authorization, cert_pem, key_sealed) = match &challenge.answer {
                AcmeChallengeAnswer::Http01 {
                    token,
                    key_authorization,
                } => {
                    if token.is_empty()
                        || !token
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    {
                        return Err(StoreError::invalid("token", "must be base64url"));
                    }
                    (
                        Some(token.clone()),
                        Some(key_authorization.clone()),
                        None,
                        None,
                    )
                }
                AcmeChallengeAnswer::TlsAlpn01 { cert_pem } => {
                    let key = challenge.key_pem.as_deref().ok_or_else(|| {
                        StoreError::invalid("key_pem", "a TLS-ALPN-01 challenge needs its key")
                    })?;
                    let sealed = self.key.seal(key.as_bytes(), &acme_challenge_aad(id))?;
                    (None, None, Some(cert_pem.clone()), Some(sealed))
                }
            };
            rows.push((
                id,
                name,
                challenge,
                token,
                key_authorization,
                cert_pem,
                key_sealed,
            ));
        }
        let mut w = self.write(actor).await?;
        let mut ids = Vec::with_capacity(rows.len());
        for (id, name, challenge, token, key_authorization, cert_pem, key_sealed) in rows {
            fetch_certificate(w.conn(), challenge.certificate_id)
                .await
                .map_err(|e| match e {
                    StoreError::NotFound { .. } => StoreError::invalid(
                        "certificate_id",
                        format!("unknown certificate {}", challenge.certificate_id),
                    ),
                    other => other,
                })?;
            sqlx::query(
                "INSERT INTO acme_challenges (id, certificate_id, kind, name, token, \
                 key_authorization, cert_pem, key_sealed, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(id.to_string())
            .bind(challenge.certificate_id.to_string())
            .bind(challenge.answer.kind())
            .bind(name.clone())
            .bind(token)
            .bind(key_authorization)
            .bind(cert_pem)
            .bind(key_sealed)
            .bind(w.now)
            .bind(add_ms(w.now, challenge.ttl))
            .execute(w.conn())
            .await
            .map_err(db_err)?;
            w.bump().await?;
            w.event(
                Entity::Certificate,
                &challenge.certificate_id.to_string(),
                "acme_challenge_added",
                json!({"name": name, "kind": challenge.answer.kind()}),
            )
            .await?;
            ids.push(id.to_string());
        }
        let now = w.now;
        let all = fetch_acme_challenges(w.conn(), now).await?;
        w.commit().await?;
        Ok(all
            .into_iter()
            .filter(|c| ids.contains(&c.id.to_string()))
            .collect())
    }

    async fn remove_acme_challenges(
        &self,
        actor: &Actor,
        certificate_id: Option<Id>,
    ) -> Result<u64> {
        let mut w = self.write(actor).await?;
        let done = match certificate_id {
            Some(id) => {
                sqlx::query("DELETE FROM acme_challenges WHERE certificate_id = $1")
                    .bind(id.to_string())
                    .execute(w.conn())
                    .await?
            }
            None => {
                sqlx::query("DELETE FROM acme_challenges")
                    .execute(w.conn())
                    .await?
            }
        };
        let removed = done.rows_affected();
        if removed > 0 {
            w.bump().await?;
            w.event(
                Entity::Certificate,
                &certificate_id.map_or_else(|| "*".to_string(), |id| id.to_string()),
                "acme_challenges_removed",
                json!({"count": removed}),
            )
            .await?;
        }
        w.commit().await?;
        Ok(removed)
    }

    async fn list_acme_challenges(&self) -> Result<Vec<AcmeChallenge>> {
        fetch_acme_challenges(&mut *self.conn().await?, now_ms()).await
    }

    async fn acme_challenge_key(&self, id: Id) -> Result<Option<Zeroizing<String>>> {
        let row = sqlx::query("SELECT key_sealed FROM acme_challenges WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found(Entity::Certificate, id))?;
        let Some(sealed) = row.try_get::<Option<String>, _>("key_sealed")? else {
            return Ok(None);
        };
        let plain = self.key.open(&sealed, &acme_challenge_aad(id))?;
        let text = String::from_utf8(plain.to_vec())
            .map_err(|e| StoreError::corrupt("acme_challenges.key_sealed", e))?;
        Ok(Some(Zeroizing::new(text)))
    }

    async fn try_lead(&self, job: &str) -> Result<Option<Leadership>> {
        if self.engine == Engine::Sqlite {
            return Ok(Some(Leadership {
                job: job.to_owned(),
                conn: None,
            }));
        }
        // A connection of its own, outside the pool: the session lock lives as long as it.
        let mut conn = self.pool.acquire().await?.detach();
        let locked: bool = sqlx::query("SELECT pg_try_advisory_lock($1) AS locked")
            .bind(job_lock_key(job))
            .fetch_one(&mut conn)
            .await?
            .try_get("locked")?;
        if !locked {
            let _ = sqlx::Connection::close(conn).await;
            return Ok(None);
        }
        Ok(Some(Leadership {
            job: job.to_owned(),
            conn: Some(Mutex::new(conn)),
        }))
    }

    async fn create_enrollment_token(
        &self,
        actor: &Actor,
        node: NodeId,
        ttl: Duration,
    ) -> Result<IssuedNodeToken> {
        if ttl.is_zero() {
            return Err(StoreError::invalid("ttl", "must be positive"));
        }
        let mut w = self.write(actor).await?;
        let name = node_name(w.conn(), node).await?;
        let secret = token::generate("enroll");
        let id = Uuid::new_v4();
        let (edge, origin) = match node {
            NodeId::Edge(e) => (Some(e.to_string()), None),
            NodeId::Origin(o) => (None, Some(o.to_string())),
        };
        sqlx::query(
            "INSERT INTO node_tokens (id, kind, token_hash, edge_id, origin_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id.to_string())
        .bind(NodeTokenKind::Enrollment.as_str())
        .bind(token::hash(secret.expose()))
        .bind(edge)
        .bind(origin)
        .bind(w.now)
        .bind(add_ms(w.now, ttl))
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        w.event(
            Entity::NodeToken,
            &id.to_string(),
            "created",
            json!({"kind": "enrollment", "node": node, "node_name": name,
                   "ttl_seconds": ttl.as_secs()}),
        )
        .await?;
        let token = fetch_node_token(w.conn(), id).await?;
        w.commit().await?;
        Ok(IssuedNodeToken { token, secret })
    }

    async fn enroll(&self, enrollment_secret: &str) -> Result<Enrollment> {
        let hash = token::hash(enrollment_secret.trim());
        let refused = |reason| StoreError::Unauthenticated { reason };
        // Look up first without the write lock: unknown secrets never queue behind writers.
        let row = sqlx::query(&format!(
            "SELECT {NODE_TOKEN_COLS} FROM node_tokens WHERE token_hash = $1"
        ))
        .bind(hash.clone())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(refused("unknown token"))?;
        let found = node_token_row(&row)?;
        let name = node_name(&mut *self.conn().await?, found.node).await?;
        let mut w = self.write(&Actor::Node(name)).await?;
        // Re-read under the lock: two concurrent uses of one token must not both succeed.
        let token = fetch_node_token(w.conn(), found.id).await?;
        if token.kind != NodeTokenKind::Enrollment {
            return Err(refused("not an enrollment token"));
        }
        if token.revoked_at.is_some() {
            return Err(refused("enrollment token revoked"));
        }
        if token.used_at.is_some() {
            return Err(refused("enrollment token already used"));
        }
        if token.expires_at.is_some_and(|t| ms_of(t) <= w.now) {
            return Err(refused("enrollment token expired"));
        }
        let node = token.node;
        sqlx::query("UPDATE node_tokens SET used_at = $1 WHERE id = $2")
            .bind(w.now)
            .bind(token.id.to_string())
            .execute(w.conn())
            .await?;
        let column = match node {
            NodeId::Edge(_) => "edge_id",
            NodeId::Origin(_) => "origin_id",
        };
        sqlx::query(&format!(
            "UPDATE node_tokens SET revoked_at = $1 WHERE {column} = $2 AND kind = 'credential' \
             AND revoked_at IS NULL"
        ))
        .bind(w.now)
        .bind(node.id().to_string())
        .execute(w.conn())
        .await?;
        let secret = token::generate("node");
        let id = Uuid::new_v4();
        let (edge, origin) = match node {
            NodeId::Edge(e) => (Some(e.to_string()), None),
            NodeId::Origin(o) => (None, Some(o.to_string())),
        };
        sqlx::query(
            "INSERT INTO node_tokens (id, kind, token_hash, edge_id, origin_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(id.to_string())
        .bind(NodeTokenKind::Credential.as_str())
        .bind(token::hash(secret.expose()))
        .bind(edge)
        .bind(origin)
        .bind(w.now)
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        w.event(
            Entity::NodeToken,
            &id.to_string(),
            "enrolled",
            json!({"kind": "credential", "node": node, "enrollment_token": token.id}),
        )
        .await?;
        let credential = fetch_node_token(w.conn(), id).await?;
        w.commit().await?;
        Ok(Enrollment {
            node,
            credential: IssuedNodeToken {
                token: credential,
                secret,
            },
        })
    }

    async fn authenticate_node(&self, credential_secret: &str) -> Result<NodeId> {
        let refused = |reason| StoreError::Unauthenticated { reason };
        let row = sqlx::query(&format!(
            "SELECT {NODE_TOKEN_COLS} FROM node_tokens WHERE token_hash = $1"
        ))
        .bind(token::hash(credential_secret.trim()))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(refused("unknown credential"))?;
        let token = node_token_row(&row)?;
        if token.kind != NodeTokenKind::Credential {
            return Err(refused("not a node credential"));
        }
        if token.revoked_at.is_some() {
            return Err(refused("credential revoked"));
        }
        if token.expires_at.is_some_and(|t| ms_of(t) <= now_ms()) {
            return Err(refused("credential expired"));
        }
        Ok(token.node)
    }

    async fn list_node_tokens(&self, node: Option<NodeId>) -> Result<Vec<NodeToken>> {
        let rows = match node {
            None => {
                sqlx::query(&format!(
                    "SELECT {NODE_TOKEN_COLS} FROM node_tokens ORDER BY created_at DESC, id"
                ))
                .fetch_all(&self.pool)
                .await?
            }
            Some(node) => {
                let column = match node {
                    NodeId::Edge(_) => "edge_id",
                    NodeId::Origin(_) => "origin_id",
                };
                sqlx::query(&format!(
                    "SELECT {NODE_TOKEN_COLS} FROM node_tokens WHERE {column} = $1 \
                     ORDER BY created_at DESC, id"
                ))
                .bind(node.id().to_string())
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(node_token_row).collect()
    }

    async fn revoke_node_token(&self, actor: &Actor, id: Id) -> Result<NodeToken> {
        let mut w = self.write(actor).await?;
        let token = fetch_node_token(w.conn(), id).await?;
        if token.revoked_at.is_some() {
            return Ok(token);
        }
        sqlx::query("UPDATE node_tokens SET revoked_at = $1 WHERE id = $2")
            .bind(w.now)
            .bind(id.to_string())
            .execute(w.conn())
            .await?;
        w.event(
            Entity::NodeToken,
            &id.to_string(),
            "revoked",
            json!({"kind": token.kind, "node": token.node}),
        )
        .await?;
        let token = fetch_node_token(w.conn(), id).await?;
        w.commit().await?;
        Ok(token)
    }

    async fn create_api_token(
        &self,
        actor: &Actor,
        name: &str,
        ttl: Option<Duration>,
    ) -> Result<IssuedApiToken> {
        let name = validate::name("name", name)?;
        if ttl.is_some_and(|t| t.is_zero()) {
            return Err(StoreError::invalid("ttl", "must be positive"));
        }
        let mut w = self.write(actor).await?;
        if exists(
            w.conn(),
            "SELECT 1 FROM api_tokens WHERE name = $1",
            name.clone(),
            None,
        )
        .await?
        {
            return Err(StoreError::conflict(format!(
                "an API token named {name} already exists"
            )));
        }
        let secret = token::generate("api");
        let id = Uuid::new_v4();
        sqlx::query(
            "INSERT INTO api_tokens (id, name, token_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.to_string())
        .bind(name.clone())
        .bind(token::hash(secret.expose()))
        .bind(w.now)
        .bind(ttl.map(|t| add_ms(w.now, t)))
        .execute(w.conn())
        .await
        .map_err(db_err)?;
        w.event(
            Entity::ApiToken,
            &id.to_string(),
            "created",
            json!({"name": name, "ttl_seconds": ttl.map(|t| t.as_secs())}),
        )
        .await?;
        let token = fetch_api_token(w.conn(), id).await?;
        w.commit().await?;
        Ok(IssuedApiToken { token, secret })
    }

    async fn authenticate_api_token(&self, secret: &str) -> Result<ApiToken> {
        let refused = |reason| StoreError::Unauthenticated { reason };
        let row = sqlx::query(&format!(
            "SELECT {API_TOKEN_COLS} FROM api_tokens WHERE token_hash = $1"
        ))
        .bind(token::hash(secret.trim()))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(refused("unknown API token"))?;
        let token = api_token_row(&row)?;
        if token.revoked_at.is_some() {
            return Err(refused("API token revoked"));
        }
        if token.expires_at.is_some_and(|t| ms_of(t) <= now_ms()) {
            return Err(refused("API token expired"));
        }
        Ok(token)
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiToken>> {
        sqlx::query(&format!(
            "SELECT {API_TOKEN_COLS} FROM api_tokens ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(api_token_row)
        .collect()
    }

    async fn revoke_api_token(&self, actor: &Actor, id: Id) -> Result<ApiToken> {
        let mut w = self.write(actor).await?;
        let token = fetch_api_token(w.conn(), id).await?;
        if token.revoked_at.is_some() {
            return Ok(token);
        }
        sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2")
            .bind(w.now)
            .bind(id.to_string())
            .execute(w.conn())
            .await?;
        w.event(
            Entity::ApiToken,
            &id.to_string(),
            "revoked",
            json!({"name": token.name}),
        )
        .await?;
        let token = fetch_api_token(w.conn(), id).await?;
        w.commit().await?;
        Ok(token)
    }

    async fn list_events(&self, query: EventQuery) -> Result<Vec<Event>> {
        let limit = list_limit(query.limit);
        let mut sql = String::from(
            "SELECT id, at, actor, entity, entity_id, action, detail, config_version FROM events WHERE 1 = 1",
        );
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if query.after.is_some() {
            sql += &format!(" AND id > {}", next());
        }
        if query.entity.is_some() {
            sql += &format!(" AND entity = {}", next());
        }
        if query.entity_id.is_some() {
            sql += &format!(" AND entity_id = {}", next());
        }
        // A live feed reads forward from `after`; otherwise the latest `limit`.
        let order = if query.after.is_some() { "ASC" } else { "DESC" };
        sql += &format!(" ORDER BY id {order} LIMIT {}", next());
        let mut q = sqlx::query(&sql);
        if let Some(after) = query.after {
            q = q.bind(i64::try_from(after).unwrap_or(i64::MAX));
        }
        if let Some(entity) = query.entity {
            q = q.bind(entity.as_str());
        }
        if let Some(entity_id) = query.entity_id {
            q = q.bind(entity_id);
        }
        let mut events: Vec<Event> = q
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(event_row)
            .collect::<Result<_>>()?;
        events.sort_by_key(|e| e.id);
        Ok(events)
    }

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

    async fn config_version(&self) -> Result<u64> {
        read_version(&mut *self.conn().await?).await
    }

    fn subscribe_config_version(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        let mut tx = match self.engine {
            Engine::Sqlite => self.pool.begin().await?,
            Engine::Postgres => {
                self.pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?
            }
        };
        let conn: &mut AnyConnection = &mut tx;
        let snapshot = Snapshot {
            version: read_version(conn).await?,
            origins: fetch_origins(conn).await?,
            services: fetch_services(conn, None).await?,
            edges: fetch_edges(conn).await?,
            assignments: fetch_assignments(conn, AssignmentFilter::default()).await?,
            routes: fetch_routes(conn).await?,
            certificates: fetch_certificates(conn).await?,
            acme_challenges: fetch_acme_challenges(conn, now_ms()).await?,
        };
        tx.rollback().await?;
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_free_picks_the_first_gap() {
        let used: BTreeSet<i64> = [1, 2, 4].into_iter().collect();
        assert_eq!(lowest_free(SUBNETS, &used), Some(3));
        let full: BTreeSet<i64> = (1..=254).collect();
        assert_eq!(lowest_free(SUBNETS, &full), None);
        assert_eq!(lowest_free(EDGE_HOSTS, &BTreeSet::new()), Some(10));
    }

    #[test]
    fn changes_lists_only_differing_fields() {
        let diff = changes(
            &json!({"a": 1, "b": 2, "updated_at": 1}),
            &json!({"a": 1, "b": 3, "updated_at": 2}),
        );
        assert_eq!(diff, json!({"b": {"from": 2, "to": 3}}));
    }
}
