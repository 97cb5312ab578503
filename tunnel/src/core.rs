//! The sans-IO tunnel core: peers (one boringtun [`Tunn`] each), cryptokey routing, and one
//! smoltcp netstack per peer. It never touches a socket or reads the clock: the caller passes
//! datagrams and the current time in, and takes datagrams ([`Core::poll_transmit`]), events
//! ([`Core::poll_event`]) and the next deadline ([`Core::poll_timeout`]) out.
//!
//! One netstack per peer (address `local_address/32`, medium IP) means an edge serving several
//! origins has several isolated stacks: a packet from one peer can only ever reach sockets of
//! that peer, so forwarding between peers is impossible by construction. Inside a netstack
//! every socket has a `SocketSet` of its own (`Sock`): the core demultiplexes inbound
//! packets by 4-tuple and polls only sockets with work, keeping their deadlines in an ordered set.
//!
//! boringtun reads its own monotonic clock inside `Tunn` for WireGuard's timers (rekey,
//! handshake retry, keepalive); those are second-granular protocol timers, so that is accepted:
//! everything this module schedules (TCP, timer ticks) runs on the time it is given.
//!
//! Why this file is longer than ~1,000 lines: `impl Core` is one state machine whose methods
//! keep shared invariants together (a socket's deadline entry, its place in the 4-tuple map and
//! its buffer accounting change in the same call), and reading them side by side is what keeps
//! those invariants checkable. The parts that stand alone live beside it (`core/ack_seq.rs`,
//! `core/tests.rs`); the smoltcp device glue and the socket pool are the next candidates to move.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpCidr, IpListenEndpoint};

use self::ack_seq::SendMax;
use self::ledger::{Charge, Ledger};
use crate::window::announced_receive_buffer;
use crate::{
    CachedPeer, PeerConfig, PeerStats, PublicKey, TunnelConfig, TunnelError, TunnelStats,
    MAX_STREAMS_PER_PEER,
};

/// How often boringtun's `update_timers` runs (WireGuard timers are second-granular).
const TIMER_TICK: Duration = Duration::from_millis(250);
/// A peer we keep alive (persistent keepalive with a known endpoint) that has sent nothing
/// authenticated for twice its keepalive interval plus this long is presumed to have lost our
/// session (it restarted: an edge redeployed, a process restarted) and gets a new handshake.
/// WireGuard itself only re-handshakes when data goes unanswered or the session ages out
/// (up to 3 minutes), and keepalives do not count as data, so an origin behind NAT would
/// otherwise stay cut off from a restarted edge until then.
const DEAD_PEER_GRACE: Duration = Duration::from_secs(5);
/// A stream ACKs every segment at once until its owner has read this much; after that ACKs
/// wait up to [`ACK_DELAY`] so they ride on the reply (Linux's quick-ACK start). Early on the
/// sender's congestion window (2 x 536 bytes in smoltcp) may hold less than two segments, and
/// a delayed ACK would stall it for the whole delay.
const QUICKACK_BYTES: usize = 16 * 1024;
/// How long an ACK may wait for data to ride on. A request/response exchange then costs two
/// datagrams instead of four (each a WireGuard seal/open, a syscall and a netstack pass); bulk
/// transfers still ACK every second full segment (smoltcp's immediate-ACK rule).
const ACK_DELAY: Duration = Duration::from_millis(5);
/// At most one handshake per peer per this interval answers data for a session we do not have
/// (after our restart the peer still sends on its old one): enough to reconnect at once, too few
/// to make the node a reflector for spoofed packets.
const UNKNOWN_SESSION_INTERVAL: Duration = Duration::from_secs(1);
/// How often the shared handshake rate limiter is reset.
const RATE_LIMIT_RESET: Duration = Duration::from_secs(1);
/// Handshake messages per second before cookie replies are required. Each initiation passes
/// the limiter twice (dispatch, then `Tunn::decapsulate`), so this admits about half as many.
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// A stream whose owner dropped it gets this long to finish its FIN exchange, then is reset.
const CLOSE_LINGER: Duration = Duration::from_secs(30);
/// Abort a connection when sent data stays unacknowledged this long.
const TCP_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keepalive on every established socket (also what lets `TCP_TIMEOUT` detect a dead peer).
const TCP_KEEPALIVE: Duration = Duration::from_secs(20);
/// A half-open inbound connection (SYN received, no ACK) is dropped after this long.
const SYN_RECEIVED_TIMEOUT: Duration = Duration::from_secs(10);
/// Ephemeral port range for outbound streams.
const EPHEMERAL_PORTS: std::ops::Range<u16> = 32768..61000;
/// Largest UDP payload boringtun may produce for one inner packet.
const WG_OVERHEAD: usize = 32;
/// Smallest destination buffer boringtun accepts (a handshake initiation).
const WG_MIN_BUF: usize = 148;

/// Identifies one stream: the peer's 24-bit index and the socket's number in that peer's
/// netstack (neither is reused while the core lives).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamId {
    peer: u32,
    sock: u64,
}

/// A datagram to send. Give `payload` back with [`Core::recycle`] once sent, so the core
/// reuses the allocation.
#[derive(Debug)]
pub struct Transmit {
    /// Destination UDP address.
    pub dst: SocketAddr,
    /// The WireGuard message.
    pub payload: Vec<u8>,
}

/// Why an outbound stream did not connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The peer answered with RST.
    Refused,
}

/// Something the caller should know about.
#[derive(Debug)]
pub enum Event {
    /// A remote peer opened a stream to one of the accepted ports. The stream is owned by the
    /// caller from now on: close or abort it.
    Accepted {
        /// The new stream.
        stream: StreamId,
        /// Which peer opened it.
        peer: PublicKey,
        /// Our address and the port it connected to.
        local: SocketAddrV4,
        /// The peer's inner address and port.
        remote: SocketAddrV4,
    },
    /// An outbound stream completed its TCP handshake.
    Connected(StreamId),
    /// An outbound stream failed.
    ConnectFailed(StreamId, ConnectFailure),
    /// A WireGuard handshake with this peer completed.
    HandshakeCompleted(PublicKey),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SockKind {
    /// Created for a SYN to an accepted port; not yet established.
    Listener,
    /// Outbound, SYN sent.
    Connecting,
    /// Established (either direction).
    Stream,
}

#[derive(Debug)]
struct SockMeta {
    kind: SockKind,
    /// A `TunnelStream` (or the caller) holds it: never reap.
    owned: bool,
    /// Our side called `shutdown_write`.
    write_closed: bool,
    /// The 4-tuple key in `Peer::tuples` (local port, remote address).
    tuple: (u16, SocketAddrV4),
    /// When it became unowned (for the linger deadline) or was created (listeners).
    since: Instant,
    /// Unowned and finishing its close: drained, reaped when done.
    closing: bool,
    /// Bytes the owner has read, counted until [`QUICKACK_BYTES`] (then ACKs are delayed).
    read: usize,
    /// Who the buffers are charged to, and their per-direction size.
    charge: Charge,
    size: usize,
    /// The send queue as last seen: it shrinks only when the peer acknowledges data.
    send_queue: usize,
    /// Last time the peer acknowledged data, or the send queue was empty (stall timeout).
    progress: Instant,
}

impl SockMeta {
    fn new(
        kind: SockKind,
        owned: bool,
        tuple: (u16, SocketAddrV4),
        charge: Charge,
        size: usize,
        now: Instant,
    ) -> Self {
        SockMeta {
            kind,
            owned,
            write_closed: false,
            tuple,
            since: now,
            closing: false,
            read: 0,
            charge,
            size,
            send_queue: 0,
            progress: now,
        }
    }
}

/// The in-memory device of one peer's netstack: inbound IP packets wait in `rx`; an outbound
/// packet is encapsulated straight into a datagram by the [`TxTok`].
struct NetDevice<'a> {
    rx: &'a mut VecDeque<Vec<u8>>,
    rx_spent: &'a mut Vec<Vec<u8>>,
    sink: Sink<'a>,
    mtu: usize,
}

struct Sink<'a> {
    tunn: &'a mut Tunn,
    send_max: &'a mut SendMax,
    /// Where an outgoing RST of the socket being polled must start (see [`Sock::peer_ack`]).
    rst_seq: Option<u32>,
    endpoint: Option<SocketAddr>,
    out: &'a mut VecDeque<Transmit>,
    pool: &'a mut Vec<Vec<u8>>,
    scratch: &'a mut Vec<u8>,
    counters: &'a mut Counters,
    peer_tx: &'a mut u64,
    blocked: &'a mut bool,
}

impl Sink<'_> {
    fn encapsulate(&mut self, len: usize) {
        let mut buf = self.pool.pop().unwrap_or_default();
        let need = (len + WG_OVERHEAD).max(WG_MIN_BUF);
        // boringtun writes every byte of the datagram it returns (and we truncate to it), so
        // a recycled buffer need not be zeroed again: only grow it when it is too short.
        if buf.len() < need {
            buf.resize(need, 0);
        }
        match self
            .tunn
            .encapsulate(&self.scratch[..len], &mut buf[..need])
        {
            TunnResult::WriteToNetwork(p) => {
                let n = p.len();
                buf.truncate(n);
                push_datagram(
                    self.out,
                    self.pool,
                    self.counters,
                    self.peer_tx,
                    self.endpoint,
                    buf,
                );
            }
            TunnResult::Done => {
                // Queued inside boringtun behind a handshake; flushed when it completes.
                *self.blocked = true;
                self.pool.push(buf);
            }
            TunnResult::Err(e) => {
                tracing::debug!(error = ?e, "encapsulate failed");
                self.pool.push(buf);
            }
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {
                self.pool.push(buf);
            }
        }
    }
}

