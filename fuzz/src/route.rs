//! Host names against a `kokoa_edge::route::RouteTable` of exact, alias and wildcard routes.
//!
//! Invariants checked on every input (an oracle written independently of the table):
//! - a match's route really has a name matching the host: equal to it, or a `*.domain`
//!   pattern where the host is one non-empty label under `domain`, and then no exact name equals
//!   the host (exact wins);
//! - no match means no name matches;
//! - letter case (ASCII) and a `:port` suffix do not change the answer.

use std::sync::OnceLock;

use kokoa_edge::route::{normalize_host, RouteTable};

/// The routes: (host, aliases, port). Ports are unique so a match identifies its route.
pub const ROUTES: &[(&str, &[&str], u16)] = &[
    (
        "app.example.com",
        &["www.example.com", "app.example.net"],
        8001,
    ),
    ("*.example.com", &["*.example.org"], 8002),
    ("api.example.org", &[], 8003),
    ("*.dev.example.com", &[], 8004),
    ("xn--bcher-kva.example", &["localhost"], 8005),
];

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let routes: Vec<kokoa_model::HttpRoute> = ROUTES
            .iter()
            .map(|(host, aliases, port)| kokoa_model::HttpRoute {
                host: host.parse().expect("a host"),
                aliases: aliases.iter().map(|a| a.parse().expect("a host")).collect(),
                origin: "home".parse().expect("a name"),
                port: kokoa_model::Port::new(*port).expect("a port"),
                limits: Default::default(),
            })
            .collect();
        RouteTable::new(&routes, &kokoa_model::EdgeLimits::default())
    })
}

fn names(port: u16) -> impl Iterator<Item = &'static str> {
    ROUTES
        .iter()
        .filter(move |r| r.2 == port)
        .flat_map(|(host, aliases, _)| std::iter::once(*host).chain(aliases.iter().copied()))
}

fn all_names() -> impl Iterator<Item = &'static str> {
    ROUTES.iter().flat_map(|r| names(r.2))
}

/// Whether pattern `p` (a name or `*.domain`) matches the normalized host `n`.
fn matches(p: &str, n: &str) -> bool {
    match p.strip_prefix("*.") {
        Some(domain) => n
            .strip_suffix(domain)
            .and_then(|rest| rest.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => p == n,
    }
}

/// Looks `host` up and checks the invariants; panics when one is broken.
pub fn check(host: &str) {
    let table = table();
    let found = table.lookup(host).map(|r| r.port);
    match normalize_host(host) {
        None => assert_eq!(found, None, "{host:?} does not normalize but matched"),
        Some(n) => {
            let exact = all_names().any(|p| p == n);
            match found {
                Some(port) => {
                    assert!(
                        names(port).any(|p| matches(p, &n)),
                        "{host:?} matched port {port} whose names do not match {n:?}"
                    );
                    if exact {
                        assert!(names(port).any(|p| p == n), "exact name must win for {n:?}");
                    }
                }
                None => assert!(
                    !all_names().any(|p| matches(p, &n)),
                    "{host:?} ({n:?}) matches a route name but lookup found none"
                ),
            }
        }
    }
    assert_eq!(
        table.lookup(&host.to_ascii_uppercase()).map(|r| r.port),
        found,
        "case changed the answer for {host:?}"
    );
    if !host.contains(':') && !host.contains(char::is_whitespace) {
        assert_eq!(
            table.lookup(&format!("{host}:443")).map(|r| r.port),
            found,
            "a port changed the answer for {host:?}"
        );
    }
}

/// Runs one fuzz input (non-UTF-8 is taken lossily, as a header value could be).
pub fn run(data: &[u8]) {
    check(&String::from_utf8_lossy(data));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oracle_agrees_on_known_hosts() {
        for host in [
            "app.example.com",
            "WWW.example.com:8443",
            "x.example.com",
            "a.b.example.com",
            "q.dev.example.com",
            "x.example.org",
            "api.example.org.",
            "example.com",
            "",
            ":",
            "[::1]",
            "localhost",
        ] {
            check(host);
        }
    }
}
