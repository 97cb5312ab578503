//! The HTTP proxy: one request from a client (HTTP/1.1 or HTTP/2 over TLS) to an origin
//! service (HTTP/1.1 through the tunnel) and back.
//!
//! Per request: check the head ([`crate::head`]: one `Host` agreeing with the target, the
//! size of the head, the target's form), find the host (the target's authority or HTTP/2's
//! `:authority`, else `Host`), look it up in the current [`RouteTable`] snapshot, rewrite the
//! head (strip hop-by-hop headers, join HTTP/2's split `cookie` fields, replace the forwarding
//! headers, [`crate::forwarded`]), send it over the keep-alive [`Pool`], and stream the
//! response back. Bodies pass through frame by frame in both directions; nothing is buffered
//! whole. A WebSocket upgrade is forwarded and, once the origin answers 101, both upgraded
//! connections are spliced byte for byte. `CONNECT` is not forwarded (405): the edge is a
//! reverse proxy, not a tunnel to arbitrary ports.
//!
//! Admission, in this order, once the route is known and before anything goes upstream: the
//! connection's SNI against the host (421, when `sni_host_check` asks for it), the route's
//! allow/deny list (403), its request rate limit (429 with `Retry-After`), its body size limit
//! by `Content-Length` (413). A body without a length (chunked, or HTTP/2 without
//! `content-length`) is counted as it streams: going over the limit aborts the upstream request
//! and the client gets 413 if the origin has not answered yet. If the origin already answered
//! (it replied before reading the whole body), that answer is passed on and the upload is cut
//! off there: the origin sees its request body end with an error, the client sees the
//! connection close after the response.
//!
//! A request body that fails on the client's side is the client's error, never the origin's:
//! broken chunked framing, a client that went away mid-body (400), a body that stalls or
//! dribbles ([`crate::timeout`]: 408). The upstream connection is closed either way, so the
//! origin's app sees its request end.
//!
//! Requests refused with 403 or 429 write no access log line: they are counted in metrics and
//! logged at most once per second per route (with the number of lines suppressed), so a flood
//! of refused requests costs neither disk nor much CPU.
//!
//! Status codes the edge makes itself: 400 (no usable host, several `Host` fields, a `Host`
//! that disagrees with the target, a malformed request body), 403 (allow/deny list), 404 (no
//! route for the host), 405 (`CONNECT`), 408 (request body timed out), 413 (body too large),
//! 421 (host and SNI disagree), 429 (rate limited), 431 (too many header fields or a head over
//! `max_header_bytes`), 502 (the origin reset or broke the connection, or answered something
//! that is not HTTP), 503 (the origin could not be reached: unknown, down, or the tunnel timed
//! out), 503 "service down" (the origin refused the service's port at once: its probes found
//! the service down; with `Retry-After` and `kokoa-error: service-down`, counted in
//! `kokoa_edge_service_down_total`). See [`crate::dial::DialError::status`].

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use kokoa_node::drain::DrainWatch;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};
use tracing::Instrument as _;

use crate::dial::{Dialer, UpstreamClient};
use crate::forwarded;
use crate::head::{self, HeadError};
use crate::https::{HttpLimits, SharedHttpLimits};
use crate::limit::{Activity, InFlight};
use crate::metrics::{status_class, ByteLabels, Metrics};
use crate::pool::{dial_error, service_uri, BoxError, Pool, ProxyBody};
use crate::route::{normalize_host, Route, RouteTable};
use crate::sni::{host_permitted, CertStore, SniHostCheck};
use crate::timeout::{self, TransferClock};

/// The route label of requests no route matched.
const UNROUTED: &str = "unrouted";

/// Target of the access log lines (one per request, at `info`).
pub const ACCESS_LOG_TARGET: &str = "kokoa_edge::access";

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// A request body the proxy forwards: hyper's [`hyper::body::Incoming`] or a wrapper around it.
pub trait RequestBody: Body<Data = Bytes, Error = hyper::Error> + Send + 'static {}

