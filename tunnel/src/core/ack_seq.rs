//! Keeps smoltcp's pure ACKs acceptable after a retransmission timeout.
//!
//! On an RTO smoltcp rewinds its "last sequence number sent" to the oldest unacknowledged
//! byte and stamps every following pure ACK with that rewound number. When both directions
//! of a connection carry data and both time out together (a burst of loss both ways, a key
//! rotation gap), each side has already received data that the other now considers unsent:
//! the other side's ACKs then start *before* the receive window and RFC 9293's acceptability
//! test drops them unread, ACK field included. Neither side's acknowledgements get through
//! and the connection hangs until its timeout (seen in the lossy simulations: 2 of 30 seeds
//! without rotation, 8 of 30 with one).
//!
//! Linux never rewinds `SND.NXT` for pure ACKs (`tcp_acceptable_seq`). This module does the
//! same from outside smoltcp: it remembers, per flow, the highest sequence number sent
//! (`SND.MAX`) and moves a pure ACK's rewound sequence number up to it, patching the TCP
//! checksum. A pure ACK carries no data, so its sequence number only has to be acceptable.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

/// (our local port, remote address): the same key as `Peer::tuples`.
pub(super) type FlowKey = (u16, SocketAddrV4);

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;

/// `SND.MAX` per flow of one netstack. Entries start with our SYN (or SYN-ACK), so a reused
/// 4-tuple never inherits a stale number; the owner removes them when it reaps a socket.
#[derive(Debug, Default)]
pub(super) struct SendMax {
    flows: HashMap<FlowKey, u32>,
}

impl SendMax {
    /// Forgets a flow (its socket was reaped).
    pub(super) fn remove(&mut self, key: &FlowKey) {
        self.flows.remove(key);
    }

    /// Number of flows tracked (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.flows.len()
    }

    /// Looks at one outgoing IPv4 packet: records how far its flow has sent and, for a pure
    /// ACK whose sequence number was rewound, moves it up to `SND.MAX`. A RST is moved to
    /// `rst_seq` when given: the peer's RCV.NXT while its window is closed (smoltcp would start
    /// it one byte further, after its window probe, where a closed window drops it).
    pub(super) fn on_transmit(&mut self, packet: &mut [u8], rst_seq: Option<u32>) {
        let Some(seg) = Segment::parse(packet) else {
            return;
        };
        if seg.flags & RST != 0 {
            if let Some(seq) = rst_seq {
                if seq != seg.seq {
                    seg.rewrite_seq(packet, seq);
                }
            }
            self.flows.remove(&seg.key);
            return;
        }
        // SYN and FIN each take one sequence number.
        let control = u32::from(seg.flags & SYN != 0) + u32::from(seg.flags & FIN != 0);
        let end = seg.seq.wrapping_add(seg.payload_len).wrapping_add(control);
        if seg.flags & SYN != 0 {
            self.flows.insert(seg.key, end);
            return;
        }
        let Some(max) = self.flows.get_mut(&seg.key) else {
            return;
        };
        if seq_lt(*max, end) {
            *max = end;
            return;
        }
        let pure_ack = seg.payload_len == 0 && seg.flags & (SYN | FIN) == 0;
        // `max - 1` is a keep-alive's number: leave those (they carry a byte anyway).
        if pure_ack && seq_lt(seg.seq, max.wrapping_sub(1)) {
            let new = *max;
            seg.rewrite_seq(packet, new);
        }
    }
}

/// `a < b` in TCP sequence space.
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

struct Segment {
    key: FlowKey,
    /// Offset of the TCP header in the packet.
    tcp: usize,
    seq: u32,
    flags: u8,
    payload_len: u32,
}

impl Segment {
    fn parse(p: &[u8]) -> Option<Segment> {
        if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 6 {
            return None;
        }
        let ihl = usize::from(p[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([p[2], p[3]])).min(p.len());
        if ihl < 20 || total < ihl + 20 {
            return None;
        }
        let t = &p[ihl..total];
        let data_offset = usize::from(t[12] >> 4) * 4;
        if data_offset < 20 || t.len() < data_offset {
            return None;
        }
        let src_port = u16::from_be_bytes([t[0], t[1]]);
        let dst_port = u16::from_be_bytes([t[2], t[3]]);
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        Some(Segment {
            key: (src_port, SocketAddrV4::new(dst, dst_port)),
            tcp: ihl,
            seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
            flags: t[13],
            payload_len: (t.len() - data_offset) as u32,
        })
    }

    fn rewrite_seq(&self, p: &mut [u8], new: u32) {
        let t = &mut p[self.tcp..];
        let old = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
        t[4..8].copy_from_slice(&new.to_be_bytes());
        let sum = u16::from_be_bytes([t[16], t[17]]);
        t[16..18].copy_from_slice(&checksum_replace4(sum, old, new).to_be_bytes());
    }
}

/// Incremental update of an internet checksum when a 32-bit field changes (RFC 1624, eqn 3).
fn checksum_replace4(sum: u16, old: u32, new: u32) -> u16 {
    let mut acc = u32::from(!sum);
    acc += u32::from(!(old >> 16) as u16) + u32::from(!(old as u16));
    acc += (new >> 16) + (new & 0xffff);
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 20-byte IPv4 + 20-byte TCP packet with a correct checksum.
    fn packet(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let total = 40 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 100, 1, 10]);
        p[16..20].copy_from_slice(&[10, 100, 1, 1]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&80u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&7u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags | 0x10;
        p[34..36].copy_from_slice(&1000u16.to_be_bytes());
        p[40..].copy_from_slice(payload);
        let sum = tcp_checksum(&p);
        p[36..38].copy_from_slice(&sum.to_be_bytes());
        p
    }