fn push_datagram(
    out: &mut VecDeque<Transmit>,
    pool: &mut Vec<Vec<u8>>,
    counters: &mut Counters,
    peer_tx: &mut u64,
    endpoint: Option<SocketAddr>,
    buf: Vec<u8>,
) {
    match endpoint {
        Some(dst) => {
            counters.datagrams_tx += 1;
            counters.bytes_tx += buf.len() as u64;
            *peer_tx += buf.len() as u64;
            out.push_back(Transmit { dst, payload: buf });
        }
        // No endpoint yet: the peer has to contact us first.
        None => pool.push(buf),
    }
}

struct RxTok<'a> {
    buf: Vec<u8>,
    spent: &'a mut Vec<Vec<u8>>,
}

impl phy::RxToken for RxTok<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.buf);
        self.spent.push(self.buf);
        r
    }
}

struct TxTok<'a, 'b> {
    sink: &'a mut Sink<'b>,
}

impl phy::TxToken for TxTok<'_, '_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let scratch = &mut *self.sink.scratch;
        scratch.clear();
        scratch.resize(len, 0);
        let r = f(&mut scratch[..len]);
        self.sink
            .send_max
            .on_transmit(&mut scratch[..len], self.sink.rst_seq);
        self.sink.encapsulate(len);
        r
    }
}

fn capabilities(mtu: usize) -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ip;
    caps.max_transmission_unit = mtu;
    // WireGuard's AEAD already authenticates every inner packet end to end: skip verifying
    // IPv4/TCP checksums on receive, still compute them on send for stock peers.
    caps.checksum.ipv4 = Checksum::Tx;
    caps.checksum.tcp = Checksum::Tx;
    caps
}

impl<'d> phy::Device for NetDevice<'d> {
    type RxToken<'a>
        = RxTok<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxTok<'a, 'd>
    where
        Self: 'a;

    fn receive(
        &mut self,
        _ts: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let buf = self.rx.pop_front()?;
        Some((
            RxTok {
                buf,
                spent: self.rx_spent,
            },
            TxTok {
                sink: &mut self.sink,
            },
        ))
    }

    fn transmit(&mut self, _ts: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(TxTok {
            sink: &mut self.sink,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        capabilities(self.mtu)
    }
}

/// A device that only reports capabilities, for `Interface::new`.
struct CapsOnly(usize);

impl phy::Device for CapsOnly {
    type RxToken<'a> = RxTok<'a>;
    type TxToken<'a> = TxTok<'a, 'a>;
    fn receive(
        &mut self,
        _ts: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        None
    }
    fn transmit(&mut self, _ts: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        None
    }
    fn capabilities(&self) -> DeviceCapabilities {
        capabilities(self.0)
    }
}

#[derive(Debug, Default, Clone)]
struct Counters {
    handshakes_completed: u64,
    datagrams_rx: u64,
    datagrams_tx: u64,
    bytes_rx: u64,
    bytes_tx: u64,
    dropped_junk: u64,
    dropped_source: u64,
    refused_window: u64,
    refused_ports: u64,
    stalled_resets: u64,
    unknown_session_handshakes: u64,
}

/// One TCP socket of a peer's netstack, in a `SocketSet` of its own: smoltcp's `poll` visits
/// every socket of the set it is given (egress) and searches it for each packet (ingress), so
/// with one shared set every packet cost O(streams of the peer). The core instead routes each
/// inbound packet to its socket by 4-tuple and polls only sockets that have work.
struct Sock {
    set: SocketSet<'static>,
    handle: SocketHandle,
    meta: SockMeta,
    /// Inbound IP packets for this socket, waiting for its next poll.
    rx: VecDeque<Vec<u8>>,
    /// In `Peer::dirty`.
    queued: bool,
    /// This socket's entry in `Peer::timers` (at most one; it may be earlier than smoltcp
    /// needs, which costs one extra poll).
    timer: Option<Instant>,
    /// The acknowledgment number of the peer's last segment if that segment closed its
    /// window. Our RST must then start exactly there (its RCV.NXT), or a receiver with a zero
    /// window drops it: smoltcp would send it at the byte after its last window probe.
    zero_window_ack: Option<u32>,
}

impl Sock {
    fn tcp(&mut self) -> &mut tcp::Socket<'static> {
        self.set.get_mut::<tcp::Socket>(self.handle)
    }
}

struct Peer {
    index: u32,
    config: PeerConfig,
    tunn: Tunn,
    endpoint: Option<SocketAddr>,
    iface: Interface,
    socks: HashMap<u64, Sock>,
    next_sock: u64,
    /// (local port, remote) -> socket: demultiplexes inbound packets, and a retransmitted SYN
    /// does not spawn a second listener.
    tuples: HashMap<(u16, SocketAddrV4), u64>,
    /// Highest sequence number sent per flow (see [`ack_seq`]).
    send_max: SendMax,
    /// Sockets with work (packets, stream operations, a due timer) for the next poll.
    dirty: Vec<u64>,
    /// Socket deadlines (smoltcp timers, linger and SYN-received limits), earliest first; one
    /// entry per socket at most, removed with the socket.
    timers: BTreeSet<(Instant, u64)>,
    /// Inbound packets that belong to no socket: smoltcp answers them (RST) from an empty set.
    stray: VecDeque<Vec<u8>>,
    needs_poll: bool,
    /// boringtun queued packets behind a handshake.
    blocked: bool,
    /// Start a handshake at the next tick (persistent keepalive with a known endpoint).
    initiate: bool,
    /// When the peer last sent an authenticated message (or when it was added, or when we last
    /// started a handshake because it was silent).
    last_heard: Instant,
    /// When we last answered data for an unknown session with a handshake.
    last_unknown_session: Option<Instant>,
    owned: u64,
    tx_bytes: u64,
    rx_bytes: u64,
    /// Next ephemeral port offset for outbound streams.
    next_port: u16,
}

impl Peer {
    /// Queues a socket for the next poll of this peer (the peer itself is queued by
    /// [`Core::mark_dirty`]).
    fn mark_sock(&mut self, id: u64) {
        if let Some(s) = self.socks.get_mut(&id) {
            if !s.queued {
                s.queued = true;
                self.dirty.push(id);
            }
        }
    }

    /// Adds a socket (its own set) under a new number.
    fn add_sock(&mut self, socket: tcp::Socket<'static>, meta: SockMeta) -> u64 {
        let id = self.next_sock;
        self.next_sock += 1;
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(socket);
        self.tuples.insert(meta.tuple, id);
        self.socks.insert(
            id,
            Sock {
                set,
                handle,
                meta,
                rx: VecDeque::new(),
                queued: false,
                timer: None,
                zero_window_ack: None,
            },
        );
        self.mark_sock(id);
        id
    }

    /// Removes a socket, returning its metadata and the socket itself (for reuse; the caller
    /// releases its charge) and giving its queued packets back.
    fn remove_sock(
        &mut self,
        id: u64,
        pool: &mut Vec<Vec<u8>>,
    ) -> Option<(SockMeta, Option<tcp::Socket<'static>>)> {
        let mut sock = self.socks.remove(&id)?;
        if let Some(t) = sock.timer {
            self.timers.remove(&(t, id));
        }
        if self.tuples.get(&sock.meta.tuple) == Some(&id) {
            self.tuples.remove(&sock.meta.tuple);
            self.send_max.remove(&sock.meta.tuple);
        }
        pool.extend(sock.rx.drain(..));
        #[allow(irrefutable_let_patterns)] // only TCP sockets unless another crate adds more
        let socket = match sock.set.remove(sock.handle) {
            smoltcp::socket::Socket::Tcp(s) => Some(s),
            #[allow(unreachable_patterns)]
            _ => None,
        };
        Some((sock.meta, socket))
    }
}

/// The tunnel state machine. See the module docs.
pub struct Core {
    private: x25519::StaticSecret,
    public: x25519::PublicKey,
    public_key: PublicKey,
    rate_limiter: Arc<RateLimiter>,
    mtu: usize,
    ledger: Ledger,
    stall_timeout: Option<Duration>,
    accept_ports: HashSet<u16>,
    /// Peers remembered from an earlier run, by key, until the peer is added.
    remembered: HashMap<PublicKey, CachedPeer>,
    /// What [`Core::take_peer_cache`] last returned.
    last_cache: Vec<CachedPeer>,
    peers: HashMap<u32, Peer>,
    by_key: HashMap<PublicKey, u32>,
    next_index: u32,
    dirty: Vec<u32>,
    out: VecDeque<Transmit>,
    pool: Vec<Vec<u8>>,
    rx_spent: Vec<Vec<u8>>,
    scratch: Vec<u8>,
    decap: Vec<u8>,
    /// Polled with a peer's stray packets, so smoltcp answers them as "no such socket".
    empty_set: SocketSet<'static>,
    events: VecDeque<Event>,
    base: Instant,
    next_tick: Instant,
    next_rate_reset: Instant,
    counters: Counters,
    closed: bool,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("public_key", &self.public_key)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

fn closed_err() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the tunnel is shut down")
}

fn reset_err() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        "tunnel stream reset by the peer (or the peer was removed)",
    )
}

