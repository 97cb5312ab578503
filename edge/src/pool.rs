//! The upstream keep-alive pool: idle HTTP/1.1 connections to each origin service are kept and
//! reused, as Nginx's upstream `keepalive` does, so that a request does not pay a TCP handshake
//! through the tunnel.
//!
//! Built on hyper's HTTP/1.1 client connections over any [`Dialer`], with a small pool of its
//! own rather than hyper-util's generic client: per request that client raced a checkout
//! against a lazy connect, hashed a `(scheme, authority)` key with SipHash, and spawned a task
//! to wait for the connection to become idle again. Here a connection goes back to its
//! service's idle list when the response body has been read to its end, and the next request
//! that takes it waits (briefly) for hyper to be ready for it.
//!
//! The pool key is the request URI's authority, which encodes the service:
//! `http://<origin>:<port>/…` from [`service_uri`] (origin names are restricted to URI-safe
//! characters by the config). The request goes out in origin form (`GET /path`); the real
//! `Host` header is set by the proxy.
//!
//! Idle connections are kept LIFO (the most recently used first, so that a quiet service's
//! extra connections age out), at most `max_idle` per service and for at most `idle_timeout`;
//! a sweep drops expired ones even when no request comes. A connection the origin closed is
//! dropped when it is next looked at. A request that a reused connection could not even start
//! to send (the origin closed it meanwhile) is retried on another connection.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::dial::{DialError, Dialer};
use crate::metrics::{DialLabels, Metrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Boxed error of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request sent upstream and every response sent to clients.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// How many times a request is moved to another connection when a reused one turns out to be
/// closed before the request could be written.
const MAX_STALE_RETRIES: usize = 3;

/// The URI that addresses `port` on `origin` in the pool (path and query appended by callers;
/// `*` stays `*`, the target of `OPTIONS *`).
pub fn service_uri(origin: &str, port: u16, path_and_query: &str) -> Result<Uri, http::Error> {
    let path = if path_and_query.starts_with('/') || path_and_query == "*" {
        path_and_query
    } else {
        "/"
    };
    Uri::builder()
        .scheme("http")
        .authority(format!("{origin}:{port}"))
        .path_and_query(path)
        .build()
}

/// Why a request could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The request's URI does not name a service (a bug: the proxy builds it).
    #[error("the upstream request URI `{0}` names no origin service")]
    NoService(Uri),
    /// No connection to the service could be opened.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The HTTP/1.1 exchange failed: the origin closed or broke the connection, answered
    /// something that is not HTTP, or the request body failed.
    #[error("upstream request failed")]
    Request(#[source] hyper::Error),
}

/// The [`DialError`] inside a pool error, if connecting was what failed.
pub fn dial_error(error: &SendError) -> Option<&DialError> {
    match error {
        SendError::Dial(dial) => Some(dial),
        _ => None,
    }
}

type Sender = http1::SendRequest<ProxyBody>;

struct Idle {
    sender: Sender,
    since: Instant,
}

struct Shared<D> {
    dialer: Arc<D>,
    // Only this family, not all of `Metrics`.
    dial_errors: Family<DialLabels, Counter>,
    idle: Mutex<HashMap<Box<str>, Vec<Idle>>>,
    max_idle: usize,
    idle_timeout: Duration,
    sweeping: std::sync::Once,
}

/// The keep-alive pool, shared by every route, keyed by origin service.
pub struct Pool<D: Dialer> {
    shared: Arc<Shared<D>>,
}

impl<D: Dialer> Clone for Pool<D> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<D: Dialer> Pool<D> {
    /// Keeps up to `max_idle` idle connections per origin service for `idle_timeout`.
    pub fn new(dialer: Arc<D>, metrics: Metrics, max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                dialer,
                dial_errors: metrics.dial_errors.clone(),
                idle: Mutex::new(HashMap::new()),
                max_idle,
                idle_timeout,
                sweeping: std::sync::Once::new(),
            }),
        }
    }

    /// Sends `request` (its URI from [`service_uri`]) over an idle or new connection.
    pub async fn send(
        &self,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<Pooled>, SendError> {
        let Some(authority) = request.uri().authority().cloned() else {
            return Err(SendError::NoService(request.uri().clone()));
        };
        self.shared.sweeping.call_once(|| {
            tokio::spawn(sweep(Arc::downgrade(&self.shared)));
        });
        // hyper writes the URI as given: send the origin form.
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::from(path);

        let mut stale = 0;
        loop {
            let (mut sender, reused) = match self.checkout(authority.as_str()).await {
                Some(sender) => (sender, true),
                None => (self.connect(&authority).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    // An upgraded connection is the WebSocket's now; it never comes back.
                    let ticket =
                        (response.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| Ticket {
                            sender,
                            pool: Arc::downgrade(&self.shared) as Weak<dyn Return>,
                            key: authority.clone(),
                        });
                    return Ok(response.map(|body| Pooled::new(body, ticket)));
                }
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused && stale < MAX_STALE_RETRIES => {
                        tracing::debug!(error = %error.error(), "pooled upstream connection was closed; retrying on another");
                        stale += 1;
                        request = unsent;
                    }
                    _ => return Err(SendError::Request(error.into_error())),
                },
            }
        }
    }

    /// An idle connection to `key` that is ready for a request, if there is one.
    async fn checkout(&self, key: &str) -> Option<Sender> {
        loop {
            let mut idle = {
                let mut lists = self.shared.idle.lock().unwrap_or_else(|e| e.into_inner());
                // An emptied list stays (the sweep removes it): a service's one connection
                // comes and goes with every request, and its entry need not.
                lists.get_mut(key)?.pop()?
            };
            if idle.since.elapsed() >= self.shared.idle_timeout || idle.sender.is_closed() {
                continue;
            }
            // The previous response has been read; hyper is ready for the next request as soon
            // as the connection task has seen that, or reports the connection closed.
            if idle.sender.ready().await.is_ok() {
                return Some(idle.sender);
            }
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Sender, SendError> {
        let origin = authority.host();
        let port = authority.port_u16().unwrap_or(80);
        let stream = match self.shared.dialer.dial(origin, port).await {
            Ok(stream) => stream,
            Err(error) => {
                self.shared
                    .dial_errors
                    .get_or_create(&DialLabels {
                        origin: origin.to_owned(),
                        reason: error.reason(),
                    })
                    .inc();
                return Err(error.into());
            }
        };
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Request)?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// Puts a connection back on its service's idle list (type-erased over the dialer).
trait Return: Send + Sync {
    fn put_back(&self, key: &Authority, sender: Sender);
}

impl<D: Dialer> Return for Shared<D> {
    fn put_back(&self, key: &Authority, sender: Sender) {
        if self.max_idle == 0 || sender.is_closed() {
            return;
        }
        let mut lists = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = match lists.get_mut(key.as_str()) {
            Some(list) => list,
            None => lists.entry(Box::from(key.as_str())).or_default(),
        };
        if list.len() >= self.max_idle {
            // Over the limit: the least recently used one closes.
            list.remove(0);
        }
        list.push(Idle {
            sender,
            since: Instant::now(),
        });
    }
}

/// Drops expired idle connections every quarter of the idle timeout until the pool is gone.
async fn sweep<D: Dialer>(pool: Weak<Shared<D>>) {
    let period = pool
        .upgrade()
        .map(|shared| shared.idle_timeout / 4)
        .unwrap_or_default()
        .max(Duration::from_millis(250));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = pool.upgrade() else {
            return;
        };
        let expired: Vec<Idle> = {
            let mut lists = shared.idle.lock().unwrap_or_else(|e| e.into_inner());
            let mut expired = Vec::new();
            lists.retain(|_, list| {
                // Oldest first: the expired ones are a prefix.
                let keep = list
                    .iter()
                    .position(|idle| {
                        idle.since.elapsed() < shared.idle_timeout && !idle.sender.is_closed()
                    })
                    .unwrap_or(list.len());
                expired.extend(list.drain(..keep));
                !list.is_empty()
            });
            expired
        };
        // Closing happens outside the lock.
        drop(expired);
    }
}

/// The right to put a connection back once its response has been read.
struct Ticket {
    sender: Sender,
    pool: Weak<dyn Return>,
    key: Authority,
}

/// A response body from the pool: hyper's body, which hands its connection back to the pool
/// once it has been read to the end. Dropped before its end, the connection is closed (hyper
/// cannot reuse a connection with an unread response in it).
pub struct Pooled {
    inner: Incoming,
    ticket: Option<Ticket>,
}

impl Pooled {
    fn new(inner: Incoming, ticket: Option<Ticket>) -> Self {
        let mut body = Self { inner, ticket };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            if let Some(pool) = ticket.pool.upgrade() {
                pool.put_back(&ticket.key, ticket.sender);
            }
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.ticket = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("returns_connection", &self.ticket.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dial::TcpDialer;
    use http_body_util::{BodyExt, Empty};
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn service_uri_encodes_origin_and_port() {
        let uri = service_uri("home_1", 8001, "/a?b=c").unwrap();
        assert_eq!(uri.host(), Some("home_1"));
        assert_eq!(uri.port_u16(), Some(8001));
        assert_eq!(uri.path_and_query().unwrap().as_str(), "/a?b=c");
        assert_eq!(service_uri("o", 1, "x").unwrap().path(), "/");
        let star = service_uri("o", 1, "*").unwrap();
        assert_eq!(star.authority().unwrap().as_str(), "o:1");
        assert_eq!(Uri::from(star.path_and_query().unwrap().clone()), "*");
    }

    /// What a scripted origin saw: request heads, and which connections ended.
    #[derive(Debug)]
    enum Seen {
        Head(usize, String),
        Closed(usize),
    }

    /// A raw HTTP/1.1 origin on loopback: every request gets `response(n)` where `n` counts
    /// the requests on that connection; the connection is closed after a response when
    /// `close_after(n)` says so. Reports what it sees.
    async fn scripted_origin(
        response: fn(usize) -> Vec<u8>,
        close_after: fn(usize) -> bool,
    ) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Seen>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen, events) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for connection in 0.. {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    for n in 1.. {
                        let end = loop {
                            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => {
                                    let _ = seen.send(Seen::Closed(connection));
                                    return;
                                }
                                Ok(read) => buffer.extend_from_slice(&chunk[..read]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
                        buffer.drain(..end);
                        let _ = seen.send(Seen::Head(connection, head));
                        if stream.write_all(&response(n)).await.is_err() {
                            return;
                        }
                        if close_after(n) {
                            let _ = seen.send(Seen::Closed(connection));
                            return;
                        }
                    }
                });
            }
        });
        (port, events)
    }

    fn local_pool(max_idle: usize, idle_timeout: Duration) -> Pool<TcpDialer> {
        let dialer = TcpDialer::new(
            HashMap::from([("home".to_owned(), IpAddr::V4(Ipv4Addr::LOCALHOST))]),
            Duration::from_secs(2),
        );
        Pool::new(Arc::new(dialer), Metrics::default(), max_idle, idle_timeout)
    }

    fn get(port: u16, path: &str) -> Request<ProxyBody> {
        Request::builder()
            .uri(service_uri("home", port, path).unwrap())
            .header(http::header::HOST, "app.example.com")
            .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
            .unwrap()
    }

    async fn next(events: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>) -> Seen {
        tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("the origin saw nothing within 5 s")
            .expect("origin gone")
    }

    fn ok_response(_: usize) -> Vec<u8> {
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()
    }

    #[tokio::test]
    async fn requests_go_out_in_origin_form_and_a_closed_connection_is_replaced() {
        // The origin closes every connection after its first response, as an app with a
        // short keep-alive timeout does.
        let (port, mut events) = scripted_origin(ok_response, |_| true).await;
        let pool = local_pool(4, Duration::from_secs(90));
        for round in 0..3 {
            let response = pool.send(get(port, "/a?b=c")).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            let Seen::Head(connection, head) = next(&mut events).await else {
                panic!("expected a request");
            };
            assert_eq!(connection, round);
            assert!(head.starts_with("GET /a?b=c HTTP/1.1\r\n"), "{head}");
            assert!(head.contains("host: app.example.com\r\n"), "{head}");
            assert!(matches!(next(&mut events).await, Seen::Closed(c) if c == round));
        }
    }

    #[tokio::test]
    async fn a_response_dropped_before_its_end_closes_its_connection() {
        fn long(_: usize) -> Vec<u8> {
            let mut response = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n".to_vec();
            response.resize(response.len() + 100_000, b'x');
            response
        }
        let (port, mut events) = scripted_origin(long, |_| false).await;
        let pool = local_pool(4, Duration::from_secs(90));
        let mut response = pool.send(get(port, "/big")).await.unwrap();
        let first = response.body_mut().frame().await.unwrap().unwrap();
        assert!(first.into_data().is_ok_and(|data| !data.is_empty()));
        drop(response);
        assert!(matches!(next(&mut events).await, Seen::Head(0, _)));
        assert!(matches!(next(&mut events).await, Seen::Closed(0)));

        let response = pool.send(get(port, "/big")).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 100_000);
        assert!(matches!(next(&mut events).await, Seen::Head(1, _)));
    }

    #[tokio::test]
    async fn idle_connections_are_bounded_per_service_and_expire() {
        let (port, mut events) = scripted_origin(ok_response, |_| false).await;
        let pool = local_pool(1, Duration::from_millis(600));
        // Two responses in flight at once need two connections.
        let first = pool.send(get(port, "/1")).await.unwrap();
        let second = pool.send(get(port, "/2")).await.unwrap();
        for response in [first, second] {
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        let mut heads = 0;
        let closed = loop {
            match next(&mut events).await {
                Seen::Head(..) => heads += 1,
                Seen::Closed(connection) => break connection,
            }
        };
        assert_eq!(heads, 2);
        // One connection was over the limit of one idle connection and closed at once; the
        // other is kept and reused.
        let started = std::time::Instant::now();
        let response = pool.send(get(port, "/3")).await.unwrap();
        response.into_body().collect().await.unwrap();
        let Seen::Head(reused, _) = next(&mut events).await else {
            panic!("expected a request");
        };
        assert_ne!(reused, closed);
        // Then, with no more requests, the sweep closes it once the idle timeout is over.
        assert!(matches!(next(&mut events).await, Seen::Closed(c) if c == reused));
        assert!(started.elapsed() >= Duration::from_millis(600));
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let server = tokio::spawn({
            let accepted = accepted.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(|_req| async {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(Bytes::from_static(b"ok")),
                            ))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        let dialer = TcpDialer::new(
            HashMap::from([("home".to_owned(), IpAddr::V4(Ipv4Addr::LOCALHOST))]),
            Duration::from_secs(2),
        );
        let pool = Pool::new(
            Arc::new(dialer),
            Metrics::default(),
            4,
            Duration::from_secs(90),
        );
        for _ in 0..20 {
            let request = http::Request::builder()
                .uri(service_uri("home", port, "/").unwrap())
                .header(http::header::HOST, "app.example.com")
                .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
                .unwrap();
            let response = pool.send(request).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        let request = http::Request::builder()
            .uri(service_uri("nowhere", port, "/").unwrap())
            .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
            .unwrap();
        let error = pool.send(request).await.unwrap_err();
        assert!(
            matches!(dial_error(&error), Some(DialError::UnknownOrigin(_))),
            "{error:?}"
        );
        server.abort();
    }
}
