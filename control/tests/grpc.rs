//! The gRPC server as nodes see it: a real tonic client over TLS pinned to control's CA, against
//! `GrpcServer` on a loopback port with a SQLite store in a temp dir.
//!
//! Why this file is longer than ~1,000 lines: every test drives the same server harness and
//! client (enrol, watch, ACK/NACK, heartbeats); split, each part would repeat that harness.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kokoa_control::grpc::{GrpcOptions, GrpcServer, NodeRegistry};
use kokoa_control::pki::ControlCa;
use kokoa_control::store::{
    self, Actor, MasterKey, NewEdge, NewOrigin, NewRoute, NewService, NodeId, NodeTokenKind,
    Origin, Service, Store,
};
use kokoa_proto::v1 as pb;
use kokoa_proto::v1::config_client::ConfigClient;
use kokoa_proto::v1::enrollment_client::EnrollmentClient;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status, Streaming};

/// How long a test waits for something that should happen at once.
const SOON: Duration = Duration::from_secs(10);
/// How long a test waits to be sure something does not happen.
const QUIET: Duration = Duration::from_millis(600);

/// A running control: store, gRPC server, CA.
struct Control {
    store: Arc<dyn Store>,
    nodes: NodeRegistry,
    addr: SocketAddr,
    ca_pem: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Control {
    /// The options tests run with: fast heartbeats and polling.
    fn options() -> GrpcOptions {
        GrpcOptions {
            heartbeat_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(200),
            ..GrpcOptions::default()
        }
    }

    /// Control on a fresh SQLite store in a temp dir.
    async fn start() -> Result<Control> {
        Control::start_with_options(Control::options()).await
    }

    /// Control on a fresh SQLite store in a temp dir, with `options`.
    async fn start_with_options(options: GrpcOptions) -> Result<Control> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("control.db");
        let store = store::open(&format!("sqlite://{}", db.display()), MasterKey::generate())
            .await
            .context("opening the store")?;
        Control::serve(store, dir, options).await
    }

    /// Control on `store`, with its CA in `dir`.
    async fn start_with(store: Arc<dyn Store>, dir: tempfile::TempDir) -> Result<Control> {
        Control::serve(store, dir, Control::options()).await
    }