/// Validates a config the way [`Core::new`] and [`Core::set_peers`] need it.
pub(crate) fn validate(config: &TunnelConfig) -> Result<(), TunnelError> {
    if !(576..=65535 - WG_OVERHEAD as u32 as u16).contains(&config.mtu) {
        return Err(TunnelError::Config(format!(
            "mtu {} is out of range: use 576..=65503 (1420 for a 1500-byte path, 1280 if unsure)",
            config.mtu
        )));
    }
    config
        .window
        .validate()
        .map_err(|e| TunnelError::Config(e.to_string()))?;
    validate_peers(&config.peers)
}

/// Whether two peer configs describe the same addresses (so a key change is a rotation).
fn same_addresses(a: &PeerConfig, b: &PeerConfig) -> bool {
    let sorted = |c: &PeerConfig| {
        let mut v = c.allowed_ips.clone();
        v.sort_unstable();
        v
    };
    a.local_address == b.local_address && sorted(a) == sorted(b)
}

fn validate_peers(peers: &[PeerConfig]) -> Result<(), TunnelError> {
    let mut seen = HashSet::new();
    for p in peers {
        if !seen.insert(p.public_key) {
            return Err(TunnelError::Config(format!(
                "peer {} is listed twice: give each peer one entry",
                p.public_key
            )));
        }
    }
    Ok(())
}

impl Core {
    /// A core for `config` (its `listen` address is ignored: the core has no socket).
    pub fn new(config: &TunnelConfig, now: Instant) -> Result<Core, TunnelError> {
        validate(config)?;
        let private = config.private_key.secret().clone();
        let public = x25519::PublicKey::from(&private);
        let mut core = Core {
            rate_limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            public_key: PublicKey(public.to_bytes()),
            private,
            public,
            mtu: usize::from(config.mtu),
            ledger: Ledger::new(config.window.clone()),
            stall_timeout: config.stall_timeout,
            accept_ports: config.accept_ports.iter().copied().collect(),
            remembered: config
                .remembered
                .iter()
                .map(|p| (p.public_key, *p))
                .collect(),
            last_cache: Vec::new(),
            peers: HashMap::new(),
            by_key: HashMap::new(),
            next_index: rand::random::<u32>() & 0x00ff_ffff,
            dirty: Vec::new(),
            out: VecDeque::new(),
            pool: Vec::new(),
            rx_spent: Vec::new(),
            scratch: Vec::with_capacity(usize::from(config.mtu)),
            decap: vec![0; 65536 + WG_OVERHEAD],
            empty_set: SocketSet::new(Vec::new()),
            events: VecDeque::new(),
            base: now,
            next_tick: now,
            next_rate_reset: now + RATE_LIMIT_RESET,
            counters: Counters::default(),
            closed: false,
        };
        for p in &config.peers {
            core.add_peer(p.clone(), now);
        }
        Ok(core)
    }

    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    fn smol_time(&self, now: Instant) -> smoltcp::time::Instant {
        let d = now.saturating_duration_since(self.base);
        smoltcp::time::Instant::from_micros(d.as_micros() as i64)
    }

    /// A free 24-bit peer index: `wanted` (the one a remembered peer had) if it is free,
    /// otherwise the next one from a random start, as WireGuard asks.
    fn alloc_index(&mut self, wanted: Option<u32>) -> u32 {
        if let Some(i) = wanted {
            if i < 1 << 24 && !self.peers.contains_key(&i) {
                return i;
            }
        }
        loop {
            let i = self.next_index & 0x00ff_ffff;
            self.next_index = self.next_index.wrapping_add(1);
            if !self.peers.contains_key(&i) {
                return i;
            }
        }
    }

    fn new_tunn(&self, config: &PeerConfig, index: u32) -> Tunn {
        Tunn::new(
            self.private.clone(),
            x25519::PublicKey::from(config.public_key.0),
            None,
            config.persistent_keepalive,
            index,
            Some(self.rate_limiter.clone()),
        )
    }

    fn add_peer(&mut self, config: PeerConfig, now: Instant) {
        // A peer remembered from an earlier run keeps its index (so that packets of the
        // session it still has name it) and, without a configured endpoint, its last one.
        let remembered = self.remembered.remove(&config.public_key);
        let index = self.alloc_index(remembered.map(|r| r.index));
        let tunn = self.new_tunn(&config, index);
        let mut iface_config = IfaceConfig::new(HardwareAddress::Ip);
        iface_config.random_seed = rand::random();
        let mut iface = Interface::new(iface_config, &mut CapsOnly(self.mtu), self.smol_time(now));
        let addr = config.local_address;
        iface.update_ip_addrs(|a| {
            // Capacity is at least one address; a fresh interface has none.
            let _ = a.push(IpCidr::new(addr.into(), 32));
        });
        // Everything that is not our own /32 goes to the peer: medium IP has no neighbours,
        // the gateway only has to exist.
        let _ = iface.routes_mut().add_default_ipv4_route(addr);
        let restored = remembered
            .filter(|_| config.endpoint.is_none())
            .map(|r| r.endpoint);
        let endpoint = config.endpoint.or(restored);
        // Handshake at once toward a peer we keep alive, and toward a remembered endpoint:
        // the peer may be behind NAT, waiting on a session this process does not have.
        let initiate =
            endpoint.is_some() && (config.persistent_keepalive.is_some() || restored.is_some());
        if let Some(endpoint) = restored {
            tracing::debug!(peer = %config.public_key, %endpoint, "handshaking toward the remembered endpoint");
        }
        let peer = Peer {
            index,
            endpoint,
            tunn,
            iface,
            socks: HashMap::new(),
            next_sock: 0,
            tuples: HashMap::new(),
            send_max: SendMax::default(),
            dirty: Vec::new(),
            timers: BTreeSet::new(),
            stray: VecDeque::new(),
            needs_poll: false,
            blocked: false,
            initiate,
            last_heard: now,
            last_unknown_session: None,
            owned: 0,
            tx_bytes: 0,
            rx_bytes: 0,
            next_port: rand::random(),
            config,
        };
        if initiate {
            // Run the first tick at once so a NATed origin dials out immediately.
            self.next_tick = self.next_tick.min(now);
        }
        self.by_key.insert(peer.config.public_key, index);
        self.peers.insert(index, peer);
    }

    fn remove_peer(&mut self, index: u32, now: Instant) {
        if let Some(mut peer) = self.peers.remove(&index) {
            self.by_key.remove(&peer.config.public_key);
            // Wakes every waiter; their next call finds the peer gone (ConnectionReset).
            for sock in peer.socks.values_mut() {
                sock.tcp().abort();
                self.ledger
                    .release(sock.meta.charge, sock.meta.size, None, now);
            }
            self.dirty.retain(|i| *i != index);
        }
    }

    /// Replaces this node's static private key in place (key rotation). Every peer gets a new
    /// WireGuard session state ([`Tunn`]) for the new key and a new handshake starts at once
    /// toward every peer whose endpoint is known; netstacks and streams are kept, so TCP
    /// retransmits across the gap until the peers know the new public key (see
    /// [`Core::set_peers`] for their side). Datagrams of the old sessions are dropped from
    /// now on. Setting the current key again changes nothing.
    pub fn set_private_key(&mut self, key: &crate::PrivateKey, now: Instant) {
        let private = key.secret().clone();
        let public = x25519::PublicKey::from(&private);
        if public.as_bytes() == self.public.as_bytes() {
            return;
        }
        // Cookie replies and mac1 checks are keyed by our public key: a new limiter.
        self.rate_limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
        self.private = private;
        self.public = public;
        self.public_key = PublicKey(public.to_bytes());
        let mut indices: Vec<u32> = self.peers.keys().copied().collect();
        indices.sort_unstable();
        for index in indices {
            self.restart_session(index, now);
        }
    }

    /// Gives a peer a fresh [`Tunn`] (current private key, current peer config) and starts a
    /// handshake at the next tick when its endpoint is known. Its netstack, sockets and
    /// learned endpoint stay; packets queued in the old `Tunn` are dropped (TCP resends them).
    fn restart_session(&mut self, index: u32, now: Instant) {
        let Some(peer) = self.peers.get(&index) else {
            return;
        };
        let tunn = self.new_tunn(&peer.config, index);
        let Some(peer) = self.peers.get_mut(&index) else {
            return;
        };
        peer.tunn = tunn;
        peer.blocked = false;
        if peer.endpoint.is_some() {
            peer.initiate = true;
            self.next_tick = self.next_tick.min(now);
        }
    }

