//! One node's Watch stream: Hello, then snapshots out and ACK / NACK / heartbeats in, until the
//! node leaves, its credential is revoked or control shuts down.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kokoa_proto::v1 as pb;
use kokoa_proto::v1::node_message::Message as NodeMsg;
use serde_json::json;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use zeroize::Zeroizing;

use super::hub::Credentials;
use super::snapshot::{self, SharedSnapshot};
use super::telemetry::Report;
use super::Inner;
use crate::store::{Id, Listener, Nack, NackObject, NodeId, StoreError};

/// How long a closing status may wait for room in a slow node's stream.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) struct Session {
    pub(crate) inner: Arc<Inner>,
    pub(crate) node: NodeId,
    pub(crate) name: String,
    /// The credential token's id, checked against the hub's set of valid credentials.
    pub(crate) token: Id,
    /// The credential itself, re-checked on every heartbeat.
    pub(crate) secret: Zeroizing<String>,
    pub(crate) auth_at: Instant,
    pub(crate) remote: Option<SocketAddr>,
    pub(crate) tx: mpsc::Sender<Result<pb::ControlMessage, Status>>,
}

/// Why a stream ended.
enum End {
    /// The node closed its side or the connection broke.
    NodeLeft(Option<Status>),
    /// The credential was revoked (or the node deleted).
    Revoked,
    /// Control is shutting down.
    Shutdown,
    /// The node stopped reading its stream.
    Stuck,
}

/// What this stream last sent, to skip versions that do not change the node's config.
struct Sent {
    /// The node's snapshot content (version zeroed) as last sent or, before any send, as the
    /// node said it runs (`None`: unknown).
    content: Option<pb::Snapshot>,
    /// The version the node should run.
    target: u64,
}

impl Session {
    pub(crate) async fn run(self, mut inbound: Streaming<pb::NodeMessage>) {
        let hello =
            match tokio::time::timeout(self.inner.options.hello_timeout, inbound.message()).await {
                Ok(Ok(Some(pb::NodeMessage {
                    message: Some(NodeMsg::Hello(hello)),
                }))) => hello,
                Ok(Ok(Some(_))) => {
                    self.farewell(Status::invalid_argument("the first message must be Hello"))
                        .await;
                    return;
                }
                Ok(Ok(None)) | Ok(Err(_)) => return,
                Err(_) => {
                    tracing::info!("no Hello in time; closing the stream");
                    self.farewell(Status::deadline_exceeded("no Hello received in time"))
                        .await;
                    return;
                }
            };
        let registry = &self.inner.registry;
        let session = registry.connect(self.node, &self.name, self.remote, &hello);
        tracing::info!(
            applied_version = hello.applied_version,
            hostname = %hello.hostname,
            software_version = %hello.software_version,
            "node connected"
        );
        if let NodeId::Edge(edge) = self.node {
            self.record_listeners(edge, &hello.listeners).await;
        }
        let end = self.serve(&mut inbound, &hello, session).await;
        registry.disconnect(self.node, session);
        match end {
            End::NodeLeft(None) => tracing::info!("node disconnected"),
            End::NodeLeft(Some(status)) => {
                tracing::info!(error = %status.message(), "node connection lost")
            }
            End::Revoked => {
                tracing::warn!("credential revoked; closing the node's stream");
                self.farewell(Status::unauthenticated("credential revoked"))
                    .await;
            }
            End::Shutdown => {
                self.farewell(Status::unavailable("control is shutting down; reconnect"))
                    .await;
            }
            // Its stream is full: no status can be queued, dropping the sender ends it.
            End::Stuck => tracing::warn!(
                timeout = ?self.inner.options.send_timeout,
                "node did not take its snapshot in time; closing its stream"
            ),
        }
    }

    /// Ends the response stream with `status` (best effort: a node that stopped reading gets
    /// its connection closed instead).
    async fn farewell(&self, status: Status) {
        let _ = tokio::time::timeout(FAREWELL_TIMEOUT, self.tx.send(Err(status))).await;
    }