    async fn serve(
        store: Arc<dyn Store>,
        dir: tempfile::TempDir,
        options: GrpcOptions,
    ) -> Result<Control> {
        let ca = ControlCa::load_or_create(dir.path())?;
        let tls = ca.server_tls(&["localhost".into(), "127.0.0.1".into()])?;
        let server = GrpcServer::new(store.clone(), options);
        let nodes = server.nodes();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, tls, async move {
            let _ = stopped.await;
        }));
        Ok(Control {
            store,
            nodes,
            addr,
            ca_pem: ca.ca_pem().to_owned(),
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        })
    }

    /// A TLS channel trusting only `ca_pem`, for the name `localhost`.
    async fn channel_trusting(&self, ca_pem: &str) -> Result<Channel> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name("localhost");
        Ok(Endpoint::from_shared(format!("https://{}", self.addr))?
            .tls_config(tls)?
            .connect_timeout(SOON)
            .connect()
            .await?)
    }

    async fn channel(&self) -> Result<Channel> {
        self.channel_trusting(&self.ca_pem).await
    }

    async fn shutdown(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(SOON, task)
                .await
                .context("the gRPC server did not stop")???;
        }
        Ok(())
    }

    /// A one-time enrollment token for `node`.
    async fn token(&self, node: NodeId) -> Result<String> {
        let issued = self
            .store
            .create_enrollment_token(&Actor::System, node, Duration::from_secs(600))
            .await?;
        Ok(issued.secret.expose().to_owned())
    }

    /// Enrolls `node` over gRPC and returns its credential.
    async fn enroll(&self, channel: &Channel, node: NodeId) -> Result<String> {
        let token = self.token(node).await?;
        let response = enroll(channel, &token).await?;
        Ok(response.credential)
    }

    async fn origin_with_service(&self, name: &str, port: u32) -> Result<(Origin, Service)> {
        let origin = self
            .store
            .create_origin(&Actor::System, NewOrigin::named(name.parse()?))
            .await?;
        let service = self
            .store
            .create_service(
                &Actor::System,
                origin.id,
                NewService::http("web".parse()?, store::Port::new(port)?),
            )
            .await?;
        Ok((origin, service))
    }

    async fn edge(&self, name: &str, origins: Vec<store::Id>) -> Result<NodeId> {
        let edge = self
            .store
            .create_edge(
                &Actor::System,
                NewEdge {
                    endpoint: Some(format!("{name}.example.net:51820").parse()?),
                    origins,
                    ..NewEdge::named(name.parse()?)
                },
            )
            .await?;
        Ok(NodeId::Edge(edge.id))
    }

    async fn route(&self, host: &str, service: &Service) -> Result<()> {
        self.store
            .create_route(
                &Actor::System,
                NewRoute {
                    limits: kokoa_model::from_json_value(serde_json::json!({"rate": 50}))?,
                    ..NewRoute::to(host.parse()?, service.id)
                },
            )
            .await?;
        Ok(())
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn enroll(channel: &Channel, token: &str) -> Result<pb::EnrollResponse, Status> {
    EnrollmentClient::new(channel.clone())
        .enroll(pb::EnrollRequest {
            token: token.into(),
            hostname: "test-host".into(),
            software_version: "test".into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// A node's side of a Watch stream.
struct Watch {
    tx: mpsc::Sender<pb::NodeMessage>,
    rx: Streaming<pb::ControlMessage>,
}

impl Watch {
    /// Opens a Watch stream with `credential` and sends Hello{applied_version}.
    async fn open(
        channel: &Channel,
        credential: &str,
        applied_version: u64,
    ) -> Result<Watch, Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(node_message(pb::node_message::Message::Hello(pb::Hello {
            applied_version,
            software_version: "test".into(),
            hostname: "test-host".into(),
            listeners: Vec::new(),
        })))
        .await
        .map_err(|_| Status::internal("hello"))?;
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {credential}")
                .parse()
                .map_err(|_| Status::internal("header"))?,
        );
        let rx = ConfigClient::new(channel.clone())
            .watch(request)
            .await?
            .into_inner();
        Ok(Watch { tx, rx })
    }

    /// The next snapshot, within `SOON`.
    async fn snapshot(&mut self) -> Result<pb::Snapshot> {
        match tokio::time::timeout(SOON, self.rx.message()).await {
            Ok(Ok(Some(pb::ControlMessage {
                message: Some(pb::control_message::Message::Snapshot(s)),
            }))) => Ok(s),
            Ok(other) => bail!("expected a snapshot, got {other:?}"),
            Err(_) => bail!("no snapshot within {SOON:?}"),
        }
    }

    /// Asserts that nothing arrives for a while.
    async fn quiet(&mut self) -> Result<()> {
        match tokio::time::timeout(QUIET, self.rx.message()).await {
            Err(_) => Ok(()),
            Ok(got) => bail!("expected nothing, got {got:?}"),
        }
    }

    /// The status the stream ends with, within `SOON`.
    async fn end(&mut self) -> Result<Status> {
        match tokio::time::timeout(SOON, self.rx.message()).await {
            Ok(Err(status)) => Ok(status),
            Ok(Ok(None)) => bail!("stream ended without a status"),
            Ok(Ok(Some(message))) => bail!("expected the stream to end, got {message:?}"),
            Err(_) => bail!("stream still open after {SOON:?}"),
        }
    }

    async fn send(&self, message: pb::node_message::Message) -> Result<()> {
        self.tx
            .send(node_message(message))
            .await
            .map_err(|_| anyhow::anyhow!("watch stream closed"))
    }

    async fn ack(&self, version: u64) -> Result<()> {
        self.send(pb::node_message::Message::Ack(pb::Ack { version }))
            .await
    }
}

fn node_message(message: pb::node_message::Message) -> pb::NodeMessage {
    pb::NodeMessage {
        message: Some(message),
    }
}

fn edge_of(snapshot: &pb::Snapshot) -> Result<&pb::EdgeSnapshot> {
    match &snapshot.node {
        Some(pb::snapshot::Node::Edge(edge)) => Ok(edge),
        other => bail!("expected an edge snapshot, got {other:?}"),
    }
}

/// Polls `check` until it holds (bounded by `SOON`).
async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + SOON;
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_then_watch_gets_the_edges_snapshot_and_a_token_works_once() -> Result<()> {
    let mut control = Control::start().await?;
    let (home, web) = control.origin_with_service("home", 8001).await?;
    control.route("app.example.com", &web).await?;
    let node = control.edge("e1", vec![home.id]).await?;
    let channel = control.channel().await?;

    let token = control.token(node).await?;
    let enrolled = enroll(&channel, &token).await?;
    assert_eq!(enrolled.kind, pb::NodeKind::Edge as i32);
    assert_eq!(enrolled.node_name, "e1");
    assert_eq!(enrolled.node_uuid, node.id().to_string());
    assert!(enrolled.credential.starts_with("kokoa_"));
    let again = enroll(&channel, &token)
        .await
        .expect_err("a used token is refused");
    assert_eq!(again.code(), Code::Unauthenticated);
    assert_eq!(
        again.message(),
        "enrollment token refused",
        "refusals say nothing more"
    );

    let mut watch = Watch::open(&channel, &enrolled.credential, 0).await?;
    let snapshot = watch.snapshot().await?;
    let version = control.store.config_version().await?;
    assert_eq!(snapshot.version, version);
    assert_eq!(snapshot.heartbeat_interval_seconds, 1);
    let edge = edge_of(&snapshot)?;
    assert_eq!(edge.name, "e1");
    let key = control
        .store
        .edge_private_key(node.id())
        .await?
        .context("managed key")?;
    assert_eq!(edge.private_key, key.to_base64());
    assert_eq!(edge.origins.len(), 1);
    assert_eq!(edge.origins[0].name, "home");
    assert_eq!(edge.origins[0].public_key, home.public_key.to_base64());
    assert_eq!(edge.origins[0].origin_address, "10.100.1.1");
    assert_eq!(edge.routes.len(), 1);
    assert_eq!(edge.routes[0].host, "app.example.com");
    assert_eq!(edge.routes[0].port, 8001);
    assert_eq!(
        edge.routes[0].limits.as_ref().and_then(|l| l.rate),
        Some(50.0),
        "typed limits"
    );
    watch.ack(version).await?;
    drop(watch);

    // A node that already runs the current version is sent nothing on reconnect.
    let mut watch = Watch::open(&channel, &enrolled.credential, version).await?;
    watch.quiet().await?;
    let info = control.nodes.get(node).context("registered")?;
    assert!(info.connected && info.in_sync, "{info:?}");

    // Shutting control down ends the stream with UNAVAILABLE (the node reconnects later).
    control.shutdown().await?;
    assert_eq!(watch.end().await?.code(), Code::Unavailable);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_revoked_credentials_get_unauthenticated_and_no_snapshot() -> Result<()> {
    let control = Control::start().await?;
    let (home, web) = control.origin_with_service("home", 8001).await?;
    control.route("app.example.com", &web).await?;
    let node = control.edge("e1", vec![home.id]).await?;
    let channel = control.channel().await?;

    // No credential, a malformed header, an unknown credential, an enrollment token.
    for credential in ["", "kokoa_node_nonsense"] {
        let refused = Watch::open(&channel, credential, 0)
            .await
            .err()
            .context("refused")?;
        assert_eq!(refused.code(), Code::Unauthenticated, "{credential:?}");
    }
    let token = control.token(node).await?;
    let refused = Watch::open(&channel, &token, 0)
        .await
        .err()
        .context("refused")?;
    assert_eq!(refused.code(), Code::Unauthenticated);

    // A valid credential works until it is revoked: the open stream is closed, with no
    // further snapshot, and the credential is refused afterwards.
    let credential = control.enroll(&channel, node).await?;
    let mut watch = Watch::open(&channel, &credential, 0).await?;
    watch.snapshot().await?;
    let token_id = control
        .store
        .list_node_tokens(Some(node))
        .await?
        .into_iter()
        .find(|t| t.kind == NodeTokenKind::Credential && t.revoked_at.is_none())
        .context("credential token")?
        .id;
    control
        .store
        .revoke_node_token(&Actor::System, token_id)
        .await?;
    control.route("new.example.com", &web).await?;
    let status = watch.end().await?;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let refused = Watch::open(&channel, &credential, 0)
        .await
        .err()
        .context("refused")?;
    assert_eq!(refused.code(), Code::Unauthenticated);
    eventually("the node to show as disconnected", || async {
        Ok(control.nodes.connected_count() == 0)
    })
    .await?;

    // Re-enrolling revokes the earlier credential: its stream closes even without a change.
    let first = control.enroll(&channel, node).await?;
    let mut old = Watch::open(&channel, &first, 0).await?;
    old.snapshot().await?;
    let second = control.enroll(&channel, node).await?;
    assert_eq!(old.end().await?.code(), Code::Unauthenticated);
    let mut new = Watch::open(&channel, &second, 0).await?;
    new.snapshot().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_change_reaches_only_the_edges_that_serve_it() -> Result<()> {
    let control = Control::start().await?;
    let (home, home_web) = control.origin_with_service("home", 8001).await?;
    let (lab, lab_web) = control.origin_with_service("lab", 9001).await?;
    control.route("app.example.com", &home_web).await?;
    let e1 = control.edge("e1", vec![home.id]).await?;
    let e2 = control.edge("e2", vec![lab.id]).await?;
    let origin = NodeId::Origin(lab.id);
    let channel = control.channel().await?;

    let mut w1 = Watch::open(&channel, &control.enroll(&channel, e1).await?, 0).await?;
    let mut w2 = Watch::open(&channel, &control.enroll(&channel, e2).await?, 0).await?;
    let mut wo = Watch::open(&channel, &control.enroll(&channel, origin).await?, 0).await?;
    let s1 = w1.snapshot().await?;
    let s2 = w2.snapshot().await?;
    let so = wo.snapshot().await?;
    assert_eq!(edge_of(&s1)?.routes.len(), 1);
    assert!(edge_of(&s2)?.routes.is_empty(), "e2 does not serve home");
    match &so.node {
        Some(pb::snapshot::Node::Origin(o)) => {
            assert_eq!(o.name, "lab");
            assert_eq!(o.services.len(), 1);
            assert_eq!(o.services[0].port, 9001);
            let edges: Vec<&str> = o.edges.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(edges, ["e2"]);
            assert_eq!(o.edges[0].endpoint, "e2.example.net:51820");
        }
        other => bail!("expected an origin snapshot, got {other:?}"),
    }
    for (w, v) in [(&w1, s1.version), (&w2, s2.version), (&wo, so.version)] {
        w.ack(v).await?;
    }

    control.route("lab.example.com", &lab_web).await?;
    let version = control.store.config_version().await?;
    let s2 = w2.snapshot().await?;
    assert_eq!(s2.version, version);
    let hosts: Vec<&str> = edge_of(&s2)?
        .routes
        .iter()
        .map(|r| r.host.as_str())
        .collect();
    assert_eq!(hosts, ["lab.example.com"]);
    assert_eq!(edge_of(&s2)?.routes[0].origin, "lab");
    w2.ack(version).await?;
    w1.quiet().await?;
    wo.quiet().await?;

    // Unaffected nodes count as running the new version.
    eventually("all three nodes in sync", || async {
        let nodes = control.nodes.connected();
        Ok(nodes.len() == 3
            && nodes
                .iter()
                .all(|n| n.in_sync && n.running_version == Some(version)))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_nack_and_heartbeats_are_recorded() -> Result<()> {
    let control = Control::start().await?;
    let (home, web) = control.origin_with_service("home", 8001).await?;
    control.route("app.example.com", &web).await?;
    let node = control.edge("e1", vec![home.id]).await?;
    let channel = control.channel().await?;
    let mut watch = Watch::open(&channel, &control.enroll(&channel, node).await?, 0).await?;
    let first = watch.snapshot().await?.version;

    watch.ack(first).await?;
    eventually("the ACK in the store", || async {
        Ok(control
            .store
            .get_edge(node.id())
            .await?
            .state
            .applied_version
            == Some(first))
    })
    .await?;

    control.route("other.example.com", &web).await?;
    let second = watch.snapshot().await?.version;
    ensure!(second > first, "versions increase");
    watch
        .send(pb::node_message::Message::Nack(pb::Nack {
            version: second,
            reason: "certificate for other.example.com does not parse".into(),
            object: None,
        }))
        .await?;
    eventually("the NACK in the store and the registry", || async {
        let state = control.store.get_edge(node.id()).await?.state;
        let live = control.nodes.get(node).and_then(|n| n.last_nack);
        Ok(state.nack.as_ref().is_some_and(|n| n.version == second)
            && state.applied_version == Some(first)
            && live.is_some_and(|n| n.error.contains("does not parse")))
    })
    .await?;
    let info = control.nodes.get(node).context("registered")?;
    assert!(!info.in_sync, "a NACKed node is not in sync: {info:?}");

    watch
        .send(pb::node_message::Message::Heartbeat(pb::Heartbeat {
            applied_version: first,
            peers: vec![pb::PeerStatus {
                public_key: home.public_key.to_base64(),
                endpoint: "192.0.2.7:40000".into(),
                up: true,
                last_handshake_age_ms: Some(1500),
                rx_bytes: 10,
                tx_bytes: 20,
                active_streams: 2,
            }],
            active_connections: 3,
            requests_per_second: 4.5,
            errors_per_second: 0.0,
            cpu_cores: 0.25,
            memory_bytes: 1 << 20,
            uptime_seconds: 60,
            ..Default::default()
        }))
        .await?;
    eventually("the heartbeat in the store", || async {
        let state = control.store.get_edge(node.id()).await?.state;
        Ok(state.last_heartbeat.is_some()
            && state
                .heartbeat
                .as_ref()
                .is_some_and(|h| h["active_connections"] == 3 && h["peers"][0]["up"] == true))
    })
    .await?;
    let info = control.nodes.get(node).context("registered")?;
    assert!(info.last_heartbeat.is_some());
    assert_eq!(
        info.heartbeat.as_ref().map(|h| h["memory_bytes"].clone()),
        Some(serde_json::json!(1 << 20))
    );

    // The next ACK clears the NACK.
    watch.ack(second).await?;
    eventually("the NACK cleared", || async {
        let state = control.store.get_edge(node.id()).await?.state;
        Ok(state.nack.is_none() && state.applied_version == Some(second))
    })
    .await?;
    assert!(control.nodes.get(node).context("registered")?.in_sync);
    Ok(())
}

/// Issue 15: a NACK never freezes a node silently. Control records the object the NACK names
/// (node state, the `config_rejected` event a notifier picks up), and once the operator removes that
/// object the next version still reaches the node, which ACKs it and is in sync again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_names_its_object_and_the_fix_reaches_the_node() -> Result<()> {
    let control = Control::start().await?;
    let (home, web) = control.origin_with_service("home", 8001).await?;
    control.route("app.example.com", &web).await?;
    let node = control.edge("e1", vec![home.id]).await?;
    let channel = control.channel().await?;
    let mut watch = Watch::open(&channel, &control.enroll(&channel, node).await?, 0).await?;
    let first = watch.snapshot().await?.version;
    watch.ack(first).await?;

    control.route("bad.example.com", &web).await?;
    let refused = watch.snapshot().await?.version;
    ensure!(refused > first, "versions increase");
    watch
        .send(pb::node_message::Message::Nack(pb::Nack {
            version: refused,
            reason: "routes[0].limits.rate: too high for this edge".into(),
            object: Some(pb::ConfigObject {
                kind: pb::ObjectKind::Route as i32,
                key: "bad.example.com".into(),
                field: "routes[0].limits.rate".into(),
            }),
        }))
        .await?;
    let named = store::NackObject {
        kind: "route".into(),
        key: "bad.example.com".into(),
        field: "routes[0].limits.rate".into(),
    };
    eventually("the NACK and its object in the store", || async {
        let state = control.store.get_edge(node.id()).await?.state;
        Ok(state
            .nack
            .as_ref()
            .is_some_and(|n| n.version == refused && n.object.as_ref() == Some(&named)))
    })
    .await?;
    let live = control.nodes.get(node).context("registered")?;
    ensure!(!live.in_sync, "a NACKed node is not in sync: {live:?}");
    ensure!(
        live.last_nack.as_ref().and_then(|n| n.object.as_ref()) == Some(&named),
        "the registry names the object: {live:?}"
    );
    let events = control
        .store
        .list_events(store::EventQuery {
            entity_id: Some(node.id().to_string()),
            ..Default::default()
        })
        .await?;
    let event = events
        .iter()
        .find(|e| e.action == "config_rejected")
        .context("a config_rejected event")?;
    assert_eq!(event.actor, "node:e1");
    assert_eq!(event.detail["version"], refused);
    assert_eq!(event.detail["object"]["kind"], "route");
    assert_eq!(event.detail["object"]["key"], "bad.example.com");
    assert_eq!(event.detail["object"]["field"], "routes[0].limits.rate");

    // The operator removes the object the NACK named: the next version reaches the node
    // (control does not stop sending to a node that refused one), and its ACK clears the NACK.
    let bad = control.store.route_by_hostname("bad.example.com").await?;
    control.store.delete_route(&Actor::Cli, bad.id).await?;
    let fixed = watch.snapshot().await?;
    ensure!(fixed.version > refused, "a newer version after the fix");
    let hosts: Vec<&str> = edge_of(&fixed)?
        .routes
        .iter()
        .map(|r| r.host.as_str())
        .collect();
    assert_eq!(hosts, ["app.example.com"]);
    watch.ack(fixed.version).await?;
    eventually(
        "the NACK cleared by the ACK of the fixed version",
        || async {
            let state = control.store.get_edge(node.id()).await?.state;
            Ok(state.nack.is_none() && state.applied_version == Some(fixed.version))
        },
    )
    .await?;
    assert!(control.nodes.get(node).context("registered")?.in_sync);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trusting_another_ca_fails_the_handshake() -> Result<()> {
    let control = Control::start().await?;
    let other_dir = tempfile::tempdir()?;
    let other = ControlCa::load_or_create(other_dir.path())?;
    let err = control
        .channel_trusting(other.ca_pem())
        .await
        .err()
        .context("the handshake must fail against a foreign CA")?;
    let chain = format!("{err:?}");
    assert!(
        chain.contains("UnknownIssuer") || chain.contains("certificate"),
        "{chain}"
    );
    // The right CA works.
    let channel = control.channel().await?;
    let refused = enroll(&channel, "kokoa_enr_bogus")
        .await
        .err()
        .context("refused")?;
    assert_eq!(refused.code(), Code::Unauthenticated);
    Ok(())
}

/// 200 simulated edges, each enrolled and on its own TLS connection, converge on a new version
/// after one change. Prints the fan-out time (change committed -> every edge has the snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_edges_converge_after_one_change() -> Result<()> {
    const EDGES: usize = 200;
    let control = Control::start().await?;
    let (home, web) = control.origin_with_service("home", 8001).await?;
    let setup = Instant::now();
    let mut credentials = Vec::with_capacity(EDGES);
    let channel = control.channel().await?;
    for i in 0..EDGES {
        let node = control.edge(&format!("edge-{i:03}"), vec![home.id]).await?;
        credentials.push(control.enroll(&channel, node).await?);
    }
    println!(
        "created and enrolled {EDGES} edges in {:?}",
        setup.elapsed()
    );

    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(EDGES);
    let (done_tx, mut done_rx) = mpsc::channel::<(u64, Instant)>(EDGES);
    let mut clients = tokio::task::JoinSet::new();
    for credential in credentials {
        let channel = control.channel().await?;
        let (ready_tx, done_tx) = (ready_tx.clone(), done_tx.clone());
        clients.spawn(async move {
            let mut watch = Watch::open(&channel, &credential, 0).await?;
            let first = watch.snapshot().await?;
            watch.ack(first.version).await?;
            ready_tx.send(()).await?;
            let next = watch.snapshot().await?;
            let at = Instant::now();
            ensure!(edge_of(&next)?.routes.len() == 1);
            watch.ack(next.version).await?;
            done_tx.send((next.version, at)).await?;
            // Keep the stream open until the test is done.
            let _ = watch.rx.message().await;
            anyhow::Ok(())
        });
    }
    for _ in 0..EDGES {
        tokio::time::timeout(SOON * 3, ready_rx.recv())
            .await
            .context("edges did not all get their first snapshot")?;
    }

    let changed = Instant::now();
    control.route("app.example.com", &web).await?;
    let committed = changed.elapsed();
    let version = control.store.config_version().await?;
    let mut last = changed;
    for _ in 0..EDGES {
        let (got, at) = tokio::time::timeout(SOON * 3, done_rx.recv())
            .await
            .context("edges did not all get the new snapshot")?
            .context("client failed")?;
        assert_eq!(got, version);
        last = last.max(at);
    }
    let fan_out = last - changed;
    println!(
        "fan-out to {EDGES} edges: {:.1} ms (store commit {:.1} ms)",
        fan_out.as_secs_f64() * 1e3,
        committed.as_secs_f64() * 1e3
    );

    eventually("every ACK in the registry", || async {
        let nodes = control.nodes.connected();
        Ok(nodes.len() == EDGES
            && nodes
                .iter()
                .all(|n| n.applied_version == Some(version) && n.in_sync))
    })
    .await?;
    eventually("every ACK in the store", || async {
        let edges = control.store.list_edges().await?;
        Ok(edges.len() == EDGES
            && edges
                .iter()
                .all(|e| e.state.applied_version == Some(version)))
    })
    .await?;
    println!(
        "all {EDGES} ACKs recorded {:.1} ms after the change",
        changed.elapsed().as_secs_f64() * 1e3
    );
    clients.abort_all();
    Ok(())
}

/// A fresh PostgreSQL database under `KOKOA_TEST_POSTGRES` (`None`: not configured, which
/// [`kokoa_tests::prereq::postgres`] fails under `CI=true`), and the admin URL and name to drop it with.
async fn postgres() -> Result<Option<(String, String, String)>> {
    use sqlx::{ConnectOptions, Connection};
    let Some(base) = kokoa_tests::prereq::postgres("gRPC on PostgreSQL") else {
        return Ok(None);
    };
    let name = format!("kokoa_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&base)
        .await
        .with_context(|| format!("connecting to KOKOA_TEST_POSTGRES={base}"))?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let url = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(&base)?
        .database(&name)
        .to_url_lossy()
        .to_string();
    Ok(Some((url, base, name)))
}

/// Two control replicas on one PostgreSQL database: a change committed through one replica's
/// store reaches a node watching the other, which learns of it only by polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_shared_postgres_streams_changes_made_elsewhere() -> Result<()> {
    use sqlx::Connection;
    let Some((url, base, name)) = postgres().await? else {
        return Ok(());
    };
    let key = MasterKey::generate();
    let writer = store::open(&url, key.clone()).await?;
    let control = Control::start_with(store::open(&url, key).await?, tempfile::tempdir()?).await?;
    let result = async {
        let origin = writer
            .create_origin(&Actor::Cli, NewOrigin::named("home".parse()?))
            .await?;
        let service = writer
            .create_service(
                &Actor::Cli,
                origin.id,
                NewService::http("web".parse()?, store::Port::new(8001)?),
            )
            .await?;
        let edge = writer
            .create_edge(
                &Actor::Cli,
                NewEdge {
                    origins: vec![origin.id],
                    ..NewEdge::named("e1".parse()?)
                },
            )
            .await?;
        let node = NodeId::Edge(edge.id);
        let channel = control.channel().await?;
        let mut watch = Watch::open(&channel, &control.enroll(&channel, node).await?, 0).await?;
        let first = watch.snapshot().await?;
        ensure!(edge_of(&first)?.routes.is_empty());
        watch.ack(first.version).await?;

        writer
            .create_route(
                &Actor::Cli,
                NewRoute::to("app.example.com".parse()?, service.id),
            )
            .await?;
        let version = writer.config_version().await?;
        let next = watch.snapshot().await?;
        assert_eq!(next.version, version);
        assert_eq!(edge_of(&next)?.routes[0].host, "app.example.com");
        watch.ack(version).await?;
        eventually("the ACK visible through the other replica", || async {
            Ok(writer.get_edge(edge.id).await?.state.applied_version == Some(version))
        })
        .await
    }
    .await;
    drop(control);
    drop(writer);
    if let Ok(mut admin) = sqlx::PgConnection::connect(&base).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
    result
}

/// Records what the node crate's client applies.
#[derive(Default)]
struct RecordingApplier {
    applied: std::sync::Mutex<Vec<pb::Snapshot>>,
}

impl kokoa_node::control::Applier for RecordingApplier {
    fn kind(&self) -> pb::NodeKind {
        pb::NodeKind::Edge
    }

    fn apply(
        &self,
        snapshot: &pb::Snapshot,
    ) -> impl std::future::Future<Output = Result<(), kokoa_model::ModelError>> + Send {
        let result = match &snapshot.node {
            Some(pb::snapshot::Node::Edge(_)) => {
                self.applied
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(snapshot.clone());
                Ok(())
            }
            other => Err(kokoa_model::ModelError::value(format!(
                "not an edge snapshot: {other:?}"
            ))),
        };
        async move { result }
    }

    fn status(&self) -> kokoa_node::control::NodeStatus {
        kokoa_node::control::NodeStatus {
            active_connections: 7,
            ..Default::default()
        }
    }
}

/// The contract between this server and the nodes' client (`kokoa_node::control`): it enrolls
/// from a token file, applies and ACKs the snapshot, follows a change and heartbeats at the
/// interval control sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_crates_client_enrolls_applies_and_acks() -> Result<()> {
    let control = Control::start().await?;
    let (home, web) = control.origin_with_service("home", 8001).await?;
    control.route("app.example.com", &web).await?;
    let node = control.edge("e1", vec![home.id]).await?;

    let state = tempfile::tempdir()?;
    std::fs::write(state.path().join("control-ca.pem"), &control.ca_pem)?;
    std::fs::write(
        state.path().join("enroll.token"),
        control.token(node).await?,
    )?;
    let settings = kokoa_node::control::ControlSettings::from_file(
        kokoa_node::control::FileControl {
            url: Some(format!("https://localhost:{}", control.addr.port())),
            ca_file: Some("control-ca.pem".into()),
            token_file: Some("enroll.token".into()),
            state_dir: Some("state".into()),
        },
        Some(state.path()),
    )?;
    let applier = Arc::new(RecordingApplier::default());
    let client = kokoa_node::control::ControlClient::new(settings, applier.clone());
    let mut status = client.status();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(client.run(async move {
        let _ = stopped.await;
    }));

    let first = control.store.config_version().await?;
    tokio::time::timeout(SOON, status.wait_for(|s| s.applied_version == first))
        .await
        .context("the node did not apply the first snapshot")??;
    eventually("the node's ACK in the store", || async {
        Ok(control
            .store
            .get_edge(node.id())
            .await?
            .state
            .applied_version
            == Some(first))
    })
    .await?;

    control.route("www.example.com", &web).await?;
    let second = control.store.config_version().await?;
    tokio::time::timeout(SOON, status.wait_for(|s| s.applied_version == second))
        .await
        .context("the node did not apply the change")??;
    let hosts: Vec<String> = {
        let applied = applier.applied.lock().unwrap_or_else(|e| e.into_inner());
        let last = applied.last().context("applied")?;
        edge_of(last)?
            .routes
            .iter()
            .map(|r| r.host.clone())
            .collect()
    };
    assert_eq!(hosts, ["app.example.com", "www.example.com"]);

    // Heartbeats every second (the interval control sent) reach the store.
    eventually("a heartbeat from the node", || async {
        let state = control.store.get_edge(node.id()).await?.state;
        Ok(state
            .heartbeat
            .is_some_and(|h| h["active_connections"] == 7 && h["applied_version"] == second))
    })
    .await?;
    let info = control.nodes.get(node).context("registered")?;
    assert!(info.connected && info.in_sync, "{info:?}");

    let _ = stop.send(());
    tokio::time::timeout(SOON, task).await??;
    Ok(())
}

/// A node whose connection stays up but which stops reading (here: a 64-byte HTTP/2 window it
/// never reopens) loses its stream after `send_timeout` instead of pinning a session, and does
/// not keep control from shutting down beyond `shutdown_grace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_reading_is_dropped_and_cannot_block_shutdown() -> Result<()> {
    let mut control = Control::start_with_options(GrpcOptions {
        send_timeout: Duration::from_millis(300),
        shutdown_grace: Duration::from_millis(500),
        ..Control::options()
    })
    .await?;
    let (home, web) = control.origin_with_service("home", 8001).await?;
    let node = control.edge("e1", vec![home.id]).await?;
    let credential = control.enroll(&control.channel().await?, node).await?;

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&control.ca_pem))
        .domain_name("localhost");
    let stingy = Endpoint::from_shared(format!("https://{}", control.addr))?
        .tls_config(tls)?
        .initial_stream_window_size(Some(64))
        .initial_connection_window_size(Some(64))
        .connect()
        .await?;
    // Opened and never read.
    let _watch = Watch::open(&stingy, &credential, 0).await?;
    eventually("the node connected", || async {
        Ok(control.nodes.get(node).is_some_and(|n| n.connected))
    })
    .await?;
    // Changes until the unread snapshots fill the window, the stream's queue and one pending
    // send. Under load, changes made in quick succession coalesce into one snapshot, so the
    // number needed is not fixed: keep changing, one every 50 ms, for at most 100 changes.
    let mut changes = 0;
    while control.nodes.get(node).is_some_and(|n| n.connected) {
        anyhow::ensure!(
            changes < 100,
            "the stuck node's stream stayed open through {changes} changes"
        );
        control
            .route(&format!("r{changes}.example.com"), &web)
            .await?;
        changes += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // And another stuck stream does not hold shutdown past the grace period.
    let _watch2 = Watch::open(&stingy, &credential, 0).await?;
    for i in changes..changes + 6 {
        control.route(&format!("r{i}.example.com"), &web).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    control.shutdown().await?;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    Ok(())
}