impl<T: Body<Data = Bytes, Error = hyper::Error> + Send + 'static> RequestBody for T {}

/// The client side of an upgraded (WebSocket) connection.
pub trait UpgradedIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> UpgradedIo for T {}

/// Request extension set by a connection that hands its stream over itself once the `101` has
/// been sent, instead of through hyper's upgrade mechanism (which a connection that parks its
/// idle state, see [`crate::http1`], cannot use).
#[derive(Clone, Debug)]
pub struct UpgradeHandoff(Arc<std::sync::Mutex<Option<oneshot::Receiver<ClientUpgraded>>>>);

/// The client's upgraded stream, as a connection hands it over.
pub type ClientUpgraded = Box<dyn UpgradedIo>;

type ClientUpgrade =
    Pin<Box<dyn std::future::Future<Output = Result<ClientUpgraded, BoxError>> + Send>>;

impl UpgradeHandoff {
    /// A handoff and the sender the connection uses to deliver its stream.
    pub fn new() -> (oneshot::Sender<ClientUpgraded>, Self) {
        let (sender, receiver) = oneshot::channel();
        (
            sender,
            Self(Arc::new(std::sync::Mutex::new(Some(receiver)))),
        )
    }

    fn take(&self) -> Option<oneshot::Receiver<ClientUpgraded>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl std::fmt::Debug for dyn UpgradedIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpgradedIo")
    }
}

/// The client's upgraded stream, once the connection has sent the `101`: through the
/// connection's [`UpgradeHandoff`] when it set one, else through hyper.
fn client_upgrade<B>(request: &mut Request<B>) -> ClientUpgrade {
    if let Some(receiver) = request
        .extensions_mut()
        .remove::<UpgradeHandoff>()
        .and_then(|handoff| handoff.take())
    {
        return Box::pin(async move {
            receiver
                .await
                .map_err(|_| BoxError::from("the client connection ended before the upgrade"))
        });
    }
    let upgrade = hyper::upgrade::on(request);
    Box::pin(async move {
        let upgraded = upgrade.await?;
        Ok(Box::new(TokioIo::new(upgraded)) as ClientUpgraded)
    })
}

/// What a request needs to know about the connection it arrived on.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// The client's address.
    pub client: SocketAddr,
    /// The server name the client's TLS handshake asked for (only recorded when
    /// `sni_host_check` needs it).
    pub sni: Option<Arc<str>>,
    /// Held by spliced WebSocket connections so that draining waits for them.
    pub drain: DrainWatch,
    /// Becomes `true` when the drain time is up: spliced connections close at once.
    pub abort: watch::Receiver<bool>,
    /// Requests in flight on this connection (for the idle timeout).
    pub activity: Arc<Activity>,
}

/// The proxy service shared by every HTTPS connection.
pub struct Proxy<D: Dialer> {
    routes: Arc<ArcSwap<RouteTable>>,
    certificates: Arc<ArcSwap<CertStore>>,
    pool: Pool<D>,
    metrics: Metrics,
    limits: SharedHttpLimits,
    body_timeouts: Counter,
}

impl<D: Dialer> Proxy<D> {
    /// Routes with the current table in `routes` and forwards over `pool`, checking each
    /// request against the `limits` in force (`certificates`: what the edge serves, for
    /// `sni_host_check`).
    pub fn new(
        routes: Arc<ArcSwap<RouteTable>>,
        certificates: Arc<ArcSwap<CertStore>>,
        pool: Pool<D>,
        metrics: Metrics,
        limits: SharedHttpLimits,
    ) -> Self {
        Self {
            routes,
            certificates,
            pool,
            body_timeouts: metrics.timeout_counter("client_body"),
            metrics,
            limits,
        }
    }

