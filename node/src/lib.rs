//! What every Kokoa data-plane node (`kokoa-edge`, `kokoa-origin`) shares and that is not on
//! the request path: tracing setup, the admin listener that answers `/healthz` and Prometheus
//! `/metrics`, shutdown and reload signals, the drain coordination used on SIGTERM, the one
//! entry point both binaries run ([`cli`], with shell completions and man pages from [`docs`]),
//! and the control-plane client ([`control`]) that enrolls the node and applies the config
//! `kokoa-control` streams, with what it needs on its own: state files ([`persist`]),
//! `[control]` settings ([`settings`]), reconnect delays ([`backoff`]), `/proc` meters
//! ([`meter`]) and endpoint resolution ([`resolve`]).

pub mod admin;
pub mod backoff;
pub mod cli;
pub mod control;
pub mod docs;
pub mod drain;
pub mod meter;
pub mod persist;
pub mod resolve;
pub mod settings;
pub mod signal;
pub mod telemetry;
