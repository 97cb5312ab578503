//! Prometheus metrics of the edge.
//!
//! Per-connection and per-request metrics are updated on the request path (a few atomic adds
//! per request, never per packet); tunnel-wide numbers (handshakes, per-origin handshake age
//! and bytes) are read from [`Tunnel::stats`] at scrape time by [`TunnelCollector`].

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use kokoa_tunnel::key::PublicKey;
use kokoa_tunnel::Tunnel;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::sni::CertStore;

/// Labels of connection metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `https`, `http` or `tcp:<listen address>`.
    pub listener: String,
}

/// Labels of per-route admission counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabels {
    /// The route's configured host, or `tcp:<listen address>` for raw TCP routes.
    pub host: String,
}

/// Labels of refused connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `https`, `http` or `tcp:<listen address>`.
    pub listener: String,
    /// See [`crate::limit::Refusal::reason`]: `per_client`, `max_connections`, `acl`.
    pub reason: &'static str,
}

/// Labels of request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's configured host (`*.example.com` for wildcards), or `unrouted`.
    pub host: String,
    /// `1xx` .. `5xx`.
    pub class: &'static str,
}

/// Labels of byte counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByteLabels {
    /// The route's configured host, or the TCP route's listen address.
    pub route: String,
    /// `in` (client to origin) or `out` (origin to client).
    pub direction: &'static str,
}

/// Labels of dial errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DialLabels {
    /// The origin.
    pub origin: String,
    /// See [`crate::dial::DialError::reason`].
    pub reason: &'static str,
}

