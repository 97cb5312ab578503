//! The HTTPS listener: accept, connection caps, TLS handshake (bounded in time, certificate by
//! SNI), then HTTP/1.1 or HTTP/2 as negotiated by ALPN, every request handed to the [`Proxy`].
//!
//! Protection of the listener, cheapest first: a connection over the per-client or global cap
//! is closed right after `accept()` (before any TLS work); the TLS handshake has a deadline
//! (`tls_handshake_timeout`); an HTTP/1 request head must arrive within `header_read_timeout`
//! (slowloris), counted from its first byte, or from the connection's start for the first one
//! (idle HTTP/1.1 keep-alive connections are parked, see [`crate::http1`]); heads over
//! `max_header_bytes` or `max_headers` fields get 431 (from hyper, or from the proxy for heads
//! hyper parsed past its buffer limit). HTTP/2 is bounded by
//! `max_concurrent_streams`, the header list size (431), the reset-flood limits (GOAWAY when a
//! client keeps resetting streams: CVE-2023-44487) and keep-alive PINGs. Any connection with no
//! request in flight for `idle_timeout` is closed gracefully (HTTP/2 GOAWAY; a connection that
//! does not finish within `send_timeout` of it is dropped). A client that stops reading is cut
//! off after `send_timeout` ([`crate::timeout`]: the connection when its socket stays
//! unwritable, one HTTP/2 stream when it stays stuck behind flow control).
//!
//! An HTTP/2 request body the edge answered without reading to its end (a 413, a 403, an app
//! that answered early) is read and discarded for up to [`LINGER_BYTES`] and [`LINGER_TIME`]
//! before the stream is reset with `NO_ERROR` (RFC 9113 section 8.1): a client that is still
//! sending a small body finishes it and reads the answer instead of seeing its stream reset
//! under its upload (curl 7.x reports that as an error and drops the response).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use kokoa_node::drain::DrainWatch;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;

use crate::dial::Dialer;
use crate::forwarded::TrustedProxies;
use crate::limit::{Activity, ConnectionLimiter, LogSampler, Refusal};
use crate::metrics::Metrics;
use crate::proxy::{ConnectionInfo, Proxy};
use crate::sni::SniHostCheck;
use crate::timeout::TransferTimeouts;
use crate::timeout::{StreamExecutor, WriteTimeout};

/// Longest time the rest of an HTTP/2 request body is read and discarded once the edge has
/// answered without it.
pub const LINGER_TIME: Duration = Duration::from_secs(2);
/// Most bytes of an HTTP/2 request body read and discarded once the edge has answered without
/// it.
pub const LINGER_BYTES: u64 = 1 << 20;

/// What bounds one client connection, HTTP/1 and HTTP/2: the `[edge]` timeouts and sizes and
/// the `[limits]` of the model. Read once per connection from [`SharedHttpLimits`], so a new
/// set applies to connections accepted after it.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpLimits {
    /// TLS handshake deadline.
    pub tls_handshake_timeout: Duration,
    /// HTTP/1 request head deadline.
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes.
    pub max_header_bytes: usize,
    /// Most header fields per request (431 above).
    pub max_headers: usize,
    /// How long a client connection may have no request in flight before it is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 client resets of not-yet-accepted streams tolerated before GOAWAY.
    pub h2_max_pending_reset_streams: usize,
    /// HTTP/2 streams reset for client errors tolerated before GOAWAY.
    pub h2_max_local_error_reset_streams: usize,
    /// Interval of HTTP/2 keep-alive PINGs; `None` disables them.
    pub h2_keepalive_interval: Option<Duration>,
    /// How a client address becomes its key (`ipv4_prefix`, `ipv6_prefix`): upstream tunnel
    /// streams are charged to that key's window share (see [`crate::dial::UpstreamClient`]).
    pub key_mask: crate::limit::KeyMask,
    /// Send and request body timeouts (`[limits] send_timeout`, `client_body_timeout`, ...).
    pub timeouts: TransferTimeouts,
    /// Lingering close after an early answer (`[limits] lingering_time`, `lingering_timeout`).
    pub lingering: LingeringClose,
    /// Proxies whose forwarding headers are believed (`[edge] trusted_proxies`).
    pub trusted_proxies: TrustedProxies,
    /// Whether a request's host must agree with its connection's SNI (`[edge]
    /// sni_host_check`).
    pub sni_host_check: SniHostCheck,
}

