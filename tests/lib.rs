//! `kokoa-tests`: the harness of the end-to-end tests, which start the real `kokoa-edge` and
//! `kokoa-origin` binaries on loopback (and in network namespaces) and push real requests
//! through the whole request path: client -> TLS edge -> userspace WireGuard -> origin -> app.
//!
//! - [`process`]: built binaries, child processes with captured logs, readiness, SIGTERM.
//! - [`net`]: free loopback ports, admin `/healthz` and `/metrics` probes, [`eventually`].
//! - [`pki`]: a test CA (rcgen) and rustls client configs that trust it.
//! - [`config`]: edge and origin TOML files written from typed specs.
//! - [`acme`]: Pebble and BIND `named` on loopback for the certificate tests.
//! - [`dns`]: Knot and PowerDNS on loopback, `dig` and `nsupdate`, for the DNS provider tests.
//! - [`cloudflare`]: a local fake of Cloudflare's API v4 enforcing its documented shapes.
//! - [`clouds`]: local fakes of the DigitalOcean, Vultr and Hetzner VPS APIs (documented shapes).
//! - [`apps`]: the sample apps (HTTP echo/bytes/upload/stream, WebSocket echo, TCP echo).
//! - [`client`]: an HTTPS client (HTTP/1.1 or HTTP/2 by ALPN) that dials the edge directly.
//! - [`control`]: `kokoa-control serve`, its REST API, and nodes started from its bundles.
//! - [`hostile`]: stalled-window and slow-body clients, and the RSS probe they are judged by.
//! - [`topology`]: one edge and N origins wired together, ready to serve.
//! - [`netns`]: network namespaces, veth pairs and wireguard-go for the interop tests.
//! - [`provision`]: a self-healing fleet: control with the local provisioner and auto-replace,
//!   BIND, an origin and a webhook receiver (replacement test, failover benchmark).
//! - [`prereq`]: the one rule for a missing prerequisite: skip with a reason, fail under `CI=true`.
//! - [`browser`]: headless Chromium driven over WebDriver (chromedriver) for the dashboard.
//!
//! The tests start `target/<profile>/kokoa-edge` and `kokoa-origin` as built: run them with
//! `cargo test --workspace` (which builds both, since their crates have integration tests), or
//! `cargo build -p kokoa-edge -p kokoa-origin` before `cargo test -p kokoa-tests`. The binaries
//! log at `KOKOA_TEST_LOG` (a `RUST_LOG` filter, default `info`); a failing test prints the
//! logs of every process it started. The interop tests need root, iproute2, wireguard-go,
//! wireguard-tools, curl and python3; they are skipped with a reason without them, and fail
//! instead under `CI=true`.

pub mod acme;
pub mod apps;
pub mod browser;
pub mod client;
pub mod cloudflare;
pub mod clouds;
pub mod config;
pub mod control;
pub mod dns;
pub mod hostile;
pub mod net;
pub mod netns;
pub mod pki;
pub mod prereq;
pub mod process;
pub mod provision;
pub mod topology;

pub use net::eventually;
