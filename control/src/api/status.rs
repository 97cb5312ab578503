//! `/api/v1/nodes` and `/api/v1/status`: each node's state and why, which config version it
//! runs, when it was last heard from, and what it last rejected.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{find_edge, find_origin, ApiError, ApiState, LiveNode};
use crate::health::heartbeat::{Heartbeat, PeerHeartbeat};
use crate::store::{HealthCheck, HealthQuery, Id, Nack, NodeId, NodeState, NodeStatus};

/// One node's status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatusView {
    /// `edge` or `origin`.
    pub kind: String,
    /// Id.
    pub id: Id,
    /// Name.
    pub name: String,
    /// The state control's health checker judged (`enrolling`, `online`, `degraded`,
    /// `offline`, `draining`).
    pub status: NodeStatus,
    /// Why, in words an operator can act on.
    pub reason: Option<String>,
    /// Since when.
    #[serde(with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
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
        reason: state.reason,
        since: state.since,
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

/// A WireGuard peer of a node, named.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    /// The peer's name in control (an edge's origin, an origin's edge), when control knows
    /// its key.
    pub name: Option<String>,
    /// The peer as the node reported it.
    #[serde(flatten)]
    pub peer: PeerHeartbeat,
}

/// `GET /edge-nodes/{edge}/status`, `GET /origins/{origin}/status`: one node's state and
/// everything behind it: its last heartbeat's figures, its tunnel peers by name, its services
/// (origins) and its latest check results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeDetail {
    /// State, versions, last NACK (as in `/status`).
    #[serde(flatten)]
    pub status: NodeStatusView,
    /// The current config version.
    pub config_version: u64,
    /// The edge's public address (edges).
    #[serde(default)]
    pub public_ip: Option<std::net::IpAddr>,
    /// Drained by an operator (edges).
    #[serde(default)]
    pub draining: bool,
    /// Its last heartbeat (figures: rates, CPU, memory, uptime; an origin's services).
    pub heartbeat: Option<Heartbeat>,
    /// Its tunnel peers, named.
    pub peers: Vec<PeerView>,
    /// Its latest health-check results (control's probes of an edge, an origin's service
    /// probes), newest first.
    pub checks: Vec<HealthCheck>,
}

/// Results shown by [`NodeDetail::checks`].
const DETAIL_CHECKS: u32 = 10;

async fn detail(
    state: &ApiState,
    node: NodeId,
    name: String,
    stored: NodeState,
    public_ip: Option<std::net::IpAddr>,
    draining: bool,
) -> Result<NodeDetail, ApiError> {
    let config_version = state.store.config_version().await?;
    let live_all = state.live.as_ref().map(|l| l.connected());
    let heartbeat = stored.heartbeat.as_ref().and_then(Heartbeat::from_value);
    let status = view(node, name, stored, live_all.as_deref(), config_version);
    let names: HashMap<String, String> = match node {
        NodeId::Edge(_) => state
            .store
            .list_origins()
            .await?
            .into_iter()
            .map(|o| (o.public_key.to_base64(), o.name))
            .collect(),
        NodeId::Origin(_) => state
            .store
            .list_edges()
            .await?
            .into_iter()
            .map(|e| (e.public_key.to_base64(), e.name))
            .collect(),
    };
    let peers = heartbeat
        .as_ref()
        .map(|h| {
            h.peers
                .iter()
                .map(|p| PeerView {
                    name: names.get(&p.public_key).cloned(),
                    peer: p.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    let query = match node {
        NodeId::Edge(id) => HealthQuery {
            edge_id: Some(id),
            limit: Some(DETAIL_CHECKS),
            ..HealthQuery::default()
        },
        NodeId::Origin(id) => HealthQuery {
            origin_id: Some(id),
            limit: Some(DETAIL_CHECKS),
            ..HealthQuery::default()
        },
    };
    let checks = state.store.health_checks(query).await?;
    Ok(NodeDetail {
        status,
        config_version,
        public_ip,
        draining,
        heartbeat,
        peers,
        checks,
    })
}

pub(super) async fn edge_detail(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<NodeDetail>, ApiError> {
    let edge = find_edge(&*state.store, &key).await?;
    Ok(Json(
        detail(
            &state,
            NodeId::Edge(edge.id),
            edge.name,
            edge.state,
            edge.public_ip,
            edge.draining,
        )
        .await?,
    ))
}

pub(super) async fn origin_detail(
    State(state): State<ApiState>,
    Path(key): Path<String>,
) -> Result<Json<NodeDetail>, ApiError> {
    let origin = find_origin(&*state.store, &key).await?;
    Ok(Json(
        detail(
            &state,
            NodeId::Origin(origin.id),
            origin.name,
            origin.state,
            None,
            false,
        )
        .await?,
    ))
}
