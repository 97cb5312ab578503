//! [`LeaderStore`] on SQL: singleton jobs. SQLite grants every job (one process owns the file);
//! PostgreSQL holds a session advisory lock on a connection of its own.

use async_trait::async_trait;
use sqlx::{AnyConnection, Row};
use tokio::sync::Mutex;

use super::{Engine, SqlStore};
use crate::store::error::Result;
use crate::store::{migrate, LeaderStore};

/// Held leadership of a singleton job (see [`LeaderStore::try_lead`]). Dropping it releases the
/// job: on PostgreSQL the lock's connection is closed, which ends the advisory lock.
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

#[async_trait]
impl LeaderStore for SqlStore {
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
}
