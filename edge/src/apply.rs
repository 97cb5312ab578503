//! Applies what the edge serves ([`EdgeSpec`]: from its config file at start and on SIGHUP, or
//! from a control snapshot) to the running edge. One applier for both, so a reloaded file gets
//! the same validation and the same no-drop guarantees as a control update.
//!
//! [`EdgeApplier::apply`] validates the whole spec first (the model's rules across objects:
//! origin references, duplicate names, address plan) and refuses it, naming the object, if it
//! breaks one; nothing is changed then. A snapshot that fits the model is applied in an order
//! that never routes to something missing: tunnel peers (and the private key), the origin map,
//! the route table, connection limits, certificates, ACME challenges, TCP listeners. Each is an
//! immutable snapshot behind `ArcSwap` (or a listener task), so connections in flight finish on
//! what they started with and nothing unrelated is dropped.
//!
//! Not the whole spec's problem: a TCP route whose port cannot be bound (in use, or overlapping
//! one of the edge's own listeners) is reported for that route (heartbeat, metric, log) and the
//! rest applies; an expired certificate is served with a loud warning and its expiry exported.
//! Tunnel MTU and buffer changes take effect at the next start (the netstacks are sized then).
//!
//! [`EdgeApplier`] is also the control client's [`Applier`]: a snapshot is converted straight
//! into the model ([`EdgeSpec::from_proto`]) and applied; a NACK names the field and object.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use kokoa_model::{EdgeLimits, EdgeSpec, ModelError, ObjectKind, ObjectRef, OriginPeer};
use kokoa_node::control::{peer_statuses, Applier, NodeStatus};
use kokoa_node::drain::DrainWatch;
use kokoa_proto::v1::{snapshot, EdgeSnapshot, NodeKind, Snapshot, TcpRouteStatus};
use kokoa_tunnel::key::{PrivateKey, PublicKey};
use kokoa_tunnel::{PeerConfig, Tunnel};
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use crate::acme::{AcmeChallenges, HttpChallenge, TlsAlpnChallenge};
use crate::config::EdgeConfig;
use crate::dial::{origin_map, Dialer, OriginMap};
use crate::https::{HttpLimits, SharedHttpLimits};
use crate::limit::ConnectionLimiter;
use crate::metrics::Metrics;
use crate::route::RouteTable;
use crate::sni::CertStore;
use crate::tcp::{TcpForwarder, TcpRoute};

/// The raw TCP routes that come and go with specs: one listener task per route.
///
/// Routes can be set before the edge serves (the persisted snapshot or the file is applied
/// first); their listeners are bound at once and start accepting when [`TcpRoutes::start`]
/// is called. A route whose listener cannot be bound is kept as failed, with the reason, and
/// bound again with the next spec that still has it.
pub struct TcpRoutes<D: Dialer> {
    dialer: Arc<D>,
    metrics: Metrics,
    connections: Arc<ConnectionLimiter>,
    state: Mutex<TcpState>,
}

#[derive(Default)]
struct TcpState {
    /// Set while serving: what each listener task needs to take part in draining.
    runtime: Option<(DrainWatch, watch::Receiver<bool>)>,
    running: BTreeMap<SocketAddr, RunningRoute>,
    /// Routes of the current spec that could not listen, with why.
    failed: BTreeMap<SocketAddr, (TcpRoute, String)>,
}

struct RunningRoute {
    route: TcpRoute,
    task: Option<JoinHandle<()>>,
    /// Bound before serving started; handed to a task by `start`.
    pending: Option<TcpListener>,
}

/// Listeners bound for a spec's new TCP routes, not yet serving. Dropping it closes them.
pub struct PreparedTcp {
    routes: Vec<TcpRoute>,
    bound: BTreeMap<SocketAddr, TcpListener>,
    failed: BTreeMap<SocketAddr, (TcpRoute, String)>,
}

impl<D: Dialer> TcpRoutes<D> {
    /// No routes yet.
    pub fn new(dialer: Arc<D>, metrics: Metrics, connections: Arc<ConnectionLimiter>) -> Self {
        Self {
            dialer,
            metrics,
            connections,
            state: Mutex::new(TcpState::default()),
        }
    }

