//! Applies what the origin runs ([`OriginSpec`]: from its config file at start and on SIGHUP,
//! or from a control snapshot) to the running origin. One applier for both, so a reloaded
//! file gets the same validation and the same no-drop guarantees as a control update.
//!
//! [`OriginApplier::apply`] validates the whole spec first (the model's rules across objects)
//! and refuses it, naming the field and object, if it breaks one; nothing changes then. Then
//! the tunnel's peers (and private key) are replaced and the service table swapped
//! ([`Services::replace`]): streams already bridged keep their local connection, and peers
//! whose settings did not change keep their sessions. Edge endpoints written as host names are
//! resolved here (one that does not resolve is left out with a warning: the origin waits for
//! that edge's packets); service addresses are not resolved here at all, but when a probe or a
//! stream needs them, so a name that does not resolve makes that one service unhealthy and
//! never refuses the config.
//!
//! [`OriginApplier`] is also the control client's [`Applier`]: a snapshot is converted straight
//! into the model ([`OriginSpec::from_proto`]) and applied; a NACK names the field and object.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kokoa_model::{EdgePeer, ModelError, ObjectKind, ObjectRef, OriginSpec, TunnelIp};
use kokoa_node::control::{peer_statuses, Applier, NodeStatus};
use kokoa_proto::v1::{snapshot, NodeKind, OriginSnapshot, Snapshot};
use kokoa_tunnel::key::{PrivateKey, PublicKey};
use kokoa_tunnel::{PeerConfig, Tunnel};
use tokio::sync::Mutex;

use crate::config::OriginConfig;
use crate::metrics::Metrics;
use crate::service::{ServiceTable, Services};

/// The origin's running state: what a spec replaces.
pub struct OriginApplier {
    base: OriginConfig,
    tunnel: Tunnel,
    services: Arc<Services>,
    metrics: Metrics,
    /// Whether the tunnel runs a real key (configured locally or sent by control).
    has_key: AtomicBool,
    apply: Mutex<()>,
}

impl OriginApplier {
    /// Applies specs over `base` (the node's own config) to `tunnel` and `services`.
    pub fn new(
        base: OriginConfig,
        tunnel: Tunnel,
        services: Arc<Services>,
        metrics: &Metrics,
    ) -> Self {
        Self {
            has_key: AtomicBool::new(!base.tunnel.key_from_control),
            base,
            tunnel,
            services,
            metrics: metrics.clone(),
            apply: Mutex::new(()),
        }
    }

    /// The probe settings the running services are judged by (fixed at start).
    pub fn checks(&self) -> kokoa_model::ServiceChecks {
        *self.services.checks()
    }

    /// Validates `spec` as a whole and applies it, or changes nothing and says which field of
    /// which object breaks a rule. `private_key` is control's key for the origin, when it
    /// manages it; `version` is for logs.
    pub async fn apply(
        &self,
        version: u64,
        spec: &OriginSpec,
        private_key: Option<PrivateKey>,
    ) -> Result<(), ModelError> {
        let _serial = self.apply.lock().await;
        if private_key.is_none() && !self.has_key.load(Ordering::Acquire) {
            return Err(ModelError::new(
                "private_key",
                "the snapshot has no private key and this origin has none of its own: let control manage the origin's key, or set [tunnel] private_key_file",
            )
            .about(ObjectRef::new(ObjectKind::Node, "")));
        }
        let own_key: PublicKey = private_key
            .as_ref()
            .map_or_else(|| self.tunnel.public_key(), PrivateKey::public_key);
        spec.validate(Some(own_key), self.base.tunnel.options.overlay)?;
        let prefer_ipv4 = self.base.tunnel.listen.is_ipv4();
        let peers = peer_configs(spec.address, &spec.edges, prefer_ipv4).await;
        let table = ServiceTable::new(&spec.services, &self.services.load());

        self.tunnel.try_set_peers(peers).map_err(|e| {
            ModelError::new("edges", format!("the tunnel refused the peer set: {e}"))
        })?;
        if let Some(key) = private_key {
            if key.public_key() != self.tunnel.public_key() {
                self.tunnel.set_private_key(key);
            }
            self.has_key.store(true, Ordering::Release);
        }
        for service in table.iter() {
            tracing::debug!(service = %service.name, port = service.port, local = %service.local, "serving");
        }
        let count = table.len();
        // The prober starts a round at once for the new table: a host name that does not
        // resolve shows as that service's health, never as a refused config.
        self.services.replace(table, &self.tunnel);
        if let Some(options) = spec.tunnel {
            if options.mtu != self.base.tunnel.options.mtu
                || options.tcp_buffer != self.base.tunnel.options.tcp_buffer
                || options.window != self.base.tunnel.options.window
            {
                tracing::warn!(mtu = %options.mtu, tcp_buffer = %options.tcp_buffer, "new tunnel MTU, buffer or window bounds: they take effect when the origin restarts");
            }
        }
        tracing::info!(
            version,
            address = %spec.address,
            edges = spec.edges.len(),
            services = count,
            public_key = %self.tunnel.public_key(),
            "origin config applied"
        );
        Ok(())
    }

