//! Kokoa control plane: the source of truth for origins, services, edges, routes, certificates
//! and tokens. It is never on the request path: edges and origins run from the last config it
//! streamed to them.
//!
//! - [`store`]: the data, on SQLite or PostgreSQL;
//! - [`api`]: the REST API (`/api/v1`) operators and the CLI use;
//! - [`account`]: dashboard users, passwords, TOTP and login sessions;
//! - [`web`]: the dashboard, server-rendered pages over the same API;
//! - [`bundle`]: per-node install bundles (bootstrap config, CA, enrollment token, systemd unit);
//! - [`grpc`] and [`pki`]: enrollment and config streaming to nodes over TLS with control's CA;
//! - [`acme`] and [`dns`]: certificates for route names (ACME HTTP-01, TLS-ALPN-01, DNS-01);
//! - [`health`]: every node's state (online, degraded, offline, enrolling, draining) and why;
//! - [`provision`]: edge provisioners (local, DigitalOcean, Vultr, Hetzner) and the replacement
//!   of dead edges;
//! - [`metrics`]: control's own Prometheus metrics (`/metrics`);
//! - [`serve`]: `kokoa-control serve`, which runs the REST API and the gRPC config stream;
//! - [`https`]: the API and dashboard listener (HTTPS by default, plain only on loopback);
//! - [`cli`]: the operator commands (`origin add`, `route add`, `status`, ...);
//! - [`dev`]: `kokoa-control dev`, a whole Kokoa on loopback: control in this process, the real
//!   `kokoa-edge` and `kokoa-origin` binaries enrolled through it (this crate links neither).

// The OpenAPI document (api/openapi.rs) is one large `serde_json::json!` literal.
#![recursion_limit = "512"]

pub mod account;
pub mod acme;
pub mod api;
pub mod bundle;
pub mod cli;
pub mod dev;
pub mod dns;
pub mod grpc;
pub mod health;
pub mod https;
pub mod metrics;
pub mod notify;
pub mod pki;
pub mod provision;
pub mod serve;
pub mod store;
pub mod web;

/// The program version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// What `--version` prints after the name: version, git commit, build date and target.
pub const LONG_VERSION: &str = env!("KOKOA_LONG_VERSION");
