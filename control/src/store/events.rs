//! [`EventStore`]: the audit trail. Every change writes its event in the change's own
//! transaction; this trait reads them, and records what control observed outside any change
//! of the store (DNS steering's fail open, for one), so notifiers see it too.

use async_trait::async_trait;

use super::error::Entity;
use super::error::Result;
use super::model::{Actor, Event, EventQuery};

/// The audit trail part of [`Store`](super::Store).
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Audit-trail events in increasing id order (see [`EventQuery`]).
    async fn list_events(&self, query: EventQuery) -> Result<Vec<Event>>;

    /// Appends an observation to the audit trail: `entity.action` is the kind notification
    /// targets match (e.g. `dns.fail_open`). Returns the event as stored.
    async fn record_event(
        &self,
        actor: &Actor,
        entity: Entity,
        entity_id: &str,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<Event>;
}
