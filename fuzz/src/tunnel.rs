//! Datagrams into a `kokoa_tunnel::core::Core` with one peer configured.
//!
//! Random bytes almost never pass WireGuard's MAC checks, so besides raw datagrams the input
//! can ask a real boringtun peer (the configured one, with its private key) to encrypt
//! fuzzer-chosen inner IPv4 packets, or to answer the core's last TCP segment with correct
//! sequence numbers and fuzzer-chosen flags and data. That reaches cryptokey routing, the SYN
//! pre-listener and smoltcp's TCP state machine behind an authenticated session, which is where
//! a malicious or broken peer can reach.
//!
//! Input: a sequence of records `[op: u8][len: u16 LE][len bytes]` (a short last record takes
//! what is left). Ops, by `op % 6`:
//! - 0: the bytes as a datagram from the peer's endpoint;
//! - 1: the bytes as a datagram from an unknown address;
//! - 2: the bytes as an inner packet, encrypted by the peer (a handshake first if needed);
//! - 3: advance the clock by `len` milliseconds (no bytes follow) and run the timers;
//! - 4: replay the peer's last datagram with the bytes XORed over it from offset 16;
//! - 5: a TCP segment answering the core's last one: flags = first byte, data = the rest.
//!
//! After each record the core and the peer exchange datagrams until both are quiet (bounded),
//! and streams the core accepts are read, written and closed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::task::Poll;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey as XPublic, StaticSecret};
use kokoa_tunnel::core::{Core, Event};
use kokoa_tunnel::{PeerConfig, PrivateKey, TunnelConfig};

/// The core's static private key (fixed so seeds made by `examples/seeds.rs` match).
pub const CORE_SECRET: [u8; 32] = [0x11; 32];
/// The peer's static private key.
pub const PEER_SECRET: [u8; 32] = [0x22; 32];
/// The core's inner address (an origin's 10.100.X.1).
pub const CORE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 1);
/// The peer's inner address (its only allowed IP).
pub const PEER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 10);
/// The port the core accepts streams on.
pub const ACCEPT_PORT: u16 = 80;
/// The peer's UDP endpoint.
pub const PEER_UDP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 51820);
/// Some other UDP address (roaming, or an attacker).
pub const OTHER_UDP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9)), 4444);

/// The op codes of the input records.
pub mod op {
    /// Raw datagram from the peer's endpoint.
    pub const DATAGRAM: u8 = 0;
    /// Raw datagram from another address.
    pub const DATAGRAM_OTHER: u8 = 1;
    /// Inner packet encrypted by the peer.
    pub const INNER: u8 = 2;
    /// Advance the clock by `len` ms.
    pub const ADVANCE: u8 = 3;
    /// Replay the peer's last datagram, XOR-mutated.
    pub const REPLAY: u8 = 4;
    /// Answer the core's last TCP segment.
    pub const TCP_REPLY: u8 = 5;
}

