//! Certificate selection by SNI, as the rustls resolver does it on every handshake: load the
//! current store from its `ArcSwap`, then exact name, wildcard, default.

// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use kokoa_edge::sni::CertStore;
use kokoa_model::{Certificate, HostPattern};

fn certified(names: Vec<String>) -> Certificate {
    let generated = rcgen::generate_simple_self_signed(names).expect("rcgen makes a certificate");
    Certificate::from_pem(&generated.cert.pem(), &generated.key_pair.serialize_pem())
        .expect("a certificate")
}

fn resolve(c: &mut Criterion) {
    // 100 certificates: 90 with two exact names, 10 wildcards.
    let mut certs: Vec<Certificate> = (0..90)
        .map(|i| {
            certified(vec![
                format!("app{i}.example.com"),
                format!("www.app{i}.example.com"),
            ])
        })
        .collect();
    certs.extend((0..10).map(|i| certified(vec![format!("*.tenant{i}.example.org")])));
    let default = HostPattern::new("app0.example.com").expect("a name");
    let with_default = CertStore::from_certificates(&certs, Some(&default)).expect("store");
    let without_default = CertStore::from_certificates(&certs, None).expect("store");
    let with_default = Arc::new(ArcSwap::from_pointee(with_default));
    let without_default = Arc::new(ArcSwap::from_pointee(without_default));

    let mut group = c.benchmark_group("sni_resolve_100_certs");
    let cases = [
        ("exact", "app42.example.com", &with_default, true),
        (
            "exact_upper_trailing_dot",
            "APP42.example.com.",
            &with_default,
            true,
        ),
        ("wildcard", "shop.tenant7.example.org", &with_default, true),
        (
            "unknown_gets_default",
            "unknown.example.net",
            &with_default,
            true,
        ),
        (
            "unknown_refused",
            "unknown.example.net",
            &without_default,
            false,
        ),
    ];
    for (name, sni, store, found) in cases {
        assert_eq!(store.load().select(Some(sni)).is_some(), found, "{name}");
        group.bench_function(name, |b| {
            b.iter(|| store.load().select(black_box(Some(sni))).is_some())
        });
    }
    group.finish();
}

criterion_group!(benches, resolve);
criterion_main!(benches);
