//! The tokio driver: one task owns the UDP socket and the [`Core`]'s clock; streams lock the
//! core briefly to move bytes and wake the driver through a `Notify`. No task and no channel
//! hop per packet: datagrams go socket -> core -> socket inside one loop iteration, in batches
//! (`recvmmsg` + GRO in, GSO out); the syscalls run outside the core's lock.

use std::future::poll_fn;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
use tracing::Instrument as _;

use crate::core::{Core, Event, StreamId, Transmit};
use crate::peer_cache;
use crate::{PeerConfig, PrivateKey, PublicKey, TunnelConfig, TunnelError, TunnelStats};

/// `recvmmsg` calls per driver iteration before the netstacks are polled.
const RECV_CALLS: usize = 8;
/// Buffers per `recvmmsg` call; with GRO each may hold up to 64 coalesced datagrams.
const RECV_BUFFERS: usize = 8;
/// Size of each receive buffer: the largest GRO train (64 KiB of UDP payload) fits.
const RECV_BUFFER_SIZE: usize = 128 * 1024;
/// Largest GSO send: the UDP length field bounds one coalesced datagram train.
const GSO_MAX_BYTES: usize = 64_000;
/// Requested kernel socket buffers: bursts of a fast stream must not overflow them.
const SOCKET_BUFFER: usize = 7 * 1024 * 1024;
/// Accepted streams waiting for `Incoming::accept`; beyond this new ones are reset.
const ACCEPT_BACKLOG: usize = 1024;
/// How often the peer cache file is brought up to date (when something changed).
const PEER_CACHE_INTERVAL: Duration = Duration::from_secs(1);

struct Shared {
    core: Mutex<Core>,
    notify: Notify,
    local_addr: SocketAddr,
    /// Changes with [`Tunnel::set_private_key`]; not behind the core's lock so that reading it
    /// (in `Debug`, in logs) can never wait for or deadlock with the driver.
    public_key: Mutex<PublicKey>,
    /// Live `Tunnel` handles; the driver stops when none is left and no stream is open.
    handles: AtomicUsize,
    /// Where learned peer endpoints are kept (see [`crate::CachedPeer`]).
    peer_cache: Option<PathBuf>,
    /// A failure to write the peer cache was logged (once is enough: it repeats every second).
    peer_cache_failed: AtomicBool,
}

impl Shared {
    /// Writes the peer cache if it changed. Errors are logged (the file is an optimisation:
    /// without it a restart waits for the peers to handshake again).
    fn store_peer_cache(&self) {
        let Some(path) = &self.peer_cache else {
            return;
        };
        let peers = {
            let mut core = self.core.lock();
            if core.is_closed() {
                return;
            }
            core.take_peer_cache()
        };
        if let Some(peers) = peers {
            match peer_cache::store(path, &peers) {
                Ok(()) => {
                    self.peer_cache_failed.store(false, Ordering::Relaxed);
                    tracing::debug!(path = %path.display(), peers = peers.len(), "peer endpoints saved");
                }
                Err(error) => {
                    if !self.peer_cache_failed.swap(true, Ordering::Relaxed) {
                        tracing::warn!(path = %path.display(), %error, "cannot save peer endpoints (set a writable state_dir); a restart will wait for peers behind NAT to handshake again");
                    }
                    // Try again at the next change.
                    self.core.lock().forget_peer_cache();
                }
            }
        }
    }
}

impl Shared {
    fn wake_driver_if_needed(&self, core: &Core) {
        if core.has_pending_work() {
            self.notify.notify_one();
        }
    }
}

/// A userspace WireGuard node: one UDP socket, many peers, TCP streams through them.
/// A cheap `Clone` handle; the driver task runs until every handle is dropped (and every
/// stream closed) or [`Tunnel::shutdown`] is called.
pub struct Tunnel {
    shared: Arc<Shared>,
}

impl Clone for Tunnel {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::Relaxed);
        Tunnel {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.notify.notify_one();
        }
    }
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("local_addr", &self.shared.local_addr)
            .field("public_key", &*self.shared.public_key.lock())
            .finish()
    }
}

