//! `kokoa-origin`: the last hop of the request path.
//!
//! client -> edge -> WireGuard UDP -> **origin**: the origin dials out to its edges (so it works
//! behind NAT with no open port), terminates the tunnel's TCP in userspace (`kokoa-tunnel`),
//! and bridges each stream to the local service that owns the stream's destination port.
//! Only configured service ports accept streams; the origin is never a router into the LAN.
//!
//! In control mode (a `[control]` table in the config) the address, edges and services come
//! from `kokoa-control` ([`control::OriginControl`] applies its snapshots through the same
//! swappable service table and `Tunnel::set_peers`); the last applied one is persisted so a
//! restart serves without control.
//!
//! Modules: [`config`] (file form and validated model), [`apply`] (specs from the file or
//! control), [`service`] (the port -> local address table and each service's health),
//! [`probe`] (the active checks of the services), [`bridge`] (one stream to its app),
//! [`metrics`] (Prometheus).

pub mod apply;
pub mod bridge;
pub mod config;
pub mod metrics;
pub mod probe;
pub mod service;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use kokoa_node::admin::Admin;
use kokoa_node::drain::{Drain, DrainOutcome};
use kokoa_tunnel::Tunnel;
use prometheus_client::registry::Registry;
use tokio::task::JoinSet;

use crate::apply::OriginApplier;
pub use crate::config::OriginConfig;
use crate::metrics::{Metrics, ServiceHealthCollector, TunnelCollector};
use crate::service::{ServiceTable, Services};

/// Runs the origin until `shutdown` resolves. See [`run_with_reload`].
pub async fn run(config: OriginConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with_reload(config, None, shutdown).await
}

/// Runs the origin until `shutdown` resolves: binds its tunnel and admin listener, applies
/// what it runs through one [`OriginApplier`] (the file's spec, or control's persisted
/// snapshot and then control's stream), bridges tunnel streams to local services, and on
/// shutdown stops accepting and drains open streams for up to `config.drain_timeout`. In file
/// mode, with `config_path`, SIGHUP re-reads the file and applies it through the same applier;
/// a file that does not validate is logged and the running config kept.
///
/// Errors: a socket (tunnel UDP, admin TCP) that cannot be bound. Errors on single streams are
/// logged and counted, never returned; a service whose address does not resolve is reported
/// as unhealthy, never an error.
pub async fn run_with_reload(
    config: OriginConfig,
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (private_key, options) =
        kokoa_node::config::startup_tunnel(&config.tunnel, config.control.as_ref());
    let tunnel_config = config.tunnel.tunnel_config(private_key, options);
    let listen = tunnel_config.listen;
    let (tunnel, incoming) = Tunnel::bind(tunnel_config)
        .await
        .with_context(|| format!("binding the tunnel's UDP socket on {listen}"))?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin)
        .await
        .with_context(|| {
            format!(
                "binding the admin listener on {} ([origin] admin)",
                config.admin
            )
        })?;
    let metrics = Metrics::default();
    let services = Arc::new(Services::with_checks(
        ServiceTable::default(),
        config.checks,
    ));
    let applier = Arc::new(OriginApplier::new(
        config.clone(),
        tunnel.clone(),
        services.clone(),
        &metrics,
    ));
    let mut collectors: Vec<Box<dyn prometheus_client::collector::Collector>> =
        vec![Box::new(ServiceHealthCollector::new(services.clone()))];
    // Probes run until shutdown; a down service's port is closed by them (see `service`).
    let mut background = vec![tokio::spawn(probe::run(services.clone(), metrics.clone()))];
    let mut edge_names = HashMap::new();
    match (&config.control, &config.spec) {
        (Some(settings), _) => {
            let mut client =
                kokoa_node::control::ControlClient::new(settings.clone(), applier.clone());
            collectors.push(Box::new(kokoa_node::control::ControlCollector::new(
                client.status(),
            )));
            if client.restore().await == 0 {
                tracing::warn!(
                    "no config from control yet: no edges and no services until its first snapshot"
                );
            }
            tracing::info!(control = %settings.url, "following control");
            background.push(tokio::spawn(client.run(std::future::pending())));
        }
        (None, Some(spec)) => {
            applier
                .apply(0, spec, None)
                .await
                .context("applying the config")?;
            edge_names = spec
                .edges
                .iter()
                .map(|edge| (edge.public_key, edge.name.to_string()))
                .collect();
            if let Some(path) = config_path {
                let applier = applier.clone();
                background.push(tokio::spawn(kokoa_node::signal::on_reload(move || {
                    let applier = applier.clone();
                    let path = path.clone();
                    async move { reload(&applier, &path).await }
                })));
            }
        }
        (None, None) => anyhow::bail!("the config has neither [control] nor an origin address"),
    }
    tracing::info!(
        public_key = %tunnel.public_key(),
        udp = %tunnel.local_addr(),
        admin = %admin_listener.local_addr().unwrap_or(config.admin),
        control = config.control.as_ref().map(|c| c.url.as_str()),
        "origin started"
    );
    // Stop following control and reloading before draining, so no config reopens ports.
    let shutdown = async move {
        shutdown.await;
        for task in background {
            task.abort();
            let _ = task.await;
        }
    };
    serve(
        &config,
        tunnel,
        incoming,
        services,
        metrics,
        edge_names,
        collectors,
        admin_listener,
        shutdown,
    )
    .await
}

