//! Raw TCP routes: a public port forwarded to an origin service as a plain byte stream (for
//! non-HTTP protocols such as a libp2p node on 4001). Each direction is copied until EOF and
//! then half-closed, so protocols that shut down one side first keep working.
//!
//! Right after `accept()` the route's allow/deny list and the connection caps are checked; a
//! refused client's connection is closed before anything is dialed. With
//! `proxy_protocol = "v2"` the origin stream starts with a PROXY protocol v2 header carrying the
//! client's address and the address it connected to.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use kokoa_node::drain::DrainWatch;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::acl::Acl;
use crate::dial::Dialer;
use crate::https::refuse;
use crate::limit::{ConnectionLimiter, LogSampler, Refusal};
use crate::metrics::{ByteLabels, DialLabels, Metrics};
use crate::proxy_protocol::{v2_header, ProxyProtocol};

/// A raw TCP route as the edge runs it: the model's route on its listening address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpRoute {
    /// Public listener.
    pub listen: SocketAddr,
    /// The origin's name.
    pub origin: String,
    /// The service port inside the tunnel.
    pub port: u16,
    /// Whether a PROXY protocol header is sent to the origin first.
    pub proxy_protocol: ProxyProtocol,
    /// Who may connect (others are closed at accept).
    pub acl: Acl,
}

impl TcpRoute {
    /// `route` listening on its own address, or on `default_ip` (the HTTPS listener's).
    pub fn new(route: &kokoa_model::TcpRoute, default_ip: IpAddr) -> Self {
        Self {
            listen: route.listen.addr(default_ip),
            origin: route.origin.to_string(),
            port: route.port.get(),
            proxy_protocol: route.proxy_protocol,
            acl: Acl::from(&route.access),
        }
    }
}

/// One raw TCP route's listener.
pub struct TcpForwarder<D: Dialer> {
    /// The route.
    pub route: TcpRoute,
    /// How origins are reached.
    pub dialer: Arc<D>,
    /// Metrics.
    pub metrics: Metrics,
    /// Connection caps shared by every listener.
    pub connections: Arc<ConnectionLimiter>,
}

impl<D: Dialer> TcpForwarder<D> {
    fn label(&self) -> String {
        format!("tcp:{}", self.route.listen)
    }

    /// Accepts connections until draining begins; each is forwarded in its own task.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        drain: DrainWatch,
        abort: watch::Receiver<bool>,
    ) {
        let label = self.label();
        let sampler = LogSampler::new(Duration::from_secs(1));
        loop {
            let (stream, client) = tokio::select! {
                _ = drain.signaled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, listen = %self.route.listen, "tcp accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            if !self.route.acl.permits(client.ip()) {
                Metrics::host_counter(&self.metrics.acl_denied, &label).inc();
                refuse(
                    stream,
                    &self.metrics,
                    &sampler,
                    &label,
                    client,
                    Refusal::Acl,
                );
                continue;
            }
            let permit = match self.connections.try_acquire(client.ip()) {
                Ok(permit) => permit,
                Err(refusal) => {
                    refuse(stream, &self.metrics, &sampler, &label, client, refusal);
                    continue;
                }
            };
            let span = tracing::info_span!(
                "tcp",
                client = %client,
                listen = %self.route.listen,
                origin = %self.route.origin,
                port = self.route.port,
            );
            let forwarder = self.clone();
            let drain = drain.clone();
            let abort = abort.clone();
            tokio::spawn(
                async move {
                    let _permit = permit;
                    tokio::select! {
                        _ = forwarder.forward(stream) => {}
                        _ = wait_abort(abort) => tracing::debug!("closed by shutdown"),
                    }
                    drop(drain);
                }
                .instrument(span),
            );
        }
    }

    async fn forward(&self, mut client: TcpStream) {
        let label = self.label();
        let _guard = self.metrics.connection(&label);
        let _ = client.set_nodelay(true);
        let mut upstream = match self.dialer.dial(&self.route.origin, self.route.port).await {
            Ok(upstream) => upstream,
            Err(error) => {
                self.metrics
                    .dial_errors
                    .get_or_create(&DialLabels {
                        origin: self.route.origin.clone(),
                        reason: error.reason(),
                    })
                    .inc();
                tracing::warn!(%error, "cannot reach the origin service; closing the client connection");
                return;
            }
        };
        if self.route.proxy_protocol == ProxyProtocol::V2 {
            let header = match (client.peer_addr(), client.local_addr()) {
                (Ok(peer), Ok(local)) => v2_header(peer, local),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::debug!(%error, "client socket addresses unavailable; closing");
                    return;
                }
            };
            if let Err(error) = upstream.write_all(&header).await {
                tracing::debug!(%error, "cannot send the PROXY protocol header");
                return;
            }
        }
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => {
                self.count(&label, "in", up);
                self.count(&label, "out", down);
                tracing::debug!(up, down, "tcp connection closed");
            }
            Err(error) => tracing::debug!(%error, "tcp connection ended with an error"),
        }
    }

    fn count(&self, route: &str, direction: &'static str, bytes: u64) {
        self.metrics
            .bytes
            .get_or_create(&ByteLabels {
                route: route.to_owned(),
                direction,
            })
            .inc_by(bytes);
    }
}

async fn wait_abort(mut abort: watch::Receiver<bool>) {
    let _ = abort.wait_for(|abort| *abort).await;
}
