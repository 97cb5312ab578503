//! Edge and origin config files, written from typed specs in the formats of
//! `edge/examples/edge.toml` and `origin/examples/origin.toml`.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kokoa_tunnel::key::{PrivateKey, PublicKey};

/// Optional `[tunnel]` keys beyond the key and the listen address (`None`: not written, the
/// binary's default applies).
#[derive(Clone, Debug, Default)]
pub struct TunnelKeys {
    /// Largest per-direction buffer of one stream.
    pub tcp_buffer: Option<usize>,
    /// Smallest per-direction buffer.
    pub min_tcp_buffer: Option<usize>,
    /// Node-wide bytes of stream buffers.
    pub window_budget: Option<usize>,
    /// One client key's share (edge).
    pub window_per_client: Option<usize>,
    /// One peer's share (origin: per edge).
    pub window_per_peer: Option<usize>,
    /// Seconds a stream may get none of its data acknowledged (`0`: never).
    pub stall_timeout: Option<u64>,
}

impl TunnelKeys {
    /// The `key = value` lines of what is set.
    pub fn to_toml_lines(&self) -> String {
        let mut out = String::new();
        for (key, value) in [
            ("tcp_buffer", self.tcp_buffer.map(|v| v as u64)),
            ("min_tcp_buffer", self.min_tcp_buffer.map(|v| v as u64)),
            ("window_budget", self.window_budget.map(|v| v as u64)),
            (
                "window_per_client",
                self.window_per_client.map(|v| v as u64),
            ),
            ("window_per_peer", self.window_per_peer.map(|v| v as u64)),
            ("stall_timeout", self.stall_timeout),
        ] {
            if let Some(value) = value {
                let _ = writeln!(out, "{key} = {value}");
            }
        }
        out
    }
}

/// One `[[edges]]` entry of an origin.
#[derive(Clone, Debug)]
pub struct OriginEdge {
    /// Name.
    pub name: String,
    /// The edge's public key.
    pub public_key: PublicKey,
    /// Where the edge's tunnel listens (`None`: the edge dials in).
    pub endpoint: Option<SocketAddr>,
    /// The edge's inner address.
    pub address: Ipv4Addr,
}

/// One `[[services]]` entry of an origin.
#[derive(Clone, Debug)]
pub struct OriginService {
    /// Name.
    pub name: String,
    /// Port inside the tunnel.
    pub port: u16,
    /// The app's local address.
    pub local: SocketAddr,
    /// The path the origin's probe requests; `None`: a TCP connect.
    pub health_path: Option<String>,
}

/// An origin config file.
#[derive(Clone, Debug)]
pub struct OriginSpec {
    /// Admin listener.
    pub admin: SocketAddr,
    /// The origin's inner address.
    pub address: Ipv4Addr,
    /// Private key.
    pub private_key: PrivateKey,
    /// UDP listen address.
    pub listen: SocketAddr,
    /// Drain time on SIGTERM, seconds.
    pub drain_timeout: u64,
    /// More `[tunnel]` keys.
    pub tunnel: TunnelKeys,
    /// Edges.
    pub edges: Vec<OriginEdge>,
    /// Services.
    pub services: Vec<OriginService>,
    /// The `[checks]` table's lines (`interval = 1`, ...); empty: the defaults.
    pub checks: String,
}

impl OriginSpec {
    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "[origin]\nadmin = \"{}\"\naddress = \"{}\"\ndrain_timeout = {}\nconnect_timeout = 2\n",
            self.admin, self.address, self.drain_timeout
        );
        let _ = writeln!(
            out,
            "[tunnel]\nprivate_key = \"{}\"\nlisten = \"{}\"\n{}",
            self.private_key.to_base64(),
            self.listen,
            self.tunnel.to_toml_lines()
        );
        for edge in &self.edges {
            let _ = writeln!(
                out,
                "[[edges]]\nname = \"{}\"\npublic_key = \"{}\"\naddress = \"{}\"\nkeepalive = 5",
                edge.name, edge.public_key, edge.address
            );
            if let Some(endpoint) = edge.endpoint {
                let _ = writeln!(out, "endpoint = \"{endpoint}\"");
            }
            out.push('\n');
        }
        for service in &self.services {
            let _ = writeln!(
                out,
                "[[services]]\nname = \"{}\"\nport = {}\nlocal = \"{}\"",
                service.name, service.port, service.local
            );
            if let Some(path) = &service.health_path {
                let _ = writeln!(out, "health_path = \"{path}\"");
            }
            out.push('\n');
        }
        if !self.checks.is_empty() {
            let _ = writeln!(out, "[checks]\n{}", self.checks);
        }
        out
    }
}

