//! `kokoa_edge::run` in control mode against a real tonic control peer (TLS with a pinned CA,
//! see `control_support`), forwarding through a real tunnel to a real `kokoa_origin` and app:
//! the edge enrolls, applies snapshots (routes, certificates, TCP routes, its key) and ACKs,
//! NACKs a bad one and keeps serving the old, persists the applied snapshot (0600) and serves
//! it after a restart with control down, reconnects when control comes back and resumes from
//! its version; a refused credential is logged and a fresh token enrolls again.

mod control_support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use control_support::{Pki, Seen, TestControl};
use kokoa_edge::EdgeConfig;
use kokoa_proto::v1::{
    snapshot, Certificate, EdgePeer, EdgeSnapshot, NodeKind, Route, Snapshot, TcpRoute,
};
use kokoa_tunnel::key::PrivateKey;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod common;
use common::AcceptAny;

const APP_BODY: &str = "hello from the app";

/// Every log line of this test binary, for asserting on what the edge logged.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_udp() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An HTTP/1.1 app answering every request with [`APP_BODY`] (keep-alive).
async fn app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buffer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buffer.drain(..end);
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{APP_BODY}",
                        APP_BODY.len()
                    );
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A `kokoa_origin` (file mode) on a fixed UDP port serving the app as port 8001 to `edge`.
async fn origin(
    origin_key: &PrivateKey,
    edge: kokoa_tunnel::key::PublicKey,
    udp: SocketAddr,
    app: SocketAddr,
) -> (oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>) {
    let text = format!(
        "[origin]\nadmin = \"{}\"\naddress = \"10.100.9.1\"\ndrain_timeout = 0\n[tunnel]\nprivate_key = \"{}\"\n\
         listen = \"{udp}\"\n[[edges]]\nname = \"edge\"\npublic_key = \"{edge}\"\n\
         address = \"10.100.9.10\"\n[[services]]\nname = \"web\"\nport = 8001\nlocal = \"{app}\"\n",
        free_tcp(),
        origin_key.to_base64()
    );
    let config = kokoa_origin::OriginConfig::from_toml(&text, None).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(kokoa_origin::run(config, async {
        let _ = stopped.await;
    }));
    (stop, task)
}

/// A self-signed certificate for `names` as control sends it.
fn certificate(names: &[&str]) -> (Certificate, Vec<u8>) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names.clone()).unwrap();
    (
        Certificate {
            chain_pem: generated.cert.pem(),
            key_pem: generated.key_pair.serialize_pem(),
            id: names.join(","),
        },
        generated.cert.der().to_vec(),
    )
}

struct Scenario {
    edge_key: PrivateKey,
    origin_key: PrivateKey,
    origin_udp: SocketAddr,
    certificate: Certificate,
}

impl Scenario {
    fn snapshot(&self, version: u64, edit: impl FnOnce(&mut EdgeSnapshot)) -> Snapshot {
        let mut edge = EdgeSnapshot {
            name: "edge-1".into(),
            private_key: self.edge_key.to_base64(),
            origins: vec![EdgePeer {
                name: "home".into(),
                public_key: self.origin_key.public_key().to_base64(),
                endpoint: self.origin_udp.to_string(),
                address: "10.100.9.10".into(),
                origin_address: "10.100.9.1".into(),
                keepalive: 0,
            }],
            routes: vec![Route {
                host: "app.test".into(),
                aliases: vec![],
                origin: "home".into(),
                port: 8001,
                limits: None,
            }],
            certificates: vec![self.certificate.clone()],
            ..EdgeSnapshot::default()
        };
        edit(&mut edge);
        Snapshot {
            version,
            heartbeat_interval_seconds: 1,
            node: Some(snapshot::Node::Edge(edge)),
        }
    }
}

/// `GET /` over HTTPS with SNI and Host `host`: the response text and the served leaf.
async fn https_get(https: SocketAddr, host: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(https).await?;
    let mut tls = connector
        .connect(ServerName::try_from(host.to_owned())?, tcp)
        .await?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| cert.to_vec())
        .unwrap_or_default();
    tls.write_all(
        format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await?;
    Ok((response, leaf))
}