impl HttpLimits {
    /// The listener's own deadlines and head size (from `[edge]`) with the client bounds of
    /// `limits` (the model's `[limits]`); no trusted proxies and no SNI check (set those
    /// fields from `[edge]`).
    pub fn new(
        tls_handshake_timeout: Duration,
        header_read_timeout: Duration,
        max_header_bytes: usize,
        limits: &kokoa_model::EdgeLimits,
    ) -> Self {
        let keepalive = limits.h2_keepalive_interval.get();
        Self {
            tls_handshake_timeout,
            header_read_timeout,
            max_header_bytes,
            max_headers: limits.max_headers.as_usize(),
            idle_timeout: limits.idle_timeout.as_secs(),
            h2_max_concurrent_streams: limits.h2_max_concurrent_streams.as_u32(),
            h2_max_pending_reset_streams: limits.h2_max_pending_reset_streams.as_usize(),
            h2_max_local_error_reset_streams: limits.h2_max_local_error_reset_streams.as_usize(),
            h2_keepalive_interval: (keepalive > 0).then(|| Duration::from_secs(keepalive)),
            key_mask: crate::limit::KeyMask::from_limits(limits),
            timeouts: TransferTimeouts::from_limits(limits),
            lingering: LingeringClose {
                time: limits.lingering_time.as_secs(),
                timeout: limits.lingering_timeout.as_secs(),
            },
            trusted_proxies: TrustedProxies::default(),
            sni_host_check: SniHostCheck::default(),
        }
    }

    /// These limits with the client bounds of `limits` (a new `[limits]` from control); the
    /// `[edge]` settings stay.
    pub fn with_limits(&self, limits: &kokoa_model::EdgeLimits) -> Self {
        Self {
            trusted_proxies: self.trusted_proxies.clone(),
            sni_host_check: self.sni_host_check,
            ..Self::new(
                self.tls_handshake_timeout,
                self.header_read_timeout,
                self.max_header_bytes,
                limits,
            )
        }
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        use crate::config::{
            DEFAULT_HEADER_READ_TIMEOUT_SECS, DEFAULT_MAX_HEADER_BYTES,
            DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS,
        };
        Self::new(
            Duration::from_secs(DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS),
            Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            DEFAULT_MAX_HEADER_BYTES as usize,
            &kokoa_model::EdgeLimits::default(),
        )
    }
}

/// How long an HTTP/1.1 connection answered before its request body ended goes on reading
/// (and discarding) that body before it closes, as Nginx's lingering close: closing a socket
/// with unread input makes the kernel send a reset, and a client still uploading then sees
/// "broken pipe" instead of the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LingeringClose {
    /// At most this long in all (`lingering_time`).
    pub time: Duration,
    /// Silence from the client that ends it at once (`lingering_timeout`).
    pub timeout: Duration,
}

/// The connection limits in force, swapped when control sends new `[limits]`.
pub type SharedHttpLimits = Arc<ArcSwap<HttpLimits>>;

/// Everything an HTTPS connection needs.
pub struct HttpsServer<D: Dialer> {
    /// The TLS acceptor (its resolver reads the current certificates).
    pub acceptor: TlsAcceptor,
    /// The proxy.
    pub proxy: Arc<Proxy<D>>,
    /// Timeouts and sizes.
    pub limits: SharedHttpLimits,
    /// Metrics.
    pub metrics: Metrics,
    /// Connection caps shared by every listener.
    pub connections: Arc<ConnectionLimiter>,
}

/// Closes a connection refused at accept: counted, logged at most once per second per
/// listener.
pub(crate) fn refuse(
    stream: TcpStream,
    metrics: &Metrics,
    sampler: &LogSampler,
    listener: &str,
    client: std::net::SocketAddr,
    refusal: Refusal,
) {
    // Reset rather than FIN: the edge keeps no TIME_WAIT state for refused connections.
    let _ = stream.set_zero_linger();
    drop(stream);
    metrics.refused(listener, refusal);
    if let Some(suppressed) = sampler.sample() {
        tracing::warn!(
            listener,
            client = %client,
            reason = refusal.reason(),
            suppressed,
            "connection refused at accept (one line per second per listener; `suppressed` counts the others)"
        );
    }
}