    /// Replaces the peer set. Unchanged peers keep sessions and streams; removed peers'
    /// streams are reset; a changed endpoint or allowed IPs apply at once; a changed
    /// `local_address` recreates the peer (its streams are reset); a changed keepalive
    /// restarts the WireGuard session but keeps the streams.
    ///
    /// Key rotation: a new public key whose `local_address` and `allowed_ips` equal those of
    /// a peer that is no longer listed is that peer with a rotated key. It is re-keyed in
    /// place: a new WireGuard session for the new key starts at once, its netstack and
    /// streams stay (the streams' [`StreamId`]s remain valid).
    pub fn set_peers(&mut self, peers: Vec<PeerConfig>, now: Instant) -> Result<(), TunnelError> {
        validate_peers(&peers)?;
        let wanted: HashSet<PublicKey> = peers.iter().map(|p| p.public_key).collect();
        let mut gone: Vec<u32> = self
            .peers
            .values()
            .filter(|p| !wanted.contains(&p.config.public_key))
            .map(|p| p.index)
            .collect();
        gone.sort_unstable();
        // Pair each new key with a departing peer that has the same addresses.
        let mut rekeyed: HashMap<PublicKey, u32> = HashMap::new();
        for config in &peers {
            if self.by_key.contains_key(&config.public_key) {
                continue;
            }
            let found = gone.iter().position(|i| {
                self.peers
                    .get(i)
                    .is_some_and(|p| same_addresses(&p.config, config))
            });
            if let Some(pos) = found {
                rekeyed.insert(config.public_key, gone.remove(pos));
            }
        }
        for i in gone {
            self.remove_peer(i, now);
        }
        for config in peers {
            if let Some(index) = rekeyed.remove(&config.public_key) {
                let Some(peer) = self.peers.get_mut(&index) else {
                    continue;
                };
                tracing::debug!(old = %peer.config.public_key, new = %config.public_key, "peer re-keyed in place");
                self.by_key.remove(&peer.config.public_key);
                self.by_key.insert(config.public_key, index);
                if config.endpoint.is_some() && config.endpoint != peer.config.endpoint {
                    peer.endpoint = config.endpoint;
                }
                peer.config = config;
                self.restart_session(index, now);
                continue;
            }
            let Some(&index) = self.by_key.get(&config.public_key) else {
                self.add_peer(config, now);
                continue;
            };
            let Some(peer) = self.peers.get(&index) else {
                continue;
            };
            if peer.config.local_address != config.local_address {
                self.remove_peer(index, now);
                self.add_peer(config, now);
                continue;
            }
            let restart = peer.config.persistent_keepalive != config.persistent_keepalive;
            let Some(peer) = self.peers.get_mut(&index) else {
                continue;
            };
            if config.endpoint != peer.config.endpoint && config.endpoint.is_some() {
                // A kept-alive peer we had nowhere to send to: handshake now, as `add_peer`
                // does, not at the first keepalive (an origin told a new edge's address
                // after the edge was listed would otherwise wait a whole keepalive interval).
                if peer.endpoint.is_none() && config.persistent_keepalive.is_some() {
                    peer.initiate = true;
                    self.next_tick = self.next_tick.min(now);
                }
                peer.endpoint = config.endpoint;
            }
            peer.config = config;
            if restart {
                self.restart_session(index, now);
            }
        }
        Ok(())
    }

    /// Replaces the set of ports on which inbound streams are accepted. Established streams
    /// are not affected.
    pub fn set_accept_ports(&mut self, ports: Vec<u16>) {
        self.accept_ports = ports.into_iter().collect();
    }

    fn mark_dirty(dirty: &mut Vec<u32>, peer: &mut Peer) {
        if !peer.needs_poll {
            peer.needs_poll = true;
            dirty.push(peer.index);
        }
    }

