//! HTTP/1.1 client connections that give their buffers back while idle.
//!
//! A hyper HTTP/1 connection keeps a read buffer (8 KiB or more) and a write buffer (8 KiB) for
//! as long as it lives, and its state machine is large: an idle keep-alive connection cost the
//! edge ~35 KiB, three quarters of it hyper's. Nginx frees a keep-alive connection's request
//! buffers while it waits for the next request; this module does the same with hyper's public
//! API. Requests are served by a hyper connection as usual (keep-alive on, so hyper keeps every
//! decision about closing: `Connection: close`, HTTP/1.0, close-delimited bodies, unread request
//! bodies, errors). Once the connection has had no request in flight for [`PARK_AFTER`], it is
//! *parked*: hyper is asked to finish (`graceful_shutdown` on an idle connection ends it at
//! once), its buffered output is flushed, and its parts are taken back *without* shutting the
//! stream down. What remains is the TLS stream and a pending read of a few bytes. When the
//! client sends its next request, a new hyper connection is started with those bytes in front.
//!
//! A connection is only parked when hyper would have kept it alive: the last request was
//! HTTP/1.1 without `Connection: close`, its body was read to the end (an unread body left in
//! the stream would otherwise be parsed as the next request), and its response did not say
//! `Connection: close`. Otherwise the connection is closed, as hyper would have done.
//!
//! WebSocket upgrades cannot use hyper's upgrade future here (it needs the connection to end
//! with a shutdown); instead the request carries an [`UpgradeHandoff`] and the connection sends
//! its stream, with any bytes hyper read past the `101`, to the proxy once the `101` is
//! flushed.
//!
//! Timeouts: hyper's `header_read_timeout` bounds each request head (counted from the first
//! byte of a parked connection's request); a connection with no request in flight is closed
//! after `idle_timeout`, parked or not; a write to a client that stopped reading fails after
//! `send_timeout` ([`WriteTimeout`]), which ends the connection wherever it is (serving,
//! parking, closing); when draining begins, parked connections are closed (TLS `close_notify`,
//! then FIN) and busy ones finish their request first.
//!
//! A connection answered before its request body ended (a 413 on `Content-Length`, a 403, an
//! app that answered without reading) is closed with a *lingering close*, as Nginx does: FIN,
//! then what the client still sends is read and discarded for at most `lingering_time` (and
//! until `lingering_timeout` of silence), so a client still uploading reads the answer instead
//! of a reset.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{header, Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;

use crate::dial::Dialer;
use crate::https::{HttpLimits as Limits, LingeringClose};
use crate::metrics::Metrics;
use crate::pool::ProxyBody;
use crate::proxy::{
    header_has_token, is_websocket_upgrade, ClientUpgraded, ConnectionInfo, Proxy, UpgradeHandoff,
};
use crate::timeout::WriteTimeout;

/// How long an HTTP/1.1 connection has no request in flight before it is parked.
///
/// Long enough that a busy keep-alive client (the next request follows the response within
/// milliseconds) never pays for a new hyper connection; short enough that idle connections
/// hold their buffers only briefly.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// How long the edge waits for a parked or closing connection's output to drain to the client.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read from a parked connection to wake it: enough for most request lines, small enough
/// to keep the parked state small.
const WAKE_READ: usize = 256;

/// Bytes read at a time from a lingering connection (allocated only while it lingers).
const LINGER_READ: usize = 16 * 1024;

