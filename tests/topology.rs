//! One `kokoa-edge` and N `kokoa-origin` processes on loopback, wired together with fresh keys
//! and free ports, started and waited for.
//!
//! Addresses: edge `j` (from 0) on 127.0.0.(2+j), origin `i` (from 1) on 127.0.0.(10+i), the
//! apps wherever the test put them (usually 127.0.0.1). Inside the tunnel, origin `i` owns
//! 10.100.i.0/24: it is 10.100.i.1 and edge `j` is 10.100.i.(10+j), as in the design's
//! addressing plan.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use kokoa_tunnel::key::PrivateKey;
use tempfile::TempDir;

use crate::client::EdgeClient;
use crate::config::{
    write, EdgeOrigin, EdgeRoute, EdgeSpec, EdgeTcpRoute, EdgeTimeouts, Limits, OriginEdge,
    OriginService, OriginSpec, TunnelKeys,
};
use crate::net::{eventually, free_tcp, free_udp, loopback, metric, wait_healthy};
use crate::pki::TestCa;
use crate::process::{binary, Process};

/// The edge's name in every origin's `[[edges]]`.
pub const EDGE_NAME: &str = "edge";

/// An origin to start.
#[derive(Clone, Debug)]
pub struct OriginPlan {
    /// Name (routes refer to it).
    pub name: String,
    /// Its services.
    pub services: Vec<OriginService>,
    /// More `[[edges]]` than the real edge (test peers).
    pub extra_edges: Vec<OriginEdge>,
}

/// What to start.
#[derive(Default)]
pub struct Builder {
    origins: Vec<OriginPlan>,
    routes: Vec<EdgeRoute>,
    tcp_routes: Vec<(String, u16, Option<String>)>,
    extra_names: Vec<String>,
    timeouts: EdgeTimeouts,
    limits: Limits,
    drain_timeout: u64,
    edges: usize,
    edge_tunnel: TunnelKeys,
    origin_tunnel: TunnelKeys,
    origin_checks: String,
}

/// A started origin.
pub struct Origin {
    /// Its plan.
    pub plan: OriginPlan,
    /// Its key.
    pub key: PrivateKey,
    /// Its written config.
    pub spec: OriginSpec,
    /// The process.
    pub process: Process,
}

/// The started edge.
pub struct Edge {
    /// Its key.
    pub key: PrivateKey,
    /// Its written config.
    pub spec: EdgeSpec,
    /// The process.
    pub process: Process,
    /// How many times it was started.
    pub starts: usize,
}

/// Everything running; dropping it kills the processes and removes the files.
pub struct Topology {
    /// The test CA that signed the edge's certificate.
    pub ca: TestCa,
    /// The (first) edge.
    pub edge: Edge,
    /// Further edges, when [`Builder::edges`] asked for more than one.
    pub more_edges: Vec<Edge>,
    /// The origins, in plan order.
    pub origins: Vec<Origin>,
    /// Public listen address of each `[[tcp_routes]]`, in the order they were added.
    pub tcp_listens: Vec<SocketAddr>,
    /// Config files and logs.
    pub dir: TempDir,
}

/// The inner address of origin number `index` (from 1).
pub fn origin_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 100, index as u8, 1)
}

impl Builder {
    /// Nothing yet; drain time 3 s.
    pub fn new() -> Self {
        Self {
            drain_timeout: 3,
            edges: 1,
            ..Self::default()
        }
    }

    /// Adds an origin with services `(name, port, local)`.
    pub fn origin(mut self, name: &str, services: &[(&str, u16, SocketAddr)]) -> Self {
        self.origins.push(OriginPlan {
            name: name.to_owned(),
            services: services
                .iter()
                .map(|(name, port, local)| OriginService {
                    name: (*name).to_owned(),
                    port: *port,
                    local: *local,
                    health_path: None,
                })
                .collect(),
            extra_edges: Vec::new(),
        });
        self
    }