impl<D: Dialer> HttpsServer<D> {
    /// Accepts connections until draining begins, then returns (dropping the listener, so new
    /// connections are refused). Each connection runs in its own task holding a clone of
    /// `drain` until it ends.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        drain: DrainWatch,
        abort: watch::Receiver<bool>,
    ) {
        let sampler = LogSampler::new(Duration::from_secs(1));
        loop {
            let (stream, client) = tokio::select! {
                _ = drain.signaled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        tracing::warn!(%error, "https accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let permit = match self.connections.try_acquire(client.ip()) {
                Ok(permit) => permit,
                Err(refusal) => {
                    refuse(stream, &self.metrics, &sampler, "https", client, refusal);
                    continue;
                }
            };
            let server = self.clone();
            let connection = ConnectionInfo {
                client,
                sni: None,
                drain: drain.clone(),
                abort: abort.clone(),
                activity: Arc::new(Activity::default()),
            };
            let span = tracing::info_span!(
                "https",
                client = %client,
                sni = tracing::field::Empty,
                alpn = tracing::field::Empty,
            );
            tokio::spawn(
                async move {
                    // Moved into the task: the slot is freed when it ends, panics or is aborted.
                    let _permit = permit;
                    server.connection(stream, connection).await
                }
                .instrument(span),
            );
        }
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, mut info: ConnectionInfo) {
        let _guard = self.metrics.connection("https");
        let _ = stream.set_nodelay(true);
        // Boxed, as the HTTP connections below: the task itself stays small, and a parked
        // HTTP/1.1 connection holds little more than its TLS stream.
        let limits = self.limits.load_full();
        let timeout = limits.tls_handshake_timeout;
        let accept = self.acceptor.accept(stream);
        let handshake = Box::pin(async move {
            Ok::<_, std::io::Error>(Box::new(tokio::time::timeout(timeout, accept).await??))
        });
        let tls = tokio::select! {
            result = handshake => match result {
                Ok(tls) => tls,
                Err(error) => {
                    self.metrics.tls_handshake_failures.inc();
                    if error.kind() == std::io::ErrorKind::TimedOut {
                        tracing::debug!(?timeout, "TLS handshake timed out");
                    } else {
                        tracing::debug!(%error, "TLS handshake failed");
                    }
                    return;
                }
            },
            _ = info.drain.signaled() => return,
        };
        let (_, session) = tls.get_ref();
        let h2 = session.alpn_protocol() == Some(b"h2");
        let span = tracing::Span::current();
        span.record("sni", session.server_name().unwrap_or(""));
        span.record("alpn", if h2 { "h2" } else { "http/1.1" });
        if limits.sni_host_check != SniHostCheck::Off {
            info.sni = session.server_name().map(Arc::from);
        }

        if !h2 {
            Box::pin(crate::http1::serve(
                tls,
                self.proxy.clone(),
                info,
                &limits,
                &self.metrics,
            ))
            .await;
            return;
        }
        Box::pin(self.serve_http2(tls, info, &limits)).await;
    }

    async fn serve_http2(
        &self,
        tls: Box<tokio_rustls::server::TlsStream<TcpStream>>,
        info: ConnectionInfo,
        limits: &HttpLimits,
    ) {
        let executor =
            StreamExecutor::new(limits.timeouts.send, self.metrics.timeout_counter("send"));
        let mut builder = http2::Builder::new(executor);
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_pending_accept_reset_streams(limits.h2_max_pending_reset_streams)
            .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
            .keep_alive_interval(limits.h2_keepalive_interval);
        let proxy = self.proxy.clone();
        let service_info = info.clone();
        let service = service_fn(move |request| {
            let proxy = proxy.clone();
            let info = service_info.clone();
            let request = request.map(Lingering::new);
            async move { Ok::<_, Infallible>(proxy.handle(request, &info).await) }
        });
        let io = WriteTimeout::new(
            tls,
            limits
                .timeouts
                .send_clock(self.metrics.timeout_counter("send")),
        );
        let connection = Box::pin(builder.serve_connection(TokioIo::new(io), service));
        serve_until_drained(
            connection,
            &info,
            Some(limits.idle_timeout),
            limits.timeouts.send,
            &self.metrics,
        )
        .await;
    }
}

