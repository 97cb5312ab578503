//! `RequestLimiter::check`, the per-request cost of rate limiting (issue 4: < 5 % of a request).
//! The load comparison measures the same thing end to end, but its run-to-run noise on this
//! machine is larger than the effect; this gives the cost on its own, in nanoseconds.

// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use kokoa_edge::limit::RatePolicy;
use kokoa_edge::limit::{ClientBudget, KeyMask, RequestLimiter};

/// A policy nothing reaches, as in the comparison's `kokoa-ratelimit` contender.
fn limiter() -> RequestLimiter {
    let policy = RatePolicy {
        per_second: 1_000_000_000.0,
        burst: 1_000_000,
    };
    RequestLimiter::new(policy, KeyMask::default(), ClientBudget::new(100_000))
}

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit_check");

    let one = limiter();
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
    assert!(one.check(client).is_ok());
    group.bench_function("one_client", |b| {
        b.iter(|| one.check(black_box(client)).is_ok())
    });

    // 10,000 clients in turn: every check finds its key in a table of that size.
    let many = limiter();
    let clients: Vec<IpAddr> = (0..10_000u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
        .collect();
    for ip in &clients {
        assert!(many.check(*ip).is_ok());
    }
    assert_eq!(many.tracked(), clients.len());
    let mut next = 0;
    group.bench_function("10000_clients", |b| {
        b.iter(|| {
            next = (next + 1) % clients.len();
            many.check(black_box(clients[next])).is_ok()
        })
    });

    // IPv6 clients are keyed by their /64: the mask is part of the cost.
    let v6 = limiter();
    let client6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6));
    assert!(v6.check(client6).is_ok());
    group.bench_function("ipv6_client", |b| {
        b.iter(|| v6.check(black_box(client6)).is_ok())
    });
    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
