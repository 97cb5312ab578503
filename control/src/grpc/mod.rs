//! Control's gRPC side: how edges and origins enroll and receive their configuration.
//!
//! Never on the request path: nodes keep serving their last applied snapshot while control is
//! away. [`GrpcServer::serve`] runs two services over TLS (control's own CA, [`crate::pki`]):
//! - `Enrollment.Enroll` exchanges a one-time token for a node credential
//!   ([`enroll`](crate::store::NodeTokenStore::enroll));
//! - `Config.Watch` authenticates the node's bearer credential, then streams its snapshot
//!   whenever its config changes and records the ACKs, NACKs and heartbeats it sends back.
//!
//! One task ([`hub`]) reads the store per config version and shares the result; each stream only
//! filters it ([`snapshot`]) and talks to its node ([`session`]). [`NodeRegistry`] is the live
//! view of connected nodes for the REST API's status.

pub mod hub;
pub mod registry;
mod session;
pub mod snapshot;
mod telemetry;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kokoa_proto::v1 as pb;
use kokoa_proto::v1::config_server::{Config, ConfigServer};
use kokoa_proto::v1::enrollment_server::{Enrollment, EnrollmentServer};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use zeroize::Zeroizing;

use crate::pki::ServerTls;
use crate::store::{Id, NodeId, NodeTokenKind, Store, StoreError};

pub use registry::{NodeInfo, NodeRegistry};

/// Default heartbeat interval sent to nodes.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// Default interval at which control re-reads the config version (for changes made by another
/// replica on a shared PostgreSQL database) and the set of valid node credentials.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(3);
/// Default time a node has to send its Hello after opening a Watch stream.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// Tunables of the gRPC server.
#[derive(Clone, Debug)]
pub struct GrpcOptions {
    /// How often nodes send a heartbeat (sent to them in every snapshot; whole seconds, at
    /// least one).
    pub heartbeat_interval: Duration,
    /// How often the config version and the valid credentials are re-read from the store. A
    /// revoked credential's stream is closed within this time.
    pub poll_interval: Duration,
    /// A Watch stream without a Hello within this time is closed.
    pub hello_timeout: Duration,
    /// HTTP/2 keepalive pings: a node that vanished without closing its connection is noticed
    /// within about twice this time.
    pub keepalive_interval: Duration,
    /// A node that does not take a snapshot within this time (its connection is alive but it
    /// stopped reading) has its stream closed; it reconnects and gets the current version.
    pub send_timeout: Duration,
    /// After the shutdown signal, how long [`GrpcServer::serve`] waits for connections to close
    /// before it returns anyway (a node that stopped reading would otherwise hold it forever).
    pub shutdown_grace: Duration,
}

impl Default for GrpcOptions {
    fn default() -> Self {
        GrpcOptions {
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            poll_interval: DEFAULT_POLL_INTERVAL,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
            keepalive_interval: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl GrpcOptions {
    fn heartbeat_interval_seconds(&self) -> u32 {
        u32::try_from(self.heartbeat_interval.as_secs())
            .unwrap_or(u32::MAX)
            .max(1)
    }
}

/// Why [`GrpcServer::serve`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The TLS configuration was refused.
    #[error("gRPC TLS setup failed: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// The server failed while running.
    #[error("gRPC server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
}

/// State shared by the services, the hub and every stream.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) options: GrpcOptions,
    pub(crate) registry: NodeRegistry,
    pub(crate) hub: hub::Channels,
    /// Becomes true when the server shuts down: streams end so the graceful shutdown does not
    /// wait for them forever.
    pub(crate) shutdown: watch::Sender<bool>,
    /// ACKs and heartbeats on their way to the store ([`telemetry`]).
    pub(crate) telemetry: mpsc::UnboundedSender<(NodeId, telemetry::Report)>,
    /// The writer's end, taken by [`GrpcServer::serve`].
    telemetry_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<(NodeId, telemetry::Report)>>>,
}

/// The gRPC server: enrollment and config streaming. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GrpcServer {
    inner: Arc<Inner>,
}

