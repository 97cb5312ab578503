//! `/api/v1/nodes` and `/api/v1/status`: which config version each node runs, when it was last
//! heard from, and what it last rejected.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{ApiError, ApiState, LiveNode};
use crate::store::{Id, Nack, NodeId, NodeState, NodeStatus};

/// One node's status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatusView {
    /// `edge` or `origin`.
    pub kind: String,
    /// Id.
    pub id: Id,
    /// Name.
    pub name: String,
    /// Health judged by control.
    pub status: NodeStatus,
    /// Connected to control now (`None` when this control process has no live view).
    pub connected: Option<bool>,
    /// The newest config version the node applied.
    pub applied_version: Option<u64>,
    /// It runs the config control wants it to run: judged by the live connection when there is
    /// one, else whether the store's applied version is the current config version.
    pub in_sync: bool,
    /// When the node last sent a heartbeat.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_heartbeat: Option<OffsetDateTime>,
    /// The last config the node rejected.
    pub nack: Option<Nack>,
}

/// `GET /status`: the config version and every node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusSummary {
    /// The current config version.
    pub config_version: u64,
    /// Every node, edges first, by name.
    pub nodes: Vec<NodeStatusView>,
}

fn view(
    node: NodeId,
    name: String,
    state: NodeState,
    live: Option<&[LiveNode]>,
    config_version: u64,
) -> NodeStatusView {
    let connected = live.map(|nodes| nodes.iter().find(|n| n.node == node));
    let mut applied_version = state.applied_version;
    let mut last_heartbeat = state.last_heartbeat;
    let mut nack = state.nack;
    let mut in_sync = applied_version == Some(config_version);
    if let Some(Some(now)) = connected {
        in_sync = now.in_sync;
        // The connection's own view is fresher than what was last written to the store.
        applied_version = now.applied_version.max(applied_version);
        last_heartbeat = now.last_heartbeat.max(last_heartbeat);
        if now.nack.is_some() {
            nack = now.nack.clone();
        }
    }
    NodeStatusView {
        kind: match node {
            NodeId::Edge(_) => "edge".into(),
            NodeId::Origin(_) => "origin".into(),
        },
        id: node.id(),
        name,
        status: state.status,
        connected: connected.map(|c| c.is_some()),
        in_sync,
        applied_version,
        last_heartbeat,
        nack,
    }
}

async fn collect(state: &ApiState) -> Result<StatusSummary, ApiError> {
    let config_version = state.store.config_version().await?;
    let live = state.live.as_ref().map(|l| l.connected());
    let live = live.as_deref();
    let mut nodes = Vec::new();
    for edge in state.store.list_edges().await? {
        nodes.push(view(
            NodeId::Edge(edge.id),
            edge.name,
            edge.state,
            live,
            config_version,
        ));
    }
    for origin in state.store.list_origins().await? {
        nodes.push(view(
            NodeId::Origin(origin.id),
            origin.name,
            origin.state,
            live,
            config_version,
        ));
    }
    Ok(StatusSummary {
        config_version,
        nodes,
    })
}

pub(super) async fn nodes(
    State(state): State<ApiState>,
) -> Result<Json<Vec<NodeStatusView>>, ApiError> {
    Ok(Json(collect(&state).await?.nodes))
}

pub(super) async fn summary(
    State(state): State<ApiState>,
) -> Result<Json<StatusSummary>, ApiError> {
    Ok(Json(collect(&state).await?))
}