    async fn apply_snapshot(
        &self,
        version: u64,
        origin: &OriginSnapshot,
    ) -> Result<(), ModelError> {
        let private_key = if origin.private_key.is_empty() {
            None
        } else {
            Some(
                PrivateKey::from_base64(origin.private_key.trim()).map_err(|e| {
                    ModelError::new("private_key", format!("not a WireGuard private key ({e})"))
                        .about(ObjectRef::new(ObjectKind::Node, ""))
                })?,
            )
        };
        let spec = OriginSpec::from_proto(origin)?;
        self.apply(version, &spec, private_key).await
    }
}

/// The tunnel peers for `edges` of the origin at `address`. An endpoint written as a host name
/// is resolved now; one that does not resolve is left out with a warning (the origin waits for
/// that edge's packets; the next apply tries again).
pub async fn peer_configs(
    address: TunnelIp,
    edges: &[EdgePeer],
    prefer_ipv4: bool,
) -> Vec<PeerConfig> {
    let mut peers = Vec::with_capacity(edges.len());
    for edge in edges {
        let endpoint = match &edge.endpoint {
            Some(endpoint) => kokoa_node::resolve::endpoint(endpoint, prefer_ipv4)
                .await
                .map_err(|error| {
                    tracing::warn!(edge = %edge.name, %endpoint, %error, "cannot resolve the edge's endpoint; waiting for its packets");
                })
                .ok(),
            None => None,
        };
        peers.push(PeerConfig {
            public_key: edge.public_key,
            endpoint,
            allowed_ips: vec![ipnet::Ipv4Net::from(edge.address.ip())],
            local_address: address.ip(),
            persistent_keepalive: edge.keepalive.seconds(),
        });
    }
    peers
}

impl Applier for OriginApplier {
    fn kind(&self) -> NodeKind {
        NodeKind::Origin
    }

    async fn apply(&self, snapshot: &Snapshot) -> Result<(), ModelError> {
        match &snapshot.node {
            Some(snapshot::Node::Origin(origin)) => {
                self.apply_snapshot(snapshot.version, origin).await
            }
            Some(snapshot::Node::Edge(_)) => Err(ModelError::value(
                "this is an origin, but the snapshot is for an edge",
            )),
            None => Err(ModelError::value("the snapshot holds no origin config")),
        }
    }

    fn status(&self) -> NodeStatus {
        let stats = self.tunnel.stats();
        NodeStatus {
            active_connections: stats.active_streams,
            peers: peer_statuses(&stats),
            requests_total: self.metrics.streams_total.get(),
            errors_total: self.metrics.errors_total.get(),
            services: self.services.health(),
            tcp_routes: Vec::new(),
        }
    }
}