    /// Answers one request. Never fails: every error becomes a short error page (and a log
    /// line for upstream failures).
    pub async fn handle<B: RequestBody>(
        &self,
        request: Request<B>,
        connection: &ConnectionInfo,
    ) -> Response<ProxyBody> {
        let host = head::request_host(&request);
        let raw_host = host.as_deref().unwrap_or("");
        // The client the request is for: the peer, or whom a trusted proxy names.
        let limits = self.limits.load_full();
        let client = limits
            .trusted_proxies
            .client(connection.client.ip(), request.headers());
        let span = tracing::info_span!(
            "request",
            method = %request.method(),
            host = raw_host,
            path = request.uri().path(),
        );
        // The line's strings are only copied when access logging is on.
        let logged = tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO);
        let mut log = AccessLog {
            client,
            host: if logged {
                raw_host.to_owned()
            } else {
                String::new()
            },
            method: request.method().clone(),
            path: if logged {
                request.uri().path().to_owned()
            } else {
                String::new()
            },
            status: StatusCode::OK,
            bytes: 0,
            route: None,
            start: Instant::now(),
            duration: self.metrics.request_duration.clone(),
            quiet: false,
        };
        let in_flight = connection.activity.begin();
        let response = match self.check_head(&request, host, &limits) {
            Err(error) => head_refusal(error, request.version() < Version::HTTP_2),
            Ok(host) => {
                self.forward(request, host, client, connection, &limits, &mut log)
                    .instrument(span)
                    .await
            }
        };
        log.status = response.status();
        let route_host = log
            .route
            .as_ref()
            .map_or(UNROUTED, |route| route.host.as_str());
        self.metrics
            .count_request(route_host, status_class(log.status));
        let counter = self.bytes_counter(route_host, "out");
        response.map(|body| {
            Metered {
                inner: body,
                counter,
                log,
                _in_flight: in_flight,
            }
            .boxed_unsync()
        })
    }

    /// The host of a request whose head the edge accepts, or why it is refused.
    fn check_head<B>(
        &self,
        request: &Request<B>,
        host: Result<String, HeadError>,
        limits: &HttpLimits,
    ) -> Result<String, HeadError> {
        // hyper enforces the count for HTTP/1 heads (answering 431 itself); HTTP/2 only bounds
        // the header list's size, so the count is checked here.
        if request.headers().len() > limits.max_headers {
            return Err(HeadError::TooManyFields);
        }
        if request.version() < Version::HTTP_2 && head::head_size(request) > limits.max_header_bytes
        {
            return Err(HeadError::TooLarge);
        }
        let host = host?;
        head::check_target(request)?;
        Ok(host)
    }

    fn bytes_counter(&self, route: &str, direction: &'static str) -> Counter {
        self.metrics
            .bytes
            .get_or_create(&ByteLabels {
                route: route.to_owned(),
                direction,
            })
            .clone()
    }

    async fn forward<B: RequestBody>(
        &self,
        mut request: Request<B>,
        raw_host: String,
        client: IpAddr,
        connection: &ConnectionInfo,
        limits: &HttpLimits,
        log: &mut AccessLog,
    ) -> Response<ProxyBody> {
        let routes = self.routes.load();
        let Some(route) = routes.lookup(&raw_host).cloned() else {
            return page(
                StatusCode::NOT_FOUND,
                "No site is configured for this host name on this server.",
            );
        };
        drop(routes);
        log.route = Some(route.clone());

        if limits.sni_host_check != SniHostCheck::Off {
            let host = normalize_host(&raw_host).unwrap_or_default();
            let sni = connection.sni.as_deref();
            if !host_permitted(limits.sni_host_check, sni, &host, &self.certificates.load()) {
                tracing::debug!(
                    sni = sni.unwrap_or(""),
                    "host and SNI disagree (sni_host_check)"
                );
                return page(
                    StatusCode::MISDIRECTED_REQUEST,
                    "This connection was opened for another site: retry on a new connection.",
                );
            }
        }
        if request.method() == Method::CONNECT {
            let mut response = page(
                StatusCode::METHOD_NOT_ALLOWED,
                "This server does not open tunnels (CONNECT).",
            );
            response
                .headers_mut()
                .insert(header::ALLOW, head::ALLOWED_METHODS);
            return response;
        }

        // Admission: the route is known and nothing has been sent upstream yet.
        if let Some(refusal) = self.admit(&request, &route, client) {
            log.quiet = matches!(
                refusal.status(),
                StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
            );
            return refusal;
        }

        let http1 = request.version() < Version::HTTP_2;
        let websocket = is_websocket_upgrade(&request);
        let client_upgrade = websocket.then(|| client_upgrade(&mut request));
        let peer = connection.client.ip();
        let origin = forwarded::Origin {
            peer,
            trusted: limits.trusted_proxies.contains(peer),
            client,
        };
        let upstream =
            match self.upstream_request(request, &raw_host, &route, origin, websocket, limits) {
                Ok(upstream) => upstream,
                Err(error) => {
                    tracing::debug!(%error, "cannot build the upstream request");
                    return page(StatusCode::BAD_REQUEST, "The request cannot be forwarded.");
                }
            };

        let mut response = match self.pool.send(upstream).await {
            Ok(response) => response,
            Err(error) if body_too_large(&error) => {
                Metrics::host_counter(&self.metrics.body_too_large, &route.host).inc();
                return page(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The request body is larger than this site accepts.",
                );
            }
            Err(error) if timeout::is_timeout(&error) => {
                tracing::debug!(error = %error_chain(&error), "request body timed out");
                return closing(
                    page(
                        StatusCode::REQUEST_TIMEOUT,
                        "The request body did not arrive in time.",
                    ),
                    http1,
                );
            }
            Err(error) if client_body_failed(&error) => {
                tracing::debug!(error = %error_chain(&error), "the client's request body failed");
                return closing(
                    page(
                        StatusCode::BAD_REQUEST,
                        "The request body is malformed or was cut off.",
                    ),
                    http1,
                );
            }
            Err(error) => {
                if let Some(dial) = dial_error(&error).filter(|d| d.is_service_down()) {
                    Metrics::host_counter(&self.metrics.service_down, &route.host).inc();
                    if let Some(suppressed) = route.admission.service_down_log.sample() {
                        tracing::warn!(
                            host = %raw_host,
                            origin = %route.origin,
                            port = route.port,
                            suppressed,
                            error = %dial,
                            "service down: answered 503 (one line per second per route; `suppressed` counts the others)"
                        );
                    }
                    return service_down_page();
                }
                let (status, detail) = match dial_error(&error) {
                    Some(dial) => (dial.status(), dial.to_string()),
                    None => (StatusCode::BAD_GATEWAY, error_chain(&error)),
                };
                tracing::warn!(
                    host = %raw_host,
                    origin = %route.origin,
                    port = route.port,
                    status = status.as_u16(),
                    error = %detail,
                    "upstream request failed"
                );
                let text = if status == StatusCode::SERVICE_UNAVAILABLE {
                    "The origin serving this site cannot be reached right now. Try again shortly."
                } else {
                    "The origin serving this site did not answer correctly."
                };
                return page(status, text);
            }
        };

        if let Some(client_upgrade) = client_upgrade {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                let origin_upgrade = hyper::upgrade::on(&mut response);
                let origin_upgrade = async move {
                    let upgraded = origin_upgrade.await?;
                    Ok::<_, BoxError>(TokioIo::new(upgraded))
                };
                let drain = connection.drain.clone();
                let mut abort = connection.abort.clone();
                let span =
                    tracing::info_span!("websocket", host = %raw_host, origin = %route.origin);
                tokio::spawn(
                    async move {
                        let (client, origin) = match tokio::try_join!(client_upgrade, origin_upgrade) {
                            Ok(pair) => pair,
                            Err(error) => {
                                tracing::debug!(%error, "upgrade failed");
                                return;
                            }
                        };
                        let (mut client, mut origin) = (client, origin);
                        tokio::select! {
                            result = tokio::io::copy_bidirectional(&mut client, &mut origin) => match result {
                                Ok((up, down)) => tracing::debug!(up, down, "websocket closed"),
                                Err(error) => tracing::debug!(%error, "websocket ended with an error"),
                            },
                            _ = abort.wait_for(|abort| *abort) => tracing::debug!("websocket closed by shutdown"),
                        }
                        drop(drain);
                    }
                    .instrument(span),
                );
                let (parts, _) = response.into_parts();
                return Response::from_parts(parts, empty());
            }
        }

        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // The protocol version is hop-by-hop: an HTTP/1.0 app must not make the edge answer
        // its own HTTP/1.1 client in HTTP/1.0 (hyper would then close the client connection).
        parts.version = Version::HTTP_11;
        let body = body.map_err(BoxError::from).boxed_unsync();
        Response::from_parts(parts, body)
    }

    /// The refusal for a request the route does not admit to `client`, or `None` to go ahead.
    fn admit<B: RequestBody>(
        &self,
        request: &Request<B>,
        route: &Route,
        client: IpAddr,
    ) -> Option<Response<ProxyBody>> {
        let admission = &route.admission;
        if !admission.policy.acl.permits(client) {
            Metrics::host_counter(&self.metrics.acl_denied, &route.host).inc();
            if let Some(suppressed) = admission.acl_log.sample() {
                tracing::info!(
                    client = %client,
                    route = %route.host,
                    suppressed,
                    "refused by the route's allow/deny list (one line per second per route; `suppressed` counts the others)"
                );
            }
            return Some(page(
                StatusCode::FORBIDDEN,
                "Your address is not allowed to use this site.",
            ));
        }
        if let Some(limiter) = &admission.limiter {
            if let Err(limited) = limiter.check(client) {
                Metrics::host_counter(&self.metrics.rate_limited, &route.host).inc();
                if let Some(suppressed) = limiter.sample_log() {
                    tracing::warn!(
                        client = %client,
                        route = %route.host,
                        rate = limiter.policy().per_second,
                        burst = limiter.policy().burst,
                        suppressed,
                        "request rate limit exceeded (one line per second per route; `suppressed` counts the others)"
                    );
                }
                let mut response = page(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many requests from your address. Slow down and try again shortly.",
                );
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(limited.retry_after_secs),
                );
                return Some(response);
            }
        }
        if let Some(max) = admission.policy.max_body_bytes {
            let declared = request
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok());
            if declared.is_some_and(|length| length > max) {
                Metrics::host_counter(&self.metrics.body_too_large, &route.host).inc();
                return Some(page(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The request body is larger than this site accepts.",
                ));
            }
        }
        None
    }

    fn upstream_request<B: RequestBody>(
        &self,
        request: Request<B>,
        raw_host: &str,
        route: &Route,
        origin: forwarded::Origin,
        websocket: bool,
        limits: &HttpLimits,
    ) -> Result<Request<ProxyBody>, BoxError> {
        let (mut parts, body) = request.into_parts();
        let target = if head::is_asterisk_form(&parts.uri) {
            "*"
        } else {
            parts
                .uri
                .path_and_query()
                .map(|pq| pq.as_str())
                .unwrap_or("/")
        };
        parts.uri = service_uri(&route.origin, route.port, target)?;
        let from_h2 = parts.version == Version::HTTP_2;
        parts.version = Version::HTTP_11;
        parts.extensions = http::Extensions::new();
        // The tunnel charges the upstream stream's buffers to this client's window share.
        parts
            .extensions
            .insert(UpstreamClient::new(limits.key_mask, origin.client));
        let headers = &mut parts.headers;
        strip_hop_by_hop(headers);
        let host = HeaderValue::from_str(raw_host)?;
        headers.insert(header::HOST, host.clone());
        forwarded::rewrite(headers, origin, &host);
        if from_h2 {
            join_cookies(headers);
        }
        if websocket {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        }
        let limit = route.admission.policy.max_body_bytes;
        let deadline =
            (!body.is_end_stream()).then(|| limits.timeouts.body_clock(self.body_timeouts.clone()));
        let body = ClientBody {
            inner: body,
            counter: self.bytes_counter(&route.host, "in"),
            limit,
            remaining: limit.unwrap_or(u64::MAX),
            deadline,
        };
        Ok(Request::from_parts(parts, body.boxed_unsync()))
    }
}

