//! What every Kokoa data-plane node (`kokoa-edge`, `kokoa-origin`) shares and that is not on
//! the request path: tracing setup, the admin listener that answers `/healthz` and Prometheus
//! `/metrics`, shutdown signals, shell completions and man pages ([`docs`]), the drain coordination used on SIGTERM, and the control-plane
//! client ([`control`]) that enrolls the node and applies the config `kokoa-control` streams.

pub mod admin;
pub mod control;
pub mod docs;
pub mod drain;
pub mod signal;
pub mod telemetry;