/// Drives a hyper connection; when draining begins, or when it has had no request in flight
/// for `idle_timeout`, asks it to finish in-flight requests and close (HTTP/2 GOAWAY, HTTP/1
/// close after the current response), and gives up when the drain time is up or, for an idle
/// connection, `idle_grace` after asking (what is left is data its client does not read).
pub(crate) async fn serve_until_drained<C, E>(
    connection: C,
    info: &ConnectionInfo,
    idle_timeout: Option<Duration>,
    idle_grace: Duration,
    metrics: &Metrics,
) where
    C: std::future::Future<Output = Result<(), E>> + GracefulShutdown,
    E: std::fmt::Display,
{
    let mut abort = info.abort.clone();
    tokio::pin!(connection);
    let idle = async {
        let Some(timeout) = idle_timeout else {
            return std::future::pending().await;
        };
        // Check a few times per timeout: the close comes at most a quarter late.
        let mut ticks = tokio::time::interval((timeout / 4).max(Duration::from_millis(50)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if info.activity.idle_for().is_some_and(|idle| idle >= timeout) {
                return;
            }
        }
    };
    enum Ended<R> {
        Done(R),
        Draining,
        Idle,
    }
    let ended = tokio::select! {
        result = connection.as_mut() => Ended::Done(result),
        _ = info.drain.signaled() => Ended::Draining,
        _ = idle => {
            if info.activity.close_once() {
                metrics.idle_closed.inc();
                tracing::debug!(timeout = ?idle_timeout, "closing idle connection");
            }
            Ended::Idle
        }
    };
    let result = match ended {
        Ended::Done(result) => result,
        ended => {
            let idle = matches!(ended, Ended::Idle);
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                _ = abort.wait_for(|abort| *abort) => return,
                _ = tokio::time::sleep(idle_grace), if idle => {
                    tracing::debug!(grace = ?idle_grace, "idle connection did not finish after GOAWAY; dropping it");
                    return;
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// A hyper connection that can be asked to finish and close.
pub(crate) trait GracefulShutdown {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, E> GracefulShutdown for auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S::ResBody: http_body::Body + Send + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<C: GracefulShutdown + ?Sized> GracefulShutdown for Pin<Box<C>> {
    fn graceful_shutdown(self: Pin<&mut Self>) {
        Pin::into_inner(self).as_mut().graceful_shutdown()
    }
}

impl<I, S, E> GracefulShutdown for http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: http_body::Body + Send + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self)
    }
}

impl<I, S> GracefulShutdown for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::Connection::graceful_shutdown(self)
    }
}

/// An HTTP/2 request body that, dropped before its end, is read and discarded in the
/// background for up to [`LINGER_BYTES`] and [`LINGER_TIME`] (see the module docs).
#[derive(Debug)]
pub struct Lingering {
    inner: Option<Incoming>,
}

impl Lingering {
    /// Wraps a client's request body.
    pub fn new(inner: Incoming) -> Self {
        Self { inner: Some(inner) }
    }
}

impl Body for Lingering {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.inner.as_mut() {
            Some(inner) => Pin::new(inner).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + LINGER_TIME;
            let mut discarded = 0u64;
            while discarded < LINGER_BYTES {
                match tokio::time::timeout_at(deadline, body.frame()).await {
                    Ok(Some(Ok(frame))) => {
                        discarded += frame.data_ref().map_or(0, |data| data.len() as u64);
                    }
                    _ => break,
                }
            }
            tracing::trace!(discarded, "discarded the rest of an unread request body");
            // Dropping the body now resets the stream (NO_ERROR once the response is complete)
            // unless the client has ended it.
        });
    }
}
