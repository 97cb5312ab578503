//! The live view of nodes watching this control process: who is connected, which config
//! version each one runs, its last heartbeat and its last NACK. The REST API's status endpoints
//! read it; it is in memory only (the store keeps the durable record).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::api::{LiveNode, LiveNodes};
use crate::store::{Nack, NodeId};

/// One node as seen by its Watch stream (the latest one when it reconnected).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeInfo {
    /// Which node.
    pub node: NodeId,
    /// Its name.
    pub name: String,
    /// True while its Watch stream is open.
    pub connected: bool,
    /// Its address as seen by control.
    pub remote_addr: Option<SocketAddr>,
    /// Host name from its Hello.
    pub hostname: String,
    /// Software version from its Hello.
    pub software_version: String,
    /// When the current (or last) stream opened.
    #[serde(with = "time::serde::rfc3339")]
    pub connected_at: OffsetDateTime,
    /// When the last stream closed (`None` while connected).
    #[serde(with = "time::serde::rfc3339::option")]
    pub disconnected_at: Option<OffsetDateTime>,
    /// The newest control config version evaluated for this node.
    pub config_version: Option<u64>,
    /// The version of the config the node should run: the last snapshot sent to it, or the
    /// version it said it runs when nothing needed sending. Changes that do not affect a node
    /// are not sent to it, so this can be older than `config_version`.
    pub target_version: Option<u64>,
    /// The version the node last reported (Hello, ACK or heartbeat).
    pub applied_version: Option<u64>,
    /// The newest config version equivalent to what the node runs: `config_version` when the
    /// node is in sync, else `applied_version`. Use this to compare with the store's version.
    pub running_version: Option<u64>,
    /// The node runs the config control wants it to run (`applied_version == target_version`).
    pub in_sync: bool,
    /// When it last sent a heartbeat on this stream.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_heartbeat: Option<OffsetDateTime>,
    /// Its last heartbeat (tunnel state per peer, connections, rates, CPU, memory) as JSON.
    pub heartbeat: Option<serde_json::Value>,
    /// The last snapshot it rejected, cleared when it acknowledges a newer one.
    pub last_nack: Option<Nack>,
    /// Identifies the stream; a reconnect gets a new one.
    #[serde(skip)]
    pub(crate) session: u64,
}

impl NodeInfo {
    fn refresh(&mut self) {
        self.in_sync = self.target_version.is_some() && self.applied_version == self.target_version;
        self.running_version = if self.in_sync {
            self.config_version
        } else {
            self.applied_version
        };
    }
}

#[derive(Debug, Default)]
struct State {
    nodes: HashMap<NodeId, NodeInfo>,
    next_session: u64,
}

/// Shared handle to the registry (cheap to clone). Every change bumps a counter that
/// [`NodeRegistry::subscribe`] receivers see, so a caller can wait for a condition without
/// polling.
#[derive(Clone, Debug)]
pub struct NodeRegistry {
    state: Arc<Mutex<State>>,
    changes: Arc<watch::Sender<u64>>,
}

impl Default for NodeRegistry {
    fn default() -> Self {
        NodeRegistry {
            state: Arc::default(),
            changes: Arc::new(watch::channel(0).0),
        }
    }
}

