//! The control-plane client every node runs in control mode: it keeps the node's data plane in
//! step with `kokoa-control` without ever standing in its way.
//!
//! - **Enrollment**: when `state_dir/credential` is absent, the one-time token from
//!   `token_file` is exchanged for a long-lived credential (`Enrollment.Enroll`), which is stored
//!   with mode 0600. The SHA-256 of every token tried is remembered (`state_dir/token.used`), so
//!   a token is sent once; an operator re-enrolls a node by writing a fresh token there.
//! - **Watch**: `Config.Watch` with `authorization: Bearer <credential>`; the node says which
//!   version it runs (`Hello`), hands every [`Snapshot`] to the node's [`Applier`] (validate,
//!   then apply atomically), answers `Ack` or `Nack`, and persists each applied snapshot to
//!   `state_dir/snapshot.pb` ([`crate::persist`]). A NACK names the field and the object the
//!   model refused. A heartbeat goes out as soon as the stream is open (control waits for
//!   nodes that have sent one), then every `heartbeat_interval_seconds`, and at once (checked
//!   every [`CHANGE_CHECK`]) when a tunnel peer, a service or a TCP listener changes state, so
//!   control's health (and DNS) follows a tunnel coming up within a second, not an interval
//!   later; its counts are read from the metrics' atomics ([`NodeStatus`]) and the process
//!   meters ([`crate::meter`]).
//! - **Resilience**: on start the persisted snapshot is applied before control is contacted
//!   ([`ControlClient::restore`]), so traffic flows while control is down; a broken stream is
//!   retried with jittered exponential backoff (0.2 s doubling to 30 s, reset after a healthy
//!   stream); an `UNAUTHENTICATED` answer is logged as an error naming the cause and retried.
//!
//! TLS toward control trusts exactly one anchor: control's CA from `ca_file` (tonic is built
//! without native or webpki roots). The server name checked is the URL's host.
//!
//! Nothing here runs on the request path: the data plane only ever sees what the applier
//! swapped in, and a slow or dead control plane delays nothing but the next config change.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kokoa_model::ModelError;
use kokoa_proto::v1::config_client::ConfigClient;
use kokoa_proto::v1::enrollment_client::EnrollmentClient;
use kokoa_proto::v1::{
    control_message, node_message, Ack, EnrollRequest, Heartbeat, Hello, Listener, Nack, NodeKind,
    NodeMessage, PeerStatus, Snapshot,
};
use kokoa_proto::v1::{ServiceHealth, TcpRouteStatus};
use kokoa_tunnel::TunnelStats;
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, watch};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub use crate::backoff::{Backoff, BACKOFF_INITIAL, BACKOFF_MAX};
use crate::meter::{hostname, resident_bytes, CpuMeter, RateMeter};
pub use crate::persist::{
    ensure_state_dir, load_snapshot, write_private_file, StateError, CREDENTIAL_FILE,
    SNAPSHOT_FILE, TOKEN_USED_FILE,
};
pub use crate::settings::{ControlSettings, FileControl, SettingsError};

/// Heartbeat interval until control says otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// Deadline for the TCP + TLS connection to control.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the client compares the node's peer, service and listener states with the last
/// heartbeat's, sending one early on a change (at most one extra heartbeat per check).
pub const CHANGE_CHECK: Duration = Duration::from_secs(1);
/// A stream that stayed up this long counts as healthy even before a snapshot arrived.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// Why talking to control failed. Never fatal to the node: the client logs it and retries.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A state file could not be read or written, or the persisted snapshot is not one.
    #[error(transparent)]
    State(#[from] StateError),
    /// No credential and no unused enrollment token.
    #[error("not enrolled: {0}")]
    NotEnrolled(String),
    /// Control refused the enrollment token (used, expired or unknown).
    #[error("control refused the enrollment token from {file}: {message}; write a fresh token (`kokoa-control node-token create`) to that file")]
    TokenRefused {
        /// The token file.
        file: PathBuf,
        /// What control said.
        message: String,
    },
    /// Control refused the credential (unknown, revoked or expired).
    #[error("control refused this node's credential ({message}); the node keeps running its last config. Re-enroll by writing a fresh token (`kokoa-control node-token create`) to {file}")]
    Unauthenticated {
        /// What control said.
        message: String,
        /// The token file an operator can refill.
        file: PathBuf,
    },
    /// The TLS connection to control could not be made or broke.
    #[error("cannot reach control at {url}: {reason}")]
    Connect {
        /// Control's URL.
        url: String,
        /// Why (with the chain of causes).
        reason: String,
    },
    /// Control answered with another gRPC error.
    #[error("control answered {code:?}: {message}")]
    Status {
        /// The gRPC code.
        code: tonic::Code,
        /// The message.
        message: String,
    },
}

