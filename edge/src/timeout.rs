//! Send and request body timeouts, as Nginx's `send_timeout` and `client_body_timeout`: a
//! client that stops reading its response, or stops sending (or dribbles) its request body,
//! cannot hold a connection, a tunnel stream and an app connection for longer than the
//! configured time.
//!
//! Both clocks run only while the edge waits **on the client**, never while it waits on the
//! origin: an app that takes minutes to produce the next event of a stream, or that reads an
//! upload slowly, costs its client nothing.
//!
//! Both use one [`TransferClock`]: it runs while the edge waits on the client and stops when
//! bytes move. One wait longer than the timeout ends the transfer (Nginx's semantics). So that a
//! client cannot keep a transfer open forever by moving a byte every few seconds, each timeout's
//! worth of waiting must also move at least min rate x timeout bytes (Apache's
//! `RequestReadTimeout ...,MinRate=...`); a min rate of `0` leaves Nginx's plain inactivity
//! timeout.
//!
//! - **Request bodies** (the proxy's request body wrapper, `client_body_timeout`,
//!   `client_body_min_rate`): the clock runs from the moment the upstream connection asks for
//!   more body and the client has none, until bytes arrive. The client gets 408 if the origin
//!   has not answered yet.
//! - **Responses, the socket** ([`WriteTimeout`] around every client connection,
//!   `send_timeout`, `send_min_rate`): the clock runs while a write or flush to the client is
//!   blocked (socket not writable). When it runs out the write fails, the connection is reset
//!   (zero linger: the kernel drops the unsent bytes too) and everything it held, upstream
//!   connections included, is released. The rate matters here even for a client that reads
//!   nothing at all: Linux accepts a few more bytes from time to time into a full receive
//!   buffer, so a blocked write does succeed now and then.
//! - **Responses, one HTTP/2 stream** ([`StreamExecutor`], `send_timeout`): a stream whose
//!   response data waits behind HTTP/2 flow control (the client keeps the stream's or the
//!   connection's window at 0, or opens it a few bytes at a time: h2's send buffer stays full
//!   and hyper is never asked for more) for `send_timeout` is reset (RST_STREAM) and its
//!   upstream connection closed, while the
//!   client's other streams go on. hyper spawns each HTTP/2 stream through this executor; the
//!   response body marks, in a thread-local the executor's wrapper swaps in around each poll,
//!   when it handed data to hyper and when hyper next asked for more. Data still waiting in h2's
//!   send buffer after the body has ended holds no upstream; the connection that carries it is
//!   closed at most `send_timeout` after its idle-timeout GOAWAY.
//!
//! Timers are armed lazily: a deadline that moves later does not touch the timer; the timer
//! fires at the old deadline, finds the wait not over, and is re-armed once.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use kokoa_model::EdgeLimits;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The send and request body timeouts (`[limits] send_timeout`, `send_min_rate`,
/// `client_body_timeout`, `client_body_min_rate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferTimeouts {
    /// How long a response may wait on the client without progress.
    pub send: Duration,
    /// Bytes per second a client must take over each `send` of waiting (0: no minimum rate).
    pub send_min_rate: u64,
    /// How long a request body may wait on the client without progress.
    pub client_body: Duration,
    /// Bytes per second a request body must average over each `client_body` of waiting (0:
    /// no minimum rate).
    pub client_body_min_rate: u64,
}

impl Default for TransferTimeouts {
    fn default() -> Self {
        Self::from_limits(&EdgeLimits::default())
    }
}

impl TransferTimeouts {
    /// The timeouts `limits` sets (validated by the model).
    pub fn from_limits(limits: &EdgeLimits) -> Self {
        Self {
            send: limits.send_timeout.as_secs(),
            send_min_rate: limits.send_min_rate.get(),
            client_body: limits.client_body_timeout.as_secs(),
            client_body_min_rate: limits.client_body_min_rate.get(),
        }
    }

    /// The clock of one request body; `counter` counts the bodies it cuts off.
    pub fn body_clock(&self, counter: Counter) -> TransferClock {
        TransferClock::new(
            Transfer::RequestBody,
            self.client_body,
            self.client_body_min_rate,
            counter,
        )
    }