/// Retries `https_get` until it answers 200 (bounded), for the moments after a restart.
async fn get_ok(https: SocketAddr, host: &str) -> (String, Vec<u8>) {
    let mut last = String::new();
    for _ in 0..100 {
        match https_get(https, host).await {
            Ok((response, leaf)) if response.starts_with("HTTP/1.1 200") => {
                return (response, leaf)
            }
            Ok((response, _)) => last = response,
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no 200 from the edge for {host}: {last}");
}

/// A raw HTTP exchange through a TCP route.
async fn tcp_get(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: raw\r\nconnection: close\r\n\r\n")
        .await?;
    let mut response = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut response)).await??;
    Ok(String::from_utf8_lossy(&response[..n]).into_owned())
}

/// `GET path` on the admin listener.
async fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(admin).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

struct Edge {
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Edge {
    fn start(config: &Path) -> Self {
        let config = EdgeConfig::load(config).unwrap();
        assert!(config.control.is_some());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(kokoa_edge::run(config, async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("edge stops")
            .expect("edge task")
            .expect("edge ran");
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_follows_control_and_runs_without_it() {
    let _ = logs();
    let mut control = TestControl::start(
        NodeKind::Edge,
        "127.0.0.1:0".parse().unwrap(),
        Pki::new(),
        &["tok-1"],
    )
    .await;
    let (certificate, leaf_der) = certificate(&["app.test", "www.app.test", "new.test"]);
    let scenario = Scenario {
        edge_key: PrivateKey::generate(),
        origin_key: PrivateKey::generate(),
        origin_udp: free_udp(),
        certificate,
    };
    let app = app().await;
    let (origin_stop, origin_task) = origin(
        &scenario.origin_key,
        scenario.edge_key.public_key(),
        scenario.origin_udp,
        app,
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let https = free_tcp();
    let admin = free_tcp();
    let text = format!(
        "[edge]\nhttps = \"{https}\"\nhttp = \"{}\"\nadmin = \"{admin}\"\ndrain_timeout = 0\n\
         [tunnel]\nlisten = \"127.0.0.1:0\"\n{}",
        free_tcp(),
        control.control_table(dir.path(), Some("tok-1"))
    );
    let config_path = dir.path().join("edge.toml");
    std::fs::File::create(&config_path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();

    // First start: enroll with the token, say "nothing applied yet", apply and ACK v1.
    control.push(scenario.snapshot(1, |_| {}));
    let edge = Edge::start(&config_path);
    control
        .expect("enrollment", |e| *e == Seen::Enrolled("tok-1".into()))
        .await;
    control.expect("hello", |e| *e == Seen::Hello(0)).await;
    control.expect("ack 1", |e| *e == Seen::Ack(1)).await;
    let (response, leaf) = get_ok(https, "app.test").await;
    assert!(response.ends_with(APP_BODY), "{response}");
    assert_eq!(leaf, leaf_der, "the edge serves control's certificate");

    // A snapshot naming an unknown origin is refused as a whole; the old one keeps serving.
    control.push(scenario.snapshot(2, |edge| {
        edge.routes[0].origin = "nowhere".into();
        edge.routes.push(Route {
            host: "new.test".into(),
            origin: "home".into(),
            port: 8001,
            ..Route::default()
        });
    }));
    let nack = control
        .expect("nack 2", |e| matches!(e, Seen::Nack(2, _)))
        .await;
    let Seen::Nack(_, reason) = nack else {
        unreachable!()
    };
    assert!(reason.contains("unknown origin \"nowhere\""), "{reason}");
    let (response, _) = https_get(https, "app.test").await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (response, _) = https_get(https, "new.test").await.unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");

    // A TCP route comes up with its snapshot; heartbeats report the applied version.
    let tcp = free_tcp();
    control.push(scenario.snapshot(3, |edge| {
        edge.tcp_routes.push(TcpRoute {
            listen_port: u32::from(tcp.port()),
            origin: "home".into(),
            port: 8001,
            ..TcpRoute::default()
        });
    }));
    control.expect("ack 3", |e| *e == Seen::Ack(3)).await;
    let response = tcp_get(tcp).await.unwrap();
    assert!(response.ends_with(APP_BODY), "{response}");
    control
        .expect("heartbeat", |e| matches!(e, Seen::Heartbeat(3, _)))
        .await;

    // /metrics says which version runs and that one snapshot was refused.
    let metrics = admin_get(admin, "/metrics").await;
    for line in [
        "kokoa_control_connected 1",
        "kokoa_control_applied_version 3",
        "kokoa_control_acks_total 2",
        "kokoa_control_nacks_total 1",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }

    // The applied snapshot and the credential are on disk, private.
    let state = dir.path().join("state");
    assert_eq!(mode(&state.join("snapshot.pb")), 0o600);
    assert_eq!(mode(&state.join("credential")), 0o600);
    let persisted = kokoa_node::control::load_snapshot(&state).unwrap().unwrap();
    assert_eq!(persisted.version, 3);

    // Control goes away, the edge restarts: it serves from the persisted snapshot.
    edge.stop().await;
    control.stop().await;
    let edge = Edge::start(&config_path);
    let (response, leaf) = get_ok(https, "app.test").await;
    assert!(response.ends_with(APP_BODY), "{response}");
    assert_eq!(leaf, leaf_der);
    let response = tcp_get(tcp).await.unwrap();
    assert!(response.ends_with(APP_BODY), "{response}");

    // Control comes back: the edge reconnects (with its stored credential), resumes from v3
    // and converges to the newest version: the TCP route goes, an alias comes.
    control.restart().await;
    control.expect("hello 3", |e| *e == Seen::Hello(3)).await;
    control.push(scenario.snapshot(4, |edge| {
        edge.routes[0].aliases.push("www.app.test".into());
    }));
    control.expect("ack 4", |e| *e == Seen::Ack(4)).await;
    let (response, _) = get_ok(https, "www.app.test").await;
    assert!(response.ends_with(APP_BODY), "{response}");
    let mut closed = false;
    for _ in 0..50 {
        if TcpStream::connect(tcp).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "the removed TCP route stopped listening");

    edge.stop().await;
    let _ = origin_stop.send(());
    let _ = origin_task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credential_is_logged_and_a_new_token_enrolls_again() {
    let logs = logs();
    let mut control = TestControl::start(
        NodeKind::Edge,
        "127.0.0.1:0".parse().unwrap(),
        Pki::new(),
        &[],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let admin = free_tcp();
    let text = format!(
        "[edge]\nhttps = \"{}\"\nhttp = \"{}\"\nadmin = \"{admin}\"\ndrain_timeout = 0\n\
         [tunnel]\nlisten = \"127.0.0.1:0\"\n{}",
        free_tcp(),
        free_tcp(),
        control.control_table(dir.path(), None)
    );
    let config_path = dir.path().join("edge.toml");
    std::fs::write(&config_path, text).unwrap();
    // A credential control does not know (revoked, or from another control).
    std::fs::create_dir(dir.path().join("state")).unwrap();
    std::fs::write(dir.path().join("state/credential"), "revoked-credential").unwrap();

    let edge = Edge::start(&config_path);
    control.expect("refusal", |e| *e == Seen::Refused).await;
    control.expect("retry", |e| *e == Seen::Refused).await;
    let mut logged = false;
    for _ in 0..100 {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        if text.contains("control refused this node's credential") {
            assert!(text.contains("ERROR"), "logged as an error");
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged, "the refusal is logged");

    // The edge keeps running meanwhile.
    let answer = admin_get(admin, "/healthz").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let metrics = admin_get(admin, "/metrics").await;
    assert!(metrics.contains("kokoa_control_connected 0"), "{metrics}");

    // The operator writes a fresh token: the edge enrolls again and follows control.
    control.add_token("tok-2");
    std::fs::write(dir.path().join("enroll.token"), "tok-2").unwrap();
    control.push(Snapshot {
        version: 1,
        heartbeat_interval_seconds: 1,
        node: Some(snapshot::Node::Edge(EdgeSnapshot {
            name: "edge-2".into(),
            private_key: PrivateKey::generate().to_base64(),
            ..EdgeSnapshot::default()
        })),
    });
    control
        .expect("re-enrollment", |e| *e == Seen::Enrolled("tok-2".into()))
        .await;
    control.expect("ack 1", |e| *e == Seen::Ack(1)).await;
    edge.stop().await;
}