/// SIGHUP in file mode: the file again, validated by the same model and applied by the same
/// applier as at start.
async fn reload(applier: &OriginApplier, path: &std::path::Path) {
    let config = match OriginConfig::load(path) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "reload refused: the file does not validate; the running config is kept");
            return;
        }
    };
    if config.checks != applier.checks() {
        tracing::warn!(path = %path.display(), "[checks] changed: the new probe settings take effect when the origin restarts");
    }
    let Some(spec) = config.spec else {
        tracing::error!(path = %path.display(), "reload refused: the file now has [control]; restart the origin to switch to control mode");
        return;
    };
    match applier.apply(0, &spec, None).await {
        Ok(()) => tracing::info!(path = %path.display(), "config reloaded"),
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "reload refused; the running config is kept")
        }
    }
}

/// Serves tunnel streams through `services` until `shutdown`, then drains and closes.
#[allow(clippy::too_many_arguments)]
async fn serve(
    config: &OriginConfig,
    tunnel: Tunnel,
    mut incoming: kokoa_tunnel::Incoming,
    services: Arc<Services>,
    metrics: Metrics,
    edge_names: HashMap<kokoa_tunnel::key::PublicKey, String>,
    collectors: Vec<Box<dyn prometheus_client::collector::Collector>>,
    admin_listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    registry.register_collector(Box::new(TunnelCollector::new(
        tunnel.clone(),
        edge_names,
        metrics.streams_unrouted.clone(),
    )));
    for collector in collectors {
        registry.register_collector(collector);
    }
    let admin = Admin::new(registry);

    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin_task = tokio::spawn({
        let admin = admin.clone();
        async move {
            let stop = async {
                // A dropped sender also stops the listener.
                let _ = admin_stop_rx.await;
            };
            if let Err(error) = admin.serve(admin_listener, stop).await {
                tracing::error!(%error, "admin listener failed");
            }
        }
    });

    let (drain_signal, drain_watch) = Drain::new();
    let mut bridges = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = incoming.accept() => {
                let Some(stream) = accepted else {
                    tracing::warn!("tunnel closed; stopping");
                    break;
                };
                let services = services.clone();
                let metrics = metrics.clone();
                let watch = drain_watch.clone();
                let timeout = config.connect_timeout;
                bridges.spawn(async move {
                    bridge::bridge(stream, services, metrics, timeout).await;
                    drop(watch);
                });
            }
            // Reap finished bridges so the set does not grow without bound.
            Some(_) = bridges.join_next(), if !bridges.is_empty() => {}
        }
    }

    // Stop accepting: new SYNs get a reset, load balancers see 503 on /healthz.
    services.stop_accepting(&tunnel);
    admin.set_draining(true);
    drop(drain_watch);
    tracing::info!(
        open_streams = bridges.len(),
        grace = ?config.drain_timeout,
        "draining"
    );
    // Each bridge task holds a watch until it ends; the drain completes when all have ended.
    // Streams the tunnel accepted just before the ports closed are reset rather than left to
    // close cleanly, so the edge sees a failed connect (and may retry) instead of an empty
    // response.
    let drained = drain_signal.drain(config.drain_timeout);
    tokio::pin!(drained);
    let outcome = loop {
        tokio::select! {
            outcome = &mut drained => break outcome,
            Some(mut late) = incoming.accept() => {
                tracing::debug!(remote = %late.remote, port = late.local_port, "stream arrived while draining; resetting");
                late.stream.abort();
            }
        }
    };
    match outcome {
        DrainOutcome::Complete => tracing::info!("all streams finished"),
        DrainOutcome::TimedOut { remaining } => {
            tracing::warn!(remaining, "drain time is up; closing the remaining streams")
        }
    }
    bridges.abort_all();
    while bridges.join_next().await.is_some() {}
    tunnel.shutdown();
    let _ = admin_stop_tx.send(());
    let _ = admin_task.await;
    tracing::info!("origin stopped");
    Ok(())
}
