//! [`HealthStore`]: the history of active health-check results.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::error::Result;
use super::model::{HealthCheck, HealthQuery, NewHealthCheck};

/// The health-check history part of [`Store`](super::Store).
#[async_trait]
pub trait HealthStore: Send + Sync {
    /// Records one active health-check result.
    async fn record_health_check(&self, check: NewHealthCheck) -> Result<HealthCheck>;

    /// Health-check history, newest first.
    async fn health_checks(&self, query: HealthQuery) -> Result<Vec<HealthCheck>>;

    /// Deletes health-check results older than `before`; returns how many.
    async fn prune_health_checks(&self, before: OffsetDateTime) -> Result<u64>;
}