impl Tunnel {
    /// Binds the UDP socket, spawns the driver on the current tokio runtime. With a
    /// `peer_cache` file, the peers it remembers are added to `remembered` first (a file that
    /// cannot be read is logged and ignored), and the file is kept up to date from then on.
    pub async fn bind(mut config: TunnelConfig) -> Result<(Tunnel, Incoming), TunnelError> {
        if let Some(path) = &config.peer_cache {
            match peer_cache::load(path) {
                Ok(peers) => {
                    if !peers.is_empty() {
                        tracing::info!(path = %path.display(), peers = peers.len(), "remembered peer endpoints loaded");
                    }
                    config.remembered.extend(peers);
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot read remembered peer endpoints")
                }
            }
        }
        let core = Core::new(&config, Instant::now())?;
        let socket = bind_udp(config.listen)?;
        let local_addr = socket.local_addr()?;
        let public_key = core.public_key();
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            notify: Notify::new(),
            local_addr,
            public_key: Mutex::new(public_key),
            handles: AtomicUsize::new(1),
            peer_cache: config.peer_cache.clone(),
            peer_cache_failed: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
        let span = tracing::info_span!("tunnel", local = %local_addr, key = %public_key);
        tokio::spawn(drive(shared.clone(), socket, tx).instrument(span.clone()));
        if shared.peer_cache.is_some() {
            tokio::spawn(keep_peer_cache(Arc::downgrade(&shared)).instrument(span));
        }
        Ok((Tunnel { shared }, Incoming { rx }))
    }

    /// The UDP socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// This node's public key (the new one after [`Tunnel::set_private_key`]).
    pub fn public_key(&self) -> PublicKey {
        *self.shared.public_key.lock()
    }

    /// Rotates this node's WireGuard private key in place: every peer's session is rebuilt
    /// for the new key and a handshake starts at once toward every peer whose endpoint is
    /// known. Streams and netstacks stay: traffic pauses until each peer has the new public
    /// key (through its own [`Tunnel::set_peers`], which re-keys the peer in place), and TCP
    /// retransmits what was lost in between. Setting the current key again changes nothing.
    pub fn set_private_key(&self, key: PrivateKey) {
        let public = key.public_key();
        let mut core = self.shared.core.lock();
        core.set_private_key(&key, Instant::now());
        *self.shared.public_key.lock() = public;
        drop(core);
        tracing::info!(key = %public, "tunnel private key rotated");
        self.shared.notify.notify_one();
    }

    /// Replaces the peer set: unchanged peers keep their sessions and streams, removed peers'
    /// streams are reset, changed endpoints/allowed IPs apply at once. A peer whose public key
    /// changed while its `local_address` and `allowed_ips` did not (a key rotation on the
    /// other side) is re-keyed in place: its streams stay and a new handshake starts. An
    /// invalid set (a key listed twice) is logged and ignored; use [`Tunnel::try_set_peers`]
    /// to get the error.
    pub fn set_peers(&self, peers: Vec<PeerConfig>) {
        if let Err(e) = self.try_set_peers(peers) {
            tracing::warn!(error = %e, "peer set rejected, keeping the previous one");
        }
    }

    /// [`Tunnel::set_peers`] that reports an invalid peer set instead of logging it.
    pub fn try_set_peers(&self, peers: Vec<PeerConfig>) -> Result<(), TunnelError> {
        let mut core = self.shared.core.lock();
        let r = core.set_peers(peers, Instant::now());
        drop(core);
        self.shared.notify.notify_one();
        r
    }

    /// Replaces the ports on which inbound streams are accepted.
    pub fn set_accept_ports(&self, ports: Vec<u16>) {
        self.shared.core.lock().set_accept_ports(ports);
    }

    /// Opens a TCP stream through the tunnel to `dst` (an address inside the peer's allowed IPs).
    /// Resolves once the TCP handshake completes; errors: UnknownPeer, Refused (RST),
    /// TimedOut (no handshake / no SYN-ACK within `timeout`), Closed (tunnel shut down),
    /// NotAllowed (`dst` outside the peer's allowed IPs), TooManyStreams.
    /// Cancellation-safe: dropping the future abandons the half-open stream.
    pub async fn connect(
        &self,
        peer: &PublicKey,
        dst: SocketAddrV4,
        timeout: Duration,
    ) -> Result<TunnelStream, TunnelError> {
        self.connect_for(peer, dst, timeout, None).await
    }