/// HTTP/2 lets a client send `cookie` as several fields (RFC 9113 section 8.2.3); an HTTP/1.1
/// app expects one, so they are joined with "; " into one.
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// The answer to a refused request head; an HTTP/1 connection closes after it (its framing is
/// in doubt).
pub fn head_refusal(error: HeadError, http1: bool) -> Response<ProxyBody> {
    closing(page(error.status(), &error.to_string()), http1)
}

/// `response` with `Connection: close` for an HTTP/1 client: the edge did not read its request
/// body to the end, so the connection cannot carry another request.
fn closing(mut response: Response<ProxyBody>, http1: bool) -> Response<ProxyBody> {
    if http1 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

pub(crate) fn header_has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// Whether `request` asks for an HTTP/1.1 WebSocket upgrade.
pub fn is_websocket_upgrade<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_11
        && header_has_token(request.headers(), &header::CONNECTION, "upgrade")
        && header_has_token(request.headers(), &header::UPGRADE, "websocket")
}

/// Removes hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`,
/// `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding` and `Upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(name);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(current) = source {
        text.push_str(": ");
        text.push_str(&current.to_string());
        source = current.source();
    }
    text
}

/// An empty body.
pub fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// `Retry-After` of the "service down" page, in seconds: the default interval of the origins'
/// probes, after which a service that came back is served again.
pub const SERVICE_DOWN_RETRY_AFTER_SECS: u32 = 5;