/// What a node reports in each heartbeat, besides what the client measures itself (CPU,
/// memory, uptime).
#[derive(Clone, Debug, Default)]
pub struct NodeStatus {
    /// Tunnel state per peer ([`peer_statuses`] builds it from [`TunnelStats`]).
    pub peers: Vec<PeerStatus>,
    /// Client connections (edge) or tunnel streams (origin) open now.
    pub active_connections: u64,
    /// Requests (edge) or streams (origin) served since start; the client turns it into a
    /// rate.
    pub requests_total: u64,
    /// Errors (5xx, dial failures) since start.
    pub errors_total: u64,
    /// Origin: each service's health.
    pub services: Vec<ServiceHealth>,
    /// Edge: each TCP route's listener.
    pub tcp_routes: Vec<TcpRouteStatus>,
}

/// The node side of control: validates and applies snapshots, reports status.
pub trait Applier: Send + Sync + 'static {
    /// Which kind of node this is (an edge NACKs an origin snapshot and vice versa).
    fn kind(&self) -> NodeKind;

    /// Validates `snapshot` completely, then applies it atomically: on `Err(error)` nothing
    /// of it may have been applied (the node keeps its previous config) and the error (its
    /// field, object and reason) is sent to control in the NACK. Must not block the runtime.
    fn apply(&self, snapshot: &Snapshot) -> impl Future<Output = Result<(), ModelError>> + Send;

    /// The node's current status for a heartbeat. Cheap: called every [`CHANGE_CHECK`] to look
    /// for state changes, and for every heartbeat.
    fn status(&self) -> NodeStatus;

    /// The node's own TCP listeners, reported to control in `Hello` (so control can refuse a
    /// TCP route that would collide with one). None by default.
    fn listeners(&self) -> Vec<Listener> {
        Vec::new()
    }
}

/// Peer states for a heartbeat from the tunnel's counters. A peer is `up` when a handshake
/// completed within the last 180 s (WireGuard's reject-after time).
pub fn peer_statuses(stats: &TunnelStats) -> Vec<PeerStatus> {
    stats
        .peers
        .iter()
        .map(|peer| PeerStatus {
            public_key: peer.public_key.to_base64(),
            endpoint: peer
                .endpoint
                .map(|endpoint| endpoint.to_string())
                .unwrap_or_default(),
            up: peer
                .last_handshake
                .is_some_and(|age| age < Duration::from_secs(180)),
            last_handshake_age_ms: peer
                .last_handshake
                .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            rx_bytes: peer.rx_bytes,
            tx_bytes: peer.tx_bytes,
            active_streams: peer.active_streams,
        })
        .collect()
}

/// What the client is doing, for tests, logs and the node's own health.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlStatus {
    /// A Watch stream is open.
    pub connected: bool,
    /// The version of the config running now (0: none).
    pub applied_version: u64,
    /// Snapshots applied and acknowledged.
    pub acks: u64,
    /// Snapshots rejected.
    pub nacks: u64,
    /// The last NACK's reason.
    pub last_nack: Option<String>,
    /// The last error talking to control, cleared when a stream is established.
    pub last_error: Option<String>,
    /// Watch streams opened (1 after the first connection).
    pub streams: u64,
}

/// Exports a client's [`ControlStatus`] on the node's `/metrics`, read at scrape time:
/// `kokoa_control_connected`, `kokoa_control_applied_version`, `kokoa_control_acks`,
/// `kokoa_control_nacks`, `kokoa_control_streams` — what an operator (or a test) polls to see
/// whether a node follows control and which version it runs.
#[derive(Debug)]
pub struct ControlCollector {
    status: watch::Receiver<ControlStatus>,
}