    /// The clock of one client connection's writes; `counter` counts the connections it cuts
    /// off.
    pub fn send_clock(&self, counter: Counter) -> TransferClock {
        TransferClock::new(Transfer::Send, self.send, self.send_min_rate, counter)
    }
}

/// Which transfer a [`TransferClock`] times (for messages naming the settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transfer {
    /// A request body from the client.
    RequestBody,
    /// Writes to the client.
    Send,
}

impl Transfer {
    fn settings(self) -> (&'static str, &'static str) {
        match self {
            Self::RequestBody => ("client_body_timeout", "client_body_min_rate"),
            Self::Send => ("send_timeout", "send_min_rate"),
        }
    }
}

/// Why a transfer was cut off.
#[derive(Debug, thiserror::Error)]
pub enum TimedOut {
    /// Nothing moved for a whole timeout.
    #[error("nothing moved for {timeout:?} ({})", .transfer.settings().0)]
    Stalled {
        /// What was timed.
        transfer: Transfer,
        /// The timeout.
        timeout: Duration,
    },
    /// Too few bytes over a timeout's worth of waiting.
    #[error("slower than {rate} bytes/s over {window:?} of waiting ({})", .transfer.settings().1)]
    TooSlow {
        /// What was timed.
        transfer: Transfer,
        /// The minimum rate.
        rate: u64,
        /// The waiting time it was measured over.
        window: Duration,
    },
}

/// Whether `error` or one of its sources is a [`TimedOut`].
pub fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<TimedOut>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// The clock of one transfer to or from a client: fed with what each poll of the client's side
/// returned (bytes moved, or nothing yet).
#[derive(Debug)]
pub struct TransferClock {
    transfer: Transfer,
    timeout: Duration,
    /// Bytes each `timeout` of waiting must bring (0: no rate check).
    floor: u64,
    /// Set while the edge waits on the client.
    wait: Option<Wait>,
    /// Waiting time and bytes of the current rate window.
    waited: Duration,
    bytes: u64,
    sleep: Option<Pin<Box<Sleep>>>,
    counter: Counter,
}

#[derive(Debug, Clone, Copy)]
struct Wait {
    /// When this wait began (for the inactivity check).
    started: Instant,
    /// Up to when this wait is already counted in `waited`.
    counted: Instant,
}

impl TransferClock {
    /// A clock of `timeout` per wait and `min_rate` bytes/s over each `timeout` of waiting;
    /// `counter` counts the transfers it cuts off.
    pub fn new(transfer: Transfer, timeout: Duration, min_rate: u64, counter: Counter) -> Self {
        let floor = (u128::from(min_rate) * timeout.as_millis()).div_ceil(1000);
        Self {
            transfer,
            timeout,
            floor: u64::try_from(floor).unwrap_or(u64::MAX),
            wait: None,
            waited: Duration::ZERO,
            bytes: 0,
            sleep: None,
            counter,
        }
    }

    /// `len` bytes moved. Fails when they end a rate window that brought too little.
    pub fn on_data(&mut self, len: u64) -> Result<(), TimedOut> {
        if self.wait.is_none() {
            // Ready without waiting: the client is ahead of the edge.
            self.bytes = self.bytes.saturating_add(len);
            return Ok(());
        }
        self.data_at(len, Instant::now())
    }

