//! A small control-plane peer for node tests: a real tonic server (TLS with its own CA) that
//! speaks `kokoa.v1` as the proto describes it — one-time enrollment tokens, bearer
//! credentials, Watch streams that push the current snapshot and every new one — and records
//! what the node sends (Hello, ACK, NACK, heartbeats). It is a test peer, not kokoa-control:
//! edge and origin must not depend on kokoa-control. Shared by `edge/tests/control.rs` and
//! `origin/tests/control.rs`.

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use kokoa_proto::v1::config_server::{Config, ConfigServer};
use kokoa_proto::v1::enrollment_server::{Enrollment, EnrollmentServer};
use kokoa_proto::v1::{
    control_message, node_message, ControlMessage, EnrollRequest, EnrollResponse, NodeKind,
    NodeMessage, Snapshot,
};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// Control's CA and server certificate (for 127.0.0.1 and localhost).
#[derive(Clone)]
pub struct Pki {
    /// The CA certificate, PEM: what the node pins.
    pub ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    /// A fresh CA and a server certificate signed by it.
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        Self {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Something the node sent, as the test sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// A Watch stream was refused for its credential.
    Refused,
    /// Enrollment with this token succeeded.
    Enrolled(String),
    /// A Hello with the node's applied version.
    Hello(u64),
    /// ACK(version).
    Ack(u64),
    /// NACK(version, reason).
    Nack(u64, String),
    /// A heartbeat with its applied version and how many tunnel peers it reports up.
    Heartbeat(u64, usize),
}

struct State {
    kind: NodeKind,
    tokens: Mutex<HashSet<String>>,
    credentials: Mutex<HashSet<String>>,
    snapshot: watch::Sender<Option<Snapshot>>,
    seen: mpsc::UnboundedSender<Seen>,
    issued: AtomicUsize,
}

#[derive(Clone)]
struct Service(Arc<State>);

#[tonic::async_trait]
impl Enrollment for Service {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        let token = request.into_inner().token;
        if !self.0.tokens.lock().unwrap().remove(&token) {
            return Err(Status::unauthenticated("unknown or used enrollment token"));
        }
        let n = self.0.issued.fetch_add(1, Ordering::SeqCst);
        let credential = format!("credential-{n}-{token}");
        self.0
            .credentials
            .lock()
            .unwrap()
            .insert(credential.clone());
        let _ = self.0.seen.send(Seen::Enrolled(token));
        Ok(Response::new(EnrollResponse {
            kind: self.0.kind as i32,
            node_id: n as i64 + 1,
            node_name: "test-node".into(),
            credential,
            ..EnrollResponse::default()
        }))
    }
}

type Outbound = Pin<Box<dyn Stream<Item = Result<ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Config for Service {
    type WatchStream = Outbound;

    async fn watch(
        &self,
        request: Request<Streaming<NodeMessage>>,
    ) -> Result<Response<Outbound>, Status> {
        let credential = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        if !self.0.credentials.lock().unwrap().contains(&credential) {
            let _ = self.0.seen.send(Seen::Refused);
            return Err(Status::unauthenticated("unknown credential"));
        }
        let mut inbound = request.into_inner();
        let seen = self.0.seen.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let event = match message.message {
                    Some(node_message::Message::Hello(hello)) => Seen::Hello(hello.applied_version),
                    Some(node_message::Message::Ack(ack)) => Seen::Ack(ack.version),
                    Some(node_message::Message::Nack(nack)) => {
                        Seen::Nack(nack.version, nack.reason)
                    }
                    Some(node_message::Message::Heartbeat(beat)) => {
                        let up = beat.peers.iter().filter(|peer| peer.up).count();
                        Seen::Heartbeat(beat.applied_version, up)
                    }
                    None => continue,
                };
                let _ = seen.send(event);
            }
        });
        // The current snapshot at once, then every new one.
        let outbound = futures_util::stream::unfold(
            (self.0.snapshot.subscribe(), true),
            |(mut snapshots, first)| async move {
                if !first {
                    snapshots.changed().await.ok()?;
                }
                loop {
                    let current = snapshots.borrow_and_update().clone();
                    if let Some(snapshot) = current {
                        let message = ControlMessage {
                            message: Some(control_message::Message::Snapshot(snapshot)),
                        };
                        return Some((Ok(message), (snapshots, false)));
                    }
                    snapshots.changed().await.ok()?;
                }
            },
        );
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// A running test control server.
pub struct TestControl {
    state: Arc<State>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its CA and certificate.
    pub pki: Pki,
    /// What the node sent, in order.
    pub seen: mpsc::UnboundedReceiver<Seen>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestControl {
    /// Starts a server for nodes of `kind` on `addr` (`127.0.0.1:0` for any port) accepting
    /// the one-time `tokens`.
    pub async fn start(kind: NodeKind, addr: SocketAddr, pki: Pki, tokens: &[&str]) -> Self {
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            kind,
            tokens: Mutex::new(tokens.iter().map(|t| t.to_string()).collect()),
            credentials: Mutex::new(HashSet::new()),
            snapshot: watch::Sender::new(None),
            seen: seen_tx,
            issued: AtomicUsize::new(0),
        });
        let mut control = Self {
            state,
            addr,
            pki,
            seen,
            stop: None,
            task: None,
        };
        control.serve(addr).await;
        control
    }

    async fn serve(&mut self, addr: SocketAddr) {
        // The port may still be held by a stopped server's last connections for a moment.
        let mut listener = None;
        for _ in 0..100 {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(bound) => {
                    listener = Some(bound);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let listener = listener.expect("binding the test control server");
        self.addr = listener.local_addr().unwrap();
        let identity = Identity::from_pem(&self.pki.cert_pem, &self.pki.key_pem);
        let service = Service(self.state.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let router = Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(ConfigServer::new(service.clone()))
            .add_service(EnrollmentServer::new(service));
        self.task = Some(tokio::spawn(async move {
            let _ = router
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                })
                .await;
        }));
        self.stop = Some(stop);
    }

    /// Stops serving (open streams are cut), keeping tokens, credentials and the snapshot.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Serves again on the same address.
    pub async fn restart(&mut self) {
        self.stop().await;
        let addr = self.addr;
        self.serve(addr).await;
    }

    /// Pushes `snapshot` to every Watch stream (and to later ones).
    pub fn push(&self, snapshot: Snapshot) {
        self.state.snapshot.send_replace(Some(snapshot));
    }

    /// Accepts another one-time token.
    pub fn add_token(&self, token: &str) {
        self.state.tokens.lock().unwrap().insert(token.to_owned());
    }

    /// The URL nodes use.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// Writes the `[control]` files into `dir` (`control-ca.pem`, `enroll.token` = `token`)
    /// and returns the TOML table.
    pub fn control_table(&self, dir: &Path, token: Option<&str>) -> String {
        std::fs::write(dir.join("control-ca.pem"), &self.pki.ca_pem).unwrap();
        if let Some(token) = token {
            std::fs::write(dir.join("enroll.token"), token).unwrap();
        }
        format!(
            "[control]\nurl = \"{}\"\nca_file = \"control-ca.pem\"\ntoken_file = \"enroll.token\"\nstate_dir = \"state\"\n",
            self.url()
        )
    }

    /// Waits (bounded) for the next event matching `want`, skipping others.
    pub async fn expect(&mut self, what: &str, want: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(event)) if want(&event) => return event,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("control server gone while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }
}

impl Drop for TestControl {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