/// Encodes one input record (used by the seed generator).
pub fn record(op: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("record payload fits in u16");
    let mut v = vec![op];
    v.extend_from_slice(&len.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

/// A boringtun peer holding [`PEER_SECRET`], talking to a core holding [`CORE_SECRET`].
pub fn peer_tunn() -> Tunn {
    let core_public = XPublic::from(&StaticSecret::from(CORE_SECRET));
    Tunn::new(
        StaticSecret::from(PEER_SECRET),
        core_public,
        None,
        None,
        7,
        None,
    )
}

fn core_config() -> TunnelConfig {
    let secret = |b: [u8; 32]| {
        // PrivateKey's only constructors take base64 (the format users write).
        PrivateKey::from_base64(&STANDARD.encode(b)).expect("a 32-byte key in base64")
    };
    let peer_public = secret(PEER_SECRET).public_key();
    let mut config = TunnelConfig::new(secret(CORE_SECRET), "0.0.0.0:0".parse().expect("addr"));
    config.peers = vec![PeerConfig {
        public_key: peer_public,
        endpoint: Some(PEER_UDP),
        allowed_ips: vec![ipnet::Ipv4Net::new(PEER_ADDR, 32).expect("prefix")],
        local_address: CORE_ADDR,
        persistent_keepalive: None,
    }];
    config.accept_ports = vec![ACCEPT_PORT];
    config
}

/// One fuzz run: a fresh core and peer, fed the records in `data`.
pub struct Harness {
    core: Core,
    peer: Tunn,
    now: Instant,
    buf: Vec<u8>,
    last_from_peer: Vec<u8>,
    /// The core's last TCP segment to the peer.
    last_segment: Option<Segment>,
    accepted: u64,
}

#[derive(Clone, Copy)]
struct Segment {
    core_port: u16,
    peer_port: u16,
    seq: u32,
    ack: u32,
    len: u32,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// A core with the peer configured, and the peer's boringtun `Tunn`.
    pub fn new() -> Harness {
        let now = Instant::now();
        let core = Core::new(&core_config(), now).expect("the fuzz config is valid");
        Harness {
            core,
            peer: peer_tunn(),
            now,
            buf: vec![0; 65536 + 64],
            last_from_peer: Vec::new(),
            last_segment: None,
            accepted: 0,
        }
    }

    /// Runs every record of `data`. Must never panic.
    pub fn run(&mut self, mut data: &[u8]) {
        // Bounded work per input, whatever its size.
        for _ in 0..64 {
            let Some((&op, rest)) = data.split_first() else {
                return;
            };
            let (len, rest) = match rest {
                [a, b, rest @ ..] => (u16::from_le_bytes([*a, *b]), rest),
                _ => (0, &[][..]),
            };
            let op = op % 6;
            let take = if op == op::ADVANCE {
                0
            } else {
                usize::from(len).min(rest.len())
            };
            let (payload, rest) = rest.split_at(take);
            data = rest;
            self.step(op, len, payload);
        }
    }

    /// The core's counters.
    pub fn stats(&self) -> kokoa_tunnel::TunnelStats {
        self.core.stats()
    }

    /// Streams the core accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    fn step(&mut self, op: u8, len: u16, payload: &[u8]) {
        match op {
            op::DATAGRAM => self.core.handle_datagram(self.now, PEER_UDP, payload),
            op::DATAGRAM_OTHER => self.core.handle_datagram(self.now, OTHER_UDP, payload),
            op::INNER => self.send_inner(payload),
            op::ADVANCE => {
                self.now += Duration::from_millis(u64::from(len));
                let _ = self.peer.update_timers(&mut self.buf);
            }
            op::REPLAY => {
                let mut d = self.last_from_peer.clone();
                for (b, x) in d.iter_mut().skip(16).zip(payload) {
                    *b ^= x;
                }
                self.core.handle_datagram(self.now, PEER_UDP, &d);
            }
            _ => {
                if let Some(seg) = self.last_segment {
                    let flags = payload.first().copied().unwrap_or(0x10);
                    let data = payload.get(1..).unwrap_or_default();
                    let packet = tcp_packet(
                        PEER_ADDR,
                        CORE_ADDR,
                        seg.peer_port,
                        seg.core_port,
                        seg.ack,
                        seg.seq.wrapping_add(seg.len),
                        flags,
                        data,
                    );
                    self.send_inner(&packet);
                }
            }
        }
        self.exchange();
    }

    fn send_inner(&mut self, packet: &[u8]) {
        let out = match self.peer.encapsulate(packet, &mut self.buf) {
            TunnResult::WriteToNetwork(d) => d.to_vec(),
            _ => return,
        };
        self.deliver(&out);
    }

    fn deliver(&mut self, datagram: &[u8]) {
        self.last_from_peer.clear();
        self.last_from_peer.extend_from_slice(datagram);
        self.core.handle_datagram(self.now, PEER_UDP, datagram);
    }

    /// Moves datagrams between the core and the peer until both are quiet.
    fn exchange(&mut self) {
        for _ in 0..32 {
            self.core.handle_timeout(self.now);
            self.serve_streams();
            let mut quiet = true;
            while let Some(t) = self.core.poll_transmit() {
                quiet = false;
                if t.dst == PEER_UDP {
                    self.peer_receive(&t.payload);
                }
                self.core.recycle(t.payload);
            }
            if quiet && !self.core.has_pending_work() {
                return;
            }
        }
    }

    fn peer_receive(&mut self, datagram: &[u8]) {
        let mut replies = Vec::new();
        let mut input = datagram;
        // boringtun: repeat with an empty datagram after WriteToNetwork to flush its queue.
        for _ in 0..300 {
            match self
                .peer
                .decapsulate(Some(PEER_UDP.ip()), input, &mut self.buf)
            {
                TunnResult::WriteToNetwork(d) => replies.push(d.to_vec()),
                TunnResult::WriteToTunnelV4(p, _) => {
                    self.last_segment = parse_segment(p).or(self.last_segment);
                    break;
                }
                _ => break,
            }
            input = &[];
        }
        for r in replies {
            self.deliver(&r);
        }
    }

    fn serve_streams(&mut self) {
        while let Some(event) = self.core.poll_event() {
            if let Event::Accepted { stream, .. } = event {
                self.accepted += 1;
                let mut buf = [0u8; 2048];
                let _ = self.core.stream_recv(stream, &mut buf, None);
                if let Poll::Ready(Ok(_)) =
                    self.core
                        .stream_send(stream, b"HTTP/1.1 200 OK\r\n\r\n", None)
                {
                    let _ = self.core.stream_shutdown_write(stream);
                }
                self.core.stream_close(stream, self.now);
            }
        }
    }
}

fn parse_segment(p: &[u8]) -> Option<Segment> {
    let ihl = usize::from(*p.first()? & 0x0f) * 4;
    if *p.get(9)? != 6 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*p.get(2)?, *p.get(3)?])).min(p.len());
    let t = p.get(ihl..total)?;
    let off = usize::from(*t.get(12)? >> 4) * 4;
    let flags = *t.get(13)?;
    let mut len = u32::try_from(t.len().saturating_sub(off)).ok()?;
    if flags & 0x03 != 0 {
        len += 1; // SYN and FIN take a sequence number
    }
    Some(Segment {
        core_port: u16::from_be_bytes([t[0], t[1]]),
        peer_port: u16::from_be_bytes([t[2], t[3]]),
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        ack: u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
        len,
    })
}