/// One `[[origins]]` entry of an edge.
#[derive(Clone, Debug)]
pub struct EdgeOrigin {
    /// Name the routes refer to.
    pub name: String,
    /// The origin's public key.
    pub public_key: PublicKey,
    /// Where the origin listens, if it does (origins behind NAT dial the edge instead).
    pub endpoint: Option<SocketAddr>,
    /// The edge's own inner address toward this origin.
    pub address: Ipv4Addr,
    /// The origin's inner address.
    pub origin_address: Ipv4Addr,
}

/// Protection limits: the edge's `[limits]` table (the default policy of every route) or the
/// overrides of one `[[routes]]` entry. `None` and empty lists are not written, so the edge's
/// own defaults apply; a spec with nothing set writes nothing at all.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// Requests per second per client key.
    pub rate: Option<f64>,
    /// Requests allowed in a burst above the rate.
    pub burst: Option<u32>,
    /// IPv4 prefix length of a client key.
    pub ipv4_prefix: Option<u8>,
    /// IPv6 prefix length of a client key.
    pub ipv6_prefix: Option<u8>,
    /// Bound of the client key table.
    pub max_tracked_clients: Option<usize>,
    /// Concurrent connections per client key, all listeners together.
    pub connections_per_client: Option<u32>,
    /// Global connection cap.
    pub max_connections: Option<u32>,
    /// Request header count limit (431 above).
    pub max_headers: Option<usize>,
    /// Request body size limit in bytes (0: unlimited; 413 above).
    pub max_body_bytes: Option<u64>,
    /// Idle keep-alive timeout, seconds.
    pub idle_timeout: Option<u64>,
    /// HTTP/2 concurrent streams per connection.
    pub h2_max_concurrent_streams: Option<u32>,
    /// HTTP/2 reset streams pending accept before the connection is closed.
    pub h2_max_pending_reset_streams: Option<usize>,
    /// Seconds a response may wait on a client that reads nothing (`[limits]` only).
    pub send_timeout: Option<u64>,
    /// Seconds a request body may go without bytes (`[limits]` only).
    pub client_body_timeout: Option<u64>,
    /// Bytes/s a request body must average while the edge waits (`[limits]` only).
    pub client_body_min_rate: Option<u64>,
    /// Seconds the edge reads the rest of a body it answered early (`[limits]` only).
    pub lingering_time: Option<u64>,
    /// Client silence that ends that lingering (`[limits]` only).
    pub lingering_timeout: Option<u64>,
    /// Client CIDRs allowed (with a list, only they pass).
    pub allow: Vec<String>,
    /// Client CIDRs denied (deny wins over allow).
    pub deny: Vec<String>,
}

impl Limits {
    /// Whether nothing is set (then nothing is written).
    pub fn is_empty(&self) -> bool {
        self.to_toml_lines().is_empty()
    }

    /// The `key = value` lines of what is set.
    pub fn to_toml_lines(&self) -> String {
        let mut out = String::new();
        let mut line = |key: &str, value: Option<String>| {
            if let Some(value) = value {
                let _ = writeln!(out, "{key} = {value}");
            }
        };
        // `{:?}` of an f64 always has a decimal point, as a TOML float needs.
        line("rate", self.rate.map(|v| format!("{v:?}")));
        line("burst", self.burst.map(|v| v.to_string()));
        line("ipv4_prefix", self.ipv4_prefix.map(|v| v.to_string()));
        line("ipv6_prefix", self.ipv6_prefix.map(|v| v.to_string()));
        line(
            "max_tracked_clients",
            self.max_tracked_clients.map(|v| v.to_string()),
        );
        line(
            "connections_per_client",
            self.connections_per_client.map(|v| v.to_string()),
        );
        line(
            "max_connections",
            self.max_connections.map(|v| v.to_string()),
        );
        line("max_headers", self.max_headers.map(|v| v.to_string()));
        line("max_body_bytes", self.max_body_bytes.map(|v| v.to_string()));
        line("idle_timeout", self.idle_timeout.map(|v| v.to_string()));
        line(
            "h2_max_concurrent_streams",
            self.h2_max_concurrent_streams.map(|v| v.to_string()),
        );
        line(
            "h2_max_pending_reset_streams",
            self.h2_max_pending_reset_streams.map(|v| v.to_string()),
        );
        line("send_timeout", self.send_timeout.map(|v| v.to_string()));
        line(
            "client_body_timeout",
            self.client_body_timeout.map(|v| v.to_string()),
        );
        line(
            "client_body_min_rate",
            self.client_body_min_rate.map(|v| v.to_string()),
        );
        line("lingering_time", self.lingering_time.map(|v| v.to_string()));
        line(
            "lingering_timeout",
            self.lingering_timeout.map(|v| v.to_string()),
        );
        let list = |items: &[String]| {
            (!items.is_empty()).then(|| {
                let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
                format!("[{}]", quoted.join(", "))
            })
        };
        line("allow", list(&self.allow));
        line("deny", list(&self.deny));
        out
    }
}