/// Serves HTTP/1.1 on a TLS client connection until it closes, parking it whenever it is idle.
pub(crate) async fn serve<D: Dialer>(
    tls: Box<TlsStream<TcpStream>>,
    proxy: Arc<Proxy<D>>,
    info: ConnectionInfo,
    limits: &Limits,
    metrics: &Metrics,
) {
    let state = Arc::new(State::default());
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    let mut stream = ClientStream {
        tls: WriteTimeout::new(
            tls,
            limits.timeouts.send_clock(metrics.timeout_counter("send")),
        ),
        prefix: Bytes::new(),
        state: state.clone(),
    };
    // The futures below are boxed: this one lives as long as the connection, and its size is
    // what a parked connection costs besides the TLS stream.
    loop {
        let service = Service {
            proxy: proxy.clone(),
            info: info.clone(),
            state: state.clone(),
        };
        let connection = Box::pin(builder.serve_connection(TokioIo::new(stream), service));
        let Some((io, park)) = Box::pin(run(connection, &info, &state, limits, metrics)).await
        else {
            return;
        };
        stream = io;
        if let Some(sender) = state.take_upgrade() {
            if !sender.is_closed() {
                // The proxy is waiting for the client's side of the WebSocket.
                let _ = sender.send(Box::new(stream) as ClientUpgraded);
                return;
            }
        }
        if !park {
            // Answered before its request body ended (a 413, a 403, an app that did not read
            // it): the client may still be uploading.
            let linger = state
                .body_open
                .load(Ordering::Acquire)
                .then_some(limits.lingering);
            Box::pin(close_lingering(stream, linger, &info, metrics)).await;
            return;
        }
        if stream.prefix.is_empty() {
            // Parked: only the TLS stream and this read remain until the client speaks.
            stream.tls.forget_timer();
            let parked = Counted::new(&metrics.parked);
            let wake = Box::pin(wait_for_request(&mut stream, &info, limits, metrics)).await;
            drop(parked);
            match wake {
                Wake::Request => {}
                Wake::Close => {
                    Box::pin(close(&mut stream)).await;
                    return;
                }
                Wake::Gone => return,
            }
        }
    }
}

type Connection<D> = Pin<Box<http1::Connection<TokioIo<ClientStream>, Service<D>>>>;

