//! [`NodeStateStore`]: what nodes report (heartbeats, config ACKs and NACKs) and their health
//! status. Telemetry writes no event, except NACKs and status changes.

use async_trait::async_trait;

use super::error::Result;
use super::model::{Actor, Id, Listener, Nack, NodeId, NodeStatus};

/// The node state part of [`Store`](super::Store).
///
/// Mutating methods take the [`Actor`] recorded in the change's event.
#[async_trait]
pub trait NodeStateStore: Send + Sync {
    /// Records a heartbeat from a node (its content is kept as the latest).
    async fn record_heartbeat(&self, node: NodeId, detail: serde_json::Value) -> Result<()>;

    /// Records that a node applied config `version`; clears an older NACK.
    async fn record_config_ack(&self, node: NodeId, version: u64) -> Result<()>;

    /// Records that a node rejected a config version, with the object its NACK names (writes a
    /// `config_rejected` event, actor the node). The next ACK of that version or a newer one clears
    /// it.
    async fn record_config_nack(&self, node: NodeId, nack: &Nack) -> Result<()>;

    /// Records the TCP listeners an edge reported when it connected (no event: observation).
    async fn record_edge_listeners(&self, edge_id: Id, listeners: &[Listener]) -> Result<()>;

    /// Sets a node's health status; writes an event when it changes. Returns whether it did.
    async fn set_node_status(
        &self,
        actor: &Actor,
        node: NodeId,
        status: NodeStatus,
    ) -> Result<bool>;
}