    /// Binds the listeners that `routes` needs and that are not open yet. `refused` are
    /// routes that may not listen at all (with why). A listener that cannot be bound makes
    /// that route failed, not the others; nothing changes until [`TcpRoutes::commit`].
    pub async fn prepare(
        &self,
        routes: Vec<TcpRoute>,
        refused: Vec<(TcpRoute, String)>,
    ) -> PreparedTcp {
        let state = self.state.lock().await;
        let mut bound = BTreeMap::new();
        let mut failed: BTreeMap<SocketAddr, (TcpRoute, String)> = refused
            .into_iter()
            .map(|(route, why)| (route.listen, (route, why)))
            .collect();
        for route in &routes {
            if state.running.contains_key(&route.listen) {
                continue;
            }
            match TcpListener::bind(route.listen).await {
                Ok(listener) => {
                    bound.insert(route.listen, listener);
                }
                Err(error) => {
                    failed.insert(
                        route.listen,
                        (
                            route.clone(),
                            format!(
                                "cannot listen on {}: {error}; free the port or pick another",
                                route.listen
                            ),
                        ),
                    );
                }
            }
        }
        let routes = routes
            .into_iter()
            .filter(|route| !failed.contains_key(&route.listen))
            .collect();
        PreparedTcp {
            routes,
            bound,
            failed,
        }
    }

    /// Makes the prepared set current: removed routes stop accepting (their open connections
    /// finish), added ones start, unchanged ones keep running untouched. A route whose
    /// address stayed but whose target changed is restarted on the same address.
    pub async fn commit(&self, prepared: PreparedTcp) {
        let PreparedTcp {
            routes,
            mut bound,
            failed,
        } = prepared;
        let mut state = self.state.lock().await;
        let wanted: BTreeMap<SocketAddr, TcpRoute> =
            routes.into_iter().map(|r| (r.listen, r)).collect();
        let stale: Vec<SocketAddr> = state
            .running
            .iter()
            .filter(|(addr, running)| wanted.get(addr) != Some(&running.route))
            .map(|(addr, _)| *addr)
            .collect();
        for addr in stale {
            if let Some(old) = state.running.remove(&addr) {
                if let Some(task) = old.task {
                    task.abort();
                    // Wait until the accept loop is gone and its listener closed, so that a
                    // changed route can bind the same address again.
                    let _ = task.await;
                }
                tracing::info!(listen = %addr, "tcp route stopped; its open connections finish");
            }
        }
        let mut failed = failed;
        for (addr, route) in wanted {
            if state.running.contains_key(&addr) {
                continue;
            }
            let listener = match bound.remove(&addr) {
                Some(listener) => listener,
                // A changed route on an address that was in use: bind it again now.
                None => match TcpListener::bind(addr).await {
                    Ok(listener) => listener,
                    Err(error) => {
                        failed.insert(
                            addr,
                            (route, format!("cannot listen again on {addr}: {error}")),
                        );
                        continue;
                    }
                },
            };
            tracing::info!(listen = %addr, origin = %route.origin, port = route.port, "tcp route listening");
            let mut running = RunningRoute {
                route,
                task: None,
                pending: Some(listener),
            };
            if let Some((drain, abort)) = &state.runtime {
                self.spawn(&mut running, drain.clone(), abort.clone());
            }
            state.running.insert(addr, running);
        }
        for (addr, (route, why)) in &failed {
            tracing::error!(listen = %addr, origin = %route.origin, port = route.port, reason = %why, "tcp route not listening; the rest of the config is applied");
        }
        state.failed = failed;
    }

    fn spawn(&self, running: &mut RunningRoute, drain: DrainWatch, abort: watch::Receiver<bool>) {
        let Some(listener) = running.pending.take() else {
            return;
        };
        let forwarder = Arc::new(TcpForwarder {
            route: running.route.clone(),
            dialer: self.dialer.clone(),
            metrics: self.metrics.clone(),
            connections: self.connections.clone(),
        });
        running.task = Some(tokio::spawn(forwarder.serve(listener, drain, abort)));
    }

    /// Starts accepting on every route (called once the edge serves).
    pub async fn start(&self, drain: DrainWatch, abort: watch::Receiver<bool>) {
        let mut state = self.state.lock().await;
        let state = &mut *state;
        for running in state.running.values_mut() {
            self.spawn(running, drain.clone(), abort.clone());
        }
        state.runtime = Some((drain, abort));
    }