impl ControlCollector {
    /// Reads `status` (from [`ControlClient::status`]).
    pub fn new(status: watch::Receiver<ControlStatus>) -> Self {
        Self { status }
    }
}

impl prometheus_client::collector::Collector for ControlCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::NoLabelSet;
        use prometheus_client::metrics::MetricType;
        let status = self.status.borrow().clone();
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (name, help, value) in [
            (
                "kokoa_control_connected",
                "1 while a config stream to control is open",
                i64::from(status.connected),
            ),
            (
                "kokoa_control_applied_version",
                "Version of the control config running now (0: none)",
                clamp(status.applied_version),
            ),
        ] {
            encoder
                .encode_descriptor(name, help, None, MetricType::Gauge)?
                .encode_gauge(&value)?;
        }
        for (name, help, value) in [
            (
                "kokoa_control_acks",
                "Snapshots from control applied and acknowledged",
                status.acks,
            ),
            (
                "kokoa_control_nacks",
                "Snapshots from control rejected (the previous config kept running)",
                status.nacks,
            ),
            (
                "kokoa_control_streams",
                "Config streams opened to control",
                status.streams,
            ),
        ] {
            encoder
                .encode_descriptor(name, help, None, MetricType::Counter)?
                .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        Ok(())
    }
}

/// The control client of one node. See the module documentation.
pub struct ControlClient<A: Applier> {
    settings: ControlSettings,
    applier: Arc<A>,
    status: watch::Sender<ControlStatus>,
    started: Instant,
    heartbeat_interval: Duration,
    /// Control refused the stored credential: try an unused token before using it again.
    refused: bool,
}