    /// Sets the `health_path` of the last origin's service on `port`.
    pub fn health_path(mut self, port: u16, path: &str) -> Self {
        if let Some(origin) = self.origins.last_mut() {
            for service in origin.services.iter_mut().filter(|s| s.port == port) {
                service.health_path = Some(path.to_owned());
            }
        }
        self
    }

    /// The `[checks]` lines of every origin (`interval = 1\nunhealthy_threshold = 2`).
    pub fn origin_checks(mut self, lines: &str) -> Self {
        self.origin_checks = lines.to_owned();
        self
    }

    /// Adds a test peer to the last origin's `[[edges]]`.
    pub fn extra_edge(mut self, edge: OriginEdge) -> Self {
        if let Some(origin) = self.origins.last_mut() {
            origin.extra_edges.push(edge);
        }
        self
    }

    /// Routes `host` to `origin`'s service `port`.
    pub fn route(self, host: &str, origin: &str, port: u16) -> Self {
        self.route_with(host, origin, port, Limits::default())
    }

    /// Routes `host` to `origin`'s service `port` with per-route `limits` (overrides of the
    /// default policy, allow/deny lists).
    pub fn route_with(mut self, host: &str, origin: &str, port: u16, limits: Limits) -> Self {
        self.routes.push(EdgeRoute {
            host: host.to_owned(),
            origin: origin.to_owned(),
            port,
            limits,
        });
        self
    }

    /// A raw TCP route from a free public port to `origin`'s service `port`.
    pub fn tcp_route(mut self, origin: &str, port: u16) -> Self {
        self.tcp_routes.push((origin.to_owned(), port, None));
        self
    }

    /// A raw TCP route that sends the app a PROXY protocol header of `version` (`"v2"`).
    pub fn tcp_route_proxy_protocol(mut self, origin: &str, port: u16, version: &str) -> Self {
        self.tcp_routes
            .push((origin.to_owned(), port, Some(version.to_owned())));
        self
    }

