//! Prometheus metrics of the origin.
//!
//! Per-stream counters are updated by the bridges; tunnel-wide numbers (handshakes, per-edge
//! handshake age, drops) are read from [`Tunnel::stats`] at scrape time by [`TunnelCollector`],
//! so nothing per packet touches a metric here.

use std::collections::HashMap;

use kokoa_tunnel::key::PublicKey;
use kokoa_tunnel::Tunnel;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Labels of per-service metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The service name.
    pub service: String,
}

/// Labels of the byte counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByteLabels {
    /// The service name.
    pub service: String,
    /// `to_local` (from the edge to the app) or `to_tunnel` (from the app to the edge).
    pub direction: &'static str,
}

/// Labels of local connect failures.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// The service name.
    pub service: String,
    /// `resolve`, `refused`, `timeout` or `error`.
    pub reason: &'static str,
}

/// Labels of the probe counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    /// The service name.
    pub service: String,
    /// `pass` or `fail`.
    pub result: &'static str,
}

/// The origin's own metrics. Cheap to clone (every metric is an `Arc` inside).
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Streams accepted from the tunnel, by service.
    pub streams_accepted: Family<ServiceLabels, Counter>,
    /// Streams currently bridged, by service.
    pub streams_active: Family<ServiceLabels, Gauge>,
    /// Streams on a port with no service that reached a bridge (a race with a table change).
    /// Reported together with the tunnel's refused SYNs as
    /// `kokoa_origin_streams_unrouted_total` by [`TunnelCollector`].
    pub streams_unrouted: Counter,
    /// Failed connects to a local service.
    pub local_connect_failures: Family<FailureLabels, Counter>,
    /// Bytes bridged, by service and direction.
    pub bytes: Family<ByteLabels, Counter>,
    /// Probes of the services ([`crate::probe`]), by service and result.
    pub probes: Family<ProbeLabels, Counter>,
    /// Streams accepted, all services together: what heartbeats report, read from this atomic
    /// (not registered; `streams_accepted` carries the same count by service).
    pub streams_total: Counter,
    /// Streams that failed (unrouted, or the local app unreachable), for heartbeats.
    pub errors_total: Counter,
}

impl Metrics {
    /// Registers every metric in `registry` under the `kokoa_origin` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let origin = registry.sub_registry_with_prefix("kokoa_origin");
        origin.register(
            "streams_accepted",
            "Tunnel streams accepted, by service",
            self.streams_accepted.clone(),
        );
        origin.register(
            "streams_active",
            "Tunnel streams currently bridged to a local service",
            self.streams_active.clone(),
        );
        origin.register(
            "local_connect_failures",
            "Connects to a local service that failed (the edge answers 502)",
            self.local_connect_failures.clone(),
        );
        origin.register(
            "bytes",
            "Bytes bridged between tunnel and local services",
            self.bytes.clone(),
        );
        origin.register(
            "service_probes",
            "Probes of the local services (HTTP GET of health_path, or TCP connect), by service and result",
            self.probes.clone(),
        );
    }
}

/// Reads [`Tunnel::stats`] on every scrape.
pub struct TunnelCollector {
    tunnel: Tunnel,
    edge_names: HashMap<PublicKey, String>,
    unrouted: Counter,
}

impl TunnelCollector {
    /// `edge_names` labels each peer by its configured name (the key is used otherwise).
    /// `unrouted` is [`Metrics::streams_unrouted`]: added to the SYNs the tunnel refused for
    /// ports without a service, it is `kokoa_origin_streams_unrouted_total`.
    pub fn new(tunnel: Tunnel, edge_names: HashMap<PublicKey, String>, unrouted: Counter) -> Self {
        Self {
            tunnel,
            edge_names,
            unrouted,
        }
    }
}

impl std::fmt::Debug for TunnelCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelCollector")
            .field("edges", &self.edge_names.len())
            .finish()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    metric.encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    metric.encode_gauge(&value)
}