impl<A: Applier> ControlClient<A> {
    /// A client for `settings` applying snapshots through `applier`. Does no I/O.
    pub fn new(settings: ControlSettings, applier: Arc<A>) -> Self {
        Self {
            settings,
            applier,
            status: watch::Sender::new(ControlStatus::default()),
            started: Instant::now(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            refused: false,
        }
    }

    /// Follows the client's status.
    pub fn status(&self) -> watch::Receiver<ControlStatus> {
        self.status.subscribe()
    }

    /// Applies the persisted snapshot, if there is one, so the node serves its last config
    /// before (and without) reaching control. Returns the version now running (0: none). A
    /// snapshot that no longer applies is logged and ignored.
    pub async fn restore(&mut self) -> u64 {
        let snapshot = match load_snapshot(&self.settings.state_dir) {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => {
                tracing::info!(
                    state_dir = %self.settings.state_dir.display(),
                    "no persisted config yet; waiting for control's first snapshot"
                );
                return 0;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot restore the persisted config");
                return 0;
            }
        };
        let version = snapshot.version;
        match self.applier.apply(&snapshot).await {
            Ok(()) => {
                tracing::info!(
                    version,
                    "serving the persisted config until control answers"
                );
                self.set_heartbeat_interval(snapshot.heartbeat_interval_seconds);
                self.status
                    .send_modify(|status| status.applied_version = version);
                version
            }
            Err(reason) => {
                tracing::warn!(
                    version,
                    %reason,
                    "the persisted config does not apply; waiting for control's next snapshot"
                );
                0
            }
        }
    }

    fn set_heartbeat_interval(&mut self, seconds: u32) {
        self.heartbeat_interval = if seconds == 0 {
            DEFAULT_HEARTBEAT_INTERVAL
        } else {
            Duration::from_secs(u64::from(seconds))
        };
    }

    /// Runs until `shutdown` resolves: enrolls if needed, watches, reconnects with backoff.
    /// Errors are logged and retried, never returned: the data plane keeps its last config.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
        let mut cpu = CpuMeter::new();
        let mut rates = RateMeter::default();
        loop {
            let attempt = async {
                let credential = self.credential().await?;
                self.watch(&credential, &mut cpu, &mut rates).await
            };
            let outcome = tokio::select! {
                _ = &mut shutdown => return,
                outcome = attempt => outcome,
            };
            self.status.send_modify(|status| status.connected = false);
            match outcome {
                Ok(healthy) => {
                    if healthy {
                        backoff.reset();
                    }
                    tracing::warn!("control closed the config stream; reconnecting");
                }
                Err(error) => {
                    match &error {
                        ControlError::Unauthenticated { .. }
                        | ControlError::TokenRefused { .. }
                        | ControlError::NotEnrolled(_) => {
                            tracing::error!(%error, "control refused this node")
                        }
                        _ => {
                            tracing::warn!(%error, "control unreachable; keeping the current config")
                        }
                    }
                    if matches!(error, ControlError::Unauthenticated { .. }) {
                        self.refused = true;
                    }
                    let message = error.to_string();
                    self.status
                        .send_modify(|status| status.last_error = Some(message));
                }
            }
            let delay = backoff.next_delay();
            tracing::debug!(?delay, "reconnecting to control after a pause");
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// The credential to watch with: an unused token is exchanged first (first start, or
    /// after control refused the stored credential and the operator wrote a new token).
    async fn credential(&mut self) -> Result<String, ControlError> {
        ensure_state_dir(&self.settings.state_dir)?;
        let path = self.settings.credential_path();
        let stored = match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => Some(text.trim().to_owned()),
            Ok(_) => None,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(StateError::Io { path, source }.into()),
        };
        if stored.is_none() || self.refused {
            if let Some(token) = self.unused_token()? {
                let credential = self.enroll(&token).await?;
                self.refused = false;
                return Ok(credential);
            }
        }
        stored.ok_or_else(|| {
            ControlError::NotEnrolled(format!(
                "no credential in {} and no unused enrollment token in {}: write one (`kokoa-control node-token create`) there",
                path.display(),
                self.settings.token_file.display()
            ))
        })
    }

    /// The token in `token_file` if it was never sent to control.
    fn unused_token(&self) -> Result<Option<String>, ControlError> {
        let token = match std::fs::read_to_string(&self.settings.token_file) {
            Ok(text) => text.trim().to_owned(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    path: self.settings.token_file.clone(),
                    source,
                }
                .into())
            }
        };
        if token.is_empty() {
            return Ok(None);
        }
        let used = std::fs::read_to_string(self.settings.state_dir.join(TOKEN_USED_FILE))
            .unwrap_or_default();
        Ok((used.trim() != token_digest(&token)).then_some(token))
    }

    async fn enroll(&self, token: &str) -> Result<String, ControlError> {
        let channel = self.channel().await?;
        let mut client = EnrollmentClient::new(channel);
        let request = EnrollRequest {
            token: token.to_owned(),
            hostname: hostname(),
            software_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let answer = client.enroll(request).await;
        let remember = || {
            write_private_file(
                &self.settings.state_dir.join(TOKEN_USED_FILE),
                token_digest(token).as_bytes(),
            )
        };
        let response = match answer {
            Ok(response) => response.into_inner(),
            Err(status) => {
                return Err(match status.code() {
                    tonic::Code::Unauthenticated
                    | tonic::Code::PermissionDenied
                    | tonic::Code::InvalidArgument
                    | tonic::Code::NotFound
                    | tonic::Code::FailedPrecondition => {
                        // Spent: do not send it again until the operator writes a new one.
                        remember()?;
                        ControlError::TokenRefused {
                            file: self.settings.token_file.clone(),
                            message: status.message().to_owned(),
                        }
                    }
                    _ => self.status_error(status),
                });
            }
        };
        let expected = self.applier.kind();
        if response.kind != expected as i32 {
            remember()?;
            return Err(ControlError::TokenRefused {
                file: self.settings.token_file.clone(),
                message: format!(
                    "the token enrolls a {:?} node, but this is a {:?}",
                    NodeKind::try_from(response.kind).unwrap_or(NodeKind::Unspecified),
                    expected
                ),
            });
        }
        if response.credential.is_empty() {
            return Err(ControlError::Status {
                code: tonic::Code::Internal,
                message: "control sent an empty credential".to_owned(),
            });
        }
        write_private_file(
            &self.settings.credential_path(),
            response.credential.as_bytes(),
        )?;
        remember()?;
        tracing::info!(
            node = %response.node_name,
            node_id = %response.node_uuid,
            "enrolled with control; credential stored"
        );
        Ok(response.credential)
    }

    fn status_error(&self, status: tonic::Status) -> ControlError {
        match status.code() {
            tonic::Code::Unauthenticated => ControlError::Unauthenticated {
                message: status.message().to_owned(),
                file: self.settings.token_file.clone(),
            },
            tonic::Code::Unavailable | tonic::Code::Unknown => ControlError::Connect {
                url: self.settings.url.clone(),
                reason: error_chain(&status),
            },
            code => ControlError::Status {
                code,
                message: status.message().to_owned(),
            },
        }
    }

    async fn channel(&self) -> Result<Channel, ControlError> {
        let connect_error = |reason: String| ControlError::Connect {
            url: self.settings.url.clone(),
            reason,
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.settings.ca_pem))
            .domain_name(self.settings.host.clone());
        Endpoint::from_shared(self.settings.url.clone())
            .map_err(|e| connect_error(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| connect_error(error_chain(&e)))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(15))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|e| connect_error(error_chain(&e)))
    }

    /// One Watch stream. Returns `Ok(healthy)` when control ends the stream, `healthy` when it
    /// delivered a snapshot or stayed up a while.
    async fn watch(
        &mut self,
        credential: &str,
        cpu: &mut CpuMeter,
        rates: &mut RateMeter,
    ) -> Result<bool, ControlError> {
        let channel = self.channel().await?;
        let (tx, rx) = mpsc::channel::<NodeMessage>(16);
        let applied_version = self.status.borrow().applied_version;
        let hello = NodeMessage {
            message: Some(node_message::Message::Hello(Hello {
                applied_version,
                software_version: env!("CARGO_PKG_VERSION").to_owned(),
                hostname: hostname(),
                listeners: self.applier.listeners(),
            })),
        };
        // The receiver is alive: it is moved into the request below.
        let _ = tx.send(hello).await;
        let outbound = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|message| (message, rx))
        });
        let mut request = tonic::Request::new(outbound);
        let bearer = format!("Bearer {credential}").parse().map_err(|_| {
            ControlError::NotEnrolled(format!(
                "the credential in {} is not a valid header value; delete it and re-enroll",
                self.settings.credential_path().display()
            ))
        })?;
        request.metadata_mut().insert("authorization", bearer);
        let opened = Instant::now();
        let mut inbound = ConfigClient::new(channel)
            .watch(request)
            .await
            .map_err(|status| self.status_error(status))?
            .into_inner();
        tracing::info!(url = %self.settings.url, applied_version, "config stream open");
        self.status.send_modify(|status| {
            status.connected = true;
            status.last_error = None;
            status.streams += 1;
        });
        // A heartbeat at once: control (and its ACME validation) waits for nodes that have
        // reported, and must not wait a whole interval for one that just connected.
        let status = self.applier.status();
        let mut reported = States::of(&status);
        if tx.send(self.heartbeat(status, cpu, rates)).await.is_err() {
            return Ok(false);
        }
        let mut healthy = false;
        let mut heartbeat = tokio::time::interval(self.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let mut changes = tokio::time::interval(CHANGE_CHECK);
        changes.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        changes.tick().await;
        loop {
            tokio::select! {
                message = inbound.message() => {
                    let message = match message {
                        Ok(Some(message)) => message,
                        Ok(None) => return Ok(healthy || opened.elapsed() >= HEALTHY_AFTER),
                        Err(status) => {
                            let error = self.status_error(status);
                            // A credential revoked while connected is a refusal, not a blip.
                            let refused = matches!(error, ControlError::Unauthenticated { .. });
                            if !refused && (healthy || opened.elapsed() >= HEALTHY_AFTER) {
                                tracing::warn!(%error, "config stream broke");
                                return Ok(true);
                            }
                            return Err(error);
                        }
                    };
                    let Some(control_message::Message::Snapshot(snapshot)) = message.message else {
                        continue;
                    };
                    healthy = true;
                    let interval = self.heartbeat_interval;
                    let answer = self.handle_snapshot(snapshot).await;
                    if tx.send(answer).await.is_err() {
                        return Ok(true);
                    }
                    if self.heartbeat_interval != interval {
                        heartbeat = tokio::time::interval(self.heartbeat_interval);
                        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        heartbeat.tick().await;
                    }
                }
                _ = heartbeat.tick() => {
                    let status = self.applier.status();
                    reported = States::of(&status);
                    if tx.send(self.heartbeat(status, cpu, rates)).await.is_err() {
                        return Ok(healthy);
                    }
                }
                _ = changes.tick() => {
                    let status = self.applier.status();
                    let now = States::of(&status);
                    if now == reported {
                        continue;
                    }
                    tracing::debug!("tunnel, service or listener state changed: heartbeat now");
                    reported = now;
                    // The next regular heartbeat comes a whole interval after this one.
                    heartbeat.reset();
                    if tx.send(self.heartbeat(status, cpu, rates)).await.is_err() {
                        return Ok(healthy);
                    }
                }
            }
        }
    }

    async fn handle_snapshot(&mut self, snapshot: Snapshot) -> NodeMessage {
        let version = snapshot.version;
        let started = Instant::now();
        match self.applier.apply(&snapshot).await {
            Ok(()) => {
                self.set_heartbeat_interval(snapshot.heartbeat_interval_seconds);
                if let Err(error) =
                    write_private_file(&self.settings.snapshot_path(), &snapshot.encode_to_vec())
                {
                    tracing::error!(%error, version, "applied, but cannot persist the config: a restart without control would start from an older one");
                }
                tracing::info!(version, took = ?started.elapsed(), "config applied");
                self.status.send_modify(|status| {
                    status.applied_version = version;
                    status.acks += 1;
                });
                NodeMessage {
                    message: Some(node_message::Message::Ack(Ack { version })),
                }
            }
            Err(error) => {
                let object = error.object.as_ref().map(ToString::to_string);
                tracing::warn!(version, reason = %error, object, "config rejected; keeping the current one");
                let nack: Nack = error.to_nack(version);
                self.status.send_modify(|status| {
                    status.nacks += 1;
                    status.last_nack = Some(nack.reason.clone());
                });
                NodeMessage {
                    message: Some(node_message::Message::Nack(nack)),
                }
            }
        }
    }

    fn heartbeat(
        &self,
        status: NodeStatus,
        cpu: &mut CpuMeter,
        rates: &mut RateMeter,
    ) -> NodeMessage {
        let (requests_per_second, errors_per_second) =
            rates.rates(status.requests_total, status.errors_total);
        NodeMessage {
            message: Some(node_message::Message::Heartbeat(Heartbeat {
                applied_version: self.status.borrow().applied_version,
                peers: status.peers,
                active_connections: status.active_connections,
                requests_per_second,
                errors_per_second,
                cpu_cores: cpu.cores(),
                memory_bytes: resident_bytes(),
                uptime_seconds: self.started.elapsed().as_secs(),
                services: status.services,
                tcp_routes: status.tcp_routes,
            })),
        }
    }
}

/// The states a heartbeat reports that control's health judges: which tunnel peers are up,
/// which services healthy, which TCP listeners listening. Counters and rates are not states.
#[derive(Debug, PartialEq, Eq)]
struct States {
    peers: Vec<(String, bool)>,
    services: Vec<(String, bool)>,
    listeners: Vec<(u32, bool)>,
}

impl States {
    fn of(status: &NodeStatus) -> Self {
        let mut states = States {
            peers: status
                .peers
                .iter()
                .map(|peer| (peer.public_key.clone(), peer.up))
                .collect(),
            services: status
                .services
                .iter()
                .map(|service| (service.name.clone(), service.healthy))
                .collect(),
            listeners: status
                .tcp_routes
                .iter()
                .map(|route| (route.listen_port, route.listening))
                .collect(),
        };
        states.peers.sort_unstable();
        states.services.sort_unstable();
        states.listeners.sort_unstable();
        states
    }
}

fn token_digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
