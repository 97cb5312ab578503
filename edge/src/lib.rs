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
//! What the edge serves is the shared model's [`kokoa_model::EdgeSpec`]: read from the config
//! file, or (in control mode, a `[control]` table in the config) converted from the snapshots
//! `kokoa-control` streams. Either way [`apply::EdgeApplier`] validates and applies it through
//! the same `ArcSwap`s, at start, on SIGHUP (file mode) and for every snapshot; the node's
//! control client (`kokoa_node::control`) persists snapshots so a restart serves without
//! control.
//!
//! Modules: [`config`] (the config file), [`apply`] (a spec onto the running edge),
//! [`route`], [`sni`], [`dial`], [`pool`], [`proxy`], [`head`], [`forwarded`], [`https`],
//! [`http`], [`tcp`], [`limit`], [`timeout`], [`acl`], [`proxy_protocol`], [`metrics`].

pub mod acl;
pub mod acme;
pub mod apply;
pub mod config;
pub mod dial;
pub mod forwarded;
pub mod head;
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
pub mod timeout;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use kokoa_model::TunnelOptions;
use kokoa_node::admin::Admin;
use kokoa_node::drain::{Drain, DrainOutcome};
use kokoa_tunnel::key::PrivateKey;
use kokoa_tunnel::Tunnel;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::apply::{EdgeApplier, EdgeHandles, Extras};
pub use crate::config::EdgeConfig;
use crate::dial::{Dialer, OriginMap, TunnelDialer};
use crate::https::{HttpLimits, SharedHttpLimits};
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
    /// Listeners of raw TCP routes bound up front, in the order of `config.spec.tcp_routes`
    /// (empty when the routes are left to the applier, as a running node does).
    pub tcp: Vec<TcpListener>,
}

async fn bind(addr: std::net::SocketAddr, field: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} ({field})"))
}

impl Listeners {
    /// Binds every listener named in `config`, TCP routes included. Errors name the address
    /// and the field.
    pub async fn bind(config: &EdgeConfig) -> anyhow::Result<Self> {
        let mut listeners = Self::bind_http(config).await?;
        for (i, route) in config.spec.tcp_routes.iter().enumerate() {
            let addr = route.listen.addr(config.tcp_ip());
            listeners
                .tcp
                .push(bind(addr, &format!("tcp_routes[{i}].listen")).await?);
        }
        Ok(listeners)
    }

    /// Binds the HTTPS and HTTP listeners only: TCP routes come and go with the applied spec.
    pub async fn bind_http(config: &EdgeConfig) -> anyhow::Result<Self> {
        let https = bind(config.https, "[edge] https").await?;
        let http = bind(config.http, "[edge] http").await?;
        Ok(Self {
            https,
            http,
            tcp: Vec::new(),
        })
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
    http_limits: SharedHttpLimits,
    tcp_routes: Arc<apply::TcpRoutes<D>>,
}

impl<D: Dialer> Edge<D> {
    /// An edge serving `config`'s routes with `certificates`, reaching origins with `dialer`.
    pub fn new(config: EdgeConfig, certificates: CertStore, dialer: D, metrics: Metrics) -> Self {
        let dialer = Arc::new(dialer);
        let limits = config.limits();
        let connections = ConnectionLimiter::from_limits(&limits);
        let tcp_routes = Arc::new(apply::TcpRoutes::new(
            dialer.clone(),
            metrics.clone(),
            connections.clone(),
        ));
        let http_limits = Arc::new(ArcSwap::from_pointee(HttpLimits {
            trusted_proxies: forwarded::TrustedProxies::new(&config.trusted_proxies),
            sni_host_check: config.sni_host_check,
            ..HttpLimits::new(
                config.tls_handshake_timeout,
                config.header_read_timeout,
                config.max_header_bytes,
                &limits,
            )
        }));
        Self {
            routes: Arc::new(ArcSwap::from_pointee(RouteTable::new(
                &config.spec.routes,
                &limits,
            ))),
            certificates: Arc::new(ArcSwap::from_pointee(certificates)),
            acme: acme::AcmeChallenges::new(),
            config,
            dialer,
            metrics,
            connections,
            http_limits,
            tcp_routes,
        }
    }

