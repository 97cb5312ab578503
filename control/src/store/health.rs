//! [`HealthStore`]: the history of health-check results, kept for a bounded time (the checker
//! prunes it, see `crate::health`).

use async_trait::async_trait;
use time::OffsetDateTime;

use super::error::Result;
use super::model::{HealthCheck, HealthQuery, NewHealthCheck};

/// The health-check history part of [`Store`](super::Store).
#[async_trait]
pub trait HealthStore: Send + Sync {
    /// Records health-check results (one round of the checker, or the service results of one
    /// heartbeat) in one transaction; returns how many. Writes no event: results are
    /// observations, state changes are the events.
    async fn record_health_checks(&self, checks: Vec<NewHealthCheck>) -> Result<usize>;

    /// Health-check history, newest first.
    async fn health_checks(&self, query: HealthQuery) -> Result<Vec<HealthCheck>>;

    /// Deletes health-check results older than `before`; returns how many.
    async fn prune_health_checks(&self, before: OffsetDateTime) -> Result<u64>;
}
