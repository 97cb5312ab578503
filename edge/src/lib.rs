//! `kokoa-edge`: the public front of the request path.
//!
//! **client --TLS--> edge** -> WireGuard UDP -> origin -> local app. The edge accepts TLS
//! (rustls; the certificate is picked by SNI, [`sni`]), speaks HTTP/1.1 and HTTP/2 with the
//! client (hyper, chosen by ALPN, [`https`]), finds the route for the request's host
//! ([`route`]), and forwards the request as HTTP/1.1 over a pooled keep-alive connection
//! ([`pool`]) that runs through the embedded userspace WireGuard tunnel (`kokoa-tunnel`,
//! reached through a [`dial::Dialer`]) to the origin that owns the route ([`proxy`]). Raw TCP
//! routes forward a public port as a byte stream ([`tcp`]); the plain HTTP port redirects to
//! HTTPS ([`http`]).
//!
//! Routes and certificates are immutable snapshots behind `ArcSwap` ([`Edge::routes`],
//! [`Edge::certificates`]): the control plane will swap them while traffic flows. Each route
//! in the snapshot carries its admission policy: allow/deny list ([`acl`]), request rate
//! limiter and body limit ([`limit`]); connection caps and timeouts protect the listeners.
//!
//! In control mode (a `[control]` table in the config) all of that comes from `kokoa-control`
//! instead of the file: [`control::EdgeControl`] validates and applies each snapshot it
//! streams, through the same `ArcSwap`s, and the node's control client
//! (`kokoa_node::control`) persists it so a restart serves without control.
//!
//! Modules: [`config`] (file form and validated model), [`control`] (snapshots from control), [`route`], [`sni`], [`dial`],
//! [`pool`], [`proxy`], [`https`], [`http`], [`tcp`], [`limit`], [`acl`],
//! [`proxy_protocol`], [`metrics`].

pub mod acl;
pub mod acme;
pub mod config;
pub mod control;
pub mod dial;
pub mod http;
pub mod http1;
pub mod https;
pub mod limit;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod proxy_protocol;
pub mod route;
pub mod sni;
pub mod tcp;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use kokoa_node::admin::Admin;
use kokoa_node::drain::{Drain, DrainOutcome};
use kokoa_tunnel::{PeerConfig, Tunnel, TunnelConfig};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

pub use crate::config::EdgeConfig;
use crate::dial::{origin_map, Dialer, TunnelDialer};
use crate::limit::{ConnectionLimiter, MIN_PRUNE_SPACING, PRUNE_INTERVAL};
use crate::metrics::{Metrics, PlaceholderCollector, TunnelCollector};
use crate::pool::Pool;
use crate::proxy::Proxy;
use crate::route::RouteTable;
use crate::sni::{CertStore, SniResolver};

/// The edge's listening sockets, bound before serving so that a busy port is reported at once.
#[derive(Debug)]
pub struct Listeners {
    /// The TLS listener.
    pub https: TcpListener,
    /// The plain HTTP listener.
    pub http: TcpListener,
    /// One listener per raw TCP route, in the order of `config.tcp_routes`.
    pub tcp: Vec<TcpListener>,
}

async fn bind(addr: std::net::SocketAddr, field: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} ({field})"))
}

impl Listeners {
    /// Binds every listener named in `config`. Errors name the address and the field.
    pub async fn bind(config: &EdgeConfig) -> anyhow::Result<Self> {
        let https = bind(config.https, "[edge] https").await?;
        let http = bind(config.http, "[edge] http").await?;
        let mut tcp = Vec::with_capacity(config.tcp_routes.len());
        for (i, route) in config.tcp_routes.iter().enumerate() {
            tcp.push(bind(route.listen, &format!("tcp_routes[{i}].listen")).await?);
        }
        Ok(Self { https, http, tcp })
    }
}

/// A configured edge over a [`Dialer`], ready to serve.
pub struct Edge<D: Dialer> {
    config: EdgeConfig,
    routes: Arc<ArcSwap<RouteTable>>,
    certificates: Arc<ArcSwap<CertStore>>,
    acme: Arc<acme::AcmeChallenges>,
    dialer: Arc<D>,
    metrics: Metrics,
    connections: Arc<ConnectionLimiter>,
    tcp_routes: Arc<control::TcpRoutes<D>>,
}

