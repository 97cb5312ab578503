//! What every Kokoa data-plane node (`kokoa-edge`, `kokoa-origin`) shares and that is not on
//! the request path: tracing setup, the admin listener that answers `/healthz` and Prometheus
//! `/metrics`, shutdown signals, and the drain coordination used on SIGTERM.

pub mod admin;
pub mod drain;
pub mod signal;
pub mod telemetry;
