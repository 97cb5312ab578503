//! `kokoa-origin`: the last hop of the request path.
//!
//! client -> edge -> WireGuard UDP -> **origin**: the origin dials out to its edges (so it works
//! behind NAT with no open port), terminates the tunnel's TCP in userspace (`kokoa-tunnel`),
//! and bridges each stream to the local service that owns the stream's destination port.
//! Only configured service ports accept streams; the origin is never a router into the LAN.
//!
//! Modules: [`config`] (file form and validated model), [`service`] (the port -> local address
//! table), [`bridge`] (one stream to its app), [`metrics`] (Prometheus).

pub mod bridge;
pub mod config;
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
async fn prepare(config: &OriginConfig) -> anyhow::Result<(TunnelConfig, ServiceTable)> {
    let prefer_ipv4 = config.tunnel.listen.is_ipv4();
    let mut peers = Vec::with_capacity(config.edges.len());
    for edge in &config.edges {
        let endpoint =
            match &edge.endpoint {
                Some(endpoint) => Some(endpoint.resolve(prefer_ipv4).await.with_context(|| {
                    format!("resolving edge `{}` endpoint {endpoint}", edge.name)
                })?),
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
    tunnel.tcp_buffer = config.tunnel.tcp_buffer;
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
    let (tunnel_config, table) = prepare(&config).await?;
    let listen = tunnel_config.listen;
    let (tunnel, mut incoming) = Tunnel::bind(tunnel_config)
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
    let admin_addr = admin_listener.local_addr().unwrap_or(config.admin);
    tracing::info!(
        public_key = %tunnel.public_key(),
        udp = %tunnel.local_addr(),
        admin = %admin_addr,
        address = %config.address,
        edges = config.edges.len(),
        services = table.len(),
        "origin started"
    );
    for service in table.iter() {
        tracing::info!(service = %service.name, port = service.port, local = %service.local, "serving");
    }

    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let edge_names: HashMap<_, _> = config
        .edges
        .iter()
        .map(|edge| (edge.public_key, edge.name.clone()))
        .collect();
    registry.register_collector(Box::new(TunnelCollector::new(tunnel.clone(), edge_names)));
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

    let services = Arc::new(Services::new(table));
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