/// The header that marks an answer the edge made because the route's service is down.
pub static KOKOA_ERROR: HeaderName = HeaderName::from_static("kokoa-error");

/// The 503 for a route whose service is down: the error page, `Retry-After`, and
/// `kokoa-error: service-down` (so a client or a test can tell it from an app's own 503).
pub fn service_down_page() -> Response<ProxyBody> {
    let mut response = page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service down: the application behind this site is not running or fails its health checks. Try again shortly.",
    );
    let headers = response.headers_mut();
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from(SERVICE_DOWN_RETRY_AFTER_SECS),
    );
    headers.insert(
        KOKOA_ERROR.clone(),
        HeaderValue::from_static("service-down"),
    );
    response
}

/// A short HTML error page.
pub fn page(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let code = status.as_u16();
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{code} {reason}</title></head>\n\
         <body><h1>{code} {reason}</h1><p>{text}</p><hr><p>kokoa-edge</p></body></html>\n"
    );
    let mut response = Response::new(
        Full::new(Bytes::from(html))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// One access log line, written when the response body ends (or is dropped by a client that
/// went away), so that it carries the bytes sent and the full duration.
struct AccessLog {
    client: IpAddr,
    host: String,
    method: Method,
    path: String,
    status: StatusCode,
    bytes: u64,
    /// `None` until the host is routed.
    route: Option<Arc<Route>>,
    start: Instant,
    duration: prometheus_client::metrics::histogram::Histogram,
    /// Refused by admission (403, 429): counted and sample-logged instead, so that a flood of
    /// refused requests cannot fill the disk with access lines.
    quiet: bool,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        self.duration.observe(elapsed.as_secs_f64());
        if self.quiet {
            return;
        }
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            client = %self.client,
            host = %self.host,
            method = %self.method,
            path = %self.path,
            status = self.status.as_u16(),
            bytes = self.bytes,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            origin = %self.route.as_ref().map_or("", |route| route.origin.as_str()),
            "request"
        );
    }
}