/// Drives one hyper connection until it ends; returns the stream with any bytes hyper read
/// past the last request in front (unless it failed or the drain time ran out), and whether it
/// ended because it was parked.
async fn run<D: Dialer>(
    mut connection: Connection<D>,
    info: &ConnectionInfo,
    state: &State,
    limits: &Limits,
    metrics: &Metrics,
) -> Option<(ClientStream, bool)> {
    let mut abort = info.abort.clone();
    let timer = tokio::time::sleep(PARK_AFTER);
    tokio::pin!(timer);
    let mut parking = false;
    let mut closing = false;
    let result = loop {
        tokio::select! {
            result = std::future::poll_fn(|cx| connection.as_mut().poll_without_shutdown(cx)) => break result,
            _ = info.drain.signaled(), if !closing => {
                closing = true;
                parking = false;
                connection.as_mut().graceful_shutdown();
            }
            _ = abort.wait_for(|abort| *abort), if closing => return None,
            _ = &mut timer, if !closing && !parking => {
                let now = Instant::now();
                match info.activity.idle_for() {
                    None => timer.as_mut().reset(now + PARK_AFTER),
                    Some(idle) if idle >= limits.idle_timeout => {
                        closing = true;
                        if info.activity.close_once() {
                            metrics.idle_closed.inc();
                            tracing::debug!(timeout = ?limits.idle_timeout, "closing idle connection");
                        }
                        connection.as_mut().graceful_shutdown();
                    }
                    Some(idle) if idle >= PARK_AFTER && state.may_park() => {
                        parking = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    // Not parkable (an unread body, `Connection: close`): hyper decides, the
                    // idle timeout still applies.
                    Some(idle) if idle >= PARK_AFTER => {
                        timer.as_mut().reset(now + (limits.idle_timeout - idle));
                    }
                    Some(idle) => timer.as_mut().reset(now + (PARK_AFTER - idle)),
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
        return None;
    }
    // hyper ends without flushing what it buffered last (it leaves that to the shutdown it was
    // told not to do): poll it until the stream has flushed everything written to it.
    let flushed = tokio::time::timeout(
        FLUSH_TIMEOUT,
        std::future::poll_fn(|cx| match connection.as_mut().poll_without_shutdown(cx) {
            Poll::Ready(Ok(())) if state.dirty.load(Ordering::Acquire) => Poll::Pending,
            other => other,
        }),
    );
    tokio::select! {
        result = flushed => match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(%error, "connection failed while flushing");
                return None;
            }
            Err(_) => {
                tracing::debug!("client did not read the end of its response in time");
                return None;
            }
        },
        _ = abort.wait_for(|abort| *abort) => return None,
    }
    // A request that began after the park was asked for was still served in full (hyper only
    // stopped keeping the connection alive, without telling the client): whether the connection
    // may go on depends on the last request, as for any other.
    let park = parking && state.may_park();
    let parts = Pin::into_inner(connection).into_parts();
    let mut io = parts.io.into_inner();
    io.prefix = join(parts.read_buf, std::mem::take(&mut io.prefix));
    Some((io, park))
}

/// Counts a connection in a gauge (`kokoa_edge_parked_connections`, ...) while it lives.
struct Counted<'a>(&'a Gauge);

impl<'a> Counted<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

enum Wake {
    /// The client sent bytes: serve them.
    Request,
    /// Idle too long or draining: close the connection politely.
    Close,
    /// The client closed or the stream failed.
    Gone,
}

/// Waits, holding no buffers, for the next request on a parked connection.
async fn wait_for_request(
    io: &mut ClientStream,
    info: &ConnectionInfo,
    limits: &Limits,
    metrics: &Metrics,
) -> Wake {
    let idle = info.activity.idle_for().unwrap_or_default();
    let deadline = Instant::now() + limits.idle_timeout.saturating_sub(idle);
    let mut buf = [0u8; WAKE_READ];
    tokio::select! {
        read = io.tls.read(&mut buf) => match read {
            Ok(0) | Err(_) => Wake::Gone,
            Ok(n) => {
                io.prefix = Bytes::copy_from_slice(&buf[..n]);
                Wake::Request
            }
        },
        _ = tokio::time::sleep_until(deadline) => {
            if info.activity.close_once() {
                metrics.idle_closed.inc();
                tracing::debug!(timeout = ?limits.idle_timeout, "closing idle connection");
            }
            Wake::Close
        }
        _ = info.drain.signaled() => Wake::Close,
    }
}

/// Ends a connection the edge closes: TLS `close_notify`, then FIN (bounded in time). Whether
/// both went out.
async fn close(io: &mut ClientStream) -> bool {
    matches!(
        tokio::time::timeout(FLUSH_TIMEOUT, io.tls.shutdown()).await,
        Ok(Ok(()))
    )
}

/// [`close`], then, with `linger`, a lingering close as Nginx's: the socket is kept open and
/// what the client still sends is read and thrown away until it closes its side, goes silent
/// for `linger.timeout`, `linger.time` has passed, or a hard stop (drain deadline) comes.
/// Closing a socket with unread input makes the kernel answer with a reset, and a client still
/// uploading then fails with "broken pipe" before it reads the answer it was sent.
async fn close_lingering(
    mut io: ClientStream,
    linger: Option<LingeringClose>,
    info: &ConnectionInfo,
    metrics: &Metrics,
) {
    if !close(&mut io).await {
        return;
    }
    let Some(linger) = linger else { return };
    let _lingering = Counted::new(&metrics.lingering);
    // The ciphertext is discarded unread: the TLS session has nothing left to say.
    let (tcp, _) = io.tls.get_mut().get_mut();
    let mut abort = info.abort.clone();
    let deadline = Instant::now() + linger.time;
    let mut buf = vec![0u8; LINGER_READ];
    loop {
        let silence = Instant::now() + linger.timeout;
        tokio::select! {
            read = tcp.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = tokio::time::sleep_until(silence.min(deadline)) => {
                if silence > deadline {
                    metrics.lingering_cut.inc();
                    tracing::debug!(time = ?linger.time, "lingering close: client still sending at lingering_time");
                }
                return;
            }
            _ = abort.wait_for(|abort| *abort) => return,
        }
    }
}

/// `first` then `second`, in a buffer of their own: `first` is what hyper read past the last
/// request, a slice of its whole read buffer, which must not stay alive with the connection.
fn join(first: Bytes, second: Bytes) -> Bytes {
    if first.is_empty() && second.is_empty() {
        return Bytes::new();
    }
    let mut joined = BytesMut::with_capacity(first.len() + second.len());
    joined.extend_from_slice(&first);
    joined.extend_from_slice(&second);
    joined.freeze()
}

/// What the connection loop and the requests on it share.
#[derive(Default)]
struct State {
    /// The last request's body has not been read to its end.
    body_open: AtomicBool,
    /// The last request lets the connection live on (HTTP/1.1 without `Connection: close`).
    reusable: AtomicBool,
    /// Written to the stream and not yet flushed.
    dirty: AtomicBool,
    /// Where the stream goes if the last request is upgraded.
    upgrade: Mutex<Option<oneshot::Sender<ClientUpgraded>>>,
}

impl State {
    fn may_park(&self) -> bool {
        self.reusable.load(Ordering::Acquire) && !self.body_open.load(Ordering::Acquire)
    }

    fn take_upgrade(&self) -> Option<oneshot::Sender<ClientUpgraded>> {
        self.upgrade
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Records a request as it starts.
    fn begin<B: Body>(&self, request: &Request<B>) {
        let reusable = request.version() == Version::HTTP_11
            && !header_has_token(request.headers(), &header::CONNECTION, "close");
        self.reusable.store(reusable, Ordering::Release);
        self.body_open
            .store(!request.body().is_end_stream(), Ordering::Release);
    }
}

/// The proxy as a hyper service with `Unpin` futures (which `poll_without_shutdown` needs).
struct Service<D: Dialer> {
    proxy: Arc<Proxy<D>>,
    info: ConnectionInfo,
    state: Arc<State>,
}

impl<D: Dialer> hyper::service::Service<Request<Incoming>> for Service<D> {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        self.state.begin(&request);
        if is_websocket_upgrade(&request) {
            let (sender, handoff) = UpgradeHandoff::new();
            *self.state.upgrade.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender);
            request.extensions_mut().insert(handoff);
        }
        let state = self.state.clone();
        let tracked = state.clone();
        let request = request.map(|inner| Tracked {
            inner,
            state: tracked,
        });
        let proxy = self.proxy.clone();
        let info = self.info.clone();
        Box::pin(async move {
            let response = proxy.handle(request, &info).await;
            if header_has_token(response.headers(), &header::CONNECTION, "close") {
                state.reusable.store(false, Ordering::Release);
            }
            Ok(response)
        })
    }
}

