//! The edge's protection against hostile and heavy clients, on loopback with a plain-TCP dialer
//! standing in for the tunnel. Clients bind distinct loopback source addresses (127.0.0.2,
//! 127.0.0.3, ...) to act as different client keys.
//!
//! Why this file is longer than ~1,000 lines: one hostile client per test, all against the same
//! in-process edge harness; the attacks read best side by side.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kokoa_edge::config::EdgeConfig;
use kokoa_edge::dial::TcpDialer;
use kokoa_edge::metrics::Metrics;
use kokoa_edge::sni::CertStore;
use kokoa_edge::{Edge, Listeners};
use kokoa_tunnel::key::PrivateKey;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

mod common;
use common::AcceptAny;

const DEADLINE: Duration = Duration::from_secs(10);

type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What the app saw: request bodies being read, bodies that ended in an error (the edge closed
/// the connection mid-body), endless responses being sent and those cut off, connections.
#[derive(Debug, Default)]
struct AppStats {
    bodies_reading: AtomicUsize,
    bodies_cut: AtomicUsize,
    streams_sending: AtomicUsize,
    streams_cut: AtomicUsize,
    connections_open: AtomicUsize,
    requests: AtomicUsize,
    /// The last request head, as `METHOD target` and `name: value` lines.
    last_head: std::sync::Mutex<String>,
}

/// Decrements a gauge when dropped; counts a cut when dropped before `done`.
struct Gauge {
    stats: Arc<AppStats>,
    body: bool,
    done: bool,
}

impl Drop for Gauge {
    fn drop(&mut self) {
        let (gauge, cut) = if self.body {
            (&self.stats.bodies_reading, &self.stats.bodies_cut)
        } else {
            (&self.stats.streams_sending, &self.stats.streams_cut)
        };
        gauge.fetch_sub(1, Ordering::SeqCst);
        if !self.done {
            cut.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A local HTTP/1.1 app: `/big` streams 64 KiB chunks until the connection goes away; other
/// paths answer `app body=<n bytes>` after reading the whole body. Every request's head is
/// recorded.
async fn app() -> (SocketAddr, Arc<AppStats>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(AppStats::default());
    let app_stats = stats.clone();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let stats = app_stats.clone();
            connections.spawn(async move {
                stats.connections_open.fetch_add(1, Ordering::SeqCst);
                let service_stats = stats.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    answer(service_stats.clone(), request)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                stats.connections_open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, stats, task)
}

async fn answer(
    stats: Arc<AppStats>,
    request: Request<Incoming>,
) -> Result<Response<AppBody>, Infallible> {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let mut head = format!("{} {}\n", request.method(), request.uri());
    for (name, value) in request.headers() {
        head.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
    }
    *stats.last_head.lock().unwrap() = head;
    if request.uri().path() == "/big" {
        stats.streams_sending.fetch_add(1, Ordering::SeqCst);
        let guard = Gauge {
            stats: stats.clone(),
            body: false,
            done: false,
        };
        let chunks = futures_util::stream::unfold(guard, |guard| async move {
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 64 * 1024]))),
                guard,
            ))
        });
        return Ok(Response::new(BodyExt::boxed(StreamBody::new(chunks))));
    }
    stats.bodies_reading.fetch_add(1, Ordering::SeqCst);
    let mut guard = Gauge {
        stats: stats.clone(),
        body: true,
        done: false,
    };
    let length = match request.into_body().collect().await {
        Ok(body) => {
            guard.done = true;
            body.to_bytes().len().to_string()
        }
        Err(_) => "error".to_owned(),
    };
    drop(guard);
    Ok(Response::new(
        Full::new(Bytes::from(format!("app body={length}\n"))).boxed(),
    ))
}

fn certified(names: &[&str]) -> kokoa_model::Certificate {
    let generated =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    kokoa_model::Certificate::from_pem(&generated.cert.pem(), &generated.key_pair.serialize_pem())
        .unwrap()
}

struct Harness {
    https: SocketAddr,
    http: SocketAddr,
    tcp: Vec<SocketAddr>,
    metrics: Metrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    app: Arc<AppStats>,
    _app: tokio::task::JoinHandle<()>,
}

impl Harness {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("edge stops in time")
            .unwrap()
            .unwrap();
    }

    fn metrics_text(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        self.metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }
}

