//! The tunnel's per-packet cost: two `kokoa_tunnel` cores back to back in memory (no sockets),
//! one TCP stream moving a bulk transfer edge -> origin. Every data packet pays smoltcp TCP
//! on both sides, cryptokey routing and boringtun encryption and decryption; ACKs flow back the
//! same way. Reported in bytes/s of stream payload.

// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::task::Poll;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kokoa_tunnel::core::{Core, Event, StreamId};
use kokoa_tunnel::{PeerConfig, PrivateKey, TunnelConfig};

/// Payload moved per iteration.
const CHUNK: usize = 4 << 20;
const EDGE_UDP: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 1);
const ORIGIN_UDP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)), 2);
const EDGE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 10);
const ORIGIN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 1);

struct Pair {
    edge: Core,
    origin: Core,
    tx: StreamId,
    rx: StreamId,
    /// Datagrams carried, both directions.
    datagrams: u64,
}

impl Pair {
    fn new() -> Pair {
        let (ek, ok) = (PrivateKey::generate(), PrivateKey::generate());
        let now = Instant::now();
        let mut ec = TunnelConfig::new(ek.clone(), EDGE_UDP);
        ec.peers = vec![PeerConfig {
            public_key: ok.public_key(),
            endpoint: Some(ORIGIN_UDP),
            allowed_ips: vec![ipnet::Ipv4Net::new(ORIGIN_ADDR, 32).expect("prefix")],
            local_address: EDGE_ADDR,
            persistent_keepalive: None,
        }];
        let mut oc = TunnelConfig::new(ok.clone(), ORIGIN_UDP);
        oc.accept_ports = vec![80];
        oc.peers = vec![PeerConfig {
            public_key: ek.public_key(),
            endpoint: None,
            allowed_ips: vec![ipnet::Ipv4Net::new(EDGE_ADDR, 32).expect("prefix")],
            local_address: ORIGIN_ADDR,
            persistent_keepalive: None,
        }];
        let mut edge = Core::new(&ec, now).expect("edge core");
        let origin = Core::new(&oc, now).expect("origin core");
        let (tx, _) = edge
            .connect(now, &ok.public_key(), SocketAddrV4::new(ORIGIN_ADDR, 80))
            .expect("connect");
        let mut pair = Pair {
            edge,
            origin,
            tx,
            rx: tx,
            datagrams: 0,
        };
        let mut accepted = None;
        for _ in 0..1000 {
            pair.exchange();
            while let Some(e) = pair.origin.poll_event() {
                if let Event::Accepted { stream, .. } = e {
                    accepted = Some(stream);
                }
            }
            if accepted.is_some() && pair.edge.connect_state(tx, None).is_ready() {
                break;
            }
        }
        pair.rx = accepted.expect("the origin accepted the stream");
        assert!(matches!(
            pair.edge.connect_state(tx, None),
            Poll::Ready(Ok(()))
        ));
        pair
    }

    /// One round: run both cores' timers and netstacks, then carry every datagram across.
    fn exchange(&mut self) {
        let now = Instant::now();
        self.edge.handle_timeout(now);
        while let Some(t) = self.edge.poll_transmit() {
            self.origin.handle_datagram(now, EDGE_UDP, &t.payload);
            self.edge.recycle(t.payload);
            self.datagrams += 1;
        }
        self.origin.handle_timeout(now);
        while let Some(t) = self.origin.poll_transmit() {
            self.edge.handle_datagram(now, ORIGIN_UDP, &t.payload);
            self.origin.recycle(t.payload);
            self.datagrams += 1;
        }
    }

    /// Moves `data` from the edge's stream to the origin's, byte-exact in length.
    fn transfer(&mut self, data: &[u8], buf: &mut [u8]) -> usize {
        let (mut sent, mut received) = (0, 0);
        while received < data.len() {
            while sent < data.len() {
                match self.edge.stream_send(self.tx, &data[sent..], None) {
                    Poll::Ready(Ok(n)) => sent += n,
                    Poll::Ready(Err(e)) => panic!("send: {e}"),
                    Poll::Pending => break,
                }
            }
            self.exchange();
            loop {
                match self.origin.stream_recv(self.rx, buf, None) {
                    Poll::Ready(Ok(0)) => panic!("unexpected end of stream"),
                    Poll::Ready(Ok(n)) => received += n,
                    Poll::Ready(Err(e)) => panic!("recv: {e}"),
                    Poll::Pending => break,
                }
            }
        }
        received
    }
}

fn netstack(c: &mut Criterion) {
    let mut pair = Pair::new();
    let data = vec![0x5au8; CHUNK];
    let mut buf = vec![0u8; 256 * 1024];
    let before = pair.datagrams;
    assert_eq!(pair.transfer(&data, &mut buf), CHUNK);
    let per_chunk = pair.datagrams - before;
    eprintln!(
        "netstack: {per_chunk} datagrams (data + ACKs) per {} MiB",
        CHUNK >> 20
    );

    let mut group = c.benchmark_group("netstack");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    group.sample_size(10);
    group.bench_function("bulk_edge_to_origin_4MiB", |b| {
        b.iter(|| pair.transfer(&data, &mut buf))
    });
    group.finish();
}

criterion_group!(benches, netstack);
criterion_main!(benches);