impl Collector for TunnelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.tunnel.stats();
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        counter(
            &mut encoder,
            "kokoa_tunnel_handshakes",
            "WireGuard handshakes completed",
            stats.handshakes_completed,
        )?;
        counter(
            &mut encoder,
            "kokoa_tunnel_datagrams_rx",
            "UDP datagrams received",
            stats.datagrams_rx,
        )?;
        counter(
            &mut encoder,
            "kokoa_tunnel_datagrams_tx",
            "UDP datagrams sent",
            stats.datagrams_tx,
        )?;
        counter(
            &mut encoder,
            "kokoa_tunnel_udp_rx_bytes",
            "UDP payload bytes received",
            stats.bytes_rx,
        )?;
        counter(
            &mut encoder,
            "kokoa_tunnel_udp_tx_bytes",
            "UDP payload bytes sent",
            stats.bytes_tx,
        )?;
        counter(
            &mut encoder,
            "kokoa_tunnel_dropped_junk",
            "Datagrams that were not valid WireGuard for any peer",
            stats.dropped_junk,
        )?;
        counter(
            &mut encoder,
            "kokoa_tunnel_dropped_source",
            "Inner packets dropped because their source is outside the peer's allowed IPs",
            stats.dropped_source,
        )?;
        gauge(
            &mut encoder,
            "kokoa_tunnel_active_streams",
            "TCP streams open in the tunnel",
            clamp(stats.active_streams),
        )?;
        counter(
            &mut encoder,
            "kokoa_origin_streams_unrouted",
            "Streams to a port with no service: SYNs the tunnel refused with RST, and streams whose service went away before they were bridged",
            stats.refused_ports + self.unrouted.get(),
        )?;
        gauge(
            &mut encoder,
            "kokoa_tunnel_window_bytes",
            "Bytes of stream buffers allocated (open streams and sockets kept for reuse)",
            clamp(stats.window_bytes),
        )?;
        gauge(
            &mut encoder,
            "kokoa_tunnel_window_budget_bytes",
            "The node's budget for stream buffers ([tunnel] window_budget)",
            clamp(stats.window_budget),
        )?;
        counter(
            &mut encoder,
            "kokoa_tunnel_streams_refused_window",
            "Streams refused because the window budget had no room even for the smallest buffers",
            stats.refused_window,
        )?;
        counter(
            &mut encoder,
            "kokoa_tunnel_stalled_resets",
            "Streams reset because none of their data was acknowledged for [tunnel] stall_timeout",
            stats.stalled_resets,
        )?;
        counter(
            &mut encoder,
            "kokoa_tunnel_unknown_session_handshakes",
            "Handshakes started toward a peer that sent data on a session this node does not have",
            stats.unknown_session_handshakes,
        )?;

        let label = |key: &PublicKey| {
            self.edge_names
                .get(key)
                .cloned()
                .unwrap_or_else(|| key.to_base64())
        };
        let mut age = encoder.encode_descriptor(
            "kokoa_tunnel_peer_last_handshake_age_seconds",
            "Seconds since the last completed handshake with each edge (absent before the first)",
            None,
            MetricType::Gauge,
        )?;
        for peer in &stats.peers {
            if let Some(last) = peer.last_handshake {
                let labels = [("edge", label(&peer.public_key))];
                age.encode_family(&labels)?
                    .encode_gauge(&last.as_secs_f64())?;
            }
        }
        let mut rx = encoder.encode_descriptor(
            "kokoa_tunnel_peer_rx_bytes",
            "Bytes received from each edge",
            None,
            MetricType::Counter,
        )?;
        for peer in &stats.peers {
            let labels = [("edge", label(&peer.public_key))];
            rx.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&peer.rx_bytes, None)?;
        }
        let mut tx = encoder.encode_descriptor(
            "kokoa_tunnel_peer_tx_bytes",
            "Bytes sent to each edge",
            None,
            MetricType::Counter,
        )?;
        for peer in &stats.peers {
            let labels = [("edge", label(&peer.public_key))];
            tx.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&peer.tx_bytes, None)?;
        }
        let mut streams = encoder.encode_descriptor(
            "kokoa_tunnel_peer_active_streams",
            "TCP streams open with each edge",
            None,
            MetricType::Gauge,
        )?;
        for peer in &stats.peers {
            let labels = [("edge", label(&peer.public_key))];
            streams
                .encode_family(&labels)?
                .encode_gauge(&clamp(peer.active_streams))?;
        }
        Ok(())
    }
}

/// `kokoa_origin_service_healthy{service}`: 1 while the service is up, 0 while it is down (its
/// probes and streams failed `unhealthy_threshold` times in a row: an address that does not
/// resolve, an app that refuses, times out or answers an error status; its tunnel port refuses
/// streams meanwhile). Read from the live service table at scrape time.
pub struct ServiceHealthCollector {
    services: std::sync::Arc<crate::service::Services>,
}

impl ServiceHealthCollector {
    /// Watches `services`.
    pub fn new(services: std::sync::Arc<crate::service::Services>) -> Self {
        Self { services }
    }
}

impl std::fmt::Debug for ServiceHealthCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHealthCollector")
            .finish_non_exhaustive()
    }
}

impl Collector for ServiceHealthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "kokoa_origin_service_healthy",
            "1 while the service is up, 0 while it is down (failed unhealthy_threshold probes or streams in a row; its tunnel port then refuses streams)",
            None,
            MetricType::Gauge,
        )?;
        for health in self.services.health() {
            metric
                .encode_family(&ServiceLabels {
                    service: health.name,
                })?
                .encode_gauge(&i64::from(health.healthy))?;
        }
        Ok(())
    }
}
