//! [`EventStore`]: the audit trail. Every change writes its event in the change's own
//! transaction; this trait reads them.

use async_trait::async_trait;

use super::error::Result;
use super::model::{Event, EventQuery};

/// The audit trail part of [`Store`](super::Store).
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Audit-trail events in increasing id order (see [`EventQuery`]).
    async fn list_events(&self, query: EventQuery) -> Result<Vec<Event>>;
}
