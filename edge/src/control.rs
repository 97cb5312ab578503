//! The edge in control mode: applies the [`EdgeSnapshot`]s `kokoa-control` streams.
//!
//! [`EdgeControl`] is the edge's [`Applier`]. A snapshot is validated completely first (the
//! same rules as the TOML file's tables, through [`EdgeConfig::with_snapshot`]; certificates
//! parsed and matched to their keys; ACME challenges checked; listeners of new TCP routes
//! bound); on any error nothing is applied and the reason goes back in the NACK. Then it is
//! applied in an order that never routes to something missing: tunnel peers (and the private
//! key), the origin map, the route table, certificates, ACME challenges, TCP listeners. Each
//! is an immutable snapshot behind `ArcSwap` (or a listener task), so connections in flight
//! finish on what they started with and nothing unrelated is dropped.
//!
//! Certificate keys live only in memory and in the node's 0600 snapshot file. Until a snapshot
//! with certificates arrives the edge serves its self-signed placeholder.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use kokoa_node::control::{peer_statuses, sum_counters, Applier, NodeStatus};
use kokoa_node::drain::DrainWatch;
use kokoa_proto::v1::{snapshot, EdgeSnapshot, NodeKind, Snapshot};
use kokoa_tunnel::key::{PrivateKey, PublicKey};
use kokoa_tunnel::{PeerConfig, Tunnel};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinHandle;

use crate::acme::{AcmeChallenges, HttpChallenge, TlsAlpnChallenge};
use crate::config::{EdgeConfig, Origin, TcpRoute};
use crate::dial::{origin_map, Dialer, OriginMap};
use crate::limit::ConnectionLimiter;
use crate::metrics::Metrics;
use crate::route::RouteTable;
use crate::sni::CertStore;
use crate::tcp::TcpForwarder;

/// The raw TCP routes that come and go with snapshots: one listener task per route.
///
/// Routes can be set before the edge serves (the persisted snapshot is applied first); their
/// listeners are bound at once and start accepting when [`TcpRoutes::start`] is called.
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
}

struct RunningRoute {
    route: TcpRoute,
    task: Option<JoinHandle<()>>,
    /// Bound before serving started; handed to a task by `start`.
    pending: Option<TcpListener>,
}

/// Listeners bound for a snapshot's new TCP routes, not yet serving. Dropping it closes them.
pub struct PreparedTcp {
    routes: Vec<TcpRoute>,
    bound: BTreeMap<SocketAddr, TcpListener>,
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

    /// Binds the listeners that `routes` needs and that are not open yet. An address in use
    /// is an error naming the route; nothing changes until [`TcpRoutes::commit`].
    pub async fn prepare(&self, routes: Vec<TcpRoute>) -> Result<PreparedTcp, String> {
        let state = self.state.lock().await;
        let mut bound = BTreeMap::new();
        for (i, route) in routes.iter().enumerate() {
            if state.running.contains_key(&route.listen) {
                continue;
            }
            let listener = TcpListener::bind(route.listen).await.map_err(|e| {
                format!(
                    "tcp_routes[{i}]: cannot listen on {} ({e}); free the port or pick another",
                    route.listen
                )
            })?;
            bound.insert(route.listen, listener);
        }
        Ok(PreparedTcp { routes, bound })
    }

    /// Makes the prepared set current: removed routes stop accepting (their open connections
    /// finish), added ones start, unchanged ones keep running untouched. A route whose
    /// address stayed but whose target changed is restarted on the same address.
    pub async fn commit(&self, prepared: PreparedTcp) {
        let PreparedTcp { routes, mut bound } = prepared;
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
                        tracing::error!(listen = %addr, %error, "cannot listen again for a changed tcp route");
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
}

/// Parses a snapshot certificate into the form rustls serves.
fn certificate(
    i: usize,
    certificate: &kokoa_proto::v1::Certificate,
) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    crate::acme::certified_key(&certificate.chain_pem, &certificate.key_pem)
        .map(Arc::new)
        .map_err(|reason| format!("certificates[{i}] ({}): {reason}", certificate.id))
}