/// An edge with `[edge]` extras, `[limits]`, route `app.test` (+ `route` keys) to a local app,
/// `open.test` (no extra keys) to the same app, and `tcp` raw TCP routes (each a TOML body
/// for one `[[tcp_routes]]` without `listen`/`origin`).
async fn edge(edge_extra: &str, limits: &str, route: &str, tcp: &[String]) -> Harness {
    let (app_addr, app_stats, app_task) = app().await;
    let mut text = format!(
        r#"
[edge]
https = "127.0.0.1:0"
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
drain_timeout = 1
{edge_extra}
[limits]
{limits}
[tunnel]
private_key = "{}"
[[origins]]
name = "home"
public_key = "{}"
address = "10.100.1.10"
origin_address = "10.100.1.1"
[[routes]]
host = "app.test"
origin = "home"
port = {}
{route}
[[routes]]
host = "open.test"
origin = "home"
port = {}
"#,
        PrivateKey::generate().to_base64(),
        PrivateKey::generate().public_key().to_base64(),
        app_addr.port(),
        app_addr.port(),
    );
    for body in tcp {
        text.push_str(&format!(
            "[[tcp_routes]]\nlisten = \"127.0.0.1:0\"\norigin = \"home\"\n{body}\n"
        ));
    }
    let config = EdgeConfig::from_toml(&text, None).unwrap();
    let certificates = CertStore::from_certificates(
        &[certified(&["app.test", "open.test"])],
        Some(&kokoa_model::HostPattern::new("app.test").unwrap()),
    )
    .unwrap();
    let dialer = TcpDialer::new(
        HashMap::from([("home".to_owned(), IpAddr::V4(Ipv4Addr::LOCALHOST))]),
        Duration::from_secs(2),
    );
    let listeners = Listeners::bind(&config).await.unwrap();
    let https = listeners.https.local_addr().unwrap();
    let http = listeners.http.local_addr().unwrap();
    let tcp = listeners
        .tcp
        .iter()
        .map(|l| l.local_addr().unwrap())
        .collect();
    let metrics = Metrics::default();
    let edge = Edge::new(config, certificates, dialer, metrics.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(edge.serve(
        listeners,
        async {
            let _ = stopped.await;
        },
        || {},
    ));
    Harness {
        https,
        http,
        tcp,
        metrics,
        stop: Some(stop),
        task,
        app: app_stats,
        _app: app_task,
    }
}

/// `127.0.0.<last>`.
fn source(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection from `from` (a loopback address) to `to`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> anyhow::Result<TcpStream> {
    connect_with(from, to, None).await
}

/// [`connect_from`] with the socket's receive buffer set to `recv_buffer` bytes (which turns
/// off the kernel's autotuning: a client that stops reading fills it quickly).
async fn connect_with(
    from: IpAddr,
    to: SocketAddr,
    recv_buffer: Option<u32>,
) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    socket.bind(SocketAddr::new(from, 0))?;
    Ok(tokio::time::timeout(DEADLINE, socket.connect(to))
        .await
        .context("connect timed out")??)
}

/// A TLS connection from `from` offering `alpn`.
async fn tls_from(
    from: IpAddr,
    to: SocketAddr,
    alpn: &[u8],
) -> anyhow::Result<TlsStream<TcpStream>> {
    tls_with(from, to, alpn, None).await
}

/// [`tls_from`] over [`connect_with`].
async fn tls_with(
    from: IpAddr,
    to: SocketAddr,
    alpn: &[u8],
    recv_buffer: Option<u32>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAny))
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = connect_with(from, to, recv_buffer).await?;
    let stream = tokio::time::timeout(
        DEADLINE,
        TlsConnector::from(Arc::new(config)).connect(ServerName::try_from("app.test")?, tcp),
    )
    .await
    .context("handshake timed out")??;
    Ok(stream)
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

/// One request on a fresh TLS connection from `from`.
async fn send_from<B>(
    from: IpAddr,
    edge: SocketAddr,
    h2: bool,
    request: Request<B>,
) -> anyhow::Result<Answer>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
    let io = TokioIo::new(tls_from(from, edge, alpn).await?);
    let response = if h2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(connection);
        sender.send_request(request).await?
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        sender.send_request(request).await?
    };
    let status = response.status();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
        .await
        .context("body timed out")??
        .to_bytes();
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn get(host: &str, h2: bool) -> Request<Full<Bytes>> {
    let builder = if h2 {
        Request::builder()
            .uri(format!("https://{host}/"))
            .version(http::Version::HTTP_2)
    } else {
        Request::builder().uri("/").header("host", host)
    };
    builder.body(Full::new(Bytes::new())).unwrap()
}

/// Writes `request` raw over TLS from 127.0.0.1 (while reading), returns everything the edge
/// sent back until it closed.
async fn raw_exchange(edge: SocketAddr, request: Vec<u8>) -> String {
    let stream = tls_from(source(1), edge, b"http/1.1").await.unwrap();
    let (mut read, mut write) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        // The edge may answer and close before reading everything: errors are expected.
        let _ = write.write_all(&request).await;
        let _ = write.flush().await;
        write
    });
    let mut response = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, read.read_to_end(&mut response)).await;
    writer.abort();
    String::from_utf8_lossy(&response).into_owned()
}

/// Writes the first `split` bytes of `request` over TLS, pauses, writes the rest; returns what
/// the edge sent back until it closed.
async fn split_exchange(edge: SocketAddr, request: &[u8], split: usize) -> String {
    let stream = tls_from(source(1), edge, b"http/1.1").await.unwrap();
    let (mut read, mut write) = tokio::io::split(stream);
    let (first, rest) = request.split_at(split);
    let (first, rest) = (first.to_vec(), rest.to_vec());
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&first).await;
        let _ = write.flush().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = write.write_all(&rest).await;
        let _ = write.flush().await;
        std::future::pending::<()>().await;
    });
    let mut response = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, read.read_to_end(&mut response)).await;
    writer.abort();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn rate_limit_answers_429_for_one_client_only_and_recovers() {
    let edge = edge("", "", "rate = 2.0\nburst = 2", &[]).await;
    let (a, b) = (source(2), source(3));
    for h2 in [false, true] {
        let answer = send_from(a, edge.https, h2, get("app.test", h2))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK, "h2={h2}: {}", answer.body);
    }
    let limited = send_from(a, edge.https, false, get("app.test", false))
        .await
        .unwrap();
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    // 2 per second: the next request is due in under half a second, rounded up.
    assert_eq!(limited.headers["retry-after"], "1");
    assert!(limited.body.contains("429"), "{}", limited.body);
    let limited = send_from(a, edge.https, true, get("app.test", true))
        .await
        .unwrap();
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS, "HTTP/2 too");

    // Another client key is untouched, and so is another route (no rate there).
    let answer = send_from(b, edge.https, false, get("app.test", false))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    for _ in 0..5 {
        let answer = send_from(a, edge.https, false, get("open.test", false))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
    }

    // After Retry-After, the client is served again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let answer = send_from(a, edge.https, false, get("app.test", false))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);

    let text = edge.metrics_text();
    assert!(
        text.contains("kokoa_edge_rate_limited_total{host=\"app.test\"} 2"),
        "{text}"
    );
    edge.stop().await;
}

