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
//! Modules: [`config`] (file form and validated model), [`control`] (snapshots from control), [`service`] (the port -> local address
//! table), [`bridge`] (one stream to its app), [`metrics`] (Prometheus).

pub mod bridge;
pub mod config;
pub mod control;
pub mod metrics;
pub mod service;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use kokoa_node::admin::Admin;
use kokoa_node::drain::{Drain, DrainOutcome};
use kokoa_tunnel::{PeerConfig, Tunnel, TunnelConfig};
use prometheus_client::registry::Registry;
use tokio::task::JoinSet;

pub use crate::config::OriginConfig;
use crate::metrics::{Metrics, TunnelCollector};
use crate::service::{Service, ServiceTable, Services};

/// Resolves every host name in `config` and builds the tunnel configuration and service table.
/// With `lenient_endpoints` (control mode) an edge endpoint that does not resolve now is left
/// out with a warning (the origin waits for the edge's packets; the next snapshot retries)
/// instead of failing the whole config.
async fn prepare(
    config: &OriginConfig,
    lenient_endpoints: bool,
) -> anyhow::Result<(TunnelConfig, ServiceTable)> {
    let prefer_ipv4 = config.tunnel.listen.is_ipv4();
    let mut peers = Vec::with_capacity(config.edges.len());
    for edge in &config.edges {
        let endpoint = match &edge.endpoint {
            Some(endpoint) => match endpoint.resolve(prefer_ipv4).await {
                Ok(addr) => Some(addr),
                Err(error) if lenient_endpoints => {
                    tracing::warn!(edge = %edge.name, %endpoint, %error, "cannot resolve the edge's endpoint; waiting for its packets");
                    None
                }
                Err(error) => {
                    return Err(anyhow::Error::new(error).context(format!(
                        "resolving edge `{}` endpoint {endpoint}",
                        edge.name
                    )))
                }
            },
            None => None,
        };
        peers.push(PeerConfig {
            public_key: edge.public_key,
            endpoint,
            allowed_ips: vec![ipnet::Ipv4Net::from(edge.address)],
            local_address: config.address,
            persistent_keepalive: edge.keepalive,
        });
    }
    let mut services = Vec::with_capacity(config.services.len());
    for service in &config.services {
        let local = service.local.resolve(true).await.with_context(|| {
            format!(
                "resolving service `{}` local address {}",
                service.name, service.local
            )
        })?;
        services.push(Service {
            name: service.name.clone(),
            port: service.port,
            local,
        });
    }
    let table = ServiceTable::new(services)?;
    let mut tunnel = TunnelConfig::new(config.tunnel.private_key.clone(), config.tunnel.listen);
    tunnel.mtu = config.tunnel.mtu;
    tunnel.window = config.tunnel.window.clone();
    tunnel.stall_timeout = config.tunnel.stall_timeout;
    tunnel.peers = peers;
    tunnel.accept_ports = table.ports();
    Ok((tunnel, table))
}

/// Runs the origin until `shutdown` resolves, then stops accepting streams and drains open ones
/// for up to `config.drain_timeout` before closing the tunnel.
///
/// Errors: a host name that does not resolve, or a socket (tunnel UDP, admin TCP) that cannot
/// be bound. Errors on single streams are logged and counted, never returned.
pub async fn run(config: OriginConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if config.control.is_some() {
        return run_control(config, shutdown).await;
    }
    let (tunnel_config, table) = prepare(&config, false).await?;
    let listen = tunnel_config.listen;
    let (tunnel, incoming) = Tunnel::bind(tunnel_config)
        .await
        .with_context(|| format!("binding the tunnel's UDP socket on {listen}"))?;
    let admin_listener = bind_admin(&config).await?;
    tracing::info!(
        public_key = %tunnel.public_key(),
        udp = %tunnel.local_addr(),
        admin = %admin_listener.local_addr().unwrap_or(config.admin),
        address = %config.address,
        edges = config.edges.len(),
        services = table.len(),
        "origin started"
    );
    for service in table.iter() {
        tracing::info!(service = %service.name, port = service.port, local = %service.local, "serving");
    }
    let edge_names: HashMap<_, _> = config
        .edges
        .iter()
        .map(|edge| (edge.public_key, edge.name.clone()))
        .collect();
    let services = Arc::new(Services::new(table));
    serve(
        &config,
        tunnel,
        incoming,
        services,
        Metrics::default(),
        edge_names,
        Vec::new(),
        admin_listener,
        shutdown,
    )
    .await
}

async fn bind_admin(config: &OriginConfig) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(config.admin)
        .await
        .with_context(|| {
            format!(
                "binding the admin listener on {} ([origin] admin)",
                config.admin
            )
        })
}

/// Control mode: binds the tunnel (no peers yet) and the admin listener, applies the persisted
/// snapshot (so the origin serves while control is unreachable), then follows control.
async fn run_control(
    config: OriginConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    use kokoa_node::control::{load_snapshot, ControlClient};
    use kokoa_proto::v1::snapshot::Node;

    let settings = config
        .control
        .clone()
        .context("run_control needs a [control] table")?;
    let mut private_key = config.tunnel.private_key.clone();
    if config.tunnel.key_from_control {
        match load_snapshot(&settings.state_dir) {
            Ok(Some(snapshot)) => {
                if let Some(Node::Origin(origin)) = snapshot.node {
                    if let Ok(key) = kokoa_tunnel::key::PrivateKey::from_base64(&origin.private_key)
                    {
                        private_key = key;
                    }
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "cannot read the persisted config"),
        }
    }
    let mut tunnel_config = TunnelConfig::new(private_key, config.tunnel.listen);
    tunnel_config.mtu = config.tunnel.mtu;
    tunnel_config.window = config.tunnel.window.clone();
    tunnel_config.stall_timeout = config.tunnel.stall_timeout;
    let listen = tunnel_config.listen;
    let (tunnel, incoming) = Tunnel::bind(tunnel_config)
        .await
        .with_context(|| format!("binding the tunnel's UDP socket on {listen}"))?;
    let admin_listener = bind_admin(&config).await?;
    tracing::info!(
        control = %settings.url,
        public_key = %tunnel.public_key(),
        udp = %tunnel.local_addr(),
        admin = %admin_listener.local_addr().unwrap_or(config.admin),
        "origin started in control mode"
    );
    let metrics = Metrics::default();
    let services = Arc::new(Services::new(ServiceTable::default()));
    let applier = Arc::new(control::OriginControl::new(
        config.clone(),
        tunnel.clone(),
        services.clone(),
        &metrics,
    ));
    let mut client = ControlClient::new(settings, applier);
    let status = kokoa_node::control::ControlCollector::new(client.status());
    if client.restore().await == 0 {
        tracing::warn!(
            "no config from control yet: no edges and no services until its first snapshot"
        );
    }
    let (client_stop_tx, client_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let client_task = tokio::spawn(client.run(async {
        let _ = client_stop_rx.await;
    }));
    // Stop following control before draining, so no snapshot reopens ports meanwhile.
    let shutdown = async move {
        shutdown.await;
        let _ = client_stop_tx.send(());
        let _ = client_task.await;
    };
    serve(
        &config,
        tunnel,
        incoming,
        services,
        metrics,
        HashMap::new(),
        vec![Box::new(status)],
        admin_listener,
        shutdown,
    )
    .await
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
                let table = services.load();
                let metrics = metrics.clone();
                let watch = drain_watch.clone();
                let timeout = config.connect_timeout;
                bridges.spawn(async move {
                    bridge::bridge(stream, table, metrics, timeout).await;
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