    /// Stops taking part in draining: no new listener starts; the running ones end by
    /// themselves once draining is signaled.
    pub async fn stop(&self) {
        self.state.lock().await.runtime = None;
    }

    /// The addresses listened on, ascending.
    pub async fn addresses(&self) -> Vec<SocketAddr> {
        self.state.lock().await.running.keys().copied().collect()
    }

    /// Each route of the current spec: listening, or not and why.
    pub fn statuses(&self) -> Vec<TcpRouteStatus> {
        // Called from heartbeats (synchronous): a busy lock just skips this beat's list.
        let Ok(state) = self.state.try_lock() else {
            return Vec::new();
        };
        let listening = state.running.keys().map(|addr| TcpRouteStatus {
            listen_port: u32::from(addr.port()),
            listening: true,
            error: String::new(),
        });
        let failed = state.failed.iter().map(|(addr, (_, why))| TcpRouteStatus {
            listen_port: u32::from(addr.port()),
            listening: false,
            error: why.clone(),
        });
        listening.chain(failed).collect()
    }
}

/// The shared handles [`EdgeApplier`] swaps; `Edge` and the dialer read them.
pub struct EdgeHandles<D: Dialer> {
    /// The route table.
    pub routes: Arc<ArcSwap<RouteTable>>,
    /// The certificates.
    pub certificates: Arc<ArcSwap<CertStore>>,
    /// Origin name -> tunnel target (the dialer's map).
    pub origins: Arc<ArcSwap<OriginMap>>,
    /// ACME challenges.
    pub acme: Arc<AcmeChallenges>,
    /// Dynamic TCP routes.
    pub tcp: Arc<TcpRoutes<D>>,
    /// The connection caps (and the heartbeat's connection count).
    pub connections: Arc<ConnectionLimiter>,
    /// The per-connection HTTP limits.
    pub http_limits: SharedHttpLimits,
    /// The edge's metrics.
    pub metrics: Metrics,
}

/// What a spec brings besides the model's values: control's key for the edge and its ACME
/// challenges.
#[derive(Default)]
pub struct Extras {
    /// The edge's private key, when control manages it.
    pub private_key: Option<PrivateKey>,
    /// Pending HTTP-01 challenges (replaced as a set).
    pub http_challenges: Vec<HttpChallenge>,
    /// Pending TLS-ALPN-01 challenges (replaced as a set).
    pub alpn_challenges: Vec<TlsAlpnChallenge>,
}

/// What the last applied spec held; parts that did not change are not rebuilt (so rate
/// limiter state survives unrelated changes).
struct Last {
    spec: EdgeSpec,
    limits: EdgeLimits,
}

/// Applies specs to the running edge. See the module documentation.
pub struct EdgeApplier<D: Dialer> {
    base: EdgeConfig,
    tunnel: Tunnel,
    /// Whether the tunnel runs a real key (configured locally or sent by control), rather
    /// than the random stand-in it started with.
    has_key: AtomicBool,
    handles: EdgeHandles<D>,
    tcp_ip: IpAddr,
    last: Mutex<Option<Last>>,
}

impl<D: Dialer> EdgeApplier<D> {
    /// Applies specs over `base` (the node's own config: listeners, timeouts, tunnel settings,
    /// the file's `[limits]`) to `tunnel` and the `handles` the edge serves from. TCP routes
    /// without an address listen on the IP of the HTTPS listener.
    pub fn new(base: EdgeConfig, tunnel: Tunnel, handles: EdgeHandles<D>) -> Self {
        Self {
            has_key: AtomicBool::new(!base.tunnel.key_from_control),
            tcp_ip: base.tcp_ip(),
            base,
            tunnel,
            handles,
            last: Mutex::new(None),
        }
    }

    /// The TCP routes' listeners (for status).
    pub fn tcp_routes(&self) -> &Arc<TcpRoutes<D>> {
        &self.handles.tcp
    }