    fn tcp_checksum(p: &[u8]) -> u16 {
        let mut acc: u32 = 0;
        let mut add = |b: &[u8]| {
            for c in b.chunks(2) {
                acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
        };
        add(&p[12..20]);
        add(&[0, 6]);
        add(&((p.len() - 20) as u16).to_be_bytes());
        let mut tcp = p[20..].to_vec();
        tcp[16] = 0;
        tcp[17] = 0;
        add(&tcp);
        while acc >> 16 != 0 {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        !(acc as u16)
    }

    impl SendMax {
        fn on_transmit_for_test(&mut self, packet: &mut [u8]) {
            self.on_transmit(packet, None);
        }
    }

    fn seq_of(p: &[u8]) -> u32 {
        u32::from_be_bytes([p[24], p[25], p[26], p[27]])
    }

    #[test]
    fn rewound_pure_ack_is_moved_to_snd_max_with_a_valid_checksum() {
        let mut s = SendMax::default();
        let isn = u32::MAX - 1000; // wraps inside the test
        s.on_transmit_for_test(&mut packet(isn, SYN, &[]));
        s.on_transmit_for_test(&mut packet(isn + 1, 0, &[1u8; 1400]));
        s.on_transmit_for_test(&mut packet(isn.wrapping_add(1401), 0, &[2u8; 1400]));
        let max = isn.wrapping_add(2801);
        // In order: untouched.
        let mut ack = packet(max, 0, &[]);
        let before = ack.clone();
        s.on_transmit(&mut ack, None);
        assert_eq!(ack, before);
        // Rewound after an RTO: moved up, checksum still right.
        let mut ack = packet(isn + 1, 0, &[]);
        s.on_transmit(&mut ack, None);
        assert_eq!(seq_of(&ack), max);
        let sum = u16::from_be_bytes([ack[36], ack[37]]);
        assert_eq!(sum, tcp_checksum(&ack));
        // Retransmitted data and keep-alives are left alone.
        let mut data = packet(isn + 1, 0, &[1u8; 1400]);
        let before = data.clone();
        s.on_transmit(&mut data, None);
        assert_eq!(data, before);
        let mut keepalive = packet(max - 1, 0, &[]);
        let before = keepalive.clone();
        s.on_transmit(&mut keepalive, None);
        assert_eq!(keepalive, before);
        // A FIN advances SND.MAX by one; a RST forgets the flow.
        s.on_transmit_for_test(&mut packet(max, FIN, &[]));
        let mut ack = packet(isn + 1, 0, &[]);
        s.on_transmit(&mut ack, None);
        assert_eq!(seq_of(&ack), max.wrapping_add(1));
        s.on_transmit_for_test(&mut packet(max + 1, RST, &[]));
        assert_eq!(s.len(), 0);
        let mut ack = packet(isn + 1, 0, &[]);
        let before = ack.clone();
        s.on_transmit(&mut ack, None);
        assert_eq!(ack, before, "unknown flows are not touched");
    }

    #[test]
    fn a_rst_toward_a_closed_window_starts_at_the_peers_rcv_nxt() {
        let mut s = SendMax::default();
        s.on_transmit(&mut packet(1000, SYN, &[]), None);
        let mut rst = packet(1500, RST, &[]);
        s.on_transmit(&mut rst, Some(1499));
        assert_eq!(seq_of(&rst), 1499);
        let sum = u16::from_be_bytes([rst[36], rst[37]]);
        assert_eq!(sum, tcp_checksum(&rst));
        // Without a closed window the RST is left as smoltcp made it.
        let mut rst = packet(1500, RST, &[]);
        let before = rst.clone();
        s.on_transmit(&mut rst, None);
        assert_eq!(rst, before);
    }

    #[test]
    fn checksum_update_matches_a_full_recompute() {
        for (old, new) in [(0u32, 1u32), (0xffff_ffff, 0), (0x1234_5678, 0x8765_4321)] {
            let mut p = packet(old, 0, b"abc");
            let sum = u16::from_be_bytes([p[36], p[37]]);
            p[24..28].copy_from_slice(&new.to_be_bytes());
            let updated = checksum_replace4(sum, old, new);
            assert_eq!(updated, tcp_checksum(&p));
        }
    }
}