    /// [`Tunnel::connect`] on behalf of a client: the stream's buffers are sized from the
    /// client's share of the window budget and charged to it (`client` is an opaque key, the
    /// same for every stream of one client; `None` charges the peer). See [`crate::window`].
    /// Also fails with [`TunnelError::NoWindowMemory`] when the node's budget is used up.
    pub async fn connect_for(
        &self,
        peer: &PublicKey,
        dst: SocketAddrV4,
        timeout: Duration,
        client: Option<u128>,
    ) -> Result<TunnelStream, TunnelError> {
        let (id, local) = self
            .shared
            .core
            .lock()
            .connect_for(Instant::now(), peer, dst, client)?;
        self.shared.notify.notify_one();
        let mut stream = TunnelStream {
            shared: self.shared.clone(),
            id,
            peer: *peer,
            local,
            remote: dst,
            released: false,
        };
        let shared = &self.shared;
        let established = poll_fn(|cx| shared.core.lock().connect_state(id, Some(cx.waker())));
        let r = match tokio::time::timeout(timeout, established).await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(e)) => {
                stream.abort();
                Err(e)
            }
            Err(_) => {
                stream.abort();
                Err(TunnelError::TimedOut)
            }
        };
        match &r {
            Ok(_) => tracing::debug!(%peer, %dst, %local, "tunnel stream connected"),
            Err(e) => tracing::debug!(%peer, %dst, error = %e, "tunnel connect failed"),
        }
        r
    }

    /// Counters and per-peer state.
    pub fn stats(&self) -> TunnelStats {
        self.shared.core.lock().stats()
    }

    /// Sockets in all netstacks, including ones still closing (diagnostics; see
    /// [`Core::socket_count`]).
    pub fn socket_count(&self) -> usize {
        self.shared.core.lock().socket_count()
    }

    /// Stops the driver: every stream gets an error, the UDP socket is closed. The peer cache
    /// (if any) is written one last time first.
    pub fn shutdown(&self) {
        self.shared.store_peer_cache();
        self.shared.core.lock().shutdown();
        self.shared.notify.notify_one();
    }
}

/// Keeps the peer cache file current while the tunnel lives.
async fn keep_peer_cache(shared: Weak<Shared>) {
    let mut ticks = tokio::time::interval(PEER_CACHE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.core.lock().is_closed() {
            return;
        }
        // A few hundred bytes, at most once a second: written off the runtime's threads.
        let writer = shared.clone();
        let _ = tokio::task::spawn_blocking(move || writer.store_peer_cache()).await;
    }
}

fn bind_udp(listen: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    // Best effort: the kernel clamps to net.core.[rw]mem_max.
    if let Err(e) = socket.set_recv_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "could not raise SO_RCVBUF");
    }
    if let Err(e) = socket.set_send_buffer_size(SOCKET_BUFFER) {
        tracing::debug!(error = %e, "could not raise SO_SNDBUF");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&listen.into())?;
    UdpSocket::from_std(socket.into())
}