pin_project_lite::pin_project! {
    /// A response body on its way to the client: counts its bytes as frames pass through,
    /// without buffering them, and tells the HTTP/2 send timeout when data waits on the client
    /// ([`timeout`]). Holds the access log line and the connection's in-flight mark until the
    /// body ends or is dropped.
    struct Metered<B> {
        #[pin]
        inner: B,
        counter: Counter,
        log: AccessLog,
        _in_flight: InFlight,
    }
}

impl<B: Body<Data = Bytes>> Body for Metered<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        timeout::response_polled();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let len = data.len() as u64;
                this.counter.inc_by(len);
                this.log.bytes += len;
                timeout::response_handed();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body went over its route's `max_body_bytes` while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the route's limit of {limit} bytes (max_body_bytes)")]
pub struct BodyTooLarge {
    /// The limit.
    pub limit: u64,
}

/// Whether an upstream error was caused by [`BodyTooLarge`].
pub fn body_too_large(error: &(dyn std::error::Error + 'static)) -> bool {
    has_source::<BodyTooLarge>(error)
}

/// The client's request body failed: malformed framing (chunked sizes, an HTTP/2 length that
/// does not add up), or the client reset the stream or closed the connection mid-body.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body failed")]
pub struct ClientBodyFailed(#[source] pub BoxError);

/// Whether an upstream error was caused by [`ClientBodyFailed`].
pub fn client_body_failed(error: &(dyn std::error::Error + 'static)) -> bool {
    has_source::<ClientBodyFailed>(error)
}

fn has_source<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<E>() {
            return true;
        }
        current = error.source();
    }
    false
}

pin_project_lite::pin_project! {
    /// A client's request body on its way upstream: counts its bytes, fails with
    /// [`BodyTooLarge`] once more than the route's limit has passed, with a
    /// [`timeout::TimedOut`] when the client stalls or dribbles, and marks the client's own
    /// failures as [`ClientBodyFailed`]. Each error aborts the upstream request.
    struct ClientBody<B> {
        #[pin]
        inner: B,
        counter: Counter,
        limit: Option<u64>,
        remaining: u64,
        deadline: Option<TransferClock>,
    }
}

impl<B> Body for ClientBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    this.counter.inc_by(len);
                    if let Some(limit) = *this.limit {
                        if len > *this.remaining {
                            *this.remaining = 0;
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit }))));
                        }
                        *this.remaining -= len;
                    }
                    if let Some(deadline) = this.deadline.as_mut() {
                        if let Err(error) = deadline.on_data(len) {
                            return Poll::Ready(Some(Err(Box::new(error))));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                Poll::Ready(Some(Err(Box::new(ClientBodyFailed(error.into())))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.deadline.as_mut() {
                Some(deadline) => match deadline.on_pending(cx) {
                    Poll::Ready(error) => Poll::Ready(Some(Err(Box::new(error)))),
                    Poll::Pending => Poll::Pending,
                },
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "basic x"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
            ("content-type", "text/plain"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "x-kept"]);
    }

    #[test]
    fn websocket_detection() {
        let request = Request::builder()
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "WebSocket")
            .header("host", "a.example.com:443")
            .body(())
            .unwrap();
        assert!(is_websocket_upgrade(&request));
        let request = Request::builder()
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(!is_websocket_upgrade(&request));
    }

    #[test]
    fn split_cookies_are_joined() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2; c=3"));
        headers.append(header::COOKIE, HeaderValue::from_static("d=4"));
        join_cookies(&mut headers);
        assert_eq!(headers.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(headers[header::COOKIE], "a=1; b=2; c=3; d=4");
        let mut single = HeaderMap::new();
        single.insert(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut single);
        assert_eq!(single[header::COOKIE], "a=1");
    }
}
