//! Kokoa control plane: the [`store`], the REST [`api`] over it and per-node install [`bundle`]s;
//! config streaming follows. It also holds `kokoa-control dev`, which runs a complete Kokoa (an edge, an
//! origin and a sample app) on loopback from generated config files, so a newcomer sees a
//! request cross the tunnel with one command.

// The OpenAPI document (api/openapi.rs) is one large `serde_json::json!` literal.
#![recursion_limit = "512"]

pub mod acme;
pub mod api;
pub mod bundle;
pub mod cli;
pub mod dev;
pub mod dns;
pub mod grpc;
pub mod pki;
pub mod store;

/// The program version, shared with `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