    /// The client has nothing for the edge, or takes nothing from it, and the edge waits: runs
    /// the clock. Ready with an error once the transfer is over its time.
    pub fn on_pending(&mut self, cx: &mut Context<'_>) -> Poll<TimedOut> {
        loop {
            let deadline = match self.waiting_at(Instant::now()) {
                Ok(deadline) => deadline,
                Err(error) => return Poll::Ready(self.fail(error)),
            };
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if sleep.deadline() > deadline {
                sleep.as_mut().reset(deadline);
            }
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // Fired: at an older, earlier deadline, or at this one.
                Poll::Ready(()) if sleep.deadline() < deadline => sleep.as_mut().reset(deadline),
                Poll::Ready(()) => {}
            }
        }
    }

    /// Gives up the timer (a parked connection keeps none); the next wait arms a new one.
    pub fn forget_timer(&mut self) {
        self.sleep = None;
    }

    /// Bytes moved at `now`: ends the current wait.
    fn data_at(&mut self, len: u64, now: Instant) -> Result<(), TimedOut> {
        self.bytes = self.bytes.saturating_add(len);
        let Some(wait) = self.wait.take() else {
            return Ok(());
        };
        if self.floor == 0 {
            return Ok(());
        }
        self.waited += now.saturating_duration_since(wait.counted);
        if self.waited >= self.timeout {
            self.close_window().map_err(|error| self.fail(error))?;
        }
        Ok(())
    }

    /// The edge waits on the client at `now`: starts or continues the wait, closes a rate
    /// window that ended meanwhile, and returns when to look again.
    fn waiting_at(&mut self, now: Instant) -> Result<Instant, TimedOut> {
        let wait = self.wait.get_or_insert(Wait {
            started: now,
            counted: now,
        });
        loop {
            let stalled_at = wait.started + self.timeout;
            if now >= stalled_at {
                return Err(TimedOut::Stalled {
                    transfer: self.transfer,
                    timeout: self.timeout,
                });
            }
            if self.floor == 0 {
                return Ok(stalled_at);
            }
            let window_ends = wait.counted + self.timeout.saturating_sub(self.waited);
            if now < window_ends {
                return Ok(stalled_at.min(window_ends));
            }
            // A rate window ended during this wait.
            self.waited += now.saturating_duration_since(wait.counted);
            wait.counted = now;
            let enough = self.bytes >= self.floor;
            self.waited = Duration::ZERO;
            self.bytes = 0;
            if !enough {
                return Err(self.too_slow());
            }
        }
    }

    /// Checks a completed rate window and starts the next.
    fn close_window(&mut self) -> Result<(), TimedOut> {
        let enough = self.bytes >= self.floor;
        self.waited = Duration::ZERO;
        self.bytes = 0;
        if enough {
            Ok(())
        } else {
            Err(self.too_slow())
        }
    }

    fn too_slow(&self) -> TimedOut {
        let window = self.timeout;
        let rate = self.floor * 1000 / (window.as_millis().max(1) as u64);
        TimedOut::TooSlow {
            transfer: self.transfer,
            rate,
            window,
        }
    }

    fn fail(&mut self, error: TimedOut) -> TimedOut {
        self.counter.inc();
        self.sleep = None;
        self.wait = None;
        tracing::debug!(%error, "client too slow; cutting it off");
        error
    }
}

/// A connection whose sends can be reset when the client stops reading.
pub trait ResetOnClose {
    /// Makes closing the connection reset it (zero linger), so the kernel discards unsent data
    /// instead of keeping it for a client that does not read.
    fn reset_on_close(&self);
}

impl ResetOnClose for tokio::net::TcpStream {
    fn reset_on_close(&self) {
        let _ = self.set_zero_linger();
    }
}

impl<T: ResetOnClose> ResetOnClose for tokio_rustls::server::TlsStream<T> {
    fn reset_on_close(&self) {
        self.get_ref().0.reset_on_close();
    }
}

impl<T: ResetOnClose + ?Sized> ResetOnClose for Box<T> {
    fn reset_on_close(&self) {
        (**self).reset_on_close();
    }
}

/// A client stream whose writes fail with [`io::ErrorKind::TimedOut`] once they have waited on
/// the client (the socket not writable) for longer than its [`TransferClock`] allows. Reads
/// pass through.
#[derive(Debug)]
pub struct WriteTimeout<T> {
    inner: T,
    clock: TransferClock,
}