impl<D: Dialer> Edge<D> {
    /// An edge serving `config`'s routes with `certificates`, reaching origins with `dialer`.
    pub fn new(config: EdgeConfig, certificates: CertStore, dialer: D, metrics: Metrics) -> Self {
        let dialer = Arc::new(dialer);
        let connections = ConnectionLimiter::new(
            config.limits.key_mask,
            config.limits.connections_per_client,
            config.limits.max_connections,
        );
        let tcp_routes = Arc::new(control::TcpRoutes::new(
            dialer.clone(),
            metrics.clone(),
            connections.clone(),
        ));
        Self {
            routes: Arc::new(ArcSwap::from_pointee(RouteTable::with_policies(
                &config.routes,
                &config.route_policies,
                &config.limits,
            ))),
            certificates: Arc::new(ArcSwap::from_pointee(certificates)),
            acme: acme::AcmeChallenges::new(),
            config,
            dialer,
            metrics,
            connections,
            tcp_routes,
        }
    }

    /// The current route table; `store` a new one to reroute without dropping connections.
    pub fn routes(&self) -> &Arc<ArcSwap<RouteTable>> {
        &self.routes
    }

    /// The current certificates; `store` a new set and the next handshakes use it.
    pub fn certificates(&self) -> &Arc<ArcSwap<CertStore>> {
        &self.certificates
    }

    /// The pending ACME challenges the HTTP listener and the TLS resolver answer; control's
    /// snapshots replace them (`set_http`, `set_tls_alpn`).
    pub fn acme(&self) -> &Arc<acme::AcmeChallenges> {
        &self.acme
    }

    /// The raw TCP routes control adds and removes while the edge runs (those of the config
    /// file are served from [`Listeners::tcp`]).
    pub fn tcp_routes(&self) -> &Arc<control::TcpRoutes<D>> {
        &self.tcp_routes
    }

    /// The connection caps shared by every listener (and their count of open connections).
    pub fn connections(&self) -> &Arc<ConnectionLimiter> {
        &self.connections
    }

    /// Serves on `listeners` until `shutdown` resolves; then calls `on_drain` (the admin
    /// listener starts answering 503), stops accepting, lets in-flight requests, WebSockets
    /// and TCP connections finish for up to `drain_timeout`, closes what is left, and returns.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
        on_drain: impl FnOnce(),
    ) -> anyhow::Result<()> {
        let tls = sni::server_config(SniResolver::with_acme(
            self.certificates.clone(),
            self.acme.clone(),
        ))
        .context("setting up TLS")?;
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let pool = Pool::new(
            self.dialer.clone(),
            self.metrics.clone(),
            self.config.limits.upstream_keepalive,
            self.config.limits.upstream_idle_timeout,
        );
        let proxy = Arc::new(
            Proxy::new(
                self.routes.clone(),
                pool,
                self.metrics.clone(),
                self.config.limits.max_headers,
            )
            .with_key_mask(self.config.limits.key_mask),
        );
        let connections = self.connections.clone();
        let pruner = tokio::spawn(prune_clients(self.routes.clone()));
        let https_addr = listeners
            .https
            .local_addr()
            .context("https listener address")?;
        let https_port = self
            .config
            .https_port_in_redirect
            .unwrap_or(https_addr.port());

        let (drain_signal, drain_watch) = Drain::new();
        let (abort_tx, abort_rx) = watch::channel(false);
        let https = Arc::new(https::HttpsServer {
            acceptor,
            proxy,
            limits: self.config.limits.clone(),
            metrics: self.metrics.clone(),
            connections: connections.clone(),
        });
        tokio::spawn(https.serve(listeners.https, drain_watch.clone(), abort_rx.clone()));
        let http = Arc::new(http::HttpServer {
            https_port,
            limits: self.config.limits.clone(),
            metrics: self.metrics.clone(),
            connections: connections.clone(),
            acme: self.acme.clone(),
        });
        tokio::spawn(http.serve(listeners.http, drain_watch.clone(), abort_rx.clone()));
        for (route, listener) in self.config.tcp_routes.iter().zip(listeners.tcp) {
            let forwarder = Arc::new(tcp::TcpForwarder {
                route: route.clone(),
                dialer: self.dialer.clone(),
                metrics: self.metrics.clone(),
                connections: connections.clone(),
            });
            tokio::spawn(forwarder.serve(listener, drain_watch.clone(), abort_rx.clone()));
        }
        self.tcp_routes
            .start(drain_watch.clone(), abort_rx.clone())
            .await;
        drop(drain_watch);

        shutdown.await;
        on_drain();
        self.tcp_routes.stop().await;
        tracing::info!(
            open = drain_signal.watchers(),
            grace = ?self.config.drain_timeout,
            "draining: no new connections; waiting for in-flight ones"
        );
        match drain_signal.drain(self.config.drain_timeout).await {
            DrainOutcome::Complete => tracing::info!("all connections finished"),
            DrainOutcome::TimedOut { remaining } => {
                tracing::warn!(
                    remaining,
                    "drain time is up; closing the remaining connections"
                )
            }
        }
        abort_tx.send_replace(true);
        pruner.abort();
        Ok(())
    }
}

