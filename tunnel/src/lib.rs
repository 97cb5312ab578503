//! `kokoa-tunnel`: the userspace WireGuard tunnel that carries every request between
//! `kokoa-edge` and `kokoa-origin`.
//!
//! In the request path it sits between the edge's HTTP proxy and the origin's local-service
//! dialer: the edge opens a [`TunnelStream`] (a TCP connection inside the tunnel) to an origin,
//! the bytes become IPv4/TCP packets in a per-peer smoltcp netstack, boringtun encrypts them as
//! standard WireGuard, and one UDP socket carries them to the other node, where the same path
//! runs backwards and the origin gets the stream from [`Incoming::accept`].
//!
//! The crate is split as quinn is: [`core`] is a sans-IO state machine (datagrams and the time in,
//! datagrams, events and a deadline out) and [`Tunnel`] is the thin tokio driver around it.
//!
//! Key rotation interrupts no stream: [`Tunnel::set_private_key`] rebuilds every peer's
//! WireGuard state for the new key, and [`Tunnel::set_peers`] re-keys a peer in place when only
//! its public key changed (same `local_address` and `allowed_ips`). Netstacks and streams stay;
//! a new handshake starts at once, and TCP resends what was lost until both sides have applied
//! the change (a few hundred ms when control pushes it to both).
//!
//! Design points that matter for throughput: each peer has its own netstack, and each socket its
//! own smoltcp socket set: inbound packets are routed to their socket by 4-tuple and only sockets
//! that received packets, were used, or have a timer due are polled (never on a fixed tick, and
//! never a scan of every socket, so idle streams cost nothing per packet); outbound IP packets are
//! encrypted straight into recycled datagram buffers; the driver moves UDP in batches (quinn-udp:
//! `recvmmsg` with GRO in, GSO trains of equal-size datagrams out, falling back to one datagram per
//! call where the kernel lacks them) and polls the netstacks once per batch, so ACKs are coalesced;
//! woken by a stream's write, it first lets the other ready tasks run, so that many streams' writes
//! leave in one batch; closed sockets are reaped at once (TIME-WAIT is not kept) and recycled with
//! their buffers. Known limit: one `Mutex` around the core (one core's worth of crypto per node).

pub mod core;
mod driver;
pub mod key;
pub mod settings;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

pub use crate::driver::{Incoming, IncomingStream, Tunnel, TunnelStream};
pub use crate::key::{KeyError, PrivateKey, PublicKey};

/// Default inner MTU (the model's [`kokoa_model::tunnel::DEFAULT_MTU`]): an outer 1500-byte
/// path minus IPv4 (20) + UDP (8) + WireGuard (32) overhead, with headroom for IPv6 outer
/// headers, as wg-quick uses.
pub const DEFAULT_MTU: u16 = kokoa_model::tunnel::DEFAULT_MTU;

/// Default per-direction TCP buffer per stream. It is also the TCP window (smoltcp has no
/// autotuning), so one stream moves at most `DEFAULT_TCP_BUFFER / RTT` bytes per second.
pub const DEFAULT_TCP_BUFFER: usize = kokoa_model::tunnel::DEFAULT_TCP_BUFFER as usize;

/// Most streams (sockets, including ones closing) one peer's netstack holds at once.
pub const MAX_STREAMS_PER_PEER: usize = 16384;

/// One remote WireGuard peer.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// The peer's static public key.
    pub public_key: PublicKey,
    /// Where to send to until the peer is heard from (then roaming follows its packets).
    pub endpoint: Option<SocketAddr>,
    /// Inner IPv4 source addresses accepted from this peer (cryptokey routing).
    pub allowed_ips: Vec<ipnet::Ipv4Net>,
    /// Our own netstack address toward this peer (edge: 10.100.X.10+, origin: 10.100.X.1).
    pub local_address: Ipv4Addr,
    /// Send a keepalive every this many seconds (and handshake at once) so that a NATed node
    /// stays reachable.
    pub persistent_keepalive: Option<u16>,
}

