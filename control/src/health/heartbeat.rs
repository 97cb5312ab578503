//! A node's heartbeat as control keeps and shows it: the typed form of the protobuf
//! [`pb::Heartbeat`], stored as JSON in the node's row (`NodeState::heartbeat`) and read back
//! by the health checker, the API's node views and the CLI.
//!
//! Reading is lenient ([`Heartbeat::from_value`]): a field a node did not send (an older node)
//! takes its default, so rows written by earlier versions still read.

use kokoa_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One WireGuard peer of the node as its heartbeat reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerHeartbeat {
    /// The peer's WireGuard public key (base64).
    pub public_key: String,
    /// Its current UDP endpoint.
    pub endpoint: Option<String>,
    /// A handshake completed within the last 180 s.
    pub up: bool,
    /// Age of the last completed handshake; `None` if there never was one.
    pub last_handshake_age_ms: Option<u64>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
    /// Tunnel streams open with the peer.
    pub active_streams: u64,
}

/// One service of an origin as the origin judges it from its probes (HTTP `GET` of the
/// service's health path, or a TCP connect) and its streams.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceHeartbeat {
    /// The service's name.
    pub name: String,
    /// Its port inside the tunnel.
    pub port: u16,
    /// Healthy as the origin sees it.
    pub healthy: bool,
    /// Why not, when unhealthy ("connection refused", "cannot resolve ...").
    pub error: Option<String>,
    /// What the origin probes (`GET http://127.0.0.1:8001/healthz`, `TCP connect ...`);
    /// `None` from origins that do not probe.
    pub check: Option<String>,
    /// Failed probes (or streams) in a row.
    pub consecutive_failures: u32,
    /// Milliseconds since it last changed between up and down, when the origin said.
    pub since_ms: Option<u64>,
}

/// What a node reported in its latest heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Heartbeat {
    /// The config version it runs.
    pub applied_version: u64,
    /// Its WireGuard peers (an edge's origins, an origin's edges).
    pub peers: Vec<PeerHeartbeat>,
    /// Client connections (edge) or tunnel streams (origin) open.
    pub active_connections: u64,
    /// Requests (edge) or streams (origin) per second since the heartbeat before.
    pub requests_per_second: f64,
    /// Errors (5xx, dial failures) per second since the heartbeat before.
    pub errors_per_second: f64,
    /// CPU use in cores since the heartbeat before.
    pub cpu_cores: f64,
    /// Resident memory in bytes.
    pub memory_bytes: u64,
    /// Seconds since the node started.
    pub uptime_seconds: u64,
    /// An origin's services.
    pub services: Vec<ServiceHeartbeat>,
}

impl Heartbeat {
    /// The stored form of a heartbeat as it arrived.
    pub fn from_proto(h: &pb::Heartbeat) -> Self {
        Heartbeat {
            applied_version: h.applied_version,
            peers: h
                .peers
                .iter()
                .map(|p| PeerHeartbeat {
                    public_key: p.public_key.clone(),
                    endpoint: (!p.endpoint.is_empty()).then(|| p.endpoint.clone()),
                    up: p.up,
                    last_handshake_age_ms: p.last_handshake_age_ms,
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                    active_streams: p.active_streams,
                })
                .collect(),
            active_connections: h.active_connections,
            requests_per_second: finite(h.requests_per_second),
            errors_per_second: finite(h.errors_per_second),
            cpu_cores: finite(h.cpu_cores),
            memory_bytes: h.memory_bytes,
            uptime_seconds: h.uptime_seconds,
            services: h
                .services
                .iter()
                .map(|s| ServiceHeartbeat {
                    name: s.name.clone(),
                    port: u16::try_from(s.port).unwrap_or(0),
                    healthy: s.healthy,
                    error: (!s.error.is_empty()).then(|| s.error.clone()),
                    check: (!s.check.is_empty()).then(|| s.check.clone()),
                    consecutive_failures: s.consecutive_failures,
                    since_ms: (!s.check.is_empty()).then_some(s.since_ms),
                })
                .collect(),
        }
    }

    /// The JSON stored in the node's row.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Reads a stored heartbeat; `None` when it is not an object (nothing to show).
    pub fn from_value(value: &Value) -> Option<Self> {
        if !value.is_object() {
            return None;
        }
        serde_json::from_value(value.clone()).ok()
    }
}

/// JSON has no NaN or infinity: a node that sends one gets 0 stored.
fn finite(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_old_rows() {
        let proto = pb::Heartbeat {
            applied_version: 7,
            peers: vec![pb::PeerStatus {
                public_key: "k".into(),
                endpoint: String::new(),
                up: true,
                last_handshake_age_ms: Some(1500),
                rx_bytes: 1,
                tx_bytes: 2,
                active_streams: 3,
            }],
            requests_per_second: f64::NAN,
            services: vec![pb::ServiceHealth {
                name: "web".into(),
                port: 8001,
                healthy: false,
                error: "connection refused".into(),
                check: "TCP connect 127.0.0.1:8001".into(),
                consecutive_failures: 3,
                ..Default::default()
            }],
            ..Default::default()
        };
        let beat = Heartbeat::from_proto(&proto);
        assert_eq!(beat.peers[0].endpoint, None);
        assert_eq!(beat.requests_per_second, 0.0);
        assert_eq!(
            beat.services[0].error.as_deref(),
            Some("connection refused")
        );
        assert_eq!(
            beat.services[0].check.as_deref(),
            Some("TCP connect 127.0.0.1:8001")
        );
        assert_eq!(beat.services[0].consecutive_failures, 3);
        assert_eq!(Heartbeat::from_value(&beat.to_value()), Some(beat));
        // A row from before services were reported.
        let old = serde_json::json!({"applied_version": 3, "peers": [], "cpu_cores": 0.5});
        let read = Heartbeat::from_value(&old).expect("reads");
        assert_eq!((read.applied_version, read.services.len()), (3, 0));
        assert!(Heartbeat::from_value(&Value::Null).is_none());
    }
}