async fn drive(shared: Arc<Shared>, socket: UdpSocket, accept_tx: mpsc::Sender<IncomingStream>) {
    // Batched UDP (perf of a bulk transfer: two thirds of the tunnel's CPU was the kernel's
    // per-datagram sendto/recvfrom path). GSO sends a train of equal-size datagrams to one
    // destination in one sendmsg; GRO and recvmmsg receive many per call. quinn-udp falls
    // back to one datagram per call where the kernel or device lacks them.
    let udp = match quinn_udp::UdpSocketState::new((&socket).into()) {
        Ok(state) => state,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the tunnel UDP socket, shutting down");
            shared.core.lock().shutdown();
            return;
        }
    };
    let mut bufs: [Vec<u8>; RECV_BUFFERS] = std::array::from_fn(|_| vec![0u8; RECV_BUFFER_SIZE]);
    let mut meta = [quinn_udp::RecvMeta::default(); RECV_BUFFERS];
    let mut gso_buf: Vec<u8> = Vec::with_capacity(GSO_MAX_BYTES);
    let mut out: Vec<Transmit> = Vec::with_capacity(256);
    let mut sent: Vec<Vec<u8>> = Vec::with_capacity(256);
    let mut events: Vec<Event> = Vec::new();
    tracing::debug!("tunnel driver started");
    loop {
        let deadline = {
            let mut core = shared.core.lock();
            for b in sent.drain(..) {
                core.recycle(b);
            }
            let idle = shared.handles.load(Ordering::Acquire) == 0 && core.owned_streams() == 0;
            if core.is_closed() || idle {
                core.shutdown();
                break;
            }
            core.poll_timeout()
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            r = socket.readable() => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "tunnel UDP socket failed, shutting down");
                    shared.core.lock().shutdown();
                    break;
                }
            }
            _ = shared.notify.notified() => {
                // A stream has bytes to send. Let the tasks that are ready right now run
                // first: what they write joins this batch, so many streams' datagrams leave
                // in one GSO train instead of one sendmsg each (with 64 busy connections the
                // edge made 8x fewer sendmsg calls per request).
                tokio::task::yield_now().await;
            }
            _ = sleep => {}
        }

        let now = Instant::now();
        for call in 1..=RECV_CALLS {
            // The syscall runs outside the core's lock: streams keep moving bytes meanwhile.
            let received = {
                let mut slices = bufs.each_mut().map(|b| io::IoSliceMut::new(b));
                socket.try_io(tokio::io::Interest::READABLE, || {
                    udp.recv((&socket).into(), &mut slices, &mut meta)
                })
            };
            let n = match received {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive error");
                    0
                }
            };
            let mut core = shared.core.lock();
            for (m, b) in meta.iter().zip(&bufs).take(n) {
                // GRO coalesces datagrams of one size (`stride`) from one source, the last
                // one possibly shorter; without GRO `stride == len`.
                for datagram in b[..m.len].chunks(m.stride.max(1)) {
                    core.handle_datagram(now, m.addr, datagram);
                }
            }
            // A short batch means the socket is drained; a full one may have more behind it.
            if n == RECV_BUFFERS && call < RECV_CALLS {
                continue;
            }
            core.handle_timeout(now);
            while let Some(t) = core.poll_transmit() {
                out.push(t);
            }
            while let Some(ev) = core.poll_event() {
                events.push(ev);
            }
            break;
        }

        for ev in events.drain(..) {
            match ev {
                Event::Accepted {
                    stream,
                    peer,
                    local,
                    remote,
                } => {
                    tracing::debug!(%peer, %remote, port = local.port(), "tunnel stream accepted");
                    let incoming = IncomingStream {
                        stream: TunnelStream {
                            shared: shared.clone(),
                            id: stream,
                            peer,
                            local,
                            remote,
                            released: false,
                        },
                        peer,
                        local_port: local.port(),
                        remote,
                    };
                    if let Err(e) = accept_tx.try_send(incoming) {
                        tracing::warn!(%peer, %remote, "accept backlog full or Incoming dropped: resetting stream");
                        let mut rejected = match e {
                            mpsc::error::TrySendError::Full(s)
                            | mpsc::error::TrySendError::Closed(s) => s,
                        };
                        rejected.stream.abort();
                    }
                }
                Event::HandshakeCompleted(peer) => {
                    tracing::debug!(%peer, "WireGuard handshake completed");
                }
                Event::Connected(_) | Event::ConnectFailed(..) => {}
            }
        }

        let mut i = 0;
        while i < out.len() {
            let end = gso_train_end(&out, i, udp.max_gso_segments());
            if end == i + 1 {
                let _ = send(&socket, &udp, out[i].dst, &out[i].payload, None).await;
            } else {
                gso_buf.clear();
                for t in &out[i..end] {
                    gso_buf.extend_from_slice(&t.payload);
                }
                let segment = out[i].payload.len();
                if send(&socket, &udp, out[i].dst, &gso_buf, Some(segment))
                    .await
                    .is_err()
                {
                    // The device refused segmentation offload (quinn-udp stops using it from
                    // now on): send this train one datagram at a time.
                    for t in &out[i..end] {
                        let _ = send(&socket, &udp, t.dst, &t.payload, None).await;
                    }
                }
            }
            i = end;
        }
        sent.extend(out.drain(..).map(|t| t.payload));
    }
    tracing::debug!("tunnel driver stopped");
}

