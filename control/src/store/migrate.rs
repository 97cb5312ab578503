//! Schema migrations: the same SQL files on SQLite and PostgreSQL, applied in order, each in its
//! own transaction together with its row in `schema_migrations`.
//!
//! A small runner of our own rather than `sqlx::migrate!`: that macro pulls sqlx's proc-macro
//! crate into the build, and `sqlx::migrate::Migrator` over the `Any` driver would need the
//! files on disk at run time. Here the files are compiled in with `include_str!`.
//! Concurrent starts are safe: SQLite takes the write lock (`BEGIN IMMEDIATE`), PostgreSQL a
//! transaction-scoped advisory lock, before checking what is applied.

use sqlx::{Any, AnyPool, Row, Transaction};

use super::error::{Result, StoreError};
use super::sql::Engine;

/// One migration: version, description, SQL.
struct Migration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

/// Every migration, oldest first. Append only: never edit one that has shipped.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "initial schema",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        description: "acme accounts and challenges",
        sql: include_str!("migrations/0002_acme.sql"),
    },
    Migration {
        version: 3,
        description: "notification targets and deliveries",
        sql: include_str!("migrations/0003_notifications.sql"),
    },
    Migration {
        version: 4,
        description: "tcp routes, edge limits and tunnel settings, nack objects, edge listeners",
        sql: include_str!("migrations/0004_parity.sql"),
    },
    Migration {
        version: 5,
        description: "fleet health: node states, drains, health history kinds",
        sql: include_str!("migrations/0005_health.sql"),
    },
    Migration {
        version: 6,
        description: "dashboard accounts, sessions and API token roles",
        sql: include_str!("migrations/0006_accounts.sql"),
    },
    Migration {
        version: 7,
        description: "provisioned edge instances and edge replacements",
        sql: include_str!("migrations/0007_provision.sql"),
    },
];

/// The advisory lock key serializing migrations (and writes) across PostgreSQL replicas:
/// "kokoa" in ASCII.
pub(crate) const PG_LOCK_KEY: i64 = 0x006b_6f6b_6f61;

fn checksum(sql: &str) -> String {
    super::token::hash(sql)
}

pub(crate) async fn begin_locked(
    pool: &AnyPool,
    engine: Engine,
) -> Result<Transaction<'static, Any>> {
    match engine {
        Engine::Sqlite => Ok(pool.begin_with("BEGIN IMMEDIATE").await?),
        Engine::Postgres => {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PG_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
            Ok(tx)
        }
    }
}

/// Applies the migrations not yet applied. Returns how many ran.
pub(crate) async fn run(pool: &AnyPool, engine: Engine) -> Result<usize> {
    let mut applied = 0;
    let newest = MIGRATIONS.last().map_or(0, |m| m.version);
    for migration in MIGRATIONS {
        let mut tx = begin_locked(pool, engine).await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version BIGINT PRIMARY KEY,
                description TEXT NOT NULL,
                checksum TEXT NOT NULL,
                applied_at BIGINT NOT NULL
            )",
        )
        .execute(&mut *tx)
        .await?;
        let max: Option<i64> = sqlx::query("SELECT MAX(version) AS v FROM schema_migrations")
            .fetch_one(&mut *tx)
            .await?
            .try_get("v")?;
        if let Some(max) = max.filter(|max| *max > newest) {
            return Err(StoreError::corrupt(
                "schema_migrations",
                format!(
                    "the database schema is at version {max}, newer than this kokoa-control \
                     knows ({newest}); run the newer kokoa-control"
                ),
            ));
        }
        let sum = checksum(migration.sql);
        let existing = sqlx::query("SELECT checksum FROM schema_migrations WHERE version = $1")
            .bind(migration.version)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(row) = existing {
            let stored: String = row.try_get("checksum")?;
            if stored != sum {
                return Err(StoreError::corrupt(
                    "schema_migrations",
                    format!(
                        "migration {} ({}) differs from the one applied to this database; \
                         shipped migrations must never be edited",
                        migration.version, migration.description
                    ),
                ));
            }
            tx.commit().await?;
            continue;
        }
        sqlx::raw_sql(migration.sql).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO schema_migrations (version, description, checksum, applied_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(migration.version)
        .bind(migration.description)
        .bind(sum)
        .bind(super::sql::now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(
            version = migration.version,
            description = migration.description,
            "applied schema migration"
        );
        applied += 1;
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_increase() {
        let versions: Vec<i64> = super::MIGRATIONS.iter().map(|m| m.version).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(super::checksum("x").len(), 64);
    }
}
