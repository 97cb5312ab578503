//! The edge end to end on loopback, with a plain-TCP dialer standing in for the tunnel: real
//! TLS clients (HTTP/1.1, HTTP/2, WebSocket) -> kokoa-edge -> local hyper apps.
//!
//! Why this file is longer than ~1,000 lines: the proxy's HTTP behaviour, protocol by
//! protocol, shares one edge-and-app harness; the tests read best next to it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
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
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

mod common;
use common::AcceptAny;

const DEADLINE: Duration = Duration::from_secs(10);

type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A local HTTP/1.1 app: echoes the request head, streams `/sse`, echoes WebSocket on `/ws`.
struct App {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn app(name: &'static str) -> App {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    let task = tokio::spawn(async move {
        // Connections live in this task's set, so aborting the app closes them too.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            connections.spawn(async move {
                let service = service_fn(move |request| answer(name, request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    App {
        addr,
        connections,
        task,
    }
}

async fn answer(
    name: &'static str,
    mut request: Request<Incoming>,
) -> Result<Response<AppBody>, Infallible> {
    match request.uri().path() {
        "/sse" => {
            let chunks = futures_util::stream::unfold(0u32, |i| async move {
                if i == 3 {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
                let frame = Frame::data(Bytes::from(format!("data: {i}\n\n")));
                Some((Ok::<_, Infallible>(frame), i + 1))
            });
            let mut response = Response::new(BodyExt::boxed(StreamBody::new(chunks)));
            response
                .headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            Ok(response)
        }
        "/ws" => {
            let key = request
                .headers()
                .get("sec-websocket-key")
                .cloned()
                .unwrap_or_else(|| http::HeaderValue::from_static(""));
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
            let response = Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(Empty::new().boxed())
                .unwrap();
            Ok(response)
        }
        _ => {
            let mut text = format!(
                "app={name}\nmethod={}\npath={}\n",
                request.method(),
                request.uri()
            );
            for (header, value) in request.headers() {
                text.push_str(&format!("{header}: {}\n", value.to_str().unwrap_or("?")));
            }
            match request.into_body().collect().await {
                Ok(body) => {
                    let body = body.to_bytes();
                    text.push_str(&format!("body={}\n", String::from_utf8_lossy(&body)));
                }
                Err(error) => text.push_str(&format!("body error: {error}\n")),
            }
            Ok(Response::new(Full::new(Bytes::from(text)).boxed()))
        }
    }
}

/// A CA and leaf certificates signed by it.
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
    tcp: SocketAddr,
    metrics: Metrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Harness {
    fn metrics_text(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        self.metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

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
}

/// Starts an edge: `app.test` (+ alias `www.app.test`) -> home:`home_port`,
/// `*.wild.test` -> lab:`lab_port`, `ghost.test` -> an origin the dialer does not know,
/// a TCP route -> home:`tcp_port`.
async fn edge(home_port: u16, lab_port: u16, tcp_port: u16, default_cert: bool) -> Harness {
    edge_with(home_port, lab_port, tcp_port, default_cert, "").await
}

/// [`edge`] with more `[edge]` keys.
async fn edge_with(
    home_port: u16,
    lab_port: u16,
    tcp_port: u16,
    default_cert: bool,
    edge_extra: &str,
) -> Harness {
    let key = || PrivateKey::generate().public_key().to_base64();
    let text = format!(
        r#"
[edge]
https = "127.0.0.1:0"
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
drain_timeout = 2
{edge_extra}
[tunnel]
private_key = "{}"
[[origins]]
name = "home"
public_key = "{}"
address = "10.100.1.10"
origin_address = "10.100.1.1"
[[origins]]
name = "lab"
public_key = "{}"
address = "10.100.2.10"
origin_address = "10.100.2.1"
[[origins]]
name = "ghost"
public_key = "{}"
address = "10.100.3.10"
origin_address = "10.100.3.1"
[[routes]]
host = "app.test"
aliases = ["www.app.test"]
origin = "home"
port = {home_port}
[[routes]]
host = "*.wild.test"
origin = "lab"
port = {lab_port}
[[routes]]
host = "ghost.test"
origin = "ghost"
port = 1
[[tcp_routes]]
listen = "127.0.0.1:0"
origin = "home"
port = {tcp_port}
"#,
        PrivateKey::generate().to_base64(),
        key(),
        key(),
        key()
    );
    let config = EdgeConfig::from_toml(&text, None).unwrap();
    let default = kokoa_model::HostPattern::new("app.test").unwrap();
    let certificates = CertStore::from_certificates(
        &[
            certified(&["app.test", "www.app.test"]),
            certified(&["*.wild.test"]),
            certified(&["ghost.test"]),
        ],
        default_cert.then_some(&default),
    )
    .unwrap();
    let dialer = TcpDialer::new(
        HashMap::from([
            ("home".to_owned(), IpAddr::V4(Ipv4Addr::LOCALHOST)),
            ("lab".to_owned(), IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ]),
        Duration::from_secs(2),
    );
    let listeners = Listeners::bind(&config).await.unwrap();
    let https = listeners.https.local_addr().unwrap();
    let http = listeners.http.local_addr().unwrap();
    let tcp = listeners.tcp[0].local_addr().unwrap();
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
    }
}

async fn tls(
    addr: SocketAddr,
    sni: Option<&str>,
    alpn: &[&[u8]],
) -> anyhow::Result<TlsStream<TcpStream>> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAny))
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = match sni {
        Some(name) => ServerName::try_from(name.to_owned())?,
        // An IP address as the server name: rustls sends no SNI.
        None => ServerName::IpAddress(Ipv4Addr::LOCALHOST.into()),
    };
    let tcp = TcpStream::connect(addr).await?;
    let stream = tokio::time::timeout(
        DEADLINE,
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .context("handshake timed out")??;
    Ok(stream)
}

fn served_names(stream: &TlsStream<TcpStream>) -> Vec<String> {
    let (_, session) = stream.get_ref();
    let leaf = &session.peer_certificates().unwrap()[0];
    webpki::EndEntityCert::try_from(leaf)
        .unwrap()
        .valid_dns_names()
        .map(str::to_owned)
        .collect()
}

/// One request on a fresh TLS connection; returns status, headers and the whole body.
async fn send(
    edge: SocketAddr,
    sni: &str,
    h2: bool,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<(StatusCode, http::HeaderMap, String)> {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let stream = tls(edge, Some(sni), alpn).await?;
    let io = TokioIo::new(stream);
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
    if h2 {
        assert_eq!(response.version(), http::Version::HTTP_2);
    }
    let status = response.status();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
        .await
        .context("body timed out")??
        .to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

fn get(uri: &str, host: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(uri)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn h2_get(uri: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(uri)
        .version(http::Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn routes_exact_alias_wildcard_and_404_over_http1_and_http2() {
    let home = app("home").await;
    let lab = app("lab").await;
    let edge = edge(home.addr.port(), lab.addr.port(), 1, false).await;

    for (host, expect) in [
        ("app.test", "app=home"),
        ("WWW.app.test:443", "app=home"),
        ("x.wild.test", "app=lab"),
    ] {
        let (status, _, body) = send(edge.https, "app.test", false, get("/hello?q=1", host))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{host}");
        assert!(body.starts_with(expect), "{host}: {body}");
        assert!(body.contains("path=/hello?q=1"), "{body}");
    }
    let (status, headers, body) = send(edge.https, "app.test", false, get("/", "nope.test"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(body.contains("404 Not Found"), "{body}");
    let (status, _, _) = send(edge.https, "app.test", false, get("/", "a.b.wild.test"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);

    // HTTP/2: routed by :authority; the app still gets HTTP/1.1 with a Host header.
    let (status, _, body) = send(
        edge.https,
        "y.wild.test",
        true,
        h2_get("https://y.wild.test/h2"),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("app=lab"), "{body}");
    assert!(body.contains("host: y.wild.test\n"), "{body}");
    let (status, _, _) = send(edge.https, "app.test", true, h2_get("https://nope.test/"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &{
        let mut registry = prometheus_client::registry::Registry::default();
        edge.metrics.register(&mut registry);
        registry
    })
    .unwrap();
    assert!(
        text.contains("kokoa_edge_requests_total{host=\"*.wild.test\",class=\"2xx\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("kokoa_edge_requests_total{host=\"unrouted\",class=\"4xx\"} 3"),
        "{text}"
    );
    edge.stop().await;
}

#[tokio::test]
async fn forwarded_headers_added_and_hop_by_hop_stripped() {
    let home = app("home").await;
    let edge = edge(home.addr.port(), 1, 1, false).await;
    let request = Request::builder()
        .method("POST")
        .uri("/form")
        .header("host", "app.test")
        .header("x-forwarded-for", "198.51.100.7")
        .header("x-forwarded-proto", "http")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "basic abc")
        .header("te", "trailers")
        .header("x-custom", "kept")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let (status, _, body) = send(edge.https, "app.test", false, request).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    // The client's own forwarding headers are replaced, not passed on.
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
    assert!(!body.contains("198.51.100.7"), "{body}");
    assert!(
        body.contains("forwarded: for=127.0.0.1;host=app.test;proto=https\n"),
        "{body}"
    );
    assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
    assert!(body.contains("x-forwarded-host: app.test\n"), "{body}");
    assert!(body.contains("x-real-ip: 127.0.0.1\n"), "{body}");
    assert!(body.contains("host: app.test\n"), "{body}");
    assert!(body.contains("x-custom: kept\n"), "{body}");
    assert!(body.contains("body=payload\n"), "{body}");
    for stripped in [
        "x-private",
        "keep-alive:",
        "proxy-authorization",
        "te:",
        "connection: keep-alive",
    ] {
        assert!(
            !body.contains(stripped),
            "{stripped} reached the app: {body}"
        );
    }
    edge.stop().await;
}

#[tokio::test]
async fn stopped_app_gives_503_service_down_unknown_origin_503_and_other_routes_keep_working() {
    let home = app("home").await;
    let lab = app("lab").await;
    let edge = edge(home.addr.port(), lab.addr.port(), 1, false).await;
    let (status, _, _) = send(edge.https, "app.test", false, get("/", "a.wild.test"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    drop(lab);
    // The pooled connection to lab is closed by the app's exit; the next request dials anew
    // and is refused (a request caught on the closing pooled connection may see a 502 first).
    let mut status = StatusCode::OK;
    for _ in 0..50 {
        status = send(edge.https, "app.test", false, get("/", "a.wild.test"))
            .await
            .unwrap()
            .0;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // A refused connect is the "service down" page, with its marks.
    let (status, headers, body) = send(edge.https, "app.test", false, get("/", "a.wild.test"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["kokoa-error"], "service-down");
    assert_eq!(headers["retry-after"], "5");
    assert!(body.contains("Service down"), "{body}");
    let (status, _, body) = send(edge.https, "app.test", false, get("/", "ghost.test"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("cannot be reached"), "{body}");
    let (status, _, body) = send(edge.https, "app.test", true, h2_get("https://app.test/"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("app=home"));
    edge.stop().await;
}

#[tokio::test]
async fn streamed_response_arrives_incrementally() {
    let home = app("home").await;
    let edge = edge(home.addr.port(), 1, 1, false).await;
    for h2 in [false, true] {
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let io = TokioIo::new(tls(edge.https, Some("app.test"), alpn).await.unwrap());
        let request = if h2 {
            h2_get("https://app.test/sse")
        } else {
            get("/sse", "app.test")
        };
        let start = Instant::now();
        let response = if h2 {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        };
        let mut body = response.into_body();
        let first = tokio::time::timeout(DEADLINE, body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "data: 0\n\n");
        let first_at = start.elapsed();
        let rest = body.collect().await.unwrap().to_bytes();
        let total = start.elapsed();
        assert_eq!(rest, "data: 1\n\ndata: 2\n\n");
        assert!(
            first_at < Duration::from_millis(400),
            "first chunk after {first_at:?}"
        );
        assert!(
            total >= Duration::from_millis(800),
            "whole body after {total:?}"
        );
    }
    edge.stop().await;
}

#[tokio::test]
async fn websocket_echo_through_the_edge() {
    let home = app("home").await;
    let edge = edge(home.addr.port(), 1, 1, false).await;
    let stream = tls(edge.https, Some("app.test"), &[b"http/1.1"])
        .await
        .unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async("wss://app.test/ws", stream)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "kokoa"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let echoed = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::binary(vec![1u8, 2, 3]));
    ws.close(None).await.unwrap();
    edge.stop().await;
}

#[tokio::test]
async fn plain_http_redirects_to_https() {
    let edge = edge(1, 1, 1, false).await;
    let mut stream = TcpStream::connect(edge.http).await.unwrap();
    stream
        .write_all(b"GET /a?b=c HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(DEADLINE, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 301"), "{response}");
    let location = format!("location: https://app.test:{}/a?b=c\r\n", edge.https.port());
    assert!(
        response.to_ascii_lowercase().contains(&location),
        "{response}"
    );
    // Names the edge does not route are not redirected anywhere.
    for host in ["evil.com", "a.b.wild.test"] {
        let mut stream = TcpStream::connect(edge.http).await.unwrap();
        let request = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(DEADLINE, stream.read_to_string(&mut response))
            .await
            .unwrap()
            .unwrap();
        assert!(response.starts_with("HTTP/1.1 404"), "{host}: {response}");
        assert!(
            !response.to_ascii_lowercase().contains("location:"),
            "{response}"
        );
    }
    edge.stop().await;
}

#[tokio::test]
async fn http10_app_does_not_downgrade_the_client_connection() {
    // An app that answers every request in HTTP/1.0 and closes (Python's http.server does).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nold-ok")
                    .await;
            });
        }
    });
    let edge = edge(port, 1, 1, false).await;
    let stream = tls(edge.https, Some("app.test"), &[b"http/1.1"])
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    // Two requests on one client connection: the first answer must keep it open.
    for _ in 0..2 {
        sender.ready().await.unwrap();
        let response = sender.send_request(get("/", "app.test")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), http::Version::HTTP_11);
        assert_ne!(
            response.headers().get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..])
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"old-ok");
    }
    edge.stop().await;
    app.abort();
}

#[tokio::test]
async fn upstream_connections_are_reused_across_client_connections() {
    let home = app("home").await;
    let edge = edge(home.addr.port(), 1, 1, false).await;
    for i in 0..10 {
        let h2 = i % 2 == 0;
        let request = if h2 {
            h2_get("https://app.test/")
        } else {
            get("/", "app.test")
        };
        let (status, _, _) = send(edge.https, "app.test", h2, request).await.unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(home.connections.load(Ordering::SeqCst), 1);
    edge.stop().await;
}

#[tokio::test]
async fn raw_tcp_route_round_trips_with_half_close() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut stream, _) = echo.accept().await.unwrap();
        let mut received = Vec::new();
        stream.read_to_end(&mut received).await.unwrap();
        received.reverse();
        stream.write_all(&received).await.unwrap();
        stream.shutdown().await.unwrap();
    });
    let edge = edge(1, 1, echo_port, false).await;
    let mut client = TcpStream::connect(edge.tcp).await.unwrap();
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    client.write_all(&payload).await.unwrap();
    client.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(DEADLINE, client.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    let mut expected = payload;
    expected.reverse();
    assert_eq!(back, expected);
    edge.stop().await;
}

#[tokio::test]
async fn sni_picks_exact_wildcard_default_or_refuses() {
    let edge_without_default = edge(1, 1, 1, false).await;
    let addr = edge_without_default.https;
    let stream = tls(addr, Some("www.app.test"), &[b"h2"]).await.unwrap();
    assert_eq!(served_names(&stream), ["app.test", "www.app.test"]);
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let stream = tls(addr, Some("Q.Wild.Test"), &[]).await.unwrap();
    assert_eq!(served_names(&stream), ["*.wild.test"]);
    assert!(tls(addr, Some("unknown.test"), &[]).await.is_err());
    assert!(tls(addr, None, &[]).await.is_err());
    // The refusal did not hurt the listener.
    let stream = tls(addr, Some("app.test"), &[b"http/1.1"]).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    edge_without_default.stop().await;

    let edge_with_default = edge(1, 1, 1, true).await;
    let stream = tls(edge_with_default.https, Some("unknown.test"), &[])
        .await
        .unwrap();
    assert_eq!(served_names(&stream), ["app.test", "www.app.test"]);
    let stream = tls(edge_with_default.https, None, &[]).await.unwrap();
    assert_eq!(served_names(&stream), ["app.test", "www.app.test"]);
    edge_with_default.stop().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests() {
    let home = app("home").await;
    let edge = edge(home.addr.port(), 1, 1, false).await;
    let https = edge.https;
    let in_flight = tokio::spawn(async move {
        let io = TokioIo::new(tls(https, Some("app.test"), &[b"http/1.1"]).await.unwrap());
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        let response = sender.send_request(get("/sse", "app.test")).await.unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    edge.stop().await;
    let body = in_flight.await.unwrap();
    assert_eq!(body, "data: 0\n\ndata: 1\n\ndata: 2\n\n");
    assert!(
        TcpStream::connect(https).await.is_err(),
        "still accepting after shutdown"
    );
}

/// Reads from `stream` until `count` whole HTTP/1.1 responses (with `content-length` bodies)
/// have arrived; returns them. Fails on EOF or after [`DEADLINE`].
async fn read_responses(stream: &mut TlsStream<TcpStream>, count: usize) -> Vec<String> {
    let mut buffer = Vec::new();
    let mut responses = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while responses.len() < count {
        // Parse what has arrived.
        let text = String::from_utf8_lossy(&buffer).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .expect("responses carry content-length");
            if buffer.len() >= end + 4 + length {
                let whole: Vec<u8> = buffer.drain(..end + 4 + length).collect();
                responses.push(String::from_utf8_lossy(&whole).into_owned());
                continue;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("responses arrive in time")
            .unwrap();
        assert!(n > 0, "connection closed after {responses:?}");
        buffer.extend_from_slice(&chunk[..n]);
    }
    responses
}

/// A TLS connection to the edge for `app.test`, speaking HTTP/1.1.
async fn h1(edge: &Harness) -> TlsStream<TcpStream> {
    tls(edge.https, Some("app.test"), &[b"http/1.1"])
        .await
        .unwrap()
}

/// Waits until `kokoa_edge_parked_connections` reads `expected`.
async fn parked(edge: &Harness, expected: i64, step: &str) {
    let deadline = Instant::now() + DEADLINE;
    while edge.metrics.parked.get() != expected {
        assert!(
            Instant::now() < deadline,
            "{step}: parked connections: {} (waiting for {expected})",
            edge.metrics.parked.get()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_park_and_serve_their_next_requests() {
    let home = app("home").await;
    let edge = edge(home.addr.port(), 1, 1, false).await;
    let mut stream = h1(&edge).await;
    stream
        .write_all(b"GET /first HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let first = read_responses(&mut stream, 1).await;
    assert!(first[0].starts_with("HTTP/1.1 200"), "{first:?}");
    assert!(first[0].contains("path=/first"), "{first:?}");
    assert!(!first[0].to_ascii_lowercase().contains("connection: close"));

    // Idle: the connection is parked, and still the same connection serves the next request.
    parked(&edge, 1, "after /first").await;
    stream
        .write_all(b"GET /second HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let second = read_responses(&mut stream, 1).await;
    assert!(second[0].contains("path=/second"), "{second:?}");

    // Parked again; two pipelined requests and the start of a third arrive in one write, the
    // rest of the third after another idle spell (parked with the partial head kept).
    parked(&edge, 1, "after /second").await;
    stream
        .write_all(
            b"GET /third HTTP/1.1\r\nHost: app.test\r\n\r\n\
              GET /fourth HTTP/1.1\r\nHost: app.test\r\n\r\n\
              GET /fifth HTTP/1.1\r\nHo",
        )
        .await
        .unwrap();
    let both = read_responses(&mut stream, 2).await;
    assert!(both[0].contains("path=/third"), "{both:?}");
    assert!(both[1].contains("path=/fourth"), "{both:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    stream.write_all(b"st: app.test\r\n\r\n").await.unwrap();
    let fifth = read_responses(&mut stream, 1).await;
    assert!(fifth[0].contains("path=/fifth"), "{fifth:?}");
    assert!(fifth[0].contains("host: app.test"), "{fifth:?}");

    // One connection served all five requests.
    assert_eq!(home.connections.load(Ordering::SeqCst), 1);

    // Draining closes a parked connection politely (TLS close_notify: a clean EOF).
    parked(&edge, 1, "before draining").await;
    let stop = tokio::spawn(edge.stop());
    let mut rest = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest))
        .await
        .expect("the parked connection is closed when draining");
    assert_eq!(read.unwrap(), 0);
    stop.await.unwrap();
}

#[tokio::test]
async fn unread_request_body_is_never_parsed_as_a_request() {
    let home = app("home").await;
    let edge = edge(home.addr.port(), 1, 1, false).await;
    let mut stream = h1(&edge).await;
    // A request for an unknown host is answered 404 without reading its body; the body,
    // sent after the answer, holds a request of its own.
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let head = format!(
        "POST / HTTP/1.1\r\nHost: nowhere.test\r\nContent-Length: {}\r\n\r\n",
        smuggled.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let refused = read_responses(&mut stream, 1).await;
    assert!(refused[0].starts_with("HTTP/1.1 404"), "{refused:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let _ = stream.write_all(smuggled).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest))
        .await
        .expect("the connection is closed");
    let rest = String::from_utf8_lossy(&rest);
    assert!(!rest.contains("smuggled"), "{rest}");
    assert_eq!(home.connections.load(Ordering::SeqCst), 0, "{rest}");
    edge.stop().await;
}

#[tokio::test]
async fn websocket_upgrade_on_a_parked_keep_alive_connection() {
    let home = app("home").await;
    let edge = edge(home.addr.port(), 1, 1, false).await;
    let mut stream = h1(&edge).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    read_responses(&mut stream, 1).await;
    parked(&edge, 1, "after the GET").await;
    let (mut ws, response) = tokio_tungstenite::client_async("wss://app.test/ws", stream)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    parked(&edge, 0, "after the upgrade").await;
    ws.send(Message::text("after a park")).await.unwrap();
    let echoed = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("after a park"));
    ws.close(None).await.unwrap();
    edge.stop().await;
}

#[tokio::test]
async fn connection_close_is_honoured_after_the_response() {
    let home = app("home").await;
    let edge = edge(home.addr.port(), 1, 1, false).await;
    let mut stream = h1(&edge).await;
    stream
        .write_all(b"GET /only HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut all))
        .await
        .expect("the edge closes the connection")
        .unwrap();
    let all = String::from_utf8_lossy(&all);
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(all.contains("path=/only"), "{all}");
    assert_eq!(edge.metrics.parked.get(), 0);
    edge.stop().await;
}

/// Writes `request` over a new HTTP/1.1 TLS connection for `app.test` (reading meanwhile) and
/// returns everything the edge sent until it closed.
async fn raw(edge: &Harness, request: &[u8]) -> String {
    let stream = h1(edge).await;
    let (mut read, mut write) = tokio::io::split(stream);
    let request = request.to_vec();
    let writer = tokio::spawn(async move {
        // The edge may answer and close before reading everything.
        let _ = write.write_all(&request).await;
        let _ = write.flush().await;
        // Keep the write half open: the edge decides when the exchange ends.
        std::future::pending::<()>().await;
    });
    let mut response = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, read.read_to_end(&mut response)).await;
    writer.abort();
    String::from_utf8_lossy(&response).into_owned()
}

/// An HTTP/2 connection (the `h2` crate, which sends what it is given) for `app.test`.
async fn h2_client(edge: &Harness) -> h2::client::SendRequest<Bytes> {
    let stream = tls(edge.https, Some("app.test"), &[b"h2"]).await.unwrap();
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Sends `request` without a body on `client`; returns status, headers and body text.
async fn h2_exchange(
    client: &mut h2::client::SendRequest<Bytes>,
    request: Request<()>,
) -> (StatusCode, http::HeaderMap, String) {
    let ready = client.clone().ready().await.unwrap();
    *client = ready;
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(DEADLINE, response)
        .await
        .unwrap()
        .unwrap();
    let (parts, mut body) = response.into_parts();
    let mut text = Vec::new();
    while let Some(chunk) = tokio::time::timeout(DEADLINE, body.data()).await.unwrap() {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&text).into_owned(),
    )
}

#[tokio::test]
async fn malformed_chunked_bodies_are_the_client_s_error() {
    let home = app("home").await;
    let edge = edge(home.addr.port(), 1, 1, false).await;
    for size in ["-5", "0x5", "123456789abcdef012", "5\n"] {
        let line = if size.ends_with('\n') {
            size.to_owned()
        } else {
            format!("{size}\r\n")
        };
        let request = format!(
            "POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n{line}hello\r\n0\r\n\r\n"
        );
        let response = raw(&edge, request.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{size:?}: {response}");
        assert!(response.contains("connection: close"), "{response}");
        assert!(response.contains("malformed"), "{response}");
    }
    // A coding the edge cannot decode would reach the app still encoded: 501.
    let response = raw(
        &edge,
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 501"), "{response}");
    // A well-formed one still passes.
    let response = raw(
        &edge,
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("body=hello\n"), "{response}");
    let text = edge.metrics_text();
    assert!(
        text.contains("kokoa_edge_requests_total{host=\"app.test\",class=\"4xx\"} 4"),
        "{text}"
    );
    assert!(
        !text.contains("kokoa_edge_requests_total{host=\"app.test\",class=\"5xx\"}"),
        "{text}"
    );
    edge.stop().await;
}

#[tokio::test]
async fn connect_is_refused_and_options_star_is_forwarded_as_is() {
    let home = app("home").await;
    let edge = edge(home.addr.port(), 1, 1, false).await;
    let response = raw(
        &edge,
        b"CONNECT app.test:443 HTTP/1.1\r\nHost: app.test:443\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    assert!(
        response.contains("allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH\r\n"),
        "{response}"
    );
    let mut client = h2_client(&edge).await;
    let connect = Request::builder()
        .method("CONNECT")
        .uri("app.test:443")
        .body(())
        .unwrap();
    let (status, headers, _) = h2_exchange(&mut client, connect).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(headers.contains_key("allow"));
    assert_eq!(
        home.connections.load(Ordering::SeqCst),
        0,
        "a CONNECT reached the app"
    );

    // OPTIONS * reaches the app as OPTIONS *, over both protocols; * with another method is
    // refused.
    let response = raw(
        &edge,
        b"OPTIONS * HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("method=OPTIONS\npath=*\n"), "{response}");
    let star = http::Uri::from_parts({
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTPS);
        parts.authority = Some("app.test".parse().unwrap());
        parts.path_and_query = Some("*".parse().unwrap());
        parts
    })
    .unwrap();
    let options = Request::builder()
        .method("OPTIONS")
        .uri(star)
        .body(())
        .unwrap();
    let (status, _, body) = h2_exchange(&mut client, options).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("method=OPTIONS\npath=*\n"), "{body}");
    let response = raw(
        &edge,
        b"GET * HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    edge.stop().await;
}

#[tokio::test]
async fn host_must_be_single_and_agree_with_the_target() {
    let home = app("home").await;
    let lab = app("lab").await;
    let edge = edge(home.addr.port(), lab.addr.port(), 1, false).await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: x.wild.test\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: app.test\r\n\r\n",
        b"GET https://x.wild.test/ HTTP/1.1\r\nHost: app.test\r\n\r\n",
        b"GET https://app.test:8443/ HTTP/1.1\r\nHost: app.test\r\n\r\n",
        b"GET https://app.test/ HTTP/1.1\r\n\r\n",
    ] {
        let response = raw(&edge, request).await;
        assert!(
            response.starts_with("HTTP/1.1 400"),
            "{}: {response}",
            String::from_utf8_lossy(request)
        );
    }
    // An absolute-form target that agrees: routed by it, forwarded in origin form.
    let response = raw(
        &edge,
        b"GET https://APP.test/abs?x=1 HTTP/1.1\r\nHost: app.test:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("app=home\n"), "{response}");
    assert!(response.contains("path=/abs?x=1\n"), "{response}");

    // HTTP/2: a host field that names another host than :authority.
    let mut client = h2_client(&edge).await;
    let request = Request::get("https://app.test/")
        .header("host", "x.wild.test")
        .body(())
        .unwrap();
    let (status, _, _) = h2_exchange(&mut client, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let request = Request::get("https://app.test/h2")
        .header("host", "app.test")
        .body(())
        .unwrap();
    let (status, _, body) = h2_exchange(&mut client, request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("app=home"), "{body}");
    assert_eq!(lab.connections.load(Ordering::SeqCst), 0);
    edge.stop().await;
}

#[tokio::test]
async fn split_http2_cookies_reach_the_app_joined() {
    let home = app("home").await;
    let edge = edge(home.addr.port(), 1, 1, false).await;
    let mut client = h2_client(&edge).await;
    let request = Request::get("https://app.test/cookies")
        .header("cookie", "a=1")
        .header("cookie", "b=2; c=3")
        .header("cookie", "d=4")
        .body(())
        .unwrap();
    let (status, _, body) = h2_exchange(&mut client, request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("cookie: a=1; b=2; c=3; d=4\n"), "{body}");
    assert_eq!(body.matches("cookie:").count(), 1, "{body}");
    edge.stop().await;
}

#[tokio::test]
async fn sni_host_check_answers_421_for_misdirected_requests() {
    let home = app("home").await;
    let lab = app("lab").await;
    for (mode, coalesced) in [
        ("certificate", StatusCode::OK),
        ("exact", StatusCode::MISDIRECTED_REQUEST),
    ] {
        let edge = edge_with(
            home.addr.port(),
            lab.addr.port(),
            1,
            true,
            &format!("sni_host_check = \"{mode}\""),
        )
        .await;
        for h2 in [false, true] {
            let request = |host: &str| {
                if h2 {
                    h2_get(&format!("https://{host}/"))
                } else {
                    get("/", host)
                }
            };
            // The handshake's own name.
            let (status, _, _) = send(edge.https, "app.test", h2, request("app.test"))
                .await
                .unwrap();
            assert_eq!(status, StatusCode::OK, "{mode} h2={h2}");
            // Another name of the same certificate: HTTP/2 coalescing.
            let (status, _, _) = send(edge.https, "app.test", h2, request("www.app.test"))
                .await
                .unwrap();
            assert_eq!(status, coalesced, "{mode} h2={h2}");
            // A name served with another certificate: domain fronting.
            let (status, _, body) = send(edge.https, "app.test", h2, request("x.wild.test"))
                .await
                .unwrap();
            assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{mode} h2={h2}");
            assert!(body.contains("421"), "{body}");
        }
        edge.stop().await;
    }
    assert_eq!(
        lab.connections.load(Ordering::SeqCst),
        0,
        "a misdirected request went through"
    );
    // Off (the default): any routed host on any connection.
    let edge = edge(home.addr.port(), lab.addr.port(), 1, true).await;
    let (status, _, body) = send(edge.https, "app.test", false, get("/", "x.wild.test"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("app=lab"), "{body}");
    edge.stop().await;
}