/// Sends one datagram, or a GSO train of `segment`-byte datagrams (the last may be shorter),
/// waiting while the socket buffer is full. Errors are logged: lost datagrams are TCP's to
/// retransmit, as on any lossy path.
async fn send(
    socket: &UdpSocket,
    udp: &quinn_udp::UdpSocketState,
    dst: SocketAddr,
    contents: &[u8],
    segment: Option<usize>,
) -> io::Result<()> {
    let transmit = quinn_udp::Transmit {
        destination: dst,
        ecn: None,
        contents,
        segment_size: segment,
        src_ip: None,
    };
    loop {
        let r = socket.try_io(tokio::io::Interest::WRITABLE, || {
            udp.try_send(socket.into(), &transmit)
        });
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.writable().await?,
            Err(e) => {
                tracing::debug!(error = %e, %dst, ?segment, "UDP send error");
                return Err(e);
            }
            Ok(()) => return Ok(()),
        }
    }
}

/// The end (exclusive) of the GSO train starting at `start`: following datagrams to the same
/// destination, all of the first one's size except possibly a shorter last one, at most
/// `max_segments` and [`GSO_MAX_BYTES`] in total.
fn gso_train_end(out: &[Transmit], start: usize, max_segments: usize) -> usize {
    let first = &out[start];
    let size = first.payload.len();
    let mut total = size;
    let mut end = start + 1;
    while end < out.len() && end - start < max_segments {
        let next = &out[end];
        let previous_full = out[end - 1].payload.len() == size;
        if next.dst != first.dst
            || !previous_full
            || next.payload.len() > size
            || next.payload.is_empty()
            || total + next.payload.len() > GSO_MAX_BYTES
        {
            break;
        }
        total += next.payload.len();
        end += 1;
    }
    end
}

/// Inbound streams, in arrival order.
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<IncomingStream>,
}

impl Incoming {
    /// The next inbound stream; `None` after shutdown. Cancellation-safe.
    pub async fn accept(&mut self) -> Option<IncomingStream> {
        self.rx.recv().await
    }
}

/// A stream a peer opened to one of the accepted ports.
#[derive(Debug)]
pub struct IncomingStream {
    /// The stream itself.
    pub stream: TunnelStream,
    /// Which peer opened it.
    pub peer: PublicKey,
    /// The destination port the remote peer connected to.
    pub local_port: u16,
    /// The peer's inner address and port.
    pub remote: SocketAddrV4,
}

/// A TCP stream through the tunnel: tokio `AsyncRead + AsyncWrite + Send + Sync + Unpin`.
///
/// `poll_shutdown` sends FIN (half-close; reading continues until the peer's FIN gives
/// `Ok(0)`). Drop closes gracefully (FIN after queued data) and the tunnel reaps the socket
/// later. A reset by the peer surfaces as `io::ErrorKind::ConnectionReset`.
pub struct TunnelStream {
    shared: Arc<Shared>,
    id: StreamId,
    peer: PublicKey,
    local: SocketAddrV4,
    remote: SocketAddrV4,
    released: bool,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("peer", &self.peer)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .finish()
    }
}

impl TunnelStream {
    /// The peer this stream goes through (its public key when the stream was opened: a
    /// re-keyed peer keeps its streams).
    pub fn peer(&self) -> PublicKey {
        self.peer
    }

    /// Our inner address and port.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    /// The remote inner address and port.
    pub fn remote_addr(&self) -> SocketAddrV4 {
        self.remote
    }