/// Prunes the current route table's rate limiter keys every [`PRUNE_INTERVAL`], or sooner
/// (at most once per [`MIN_PRUNE_SPACING`]) when a limiter finds the key table full.
async fn prune_clients(routes: Arc<ArcSwap<RouteTable>>) {
    loop {
        let table = routes.load_full();
        let budget = table.client_budget().clone();
        tokio::select! {
            _ = tokio::time::sleep(PRUNE_INTERVAL) => {}
            _ = budget.prune_wanted() => {}
        }
        drop((table, budget));
        let table = routes.load_full();
        let started = std::time::Instant::now();
        let before = table.client_budget().tracked();
        // O(keys): off the runtime's worker threads.
        let tracked = match tokio::task::spawn_blocking(move || table.prune_clients()).await {
            Ok(tracked) => tracked,
            Err(error) => {
                tracing::warn!(%error, "pruning rate limiter keys failed");
                0
            }
        };
        tracing::debug!(
            before,
            tracked,
            took = ?started.elapsed(),
            "pruned rate limiter keys"
        );
        tokio::time::sleep(MIN_PRUNE_SPACING).await;
    }
}

/// Loads the certificates named in `config` (or makes the placeholder): what `check-config`
/// and [`run`] do before binding anything.
/// In control mode the certificates come from control: until then the edge serves the
/// self-signed placeholder.
pub fn load_certificates(config: &EdgeConfig) -> Result<CertStore, sni::CertError> {
    if config.control.is_some() {
        return CertStore::placeholder();
    }
    CertStore::load(&config.tls)
}

/// Runs the edge until `shutdown` resolves: binds every listener (errors name the address),
/// starts the tunnel with the origins as peers, serves, and on shutdown drains for up to
/// `config.drain_timeout` before closing the tunnel.
pub async fn run(config: EdgeConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let certificates = load_certificates(&config).context("loading TLS certificates")?;
    run_with_certificates(config, certificates, shutdown).await
}

/// [`run`] with certificates already loaded (the binary loads them while validating the
/// config, so that a bad certificate exits with the bad-config code before anything binds).
pub async fn run_with_certificates(
    config: EdgeConfig,
    certificates: CertStore,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if config.control.is_some() {
        return run_control(config, shutdown).await;
    }
    let listeners = Listeners::bind(&config).await?;
    let admin_listener = bind(config.admin, "[edge] admin").await?;

    let mut tunnel_config =
        TunnelConfig::new(config.tunnel.private_key.clone(), config.tunnel.listen);
    tunnel_config.mtu = config.tunnel.mtu;
    tunnel_config.window = config.tunnel.window.clone();
    tunnel_config.stall_timeout = config.tunnel.stall_timeout;
    tunnel_config.peer_cache = Some(config.state_dir.join(config::PEER_CACHE_FILE));
    tunnel_config.peers = config
        .origins
        .iter()
        .map(|origin| PeerConfig {
            public_key: origin.public_key,
            endpoint: origin.endpoint,
            allowed_ips: vec![ipnet::Ipv4Net::from(origin.origin_address)],
            local_address: origin.address,
            persistent_keepalive: origin.keepalive,
        })
        .collect();
    let listen = tunnel_config.listen;
    // The edge accepts no inbound tunnel streams; `_incoming` is kept so the tunnel's accept
    // queue stays open for the tunnel's lifetime.
    let (tunnel, _incoming) = Tunnel::bind(tunnel_config).await.with_context(|| {
        format!("binding the tunnel's UDP socket on {listen} ([tunnel] listen)")
    })?;

    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let origin_names: HashMap<_, _> = config
        .origins
        .iter()
        .map(|origin| (origin.public_key, origin.name.clone()))
        .collect();
    registry.register_collector(Box::new(TunnelCollector::new(tunnel.clone(), origin_names)));
    let admin = Admin::new(registry);
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn({
        let admin = admin.clone();
        async move {
            let stop = async {
                let _ = admin_stop_rx.await;
            };
            if let Err(error) = admin.serve(admin_listener, stop).await {
                tracing::error!(%error, "admin listener failed");
            }
        }
    });

    tracing::info!(
        public_key = %tunnel.public_key(),
        udp = %tunnel.local_addr(),
        https = %config.https,
        http = %config.http,
        admin = %config.admin,
        origins = config.origins.len(),
        routes = config.routes.len(),
        tcp_routes = config.tcp_routes.len(),
        certificates = ?certificates.names(),
        "edge started"
    );
    let dialer = TunnelDialer::new(
        tunnel.clone(),
        Arc::new(ArcSwap::from_pointee(origin_map(&config.origins))),
        config.limits.connect_timeout,
    );
    let edge = Edge::new(config, certificates, dialer, metrics);
    let result = edge
        .serve(listeners, shutdown, || admin.set_draining(true))
        .await;
    tunnel.shutdown();
    let _ = admin_stop_tx.send(());
    let _ = admin_task.await;
    tracing::info!("edge stopped");
    result
}

