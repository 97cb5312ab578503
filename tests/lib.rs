//! `kokoa-tests`: the harness of the end-to-end tests, which start the real `kokoa-edge` and
//! `kokoa-origin` binaries on loopback (and in network namespaces) and push real requests
//! through the whole request path: client -> TLS edge -> userspace WireGuard -> origin -> app.
//!
//! - [`process`]: built binaries, child processes with captured logs, readiness, SIGTERM.
//! - [`net`]: free loopback ports, admin `/healthz` and `/metrics` probes, [`eventually`].
//! - [`pki`]: a test CA (rcgen) and rustls client configs that trust it.
//! - [`config`]: edge and origin TOML files written from typed specs.
//! - [`apps`]: the sample apps (HTTP echo/bytes/upload/stream, WebSocket echo, TCP echo).
//! - [`client`]: an HTTPS client (HTTP/1.1 or HTTP/2 by ALPN) that dials the edge directly.
//! - [`topology`]: one edge and N origins wired together, ready to serve.
//! - [`netns`]: network namespaces, veth pairs and wireguard-go for the interop tests.

pub mod apps;
pub mod client;
pub mod config;
pub mod net;
pub mod netns;
pub mod pki;
pub mod process;
pub mod topology;

pub use net::eventually;
