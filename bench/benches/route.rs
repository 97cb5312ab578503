//! `RouteTable::lookup` for one `Host` header, in a table of 1,000 routes.

// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use kokoa_edge::route::RouteTable;
use kokoa_model::{EdgeLimits, HttpRoute, Port};

fn route(host: String, aliases: Vec<String>, origin: String, port: u16) -> HttpRoute {
    HttpRoute {
        host: host.parse().expect("a host"),
        aliases: aliases
            .iter()
            .map(|a| a.parse().expect("an alias"))
            .collect(),
        origin: origin.parse().expect("a name"),
        port: Port::new(port).expect("a port"),
        limits: Default::default(),
    }
}

/// 900 exact routes (each with an alias) and 100 wildcards.
fn table() -> RouteTable {
    let mut routes = Vec::with_capacity(1000);
    for i in 0..900 {
        routes.push(route(
            format!("app{i}.customer{}.example.com", i % 37),
            vec![format!("www.app{i}.example.net")],
            format!("origin{}", i % 10),
            8000 + (i % 100) as u16,
        ));
    }
    for i in 0..100 {
        routes.push(route(
            format!("*.tenant{i}.example.org"),
            Vec::new(),
            format!("origin{}", i % 10),
            9000 + i as u16,
        ));
    }
    RouteTable::new(&routes, &EdgeLimits::default())
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