#[tokio::test]
async fn connection_caps_refuse_before_tls_and_free_slots_on_close() {
    let edge = edge(
        "",
        "connections_per_client = 2\nmax_connections = 4",
        "",
        &[],
    )
    .await;
    let a1 = tls_from(source(2), edge.https, b"http/1.1").await.unwrap();
    let a2 = tls_from(source(2), edge.https, b"http/1.1").await.unwrap();
    // The third connection from the same client is closed at accept: the handshake fails.
    let refused = tls_from(source(2), edge.https, b"http/1.1").await;
    assert!(
        refused.is_err(),
        "third connection from 127.0.0.2 was served"
    );
    // Another client connects meanwhile.
    let b1 = tls_from(source(3), edge.https, b"http/1.1").await.unwrap();
    let b2 = tls_from(source(3), edge.https, b"http/1.1").await.unwrap();
    // Four open: the global cap refuses a fifth client.
    assert!(tls_from(source(4), edge.https, b"http/1.1").await.is_err());
    // The plain HTTP listener shares the caps.
    let mut plain = connect_from(source(4), edge.http).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(DEADLINE, plain.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "plain HTTP connection was kept"
    );

    // Closing connections gives the slots back.
    drop((a1, a2));
    let mut served = None;
    for _ in 0..100 {
        if let Ok(stream) = tls_from(source(4), edge.https, b"http/1.1").await {
            served = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        served.is_some(),
        "slots were not freed after the clients closed"
    );
    let text = edge.metrics_text();
    assert!(
        text.contains(
            "kokoa_edge_connections_refused_total{listener=\"https\",reason=\"per_client\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "kokoa_edge_connections_refused_total{listener=\"https\",reason=\"max_connections\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "kokoa_edge_connections_refused_total{listener=\"http\",reason=\"max_connections\"} 1"
        ),
        "{text}"
    );
    drop((b1, b2, served));
    edge.stop().await;
}

#[tokio::test]
async fn slowloris_is_cut_off_at_the_header_timeout_while_others_are_served() {
    let edge = edge("header_read_timeout = 1", "", "", &[]).await;
    let stream = tls_from(source(2), edge.https, b"http/1.1").await.unwrap();
    let (mut read, mut write) = tokio::io::split(stream);
    let start = Instant::now();
    let dribble = tokio::spawn(async move {
        let _ = write
            .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n")
            .await;
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write
                .write_all(format!("X-Slow-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    // A normal client is served while the slow one dribbles.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = send_from(source(3), edge.https, false, get("app.test", false))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);

    let mut received = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, read.read_to_end(&mut received))
        .await
        .expect("the slow client was not cut off");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "cut off after {elapsed:?}"
    );
    dribble.abort();
    edge.stop().await;
}

#[tokio::test]
async fn silent_client_is_cut_off_at_the_tls_handshake_timeout() {
    let edge = edge("tls_handshake_timeout = 1", "", "", &[]).await;
    let mut silent = connect_from(source(2), edge.https).await.unwrap();
    let start = Instant::now();
    // A normal client meanwhile.
    let answer = send_from(source(3), edge.https, true, get("app.test", true))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(DEADLINE, silent.read(&mut buf))
        .await
        .expect("the silent client was not cut off");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "cut off after {elapsed:?}"
    );
    assert!(
        edge.metrics_text()
            .contains("kokoa_edge_tls_handshake_failures_total 1"),
        "{}",
        edge.metrics_text()
    );
    edge.stop().await;
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_431() {
    let edge = edge("max_header_bytes = 16384", "max_headers = 20", "", &[]).await;
    // HTTP/1: too many fields (hyper answers 431).
    let mut request = String::from("GET / HTTP/1.1\r\nHost: app.test\r\n");
    for i in 0..30 {
        request.push_str(&format!("X-Field-{i}: {i}\r\n"));
    }
    request.push_str("\r\n");
    let response = raw_exchange(edge.https, request.into_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    // HTTP/1: a head over max_header_bytes.
    let request = format!(
        "GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let response = raw_exchange(edge.https, request.into_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    // A head just under the limit passes, however it is split.
    let request = format!(
        "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\nX-A: {}\r\n\r\n",
        "a".repeat(16_000),
    );
    assert!(request.len() <= 16_384);
    let response = split_exchange(edge.https, request.as_bytes(), 8_000).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // HTTP/2: too many fields (checked by the proxy).
    let mut request = get("app.test", true);
    for i in 0..30 {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-field-{i}").as_bytes()).unwrap(),
            http::HeaderValue::from(i),
        );
    }
    let answer = send_from(source(1), edge.https, true, request)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // HTTP/2: a header list over max_header_bytes (h2 answers 431).
    let mut request = get("app.test", true);
    request
        .headers_mut()
        .insert("x-big", "a".repeat(40_000).parse().unwrap());
    let answer = send_from(source(1), edge.https, true, request)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // Normal requests still pass.
    let answer = send_from(source(1), edge.https, false, get("app.test", false))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    edge.stop().await;
}

#[tokio::test]
async fn max_header_bytes_holds_however_the_head_is_split() {
    // The default limit, 64 KiB. hyper gives up on a head only once its buffer holds that much
    // of it unfinished: a ~99 KB head whose first 65,000 bytes come first and the rest in one
    // read after a pause is complete before that check, and used to be served.
    let edge = edge("", "", "", &[]).await;
    let fields: String = (0..10)
        .map(|i| format!("X-H{i}: {}\r\n", "a".repeat(9_900)))
        .collect();
    let request = format!("GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n{fields}\r\n");
    assert!(request.len() > 99_000);
    for split in [65_000, 60_000, 32_768] {
        let response = split_exchange(edge.https, request.as_bytes(), split).await;
        assert!(
            response.starts_with("HTTP/1.1 431"),
            "split at {split}: {response}"
        );
    }
    assert_eq!(edge.app.requests.load(Ordering::SeqCst), 0);
    // Just under 64 KiB passes.
    let fields: String = (0..6)
        .map(|i| format!("X-H{i}: {}\r\n", "a".repeat(10_820)))
        .collect();
    let request = format!("GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n{fields}\r\n");
    assert!(
        request.len() < 65_536 && request.len() > 65_000,
        "{}",
        request.len()
    );
    let response = split_exchange(edge.https, request.as_bytes(), 60_000).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    edge.stop().await;
}

/// A body streamed in `chunks` pieces of `size` bytes, without a length.
fn streamed(
    chunks: usize,
    size: usize,
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
    StreamBody::new(futures_util::stream::iter(
        (0..chunks).map(move |_| Ok(Frame::data(Bytes::from(vec![b'x'; size])))),
    ))
}

#[tokio::test]
async fn oversized_bodies_get_413_by_length_and_while_streaming() {
    let edge = edge("", "", "max_body_bytes = 1024", &[]).await;
    // Declared too large: refused before any body byte is read.
    let response = raw_exchange(
        edge.https,
        b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5000\r\n\r\n".to_vec(),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    for h2 in [false, true] {
        // Within the limit: forwarded whole.
        let builder = if h2 {
            Request::post("https://app.test/").version(http::Version::HTTP_2)
        } else {
            Request::post("/").header("host", "app.test")
        };
        let answer = send_from(
            source(1),
            edge.https,
            h2,
            builder.body(streamed(4, 256)).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(answer.status, StatusCode::OK, "h2={h2}");
        assert_eq!(answer.body, "app body=1024\n");
        // Chunked (HTTP/1) or length-less (HTTP/2) over the limit: cut off while streaming.
        let builder = if h2 {
            Request::post("https://app.test/").version(http::Version::HTTP_2)
        } else {
            Request::post("/").header("host", "app.test")
        };
        let answer = send_from(
            source(1),
            edge.https,
            h2,
            builder.body(streamed(10, 500)).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(
            answer.status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "h2={h2}: {}",
            answer.body
        );
    }
    // The route without a limit takes large bodies.
    let answer = send_from(
        source(1),
        edge.https,
        false,
        Request::post("/")
            .header("host", "open.test")
            .body(Full::new(Bytes::from(vec![b'x'; 100_000])))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(answer.body, "app body=100000\n");
    let text = edge.metrics_text();
    assert!(
        text.contains("kokoa_edge_body_too_large_total{host=\"app.test\"} 3"),
        "{text}"
    );
    edge.stop().await;
}

/// `kokoa_edge_lingering_connections` now.
fn lingering(edge: &Harness) -> String {
    edge.metrics_text()
        .lines()
        .find(|l| l.starts_with("kokoa_edge_lingering_connections "))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn an_early_413_lingers_so_uploaders_read_it_and_lingering_is_bounded() {
    let edge = edge(
        "",
        "lingering_time = 3\nlingering_timeout = 1",
        "max_body_bytes = 1024",
        &[],
    )
    .await;
    let head = b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000000000\r\n\r\n";

    // An uploader that never stops (16 KiB every 10 ms): it reads the whole 413, its writes
    // go on succeeding after it (the edge reads and discards them), and it is cut off at
    // lingering_time, not before.
    let stream = tls_from(source(2), edge.https, b"http/1.1").await.unwrap();
    let (mut read, mut write) = tokio::io::split(stream);
    write.write_all(head).await.unwrap();
    let answered = Instant::now();
    let uploader = tokio::spawn(async move {
        let chunk = vec![b'x'; 16 * 1024];
        let mut sent = 0usize;
        loop {
            if let Err(error) = write.write_all(&chunk).await {
                return (answered.elapsed(), sent, error);
            }
            sent += chunk.len();
            assert!(
                answered.elapsed() < Duration::from_secs(20),
                "the edge never cut off a client that lingers forever"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, read.read_to_end(&mut response))
        .await
        .expect("the 413 and the close did not come")
        .expect("the client read a reset instead of the 413");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    wait_until("the connection lingers", DEADLINE, || {
        lingering(&edge) == "kokoa_edge_lingering_connections 1"
    })
    .await;

    // Another client is served meanwhile.
    let answer = send_from(source(3), edge.https, false, get("app.test", false))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);

    let (cut_after, sent, error) = tokio::time::timeout(DEADLINE, uploader)
        .await
        .expect("the lingering uploader was not cut off")
        .unwrap();
    assert!(
        cut_after >= Duration::from_millis(2_500) && cut_after < Duration::from_secs(8),
        "cut off after {cut_after:?} ({sent} bytes after the head): {error}"
    );
    assert!(sent > 100_000, "only {sent} bytes were taken after the 413");
    let text = edge.metrics_text();
    assert!(text.contains("kokoa_edge_lingering_cut_total 1"), "{text}");
    wait_until("lingering ends", DEADLINE, || {
        lingering(&edge) == "kokoa_edge_lingering_connections 0"
    })
    .await;

    // A client that goes silent after the 413 is let go after lingering_timeout, and one that
    // closes its side at once.
    for close in [false, true] {
        let stream = tls_from(source(2), edge.https, b"http/1.1").await.unwrap();
        let (mut read, mut write) = tokio::io::split(stream);
        write.write_all(head).await.unwrap();
        write.write_all(&[b'x'; 4096]).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(DEADLINE, read.read_to_end(&mut response))
            .await
            .expect("the 413 did not come")
            .unwrap();
        assert!(response.starts_with(b"HTTP/1.1 413"));
        let read_at = Instant::now();
        if close {
            write.shutdown().await.unwrap();
        } else {
            wait_until("the silent client lingers", DEADLINE, || {
                lingering(&edge) == "kokoa_edge_lingering_connections 1"
            })
            .await;
        }
        let took = wait_until("a quiet client's lingering ends", DEADLINE, || {
            lingering(&edge) == "kokoa_edge_lingering_connections 0"
        })
        .await;
        let waited = read_at.elapsed();
        if close {
            assert!(
                waited < Duration::from_millis(900),
                "closed, yet held {waited:?}"
            );
        } else {
            assert!(
                took >= Duration::from_millis(500) && waited < Duration::from_secs(4),
                "a silent client was held {waited:?}"
            );
        }
        drop((read, write));
    }
    let text = edge.metrics_text();
    assert!(text.contains("kokoa_edge_lingering_cut_total 1"), "{text}");
    assert!(
        text.contains("kokoa_edge_body_too_large_total{host=\"app.test\"} 3"),
        "{text}"
    );
    edge.stop().await;
}

#[tokio::test]
async fn allow_and_deny_lists_answer_403_or_close_tcp_connections() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = echo.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let edge = edge(
        "",
        "",
        "allow = [\"127.0.0.2\", \"127.0.0.64/26\"]\ndeny = [\"127.0.0.70/32\"]",
        &[format!("port = {echo_port}\ndeny = [\"127.0.0.3/32\"]")],
    )
    .await;
    for (last, expect) in [
        (2, StatusCode::OK),
        (65, StatusCode::OK),
        (3, StatusCode::FORBIDDEN),
        (70, StatusCode::FORBIDDEN),
    ] {
        for h2 in [false, true] {
            let answer = send_from(source(last), edge.https, h2, get("app.test", h2))
                .await
                .unwrap();
            assert_eq!(answer.status, expect, "127.0.0.{last} h2={h2}");
            if expect == StatusCode::FORBIDDEN {
                assert!(answer.body.contains("403"), "{}", answer.body);
            }
        }
    }
    // The other route has no list.
    let answer = send_from(source(3), edge.https, false, get("open.test", false))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);

    // Raw TCP: the denied client is closed at accept, the others pass.
    let mut denied = connect_from(source(3), edge.tcp[0]).await.unwrap();
    let _ = denied.write_all(b"ping").await;
    let mut buf = [0u8; 4];
    let read = tokio::time::timeout(DEADLINE, denied.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "denied TCP client got {read:?}"
    );
    let mut allowed = connect_from(source(2), edge.tcp[0]).await.unwrap();
    allowed.write_all(b"ping").await.unwrap();
    tokio::time::timeout(DEADLINE, allowed.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping");

    let text = edge.metrics_text();
    assert!(
        text.contains("kokoa_edge_acl_denied_total{host=\"app.test\"} 4"),
        "{text}"
    );
    // TCP listeners are labelled by their configured address.
    let label = "tcp:127.0.0.1:0";
    assert!(
        text.contains(&format!(
            "kokoa_edge_connections_refused_total{{listener=\"{label}\",reason=\"acl\"}} 1"
        )),
        "{text}"
    );
    edge.stop().await;
}

#[tokio::test]
async fn proxy_protocol_v2_header_reaches_the_origin_first() {
    let origin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin_port = origin.local_addr().unwrap().port();
    let received = tokio::spawn(async move {
        let (mut stream, _) = origin.accept().await.unwrap();
        let mut first = vec![0u8; 28 + 5];
        stream.read_exact(&mut first).await.unwrap();
        first
    });
    let edge = edge(
        "",
        "",
        "",
        &[format!("port = {origin_port}\nproxy_protocol = \"v2\"")],
    )
    .await;
    let mut client = connect_from(source(2), edge.tcp[0]).await.unwrap();
    let client_port = client.local_addr().unwrap().port();
    client.write_all(b"hello").await.unwrap();
    let bytes = tokio::time::timeout(DEADLINE, received)
        .await
        .unwrap()
        .unwrap();
    let mut expected = vec![
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0x00,
        0x0C, 127, 0, 0, 2, 127, 0, 0, 1,
    ];
    expected.extend_from_slice(&client_port.to_be_bytes());
    expected.extend_from_slice(&edge.tcp[0].port().to_be_bytes());
    expected.extend_from_slice(b"hello");
    assert_eq!(bytes, expected);
    edge.stop().await;
}

/// Opens 5,000 HTTP/2 streams from 127.0.0.2 and resets each at once (the "rapid reset"
/// attack). Returns the client handle if the connection is still usable, or the error it
/// ended with.
async fn rapid_reset(edge: SocketAddr) -> Result<h2::client::SendRequest<Bytes>, h2::Error> {
    let stream = tls_from(source(2), edge, b"h2").await.unwrap();
    let (mut client, connection) = h2::client::handshake(stream).await.unwrap();
    let mut connection = tokio::spawn(connection);
    for _ in 0..5000 {
        let request = Request::get("https://app.test/").body(()).unwrap();
        client = tokio::time::timeout(DEADLINE, client.ready())
            .await
            .expect("the edge stopped granting streams without closing")?;
        // Dropping the response future resets the stream (RST_STREAM CANCEL).
        drop(client.send_request(request, true)?);
    }
    // Either the edge closes the connection soon, or it still answers on it.
    match tokio::time::timeout(Duration::from_millis(1500), &mut connection).await {
        Ok(result) => {
            result.unwrap()?;
            panic!("the connection ended without an error");
        }
        Err(_) => Ok(client),
    }
}

#[tokio::test]
async fn h2_rapid_reset_gets_goaway_and_others_are_still_served() {
    // Only the pending-reset guard is under test here.
    let limits = "h2_max_pending_reset_streams = 20\nh2_max_local_error_reset_streams = 1000000";
    let guarded = edge("", limits, "", &[]).await;
    let error = rapid_reset(guarded.https)
        .await
        .expect_err("the rapid-reset connection was not closed");
    // GOAWAY ENHANCE_YOUR_CALM, or the closed socket under the client's ongoing writes.
    assert!(
        (error.is_go_away() && error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM))
            || error.is_io(),
        "{error:?}"
    );
    // Other clients are still served.
    for h2 in [true, false] {
        let answer = send_from(source(3), guarded.https, h2, get("app.test", h2))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
    }
    guarded.stop().await;

    // The control: with the guards out of the way the same client keeps its connection, so
    // the close above is the guard's doing.
    let limits =
        "h2_max_pending_reset_streams = 1000000\nh2_max_local_error_reset_streams = 1000000";
    let unguarded = edge("", limits, "", &[]).await;
    let mut client = rapid_reset(unguarded.https)
        .await
        .expect("without the guards the connection stays open");
    let request = Request::get("https://app.test/").body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    unguarded.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let edge = edge("", "idle_timeout = 1", "", &[]).await;
    // HTTP/1.1: one request, then nothing.
    let stream = tls_from(source(2), edge.https, b"http/1.1").await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let h1 = tokio::spawn(connection);
    let response = sender.send_request(get("app.test", false)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    // HTTP/2: the same.
    let stream = tls_from(source(2), edge.https, b"h2").await.unwrap();
    let (mut sender2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let h2 = tokio::spawn(connection);
    let response = sender2.send_request(get("app.test", true)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();

    let start = Instant::now();
    // The edge closes them (HTTP/2 with GOAWAY); how the client ends is not the point.
    let _ = tokio::time::timeout(Duration::from_secs(5), h1)
        .await
        .expect("idle HTTP/1 connection was not closed");
    let _ = tokio::time::timeout(Duration::from_secs(5), h2)
        .await
        .expect("idle HTTP/2 connection was not closed");
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    let text = edge.metrics_text();
    assert!(
        text.contains("kokoa_edge_idle_connections_closed_total 2"),
        "{text}"
    );
    drop((sender, sender2));
    edge.stop().await;
}

/// Polls `check` every 20 ms until it holds; panics naming `what` after `limit`. Returns how
/// long it took.
async fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

/// Sends `head`, then one body byte every `every` (at most `length`), while reading: returns
/// what the edge sent back and when the connection ended, from the moment the head was sent.
async fn dribble(
    stream: TlsStream<TcpStream>,
    head: String,
    length: usize,
    every: Duration,
) -> (String, Duration) {
    let (mut read, mut write) = tokio::io::split(stream);
    write.write_all(head.as_bytes()).await.unwrap();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..length {
            if write.write_all(b"x").await.is_err() || write.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
        // Keep the write half open: the edge decides when the exchange ends.
        std::future::pending::<()>().await;
    });
    let mut response = Vec::new();
    // The edge may reset the connection after its answer: what arrived before counts.
    let _ = tokio::time::timeout(DEADLINE * 2, read.read_to_end(&mut response)).await;
    let ended = start.elapsed();
    writer.abort();
    (String::from_utf8_lossy(&response).into_owned(), ended)
}

#[tokio::test]
async fn stalled_and_dribbling_request_bodies_are_cut_off_while_others_are_served() {
    // 2 s without body bytes, or under 100 bytes/s over 2 s of waiting: cut off.
    let edge = edge(
        "",
        "client_body_timeout = 2\nclient_body_min_rate = 100",
        "",
        &[],
    )
    .await;
    let mut attackers = Vec::new();
    // Twenty connections from 127.0.0.2 sending one body byte every 100 ms (10 bytes/s).
    for _ in 0..20 {
        let stream = tls_from(source(2), edge.https, b"http/1.1").await.unwrap();
        let head = "POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100000\r\n\r\n".to_owned();
        attackers.push(tokio::spawn(dribble(
            stream,
            head,
            100_000,
            Duration::from_millis(100),
        )));
    }
    // One from 127.0.0.4 that stops after 2 of its 100 bytes.
    let stream = tls_from(source(4), edge.https, b"http/1.1").await.unwrap();
    let head = "POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n".to_owned();
    let stalled = tokio::spawn(dribble(stream, head, 2, Duration::from_millis(10)));
    // An HTTP/2 stream from 127.0.0.5 that does the same.
    let tls = tls_from(source(5), edge.https, b"h2").await.unwrap();
    let (mut h2_client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    let request = Request::post("https://app.test/")
        .header("content-length", "100")
        .body(())
        .unwrap();
    let (h2_response, mut h2_body) = h2_client.send_request(request, false).unwrap();
    h2_body.send_data(Bytes::from_static(b"ab"), false).unwrap();
    let h2_started = Instant::now();

    // Every body has reached the app.
    wait_until("22 bodies at the app", DEADLINE, || {
        edge.app.bodies_reading.load(Ordering::SeqCst) == 22
    })
    .await;
    // Meanwhile another client is served, quickly.
    for _ in 0..5 {
        let started = Instant::now();
        let answer = send_from(source(3), edge.https, false, get("app.test", false))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a good request took {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Everyone gets 408 and the connection ends, about 2 s after the body began: the
    // dribblers at the end of their first rate window, the stalled ones 2 s after their last
    // byte. Timers never fire early; the upper bound leaves room for a loaded machine.
    for attacker in attackers {
        let (response, ended) = attacker.await.unwrap();
        assert!(response.starts_with("HTTP/1.1 408"), "{response}");
        assert!(response.contains("connection: close"), "{response}");
        assert!(
            ended >= Duration::from_millis(1900) && ended < Duration::from_secs(7),
            "dribbler cut off after {ended:?}"
        );
    }
    let (response, ended) = stalled.await.unwrap();
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        ended >= Duration::from_millis(1900) && ended < Duration::from_secs(7),
        "stalled body cut off after {ended:?}"
    );
    let response = tokio::time::timeout(DEADLINE, h2_response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    let h2_ended = h2_started.elapsed();
    assert!(
        h2_ended >= Duration::from_millis(1900) && h2_ended < Duration::from_secs(7),
        "HTTP/2 body cut off after {h2_ended:?}"
    );
    // The stream is reset once the 408 has gone: the client may stop sending.
    let reason = tokio::time::timeout(DEADLINE, std::future::poll_fn(|cx| h2_body.poll_reset(cx)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reason, h2::Reason::NO_ERROR);

    // The app saw each of those requests end: its body was cut (the edge closed the upstream
    // connection, which releases the tunnel stream and the app's connection).
    wait_until("the app's bodies cut", DEADLINE, || {
        edge.app.bodies_reading.load(Ordering::SeqCst) == 0
    })
    .await;
    assert_eq!(edge.app.bodies_cut.load(Ordering::SeqCst), 22);
    let text = edge.metrics_text();
    assert!(
        text.contains("kokoa_edge_timeouts_total{kind=\"client_body\"} 22"),
        "{text}"
    );
    assert!(
        text.contains("kokoa_edge_requests_total{host=\"app.test\",class=\"4xx\"} 22"),
        "{text}"
    );
    assert!(!text.contains("class=\"5xx\""), "{text}");
    edge.stop().await;
}

#[tokio::test]
async fn clients_that_stop_reading_are_cut_off_at_the_send_timeout() {
    let edge = edge("", "send_timeout = 2", "", &[]).await;
    // HTTP/1.1 from 127.0.0.2: asks for an endless response and reads nothing.
    let mut h1 = tls_from(source(2), edge.https, b"http/1.1").await.unwrap();
    h1.write_all(b"GET /big HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let h1_started = Instant::now();
    // HTTP/2 from 127.0.0.4: a stream window of 0 that it never opens.
    let tls = tls_from(source(4), edge.https, b"h2").await.unwrap();
    let (mut h2_client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::get("https://app.test/big").body(()).unwrap();
    let (response, _) = h2_client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .unwrap()
        .unwrap();
    let h2_started = Instant::now();
    assert_eq!(response.status(), StatusCode::OK);
    let mut h2_body = response.into_body();
    // HTTP/2 from 127.0.0.5: windows of 1 GiB, but once its response has begun it stops
    // reading the socket altogether (its connection is no longer polled), so the socket fills
    // long before any window does (a small receive buffer makes that quick). Its stream is
    // reset when h2's send buffer has stayed full for the timeout (or its connection when the
    // socket has stayed blocked, whichever comes first).
    let tls = tls_with(source(5), edge.https, b"h2", Some(64 * 1024))
        .await
        .unwrap();
    let (mut deaf_client, deaf_connection) = h2::client::Builder::new()
        .initial_window_size(1 << 30)
        .initial_connection_window_size(1 << 30)
        .handshake::<_, Bytes>(tls)
        .await
        .unwrap();
    let mut deaf_connection = Box::pin(deaf_connection);
    let request = Request::get("https://app.test/big").body(()).unwrap();
    let (response, _) = deaf_client.send_request(request, true).unwrap();
    let response = tokio::select! {
        response = response => response.unwrap(),
        _ = &mut deaf_connection => panic!("the connection ended first"),
    };
    assert_eq!(response.status(), StatusCode::OK);
    let deaf_started = Instant::now();
    wait_until("three responses streaming at the app", DEADLINE, || {
        edge.app.streams_sending.load(Ordering::SeqCst) == 3
    })
    .await;

    // Another client is served meanwhile.
    for h2 in [false, true] {
        let answer = send_from(source(3), edge.https, h2, get("app.test", h2))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
    }

    // The HTTP/2 stream is reset once its data has waited 2 s on the window.
    let error = tokio::time::timeout(DEADLINE, h2_body.data())
        .await
        .expect("the stuck stream was not reset")
        .expect("the stream ended instead of being reset")
        .expect_err("data arrived through a window of 0");
    let h2_ended = h2_started.elapsed();
    assert_eq!(error.reason(), Some(h2::Reason::CANCEL), "{error:?}");
    assert!(
        h2_ended >= Duration::from_millis(1900) && h2_ended < Duration::from_secs(7),
        "stream reset after {h2_ended:?}"
    );
    // Only the stream: the connection still answers a request that needs no window.
    let request = Request::head("https://app.test/").body(()).unwrap();
    let (response, _) = h2_client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // All three responses were cut off at the app: the edge closed their upstream
    // connections.
    wait_until("three app responses cut", DEADLINE, || {
        edge.app.streams_cut.load(Ordering::SeqCst) == 3
    })
    .await;
    assert_eq!(edge.app.streams_sending.load(Ordering::SeqCst), 0);
    for (name, started) in [("HTTP/1.1", h1_started), ("deaf HTTP/2", deaf_started)] {
        let cut = started.elapsed();
        assert!(
            cut >= Duration::from_millis(1900) && cut < Duration::from_secs(9),
            "{name} response cut off after {cut:?}"
        );
    }
    // When the deaf client reads again, its endless response ends after what was already in
    // the buffers (a stream reset, or the connection's end if its socket timer went first).
    tokio::spawn(deaf_connection);
    let mut deaf_body = response.into_body();
    let mut received = 0usize;
    tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(chunk)) = deaf_body.data().await {
            received += chunk.len();
            let _ = deaf_body.flow_control().release_capacity(chunk.len());
        }
    })
    .await
    .expect("the deaf client's response never ended");
    assert!(received < 1 << 30, "{received} bytes");
    drop(deaf_client);
    // The HTTP/1.1 client finds its connection gone once it reads what was buffered.
    let mut sink = Vec::new();
    let read = tokio::time::timeout(DEADLINE, h1.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "the HTTP/1.1 connection is still open");
    // One per client; the deaf one's stream may also have hit its own timer before its
    // connection did.
    let text = edge.metrics_text();
    let sends = text
        .lines()
        .find_map(|line| line.strip_prefix("kokoa_edge_timeouts_total{kind=\"send\"} "))
        .and_then(|value| value.parse::<u64>().ok());
    assert!(matches!(sends, Some(3 | 4)), "{text}");
    edge.stop().await;
}

#[tokio::test]
async fn http2_body_over_the_limit_gets_413_then_a_no_error_reset() {
    let edge = edge("", "", "max_body_bytes = 1024", &[]).await;
    let tls = tls_from(source(2), edge.https, b"h2").await.unwrap();
    let (mut client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);

    // A client whose small body is already on its way (what curl does): it finishes sending,
    // reads the 413, and the stream ends without a reset.
    let request = Request::post("https://app.test/")
        .header("content-length", "5000")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(Bytes::from(vec![b'x'; 5000]), true).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let mut answer = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = tokio::time::timeout(DEADLINE, answer.data()).await.unwrap() {
        text.extend_from_slice(&chunk.unwrap());
    }
    assert!(String::from_utf8_lossy(&text).contains("413"));

    // A client with 10 MB to send: 413, and once the edge has discarded what it allows, the
    // stream is reset with NO_ERROR (RFC 9113 section 8.1), not an error code.
    client = client.ready().await.unwrap();
    let request = Request::post("https://app.test/")
        .header("content-length", "10000000")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    let sender = tokio::spawn(async move {
        let mut sent = 0usize;
        loop {
            body.reserve_capacity(16 * 1024);
            match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    if body.send_data(Bytes::from(vec![b'x'; n]), false).is_err() {
                        break;
                    }
                    sent += n;
                }
                _ => break,
            }
            if sent >= 10_000_000 {
                break;
            }
        }
        let reason = std::future::poll_fn(|cx| body.poll_reset(cx)).await;
        (sent, reason)
    });
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (sent, reason) = tokio::time::timeout(DEADLINE, sender)
        .await
        .expect("the stream was not reset")
        .unwrap();
    assert_eq!(reason.unwrap(), h2::Reason::NO_ERROR, "after {sent} bytes");
    assert!(sent < 10_000_000, "the whole body was taken: {sent}");
    // Neither request reached the app.
    assert_eq!(edge.app.requests.load(Ordering::SeqCst), 0);
    let text = edge.metrics_text();
    assert!(
        text.contains("kokoa_edge_body_too_large_total{host=\"app.test\"} 2"),
        "{text}"
    );
    edge.stop().await;
}

#[tokio::test]
async fn forwarding_headers_are_replaced_unless_a_trusted_proxy_sent_them() {
    // 127.0.0.2 is a trusted proxy (a load balancer in front of the edge); the route denies
    // 203.0.113.66, whoever carries its requests.
    let edge = edge(
        "trusted_proxies = [\"127.0.0.2\", \"10.0.0.0/8\"]",
        "",
        "deny = [\"203.0.113.66\"]",
        &[],
    )
    .await;
    let forwarded = |xff: &'static str| {
        Request::get("/")
            .header("host", "app.test")
            .header("x-forwarded-for", xff)
            .header("x-forwarded-proto", "http")
            .header("x-real-ip", "192.0.2.99")
            .header("forwarded", "for=192.0.2.99")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // An ordinary client's claims are dropped: the app sees the client's own address.
    let answer = send_from(source(3), edge.https, false, forwarded("203.0.113.9"))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let head = edge.app.last_head.lock().unwrap().clone();
    for line in [
        "x-forwarded-for: 127.0.0.3\n",
        "x-real-ip: 127.0.0.3\n",
        "x-forwarded-proto: https\n",
        "x-forwarded-host: app.test\n",
        "forwarded: for=127.0.0.3;host=app.test;proto=https\n",
    ] {
        assert!(head.contains(line), "{line:?} missing:\n{head}");
    }
    assert!(!head.contains("203.0.113.9"), "{head}");
    assert!(!head.contains("192.0.2.99"), "{head}");
    // A denied address claimed by an ordinary client changes nothing.
    let answer = send_from(source(3), edge.https, false, forwarded("203.0.113.66"))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);

    // The trusted proxy's chain is extended, and the client it names is the one the app,
    // the allow/deny list and the access log see.
    let answer = send_from(
        source(2),
        edge.https,
        false,
        forwarded("203.0.113.9, 10.1.1.1"),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let head = edge.app.last_head.lock().unwrap().clone();
    for line in [
        "x-forwarded-for: 203.0.113.9, 10.1.1.1, 127.0.0.2\n",
        "x-real-ip: 203.0.113.9\n",
        "x-forwarded-proto: http\n",
        "forwarded: for=192.0.2.99, for=127.0.0.2;host=app.test;proto=https\n",
    ] {
        assert!(head.contains(line), "{line:?} missing:\n{head}");
    }
    let answer = send_from(source(2), edge.https, false, forwarded("203.0.113.66"))
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    // HTTP/2 from the proxy too.
    let mut request = get("app.test", true);
    request
        .headers_mut()
        .insert("x-forwarded-for", "198.51.100.4".parse().unwrap());
    let answer = send_from(source(2), edge.https, true, request)
        .await
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let head = edge.app.last_head.lock().unwrap().clone();
    assert!(head.contains("x-real-ip: 198.51.100.4\n"), "{head}");
    edge.stop().await;
}

#[tokio::test]
async fn a_response_stuck_in_http2_buffers_ends_with_its_idle_connection() {
    // A small response fits in h2's send buffer: the body is done as far as the proxy knows
    // (its upstream connection is back in the pool), but a window of 0 keeps the data from
    // the client. The connection is idle then; its GOAWAY cannot complete, so it is dropped
    // send_timeout after it.
    let edge = edge("", "idle_timeout = 1\nsend_timeout = 2", "", &[]).await;
    let tls = tls_from(source(2), edge.https, b"h2").await.unwrap();
    let (mut client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tls)
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let request = Request::get("https://app.test/").body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let started = Instant::now();
    let ended = tokio::time::timeout(DEADLINE, connection)
        .await
        .expect("the connection was kept");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(2900) && elapsed < Duration::from_secs(8),
        "connection ended after {elapsed:?}: {ended:?}"
    );
    drop(client);
    edge.stop().await;
}
