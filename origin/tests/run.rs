//! `kokoa_origin::run` in process, with the test playing the edge through its own
//! `kokoa_tunnel::Tunnel`: half-close in both directions, a down app seen as a reset, metrics,
//! and the drain on shutdown.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use kokoa_origin::OriginConfig;
use kokoa_tunnel::key::PrivateKey;
use kokoa_tunnel::{PeerConfig, Tunnel, TunnelConfig, TunnelError, TunnelStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

const ORIGIN: Ipv4Addr = Ipv4Addr::new(10, 100, 7, 1);
const EDGE: Ipv4Addr = Ipv4Addr::new(10, 100, 7, 10);
const TIMEOUT: Duration = Duration::from_secs(10);

struct Fixture {
    edge: Tunnel,
    origin_key: kokoa_tunnel::key::PublicKey,
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    origin: JoinHandle<anyhow::Result<()>>,
}

impl Fixture {
    /// Starts an origin with `services` (`(port, local)`) and a drain time of `drain` seconds.
    async fn start(services: &[(u16, SocketAddr)], drain: u64) -> Self {
        let edge_key = PrivateKey::generate();
        let origin_key = PrivateKey::generate();
        let (edge, _incoming) = Tunnel::bind(TunnelConfig::new(
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
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut text = format!(
            "[origin]\nadmin = \"{admin}\"\naddress = \"{ORIGIN}\"\ndrain_timeout = {drain}\n\
             connect_timeout = 2\n[tunnel]\nprivate_key = \"{}\"\nlisten = \"127.0.0.1:0\"\n\
             [[edges]]\nname = \"test-edge\"\npublic_key = \"{}\"\nendpoint = \"{}\"\n\
             address = \"{EDGE}\"\nkeepalive = 1\n",
            origin_key.to_base64(),
            edge_key.public_key(),
            edge.local_addr()
        );
        for (port, local) in services {
            text.push_str(&format!(
                "[[services]]\nname = \"svc{port}\"\nport = {port}\nlocal = \"{local}\"\n"
            ));
        }
        let config = OriginConfig::from_toml(&text, None).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let origin = tokio::spawn(kokoa_origin::run(config, async {
            let _ = stopped.await;
        }));
        Self {
            edge,
            origin_key: origin_key.public_key(),
            admin,
            stop: Some(stop),
            origin,
        }
    }

    async fn connect(&self, port: u16) -> Result<TunnelStream, TunnelError> {
        self.edge
            .connect(&self.origin_key, SocketAddrV4::new(ORIGIN, port), TIMEOUT)
            .await
    }

    async fn metrics(&self) -> String {
        let mut stream = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }
}

/// An app that sends a banner, half-closes, then reports everything it reads afterwards.
async fn banner_app() -> (SocketAddr, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                stream.write_all(b"banner").await.unwrap();
                stream.shutdown().await.unwrap();
                let mut got = Vec::new();
                stream.read_to_end(&mut got).await.unwrap();
                // The origin's own service probe connects and closes without a byte: only a
                // client that sent something is reported.
                if !got.is_empty() {
                    let _ = tx.send(got).await;
                }
            });
        }
    });
    (addr, rx)
}

/// An app that echoes and half-closes after the client does.
async fn echo_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_both_ways_down_app_resets_and_metrics() {
    let echo = echo_app().await;
    let (banner, mut banner_rx) = banner_app().await;
    let fixture = Fixture::start(&[(7001, echo), (7002, banner), (7003, closed_port())], 5).await;

    // Client half-closes first: the echo still comes back whole.
    let mut stream = fixture.connect(7001).await.expect("service port accepts");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    stream.write_all(&payload).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut echoed))
        .await
        .expect("echo ends")
        .unwrap();
    assert_eq!(echoed, payload);

    // App half-closes first: the client still gets to send afterwards.
    let mut stream = fixture.connect(7002).await.expect("service port accepts");
    let mut got = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut got))
        .await
        .expect("banner ends")
        .unwrap();
    assert_eq!(got, b"banner");
    stream.write_all(b"after the app's FIN").await.unwrap();
    stream.shutdown().await.unwrap();
    let seen = tokio::time::timeout(TIMEOUT, banner_rx.recv())
        .await
        .expect("app reports")
        .unwrap();
    assert_eq!(seen, b"after the app's FIN");

    // The app behind 7003 is down: the stream is reset, not closed cleanly. Depending on how
    // fast the reset follows the SYN-ACK, the connect itself fails or the first read does.
    match fixture.connect(7003).await {
        Err(TunnelError::Refused) => {}
        Err(other) => panic!("expected a reset, got {other}"),
        Ok(mut stream) => {
            let mut buf = [0u8; 16];
            let read = tokio::time::timeout(TIMEOUT, stream.read(&mut buf))
                .await
                .expect("reset arrives");
            match read {
                Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset),
                Ok(n) => panic!("expected a reset, read {n} bytes"),
            }
        }
    }

    // Not a service: refused by the tunnel.
    assert!(matches!(
        fixture.connect(7004).await,
        Err(TunnelError::Refused)
    ));

    let metrics = fixture.metrics().await;
    for line in [
        "kokoa_origin_streams_accepted_total{service=\"svc7001\"} 1",
        "kokoa_origin_streams_accepted_total{service=\"svc7003\"} 1",
        "kokoa_origin_local_connect_failures_total{service=\"svc7003\",reason=\"refused\"} 1",
        "kokoa_origin_bytes_total{service=\"svc7001\",direction=\"to_local\"} 300000",
        "kokoa_origin_bytes_total{service=\"svc7002\",direction=\"to_tunnel\"} 6",
    ] {
        assert!(metrics.contains(line), "missing {line}\n{metrics}");
    }
    assert!(metrics.contains("kokoa_tunnel_peer_last_handshake_age_seconds{edge=\"test-edge\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_drains_for_the_bounded_time() {
    let echo = echo_app().await;
    let mut fixture = Fixture::start(&[(7001, echo)], 1).await;
    // An open stream that never ends by itself.
    let mut open = fixture.connect(7001).await.expect("service port accepts");
    open.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    open.read_exact(&mut one).await.unwrap();

    let started = Instant::now();
    fixture.stop.take().unwrap().send(()).unwrap();
    // New streams are refused while draining.
    let refused = tokio::time::timeout(TIMEOUT, async {
        loop {
            match fixture.connect(7001).await {
                Err(TunnelError::Refused) => break,
                Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert!(refused.is_ok(), "new streams still accepted while draining");
    // The open stream keeps working during the drain.
    open.write_all(b"y").await.unwrap();
    open.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"y");

    let result = tokio::time::timeout(Duration::from_secs(5), &mut fixture.origin)
        .await
        .expect("run returns after the drain time")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "drain took {took:?} with a 1 s drain_timeout"
    );
}