/// The edge's control-mode state: everything a snapshot replaces.
pub struct EdgeControl<D: Dialer> {
    base: EdgeConfig,
    tunnel: Tunnel,
    /// Whether the tunnel runs a real key (configured locally or sent by control), rather
    /// than the random stand-in it started with.
    has_key: AtomicBool,
    routes: Arc<ArcSwap<RouteTable>>,
    certificates: Arc<ArcSwap<CertStore>>,
    origins: Arc<ArcSwap<OriginMap>>,
    acme: Arc<AcmeChallenges>,
    tcp: Arc<TcpRoutes<D>>,
    tcp_ip: IpAddr,
    connections: Arc<ConnectionLimiter>,
    counters: Registry,
    /// What the last applied snapshot held; parts that did not change are not rebuilt (so
    /// rate limiter state survives unrelated changes).
    last: Mutex<Option<EdgeSnapshot>>,
}

/// The shared handles [`EdgeControl`] swaps; `Edge` and the dialer read them.
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
    /// The connection caps (for the heartbeat's connection count).
    pub connections: Arc<ConnectionLimiter>,
    /// The edge's metrics.
    pub metrics: Metrics,
}

impl<D: Dialer> EdgeControl<D> {
    /// Applies snapshots over `base` (the bootstrap config: listeners, limits, tunnel
    /// settings) to `tunnel` and the `handles` the edge serves from. TCP routes listen on the
    /// IP of the HTTPS listener.
    pub fn new(base: EdgeConfig, tunnel: Tunnel, handles: EdgeHandles<D>) -> Self {
        let mut counters = Registry::default();
        counters.register(
            "requests",
            "requests by class",
            handles.metrics.requests.clone(),
        );
        Self {
            has_key: AtomicBool::new(!base.tunnel.key_from_control),
            tcp_ip: base.https.ip(),
            base,
            tunnel,
            routes: handles.routes,
            certificates: handles.certificates,
            origins: handles.origins,
            acme: handles.acme,
            tcp: handles.tcp,
            connections: handles.connections,
            counters,
            last: Mutex::new(None),
        }
    }

