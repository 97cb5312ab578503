//! `RouteTable::lookup` for one `Host` header, in a table of 1,000 routes.

// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use kokoa_edge::config::RouteConfig;
use kokoa_edge::route::RouteTable;

/// 900 exact routes (each with an alias) and 100 wildcards.
fn table() -> RouteTable {
    let mut routes = Vec::with_capacity(1000);
    for i in 0..900 {
        routes.push(RouteConfig {
            host: format!("app{i}.customer{}.example.com", i % 37),
            aliases: vec![format!("www.app{i}.example.net")],
            origin: format!("origin{}", i % 10),
            port: 8000 + (i % 100) as u16,
        });
    }
    for i in 0..100 {
        routes.push(RouteConfig {
            host: format!("*.tenant{i}.example.org"),
            aliases: Vec::new(),
            origin: format!("origin{}", i % 10),
            port: 9000 + i as u16,
        });
    }
    RouteTable::new(&routes)
}

fn lookup(c: &mut Criterion) {
    let table = table();
    let cases = [
        ("exact", "app517.customer36.example.com"),
        (
            "exact_with_port_and_case",
            "App517.Customer36.example.com:443",
        ),
        ("alias", "www.app517.example.net"),
        ("wildcard", "shop.tenant42.example.org"),
        ("miss", "nothing.example.invalid"),
    ];
    let mut group = c.benchmark_group("route_lookup_1000");
    for (name, host) in cases {
        assert_eq!(
            table.lookup(host).is_some(),
            name != "miss",
            "{name}: {host}"
        );
        group.bench_function(name, |b| b.iter(|| table.lookup(black_box(host)).is_some()));
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