    /// Feeds one received UDP datagram.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.counters.datagrams_rx += 1;
        self.counters.bytes_rx += data.len() as u64;
        if self.closed || data.len() < 4 {
            self.counters.dropped_junk += 1;
            return;
        }
        let msg_type = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let index = match msg_type {
            1 => {
                let mut cookie = [0u8; 64];
                match self
                    .rate_limiter
                    .verify_packet(Some(from.ip()), data, &mut cookie)
                {
                    Ok(Packet::HandshakeInit(init)) => {
                        match parse_handshake_anon(&self.private, &self.public, &init) {
                            Ok(half) => self.by_key.get(&PublicKey(half.peer_static_public)),
                            Err(_) => None,
                        }
                    }
                    Err(TunnResult::WriteToNetwork(reply)) => {
                        // Under load: the initiator must prove it owns `from` first.
                        let mut buf = self.pool.pop().unwrap_or_default();
                        buf.clear();
                        buf.extend_from_slice(reply);
                        let mut sink = 0;
                        push_datagram(
                            &mut self.out,
                            &mut self.pool,
                            &mut self.counters,
                            &mut sink,
                            Some(from),
                            buf,
                        );
                        return;
                    }
                    _ => None,
                }
            }
            2 if data.len() >= 12 => self.by_key_index(&data[8..12]),
            3 | 4 if data.len() >= 8 => self.by_key_index(&data[4..8]),
            _ => None,
        };
        let Some(&index) = index else {
            self.counters.dropped_junk += 1;
            return;
        };
        self.decapsulate(now, index, msg_type, from, data);
    }

    fn by_key_index(&self, idx: &[u8]) -> Option<&u32> {
        let receiver = u32::from_le_bytes([idx[0], idx[1], idx[2], idx[3]]);
        let peer = receiver >> 8;
        self.peers.get_key_value(&peer).map(|(k, _)| k)
    }

    fn decapsulate(
        &mut self,
        now: Instant,
        index: u32,
        msg_type: u32,
        from: SocketAddr,
        data: &[u8],
    ) {
        let Some(peer) = self.peers.get_mut(&index) else {
            return;
        };
        let mut flush = peer.blocked;
        match peer
            .tunn
            .decapsulate(Some(from.ip()), data, &mut self.decap)
        {
            TunnResult::Err(e) => {
                if !matches!(e, WireGuardError::DuplicateCounter) {
                    tracing::trace!(error = ?e, "dropping datagram");
                }
                self.counters.dropped_junk += 1;
                // Data for a session we do not have, from a peer we have no session with: we
                // restarted (or lost the session) and the peer still sends on its old one.
                // Answer with a handshake toward the packet's source, as it may be behind NAT
                // where nothing else reaches it. The endpoint moves only once the peer answers
                // (authenticated); at most one such handshake per peer per second.
                let lost = msg_type == 4
                    && matches!(
                        e,
                        WireGuardError::NoCurrentSession | WireGuardError::WrongIndex
                    )
                    && peer.tunn.time_since_last_handshake().is_none()
                    && peer.last_unknown_session.is_none_or(|t| {
                        now.saturating_duration_since(t) >= UNKNOWN_SESSION_INTERVAL
                    });
                if lost {
                    peer.last_unknown_session = Some(now);
                    // A handshake already under way toward another address is restarted
                    // toward this one.
                    let force = peer.endpoint != Some(from);
                    if let TunnResult::WriteToNetwork(p) = peer
                        .tunn
                        .format_handshake_initiation(&mut self.decap, force)
                    {
                        tracing::debug!(peer = %peer.config.public_key, %from, "data for an unknown session: handshaking toward its source");
                        self.counters.unknown_session_handshakes += 1;
                        let mut buf = self.pool.pop().unwrap_or_default();
                        buf.clear();
                        buf.extend_from_slice(p);
                        push_datagram(
                            &mut self.out,
                            &mut self.pool,
                            &mut self.counters,
                            &mut peer.tx_bytes,
                            Some(from),
                            buf,
                        );
                    }
                }
                return;
            }
            TunnResult::WriteToNetwork(p) => {
                // A cookie reply (type 3) means the message was not processed: under load the
                // initiator must retry with a cookie. Anything else answers an authenticated
                // handshake message: roam to its source.
                let cookie = p.first() == Some(&3);
                if !cookie {
                    peer.last_heard = now;
                    peer.endpoint = Some(from);
                    if msg_type == 1 || msg_type == 2 {
                        self.counters.handshakes_completed += 1;
                        self.events
                            .push_back(Event::HandshakeCompleted(peer.config.public_key));
                    }
                }
                let mut buf = self.pool.pop().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(p);
                push_datagram(
                    &mut self.out,
                    &mut self.pool,
                    &mut self.counters,
                    &mut peer.tx_bytes,
                    Some(from),
                    buf,
                );
                flush = true;
            }
            TunnResult::Done => {
                // A keepalive or a handshake response (no cookie reply reaches here).
                if msg_type == 4 || msg_type == 2 {
                    peer.last_heard = now;
                }
                if msg_type == 4 {
                    peer.endpoint = Some(from);
                }
            }
            TunnResult::WriteToTunnelV4(packet, src) => {
                peer.last_heard = now;
                peer.endpoint = Some(from);
                peer.rx_bytes += data.len() as u64;
                let allowed = peer.config.allowed_ips.iter().any(|n| n.contains(&src));
                let dst_ok =
                    packet.len() >= 20 && packet[16..20] == peer.config.local_address.octets();
                if !allowed || !dst_ok {
                    self.counters.dropped_source += 1;
                } else {
                    Self::prepare_syn(
                        peer,
                        packet,
                        &self.accept_ports,
                        &mut self.ledger,
                        &mut self.counters,
                        &mut self.pool,
                        now,
                    );
                    let mut buf = self.pool.pop().unwrap_or_default();
                    buf.clear();
                    buf.extend_from_slice(packet);
                    match inbound_flow(packet).and_then(|f| peer.tuples.get(&f).copied()) {
                        Some(id) => {
                            if let Some(sock) = peer.socks.get_mut(&id) {
                                sock.zero_window_ack = zero_window_ack(packet);
                                sock.rx.push_back(buf);
                            }
                            peer.mark_sock(id);
                        }
                        None => peer.stray.push_back(buf),
                    }
                    Self::mark_dirty(&mut self.dirty, peer);
                }
            }
            TunnResult::WriteToTunnelV6(..) => {
                peer.last_heard = now;
                peer.endpoint = Some(from);
                self.counters.dropped_source += 1;
            }
        }
        if flush {
            peer.blocked = false;
            Self::flush_queued(
                peer,
                &mut self.decap,
                &mut self.out,
                &mut self.pool,
                &mut self.counters,
            );
        }
    }

    /// Sends what boringtun queued behind a handshake. Must run after every `WriteToNetwork`.
    fn flush_queued(
        peer: &mut Peer,
        decap: &mut [u8],
        out: &mut VecDeque<Transmit>,
        pool: &mut Vec<Vec<u8>>,
        counters: &mut Counters,
    ) {
        // Bounded: boringtun's queue holds at most 256 packets.
        for _ in 0..1024 {
            match peer.tunn.decapsulate(None, &[], decap) {
                TunnResult::WriteToNetwork(p) => {
                    let mut buf = pool.pop().unwrap_or_default();
                    buf.clear();
                    buf.extend_from_slice(p);
                    push_datagram(out, pool, counters, &mut peer.tx_bytes, peer.endpoint, buf);
                }
                _ => break,
            }
        }
    }

    /// Before the netstack sees a SYN for an accepted port, make a socket listen for it, so
    /// smoltcp answers SYN-ACK instead of RST. Its buffers are sized from the receive buffer
    /// the SYN announces (see [`crate::window`]) and charged to the peer. A SYN to a port that
    /// is not accepted, or one the window budget has no room for, is left to smoltcp, which
    /// answers RST; both are counted.
    fn prepare_syn(
        peer: &mut Peer,
        packet: &[u8],
        accept_ports: &HashSet<u16>,
        ledger: &mut Ledger,
        counters: &mut Counters,
        pool: &mut Vec<Vec<u8>>,
        now: Instant,
    ) {
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        if packet[9] != 6 || ihl < 20 || packet.len() < ihl + 14 {
            return;
        }
        // Fragments never carry a SYN we could handle.
        let frag = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff;
        let tcp_hdr = &packet[ihl..];
        let flags = tcp_hdr[13];
        if frag != 0 || flags & 0x12 != 0x02 || flags & 0x04 != 0 {
            return;
        }
        let src_port = u16::from_be_bytes([tcp_hdr[0], tcp_hdr[1]]);
        let dst_port = u16::from_be_bytes([tcp_hdr[2], tcp_hdr[3]]);
        let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
        let key = (dst_port, SocketAddrV4::new(src, src_port));
        if !accept_ports.contains(&dst_port) {
            // Nothing listens there: smoltcp answers RST. The origin reports these as
            // unrouted streams.
            counters.refused_ports += 1;
            return;
        }
        if let Some(&old) = peer.tuples.get(&key) {
            // A new SYN on the 4-tuple of a socket that is only finishing its close (as
            // Linux does for TIME-WAIT): drop the old one, accept the new connection.
            let finished = peer.socks.get_mut(&old).is_some_and(|s| {
                !s.meta.owned
                    && matches!(s.tcp().state(), tcp::State::TimeWait | tcp::State::Closed)
            });
            if !finished {
                return;
            }
            if let Some((meta, socket)) = peer.remove_sock(old, pool) {
                ledger.release(meta.charge, meta.size, socket, now);
            }
        }
        if peer.socks.len() >= MAX_STREAMS_PER_PEER {
            return;
        }
        let max = ledger.settings().max;
        let announced = announced_receive_buffer(tcp_hdr).unwrap_or(max);
        let want = ledger.settings().size_at_most(announced.min(max));
        let charge = Charge::Peer(peer.index);
        let Some((size, mut socket)) = ledger.open(charge, want) else {
            counters.refused_window += 1;
            return;
        };
        configure(&mut socket);
        socket.set_timeout(Some(smoltcp::time::Duration::from_secs(
            SYN_RECEIVED_TIMEOUT.as_secs(),
        )));
        if socket
            .listen(IpListenEndpoint {
                addr: Some(peer.config.local_address.into()),
                port: dst_port,
            })
            .is_err()
        {
            ledger.release(charge, size, Some(socket), now);
            return;
        }
        peer.add_sock(
            socket,
            SockMeta::new(SockKind::Listener, false, key, charge, size, now),
        );
    }

    /// Processes timers and polls every netstack that has work. Call it after feeding a batch
    /// of datagrams, after stream operations, and when [`Core::poll_timeout`] is reached.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if now >= self.next_rate_reset {
            self.rate_limiter.reset_count();
            self.next_rate_reset = now + RATE_LIMIT_RESET;
        }
        if now >= self.next_tick {
            self.next_tick = now + TIMER_TICK;
            self.tick_wireguard(now);
            self.ledger.expire_spares(now);
        }
        for peer in self.peers.values_mut() {
            if peer.timers.first().is_some_and(|(t, _)| *t <= now) {
                Self::mark_dirty(&mut self.dirty, peer);
            }
        }
        // Polling may dirty a peer again (abort in the linger check): bounded rounds.
        for _ in 0..2 {
            if self.dirty.is_empty() {
                break;
            }
            let dirty = std::mem::take(&mut self.dirty);
            for &index in &dirty {
                self.poll_peer(index, now);
            }
            let mut d = dirty;
            d.clear();
            if self.dirty.is_empty() {
                self.dirty = d;
            }
        }
    }

    fn tick_wireguard(&mut self, now: Instant) {
        for peer in self.peers.values_mut() {
            let mut out = |peer: &mut Peer, r: TunnResult<'_>| {
                if let TunnResult::WriteToNetwork(p) = r {
                    let mut buf = self.pool.pop().unwrap_or_default();
                    buf.clear();
                    buf.extend_from_slice(p);
                    push_datagram(
                        &mut self.out,
                        &mut self.pool,
                        &mut self.counters,
                        &mut peer.tx_bytes,
                        peer.endpoint,
                        buf,
                    );
                }
            };
            if let (Some(keepalive), Some(_)) = (peer.config.persistent_keepalive, peer.endpoint) {
                let silence = Duration::from_secs(2 * u64::from(keepalive)) + DEAD_PEER_GRACE;
                if keepalive > 0 && now.saturating_duration_since(peer.last_heard) > silence {
                    tracing::debug!(peer = ?peer.config.public_key, "peer silent, handshaking again");
                    peer.last_heard = now;
                    peer.initiate = true;
                }
            }
            if std::mem::take(&mut peer.initiate) {
                let r = peer
                    .tunn
                    .format_handshake_initiation(&mut self.decap, false);
                out(peer, r);
            }
            match peer.tunn.update_timers(&mut self.decap) {
                // The session is gone; streams that still exist need a new one.
                TunnResult::Err(WireGuardError::ConnectionExpired)
                    if peer.owned > 0 && peer.endpoint.is_some() =>
                {
                    let r = peer
                        .tunn
                        .format_handshake_initiation(&mut self.decap, false);
                    out(peer, r);
                }
                r => out(peer, r),
            }
        }
    }

    fn poll_peer(&mut self, index: u32, now: Instant) {
        let ts = self.smol_time(now);
        let Some(peer) = self.peers.get_mut(&index) else {
            return;
        };
        peer.needs_poll = false;
        // Due deadlines queue their sockets.
        while let Some(&(t, id)) = peer.timers.first() {
            if t > now {
                break;
            }
            peer.timers.pop_first();
            if let Some(s) = peer.socks.get_mut(&id) {
                s.timer = None;
            }
            peer.mark_sock(id);
        }
        if !peer.stray.is_empty() {
            let mut dev = NetDevice {
                rx: &mut peer.stray,
                rx_spent: &mut self.rx_spent,
                mtu: self.mtu,
                sink: Sink {
                    tunn: &mut peer.tunn,
                    send_max: &mut peer.send_max,
                    rst_seq: None,
                    endpoint: peer.endpoint,
                    out: &mut self.out,
                    pool: &mut self.pool,
                    scratch: &mut self.scratch,
                    counters: &mut self.counters,
                    peer_tx: &mut peer.tx_bytes,
                    blocked: &mut peer.blocked,
                },
            };
            peer.iface.poll(ts, &mut dev, &mut self.empty_set);
        }

        let mut dirty = std::mem::take(&mut peer.dirty);
        for &id in &dirty {
            let Some(sock) = peer.socks.get_mut(&id) else {
                continue;
            };
            sock.queued = false;
            let mut dev = NetDevice {
                rx: &mut sock.rx,
                rx_spent: &mut self.rx_spent,
                mtu: self.mtu,
                sink: Sink {
                    tunn: &mut peer.tunn,
                    send_max: &mut peer.send_max,
                    rst_seq: sock.zero_window_ack,
                    endpoint: peer.endpoint,
                    out: &mut self.out,
                    pool: &mut self.pool,
                    scratch: &mut self.scratch,
                    counters: &mut self.counters,
                    peer_tx: &mut peer.tx_bytes,
                    blocked: &mut peer.blocked,
                },
            };
            peer.iface.poll(ts, &mut dev, &mut sock.set);
            let stream = StreamId {
                peer: index,
                sock: id,
            };
            let key = peer.config.public_key;
            let polled = after_poll(
                sock,
                stream,
                key,
                now,
                self.stall_timeout,
                &mut self.events,
                &mut self.counters,
                &mut peer.owned,
            );
            match polled {
                AfterPoll::Reap => {
                    if let Some((meta, socket)) = peer.remove_sock(id, &mut self.pool) {
                        self.ledger.release(meta.charge, meta.size, socket, now);
                    }
                    continue;
                }
                AfterPoll::Again => peer.mark_sock(id),
                AfterPoll::Keep => {}
            }
            let Some(sock) = peer.socks.get_mut(&id) else {
                continue;
            };
            // Its next deadline: smoltcp's timers, and our own limits for half-open and
            // closing sockets.
            let mut want = peer
                .iface
                .poll_at(ts, &sock.set)
                .map(|t| self.base + Duration::from_micros(t.total_micros().max(0) as u64));
            let limit = if sock.meta.closing {
                Some(sock.meta.since + CLOSE_LINGER)
            } else if sock.meta.kind == SockKind::Listener {
                Some(sock.meta.since + SYN_RECEIVED_TIMEOUT)
            } else if sock.meta.owned && sock.meta.send_queue > 0 {
                self.stall_timeout.map(|t| sock.meta.progress + t)
            } else {
                None
            };
            if let Some(l) = limit {
                want = Some(want.map_or(l, |w| w.min(l)));
            }
            // A later deadline keeps the earlier entry (one spurious poll, then it moves): most
            // polls push smoltcp's keep-alive time out, and this saves re-sorting each time.
            if let Some(w) = want {
                if sock.timer.is_none_or(|cur| w < cur) {
                    if let Some(cur) = sock.timer.replace(w) {
                        peer.timers.remove(&(cur, id));
                    }
                    peer.timers.insert((w, id));
                }
            }
        }
        self.pool.append(&mut self.rx_spent);
        dirty.clear();
        if peer.dirty.is_empty() {
            peer.dirty = dirty;
        } else {
            Self::mark_dirty(&mut self.dirty, peer);
        }
    }

    /// The earliest time [`Core::handle_timeout`] must run (a TCP timer, or the next WireGuard
    /// timer tick). `None` after shutdown. A past instant means "now".
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let mut t = self.next_tick;
        for peer in self.peers.values() {
            if let Some((p, _)) = peer.timers.first() {
                t = t.min(*p);
            }
        }
        if !self.dirty.is_empty() {
            t = self.base;
        }
        Some(t)
    }

    /// True when stream operations left work that needs [`Core::handle_timeout`].
    pub fn has_pending_work(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// Number of datagrams waiting in [`Core::poll_transmit`].
    pub fn transmits_pending(&self) -> usize {
        self.out.len()
    }

    /// Returns a sent datagram's buffer for reuse.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < 4096 {
            self.pool.push(buf);
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Opens a stream to `dst` through `peer`, returning it and its local address. Completion is reported by [`Event::Connected`]
    /// / [`Event::ConnectFailed`] and by [`Core::connect_state`].
    pub fn connect(
        &mut self,
        now: Instant,
        peer_key: &PublicKey,
        dst: SocketAddrV4,
    ) -> Result<(StreamId, SocketAddrV4), TunnelError> {
        self.connect_for(now, peer_key, dst, None)
    }

    /// [`Core::connect`] for a client: the stream's buffers are charged to `client` (an opaque
    /// key, e.g. the client's masked address) and sized from its share of the window budget;
    /// without a client they are charged to the peer. Fails with
    /// [`TunnelError::NoWindowMemory`] when the budget has no room even for the smallest
    /// buffers.
    pub fn connect_for(
        &mut self,
        now: Instant,
        peer_key: &PublicKey,
        dst: SocketAddrV4,
        client: Option<u128>,
    ) -> Result<(StreamId, SocketAddrV4), TunnelError> {
        if self.closed {
            return Err(TunnelError::Closed);
        }
        let index = *self
            .by_key
            .get(peer_key)
            .ok_or(TunnelError::UnknownPeer(*peer_key))?;
        let Some(peer) = self.peers.get_mut(&index) else {
            return Err(TunnelError::UnknownPeer(*peer_key));
        };
        if !peer.config.allowed_ips.iter().any(|n| n.contains(dst.ip())) {
            return Err(TunnelError::NotAllowed {
                peer: *peer_key,
                dst: *dst.ip(),
            });
        }
        if peer.socks.len() >= MAX_STREAMS_PER_PEER {
            return Err(TunnelError::TooManyStreams(*peer_key));
        }
        // Sequential from a random start, as Linux does: a port comes back only after the
        // whole range was used, long after the remote side reaped the old connection.
        let mut port = None;
        let range = EPHEMERAL_PORTS.end - EPHEMERAL_PORTS.start;
        for _ in 0..range {
            let p = EPHEMERAL_PORTS.start + peer.next_port % range;
            peer.next_port = peer.next_port.wrapping_add(1);
            if !peer.tuples.contains_key(&(p, dst)) {
                port = Some(p);
                break;
            }
        }
        let port = port.ok_or(TunnelError::NoFreePort(dst))?;
        let charge = client.map_or(Charge::Peer(index), Charge::Client);
        let max = self.ledger.settings().max;
        let Some((size, mut socket)) = self.ledger.open(charge, max) else {
            self.counters.refused_window += 1;
            return Err(TunnelError::NoWindowMemory);
        };
        configure(&mut socket);
        let local = SocketAddrV4::new(peer.config.local_address, port);
        if let Err(e) = socket.connect(peer.iface.context(), dst, local) {
            self.ledger.release(charge, size, Some(socket), now);
            return Err(TunnelError::Io(io::Error::other(format!(
                "tcp connect: {e}"
            ))));
        }
        let sock = peer.add_sock(
            socket,
            SockMeta::new(SockKind::Connecting, true, (port, dst), charge, size, now),
        );
        peer.owned += 1;
        Self::mark_dirty(&mut self.dirty, peer);
        Ok((StreamId { peer: index, sock }, local))
    }

    /// An owned stream's socket, with what marking it for a poll needs.
    fn stream(&mut self, id: StreamId) -> io::Result<StreamRef<'_>> {
        if self.closed {
            return Err(closed_err());
        }
        let peer = self.peers.get_mut(&id.peer).ok_or_else(reset_err)?;
        let Peer {
            socks,
            owned,
            dirty,
            needs_poll,
            index,
            ..
        } = peer;
        match socks.get_mut(&id.sock) {
            Some(sock) if sock.meta.owned => Ok(StreamRef {
                id: id.sock,
                sock,
                owned,
                peer_dirty: dirty,
                needs_poll,
                index: *index,
                core_dirty: &mut self.dirty,
            }),
            _ => Err(reset_err()),
        }
    }

    /// Where an outbound stream stands: `Ready(Ok)` once established, `Ready(Err(Refused))`
    /// after a RST, `Pending` (with `waker` registered) while the SYN is out.
    pub fn connect_state(
        &mut self,
        id: StreamId,
        waker: Option<&Waker>,
    ) -> Poll<Result<(), TunnelError>> {
        if self.closed {
            return Poll::Ready(Err(TunnelError::Closed));
        }
        let stream = match self.stream(id) {
            Ok(s) => s,
            Err(_) => return Poll::Ready(Err(TunnelError::Refused)),
        };
        let sock = stream.sock.tcp();
        match sock.state() {
            tcp::State::SynSent | tcp::State::SynReceived => {
                if let Some(w) = waker {
                    sock.register_send_waker(w);
                }
                Poll::Pending
            }
            tcp::State::Closed | tcp::State::Listen => Poll::Ready(Err(TunnelError::Refused)),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// Reads received bytes. `Ready(Ok(0))` is end of stream (the peer's FIN); a reset is
    /// `ConnectionReset`. `Pending` registers `waker`.
    pub fn stream_recv(
        &mut self,
        id: StreamId,
        buf: &mut [u8],
        waker: Option<&Waker>,
    ) -> Poll<io::Result<usize>> {
        let mut at = 0;
        self.stream_recv_with(id, buf.len(), waker, |chunk| {
            buf[at..at + chunk.len()].copy_from_slice(chunk);
            at += chunk.len();
        })
    }

    /// [`Core::stream_recv`] that hands up to `max` bytes to `sink` straight from the socket
    /// buffer (in one or two chunks), so the caller need not zero a destination first.
    pub fn stream_recv_with(
        &mut self,
        id: StreamId,
        max: usize,
        waker: Option<&Waker>,
        mut sink: impl FnMut(&[u8]),
    ) -> Poll<io::Result<usize>> {
        let mut stream = match self.stream(id) {
            Ok(s) => s,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let Sock {
            set, handle, meta, ..
        } = &mut *stream.sock;
        let sock = set.get_mut::<tcp::Socket>(*handle);
        let queued = sock.recv_queue();
        let capacity = sock.recv_capacity();
        let mut total = 0;
        // The ring buffer yields at most two contiguous chunks.
        for _ in 0..2 {
            let r = sock.recv(|b| {
                let n = b.len().min(max - total);
                sink(&b[..n]);
                (n, n)
            });
            match r {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    if total == max {
                        break;
                    }
                }
                Err(_) if total > 0 => break,
                Err(tcp::RecvError::Finished) => return Poll::Ready(Ok(0)),
                Err(tcp::RecvError::InvalidState) => {
                    return match sock.state() {
                        tcp::State::SynSent | tcp::State::SynReceived => {
                            if let Some(w) = waker {
                                sock.register_recv_waker(w);
                            }
                            Poll::Pending
                        }
                        _ => Poll::Ready(Err(reset_err())),
                    };
                }
            }
        }
        if total == 0 && max > 0 {
            if let Some(w) = waker {
                sock.register_recv_waker(w);
            }
            return Poll::Pending;
        }
        if meta.read < QUICKACK_BYTES {
            meta.read += total;
            if meta.read >= QUICKACK_BYTES {
                sock.set_ack_delay(Some(smol_dur(ACK_DELAY)));
            }
        }
        // Advertise the reopened window now if it had shrunk to half or less; otherwise it
        // goes out with the next ACK anyway.
        if queued * 2 >= capacity {
            stream.touch();
        }
        Poll::Ready(Ok(total))
    }

    /// Queues bytes to send; `Pending` (with `waker` registered) when the send buffer is full.
    pub fn stream_send(
        &mut self,
        id: StreamId,
        data: &[u8],
        waker: Option<&Waker>,
    ) -> Poll<io::Result<usize>> {
        let mut stream = match self.stream(id) {
            Ok(s) => s,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let write_closed = stream.sock.meta.write_closed;
        if write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "tunnel stream write half already shut down",
            )));
        }
        let Sock {
            set, handle, meta, ..
        } = &mut *stream.sock;
        let sock = set.get_mut::<tcp::Socket>(*handle);
        match sock.send_slice(data) {
            Ok(0) if !data.is_empty() => {
                if let Some(w) = waker {
                    sock.register_send_waker(w);
                }
                Poll::Pending
            }
            Ok(n) => {
                // The stall clock compares the queue with this; a queue that was empty stays
                // 0 here so that the next poll starts the clock afresh.
                if meta.send_queue > 0 {
                    meta.send_queue = sock.send_queue();
                }
                stream.touch();
                Poll::Ready(Ok(n))
            }
            Err(tcp::SendError::InvalidState) => match sock.state() {
                tcp::State::SynSent | tcp::State::SynReceived => {
                    if let Some(w) = waker {
                        sock.register_send_waker(w);
                    }
                    Poll::Pending
                }
                tcp::State::Closed => Poll::Ready(Err(reset_err())),
                _ => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "tunnel stream can no longer send",
                ))),
            },
        }
    }

    /// `Ready` once everything queued has been acknowledged by the peer (or the stream is gone).
    pub fn stream_flushed(&mut self, id: StreamId, waker: Option<&Waker>) -> Poll<io::Result<()>> {
        let stream = match self.stream(id) {
            Ok(s) => s,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let sock = stream.sock.tcp();
        if sock.send_queue() == 0 || !sock.is_active() {
            return Poll::Ready(Ok(()));
        }
        if let Some(w) = waker {
            sock.register_send_waker(w);
        }
        Poll::Pending
    }

    /// Half-close: sends FIN after the queued data; reading continues.
    pub fn stream_shutdown_write(&mut self, id: StreamId) -> io::Result<()> {
        let mut stream = self.stream(id)?;
        stream.sock.meta.write_closed = true;
        stream.sock.tcp().close();
        stream.touch();
        Ok(())
    }

    /// Releases the stream gracefully (FIN after queued data); the core reaps it later.
    pub fn stream_close(&mut self, id: StreamId, now: Instant) {
        if let Ok(mut stream) = self.stream(id) {
            stream.sock.tcp().close();
            unown(&mut stream.sock.meta, stream.owned, now);
            stream.touch();
        }
    }

    /// Releases the stream with a RST.
    pub fn stream_abort(&mut self, id: StreamId, now: Instant) {
        if let Ok(mut stream) = self.stream(id) {
            stream.sock.tcp().abort();
            unown(&mut stream.sock.meta, stream.owned, now);
            stream.touch();
        }
    }

    /// Stops everything: every socket is aborted (waking all waiters), later calls fail.
    pub fn shutdown(&mut self) {
        let all: Vec<u32> = self.peers.keys().copied().collect();
        for i in all {
            self.remove_peer(i, self.base);
        }
        self.closed = true;
        self.out.clear();
    }

    /// Whether [`Core::shutdown`] ran.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Sockets in every netstack, including listeners and streams still closing (diagnostics:
    /// this is what each netstack poll scans).
    pub fn socket_count(&self) -> usize {
        self.peers.values().map(|p| p.socks.len()).sum()
    }

    /// Streams owned by callers, all peers together.
    pub fn owned_streams(&self) -> u64 {
        self.peers.values().map(|p| p.owned).sum()
    }

    /// Counters and per-peer state.
    pub fn stats(&self) -> TunnelStats {
        let c = &self.counters;
        let mut peers: Vec<PeerStats> = self
            .peers
            .values()
            .map(|p| PeerStats {
                public_key: p.config.public_key,
                endpoint: p.endpoint,
                last_handshake: p.tunn.time_since_last_handshake(),
                tx_bytes: p.tx_bytes,
                rx_bytes: p.rx_bytes,
                active_streams: p.owned,
            })
            .collect();
        peers.sort_by_key(|p| p.public_key);
        TunnelStats {
            active_streams: peers.iter().map(|p| p.active_streams).sum(),
            peers,
            handshakes_completed: c.handshakes_completed,
            datagrams_rx: c.datagrams_rx,
            datagrams_tx: c.datagrams_tx,
            bytes_rx: c.bytes_rx,
            bytes_tx: c.bytes_tx,
            dropped_junk: c.dropped_junk,
            dropped_source: c.dropped_source,
            window_bytes: self.ledger.total() as u64,
            window_budget: self.ledger.settings().budget as u64,
            refused_window: c.refused_window,
            refused_ports: c.refused_ports,
            stalled_resets: c.stalled_resets,
            unknown_session_handshakes: c.unknown_session_handshakes,
        }
    }

    /// Every peer whose endpoint is known, with its index, if that changed since the last call
    /// (what the peer cache file should hold; see [`CachedPeer`]).
    pub fn take_peer_cache(&mut self) -> Option<Vec<CachedPeer>> {
        let mut peers: Vec<CachedPeer> = self
            .peers
            .values()
            .filter_map(|p| {
                Some(CachedPeer {
                    public_key: p.config.public_key,
                    index: p.index,
                    endpoint: p.endpoint?,
                })
            })
            .collect();
        peers.sort_by_key(|p| p.public_key);
        if peers == self.last_cache {
            return None;
        }
        self.last_cache = peers.clone();
        Some(peers)
    }

    /// Makes the next [`Core::take_peer_cache`] return the list even if it did not change (the
    /// last one could not be written).
    pub fn forget_peer_cache(&mut self) {
        self.last_cache.clear();
    }

    /// `Ready` when a read would not wait: bytes are queued, the peer has finished sending, or
    /// the stream failed. `Pending` registers `waker`.
    pub fn stream_readable(&mut self, id: StreamId, waker: Option<&Waker>) -> Poll<io::Result<()>> {
        let stream = match self.stream(id) {
            Ok(s) => s,
            Err(e) => return Poll::Ready(Err(e)),
        };
        let sock = stream.sock.tcp();
        if sock.can_recv()
            || !sock.may_recv()
                && !matches!(sock.state(), tcp::State::SynSent | tcp::State::SynReceived)
        {
            return Poll::Ready(Ok(()));
        }
        if let Some(w) = waker {
            sock.register_recv_waker(w);
        }
        Poll::Pending
    }

    /// How many bytes a write would take now: `Ready(Ok(n))` with `n > 0`, or an error if the
    /// stream can no longer send. `Pending` (with `waker` registered) while the send buffer is
    /// full or the connection is not yet established.
    pub fn stream_writable(
        &mut self,
        id: StreamId,
        waker: Option<&Waker>,
    ) -> Poll<io::Result<usize>> {
        let stream = match self.stream(id) {
            Ok(s) => s,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if stream.sock.meta.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "tunnel stream write half already shut down",
            )));
        }
        let sock = stream.sock.tcp();
        match sock.state() {
            tcp::State::SynSent | tcp::State::SynReceived => {}
            tcp::State::Closed => return Poll::Ready(Err(reset_err())),
            _ if !sock.may_send() => {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "tunnel stream can no longer send",
                )))
            }
            _ => {
                let room = sock.send_capacity() - sock.send_queue();
                if room > 0 {
                    return Poll::Ready(Ok(room));
                }
            }
        }
        if let Some(w) = waker {
            sock.register_send_waker(w);
        }
        Poll::Pending
    }

    /// Charges an open stream's buffers to `client` from now on (`None`: to its peer), e.g.
    /// when the edge hands a pooled connection to another client. Its buffer size does not
    /// change.
    pub fn stream_set_client(&mut self, id: StreamId, client: Option<u128>) {
        let Ok(stream) = self.stream(id) else {
            return;
        };
        let meta = &mut stream.sock.meta;
        let to = client.map_or(Charge::Peer(id.peer), Charge::Client);
        let (from, size) = (meta.charge, meta.size);
        meta.charge = to;
        self.ledger.transfer(from, to, size);
    }

    /// The per-direction buffer size the stream got when it opened.
    pub fn stream_window(&mut self, id: StreamId) -> Option<usize> {
        self.stream(id).ok().map(|s| s.sock.meta.size)
    }

    /// The largest per-direction buffer a stream can get (`[tunnel] tcp_buffer`).
    pub fn max_window(&self) -> usize {
        self.ledger.settings().max
    }
}