impl<T> WriteTimeout<T> {
    /// `inner` with writes timed by `clock` ([`TransferTimeouts::send_clock`]).
    pub fn new(inner: T, clock: TransferClock) -> Self {
        Self { inner, clock }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The wrapped stream, mutably (reads and writes through it are not timed).
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Frees the timer (a parked connection keeps none).
    pub fn forget_timer(&mut self) {
        self.clock.forget_timer();
    }
}

impl<T: ResetOnClose> WriteTimeout<T> {
    fn fail<R>(&mut self, error: TimedOut) -> Poll<io::Result<R>> {
        self.inner.reset_on_close();
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, error)))
    }

    fn written(&mut self, result: io::Result<usize>) -> Poll<io::Result<usize>> {
        if let Ok(n) = result {
            if let Err(error) = self.clock.on_data(n as u64) {
                return self.fail(error);
            }
        }
        Poll::Ready(result)
    }

    fn flushed(&mut self, result: io::Result<()>) -> Poll<io::Result<()>> {
        if result.is_ok() {
            if let Err(error) = self.clock.on_data(0) {
                return self.fail(error);
            }
        }
        Poll::Ready(result)
    }

    fn blocked<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match self.clock.on_pending(cx) {
            Poll::Ready(error) => self.fail(error),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + ResetOnClose + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(result) => self.written(result),
            Poll::Pending => self.blocked(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => self.written(result),
            Poll::Pending => self.blocked(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(result) => self.flushed(result),
            Poll::Pending => self.blocked(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Ready(result) => self.flushed(result),
            Poll::Pending => self.blocked(cx),
        }
    }
}

/// Where an HTTP/2 stream's response stands, as its body reports it (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamState {
    /// Not inside a stream spawned by [`StreamExecutor`] (HTTP/1, or another task).
    Outside,
    /// hyper is asking for body data, or none has been handed over yet.
    Flowing,
    /// Data was handed to hyper at this instant and hyper has not asked for more since: it is
    /// waiting for flow-control window.
    HandedAt(Instant),
}

thread_local! {
    static STREAM: Cell<StreamState> = const { Cell::new(StreamState::Outside) };
}

/// Called by the response body when hyper polls it: the previous data has been taken.
pub(crate) fn response_polled() {
    STREAM.with(|state| {
        if state.get() != StreamState::Outside {
            state.set(StreamState::Flowing);
        }
    });
}

/// Called by the response body when it hands data to hyper.
pub(crate) fn response_handed() {
    STREAM.with(|state| {
        if state.get() != StreamState::Outside {
            state.set(StreamState::HandedAt(Instant::now()));
        }
    });
}

/// The executor of a client HTTP/2 connection: spawns each stream hyper hands it on tokio,
/// reset once its response has waited on flow control for the send timeout.
#[derive(Clone, Debug)]
pub struct StreamExecutor {
    timeout: Duration,
    counter: Counter,
}

impl StreamExecutor {
    /// Streams stuck for `timeout` are reset and counted in `counter`.
    pub fn new(timeout: Duration, counter: Counter) -> Self {
        Self { timeout, counter }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(Watched {
            future,
            state: StreamState::Flowing,
            timeout: self.timeout,
            sleep: None,
            counter: self.counter.clone(),
        });
    }
}

pin_project_lite::pin_project! {
    /// A stream's future, ended (dropped: h2 resets the stream) when its response waits on
    /// flow control for longer than the timeout.
    struct Watched<F> {
        #[pin]
        future: F,
        state: StreamState,
        timeout: Duration,
        sleep: Option<Pin<Box<Sleep>>>,
        counter: Counter,
    }
}

/// Puts the stream's state back where it was, even if the stream's future panics.
struct Swap<'a> {
    saved: &'a mut StreamState,
    outer: StreamState,
}