/// An IPv4/TCP segment (no options). Checksums are filled in, as a stock peer would.
#[allow(clippy::too_many_arguments)]
pub fn tcp_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let total = 40 + data.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&src_port.to_be_bytes());
    t[2..4].copy_from_slice(&dst_port.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t[20..].copy_from_slice(data);
    let mut pseudo = 0u32;
    for w in [src.octets(), dst.octets()] {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]))
            + u32::from(u16::from_be_bytes([w[2], w[3]]));
    }
    pseudo += 6 + (total as u32 - 20);
    let c = checksum(&p[20..], pseudo);
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus/tunnel_datagram")
            .join(name);
        std::fs::read(path).expect("run `cargo run --example seeds` first")
    }

    #[test]
    fn stream_seed_reaches_an_accepted_stream() {
        let mut h = Harness::new();
        h.run(&seed("stream_request"));
        assert_eq!(h.stats().handshakes_completed, 1);
        assert_eq!(h.accepted(), 1);
    }

    #[test]
    fn handshake_seed_completes_a_handshake() {
        let mut h = Harness::new();
        h.run(&seed("handshake_initiation"));
        assert_eq!(h.stats().handshakes_completed, 1);
    }

    #[test]
    fn spoofed_source_is_dropped() {
        let mut h = Harness::new();
        h.run(&seed("spoofed_source"));
        assert_eq!(h.stats().dropped_source, 1);
        assert_eq!(h.accepted(), 0);
    }
}
