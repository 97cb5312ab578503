//! Bridges one tunnel stream to its local service.
//!
//! The stream's destination port picks the service; the bridge connects to the service's local
//! address (bounded by the connect timeout), then copies bytes both ways until both directions
//! have ended. Half-close is preserved: when one side sends FIN, the other side's write half is
//! shut down and the opposite direction keeps flowing until it ends too.
//!
//! A bridge owns no buffer of its own. It reads from one side only when the other can take the
//! bytes right away (room in the tunnel stream's send buffer, or a writable app socket), through
//! a scratch buffer per thread, so bytes wait in the tunnel's bounded window or in the app's
//! kernel socket, never in the origin's heap: a stream whose edge stopped reading costs its
//! tunnel buffers and nothing else, and thousands of idle or stalled streams cost no copy
//! buffers. Only when the app's socket takes part of a chunk is the rest kept until it can
//! (at most one chunk per stream).
//!
//! When the edge resets the stream (its client went away, or it gave up on it) the next
//! readiness check fails, and the app connection is closed at once.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use kokoa_tunnel::{IncomingStream, TunnelStream};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::metrics::{ByteLabels, FailureLabels, Metrics, ServiceLabels};
use crate::service::Services;

/// Largest chunk moved in one step. 64 KiB: tokio's default of 8 KiB made an upload cost the
/// origin one write to the app per 8 KiB; with 64 KiB the benchmark's uploads ran 15-25% faster
/// at a third less origin CPU per GB.
const CHUNK: usize = 64 * 1024;

/// Chunks a direction moves per poll before it yields, so that one busy stream cannot keep the
/// origin's thread from its other streams.
const CHUNKS_PER_POLL: usize = 16;

thread_local! {
    /// The one copy buffer of this thread: every bridge on it uses it within a single poll.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; CHUNK].into_boxed_slice());
}

/// Bridges `incoming` to the service its port maps to in `services`' current table, then
/// returns when both directions are done (or one failed).
///
/// If there is no service for the port or the local app cannot be reached, the tunnel stream is
/// reset before anything is sent, so the edge sees the connection fail and answers 502. The
/// connect's outcome counts toward the service's health like a probe's ([`Services::record`]):
/// enough failures in a row close its port, so later streams are refused at once. An error in
/// either direction (a reset by the app, a broken tunnel) resets the tunnel side too.
pub async fn bridge(
    incoming: IncomingStream,
    services: Arc<Services>,
    metrics: Metrics,
    connect_timeout: Duration,
) {
    let table = services.load();
    let IncomingStream {
        mut stream,
        peer,
        local_port,
        remote,
    } = incoming;
    let Some(service) = table.lookup(local_port).cloned() else {
        metrics.streams_unrouted.inc();
        metrics.errors_total.inc();
        tracing::info!(%remote, port = local_port, edge = ?peer, "stream on a port with no service; closing");
        stream.abort();
        return;
    };
    let span = tracing::info_span!(
        "stream",
        peer = %remote,
        edge = ?peer,
        port = local_port,
        service = %service.name,
        local = %service.local,
    );
    async move {
        let labels = ServiceLabels {
            service: service.name.clone(),
        };
        metrics.streams_accepted.get_or_create(&labels).inc();
        metrics.streams_total.inc();
        let active = metrics.streams_active.get_or_create(&labels).clone();
        active.inc();
        let _active = scopeguard(move || {
            active.dec();
        });

        let failed = |reason: &'static str| {
            metrics
                .local_connect_failures
                .get_or_create(&FailureLabels {
                    service: service.name.clone(),
                    reason,
                })
                .inc();
            metrics.errors_total.inc();
        };
        let address = match service.resolve().await {
            Ok(address) => address,
            Err(error) => {
                failed("resolve");
                services.record(&service, Err(error.clone()));
                tracing::warn!(%error, "local service address does not resolve; resetting the tunnel stream");
                stream.abort();
                return;
            }
        };
        let connect = tokio::time::timeout(connect_timeout, TcpStream::connect(address));
        let local = match connect.await {
            Ok(Ok(local)) => local,
            Ok(Err(error)) => {
                let reason = if error.kind() == io::ErrorKind::ConnectionRefused {
                    "refused"
                } else {
                    "error"
                };
                failed(reason);
                services.record(&service, Err(format!("connecting to {address}: {error}")));
                tracing::warn!(%error, "local service unreachable; resetting the tunnel stream");
                stream.abort();
                return;
            }
            Err(_) => {
                failed("timeout");
                services.record(
                    &service,
                    Err(format!(
                        "connecting to {address}: no answer within {connect_timeout:?}"
                    )),
                );
                tracing::warn!(
                    timeout = ?connect_timeout,
                    "local service did not accept in time; resetting the tunnel stream"
                );
                stream.abort();
                return;
            }
        };
        services.record(&service, Ok(()));
        // Request/response traffic: do not let Nagle hold back small writes.
        if let Err(error) = local.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on the local connection");
        }
        let to_local = metrics
            .bytes
            .get_or_create(&ByteLabels {
                service: service.name.clone(),
                direction: "to_local",
            })
            .clone();
        let to_tunnel = metrics
            .bytes
            .get_or_create(&ByteLabels {
                service: service.name.clone(),
                direction: "to_tunnel",
            })
            .clone();
        tracing::debug!("bridging");
        let mut copy = Bridge::new(stream, local, to_local, to_tunnel);
        match (&mut copy).await {
            Ok(()) => tracing::debug!(
                to_local = copy.to_local.moved,
                to_tunnel = copy.to_tunnel.moved,
                "stream closed"
            ),
            Err(error) => {
                // Pass the failure on as a reset rather than a clean FIN, so the edge does not
                // take a truncated response for a complete one.
                tracing::debug!(%error, "stream ended with an error; resetting the tunnel side");
                copy.tunnel.abort();
            }
        }
    }
    .instrument(span)
    .await;
}