impl Drop for Swap<'_> {
    fn drop(&mut self) {
        *self.saved = STREAM.with(|state| state.replace(self.outer));
    }
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let polled = {
            let outer = STREAM.with(|state| state.replace(*this.state));
            let _swap = Swap {
                saved: this.state,
                outer,
            };
            this.future.poll(cx)
        };
        if polled.is_ready() {
            return Poll::Ready(());
        }
        let StreamState::HandedAt(handed) = *this.state else {
            return Poll::Pending;
        };
        let deadline = handed + *this.timeout;
        loop {
            if Instant::now() >= deadline {
                this.counter.inc();
                tracing::debug!(timeout = ?this.timeout, "HTTP/2 response stuck behind flow control; resetting the stream (send_timeout)");
                // Completing drops the stream's future: hyper's stream handle goes, h2 resets
                // the stream, and the response body (with its upstream connection) is dropped.
                return Poll::Ready(());
            }
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if sleep.deadline() > deadline {
                sleep.as_mut().reset(deadline);
            }
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if sleep.deadline() < deadline => sleep.as_mut().reset(deadline),
                Poll::Ready(()) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_come_from_the_model_s_limits() {
        let defaults = TransferTimeouts::default();
        assert_eq!(defaults.send, Duration::from_secs(60));
        assert_eq!(defaults.client_body, Duration::from_secs(60));
        assert_eq!(defaults.send_min_rate, 500);
        assert_eq!(defaults.client_body_min_rate, 500);
        let limits: EdgeLimits = kokoa_model::from_toml(
            "send_timeout = 5\nsend_min_rate = 9\nclient_body_timeout = 7\nclient_body_min_rate = 0",
        )
        .unwrap();
        let custom = TransferTimeouts::from_limits(&limits);
        assert_eq!(custom.send, Duration::from_secs(5));
        assert_eq!(custom.send_min_rate, 9);
        assert_eq!(custom.client_body, Duration::from_secs(7));
        assert_eq!(custom.client_body_min_rate, 0);
    }

    fn at(base: Instant, secs: u64) -> Instant {
        base + Duration::from_secs(secs)
    }

    #[test]
    fn a_stalled_body_times_out_after_one_wait() {
        let base = Instant::now();
        let mut deadline = TransferClock::new(
            Transfer::RequestBody,
            Duration::from_secs(10),
            0,
            Counter::default(),
        );
        assert_eq!(deadline.waiting_at(base).unwrap(), at(base, 10));
        assert_eq!(deadline.waiting_at(at(base, 9)).unwrap(), at(base, 10));
        // Data ends the wait; the next one has a deadline of its own.
        deadline.data_at(1, at(base, 9)).unwrap();
        assert_eq!(deadline.waiting_at(at(base, 12)).unwrap(), at(base, 22));
        assert_eq!(deadline.waiting_at(at(base, 21)).unwrap(), at(base, 22));
        assert!(matches!(
            deadline.waiting_at(at(base, 22)),
            Err(TimedOut::Stalled { .. })
        ));
    }

    #[test]
    fn a_dribbling_body_is_cut_by_the_minimum_rate() {
        let base = Instant::now();
        // 100 bytes/s over 10 s of waiting: at least 1000 bytes per window.
        let mut deadline = TransferClock::new(
            Transfer::RequestBody,
            Duration::from_secs(10),
            100,
            Counter::default(),
        );
        // One byte a second: never 10 s without data, but far below the rate.
        let mut second = 0;
        let result = loop {
            deadline.waiting_at(at(base, second)).unwrap();
            second += 1;
            if let Err(error) = deadline.data_at(1, at(base, second)) {
                break error;
            }
            assert!(second < 30, "never cut");
        };
        assert!(
            matches!(result, TimedOut::TooSlow { rate: 100, .. }),
            "{result:?}"
        );
        assert_eq!(second, 10);

        // 200 bytes a second passes, window after window.
        let mut deadline = TransferClock::new(
            Transfer::RequestBody,
            Duration::from_secs(10),
            100,
            Counter::default(),
        );
        for second in 0..35 {
            deadline.waiting_at(at(base, second)).unwrap();
            deadline.data_at(200, at(base, second + 1)).unwrap();
        }
    }

    #[test]
    fn only_time_spent_waiting_on_the_client_counts() {
        let base = Instant::now();
        let mut deadline = TransferClock::new(
            Transfer::RequestBody,
            Duration::from_secs(10),
            100,
            Counter::default(),
        );
        // The edge does not ask for the body for minutes (the origin is slow to read it), and
        // whenever it does the client has data: no wait, nothing counted.
        deadline.data_at(10, at(base, 60)).unwrap();
        deadline.data_at(10, at(base, 120)).unwrap();
        // 5 s of waiting bring plenty; a window that ends inside the next wait passes and the
        // next window starts there.
        deadline.waiting_at(at(base, 120)).unwrap();
        deadline.data_at(2000, at(base, 125)).unwrap();
        assert_eq!(deadline.waiting_at(at(base, 125)).unwrap(), at(base, 130));
        assert_eq!(
            deadline.waiting_at(at(base, 131)).unwrap(),
            at(base, 135),
            "the window passed; the wait still ends 10 s after it began"
        );
        deadline.data_at(999, at(base, 134)).unwrap();
        // A window that ends inside a wait with too little: cut there.
        deadline.waiting_at(at(base, 134)).unwrap();
        assert!(matches!(
            deadline.waiting_at(at(base, 141)),
            Err(TimedOut::TooSlow { .. })
        ));
    }
}