    /// The edge's default policy (`[limits]`).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The edge's `[edge]` timeouts and sizes.
    pub fn timeouts(mut self, timeouts: EdgeTimeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Adds a name to the edge's certificate without routing it.
    pub fn certificate_name(mut self, name: &str) -> Self {
        self.extra_names.push(name.to_owned());
        self
    }

    /// Drain time of both binaries, seconds.
    pub fn drain_timeout(mut self, secs: u64) -> Self {
        self.drain_timeout = secs;
        self
    }

    /// Number of edges (default 1); every origin dials every edge.
    pub fn edges(mut self, count: usize) -> Self {
        self.edges = count.clamp(1, 8);
        self
    }

    /// More `[tunnel]` keys for the edges (window bounds, stall timeout).
    pub fn edge_tunnel(mut self, keys: TunnelKeys) -> Self {
        self.edge_tunnel = keys;
        self
    }

    /// More `[tunnel]` keys for the origins.
    pub fn origin_tunnel(mut self, keys: TunnelKeys) -> Self {
        self.origin_tunnel = keys;
        self
    }

    /// Writes the configs, starts the edges and the origins, and waits until every origin has
    /// completed a handshake with every edge.
    pub async fn start(self) -> anyhow::Result<Topology> {
        let dir = tempfile::tempdir().context("creating the test directory")?;
        let ca = TestCa::new()?;

        let mut hosts: Vec<&str> = self
            .routes
            .iter()
            .map(|r| r.host.as_str())
            .chain(self.extra_names.iter().map(String::as_str))
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        if hosts.is_empty() {
            hosts.push("unused.test");
        }
        let issued = ca.issue(&hosts)?;
        let cert = write(dir.path(), "edge.crt", &issued.chain_pem)?;
        let key = write(dir.path(), "edge.key", &issued.key_pem)?;

        let origin_keys: Vec<PrivateKey> = self
            .origins
            .iter()
            .map(|_| PrivateKey::generate())
            .collect();
        let mut edges = Vec::new();
        let mut tcp_listens = Vec::new();
        for j in 0..self.edges.max(1) {
            let edge_ip = loopback(2 + j as u8);
            let edge_key = PrivateKey::generate();
            let mut tcp_routes = Vec::new();
            for (origin, port, proxy_protocol) in &self.tcp_routes {
                let listen = free_tcp(edge_ip)?;
                if j == 0 {
                    tcp_listens.push(listen);
                }
                tcp_routes.push(EdgeTcpRoute {
                    listen,
                    origin: origin.clone(),
                    port: *port,
                    proxy_protocol: proxy_protocol.clone(),
                });
            }
            let spec = EdgeSpec {
                https: free_tcp(edge_ip)?,
                http: free_tcp(edge_ip)?,
                admin: free_tcp(edge_ip)?,
                drain_timeout: self.drain_timeout,
                private_key: edge_key.clone(),
                listen: free_udp(edge_ip)?,
                tunnel: self.edge_tunnel.clone(),
                state_dir: dir.path().join(format!("{}-state", edge_name(j))),
                origins: self
                    .origins
                    .iter()
                    .zip(&origin_keys)
                    .enumerate()
                    .map(|(i, (plan, key))| EdgeOrigin {
                        name: plan.name.clone(),
                        public_key: key.public_key(),
                        endpoint: None,
                        address: edge_address_n(i + 1, j),
                        origin_address: origin_address(i + 1),
                    })
                    .collect(),
                routes: self.routes.clone(),
                tcp_routes,
                certificates: vec![(cert.clone(), key.clone())],
                timeouts: self.timeouts.clone(),
                limits: self.limits.clone(),
            };
            let process = start_edge(dir.path(), &edge_name(j), &spec, 1).await?;
            edges.push(Edge {
                key: edge_key,
                spec,
                process,
                starts: 1,
            });
        }

        let mut origins = Vec::new();
        for (i, (plan, key)) in self.origins.into_iter().zip(origin_keys).enumerate() {
            let ip = loopback(10 + i as u8 + 1);
            let mut origin_edges: Vec<OriginEdge> = edges
                .iter()
                .enumerate()
                .map(|(j, edge)| OriginEdge {
                    name: edge_name(j),
                    public_key: edge.key.public_key(),
                    endpoint: Some(edge.spec.listen),
                    address: edge_address_n(i + 1, j),
                })
                .collect();
            origin_edges.extend(plan.extra_edges.iter().cloned());
            let spec = OriginSpec {
                admin: free_tcp(ip)?,
                address: origin_address(i + 1),
                private_key: key.clone(),
                // A known port, so that test peers can dial the origin too.
                listen: free_udp(ip)?,
                drain_timeout: self.drain_timeout,
                tunnel: self.origin_tunnel.clone(),
                edges: origin_edges,
                services: plan.services.clone(),
                checks: self.origin_checks.clone(),
            };
            let process = start_origin(dir.path(), &plan.name, &spec).await?;
            origins.push(Origin {
                plan,
                key,
                spec,
                process,
            });
        }
        let mut edges = edges.into_iter();
        let edge = edges.next().context("at least one edge")?;
        let topology = Topology {
            ca,
            edge,
            more_edges: edges.collect(),
            origins,
            tcp_listens,
            dir,
        };
        for origin in &topology.origins {
            for j in 0..=topology.more_edges.len() {
                topology.wait_handshake(origin, &edge_name(j)).await?;
            }
        }
        Ok(topology)
    }
}

/// The name of edge number `j` (from 0) in the origins' `[[edges]]`: `edge`, `edge1`, ...
pub fn edge_name(j: usize) -> String {
    if j == 0 {
        EDGE_NAME.to_owned()
    } else {
        format!("{EDGE_NAME}{j}")
    }
}

/// The inner address of edge number `j` (from 0) toward origin number `index` (from 1).
pub fn edge_address_n(index: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 100, index as u8, 10 + j as u8)
}