    /// The handles an [`EdgeApplier`] swaps for this edge; `origins` is the dialer's map.
    pub fn handles(&self, origins: Arc<ArcSwap<OriginMap>>) -> EdgeHandles<D> {
        EdgeHandles {
            routes: self.routes.clone(),
            certificates: self.certificates.clone(),
            origins,
            acme: self.acme.clone(),
            tcp: self.tcp_routes.clone(),
            connections: self.connections.clone(),
            http_limits: self.http_limits.clone(),
            metrics: self.metrics.clone(),
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
    pub fn tcp_routes(&self) -> &Arc<apply::TcpRoutes<D>> {
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
            self.config.upstream_keepalive,
            self.config.upstream_idle_timeout,
        );
        let proxy = Arc::new(Proxy::new(
            self.routes.clone(),
            self.certificates.clone(),
            pool,
            self.metrics.clone(),
            self.http_limits.clone(),
        ));
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
            limits: self.http_limits.clone(),
            metrics: self.metrics.clone(),
            connections: connections.clone(),
        });
        tokio::spawn(https.serve(listeners.https, drain_watch.clone(), abort_rx.clone()));
        let http = Arc::new(http::HttpServer {
            https_port,
            routes: self.routes.clone(),
            limits: self.http_limits.clone(),
            metrics: self.metrics.clone(),
            connections: connections.clone(),
            acme: self.acme.clone(),
        });
        tokio::spawn(http.serve(listeners.http, drain_watch.clone(), abort_rx.clone()));
        for (route, listener) in self.config.spec.tcp_routes.iter().zip(listeners.tcp) {
            let forwarder = Arc::new(tcp::TcpForwarder {
                route: tcp::TcpRoute::new(route, self.config.tcp_ip()),
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

/// The certificates `config` names (or the placeholder): what `check-config` checks before
/// anything binds. In control mode the certificates come from control: until then the edge
/// serves the self-signed placeholder.
pub fn load_certificates(config: &EdgeConfig) -> Result<CertStore, sni::CertError> {
    if config.control.is_some() {
        return CertStore::placeholder();
    }
    CertStore::from_certificates(&config.spec.certificates, config.tls_default.as_ref())
}

/// Runs the edge until `shutdown` resolves. See [`run_with_reload`].
pub async fn run(config: EdgeConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with_reload(config, None, shutdown).await
}

/// The key and tunnel options the edge starts with: the file's, or in control mode (without a
/// key of the operator's) those of the persisted snapshot, so a restart runs what control
/// last sent even while control is away.
fn startup_tunnel(config: &EdgeConfig) -> (PrivateKey, TunnelOptions) {
    let mut key = config.tunnel.private_key.clone();
    let mut options = config.tunnel.options;
    if let Some(settings) = &config.control {
        match kokoa_node::control::load_snapshot(&settings.state_dir) {
            Ok(Some(snapshot)) => {
                if let Some(kokoa_proto::v1::snapshot::Node::Edge(edge)) = snapshot.node {
                    if config.tunnel.key_from_control {
                        if let Ok(persisted) = PrivateKey::from_base64(&edge.private_key) {
                            key = persisted;
                        }
                    }
                    if let Some(Ok(persisted)) = edge.tunnel.as_ref().map(TunnelOptions::from_proto)
                    {
                        options = persisted;
                    }
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "cannot read the persisted config"),
        }
    }
    (key, options)
}

/// Runs the edge until `shutdown` resolves: binds its listeners (errors name the address) and
/// tunnel, applies what it serves through one [`EdgeApplier`] (the file's spec, or control's
/// persisted snapshot and then control's stream), serves, and on shutdown drains for up to
/// `config.drain_timeout` before closing the tunnel. In file mode, with `config_path`, SIGHUP
/// re-reads the file and applies it through the same applier; a file that does not validate
/// is logged and the running config kept.
pub async fn run_with_reload(
    config: EdgeConfig,
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let listeners = Listeners::bind_http(&config).await?;
    let admin_listener = bind(config.admin, "[edge] admin").await?;
    let (private_key, options) = startup_tunnel(&config);
    let tunnel_config = config.tunnel.tunnel_config(private_key, options);
    let listen = tunnel_config.listen;
    // The edge accepts no inbound tunnel streams; `_incoming` is kept so the tunnel's accept
    // queue stays open for the tunnel's lifetime.
    let (tunnel, _incoming) = Tunnel::bind(tunnel_config).await.with_context(|| {
        format!("binding the tunnel's UDP socket on {listen} ([tunnel] listen)")
    })?;

    let metrics = Metrics::default();
    let origins = Arc::new(ArcSwap::from_pointee(OriginMap::new()));
    let dialer = TunnelDialer::new(tunnel.clone(), origins.clone(), config.connect_timeout);
    let certificates = CertStore::placeholder().context("making the placeholder certificate")?;
    let edge = Edge::new(config.clone(), certificates, dialer, metrics.clone());
    let applier = Arc::new(EdgeApplier::new(
        config.clone(),
        tunnel.clone(),
        edge.handles(origins),
    ));

    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let names: HashMap<_, _> = config
        .spec
        .origins
        .iter()
        .map(|origin| (origin.public_key, origin.name.to_string()))
        .collect();
    registry.register_collector(Box::new(TunnelCollector::new(tunnel.clone(), names)));
    registry.register_collector(Box::new(PlaceholderCollector::new(
        edge.certificates().clone(),
    )));

    let mut background = Vec::new();
    match &config.control {
        None => {
            applier
                .apply(0, &config.spec, Extras::default())
                .await
                .context("applying the config")?;
            if let Some(path) = config_path {
                let applier = applier.clone();
                let running = config.clone();
                background.push(tokio::spawn(kokoa_node::signal::on_reload(move || {
                    let applier = applier.clone();
                    let path = path.clone();
                    let running = running.clone();
                    async move { reload(&applier, &running, &path).await }
                })));
            }
        }
        Some(settings) => {
            let mut client =
                kokoa_node::control::ControlClient::new(settings.clone(), applier.clone());
            registry.register_collector(Box::new(kokoa_node::control::ControlCollector::new(
                client.status(),
            )));
            if client.restore().await == 0 {
                tracing::warn!(
                    name = sni::PLACEHOLDER_NAME,
                    "no config from control yet: no routes, and a self-signed placeholder certificate until control's first snapshot"
                );
            }
            tracing::info!(control = %settings.url, "following control");
            background.push(tokio::spawn(client.run(std::future::pending())));
        }
    }
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
        control = config.control.as_ref().map(|c| c.url.as_str()),
        "edge started"
    );
    let result = edge
        .serve(listeners, shutdown, || admin.set_draining(true))
        .await;
    // Stop following control and reloading before the tunnel goes.
    for task in background {
        task.abort();
        let _ = task.await;
    }
    tunnel.shutdown();
    let _ = admin_stop_tx.send(());
    let _ = admin_task.await;
    tracing::info!("edge stopped");
    result
}

/// SIGHUP in file mode: the file again, validated by the same model and applied by the same
/// applier as at start. Settings the running process cannot change (listeners, the tunnel's
/// key and socket) are reported as needing a restart.
async fn reload<D: Dialer>(applier: &EdgeApplier<D>, running: &EdgeConfig, path: &std::path::Path) {
    let config = match EdgeConfig::load(path) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "reload refused: the file does not validate; the running config is kept");
            return;
        }
    };
    if config.control.is_some() {
        tracing::error!(path = %path.display(), "reload refused: the file now has [control]; restart the edge to switch to control mode");
        return;
    }
    let restart: Vec<&str> = [
        ("edge.https", config.https != running.https),
        ("edge.http", config.http != running.http),
        ("edge.admin", config.admin != running.admin),
        (
            "tunnel.private_key",
            config.tunnel.private_key.public_key() != running.tunnel.private_key.public_key(),
        ),
        (
            "tunnel.listen",
            config.tunnel.listen != running.tunnel.listen,
        ),
    ]
    .into_iter()
    .filter_map(|(field, changed)| changed.then_some(field))
    .collect();
    if !restart.is_empty() {
        tracing::warn!(fields = ?restart, "these settings changed in the file and take effect only when the edge restarts");
    }
    match applier.apply(0, &config.spec, Extras::default()).await {
        Ok(()) => tracing::info!(path = %path.display(), "config reloaded"),
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "reload refused; the running config is kept")
        }
    }
}