    /// Validates `spec` as a whole and applies it, or changes nothing and says which field of
    /// which object breaks a rule. `version` is for logs.
    pub async fn apply(
        &self,
        version: u64,
        spec: &EdgeSpec,
        extras: Extras,
    ) -> Result<(), ModelError> {
        let mut last = self.last.lock().await;

        // --- validate everything; nothing is changed until all of it passed ---
        if extras.private_key.is_none() && !self.has_key.load(Ordering::Acquire) {
            return Err(ModelError::new(
                "private_key",
                "the snapshot has no private key and this edge has none of its own: let control manage the edge's key, or set [tunnel] private_key_file",
            )
            .about(ObjectRef::new(ObjectKind::Node, "")));
        }
        let own_key: PublicKey = extras
            .private_key
            .as_ref()
            .map_or_else(|| self.tunnel.public_key(), PrivateKey::public_key);
        spec.validate(Some(own_key), self.base.tunnel.options.overlay)?;
        let limits = spec.limits.clone().unwrap_or_else(|| self.base.limits());

        let certificates_changed = last
            .as_ref()
            .is_none_or(|last| last.spec.certificates != spec.certificates);
        let certificates = if certificates_changed {
            Some(
                CertStore::from_certificates(&spec.certificates, self.base.tls_default.as_ref())
                    .map_err(|e| ModelError::new("certificates", e.to_string()))?,
            )
        } else {
            None
        };

        let scratch = AcmeChallenges::new();
        scratch
            .set_http(extras.http_challenges.clone())
            .map_err(|e| ModelError::new("acme_http_challenges", e.to_string()))?;
        scratch
            .set_tls_alpn(extras.alpn_challenges.clone())
            .map_err(|e| ModelError::new("acme_tls_alpn_challenges", e.to_string()))?;

        let peers = peer_configs(&spec.origins).await;
        let conflicts = spec.listener_conflicts(&self.base.listeners(), self.tcp_ip);
        let mut refused = Vec::new();
        let mut routes = Vec::new();
        for (i, route) in spec.tcp_routes.iter().enumerate() {
            let runtime = TcpRoute::new(route, self.tcp_ip);
            match conflicts.iter().find(|(index, _)| *index == i) {
                Some((_, error)) => refused.push((runtime, error.to_string())),
                None => routes.push(runtime),
            }
        }
        let tcp = self.handles.tcp.prepare(routes, refused).await;

        // --- apply: peers first, so that new routes find their origin's tunnel ---
        self.tunnel.try_set_peers(peers).map_err(|e| {
            ModelError::new("origins", format!("the tunnel refused the peer set: {e}"))
        })?;
        if let Some(key) = extras.private_key {
            if key.public_key() != self.tunnel.public_key() {
                self.tunnel.set_private_key(key);
            }
            self.has_key.store(true, Ordering::Release);
        }
        self.handles
            .origins
            .store(Arc::new(origin_map(&spec.origins)));
        let routes_changed = last
            .as_ref()
            .is_none_or(|last| last.spec.routes != spec.routes || last.limits != limits);
        if routes_changed {
            self.handles
                .routes
                .store(Arc::new(RouteTable::new(&spec.routes, &limits)));
        }
        if last.as_ref().is_none_or(|last| last.limits != limits) {
            self.handles.connections.set_caps(&limits);
            let current = self.handles.http_limits.load_full();
            self.handles
                .http_limits
                .store(Arc::new(HttpLimits::with_limits(&current, &limits)));
        }
        if let Some(certificates) = certificates {
            if certificates.is_placeholder() {
                tracing::warn!(
                    name = crate::sni::PLACEHOLDER_NAME,
                    "no certificates yet: serving a self-signed placeholder that clients will not trust"
                );
            } else {
                tracing::info!(names = ?certificates.names(), "certificates applied");
            }
            for warning in spec.certificate_warnings(time::OffsetDateTime::now_utc()) {
                tracing::error!(%warning, "certificate outside its validity: it is served anyway, but clients will refuse it");
            }
            self.handles.certificates.store(Arc::new(certificates));
        }
        // Validated above on a scratch table: these cannot fail.
        if let Err(error) = self.handles.acme.set_http(extras.http_challenges) {
            tracing::error!(%error, "ACME HTTP-01 challenges");
        }
        if let Err(error) = self.handles.acme.set_tls_alpn(extras.alpn_challenges) {
            tracing::error!(%error, "ACME TLS-ALPN-01 challenges");
        }
        self.handles.tcp.commit(tcp).await;
        if let Some(options) = spec.tunnel {
            if options.mtu != self.base.tunnel.options.mtu
                || options.tcp_buffer != self.base.tunnel.options.tcp_buffer
            {
                tracing::warn!(mtu = %options.mtu, tcp_buffer = %options.tcp_buffer, "new tunnel MTU or buffer: it takes effect when the edge restarts");
            }
        }
        tracing::info!(
            version,
            origins = spec.origins.len(),
            routes = spec.routes.len(),
            tcp_routes = spec.tcp_routes.len(),
            certificates = spec.certificates.len(),
            public_key = %self.tunnel.public_key(),
            "edge config applied"
        );
        *last = Some(Last {
            spec: spec.clone(),
            limits,
        });
        Ok(())
    }