/// Writes `spec` to `dir/NAME.toml`, starts `kokoa-edge` and waits for `/healthz`. `start`
/// numbers the process's log files (1 for the first start of this edge).
pub async fn start_edge(
    dir: &std::path::Path,
    name: &str,
    spec: &EdgeSpec,
    start: usize,
) -> anyhow::Result<Process> {
    let config = write(dir, &format!("{name}.toml"), &spec.to_toml())?;
    let config_arg = config.to_string_lossy().into_owned();
    let label = if start == 1 {
        format!("kokoa-{name}")
    } else {
        format!("kokoa-{name}-{start}")
    };
    let mut process = Process::spawn(
        &label,
        &binary("kokoa-edge")?,
        ["--config", config_arg.as_str(), "run"],
        dir,
        &[],
    )?;
    wait_healthy(&mut process, spec.admin).await?;
    Ok(process)
}

/// Writes `spec` to `dir/origin-NAME.toml`, starts `kokoa-origin` and waits for `/healthz`.
pub async fn start_origin(
    dir: &std::path::Path,
    name: &str,
    spec: &OriginSpec,
) -> anyhow::Result<Process> {
    let config = write(dir, &format!("origin-{name}.toml"), &spec.to_toml())?;
    let config_arg = config.to_string_lossy().into_owned();
    let mut process = Process::spawn(
        &format!("kokoa-origin-{name}"),
        &binary("kokoa-origin")?,
        ["--config", config_arg.as_str(), "run"],
        dir,
        &[],
    )?;
    wait_healthy(&mut process, spec.admin).await?;
    Ok(process)
}

impl Topology {
    /// An HTTPS client for the (first) edge.
    pub fn client(&self) -> anyhow::Result<EdgeClient> {
        EdgeClient::new(self.edge.spec.https, &self.ca)
    }

    /// Every edge, the first one first.
    pub fn edges(&self) -> impl Iterator<Item = &Edge> {
        std::iter::once(&self.edge).chain(&self.more_edges)
    }

    /// The origin named `name`.
    pub fn origin(&self, name: &str) -> anyhow::Result<&Origin> {
        self.origins
            .iter()
            .find(|o| o.plan.name == name)
            .with_context(|| format!("no origin named {name}"))
    }

    /// Waits until `origin` reports a completed handshake with the edge named `edge`.
    pub async fn wait_handshake(&self, origin: &Origin, edge: &str) -> anyhow::Result<()> {
        let series = format!("kokoa_tunnel_peer_last_handshake_age_seconds{{edge=\"{edge}\"}}");
        eventually("origin-edge handshake", Duration::from_secs(20), || async {
            match metric(origin.spec.admin, &series).await? {
                Some(_) => Ok(()),
                None => bail!("no handshake with the edge yet"),
            }
        })
        .await
        .map_err(|e| {
            e.context(format!(
                "origin {} never completed a handshake with {edge}\n{}\n{}",
                origin.plan.name,
                origin.process.logs(),
                self.edge.process.logs()
            ))
        })
    }

    /// Where the config files and logs are.
    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Stops the (first) edge with `signal` (`KILL`, or `TERM` and its drain), waits for it
    /// to exit, and starts it again with the same config and state directory. Returns when
    /// the new process answers `/healthz` (its readiness), and that instant.
    pub async fn restart_edge(&mut self, signal: &str) -> anyhow::Result<std::time::Instant> {
        let edge = &mut self.edge;
        edge.process.signal(signal).await?;
        let limit = Duration::from_secs(edge.spec.drain_timeout + 10);
        edge.process.wait_exit(limit).await?;
        edge.starts += 1;
        edge.process = start_edge(self.dir.path(), EDGE_NAME, &edge.spec, edge.starts).await?;
        Ok(std::time::Instant::now())
    }
}