/// An owned stream's socket, borrowed with what marking it for a poll needs.
struct StreamRef<'a> {
    id: u64,
    sock: &'a mut Sock,
    owned: &'a mut u64,
    peer_dirty: &'a mut Vec<u64>,
    needs_poll: &'a mut bool,
    index: u32,
    core_dirty: &'a mut Vec<u32>,
}

impl StreamRef<'_> {
    /// Queues the socket (and its peer) for the next poll.
    fn touch(&mut self) {
        if !self.sock.queued {
            self.sock.queued = true;
            self.peer_dirty.push(self.id);
        }
        if !*self.needs_poll {
            *self.needs_poll = true;
            self.core_dirty.push(self.index);
        }
    }
}

/// What a socket needs after its poll.
enum AfterPoll {
    Keep,
    /// Poll it again (a RST or a window update is due).
    Again,
    /// Closed and released: remove it.
    Reap,
}

/// Releases a socket from its owner: it finishes its close and is reaped.
fn unown(meta: &mut SockMeta, owned: &mut u64, now: Instant) {
    if meta.owned {
        meta.owned = false;
        *owned = owned.saturating_sub(1);
    }
    meta.since = now;
    meta.closing = true;
}

/// State changes of a socket after its poll: listeners that accepted (or failed), outbound
/// connects that completed (or were refused), and released sockets finishing their close.
#[allow(clippy::too_many_arguments)]
fn after_poll(
    sock: &mut Sock,
    stream: StreamId,
    peer: PublicKey,
    now: Instant,
    stall_timeout: Option<Duration>,
    events: &mut VecDeque<Event>,
    counters: &mut Counters,
    owned: &mut u64,
) -> AfterPoll {
    let Sock {
        set, handle, meta, ..
    } = sock;
    let tcp = set.get_mut::<tcp::Socket>(*handle);
    // The stall clock: it restarts whenever the peer acknowledges data (the send queue
    // shrank) or there is nothing to send. A stream whose owner has data queued and whose peer
    // takes none of it (a reader that stopped reading, with its window at zero) is reset
    // after `stall_timeout`, so neither node holds it and its buffers for ever.
    let queued = tcp.send_queue();
    if queued == 0 || meta.send_queue == 0 || queued < meta.send_queue {
        meta.progress = now;
    }
    meta.send_queue = queued;
    if let Some(limit) = stall_timeout {
        if meta.owned
            && queued > 0
            && tcp.is_active()
            && now.saturating_duration_since(meta.progress) >= limit
        {
            tracing::debug!(
                ?stream,
                queued,
                "stream stalled: nothing acknowledged for the stall timeout; resetting it"
            );
            counters.stalled_resets += 1;
            tcp.abort();
            meta.send_queue = 0;
            return AfterPoll::Again;
        }
    }
    match (meta.kind, tcp.state()) {
        (SockKind::Listener, tcp::State::SynReceived)
            if now.saturating_duration_since(meta.since) < SYN_RECEIVED_TIMEOUT => {}
        (SockKind::Listener, tcp::State::Listen | tcp::State::SynReceived | tcp::State::Closed) => {
            // The SYN was rejected or reset, or the handshake never finished.
            tcp.abort();
            unown(meta, owned, now);
        }
        (SockKind::Listener, _) => {
            let local = tcp.local_endpoint().and_then(to_v4);
            let remote = tcp.remote_endpoint().and_then(to_v4);
            match (local, remote) {
                (Some(local), Some(remote)) => {
                    tcp.set_timeout(Some(smol_dur(TCP_TIMEOUT)));
                    tcp.set_keep_alive(Some(smol_dur(TCP_KEEPALIVE)));
                    meta.kind = SockKind::Stream;
                    meta.owned = true;
                    *owned += 1;
                    events.push_back(Event::Accepted {
                        stream,
                        peer,
                        local,
                        remote,
                    });
                }
                _ => {
                    tcp.abort();
                    unown(meta, owned, now);
                }
            }
        }
        (SockKind::Connecting, tcp::State::SynSent) => {}
        (SockKind::Connecting, tcp::State::Closed) => {
            // Reported once; the owner sees Refused from then on.
            meta.kind = SockKind::Stream;
            events.push_back(Event::ConnectFailed(stream, ConnectFailure::Refused));
        }
        (SockKind::Connecting, _) => {
            tcp.set_timeout(Some(smol_dur(TCP_TIMEOUT)));
            tcp.set_keep_alive(Some(smol_dur(TCP_KEEPALIVE)));
            meta.kind = SockKind::Stream;
            events.push_back(Event::Connected(stream));
        }
        (SockKind::Stream, _) => {}
    }
    if !meta.closing {
        return AfterPoll::Keep;
    }
    // Released: discard what arrives, reap when closed, reset after lingering.
    let state = tcp.state();
    let reap = match state {
        tcp::State::TimeWait => true,
        tcp::State::Closed => tcp.local_endpoint().is_none(),
        _ => false,
    };
    if reap {
        return AfterPoll::Reap;
    }
    let mut again = false;
    if tcp.recv_queue() > 0 {
        if tcp.send_queue() == 0 && state != tcp::State::Closed {
            // Data for a stream nobody will read, and nothing of ours left to deliver: reset
            // it as Linux does, so the sender stops at once.
            tcp.abort();
        } else {
            let _ = tcp.recv(|b| (b.len(), ()));
        }
        again = true;
    }
    if state != tcp::State::Closed && now.saturating_duration_since(meta.since) >= CLOSE_LINGER {
        tcp.abort();
        again = true;
    }
    if state == tcp::State::Closed {
        // The RST goes out on the next poll, then the socket is reaped.
        again = true;
    }
    if again {
        AfterPoll::Again
    } else {
        AfterPoll::Keep
    }
}

