//! [`NodeStateStore`]: what nodes report (heartbeats, config ACKs and NACKs) and their state
//! (see `crate::health`). Telemetry writes no event, except NACKs and state changes.

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

    /// Sets a node's state and its reason. A change of state writes an event whose action is the
    /// new state (kinds `edge.offline`, `edge.online`, `origin.degraded`, ...: what notification
    /// targets match; detail `{"name", "from", "to", "reason"}`) and restarts `since`; a new reason for the same state is stored without an event. Returns whether the
    /// state changed.
    async fn set_node_state(
        &self,
        actor: &Actor,
        node: NodeId,
        status: NodeStatus,
        reason: &str,
    ) -> Result<bool>;
}