/// Runs a closure when dropped (also on cancellation of the bridge task).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// One direction's state: what is left of a chunk the receiving side only partly took, and
/// whether the sending side has ended.
#[derive(Default)]
struct Half {
    /// Bytes read but not yet written (only when the app's socket took part of a chunk).
    pending: Vec<u8>,
    /// The sending side reached its end; the receiving side's write half is to be shut down.
    eof: bool,
    /// The receiving side's write half is shut down: this direction is over.
    done: bool,
    /// Bytes moved, for the log.
    moved: u64,
    /// Bytes read, counted as they are read (so an aborted stream is counted too).
    counter: Counter,
}

impl Half {
    fn new(counter: Counter) -> Self {
        Half {
            counter,
            ..Half::default()
        }
    }

    fn read(&mut self, n: usize) {
        self.moved += n as u64;
        self.counter.inc_by(n as u64);
    }
}

/// Copies both ways between a tunnel stream and an app connection (see the module docs).
/// Resolves when both directions have ended, or with the first error.
struct Bridge {
    tunnel: TunnelStream,
    local: TcpStream,
    to_local: Half,
    to_tunnel: Half,
}

impl Bridge {
    fn new(tunnel: TunnelStream, local: TcpStream, to_local: Counter, to_tunnel: Counter) -> Self {
        Bridge {
            tunnel,
            local,
            to_local: Half::new(to_local),
            to_tunnel: Half::new(to_tunnel),
        }
    }

    /// Tunnel -> app. Reads only while the app's socket is writable.
    fn poll_to_local(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let half = &mut self.to_local;
        for _ in 0..CHUNKS_PER_POLL {
            if half.done {
                return Poll::Ready(Ok(()));
            }
            if !half.pending.is_empty() {
                ready!(self.local.poll_write_ready(cx))?;
                match self.local.try_write(&half.pending) {
                    Ok(n) => {
                        half.pending.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                continue;
            }
            if half.eof {
                ready!(Pin::new(&mut self.local).poll_shutdown(cx))?;
                half.done = true;
                continue;
            }
            ready!(self.local.poll_write_ready(cx))?;
            ready!(self.tunnel.poll_read_ready(cx))?;
            let local = &self.local;
            let tunnel = &mut self.tunnel;
            let step = SCRATCH.with(|scratch| -> Poll<io::Result<()>> {
                let mut scratch = scratch.borrow_mut();
                let mut buf = ReadBuf::new(&mut scratch[..]);
                ready!(Pin::new(&mut *tunnel).poll_read(cx, &mut buf))?;
                let chunk = buf.filled();
                if chunk.is_empty() {
                    half.eof = true;
                    return Poll::Ready(Ok(()));
                }
                half.read(chunk.len());
                let written = match local.try_write(chunk) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                half.pending.extend_from_slice(&chunk[written..]);
                Poll::Ready(Ok(()))
            });
            ready!(step)?;
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// App -> tunnel. Reads only as much as the tunnel stream's send buffer can take.
    fn poll_to_tunnel(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let half = &mut self.to_tunnel;
        for _ in 0..CHUNKS_PER_POLL {
            if half.done {
                return Poll::Ready(Ok(()));
            }
            if !half.pending.is_empty() {
                let n = ready!(Pin::new(&mut self.tunnel).poll_write(cx, &half.pending))?;
                half.pending.drain(..n);
                continue;
            }
            if half.eof {
                ready!(Pin::new(&mut self.tunnel).poll_shutdown(cx))?;
                half.done = true;
                continue;
            }
            let room = ready!(self.tunnel.poll_write_ready(cx))?;
            ready!(self.local.poll_read_ready(cx))?;
            let local = &self.local;
            let tunnel = &mut self.tunnel;
            SCRATCH.with(|scratch| -> io::Result<()> {
                let mut scratch = scratch.borrow_mut();
                let want = room.min(scratch.len());
                let n = match local.try_read(&mut scratch[..want]) {
                    Ok(0) => {
                        half.eof = true;
                        return Ok(());
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) => return Err(e),
                };
                half.read(n);
                // The send buffer had `room` bytes free and only the driver touched it since,
                // which frees room: all of it is taken, but keep any rest to be safe.
                let taken = match Pin::new(&mut *tunnel).poll_write(cx, &scratch[..n]) {
                    Poll::Ready(Ok(taken)) => taken,
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => 0,
                };
                half.pending.extend_from_slice(&scratch[taken..n]);
                Ok(())
            })?;
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Future for &mut Bridge {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut **self.get_mut();
        let to_local = this.poll_to_local(cx)?;
        let to_tunnel = this.poll_to_tunnel(cx)?;
        if to_local.is_ready() && to_tunnel.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}