/// Labels of timeout counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimeoutLabels {
    /// `client_body` (a request body stalled or too slow) or `send` (a client that stopped
    /// reading its response: connection or HTTP/2 stream reset).
    pub kind: &'static str,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The edge's own metrics. Cheap to clone (every metric is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Connections accepted, by listener.
    pub connections_accepted: Family<ListenerLabels, Counter>,
    /// Connections open, by listener.
    pub connections_active: Family<ListenerLabels, Gauge>,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: Counter,
    /// Requests answered, by route host and status class.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from request head to the end of the response body.
    pub request_duration: Histogram,
    /// Body bytes proxied, by route and direction.
    pub bytes: Family<ByteLabels, Counter>,
    /// Failed dials to origin services.
    pub dial_errors: Family<DialLabels, Counter>,
    /// Requests answered 429, by route host.
    pub rate_limited: Family<HostLabels, Counter>,
    /// Connections closed right after accept, by listener and reason.
    pub connections_refused: Family<RefusedLabels, Counter>,
    /// Requests answered 403 and TCP connections closed by a route's allow/deny list.
    pub acl_denied: Family<HostLabels, Counter>,
    /// Requests answered 413 (body over the route's limit), by route host.
    pub body_too_large: Family<HostLabels, Counter>,
    /// Requests answered 503 "service down" (the origin refused the route's service port: its
    /// probes found the service down, or nothing listens there), by route host.
    pub service_down: Family<HostLabels, Counter>,
    /// Client connections closed for having no request in flight for `idle_timeout`.
    pub idle_closed: Counter,
    /// HTTP/1.1 client connections parked: idle, holding no HTTP buffers (see `http1`).
    pub parked: Gauge,
    /// HTTP/1.1 client connections lingering: answered early (a 413), reading and discarding
    /// the rest of the request body before the close.
    pub lingering: Gauge,
    /// Lingering connections closed while the client was still sending, at `lingering_time`.
    pub lingering_cut: Counter,
    /// Request bodies and responses cut off by `client_body_timeout` / `send_timeout`.
    pub timeouts: Family<TimeoutLabels, Counter>,
    /// Requests answered, all routes together: what heartbeats report, read from this atomic
    /// (not registered; `requests` carries the same count by label).
    pub requests_total: Counter,
    /// Requests answered with a 5xx, all routes together (heartbeats).
    pub errors_total: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections_accepted: Family::default(),
            connections_active: Family::default(),
            tls_handshake_failures: Counter::default(),
            requests: Family::default(),
            request_duration: duration_histogram(),
            bytes: Family::default(),
            dial_errors: Family::default(),
            rate_limited: Family::default(),
            connections_refused: Family::default(),
            acl_denied: Family::default(),
            body_too_large: Family::default(),
            service_down: Family::default(),
            idle_closed: Counter::default(),
            parked: Gauge::default(),
            lingering: Gauge::default(),
            lingering_cut: Counter::default(),
            timeouts: Family::default(),
            requests_total: Counter::default(),
            errors_total: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric in `registry` under the `kokoa_edge` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let edge = registry.sub_registry_with_prefix("kokoa_edge");
        edge.register(
            "connections_accepted",
            "Client connections accepted, by listener",
            self.connections_accepted.clone(),
        );
        edge.register(
            "connections_active",
            "Client connections open, by listener",
            self.connections_active.clone(),
        );
        edge.register(
            "tls_handshake_failures",
            "TLS handshakes that failed, timed out or were refused (unknown SNI)",
            self.tls_handshake_failures.clone(),
        );
        edge.register(
            "requests",
            "HTTP requests answered, by route host and status class",
            self.requests.clone(),
        );
        edge.register(
            "request_duration_seconds",
            "Time from request head to the end of the response body",
            self.request_duration.clone(),
        );
        edge.register(
            "bytes",
            "Body bytes proxied, by route and direction",
            self.bytes.clone(),
        );
        edge.register(
            "upstream_dial_errors",
            "Connections to origin services that could not be opened",
            self.dial_errors.clone(),
        );
        edge.register(
            "rate_limited",
            "Requests refused with 429 by the route's request rate limit, by route host",
            self.rate_limited.clone(),
        );
        edge.register(
            "connections_refused",
            "Client connections closed right after accept (connection caps, TCP allow/deny lists)",
            self.connections_refused.clone(),
        );
        edge.register(
            "acl_denied",
            "Requests (403) and raw TCP connections refused by a route's allow/deny list",
            self.acl_denied.clone(),
        );
        edge.register(
            "body_too_large",
            "Requests refused with 413 because the body exceeds the route's max_body_bytes",
            self.body_too_large.clone(),
        );
        edge.register(
            "service_down",
            "Requests answered 503 at once because the origin refused the route's service (down by its probes, or not listening), by route host",
            self.service_down.clone(),
        );
        edge.register(
            "idle_connections_closed",
            "Client connections closed after idle_timeout with no request in flight",
            self.idle_closed.clone(),
        );
        edge.register(
            "parked_connections",
            "Idle HTTP/1.1 client connections parked without HTTP buffers until their next request",
            self.parked.clone(),
        );
        edge.register(
            "lingering_connections",
            "HTTP/1.1 client connections answered before their request body ended (a 413), reading and discarding the rest before closing",
            self.lingering.clone(),
        );
        edge.register(
            "lingering_cut",
            "Lingering connections closed at lingering_time while the client was still sending",
            self.lingering_cut.clone(),
        );
        edge.register(
            "timeouts",
            "Request bodies (client_body_timeout, client_body_min_rate) and responses (send_timeout) cut off because the client stalled",
            self.timeouts.clone(),
        );
    }

    /// The timeout counter of `kind` (`client_body` or `send`).
    pub fn timeout_counter(&self, kind: &'static str) -> Counter {
        self.timeouts.get_or_create(&TimeoutLabels { kind }).clone()
    }

    /// Counts an answered request of `host` (the route's host, or `unrouted`) by status
    /// class, and in the totals heartbeats read.
    pub fn count_request(&self, host: &str, class: &'static str) {
        self.requests
            .get_or_create(&RequestLabels {
                host: host.to_owned(),
                class,
            })
            .inc();
        self.requests_total.inc();
        if class == "5xx" {
            self.errors_total.inc();
        }
    }

    /// Counts a connection refused at accept.
    pub fn refused(&self, listener: &str, refusal: crate::limit::Refusal) {
        self.connections_refused
            .get_or_create(&RefusedLabels {
                listener: listener.to_owned(),
                reason: refusal.reason(),
            })
            .inc();
    }

    /// The per-host counter of `family` (`rate_limited`, `acl_denied`, `body_too_large`).
    pub fn host_counter(family: &Family<HostLabels, Counter>, host: &str) -> Counter {
        family
            .get_or_create(&HostLabels {
                host: host.to_owned(),
            })
            .clone()
    }

    /// Counts an accepted connection and returns a guard that keeps it in the active gauge.
    pub fn connection(&self, listener: &str) -> ConnectionGuard {
        let labels = ListenerLabels {
            listener: listener.to_owned(),
        };
        self.connections_accepted.get_or_create(&labels).inc();
        let active = self.connections_active.get_or_create(&labels).clone();
        active.inc();
        ConnectionGuard { active }
    }
}

/// Decrements the active-connections gauge when dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    active: Gauge,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// The class label of a status code.
pub fn status_class(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Read from the live certificate store at scrape time:
/// `kokoa_edge_certificate_placeholder` (1 while the edge serves only its self-signed
/// placeholder: no certificate configured or received from control yet) and
/// `kokoa_edge_certificate_expiry_timestamp_seconds{name}` (each served name's notAfter, so an
/// expired or expiring certificate shows in monitoring rather than only in a start-up warning).
pub struct PlaceholderCollector {
    certificates: Arc<ArcSwap<CertStore>>,
}

/// Labels of certificate gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    name: String,
}

impl PlaceholderCollector {
    /// Watches `certificates`.
    pub fn new(certificates: Arc<ArcSwap<CertStore>>) -> Self {
        Self { certificates }
    }
}

impl std::fmt::Debug for PlaceholderCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaceholderCollector")
            .finish_non_exhaustive()
    }
}