/// The flow key (our port, the remote address) of an inbound IPv4 TCP packet that is not a
/// fragment; other packets belong to no socket.
fn inbound_flow(packet: &[u8]) -> Option<(u16, SocketAddrV4)> {
    if packet.len() < 20 || packet[9] != 6 {
        return None;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let frag = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff;
    if ihl < 20 || frag != 0 || packet.len() < ihl + 4 {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let src_port = u16::from_be_bytes([packet[ihl], packet[ihl + 1]]);
    let dst_port = u16::from_be_bytes([packet[ihl + 2], packet[ihl + 3]]);
    Some((dst_port, SocketAddrV4::new(src, src_port)))
}

/// The acknowledgment number of an inbound TCP segment that advertises a zero window (and
/// acknowledges something); `None` otherwise.
fn zero_window_ack(packet: &[u8]) -> Option<u32> {
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let t = packet.get(ihl..ihl + 20)?;
    let ack = t[13] & 0x10 != 0;
    let window = u16::from_be_bytes([t[14], t[15]]);
    (ack && window == 0).then(|| u32::from_be_bytes([t[8], t[9], t[10], t[11]]))
}

fn smol_dur(d: Duration) -> smoltcp::time::Duration {
    smoltcp::time::Duration::from_micros(d.as_micros() as u64)
}

fn to_v4(e: smoltcp::wire::IpEndpoint) -> Option<SocketAddrV4> {
    #[allow(unreachable_patterns)] // another crate may enable proto-ipv6
    match e.addr {
        smoltcp::wire::IpAddress::Ipv4(a) => Some(SocketAddrV4::new(a, e.port)),
        _ => None,
    }
}

/// Sets up a socket (new or reused) for a stream. Request/response traffic must not wait for
/// Nagle; ACKs go out at once until the owner has read [`QUICKACK_BYTES`] (then they are
/// delayed, see `stream_recv_with`); a reused socket also gets a fresh congestion controller.
fn configure(s: &mut tcp::Socket<'static>) {
    s.set_nagle_enabled(false);
    s.set_ack_delay(None);
    s.set_congestion_control(tcp::CongestionControl::Cubic);
    s.set_timeout(None);
    s.set_keep_alive(None);
}

mod ack_seq;
mod ledger;
#[cfg(test)]
mod tests;