    /// `Ready` when [`AsyncRead::poll_read`] would not wait (bytes queued, end of stream, or an
    /// error), without reading anything: a caller can wait for data before it picks a buffer.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut core = self.shared.core.lock();
        core.stream_readable(self.id, Some(cx.waker()))
    }

    /// `Ready(Ok(n))` once a write would take `n > 0` bytes without waiting (room in the send
    /// buffer), without writing: a caller can read only as much as it can pass on.
    pub fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut core = self.shared.core.lock();
        core.stream_writable(self.id, Some(cx.waker()))
    }

    /// The per-direction buffer size this stream got when it opened (see [`crate::window`]).
    pub fn window(&self) -> usize {
        self.shared
            .core
            .lock()
            .stream_window(self.id)
            .unwrap_or_default()
    }

    /// A handle that can recharge this stream's buffers to another client while something
    /// else (an HTTP connection) owns the stream.
    pub fn handle(&self) -> StreamHandle {
        StreamHandle {
            shared: self.shared.clone(),
            id: self.id,
        }
    }

    /// Resets the stream (RST) instead of closing it gracefully.
    pub fn abort(&mut self) {
        if !std::mem::replace(&mut self.released, true) {
            self.shared
                .core
                .lock()
                .stream_abort(self.id, Instant::now());
            self.shared.notify.notify_one();
        }
    }
}

/// Charges an open stream's buffers to another client (see [`TunnelStream::handle`]). Does
/// nothing once the stream is closed.
#[derive(Clone)]
pub struct StreamHandle {
    shared: Arc<Shared>,
    id: StreamId,
}

impl StreamHandle {
    /// From now on the stream's buffers count against `client`'s share (`None`: the peer's).
    pub fn set_client(&self, client: Option<u128>) {
        self.shared.core.lock().stream_set_client(self.id, client);
    }

    /// The per-direction buffer size the stream got when it opened (0 once it is closed).
    pub fn window(&self) -> usize {
        self.shared
            .core
            .lock()
            .stream_window(self.id)
            .unwrap_or_default()
    }

    /// Whether the stream is open with the largest buffers (`[tunnel] tcp_buffer`): a stream
    /// that opened smaller, because its client's share was used up, stays small for its life.
    pub fn is_full_size(&self) -> bool {
        let mut core = self.shared.core.lock();
        let max = core.max_window();
        core.stream_window(self.id).is_some_and(|size| size >= max)
    }
}

impl std::fmt::Debug for StreamHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHandle")
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        if !std::mem::replace(&mut self.released, true) {
            self.shared
                .core
                .lock()
                .stream_close(self.id, Instant::now());
            self.shared.notify.notify_one();
        }
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let max = buf.remaining();
        let mut core = this.shared.core.lock();
        // Copy straight into the caller's (possibly uninitialized) buffer: no zeroing.
        let r = core.stream_recv_with(this.id, max, Some(cx.waker()), |chunk| buf.put_slice(chunk));
        this.shared.wake_driver_if_needed(&core);
        drop(core);
        r.map_ok(|_| ())
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut core = this.shared.core.lock();
        let r = core.stream_send(this.id, data, Some(cx.waker()));
        this.shared.wake_driver_if_needed(&core);
        r
    }

    /// Bytes written are already queued in the netstack: nothing to flush (as for a TcpStream).
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut core = this.shared.core.lock();
        let r = core.stream_shutdown_write(this.id);
        this.shared.wake_driver_if_needed(&core);
        Poll::Ready(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(dst: &str, len: usize) -> Transmit {
        Transmit {
            dst: dst.parse().expect("address"),
            payload: vec![0; len],
        }
    }

    #[test]
    fn gso_trains_are_equal_sized_datagrams_to_one_destination() {
        let a = "10.0.0.1:51820";
        let b = "10.0.0.2:51820";
        let out = vec![
            t(a, 1452),
            t(a, 1452),
            t(a, 600), // a shorter last segment ends the train
            t(a, 1452),
            t(b, 1452), // another destination starts a new one
            t(b, 1452),
            t(b, 1500), // a larger datagram cannot follow
        ];
        assert_eq!(gso_train_end(&out, 0, 64), 3);
        assert_eq!(gso_train_end(&out, 3, 64), 4);
        assert_eq!(gso_train_end(&out, 4, 64), 6);
        assert_eq!(gso_train_end(&out, 6, 64), 7);
        // Without GSO every datagram goes alone.
        assert_eq!(gso_train_end(&out, 0, 1), 1);
        // The byte cap: 64,000 / 1452 = 44 datagrams at most.
        let many: Vec<Transmit> = (0..100).map(|_| t(a, 1452)).collect();
        assert_eq!(gso_train_end(&many, 0, 64), 44);
    }
}