/// Optional `[edge]` timeouts and sizes (`None`: the edge's default, not written).
#[derive(Clone, Debug, Default)]
pub struct EdgeTimeouts {
    /// TLS handshake timeout, seconds.
    pub tls_handshake_timeout: Option<u64>,
    /// Request head read timeout (slowloris), seconds.
    pub header_read_timeout: Option<u64>,
    /// Request head size limit, bytes.
    pub max_header_bytes: Option<usize>,
}

/// One `[[routes]]` entry.
#[derive(Clone, Debug)]
pub struct EdgeRoute {
    /// Host name (exact or `*.domain`).
    pub host: String,
    /// The origin's name.
    pub origin: String,
    /// The service port inside the tunnel.
    pub port: u16,
    /// Per-route overrides of `[limits]` and the allow/deny lists.
    pub limits: Limits,
}

/// One `[[tcp_routes]]` entry.
#[derive(Clone, Debug)]
pub struct EdgeTcpRoute {
    /// Public listen address.
    pub listen: SocketAddr,
    /// The origin's name.
    pub origin: String,
    /// The service port inside the tunnel.
    pub port: u16,
    /// PROXY protocol header sent to the app (`"v2"`), if any.
    pub proxy_protocol: Option<String>,
}

/// An edge config file.
#[derive(Clone, Debug)]
pub struct EdgeSpec {
    /// TLS listener.
    pub https: SocketAddr,
    /// Plain HTTP listener.
    pub http: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// Drain time on SIGTERM, seconds.
    pub drain_timeout: u64,
    /// Private key.
    pub private_key: PrivateKey,
    /// Tunnel UDP listen address.
    pub listen: SocketAddr,
    /// More `[tunnel]` keys.
    pub tunnel: TunnelKeys,
    /// `[edge] state_dir`: where the edge remembers its origins' endpoints across restarts.
    pub state_dir: PathBuf,
    /// Origins.
    pub origins: Vec<EdgeOrigin>,
    /// Host routes.
    pub routes: Vec<EdgeRoute>,
    /// Raw TCP routes.
    pub tcp_routes: Vec<EdgeTcpRoute>,
    /// Certificate chain and key files (PEM).
    pub certificates: Vec<(PathBuf, PathBuf)>,
    /// Optional `[edge]` timeouts and sizes.
    pub timeouts: EdgeTimeouts,
    /// The default policy (`[limits]`), written only when something is set.
    pub limits: Limits,
}

impl EdgeSpec {
    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "[edge]\nhttps = \"{}\"\nhttp = \"{}\"\nadmin = \"{}\"\ndrain_timeout = {}\nstate_dir = \"{}\"\n",
            self.https,
            self.http,
            self.admin,
            self.drain_timeout,
            self.state_dir.display()
        );
        let timeouts = [
            ("tls_handshake_timeout", self.timeouts.tls_handshake_timeout),
            ("header_read_timeout", self.timeouts.header_read_timeout),
            (
                "max_header_bytes",
                self.timeouts.max_header_bytes.map(|v| v as u64),
            ),
        ];
        for (key, value) in timeouts {
            if let Some(value) = value {
                let _ = writeln!(out, "{key} = {value}");
            }
        }
        out.push('\n');
        if !self.limits.is_empty() {
            let _ = writeln!(out, "[limits]\n{}", self.limits.to_toml_lines());
        }
        let _ = writeln!(
            out,
            "[tunnel]\nprivate_key = \"{}\"\nlisten = \"{}\"\n{}",
            self.private_key.to_base64(),
            self.listen,
            self.tunnel.to_toml_lines()
        );
        for origin in &self.origins {
            let _ = writeln!(
                out,
                "[[origins]]\nname = \"{}\"\npublic_key = \"{}\"\naddress = \"{}\"\norigin_address = \"{}\"",
                origin.name, origin.public_key, origin.address, origin.origin_address
            );
            if let Some(endpoint) = origin.endpoint {
                let _ = writeln!(out, "endpoint = \"{endpoint}\"\nkeepalive = 5");
            }
            out.push('\n');
        }
        for route in &self.routes {
            let _ = writeln!(
                out,
                "[[routes]]\nhost = \"{}\"\norigin = \"{}\"\nport = {}\n{}",
                route.host,
                route.origin,
                route.port,
                route.limits.to_toml_lines()
            );
        }
        for route in &self.tcp_routes {
            let _ = writeln!(
                out,
                "[[tcp_routes]]\nlisten = \"{}\"\norigin = \"{}\"\nport = {}",
                route.listen, route.origin, route.port
            );
            if let Some(version) = &route.proxy_protocol {
                let _ = writeln!(out, "proxy_protocol = {version:?}");
            }
            out.push('\n');
        }
        out.push_str("[tls]\n");
        for (cert, key) in &self.certificates {
            let _ = writeln!(
                out,
                "[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
                cert.display(),
                key.display()
            );
        }
        out
    }
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