    async fn apply_snapshot(&self, version: u64, edge: &EdgeSnapshot) -> Result<(), ModelError> {
        let node = || ObjectRef::new(ObjectKind::Node, "");
        let private_key = if edge.private_key.is_empty() {
            None
        } else {
            Some(
                PrivateKey::from_base64(edge.private_key.trim()).map_err(|e| {
                    ModelError::new("private_key", format!("not a WireGuard private key ({e})"))
                        .about(node())
                })?,
            )
        };
        let spec = EdgeSpec::from_proto(edge)?;
        let extras = Extras {
            private_key,
            http_challenges: edge
                .acme_http_challenges
                .iter()
                .map(|c| HttpChallenge {
                    token: c.token.clone(),
                    key_authorization: c.key_authorization.clone(),
                })
                .collect(),
            alpn_challenges: edge
                .acme_tls_alpn_challenges
                .iter()
                .map(|c| TlsAlpnChallenge {
                    name: c.name.clone(),
                    cert_pem: c.cert_pem.clone(),
                    key_pem: c.key_pem.clone(),
                })
                .collect(),
        };
        self.apply(version, &spec, extras).await
    }
}

/// The tunnel peers for `origins`. An endpoint written as a host name is resolved now; one
/// that does not resolve is left out with a warning (the edge waits for the origin to dial in,
/// as it does for origins without an endpoint).
pub async fn peer_configs(origins: &[OriginPeer]) -> Vec<PeerConfig> {
    let mut peers = Vec::with_capacity(origins.len());
    for origin in origins {
        let endpoint = match &origin.endpoint {
            Some(endpoint) => kokoa_node::resolve::endpoint(endpoint, true)
                .await
                .map_err(|error| {
                    tracing::warn!(origin = %origin.name, %endpoint, %error, "cannot resolve the origin's endpoint; waiting for its packets");
                })
                .ok(),
            None => None,
        };
        peers.push(PeerConfig {
            public_key: origin.public_key,
            endpoint,
            allowed_ips: vec![ipnet::Ipv4Net::from(origin.origin_address.ip())],
            local_address: origin.address.ip(),
            persistent_keepalive: origin.keepalive.seconds(),
        });
    }
    peers
}

impl<D: Dialer> Applier for EdgeApplier<D> {
    fn kind(&self) -> NodeKind {
        NodeKind::Edge
    }

    async fn apply(&self, snapshot: &Snapshot) -> Result<(), ModelError> {
        match &snapshot.node {
            Some(snapshot::Node::Edge(edge)) => self.apply_snapshot(snapshot.version, edge).await,
            Some(snapshot::Node::Origin(_)) => Err(ModelError::value(
                "this is an edge, but the snapshot is for an origin",
            )),
            None => Err(ModelError::value("the snapshot holds no edge config")),
        }
    }

    fn listeners(&self) -> Vec<kokoa_proto::v1::Listener> {
        [
            ("https", self.base.https),
            ("http", self.base.http),
            ("admin", self.base.admin),
        ]
        .into_iter()
        .map(|(name, address)| kokoa_proto::v1::Listener {
            name: name.to_owned(),
            address: address.to_string(),
        })
        .collect()
    }

    fn status(&self) -> NodeStatus {
        NodeStatus {
            peers: peer_statuses(&self.tunnel.stats()),
            active_connections: self.handles.connections.open() as u64,
            requests_total: self.handles.metrics.requests_total.get(),
            // Dial failures of HTTP requests are answered 502/503, so they are in here too.
            errors_total: self.handles.metrics.errors_total.get(),
            services: Vec::new(),
            tcp_routes: self.handles.tcp.statuses(),
        }
    }
}