impl NodeRegistry {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a NodeInfo half-written in a way that
        // matters for a status view; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Every node seen since this control process started, connected ones and the last state
    /// of disconnected ones, by name.
    pub fn list(&self) -> Vec<NodeInfo> {
        let mut nodes: Vec<NodeInfo> = self.lock().nodes.values().cloned().collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.connected.cmp(&b.connected)));
        nodes
    }

    /// The nodes whose Watch stream is open now.
    pub fn connected(&self) -> Vec<NodeInfo> {
        let mut nodes = self.list();
        nodes.retain(|n| n.connected);
        nodes
    }

    /// How many nodes are connected now.
    pub fn connected_count(&self) -> usize {
        self.lock().nodes.values().filter(|n| n.connected).count()
    }

    /// One node.
    pub fn get(&self, node: NodeId) -> Option<NodeInfo> {
        self.lock().nodes.get(&node).cloned()
    }

    /// A receiver that changes on every registry update.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Registers a new stream for `node` (replacing an older stream's entry) and returns its
    /// session number.
    pub(crate) fn connect(
        &self,
        node: NodeId,
        name: &str,
        remote_addr: Option<SocketAddr>,
        hello: &kokoa_proto::v1::Hello,
    ) -> u64 {
        let mut state = self.lock();
        state.next_session += 1;
        let session = state.next_session;
        let last_nack = state.nodes.get(&node).and_then(|n| n.last_nack.clone());
        let mut info = NodeInfo {
            node,
            name: name.to_owned(),
            connected: true,
            remote_addr,
            hostname: hello.hostname.clone(),
            software_version: hello.software_version.clone(),
            connected_at: OffsetDateTime::now_utc(),
            disconnected_at: None,
            config_version: None,
            target_version: None,
            applied_version: (hello.applied_version != 0).then_some(hello.applied_version),
            running_version: None,
            in_sync: false,
            last_heartbeat: None,
            heartbeat: None,
            last_nack,
            session,
        };
        info.refresh();
        state.nodes.insert(node, info);
        drop(state);
        self.changed();
        session
    }

    /// Applies `f` to the node's entry if `session` is still its current stream.
    pub(crate) fn update(&self, node: NodeId, session: u64, f: impl FnOnce(&mut NodeInfo)) {
        let mut state = self.lock();
        let Some(info) = state.nodes.get_mut(&node) else {
            return;
        };
        if info.session != session {
            return;
        }
        f(info);
        info.refresh();
        drop(state);
        self.changed();
    }

    /// Records the config evaluated for the node: `target` is what it should run.
    pub(crate) fn evaluated(&self, node: NodeId, session: u64, config_version: u64, target: u64) {
        self.update(node, session, |info| {
            info.config_version = Some(config_version);
            info.target_version = Some(target);
        });
    }

    /// Records an ACK.
    pub(crate) fn acked(&self, node: NodeId, session: u64, version: u64) {
        self.update(node, session, |info| {
            info.applied_version = Some(version);
            if info
                .last_nack
                .as_ref()
                .is_some_and(|n| n.version <= version)
            {
                info.last_nack = None;
            }
        });
    }

    /// Records a NACK.
    pub(crate) fn nacked(&self, node: NodeId, session: u64, nack: Nack) {
        self.update(node, session, |info| info.last_nack = Some(nack));
    }

    /// Records a heartbeat.
    pub(crate) fn heartbeat(
        &self,
        node: NodeId,
        session: u64,
        applied_version: u64,
        detail: serde_json::Value,
    ) {
        self.update(node, session, |info| {
            info.last_heartbeat = Some(OffsetDateTime::now_utc());
            info.heartbeat = Some(detail);
            if applied_version != 0 {
                info.applied_version = Some(applied_version);
            }
        });
    }

    /// Marks the stream closed (unless a newer stream of the same node replaced it).
    pub(crate) fn disconnect(&self, node: NodeId, session: u64) {
        self.update(node, session, |info| {
            info.connected = false;
            info.disconnected_at = Some(OffsetDateTime::now_utc());
        });
    }
}

/// The REST API's and the certificate manager's view of the connected nodes.
impl LiveNodes for NodeRegistry {
    fn connected(&self) -> Vec<LiveNode> {
        NodeRegistry::connected(self)
            .into_iter()
            .map(|info| LiveNode {
                node: info.node,
                applied_version: info.running_version.or(info.applied_version),
                last_heartbeat: info.last_heartbeat,
                nack: info.last_nack,
                in_sync: info.in_sync,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(version: u64) -> kokoa_proto::v1::Hello {
        kokoa_proto::v1::Hello {
            applied_version: version,
            software_version: "test".into(),
            hostname: "h".into(),
            listeners: Vec::new(),
        }
    }

    #[test]
    fn tracks_sync_and_ignores_replaced_sessions() {
        let registry = NodeRegistry::default();
        let node = NodeId::Edge(uuid::Uuid::new_v4());
        let old = registry.connect(node, "e1", None, &hello(3));
        let new = registry.connect(node, "e1", None, &hello(3));
        registry.disconnect(node, old);
        let info = registry.get(node).expect("registered");
        assert!(
            info.connected,
            "an old stream closing must not hide the new one"
        );
        assert_eq!(info.applied_version, Some(3));

        registry.evaluated(node, new, 5, 5);
        assert!(!registry.get(node).expect("node").in_sync);
        registry.nacked(
            node,
            new,
            Nack {
                version: 5,
                error: "bad".into(),
                object: None,
            },
        );
        registry.acked(node, new, 5);
        let info = registry.get(node).expect("node");
        assert!(info.in_sync);
        assert_eq!(info.last_nack, None);
        // A change that does not affect the node: same target, newer config version.
        registry.evaluated(node, new, 6, 5);
        let info = registry.get(node).expect("node");
        assert_eq!(info.running_version, Some(6));
        assert_eq!(registry.connected_count(), 1);
        registry.disconnect(node, new);
        assert_eq!(registry.connected_count(), 0);
        assert_eq!(registry.list().len(), 1);
    }
}
