//! One test database per test, on SQLite and on PostgreSQL (when `KOKOA_TEST_POSTGRES` is set;
//! skipped with a reason otherwise, failing under `CI=true`), for the store's test files.
//! `both_engines!(a, b)` runs each test function `async fn a(db: &Db) -> Result<()>` on both.
// Each test file uses part of `Db`.
#![allow(dead_code)]

use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, Result};
use kokoa_control::store::{self, MasterKey, SqlStore, Store};
use sqlx::{ConnectOptions, Connection, Row};

/// One test database and the store opened on it.
pub struct Db {
    pub url: String,
    pub key: MasterKey,
    pub sql: Arc<SqlStore>,
    pub store: Arc<dyn Store>,
    /// PostgreSQL: (admin URL, database name) to drop at the end.
    pg: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    pub async fn sqlite() -> Result<Db> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("control.db");
        // A bare path: the default form of --database.
        Db::open(path.to_string_lossy().into_owned(), None, Some(dir)).await
    }

    pub async fn postgres() -> Result<Option<Db>> {
        let Some(base) = kokoa_tests::prereq::postgres("PostgreSQL store tests") else {
            return Ok(None);
        };
        let name = format!("kokoa_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&base)
            .await
            .with_context(|| format!("connecting to KOKOA_TEST_POSTGRES={base}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let url = sqlx::postgres::PgConnectOptions::from_str(&base)?
            .database(&name)
            .to_url_lossy()
            .to_string();
        Db::open(url, Some((base, name)), None).await.map(Some)
    }

    pub async fn open(
        url: String,
        pg: Option<(String, String)>,
        dir: Option<tempfile::TempDir>,
    ) -> Result<Db> {
        let key = MasterKey::generate();
        let sql = Arc::new(SqlStore::open(&url, key.clone()).await?);
        Ok(Db {
            url,
            key,
            store: sql.clone(),
            sql,
            pg,
            _dir: dir,
        })
    }

    /// Opens a second store on the same database.
    pub async fn reopen(&self, key: MasterKey) -> Result<Arc<dyn Store>> {
        Ok(store::open(&self.url, key).await?)
    }

    pub async fn finish(self) -> Result<()> {
        self.sql.close().await;
        if let Some((base, name)) = self.pg {
            let mut admin = sqlx::PgConnection::connect(&base).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await?;
            admin.close().await?;
        }
        Ok(())
    }

    /// All text values of one column (for checking what is stored raw).
    pub async fn column(&self, table: &str, column: &str) -> Result<Vec<Option<String>>> {
        let rows = sqlx::query(&format!("SELECT {column} AS v FROM {table}"))
            .fetch_all(self.sql.pool())
            .await?;
        rows.iter()
            .map(|r| r.try_get::<Option<String>, _>("v").map_err(Into::into))
            .collect()
    }
}

macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    let db = super::Db::sqlite().await?;
                    super::$name(&db).await?;
                    db.finish().await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    let Some(db) = super::Db::postgres().await? else { return Ok(()) };
                    super::$name(&db).await?;
                    db.finish().await
                }
            )*
        }
    };
}
