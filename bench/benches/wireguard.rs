//! boringtun `Tunn` encapsulate and decapsulate of one MTU-sized (1420-byte) IPv4 packet, with a
//! session established by a real handshake between two `Tunn`s.

// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const MTU: usize = 1420;
/// Room for the inner packet plus WireGuard's 32 bytes (and never less than 148).
const BUF: usize = MTU + 64;

/// A 1420-byte IPv4/UDP packet 10.100.1.10 -> 10.100.1.1 (boringtun checks the IP header).
fn packet() -> Vec<u8> {
    let mut p = vec![0xa5u8; MTU];
    p[..20].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 100, 1, 10, 10, 100, 1, 1,
    ]);
    p[2..4].copy_from_slice(&(MTU as u16).to_be_bytes());
    p
}

/// Two `Tunn`s with a completed handshake (a initiated, b responded, a confirmed).
fn pair() -> (Tunn, Tunn) {
    let (ka, kb) = (StaticSecret::from([1u8; 32]), StaticSecret::from([2u8; 32]));
    let (pa, pb) = (PublicKey::from(&ka), PublicKey::from(&kb));
    let mut a = Tunn::new(ka, pb, None, None, 1, None);
    let mut b = Tunn::new(kb, pa, None, None, 2, None);
    let mut buf = vec![0u8; BUF];
    let mut out = vec![0u8; BUF];
    let init = match a.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        _ => panic!("no handshake initiation"),
    };
    let response = match b.decapsulate(None, &init, &mut out) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        _ => panic!("no handshake response"),
    };
    // a answers with a keepalive, which confirms the session to b.
    let keepalive = match a.decapsulate(None, &response, &mut buf) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        _ => panic!("handshake response not accepted"),
    };
    assert!(matches!(
        b.decapsulate(None, &keepalive, &mut out),
        TunnResult::Done
    ));
    (a, b)
}

fn wireguard(c: &mut Criterion) {
    let (mut a, mut b) = pair();
    let packet = packet();
    let mut dst = vec![0u8; BUF];
    let mut out = vec![0u8; BUF];

    // Sanity: the packet makes the round trip unchanged.
    let datagram = match a.encapsulate(&packet, &mut dst) {
        TunnResult::WriteToNetwork(d) => d.to_vec(),
        _ => panic!("no session after the handshake"),
    };
    match b.decapsulate(None, &datagram, &mut out) {
        TunnResult::WriteToTunnelV4(p, _) => assert_eq!(p, &packet[..]),
        _ => panic!("decapsulate failed"),
    }

    let mut group = c.benchmark_group("wireguard_1420");
    group.throughput(Throughput::Bytes(MTU as u64));
    group.bench_function("encapsulate", |bench| {
        bench.iter(|| match a.encapsulate(&packet, &mut dst) {
            TunnResult::WriteToNetwork(d) => d.len(),
            _ => 0,
        })
    });
    // Every datagram can be decapsulated once (replay protection), so each iteration gets a
    // fresh one, made outside the timed part.
    let (mut a, mut b) = pair();
    group.bench_function("decapsulate", |bench| {
        bench.iter_batched(
            || match a.encapsulate(&packet, &mut dst) {
                TunnResult::WriteToNetwork(d) => d.to_vec(),
                _ => Vec::new(),
            },
            |datagram| match b.decapsulate(None, &datagram, &mut out) {
                TunnResult::WriteToTunnelV4(p, _) => p.len(),
                _ => panic!("decapsulate failed"),
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, wireguard);
criterion_main!(benches);