/// Control mode: the edge binds its listeners and tunnel from the bootstrap config, applies
/// the persisted snapshot (so it serves while control is unreachable), then follows control.
/// Origins, routes, TCP routes, certificates, ACME challenges and (unless the operator holds
/// it) the tunnel key come from control's snapshots.
async fn run_control(config: EdgeConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    use kokoa_node::control::{load_snapshot, ControlClient};
    use kokoa_proto::v1::snapshot::Node;

    let settings = config
        .control
        .clone()
        .context("run_control needs a [control] table")?;
    let listeners = Listeners::bind(&config).await?;
    let admin_listener = bind(config.admin, "[edge] admin").await?;

    // Start with the key the edge will run: the operator's, or control's from the persisted
    // snapshot, or a random stand-in that control's first snapshot replaces.
    let mut private_key = config.tunnel.private_key.clone();
    if config.tunnel.key_from_control {
        match load_snapshot(&settings.state_dir) {
            Ok(Some(snapshot)) => {
                if let Some(Node::Edge(edge)) = snapshot.node {
                    if let Ok(key) = kokoa_tunnel::key::PrivateKey::from_base64(&edge.private_key) {
                        private_key = key;
                    }
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "cannot read the persisted config"),
        }
    }
    let mut tunnel_config = TunnelConfig::new(private_key, config.tunnel.listen);
    tunnel_config.peer_cache = Some(config.state_dir.join(config::PEER_CACHE_FILE));
    tunnel_config.mtu = config.tunnel.mtu;
    tunnel_config.window = config.tunnel.window.clone();
    tunnel_config.stall_timeout = config.tunnel.stall_timeout;
    let listen = tunnel_config.listen;
    let (tunnel, _incoming) = Tunnel::bind(tunnel_config).await.with_context(|| {
        format!("binding the tunnel's UDP socket on {listen} ([tunnel] listen)")
    })?;

    let metrics = Metrics::default();
    let origins = Arc::new(ArcSwap::from_pointee(dial::OriginMap::new()));
    let dialer = TunnelDialer::new(
        tunnel.clone(),
        origins.clone(),
        config.limits.connect_timeout,
    );
    let certificates = CertStore::placeholder().context("making the placeholder certificate")?;
    let edge = Edge::new(config.clone(), certificates, dialer, metrics.clone());
    let applier = Arc::new(control::EdgeControl::new(
        config.clone(),
        tunnel.clone(),
        control::EdgeHandles {
            routes: edge.routes().clone(),
            certificates: edge.certificates().clone(),
            origins,
            acme: edge.acme().clone(),
            tcp: edge.tcp_routes().clone(),
            connections: edge.connections().clone(),
            metrics: metrics.clone(),
        },
    ));
    tracing::info!(
        control = %settings.url,
        public_key = %tunnel.public_key(),
        udp = %tunnel.local_addr(),
        https = %config.https,
        http = %config.http,
        admin = %config.admin,
        "edge started in control mode"
    );
    let mut client = ControlClient::new(settings, applier);
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    // Peers change with every snapshot: they are labelled by public key.
    registry.register_collector(Box::new(TunnelCollector::new(
        tunnel.clone(),
        HashMap::new(),
    )));
    registry.register_collector(Box::new(kokoa_node::control::ControlCollector::new(
        client.status(),
    )));
    registry.register_collector(Box::new(PlaceholderCollector::new(
        edge.certificates().clone(),
    )));
    let admin = Admin::new(registry);
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn({
        let admin = admin.clone();
        async move {
            let stop = async {
                let _ = admin_stop_rx.await;
            };
            if let Err(error) = admin.serve(admin_listener, stop).await {
                tracing::error!(%error, "admin listener failed");
            }
        }
    });

    if client.restore().await == 0 {
        tracing::warn!(
            name = sni::PLACEHOLDER_NAME,
            "no config from control yet: no routes, and a self-signed placeholder certificate until control's first snapshot"
        );
    }
    let (client_stop_tx, client_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let client_task = tokio::spawn(client.run(async {
        let _ = client_stop_rx.await;
    }));

    let result = edge
        .serve(listeners, shutdown, || admin.set_draining(true))
        .await;
    let _ = client_stop_tx.send(());
    let _ = client_task.await;
    tunnel.shutdown();
    let _ = admin_stop_tx.send(());
    let _ = admin_task.await;
    tracing::info!("edge stopped");
    result
}