impl GrpcServer {
    /// A server over `store`. Nothing runs until [`GrpcServer::serve`].
    pub fn new(store: Arc<dyn Store>, options: GrpcOptions) -> Self {
        let (telemetry, telemetry_rx) = mpsc::unbounded_channel();
        GrpcServer {
            inner: Arc::new(Inner {
                store,
                options,
                registry: NodeRegistry::default(),
                hub: hub::Channels::default(),
                shutdown: watch::channel(false).0,
                telemetry,
                telemetry_rx: std::sync::Mutex::new(Some(telemetry_rx)),
            }),
        }
    }

    /// The live view of nodes watching this server.
    pub fn nodes(&self) -> NodeRegistry {
        self.inner.registry.clone()
    }

    /// Serves Enrollment and Config over TLS on `listener` until `shutdown` completes, then
    /// closes every Watch stream (nodes see UNAVAILABLE and reconnect with backoff, to this or
    /// another replica) and returns once the connections are closed.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        tls: ServerTls,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let inner = self.inner;
        let hub = tokio::spawn(hub::run(inner.clone(), inner.shutdown.subscribe()));
        let writer = inner
            .telemetry_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(|rx| {
                tokio::spawn(telemetry::run(
                    inner.store.clone(),
                    rx,
                    inner.shutdown.subscribe(),
                ))
            });
        let local = listener.local_addr().ok();
        let stop = inner.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("gRPC server shutting down");
            stop.shutdown.send_replace(true);
        };
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tracing::info!(addr = ?local, "gRPC server listening");
        let server = tonic::transport::Server::builder()
            .tls_config(tls.tonic_config())
            .map_err(GrpcError::Tls)?
            .http2_keepalive_interval(Some(inner.options.keepalive_interval))
            .http2_keepalive_timeout(Some(inner.options.keepalive_interval))
            .add_service(EnrollmentServer::new(EnrollmentService {
                inner: inner.clone(),
            }))
            .add_service(ConfigServer::new(ConfigService {
                inner: inner.clone(),
            }))
            .serve_with_incoming_shutdown(incoming, signal);
        let mut stopping = inner.shutdown.subscribe();
        let grace = inner.options.shutdown_grace;
        let result = tokio::select! {
            result = server => result.map_err(GrpcError::Serve),
            _ = async {
                let _ = stopping.wait_for(|stop| *stop).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(?grace, "gRPC connections still open after the shutdown grace period; leaving them");
                Ok(())
            }
        };
        inner.shutdown.send_replace(true);
        let _ = hub.await;
        if let Some(writer) = writer {
            let _ = writer.await;
        }
        Ok(result?)
    }
}

/// `kokoa.v1.Enrollment`.
struct EnrollmentService {
    inner: Arc<Inner>,
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let remote = request.remote_addr();
        let request = request.into_inner();
        let span = tracing::info_span!("enroll", remote = ?remote, hostname = %request.hostname);
        let store = &self.inner.store;
        let enrollment = match store.enroll(&request.token).await {
            Ok(e) => e,
            Err(StoreError::Unauthenticated { reason }) => {
                tracing::warn!(parent: &span, reason, "enrollment refused");
                return Err(Status::unauthenticated("enrollment token refused"));
            }
            Err(e) => return Err(internal(&span, "enroll", e)),
        };
        let node = enrollment.node;
        let name = node_name(store.as_ref(), node)
            .await
            .map_err(|e| internal(&span, "read the enrolled node", e))?;
        tracing::info!(parent: &span, node = %name, ?node, version = %request.software_version, "node enrolled");
        Ok(Response::new(pb::EnrollResponse {
            kind: node_kind(node) as i32,
            // Node ids are UUIDs; see node_uuid.
            node_id: 0,
            node_name: name,
            credential: enrollment.credential.secret.expose().to_owned(),
            node_uuid: node.id().to_string(),
        }))
    }
}

