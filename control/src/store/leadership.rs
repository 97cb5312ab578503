//! [`LeaderStore`]: which control replica runs a singleton job (ACME, DNS, health actions).

use async_trait::async_trait;

use super::error::Result;
use super::sql::Leadership;

/// The singleton jobs part of [`Store`](super::Store).
#[async_trait]
pub trait LeaderStore: Send + Sync {
    /// Tries to become the one control replica running singleton job `job` (ACME, DNS,
    /// health actions). SQLite: always granted (one process owns the file). PostgreSQL: a
    /// session advisory lock on a connection of its own, held until the [`Leadership`] is
    /// dropped or that connection dies; `None` while another replica holds it.
    async fn try_lead(&self, job: &str) -> Result<Option<Leadership>>;
}