pin_project_lite::pin_project! {
    /// A request body that records when it has been read to its end.
    struct Tracked {
        #[pin]
        inner: Incoming,
        state: Arc<State>,
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let frame = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        if frame.is_none() || this.inner.is_end_stream() {
            this.state.body_open.store(false, Ordering::Release);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.state.body_open.store(false, Ordering::Release);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's TLS stream, with bytes already read from it in front, recording whether what
/// was written to it has been flushed.
pub(crate) struct ClientStream {
    tls: WriteTimeout<Box<TlsStream<TcpStream>>>,
    prefix: Bytes,
    state: Arc<State>,
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.state.dirty.store(true, Ordering::Release);
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.state.dirty.store(true, Ordering::Release);
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = std::task::ready!(Pin::new(&mut self.tls).poll_flush(cx));
        if result.is_ok() {
            self.state.dirty.store(false, Ordering::Release);
        }
        Poll::Ready(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_keeps_no_slice_of_hyper_buffer() {
        let mut hyper_buffer = BytesMut::with_capacity(8192);
        hyper_buffer.extend_from_slice(b"GET / HT");
        let a = hyper_buffer.freeze();
        let b = Bytes::from_static(b"TP/1.1\r\n");
        let empty = join(a.slice(8..), Bytes::new());
        assert!(empty.is_empty());
        assert_eq!(&join(a.clone(), Bytes::new())[..], b"GET / HT");
        assert_eq!(join(Bytes::new(), b.clone()), b);
        let joined = join(a.clone(), b);
        assert_eq!(&joined[..], b"GET / HTTP/1.1\r\n");
        assert_ne!(joined.as_ptr(), a.as_ptr());
    }

    #[test]
    fn only_reusable_requests_with_read_bodies_may_park() {
        let state = State::default();
        let get = Request::builder()
            .uri("/")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        state.begin(&get);
        assert!(state.may_park());

        let close = Request::builder()
            .header("connection", "keep-alive, close")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        state.begin(&close);
        assert!(!state.may_park());

        let old = Request::builder()
            .version(Version::HTTP_10)
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        state.begin(&old);
        assert!(!state.may_park());

        let post = Request::builder()
            .method("POST")
            .body(http_body_util::Full::new(Bytes::from_static(b"body")))
            .unwrap();
        state.begin(&post);
        assert!(!state.may_park(), "the body has not been read");
        state.body_open.store(false, Ordering::Release);
        assert!(state.may_park());
    }
}
