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
//!
//! One file per kind of record, each implementing its trait of [`Store`]; shared pieces:
//! [`write`] (write transactions and pre-checks), [`column`] (column value conversions),
//! [`keys`] (node key pairs), [`node_state`] (what nodes report).

mod acme;
mod api_tokens;
mod certificates;
mod column;
mod edges;
mod events;
mod health;
mod keys;
mod leadership;
mod node_state;
mod node_tokens;
mod notifications;
mod origins;
mod provision;
mod routes;
mod services;
mod sessions;
mod tcp_routes;
mod users;
mod write;

use std::str::FromStr;
use std::sync::Once;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions, Executor, Row};
use tokio::sync::{watch, Mutex};

use super::crypto::MasterKey;
use super::error::{Result, StoreError};
use super::model::{AssignmentFilter, Snapshot};
use super::{migrate, Store};

use acme::fetch_acme_challenges;
use certificates::fetch_certificates;
use column::u64_of;
use edges::{fetch_assignments, fetch_edges};
use origins::fetch_origins;
use routes::fetch_routes;
use services::fetch_services;
use tcp_routes::fetch_tcp_routes;

pub(crate) use column::now_ms;
pub use leadership::Leadership;

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

/// A list request's row limit: [`DEFAULT_LIMIT`] when absent, within 1..=[`MAX_LIMIT`].
fn list_limit(limit: Option<u32>) -> i64 {
    i64::from(limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT))
}

/// Everything node config is built from, read on `conn` (a transaction, for a consistent view);
/// ACME challenges that have not expired at `now` (ms).
async fn read_snapshot(conn: &mut AnyConnection, now: i64) -> Result<Snapshot> {
    Ok(Snapshot {
        version: read_version(conn).await?,
        origins: fetch_origins(conn).await?,
        services: fetch_services(conn, None).await?,
        edges: fetch_edges(conn).await?,
        assignments: fetch_assignments(conn, AssignmentFilter::default()).await?,
        routes: fetch_routes(conn).await?,
        tcp_routes: fetch_tcp_routes(conn).await?,
        certificates: fetch_certificates(conn).await?,
        acme_challenges: fetch_acme_challenges(conn, now).await?,
    })
}

async fn read_version(conn: &mut AnyConnection) -> Result<u64> {
    let v: i64 = sqlx::query("SELECT version FROM config_version WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?
        .try_get("version")?;
    u64_of("config_version", v)
}

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

    async fn conn(&self) -> Result<sqlx::pool::PoolConnection<Any>> {
        Ok(self.pool.acquire().await?)
    }
}

#[async_trait]
impl Store for SqlStore {
    fn engine(&self) -> Engine {
        self.engine
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
        let snapshot = read_snapshot(&mut tx, now_ms()).await?;
        tx.rollback().await?;
        Ok(snapshot)
    }
}