/// `kokoa.v1.Config`.
struct ConfigService {
    inner: Arc<Inner>,
}

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Config for ConfigService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let remote = request.remote_addr();
        let span = tracing::info_span!("watch", remote = ?remote, node = tracing::field::Empty);
        let secret = bearer(request.metadata()).inspect_err(|_| {
            tracing::warn!(parent: &span, "watch without a bearer credential refused");
        })?;
        let store = &self.inner.store;
        let node = match store.authenticate_node(&secret).await {
            Ok(node) => node,
            Err(StoreError::Unauthenticated { reason }) => {
                tracing::warn!(parent: &span, reason, "watch refused");
                return Err(Status::unauthenticated("credential refused"));
            }
            Err(e) => return Err(unavailable(&span, "authenticate", e)),
        };
        let auth_at = Instant::now();
        let token = credential_token(store.as_ref(), node)
            .await
            .map_err(|e| unavailable(&span, "read the node's credential", e))?
            // Revoked between the two reads.
            .ok_or_else(|| Status::unauthenticated("credential refused"))?;
        let name = match node_name(store.as_ref(), node).await {
            Ok(name) => name,
            Err(StoreError::NotFound { .. }) => {
                return Err(Status::unauthenticated("credential refused"))
            }
            Err(e) => return Err(unavailable(&span, "read the node", e)),
        };
        span.record("node", name.as_str());
        let (tx, rx) = mpsc::channel(2);
        let session = session::Session {
            inner: self.inner.clone(),
            node,
            name,
            token,
            secret,
            auth_at,
            remote,
            tx,
        };
        tokio::spawn(tracing::Instrument::instrument(
            session.run(request.into_inner()),
            span,
        ));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The credential from `authorization: Bearer <credential>`.
fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<Zeroizing<String>, Status> {
    let refused =
        || Status::unauthenticated("missing or malformed authorization: Bearer <credential>");
    let value = metadata
        .get("authorization")
        .ok_or_else(refused)?
        .to_str()
        .map_err(|_| refused())?;
    let (scheme, credential) = value.trim().split_once(' ').ok_or_else(refused)?;
    if !scheme.eq_ignore_ascii_case("bearer") || credential.trim().is_empty() {
        return Err(refused());
    }
    Ok(Zeroizing::new(credential.trim().to_owned()))
}

/// The id of the node's valid credential token (enrolling revokes the earlier ones, so there
/// is at most one).
async fn credential_token(store: &dyn Store, node: NodeId) -> Result<Option<Id>, StoreError> {
    let now = time::OffsetDateTime::now_utc();
    Ok(store
        .list_node_tokens(Some(node))
        .await?
        .into_iter()
        .find(|t| {
            t.kind == NodeTokenKind::Credential
                && t.revoked_at.is_none()
                && t.expires_at.is_none_or(|e| e > now)
        })
        .map(|t| t.id))
}

async fn node_name(store: &dyn Store, node: NodeId) -> Result<String, StoreError> {
    Ok(match node {
        NodeId::Edge(id) => store.get_edge(id).await?.name,
        NodeId::Origin(id) => store.get_origin(id).await?.name,
    })
}

fn node_kind(node: NodeId) -> pb::NodeKind {
    match node {
        NodeId::Edge(_) => pb::NodeKind::Edge,
        NodeId::Origin(_) => pb::NodeKind::Origin,
    }
}

fn internal(span: &tracing::Span, what: &str, error: StoreError) -> Status {
    tracing::error!(parent: span, error = %error, "cannot {what}");
    Status::internal(format!("control cannot {what}; see control's log"))
}

fn unavailable(span: &tracing::Span, what: &str, error: StoreError) -> Status {
    tracing::error!(parent: span, error = %error, "cannot {what}");
    Status::unavailable(format!("control cannot {what} now; retry later"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        assert!(bearer(&metadata).is_err());
        metadata.insert("authorization", "Basic abc".parse().expect("ascii"));
        assert!(bearer(&metadata).is_err());
        metadata.insert("authorization", "Bearer ".parse().expect("ascii"));
        assert!(bearer(&metadata).is_err());
        metadata.insert(
            "authorization",
            "bearer kokoa_node_x".parse().expect("ascii"),
        );
        assert_eq!(bearer(&metadata).expect("ok").as_str(), "kokoa_node_x");
    }

    #[test]
    fn heartbeat_interval_is_whole_seconds() {
        let options = GrpcOptions {
            heartbeat_interval: Duration::from_millis(200),
            ..GrpcOptions::default()
        };
        assert_eq!(options.heartbeat_interval_seconds(), 1);
        assert_eq!(GrpcOptions::default().heartbeat_interval_seconds(), 10);
    }
}