impl Collector for PlaceholderCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "kokoa_edge_certificate_placeholder",
            "1 while the edge serves only its self-signed placeholder certificate",
            None,
            MetricType::Gauge,
        )?;
        let store = self.certificates.load();
        metric.encode_gauge(&i64::from(store.is_placeholder()))?;
        let mut expiry = encoder.encode_descriptor(
            "kokoa_edge_certificate_expiry_timestamp_seconds",
            "When each served certificate name expires (the leaf's notAfter, Unix seconds)",
            None,
            MetricType::Gauge,
        )?;
        for (name, not_after) in store.expiries() {
            expiry
                .encode_family(&CertificateLabels { name: name.clone() })?
                .encode_gauge(not_after)?;
        }
        Ok(())
    }
}

/// Reads [`Tunnel::stats`] on every scrape.
pub struct TunnelCollector {
    tunnel: Tunnel,
    origin_names: HashMap<PublicKey, String>,
}

impl TunnelCollector {
    /// `origin_names` labels each peer by its configured name (the key is used otherwise).
    pub fn new(tunnel: Tunnel, origin_names: HashMap<PublicKey, String>) -> Self {
        Self {
            tunnel,
            origin_names,
        }
    }
}

impl std::fmt::Debug for TunnelCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelCollector")
            .field("origins", &self.origin_names.len())
            .finish()
    }
}

impl Collector for TunnelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.tunnel.stats();
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for (name, help, value) in [
            (
                "kokoa_tunnel_handshakes",
                "WireGuard handshakes completed",
                stats.handshakes_completed,
            ),
            (
                "kokoa_tunnel_udp_rx_bytes",
                "UDP payload bytes received",
                stats.bytes_rx,
            ),
            (
                "kokoa_tunnel_udp_tx_bytes",
                "UDP payload bytes sent",
                stats.bytes_tx,
            ),
            (
                "kokoa_tunnel_dropped_junk",
                "Datagrams that were not valid WireGuard for any peer",
                stats.dropped_junk,
            ),
            (
                "kokoa_tunnel_dropped_source",
                "Inner packets dropped because their source is outside the peer's allowed IPs",
                stats.dropped_source,
            ),
            (
                "kokoa_tunnel_streams_refused_window",
                "Streams refused because the window budget had no room even for the smallest buffers",
                stats.refused_window,
            ),
            (
                "kokoa_tunnel_stalled_resets",
                "Streams reset because none of their data was acknowledged for [tunnel] stall_timeout",
                stats.stalled_resets,
            ),
            (
                "kokoa_tunnel_unknown_session_handshakes",
                "Handshakes started toward a peer that sent data on a session this node does not have",
                stats.unknown_session_handshakes,
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            metric.encode_counter::<NoLabelSet, _, u64>(&value, None)?;
        }
        let mut streams = encoder.encode_descriptor(
            "kokoa_tunnel_active_streams",
            "TCP streams open in the tunnel",
            None,
            MetricType::Gauge,
        )?;
        streams.encode_gauge(&clamp(stats.active_streams))?;
        for (name, help, value) in [
            (
                "kokoa_tunnel_window_bytes",
                "Bytes of stream buffers allocated (open streams and sockets kept for reuse)",
                stats.window_bytes,
            ),
            (
                "kokoa_tunnel_window_budget_bytes",
                "The node's budget for stream buffers ([tunnel] window_budget)",
                stats.window_budget,
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            metric.encode_gauge(&clamp(value))?;
        }

        let label = |key: &PublicKey| {
            [(
                "origin",
                self.origin_names
                    .get(key)
                    .cloned()
                    .unwrap_or_else(|| key.to_base64()),
            )]
        };
        let mut age = encoder.encode_descriptor(
            "kokoa_tunnel_peer_last_handshake_age_seconds",
            "Seconds since the last completed handshake with each origin (absent before the first)",
            None,
            MetricType::Gauge,
        )?;
        for peer in &stats.peers {
            if let Some(last) = peer.last_handshake {
                age.encode_family(&label(&peer.public_key))?
                    .encode_gauge(&last.as_secs_f64())?;
            }
        }
        let mut rx = encoder.encode_descriptor(
            "kokoa_tunnel_peer_rx_bytes",
            "Bytes received from each origin",
            None,
            MetricType::Counter,
        )?;
        for peer in &stats.peers {
            rx.encode_family(&label(&peer.public_key))?
                .encode_counter::<NoLabelSet, _, u64>(&peer.rx_bytes, None)?;
        }
        let mut tx = encoder.encode_descriptor(
            "kokoa_tunnel_peer_tx_bytes",
            "Bytes sent to each origin",
            None,
            MetricType::Counter,
        )?;
        for peer in &stats.peers {
            tx.encode_family(&label(&peer.public_key))?
                .encode_counter::<NoLabelSet, _, u64>(&peer.tx_bytes, None)?;
        }
        Ok(())
    }
}