    async fn serve(
        &self,
        inbound: &mut Streaming<pb::NodeMessage>,
        hello: &pb::Hello,
        session: u64,
    ) -> End {
        let mut snapshots = self.inner.hub.snapshots.subscribe();
        let mut credentials = self.inner.hub.credentials.subscribe();
        let mut shutdown = self.inner.shutdown.subscribe();
        // Look at what is published already before waiting for changes.
        snapshots.mark_changed();
        credentials.mark_changed();
        let mut sent = Sent {
            content: None,
            target: hello.applied_version,
        };
        loop {
            if *shutdown.borrow_and_update() {
                return End::Shutdown;
            }
            tokio::select! {
                biased;
                // The senders live in `Inner`, which this session holds, so these channels
                // only close if that invariant breaks; end rather than spin on a closed one.
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        return End::Shutdown;
                    }
                }
                changed = credentials.changed() => {
                    if changed.is_err() {
                        return End::Shutdown;
                    }
                    if self.revoked(&credentials.borrow_and_update()) {
                        return End::Revoked;
                    }
                }
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return End::Shutdown;
                    }
                    let shared = snapshots.borrow_and_update().clone();
                    if let Some(shared) = shared {
                        if self.revoked(&credentials.borrow()) {
                            return End::Revoked;
                        }
                        if let Err(end) = self.offer(&shared, &mut sent, session).await {
                            return end;
                        }
                    }
                }
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        if let Err(end) = self.handle(message, session).await {
                            return end;
                        }
                    }
                    Ok(None) => return End::NodeLeft(None),
                    Err(status) => return End::NodeLeft(Some(status)),
                },
                _ = self.tx.closed() => return End::NodeLeft(None),
            }
        }
    }

    fn revoked(&self, credentials: &Option<Arc<Credentials>>) -> bool {
        credentials
            .as_ref()
            .is_some_and(|c| c.revokes(self.token, self.auth_at))
    }

    /// Sends the node its snapshot of `shared` if it differs from what the node runs.
    async fn offer(
        &self,
        shared: &SharedSnapshot,
        sent: &mut Sent,
        session: u64,
    ) -> Result<(), End> {
        // Not in this version: created after it (a newer one follows) or deleted (its
        // credentials are gone too, and the credential check closes the stream).
        let Some(mut content) = snapshot::for_node(shared, self.node) else {
            return Ok(());
        };
        let version = content.version;
        content.version = 0;
        let unchanged = match &sent.content {
            Some(last) => *last == content,
            None if version == sent.target => true,
            None if version < sent.target => {
                // The node runs a newer version than this hub has: another replica made it
                // and this one has not polled yet. Sending would roll the node back unless the
                // database itself went back (restored from a backup).
                match self.inner.store.config_version().await {
                    Ok(current) if current >= sent.target => {
                        tracing::debug!(
                            version,
                            node_version = sent.target,
                            "waiting for this replica to catch up"
                        );
                        return Ok(());
                    }
                    _ => false,
                }
            }
            None => false,
        };
        if !unchanged {
            let mut message = content.clone();
            message.version = version;
            let message = pb::ControlMessage {
                message: Some(pb::control_message::Message::Snapshot(message)),
            };
            // Never wait on one node forever: shutdown and a stuck node end the wait.
            let mut shutdown = self.inner.shutdown.subscribe();
            tokio::select! {
                sent = self.tx.send(Ok(message)) => {
                    if sent.is_err() {
                        return Err(End::NodeLeft(None));
                    }
                }
                _ = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                    return Err(End::Shutdown);
                }
                _ = tokio::time::sleep(self.inner.options.send_timeout) => return Err(End::Stuck),
            }
            tracing::debug!(version, "sent snapshot");
            sent.target = version;
        }
        sent.content = Some(content);
        self.inner
            .registry
            .evaluated(self.node, session, version, sent.target);
        Ok(())
    }

    /// Stores the listeners an edge reported (before any snapshot, so a TCP route made right
    /// after the edge connected is checked against them). One that does not parse is logged
    /// and left out: it is the edge's own business, not a reason to drop its stream.
    async fn record_listeners(&self, edge: Id, reported: &[pb::Listener]) {
        let mut listeners = Vec::with_capacity(reported.len());
        for listener in reported {
            match listener.address.parse() {
                Ok(address) => listeners.push(Listener {
                    name: listener.name.chars().take(64).collect(),
                    address,
                }),
                Err(_) => tracing::warn!(
                    name = %listener.name,
                    address = %listener.address,
                    "the edge reported a listener that is not ip:port; ignored"
                ),
            }
        }
        if let Err(e) = self
            .inner
            .store
            .record_edge_listeners(edge, &listeners)
            .await
        {
            tracing::warn!(error = %e, "cannot record the edge's listeners");
        }
    }

    /// Queues an ACK or heartbeat for the store (see [`super::telemetry`]).
    fn report(&self, report: Report) {
        // Fails only once the server has stopped; the registry already has it.
        let _ = self.inner.telemetry.send((self.node, report));
    }

    async fn handle(&self, message: pb::NodeMessage, session: u64) -> Result<(), End> {
        let store = &self.inner.store;
        let registry = &self.inner.registry;
        match message.message {
            Some(NodeMsg::Ack(ack)) => {
                tracing::debug!(version = ack.version, "ACK");
                registry.acked(self.node, session, ack.version);
                self.report(Report::Ack(ack.version));
            }
            Some(NodeMsg::Nack(nack)) => {
                let object = nack.object.as_ref().map(|object| NackObject {
                    kind: kokoa_model::ObjectKind::from_proto(object.kind)
                        .map(|kind| kind.as_str().to_owned())
                        .unwrap_or_default(),
                    key: object.key.clone(),
                    field: object.field.clone(),
                });
                tracing::warn!(
                    version = nack.version,
                    reason = %nack.reason,
                    object = %object.as_ref().map(ToString::to_string).unwrap_or_default(),
                    "node rejected its config"
                );
                let nack = Nack {
                    version: nack.version,
                    error: nack.reason,
                    object,
                };
                registry.nacked(self.node, session, nack.clone());
                if let Err(e) = store.record_config_nack(self.node, &nack).await {
                    tracing::warn!(error = %e, version = nack.version, "cannot record a NACK");
                }
            }
            Some(NodeMsg::Heartbeat(heartbeat)) => {
                match store.authenticate_node(&self.secret).await {
                    Ok(node) if node == self.node => {}
                    Ok(_) | Err(StoreError::Unauthenticated { .. }) => return Err(End::Revoked),
                    Err(e) => tracing::warn!(error = %e, "cannot re-check the credential"),
                }
                let detail = heartbeat_json(&heartbeat);
                registry.heartbeat(
                    self.node,
                    session,
                    heartbeat.applied_version,
                    detail.clone(),
                );
                self.report(Report::Heartbeat(detail));
            }
            Some(NodeMsg::Hello(hello)) => {
                tracing::debug!(
                    applied_version = hello.applied_version,
                    "repeated Hello ignored"
                );
            }
            // A message kind newer than this control: ignore it, the node may be newer.
            None => tracing::debug!("unknown NodeMessage ignored"),
        }
        Ok(())
    }
}

/// A heartbeat as stored and shown by the API.
fn heartbeat_json(h: &pb::Heartbeat) -> serde_json::Value {
    let peers: Vec<serde_json::Value> = h
        .peers
        .iter()
        .map(|p| {
            json!({
                "public_key": p.public_key,
                "endpoint": (!p.endpoint.is_empty()).then_some(&p.endpoint),
                "up": p.up,
                "last_handshake_age_ms": p.last_handshake_age_ms,
                "rx_bytes": p.rx_bytes,
                "tx_bytes": p.tx_bytes,
                "active_streams": p.active_streams,
            })
        })
        .collect();
    json!({
        "applied_version": h.applied_version,
        "peers": peers,
        "active_connections": h.active_connections,
        "requests_per_second": h.requests_per_second,
        "errors_per_second": h.errors_per_second,
        "cpu_cores": h.cpu_cores,
        "memory_bytes": h.memory_bytes,
        "uptime_seconds": h.uptime_seconds,
    })
}