    async fn apply_edge(&self, version: u64, edge: &EdgeSnapshot) -> Result<(), String> {
        let mut last = self.last.lock().await;

        // --- validate everything; nothing is changed until all of it passed ---
        let new_key = if edge.private_key.is_empty() {
            if !self.has_key.load(Ordering::Acquire) {
                return Err("the snapshot has no private key and this edge has none of its own: let control manage the edge's key, or set [tunnel] private_key_file".to_owned());
            }
            None
        } else {
            Some(
                PrivateKey::from_base64(edge.private_key.trim())
                    .map_err(|e| format!("private_key: not a WireGuard private key ({e})"))?,
            )
        };
        let own_key: PublicKey = new_key
            .as_ref()
            .map_or_else(|| self.tunnel.public_key(), PrivateKey::public_key);
        let config = self
            .base
            .with_snapshot(edge, self.tcp_ip, Some(own_key))
            .map_err(|e| e.to_string())?;

        let certificates_changed = last
            .as_ref()
            .is_none_or(|last| last.certificates != edge.certificates);
        let certificates = if certificates_changed {
            Some(if edge.certificates.is_empty() {
                CertStore::placeholder().map_err(|e| e.to_string())?
            } else {
                let parsed = edge
                    .certificates
                    .iter()
                    .enumerate()
                    .map(|(i, c)| certificate(i, c))
                    .collect::<Result<Vec<_>, _>>()?;
                CertStore::from_certified(parsed, None).map_err(|e| e.to_string())?
            })
        } else {
            None
        };

        let http_challenges: Vec<HttpChallenge> = edge
            .acme_http_challenges
            .iter()
            .map(|c| HttpChallenge {
                token: c.token.clone(),
                key_authorization: c.key_authorization.clone(),
            })
            .collect();
        let alpn_challenges: Vec<TlsAlpnChallenge> = edge
            .acme_tls_alpn_challenges
            .iter()
            .map(|c| TlsAlpnChallenge {
                name: c.name.clone(),
                cert_pem: c.cert_pem.clone(),
                key_pem: c.key_pem.clone(),
            })
            .collect();
        let scratch = AcmeChallenges::new();
        scratch
            .set_http(http_challenges.clone())
            .map_err(|e| e.to_string())?;
        scratch
            .set_tls_alpn(alpn_challenges.clone())
            .map_err(|e| e.to_string())?;

        let peers = peer_configs(&config.origins);
        let tcp = self.tcp.prepare(config.tcp_routes.clone()).await?;

        // --- apply: peers first, so that new routes find their origin's tunnel ---
        self.tunnel
            .try_set_peers(peers)
            .map_err(|e| format!("origins: the tunnel refused the peer set: {e}"))?;
        if let Some(key) = new_key {
            if key.public_key() != self.tunnel.public_key() {
                self.tunnel.set_private_key(key);
            }
            self.has_key.store(true, Ordering::Release);
        }
        self.origins.store(Arc::new(origin_map(&config.origins)));
        let routes_changed = last.as_ref().is_none_or(|last| last.routes != edge.routes);
        if routes_changed {
            self.routes.store(Arc::new(RouteTable::with_policies(
                &config.routes,
                &config.route_policies,
                &config.limits,
            )));
        }
        if let Some(certificates) = certificates {
            if certificates.is_placeholder() {
                tracing::warn!(
                    name = crate::sni::PLACEHOLDER_NAME,
                    "control sent no certificates yet: serving a self-signed placeholder that clients will not trust"
                );
            } else {
                tracing::info!(names = ?certificates.names(), "certificates from control");
            }
            self.certificates.store(Arc::new(certificates));
        }
        // Validated above on a scratch table: these cannot fail.
        if let Err(error) = self.acme.set_http(http_challenges) {
            tracing::error!(%error, "ACME HTTP-01 challenges");
        }
        if let Err(error) = self.acme.set_tls_alpn(alpn_challenges) {
            tracing::error!(%error, "ACME TLS-ALPN-01 challenges");
        }
        self.tcp.commit(tcp).await;
        tracing::info!(
            version,
            origins = config.origins.len(),
            routes = config.routes.len(),
            tcp_routes = config.tcp_routes.len(),
            certificates = edge.certificates.len(),
            public_key = %self.tunnel.public_key(),
            "edge snapshot applied"
        );
        *last = Some(edge.clone());
        Ok(())
    }
}

/// The tunnel peers for `origins`.
pub fn peer_configs(origins: &[Origin]) -> Vec<PeerConfig> {
    origins
        .iter()
        .map(|origin| PeerConfig {
            public_key: origin.public_key,
            endpoint: origin.endpoint,
            allowed_ips: vec![ipnet::Ipv4Net::from(origin.origin_address)],
            local_address: origin.address,
            persistent_keepalive: origin.keepalive,
        })
        .collect()
}

impl<D: Dialer> Applier for EdgeControl<D> {
    fn kind(&self) -> NodeKind {
        NodeKind::Edge
    }

    async fn apply(&self, snapshot: &Snapshot) -> Result<(), String> {
        match &snapshot.node {
            Some(snapshot::Node::Edge(edge)) => self.apply_edge(snapshot.version, edge).await,
            Some(snapshot::Node::Origin(_)) => {
                Err("this is an edge, but the snapshot is for an origin".to_owned())
            }
            None => Err("the snapshot holds no edge config".to_owned()),
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
            active_connections: self.connections.open() as u64,
            requests_total: sum_counters(&self.counters, "requests", None),
            // Dial failures of HTTP requests are answered 502/503, so they are in here too.
            errors_total: sum_counters(&self.counters, "requests", Some("class=\"5xx\"")),
        }
    }
}
