//! Writes node ACKs and heartbeats to the store from one task.
//!
//! Every config change makes every affected node ACK at once; writing those from each stream
//! would queue hundreds of writers on the database (SQLite has one write lock), and the next
//! config change committed through the REST API would wait behind all of them. Streams instead
//! hand their reports to this task, which merges what piled up (the latest ACK and heartbeat per
//! node) and writes them one at a time, so a config change waits for at most one telemetry
//! write. The in-memory [`super::NodeRegistry`] is updated by the streams directly, so the live
//! status view never lags; the store's copy trails by the queue's length.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::store::{NodeId, Store};

/// One report from a stream.
#[derive(Debug)]
pub(crate) enum Report {
    /// The node applied this version.
    Ack(u64),
    /// The node's latest heartbeat, as stored.
    Heartbeat(serde_json::Value),
}

#[derive(Default)]
struct Pending {
    ack: Option<u64>,
    heartbeat: Option<serde_json::Value>,
}

fn merge(pending: &mut HashMap<NodeId, Pending>, (node, report): (NodeId, Report)) {
    let entry = pending.entry(node).or_default();
    match report {
        Report::Ack(version) => entry.ack = Some(version),
        Report::Heartbeat(detail) => entry.heartbeat = Some(detail),
    }
}

/// Runs until `shutdown` becomes true (then writes what is queued and returns) or every sender
/// is gone.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<(NodeId, Report)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut pending: HashMap<NodeId, Pending> = HashMap::new();
    loop {
        let stopping = tokio::select! {
            report = rx.recv() => match report {
                Some(report) => {
                    merge(&mut pending, report);
                    false
                }
                None => true,
            },
            _ = shutdown.wait_for(|stop| *stop) => true,
        };
        while let Ok(report) = rx.try_recv() {
            merge(&mut pending, report);
        }
        for (node, report) in pending.drain() {
            if let Some(version) = report.ack {
                if let Err(e) = store.record_config_ack(node, version).await {
                    tracing::warn!(?node, version, error = %e, "cannot record an ACK");
                }
            }
            if let Some(detail) = report.heartbeat {
                if let Err(e) = store.record_heartbeat(node, detail).await {
                    tracing::warn!(?node, error = %e, "cannot record a heartbeat");
                }
            }
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_of_each_per_node() {
        let a = NodeId::Edge(uuid::Uuid::new_v4());
        let b = NodeId::Origin(uuid::Uuid::new_v4());
        let mut pending = HashMap::new();
        merge(&mut pending, (a, Report::Ack(3)));
        merge(
            &mut pending,
            (a, Report::Heartbeat(serde_json::json!({"n": 1}))),
        );
        merge(&mut pending, (a, Report::Ack(4)));
        merge(
            &mut pending,
            (b, Report::Heartbeat(serde_json::json!({"n": 2}))),
        );
        merge(
            &mut pending,
            (a, Report::Heartbeat(serde_json::json!({"n": 3}))),
        );
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[&a].ack, Some(4));
        assert_eq!(pending[&a].heartbeat, Some(serde_json::json!({"n": 3})));
        assert_eq!(pending[&b].ack, None);
    }
}
