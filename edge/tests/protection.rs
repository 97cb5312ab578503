//! The edge's protection against hostile and heavy clients, on loopback with a plain-TCP dialer
//! standing in for the tunnel. Clients bind distinct loopback source addresses (127.0.0.2,
//! 127.0.0.3, ...) to act as different client keys.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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

/// A local HTTP/1.1 app answering `app=<name> body=<n bytes>` after reading the whole body.
async fn app() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            connections.spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    let length = match request.into_body().collect().await {
                        Ok(body) => body.to_bytes().len().to_string(),
                        Err(_) => "error".to_owned(),
                    };
                    Ok::<_, Infallible>(Response::new(
                        Full::new(Bytes::from(format!("app body={length}\n"))).boxed(),
                    ) as Response<AppBody>)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
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
    let (app_addr, app_task) = app().await;
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
        _app: app_task,
    }
}

/// `127.0.0.<last>`.
fn source(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection from `from` (a loopback address) to `to`.
async fn connect_from(from: IpAddr, to: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
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
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAny))
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = connect_from(from, to).await?;
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