/// Everything [`Tunnel::bind`] needs.
#[derive(Clone, Debug)]
pub struct TunnelConfig {
    /// This node's static private key.
    pub private_key: PrivateKey,
    /// UDP bind address ("0.0.0.0:0" = ephemeral, for NATed origins).
    pub listen: SocketAddr,
    /// Inner MTU, default [`DEFAULT_MTU`]; the TCP MSS follows from it (MTU − 40).
    pub mtu: u16,
    /// Per-direction TCP buffer per stream; default [`DEFAULT_TCP_BUFFER`].
    pub tcp_buffer: usize,
    /// The peers this node talks to.
    pub peers: Vec<PeerConfig>,
    /// Ports on which inbound streams are accepted (origin: its service ports; edge: empty).
    /// A SYN to any other port is answered with RST.
    pub accept_ports: Vec<u16>,
}

impl TunnelConfig {
    /// A config with the defaults: MTU 1420, 256 KiB buffers, no peers, no accepted ports.
    pub fn new(private_key: PrivateKey, listen: SocketAddr) -> Self {
        TunnelConfig {
            private_key,
            listen,
            mtu: DEFAULT_MTU,
            tcp_buffer: DEFAULT_TCP_BUFFER,
            peers: Vec::new(),
            accept_ports: Vec::new(),
        }
    }
}

/// Counters and per-peer state, read by the admin `/metrics` endpoint.
#[derive(Clone, Debug, Default)]
pub struct TunnelStats {
    /// One entry per configured peer.
    pub peers: Vec<PeerStats>,
    /// WireGuard handshakes completed (either side initiating).
    pub handshakes_completed: u64,
    /// UDP datagrams received.
    pub datagrams_rx: u64,
    /// UDP datagrams sent.
    pub datagrams_tx: u64,
    /// UDP payload bytes received.
    pub bytes_rx: u64,
    /// UDP payload bytes sent.
    pub bytes_tx: u64,
    /// Datagrams that were not valid WireGuard for any peer (including replays and duplicates).
    pub dropped_junk: u64,
    /// Inner packets outside the peer's allowed IPs (or not addressed to our netstack).
    pub dropped_source: u64,
    /// Open streams, all peers together.
    pub active_streams: u64,
}

/// State of one peer.
#[derive(Clone, Debug)]
pub struct PeerStats {
    /// The peer's public key.
    pub public_key: PublicKey,
    /// Where its packets currently go (follows roaming).
    pub endpoint: Option<SocketAddr>,
    /// Age of the last completed handshake.
    pub last_handshake: Option<Duration>,
    /// UDP payload bytes sent to this peer.
    pub tx_bytes: u64,
    /// UDP payload bytes received from this peer (authenticated only).
    pub rx_bytes: u64,
    /// Open streams with this peer.
    pub active_streams: u64,
}

/// Errors of the tunnel API.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The UDP socket failed.
    #[error("tunnel UDP socket: {0}")]
    Io(#[from] std::io::Error),
    /// No peer with this public key is configured.
    #[error("no tunnel peer with public key {0}: add it to the peer list")]
    UnknownPeer(PublicKey),
    /// The remote netstack answered the SYN with RST: nothing accepts on that port.
    #[error("connection refused through the tunnel: the peer does not accept this port")]
    Refused,
    /// No WireGuard handshake or no SYN-ACK within the timeout.
    #[error("timed out: no WireGuard handshake or no TCP answer from the peer (check its endpoint, keys and that it runs)")]
    TimedOut,
    /// The tunnel was shut down.
    #[error("the tunnel is shut down")]
    Closed,
    /// The destination is not inside the peer's allowed IPs, so replies could never come back.
    #[error(
        "{dst} is not inside the allowed IPs of peer {peer}: connect to the peer's own address"
    )]
    NotAllowed {
        /// The peer.
        peer: PublicKey,
        /// The rejected destination.
        dst: Ipv4Addr,
    },
    /// The peer already has [`MAX_STREAMS_PER_PEER`] streams.
    #[error("peer {0} already has the maximum number of streams ({MAX_STREAMS_PER_PEER}): close some streams first")]
    TooManyStreams(PublicKey),
    /// No free local port toward this destination.
    #[error("no free local TCP port toward {0}")]
    NoFreePort(SocketAddrV4),
    /// The configuration is invalid.
    #[error("invalid tunnel config: {0}")]
    Config(String),
}
