//! Control's own Prometheus metrics, served at `/metrics` on the REST API's listener (next to
//! `/healthz`, without a token, as the nodes' admin listeners serve theirs).
//!
//! Each part of control that counts something owns its metrics and implements
//! [`MetricSource`]; `serve` collects the sources it runs into one registry with [`registry`].
//! A new part (provisioning, notification deliveries) adds its metrics the same way: a struct of
//! `prometheus_client` families, a `MetricSource` impl naming them `kokoa_<area>_...`, and one
//! more entry in the list `serve` passes to [`registry`].

use std::sync::Arc;

use axum::http::header::CONTENT_TYPE as CONTENT_TYPE_HEADER;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

/// Something that registers metrics on control's registry.
pub trait MetricSource: Send + Sync {
    /// Registers this source's metrics (families are cheap clones sharing their values).
    fn register_metrics(&self, registry: &mut Registry);
}

/// Content type of the exposition prometheus-client writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One registry holding every source's metrics.
pub fn registry(sources: &[&dyn MetricSource]) -> Registry {
    let mut registry = Registry::default();
    for source in sources {
        source.register_metrics(&mut registry);
    }
    registry
}

/// The registry in the text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Encoding into a String fails only if a metric's own encoding fails.
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!(%error, "encoding control's metrics failed");
    }
    out
}

/// `GET /metrics` over `registry`, to merge into the REST API's router.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move { ([(CONTENT_TYPE_HEADER, CONTENT_TYPE)], render(&registry)) }
        }),
    )
}

impl MetricSource for crate::acme::AcmeMetrics {
    fn register_metrics(&self, registry: &mut Registry) {
        self.register(registry);
    }
}

impl MetricSource for crate::dns::DnsMetrics {
    fn register_metrics(&self, registry: &mut Registry) {
        self.register(registry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_land_in_one_exposition() {
        let acme = crate::acme::AcmeMetrics::default();
        acme.orders
            .get_or_create(&crate::acme::OrderLabels {
                result: "issued".into(),
            })
            .inc();
        let text = render(&registry(&[&acme]));
        assert!(
            text.contains("kokoa_acme_orders_total{result=\"issued\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
