//! `kokoa_origin::run` in control mode against a real tonic control peer (TLS with a pinned
//! CA; the peer is shared with the edge's tests), with the test playing the edge through its
//! own `kokoa_tunnel::Tunnel`: the origin enrolls, applies its address, edges and services
//! and ACKs, NACKs a bad snapshot and keeps serving, moves a service to another port,
//! persists the applied snapshot (0600), serves it after a restart with control down and
//! resumes from its version when control comes back.

#[path = "../../edge/tests/control_support/mod.rs"]
mod control_support;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use control_support::{Pki, Seen, TestControl};
use kokoa_origin::OriginConfig;
use kokoa_proto::v1::{snapshot, NodeKind, OriginPeer, OriginSnapshot, Service, Snapshot};
use kokoa_tunnel::key::PrivateKey;
use kokoa_tunnel::{Incoming, PeerConfig, Tunnel, TunnelConfig, TunnelError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const ORIGIN: Ipv4Addr = Ipv4Addr::new(10, 100, 8, 1);
const EDGE: Ipv4Addr = Ipv4Addr::new(10, 100, 8, 10);

async fn echo_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

struct Origin {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Origin {
    fn start(config: &Path) -> Self {
        let config = OriginConfig::load(config).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(kokoa_origin::run(config, async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("origin stops")
            .expect("origin task")
            .expect("origin ran");
    }
}

/// Connects through the tunnel and echoes `ping`; retried (bounded) while the tunnel or the
/// config is still coming up.
async fn echo(edge: &Tunnel, origin: kokoa_tunnel::key::PublicKey, port: u16) {
    let mut last = String::new();
    for _ in 0..50 {
        match edge
            .connect(
                &origin,
                SocketAddrV4::new(ORIGIN, port),
                Duration::from_secs(2),
            )
            .await
        {
            Ok(mut stream) => {
                stream.write_all(b"ping").await.unwrap();
                stream.shutdown().await.unwrap();
                let mut answer = Vec::new();
                stream.read_to_end(&mut answer).await.unwrap();
                assert_eq!(answer, b"ping");
                return;
            }
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no stream to port {port}: {last}");
}

/// The edge the test plays: a tunnel that knows the origin's key (the origin dials it).
async fn test_edge(origin_key: &PrivateKey) -> (Tunnel, Incoming, PrivateKey) {
    let edge_key = PrivateKey::generate();
    let (edge, incoming) = Tunnel::bind(TunnelConfig::new(
        edge_key.clone(),
        "127.0.0.1:0".parse().unwrap(),
    ))
    .await
    .unwrap();
    edge.set_peers(vec![PeerConfig {
        public_key: origin_key.public_key(),
        endpoint: None,
        allowed_ips: vec![ipnet::Ipv4Net::from(ORIGIN)],
        local_address: EDGE,
        persistent_keepalive: None,
    }]);
    (edge, incoming, edge_key)
}

/// The origin's snapshot: `home` with one edge (the test's, kept alive every second).
fn origin_snapshot(
    version: u64,
    heartbeat_interval_seconds: u32,
    origin_key: &PrivateKey,
    edge: (&PrivateKey, SocketAddr),
    services: Vec<Service>,
) -> Snapshot {
    Snapshot {
        version,
        heartbeat_interval_seconds,
        node: Some(snapshot::Node::Origin(OriginSnapshot {
            name: "home".into(),
            private_key: origin_key.to_base64(),
            address: ORIGIN.to_string(),
            edges: vec![OriginPeer {
                name: "edge".into(),
                public_key: edge.0.public_key().to_base64(),
                endpoint: edge.1.to_string(),
                address: EDGE.to_string(),
                keepalive: 1,
            }],
            services,
            tunnel: None,
        })),
    }
}

/// Writes the origin's config in `dir` (control mode, enrolling with `origin-token`).
fn origin_config(control: &TestControl, dir: &Path) -> PathBuf {
    let text = format!(
        "[origin]\nadmin = \"127.0.0.1:0\"\ndrain_timeout = 0\n[tunnel]\nlisten = \"127.0.0.1:0\"\n{}",
        control.control_table(dir, Some("origin-token"))
    );
    let config_path = dir.join("origin.toml");
    std::fs::write(&config_path, text).unwrap();
    config_path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_follows_control_and_runs_without_it() {
    let mut control = TestControl::start(
        NodeKind::Origin,
        "127.0.0.1:0".parse().unwrap(),
        Pki::new(),
        &["origin-token"],
    )
    .await;
    let origin_key = PrivateKey::generate();
    let (edge, _incoming, edge_key) = test_edge(&origin_key).await;
    let app = echo_app().await;
    let snapshot = |version: u64, services: Vec<Service>| {
        origin_snapshot(
            version,
            1,
            &origin_key,
            (&edge_key, edge.local_addr()),
            services,
        )
    };
    let web = |port: u32| Service {
        name: format!("web{port}"),
        port,
        local: app.to_string(),
        protocol: "tcp".into(),
        health_path: String::new(),
    };

    let dir = tempfile::tempdir().unwrap();
    let config_path = origin_config(&control, dir.path());

    control.push(snapshot(1, vec![web(8001)]));
    let origin = Origin::start(&config_path);
    control
        .expect("enrollment", |e| {
            *e == Seen::Enrolled("origin-token".into())
        })
        .await;
    control.expect("hello", |e| *e == Seen::Hello(0)).await;
    control.expect("ack 1", |e| *e == Seen::Ack(1)).await;
    echo(&edge, origin_key.public_key(), 8001).await;

    // Two services on one port: refused as a whole, the running config stays.
    let mut clash = web(8001);
    clash.name = "other".into();
    control.push(snapshot(2, vec![web(8001), clash]));
    let nack = control
        .expect("nack 2", |e| matches!(e, Seen::Nack(2, _)))
        .await;
    assert!(
        matches!(&nack, Seen::Nack(_, reason) if reason.contains("services[1].port")),
        "{nack:?}"
    );
    echo(&edge, origin_key.public_key(), 8001).await;

    // The service moves: the old port is refused, the new one is served.
    control.push(snapshot(3, vec![web(8002)]));
    control.expect("ack 3", |e| *e == Seen::Ack(3)).await;
    echo(&edge, origin_key.public_key(), 8002).await;
    let refused = edge
        .connect(
            &origin_key.public_key(),
            SocketAddrV4::new(ORIGIN, 8001),
            Duration::from_secs(5),
        )
        .await;
    assert!(matches!(refused, Err(TunnelError::Refused)), "{refused:?}");

    let state = dir.path().join("state");
    let mode = std::fs::metadata(state.join("snapshot.pb"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let persisted = kokoa_node::control::load_snapshot(&state).unwrap().unwrap();
    assert_eq!(persisted.version, 3);

    // Restart with control down: the persisted config is served.
    origin.stop().await;
    control.stop().await;
    let origin = Origin::start(&config_path);
    echo(&edge, origin_key.public_key(), 8002).await;

    // Control is back: the origin resumes from v3.
    control.restart().await;
    control.expect("hello 3", |e| *e == Seen::Hello(3)).await;
    control.expect("ack 3 again", |e| *e == Seen::Ack(3)).await;

    // Key rotation: control sends the origin a new key and the edge learns the new public key;
    // both re-key in place and an open stream carries on.
    let mut stream = edge
        .connect(
            &origin_key.public_key(),
            SocketAddrV4::new(ORIGIN, 8002),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    stream.write_all(b"a").await.unwrap();
    stream.read_exact(&mut byte).await.unwrap();
    assert_eq!(&byte, b"a");
    let rotated = PrivateKey::generate();
    let mut next = snapshot(4, vec![web(8002)]);
    if let Some(snapshot::Node::Origin(origin)) = &mut next.node {
        origin.private_key = rotated.to_base64();
    }
    control.push(next);
    control.expect("ack 4", |e| *e == Seen::Ack(4)).await;
    edge.set_peers(vec![PeerConfig {
        public_key: rotated.public_key(),
        endpoint: None,
        allowed_ips: vec![ipnet::Ipv4Net::from(ORIGIN)],
        local_address: EDGE,
        persistent_keepalive: None,
    }]);
    stream.write_all(b"b").await.unwrap();
    tokio::time::timeout(Duration::from_secs(15), stream.read_exact(&mut byte))
        .await
        .expect("the stream survives the rotation")
        .unwrap();
    assert_eq!(&byte, b"b");
    echo(&edge, rotated.public_key(), 8002).await;
    origin.stop().await;
}

/// With a 60 s heartbeat interval, the origin still reports its tunnel to the edge coming up
/// within seconds (control's health and DNS wait for it), and sends nothing more while nothing
/// changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_coming_up_is_reported_before_the_next_heartbeat() {
    let mut control = TestControl::start(
        NodeKind::Origin,
        "127.0.0.1:0".parse().unwrap(),
        Pki::new(),
        &["origin-token"],
    )
    .await;
    let origin_key = PrivateKey::generate();
    let (edge, _incoming, edge_key) = test_edge(&origin_key).await;
    control.push(origin_snapshot(
        1,
        60,
        &origin_key,
        (&edge_key, edge.local_addr()),
        Vec::new(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let config_path = origin_config(&control, dir.path());

    let origin = Origin::start(&config_path);
    let started = tokio::time::Instant::now();
    control.expect("ack 1", |e| *e == Seen::Ack(1)).await;
    // `expect` gives up after 20 s, well before the interval's next heartbeat.
    control
        .expect("a heartbeat with the edge up", |e| {
            *e == Seen::Heartbeat(1, 1)
        })
        .await;
    assert!(started.elapsed() < Duration::from_secs(30));

    // Nothing changes: no heartbeat for the next 3 s (the next regular one is a minute away).
    tokio::time::sleep(Duration::from_secs(3)).await;
    while let Ok(event) = control.seen.try_recv() {
        assert!(
            !matches!(event, Seen::Heartbeat(..)),
            "a heartbeat without a change: {event:?}"
        );
    }
    origin.stop().await;
}
