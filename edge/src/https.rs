//! The HTTPS listener: accept, connection caps, TLS handshake (bounded in time, certificate by
//! SNI), then HTTP/1.1 or HTTP/2 as negotiated by ALPN, every request handed to the [`Proxy`].
//!
//! Protection of the listener, cheapest first: a connection over the per-client or global cap
//! is closed right after `accept()` (before any TLS work); the TLS handshake has a deadline
//! (`tls_handshake_timeout`); an HTTP/1 request head must arrive within `header_read_timeout`
//! (slowloris), counted from its first byte, or from the connection's start for the first one
//! (idle HTTP/1.1 keep-alive connections are parked, see [`crate::http1`]); heads over
//! `max_header_bytes` or `max_headers` fields get 431 from hyper. HTTP/2 is bounded by
//! `max_concurrent_streams`, the header list size (431), the reset-flood limits (GOAWAY when a
//! client keeps resetting streams: CVE-2023-44487) and keep-alive PINGs. Any connection with no request in flight for
//! `idle_timeout` is closed gracefully (HTTP/2 GOAWAY).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use kokoa_node::drain::DrainWatch;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;

use crate::dial::Dialer;
use crate::limit::{Activity, ConnectionLimiter, LogSampler, Refusal};
use crate::metrics::Metrics;
use crate::proxy::{ConnectionInfo, Proxy};

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
}

impl HttpLimits {
    /// The listener's own deadlines and head size (from `[edge]`) with the client bounds of
    /// `limits` (the model's `[limits]`).
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
        }
    }

    /// These limits with the client bounds of `limits` (a new `[limits]` from control).
    pub fn with_limits(&self, limits: &kokoa_model::EdgeLimits) -> Self {
        Self::new(
            self.tls_handshake_timeout,
            self.header_read_timeout,
            self.max_header_bytes,
            limits,
        )
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

    async fn connection(self: Arc<Self>, stream: TcpStream, info: ConnectionInfo) {
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
        let mut builder = http2::Builder::new(TokioExecutor::new());
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
            async move { Ok::<_, Infallible>(proxy.handle(request, &info).await) }
        });
        let connection = Box::pin(builder.serve_connection(TokioIo::new(tls), service));
        serve_until_drained(connection, &info, Some(limits.idle_timeout), &self.metrics).await;
    }
}

/// Drives a hyper connection; when draining begins, or when it has had no request in flight
/// for `idle_timeout`, asks it to finish in-flight requests and close (HTTP/2 GOAWAY, HTTP/1
/// close after the current response), and gives up when the drain time is up.
pub(crate) async fn serve_until_drained<C, E>(
    connection: C,
    info: &ConnectionInfo,
    idle_timeout: Option<Duration>,
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
    let result = tokio::select! {
        result = connection.as_mut() => Some(result),
        _ = info.drain.signaled() => None,
        _ = idle => {
            if info.activity.close_once() {
                metrics.idle_closed.inc();
                tracing::debug!(timeout = ?idle_timeout, "closing idle connection");
            }
            None
        }
    };
    let result = match result {
        Some(result) => result,
        None => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                result = connection.as_mut() => result,
                _ = abort.wait_for(|abort| *abort) => return,
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
