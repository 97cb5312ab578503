//! Kokoa control plane. The store, REST API and config streaming arrive with the control-plane
//! issue; today this crate holds `kokoa-control dev`, which runs a complete Kokoa (an edge, an
//! origin and a sample app) on loopback from generated config files, so a newcomer sees a
//! request cross the tunnel with one command.

pub mod dev;
pub mod store;

/// The program version, shared with `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
