//! The origin in control mode: applies the [`OriginSnapshot`]s `kokoa-control` streams.
//!
//! [`OriginControl`] is the origin's [`Applier`]. A snapshot is validated completely first
//! (the same rules as the TOML file, through [`OriginConfig::with_snapshot`]; edge endpoints
//! and service addresses resolved); on any error nothing is applied and the reason goes back
//! in the NACK. Then the tunnel's peers (and private key) are replaced and the service table
//! swapped ([`Services::replace`]): streams already bridged keep their local connection, and
//! peers whose settings did not change keep their sessions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kokoa_node::control::{peer_statuses, sum_counters, Applier, NodeStatus};
use kokoa_proto::v1::{snapshot, NodeKind, OriginSnapshot, Snapshot};
use kokoa_tunnel::key::{PrivateKey, PublicKey};
use kokoa_tunnel::Tunnel;
use prometheus_client::registry::Registry;
use tokio::sync::Mutex;

use crate::config::OriginConfig;
use crate::metrics::Metrics;
use crate::service::Services;

/// The origin's control-mode state: what a snapshot replaces.
pub struct OriginControl {
    base: OriginConfig,
    tunnel: Tunnel,
    services: Arc<Services>,
    /// Whether the tunnel runs a real key (configured locally or sent by control).
    has_key: AtomicBool,
    counters: Registry,
    apply: Mutex<()>,
}

impl OriginControl {
    /// Applies snapshots over `base` (the bootstrap config) to `tunnel` and `services`.
    pub fn new(
        base: OriginConfig,
        tunnel: Tunnel,
        services: Arc<Services>,
        metrics: &Metrics,
    ) -> Self {
        let mut counters = Registry::default();
        counters.register(
            "streams",
            "streams accepted",
            metrics.streams_accepted.clone(),
        );
        counters.register(
            "failures",
            "local connect failures",
            metrics.local_connect_failures.clone(),
        );
        Self {
            has_key: AtomicBool::new(!base.tunnel.key_from_control),
            base,
            tunnel,
            services,
            counters,
            apply: Mutex::new(()),
        }
    }

    async fn apply_origin(&self, version: u64, origin: &OriginSnapshot) -> Result<(), String> {
        let _serial = self.apply.lock().await;
        let new_key = if origin.private_key.is_empty() {
            if !self.has_key.load(Ordering::Acquire) {
                return Err("the snapshot has no private key and this origin has none of its own: let control manage the origin's key, or set [tunnel] private_key_file".to_owned());
            }
            None
        } else {
            Some(
                PrivateKey::from_base64(origin.private_key.trim())
                    .map_err(|e| format!("private_key: not a WireGuard private key ({e})"))?,
            )
        };
        let own_key: PublicKey = new_key
            .as_ref()
            .map_or_else(|| self.tunnel.public_key(), PrivateKey::public_key);
        let config = self
            .base
            .with_snapshot(origin, Some(own_key))
            .map_err(|e| e.to_string())?;
        let (peers, table) = crate::prepare(&config, true)
            .await
            .map_err(|e| format!("{e:#}"))?;

        self.tunnel
            .try_set_peers(peers.peers)
            .map_err(|e| format!("edges: the tunnel refused the peer set: {e}"))?;
        if let Some(key) = new_key {
            if key.public_key() != self.tunnel.public_key() {
                self.tunnel.set_private_key(key);
            }
            self.has_key.store(true, Ordering::Release);
        }
        for service in table.iter() {
            tracing::debug!(service = %service.name, port = service.port, local = %service.local, "serving");
        }
        let services = table.len();
        self.services.replace(table, &self.tunnel);
        tracing::info!(
            version,
            address = %config.address,
            edges = config.edges.len(),
            services,
            public_key = %self.tunnel.public_key(),
            "origin snapshot applied"
        );
        Ok(())
    }
}

impl Applier for OriginControl {
    fn kind(&self) -> NodeKind {
        NodeKind::Origin
    }

    async fn apply(&self, snapshot: &Snapshot) -> Result<(), String> {
        match &snapshot.node {
            Some(snapshot::Node::Origin(origin)) => {
                self.apply_origin(snapshot.version, origin).await
            }
            Some(snapshot::Node::Edge(_)) => {
                Err("this is an origin, but the snapshot is for an edge".to_owned())
            }
            None => Err("the snapshot holds no origin config".to_owned()),
        }
    }

    fn status(&self) -> NodeStatus {
        let stats = self.tunnel.stats();
        NodeStatus {
            active_connections: stats.active_streams,
            peers: peer_statuses(&stats),
            requests_total: sum_counters(&self.counters, "streams", None),
            errors_total: sum_counters(&self.counters, "failures", None),
        }
    }
}
