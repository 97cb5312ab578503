//! The edge's configuration: the TOML file form (`edge.toml`) and the validated model
//! ([`EdgeConfig`]) that everything else uses.
//!
//! The file structs reject unknown fields so that a typo is an error rather than a silently
//! ignored setting. [`EdgeConfig`] is the one in-memory model: the control plane will build the
//! same type from its snapshots later. Every error names the field to fix, as a TOML path
//! (`routes[2].origin`).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kokoa_node::control::{ControlSettings, FileControl};
use kokoa_tunnel::key::{PrivateKey, PublicKey};
use serde::Deserialize;

use crate::acl::{parse_network, Acl};
use crate::limit::KeyMask;
use crate::proxy_protocol::ProxyProtocol;

/// TLS listener when `[edge] https` is not set.
pub const DEFAULT_HTTPS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 443);
/// Plain HTTP listener (redirects, ACME later) when `[edge] http` is not set.
pub const DEFAULT_HTTP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 80);
/// Admin listener (`/healthz`, `/metrics`) when `[edge] admin` is not set.
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);
/// Tunnel UDP address when `[tunnel] listen` is not set: the standard WireGuard port.
pub const DEFAULT_TUNNEL_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 51820);
/// How long SIGTERM waits for in-flight connections (seconds).
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 10;
/// Where the edge keeps what must outlive a restart when `[edge] state_dir` is not set (in
/// control mode `[control] state_dir` is used).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/kokoa-edge";
/// The file in the state directory that remembers each origin's last endpoint.
pub const PEER_CACHE_FILE: &str = "tunnel-peers";
/// How long a TCP connect through the tunnel may take (seconds).
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 5;
/// How long a client may take to complete the TLS handshake (seconds).
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
/// How long an HTTP/1 client may take to send a complete request head (seconds).
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 30;
/// Largest request head accepted, in bytes (HTTP/1 buffer and HTTP/2 header list).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Idle upstream connections kept per origin service (Nginx's upstream `keepalive`).
pub const DEFAULT_UPSTREAM_KEEPALIVE: usize = 64;
/// How long an idle upstream connection is kept (seconds).
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT_SECS: u64 = 90;
/// Client key prefix for IPv4 addresses (rate and connection limits): one address.
pub const DEFAULT_IPV4_PREFIX: u8 = 32;
/// Client key prefix for IPv6 addresses: one /64, what a single host usually gets.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;
/// Most client keys the request rate limiters track at once (all routes together).
pub const DEFAULT_MAX_TRACKED_CLIENTS: usize = 100_000;
/// Concurrent connections per client key, all listeners together.
pub const DEFAULT_CONNECTIONS_PER_CLIENT: usize = 256;
/// Concurrent client connections, all listeners together.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Most header fields in a request (hyper's own default).
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// How long a keep-alive connection may have no request in flight (seconds).
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
/// HTTP/2 streams a client may have open at once.
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 100;
/// HTTP/2 streams reset by the client before the edge accepted them, before GOAWAY.
pub const DEFAULT_H2_MAX_PENDING_RESET_STREAMS: usize = 20;
/// HTTP/2 streams the edge may reset because of client protocol errors, before GOAWAY.
pub const DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// Seconds between HTTP/2 keep-alive PINGs (a client that does not answer is disconnected).
pub const DEFAULT_H2_KEEPALIVE_INTERVAL_SECS: u64 = 30;
/// Highest request rate accepted in a policy (requests per second).
pub const MAX_RATE: f64 = 1_000_000.0;
/// Smallest inner MTU accepted.
pub const MIN_MTU: u16 = 576;

/// What to do about a route naming an unknown origin, by where the config came from.
const ORIGINS_FROM_FILE: &str = "add an [[origins]] entry with that name";
const ORIGINS_FROM_CONTROL: &str = "the snapshot has no origin peer of that name";

/// A configuration that could not be loaded. Each message names the file or field to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed, or a field is unknown, missing or of the wrong type.
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    /// A field has a value that is not allowed.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, as a TOML path (`routes[2].origin`).
        field: String,
        /// What is wrong and what to do about it.
        reason: String,
    },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The validated edge configuration.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// TLS listener.
    pub https: SocketAddr,
    /// Plain HTTP listener (redirects to HTTPS; ACME HTTP-01 later).
    pub http: SocketAddr,
    /// Admin listener (`/healthz`, `/metrics`).
    pub admin: SocketAddr,
    /// Port written into redirects' `Location`; `None` uses the HTTPS listener's port.
    pub https_port_in_redirect: Option<u16>,
    /// How long SIGTERM waits for in-flight connections.
    pub drain_timeout: Duration,
    /// Where state that must outlive a restart is kept: each origin's last endpoint
    /// ([`PEER_CACHE_FILE`]), so that a restarted edge reaches origins behind NAT at once.
    /// `[edge] state_dir` in file mode, `[control] state_dir` in control mode.
    pub state_dir: PathBuf,
    /// Timeouts and size limits that protect the listeners.
    pub limits: Limits,
    /// The WireGuard side.
    pub tunnel: TunnelSettings,
    /// The origins this edge forwards to (tunnel peers).
    pub origins: Vec<Origin>,
    /// HTTP routes by host name.
    pub routes: Vec<RouteConfig>,
    /// Each route's admission policy, in the order of `routes` (same length).
    pub route_policies: Vec<RoutePolicy>,
    /// Raw TCP routes.
    pub tcp_routes: Vec<TcpRoute>,
    /// Certificates.
    pub tls: TlsSettings,
    /// Control mode: origins, routes, TCP routes, certificates (and the tunnel key, unless
    /// the operator holds it) come from `kokoa-control` instead of this file.
    pub control: Option<ControlSettings>,
}

/// A request rate policy: `burst` requests at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RatePolicy {
    /// Sustained requests per second per client key.
    pub per_second: f64,
    /// Bucket size: requests a client may send at once after being quiet.
    pub burst: u32,
}

/// What one HTTP route admits, resolved against the `[limits]` defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoutePolicy {
    /// Request rate per client key; `None`: no rate limit.
    pub rate: Option<RatePolicy>,
    /// Largest request body in bytes (413 above); `None`: unlimited.
    pub max_body_bytes: Option<u64>,
    /// Who may use the route (403 otherwise).
    pub acl: Acl,
}

/// Timeouts and sizes that bound what one client or upstream can cost.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// TLS handshake deadline.
    pub tls_handshake_timeout: Duration,
    /// HTTP/1 request head deadline.
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes.
    pub max_header_bytes: usize,
    /// Deadline for a TCP connect through the tunnel.
    pub connect_timeout: Duration,
    /// Idle upstream connections kept per origin service.
    pub upstream_keepalive: usize,
    /// How long an idle upstream connection is kept.
    pub upstream_idle_timeout: Duration,
    /// The default request rate policy of every route (`[limits] rate` / `burst`).
    pub rate: Option<RatePolicy>,
    /// How client addresses become limiter keys.
    pub key_mask: KeyMask,
    /// Most client keys the rate limiters track (new clients beyond share an overflow bucket).
    pub max_tracked_clients: usize,
    /// Concurrent connections per client key (0: no limit).
    pub connections_per_client: usize,
    /// Concurrent connections in total (0: no limit).
    pub max_connections: usize,
    /// Most header fields per request (431 above).
    pub max_headers: usize,
    /// The default request body limit of every route (413 above); `None`: unlimited.
    pub max_body_bytes: Option<u64>,
    /// How long a client connection may have no request in flight before it is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 client resets of not-yet-accepted streams tolerated before GOAWAY.
    pub h2_max_pending_reset_streams: usize,
    /// HTTP/2 streams reset for client errors tolerated before GOAWAY.
    pub h2_max_local_error_reset_streams: usize,
    /// Interval of HTTP/2 keep-alive PINGs; `None` disables them.
    pub h2_keepalive_interval: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            tls_handshake_timeout: Duration::from_secs(DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS),
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            connect_timeout: Duration::from_secs(DEFAULT_CONNECT_TIMEOUT_SECS),
            upstream_keepalive: DEFAULT_UPSTREAM_KEEPALIVE,
            upstream_idle_timeout: Duration::from_secs(DEFAULT_UPSTREAM_IDLE_TIMEOUT_SECS),
            rate: None,
            key_mask: KeyMask::default(),
            max_tracked_clients: DEFAULT_MAX_TRACKED_CLIENTS,
            connections_per_client: DEFAULT_CONNECTIONS_PER_CLIENT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_headers: DEFAULT_MAX_HEADERS,
            max_body_bytes: None,
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
            h2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            h2_max_pending_reset_streams: DEFAULT_H2_MAX_PENDING_RESET_STREAMS,
            h2_max_local_error_reset_streams: DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS,
            h2_keepalive_interval: Some(Duration::from_secs(DEFAULT_H2_KEEPALIVE_INTERVAL_SECS)),
        }
    }
}

impl Limits {
    /// The policy of a route that sets nothing itself.
    pub fn default_route_policy(&self) -> RoutePolicy {
        RoutePolicy {
            rate: self.rate,
            max_body_bytes: self.max_body_bytes,
            acl: Acl::default(),
        }
    }
}

/// The edge's WireGuard settings.
#[derive(Clone, Debug)]
pub struct TunnelSettings {
    /// The edge's private key.
    pub private_key: PrivateKey,
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// Inner MTU.
    pub mtu: u16,
    /// Stream buffer sizes and their node-wide and per-owner bounds (`[tunnel] tcp_buffer`,
    /// `min_tcp_buffer`, `window_budget`, `window_per_client`, `window_per_peer`).
    pub window: kokoa_tunnel::WindowSettings,
    /// `[tunnel] stall_timeout`: a stream none of whose data is acknowledged for this long is
    /// reset; `None`: never.
    pub stall_timeout: Option<std::time::Duration>,
    /// Control mode without a local key: `private_key` is a random stand-in until control
    /// sends the edge's managed key.
    pub key_from_control: bool,
}

/// One origin: a tunnel peer that owns services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// Name used by routes, logs and metrics (letters, digits, `-`, `_`).
    pub name: String,
    /// The origin's WireGuard public key.
    pub public_key: PublicKey,
    /// Where to send the first handshake; `None` waits for the origin to dial in.
    pub endpoint: Option<SocketAddr>,
    /// The edge's own netstack address toward this origin (`10.100.X.10+`).
    pub address: Ipv4Addr,
    /// The origin's address (`10.100.X.1`): its only allowed IP and the destination of dials.
    pub origin_address: Ipv4Addr,
    /// Persistent keepalive in seconds; `None` disables it.
    pub keepalive: Option<u16>,
}

/// One HTTP route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    /// The host name, lowercase, or a wildcard `*.example.com`.
    pub host: String,
    /// Further names served by the same route (exact or wildcard), lowercase.
    pub aliases: Vec<String>,
    /// The origin's name.
    pub origin: String,
    /// The service port inside the tunnel.
    pub port: u16,
}

/// One raw TCP route: a public port forwarded as a byte stream.
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

/// Where certificates come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// A directory of `NAME.crt` + `NAME.key` pairs.
    pub cert_dir: Option<PathBuf>,
    /// A host name whose certificate is served for unknown or absent SNI.
    pub default: Option<String>,
    /// Explicit certificate/key files.
    pub certificates: Vec<CertificateFiles>,
}

/// One certificate chain and its private key, both PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    /// The PEM chain (leaf first).
    pub cert: PathBuf,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    edge: FileEdge,
    tunnel: FileTunnel,
    origins: Vec<FileOrigin>,
    routes: Vec<FileRoute>,
    tcp_routes: Vec<FileTcpRoute>,
    tls: FileTls,
    limits: FileLimits,
    control: Option<FileControl>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileLimits {
    rate: Option<f64>,
    burst: Option<u32>,
    ipv4_prefix: Option<u8>,
    ipv6_prefix: Option<u8>,
    max_tracked_clients: Option<usize>,
    connections_per_client: Option<usize>,
    max_connections: Option<usize>,
    max_headers: Option<usize>,
    max_body_bytes: Option<u64>,
    idle_timeout: Option<u64>,
    h2_max_concurrent_streams: Option<u32>,
    h2_max_pending_reset_streams: Option<usize>,
    h2_max_local_error_reset_streams: Option<usize>,
    h2_keepalive_interval: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileEdge {
    https: Option<SocketAddr>,
    http: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    https_port_in_redirect: Option<u16>,
    drain_timeout: Option<u64>,
    connect_timeout: Option<u64>,
    tls_handshake_timeout: Option<u64>,
    header_read_timeout: Option<u64>,
    max_header_bytes: Option<usize>,
    upstream_keepalive: Option<usize>,
    upstream_idle_timeout: Option<u64>,
    state_dir: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileTunnel {
    private_key: Option<String>,
    private_key_file: Option<PathBuf>,
    listen: Option<SocketAddr>,
    mtu: Option<u16>,
    tcp_buffer: Option<usize>,
    min_tcp_buffer: Option<usize>,
    window_budget: Option<usize>,
    window_per_client: Option<usize>,
    window_per_peer: Option<usize>,
    stall_timeout: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileOrigin {
    name: String,
    public_key: String,
    endpoint: Option<SocketAddr>,
    address: Option<Ipv4Addr>,
    origin_address: Option<Ipv4Addr>,
    keepalive: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileRoute {
    host: String,
    aliases: Vec<String>,
    origin: String,
    port: u16,
    rate: Option<f64>,
    burst: Option<u32>,
    max_body_bytes: Option<u64>,
    allow: Vec<String>,
    deny: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileTcpRoute {
    listen: Option<SocketAddr>,
    origin: String,
    port: u16,
    proxy_protocol: Option<String>,
    allow: Vec<String>,
    deny: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileTls {
    cert_dir: Option<PathBuf>,
    default: Option<String>,
    certificates: Vec<FileCertificate>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileCertificate {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl EdgeConfig {
    /// Reads and validates a config file. Relative paths (`private_key_file`, certificates,
    /// `cert_dir`) are taken relative to the config file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path.parent())
    }

    /// Parses and validates TOML text; `base_dir` anchors relative paths.
    pub fn from_toml(text: &str, base_dir: Option<&Path>) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text)?;
        file.validate(base_dir)
    }

    /// The origin named `name`.
    pub fn origin(&self, name: &str) -> Option<&Origin> {
        self.origins.iter().find(|origin| origin.name == name)
    }
}

/// A route's limits as control sends them (`Route.limits_json`): the keys of a `[[routes]]`
/// table that are not routing.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct JsonRouteLimits {
    rate: Option<f64>,
    burst: Option<u32>,
    max_body_bytes: Option<u64>,
    allow: Vec<String>,
    deny: Vec<String>,
}

fn port16(field: String, port: u32) -> Result<u16, ConfigError> {
    match u16::try_from(port) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(ConfigError::invalid(
            field,
            format!("{port} is not a port (1-65535)"),
        )),
    }
}

fn ipv4(field: String, text: &str) -> Result<Option<Ipv4Addr>, ConfigError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| ConfigError::invalid(field, format!("`{text}` is not an IPv4 address")))
}

impl EdgeConfig {
    /// This config with the origins, routes and TCP routes of a control snapshot, validated
    /// exactly like the file's `[[origins]]`, `[[routes]]` and `[[tcp_routes]]` tables (the
    /// one model both forms converge on). Errors name the snapshot field (`routes[2].origin`).
    /// TCP routes listen on `tcp_ip` at the snapshot's port. `own_key` is this edge's public
    /// key: no origin may use it.
    pub fn with_snapshot(
        &self,
        snapshot: &kokoa_proto::v1::EdgeSnapshot,
        tcp_ip: IpAddr,
        own_key: Option<PublicKey>,
    ) -> Result<EdgeConfig, ConfigError> {
        let mut origins = Vec::with_capacity(snapshot.origins.len());
        for (i, peer) in snapshot.origins.iter().enumerate() {
            let field = |name: &str| format!("origins[{i}].{name}");
            let endpoint = if peer.endpoint.is_empty() {
                None
            } else {
                Some(peer.endpoint.parse::<SocketAddr>().map_err(|_| {
                    ConfigError::invalid(
                        field("endpoint"),
                        format!("`{}` is not an ip:port", peer.endpoint),
                    )
                })?)
            };
            let keepalive = u16::try_from(peer.keepalive).map_err(|_| {
                ConfigError::invalid(
                    field("keepalive"),
                    format!("{} s is too long", peer.keepalive),
                )
            })?;
            origins.push(FileOrigin {
                name: peer.name.clone(),
                public_key: peer.public_key.clone(),
                endpoint,
                address: ipv4(field("address"), &peer.address)?,
                origin_address: ipv4(field("origin_address"), &peer.origin_address)?,
                keepalive: Some(keepalive),
            });
        }
        let origins = validate_origins(origins, own_key)?;

        let mut routes = Vec::with_capacity(snapshot.routes.len());
        for (i, route) in snapshot.routes.iter().enumerate() {
            let limits: JsonRouteLimits = match route.limits_json.trim() {
                "" => JsonRouteLimits::default(),
                json => serde_json::from_str(json).map_err(|e| {
                    ConfigError::invalid(
                        format!("routes[{i}].limits_json"),
                        format!("not a limits object ({e}); keys: rate, burst, max_body_bytes, allow, deny"),
                    )
                })?,
            };
            routes.push(FileRoute {
                host: route.host.clone(),
                aliases: route.aliases.clone(),
                origin: route.origin.clone(),
                port: port16(format!("routes[{i}].port"), route.port)?,
                rate: limits.rate,
                burst: limits.burst,
                max_body_bytes: limits.max_body_bytes,
                allow: limits.allow,
                deny: limits.deny,
            });
        }
        let (routes, route_policies) =
            validate_routes(routes, &origins, &self.limits, ORIGINS_FROM_CONTROL)?;

        let mut tcp_routes = Vec::with_capacity(snapshot.tcp_routes.len());
        for (i, route) in snapshot.tcp_routes.iter().enumerate() {
            let listen_port = port16(format!("tcp_routes[{i}].listen_port"), route.listen_port)?;
            tcp_routes.push(FileTcpRoute {
                listen: Some(SocketAddr::new(tcp_ip, listen_port)),
                origin: route.origin.clone(),
                port: port16(format!("tcp_routes[{i}].port"), route.port)?,
                proxy_protocol: route.proxy_protocol_v2.then(|| "v2".to_owned()),
                allow: route.allow.clone(),
                deny: route.deny.clone(),
            });
        }
        let listeners = [
            ("edge.https", self.https),
            ("edge.http", self.http),
            ("edge.admin", self.admin),
        ];
        let tcp_routes =
            validate_tcp_routes(tcp_routes, &origins, &listeners, ORIGINS_FROM_CONTROL)?;
        Ok(EdgeConfig {
            origins,
            routes,
            route_policies,
            tcp_routes,
            ..self.clone()
        })
    }
}

fn anchored(base_dir: Option<&Path>, path: PathBuf) -> PathBuf {
    match base_dir {
        Some(dir) if path.is_relative() && !dir.as_os_str().is_empty() => dir.join(path),
        _ => path,
    }
}

fn secs(field: &str, value: Option<u64>, default: u64, min: u64) -> Result<Duration, ConfigError> {
    let value = value.unwrap_or(default);
    if value < min {
        return Err(ConfigError::invalid(
            field,
            format!("{value} is below the minimum of {min} second(s)"),
        ));
    }
    Ok(Duration::from_secs(value))
}

/// Whether `name` is a valid DNS host name (letters, digits, hyphens; labels of 1–63
/// characters, not starting or ending with a hyphen; 253 characters at most).
pub fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Validates a route host or alias: an exact host name or `*.` followed by one with at least
/// two labels. Returns it lowercased without a trailing dot.
fn route_host(field: &str, host: &str) -> Result<String, ConfigError> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if let Some(rest) = host.strip_prefix("*.") {
        if !is_host_name(rest) || !rest.contains('.') {
            return Err(ConfigError::invalid(
                field,
                format!("`{host}` is not a valid wildcard: write `*.example.com` (the `*` only as the whole leftmost label, over a domain of two labels or more)"),
            ));
        }
    } else if host.contains('*') {
        return Err(ConfigError::invalid(
            field,
            format!("`{host}`: a wildcard is only allowed as the whole leftmost label (`*.example.com`)"),
        ));
    } else if !is_host_name(&host) {
        return Err(ConfigError::invalid(
            field,
            format!("`{host}` is not a valid host name"),
        ));
    }
    Ok(host)
}

fn is_origin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl FileConfig {
    fn validate(self, base_dir: Option<&Path>) -> Result<EdgeConfig, ConfigError> {
        let edge = self.edge;
        let https = edge.https.unwrap_or(DEFAULT_HTTPS);
        let http = edge.http.unwrap_or(DEFAULT_HTTP);
        let admin = edge.admin.unwrap_or(DEFAULT_ADMIN);
        let listeners = [
            ("edge.https", https),
            ("edge.http", http),
            ("edge.admin", admin),
        ];
        if edge.https_port_in_redirect == Some(0) {
            return Err(ConfigError::invalid(
                "edge.https_port_in_redirect",
                "must be 1-65535",
            ));
        }
        let limits = Limits {
            tls_handshake_timeout: secs(
                "edge.tls_handshake_timeout",
                edge.tls_handshake_timeout,
                DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS,
                1,
            )?,
            header_read_timeout: secs(
                "edge.header_read_timeout",
                edge.header_read_timeout,
                DEFAULT_HEADER_READ_TIMEOUT_SECS,
                1,
            )?,
            max_header_bytes: edge.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES),
            connect_timeout: secs(
                "edge.connect_timeout",
                edge.connect_timeout,
                DEFAULT_CONNECT_TIMEOUT_SECS,
                1,
            )?,
            upstream_keepalive: edge
                .upstream_keepalive
                .unwrap_or(DEFAULT_UPSTREAM_KEEPALIVE),
            upstream_idle_timeout: secs(
                "edge.upstream_idle_timeout",
                edge.upstream_idle_timeout,
                DEFAULT_UPSTREAM_IDLE_TIMEOUT_SECS,
                1,
            )?,
            ..Limits::default()
        };
        if !(8192..=1024 * 1024).contains(&limits.max_header_bytes) {
            return Err(ConfigError::invalid(
                "edge.max_header_bytes",
                format!("{} is outside 8192..=1048576", limits.max_header_bytes),
            ));
        }
        let limits = validate_limits(self.limits, limits)?;
        let drain_timeout = secs(
            "edge.drain_timeout",
            edge.drain_timeout,
            DEFAULT_DRAIN_TIMEOUT_SECS,
            0,
        )?;

        let tunnel = validate_tunnel(self.tunnel, base_dir, self.control.is_some())?;
        let control = match self.control {
            Some(control) => {
                for (field, present) in [
                    ("origins", !self.origins.is_empty()),
                    ("routes", !self.routes.is_empty()),
                    ("tcp_routes", !self.tcp_routes.is_empty()),
                    ("tls.certificates", !self.tls.certificates.is_empty()),
                    ("tls.cert_dir", self.tls.cert_dir.is_some()),
                ] {
                    if present {
                        return Err(ConfigError::invalid(
                            field,
                            "a config with [control] gets its origins, routes, tcp routes and certificates from control: remove this (or remove [control] to run from this file)",
                        ));
                    }
                }
                Some(
                    ControlSettings::from_file(control, base_dir)
                        .map_err(|e| ConfigError::invalid(e.field, e.reason))?,
                )
            }
            None => None,
        };
        let state_dir =
            match (&control, edge.state_dir) {
                (Some(_), Some(_)) => return Err(ConfigError::invalid(
                    "edge.state_dir",
                    "in control mode the edge keeps its state in [control] state_dir: set it there",
                )),
                (Some(control), None) => control.state_dir.clone(),
                (None, dir) => anchored(
                    base_dir,
                    dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
                ),
            };
        let own_key = (!tunnel.key_from_control).then(|| tunnel.private_key.public_key());
        let origins = validate_origins(self.origins, own_key)?;
        let (routes, route_policies) =
            validate_routes(self.routes, &origins, &limits, ORIGINS_FROM_FILE)?;
        let tcp_routes =
            validate_tcp_routes(self.tcp_routes, &origins, &listeners, ORIGINS_FROM_FILE)?;
        for (i, (name, addr)) in listeners.iter().enumerate() {
            if addr.port() == 0 {
                continue;
            }
            if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| a == addr) {
                return Err(ConfigError::invalid(
                    *name,
                    format!("{addr} is already used by {other}"),
                ));
            }
        }

        let tls = validate_tls(self.tls, base_dir)?;

        Ok(EdgeConfig {
            https,
            http,
            admin,
            https_port_in_redirect: edge.https_port_in_redirect,
            drain_timeout,
            state_dir,
            limits,
            tunnel,
            origins,
            routes,
            route_policies,
            tcp_routes,
            tls,
            control,
        })
    }
}

/// Validates origins (tunnel peers). `own_key` (this edge's public key, when known) may not be
/// one of them.
fn validate_origins(
    file: Vec<FileOrigin>,
    own_key: Option<PublicKey>,
) -> Result<Vec<Origin>, ConfigError> {
    let mut origins = Vec::with_capacity(file.len());
    let mut names = HashSet::new();
    let mut keys = HashSet::new();
    let mut addresses = HashSet::new();
    for (i, origin) in file.into_iter().enumerate() {
        let field = |name: &str| format!("origins[{i}].{name}");
        if !is_origin_name(&origin.name) {
            return Err(ConfigError::invalid(
                field("name"),
                format!(
                    "`{}` is not a valid origin name: use 1-63 letters, digits, `-` or `_`",
                    origin.name
                ),
            ));
        }
        if !names.insert(origin.name.clone()) {
            return Err(ConfigError::invalid(
                field("name"),
                format!("`{}` is used by another origin", origin.name),
            ));
        }
        if origin.public_key.is_empty() {
            return Err(ConfigError::invalid(
                field("public_key"),
                "missing: set the origin's public key (`kokoa-origin pubkey`)",
            ));
        }
        let public_key = PublicKey::from_base64(origin.public_key.trim()).map_err(|e| {
            ConfigError::invalid(
                field("public_key"),
                format!("not a WireGuard public key ({e}); use the origin's `pubkey` output"),
            )
        })?;
        if Some(public_key) == own_key {
            return Err(ConfigError::invalid(
                field("public_key"),
                "is this edge's own public key; use the origin's key",
            ));
        }
        if !keys.insert(public_key) {
            return Err(ConfigError::invalid(
                field("public_key"),
                "is used by another origin",
            ));
        }
        let address = origin.address.ok_or_else(|| {
            ConfigError::invalid(
                field("address"),
                "missing: the edge's own address toward this origin, such as 10.100.1.10",
            )
        })?;
        let origin_address = origin.origin_address.ok_or_else(|| {
            ConfigError::invalid(
                field("origin_address"),
                "missing: the origin's address, such as 10.100.1.1",
            )
        })?;
        for (name, ip) in [("address", address), ("origin_address", origin_address)] {
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
                return Err(ConfigError::invalid(
                    field(name),
                    format!("{ip} cannot be a tunnel host address; use one from 10.100.0.0/16"),
                ));
            }
        }
        if address == origin_address {
            return Err(ConfigError::invalid(
                field("origin_address"),
                "must differ from `address` (the edge's own address)",
            ));
        }
        if !addresses.insert(origin_address) {
            return Err(ConfigError::invalid(
                field("origin_address"),
                format!("{origin_address} is used by another origin"),
            ));
        }
        if let Some(endpoint) = origin.endpoint {
            if endpoint.port() == 0 || endpoint.ip().is_unspecified() {
                return Err(ConfigError::invalid(
                    field("endpoint"),
                    format!(
                        "{endpoint} is not reachable; write the origin's ip:port or leave it out"
                    ),
                ));
            }
        }
        origins.push(Origin {
            name: origin.name,
            public_key,
            endpoint: origin.endpoint,
            address,
            origin_address,
            keepalive: origin.keepalive.filter(|&secs| secs > 0),
        });
    }
    Ok(origins)
}

/// Validates HTTP routes against `origins` and resolves each one's policy against `limits`.
fn validate_routes(
    file: Vec<FileRoute>,
    origins: &[Origin],
    limits: &Limits,
    hint: &str,
) -> Result<(Vec<RouteConfig>, Vec<RoutePolicy>), ConfigError> {
    let mut routes = Vec::with_capacity(file.len());
    let mut route_policies = Vec::with_capacity(file.len());
    let mut hosts: HashMap<String, String> = HashMap::new();
    for (i, route) in file.into_iter().enumerate() {
        let field = |name: &str| format!("routes[{i}].{name}");
        if route.host.is_empty() {
            return Err(ConfigError::invalid(
                field("host"),
                "missing: set the host name",
            ));
        }
        let host = route_host(&field("host"), &route.host)?;
        let mut aliases = Vec::with_capacity(route.aliases.len());
        for (j, alias) in route.aliases.iter().enumerate() {
            aliases.push(route_host(&format!("routes[{i}].aliases[{j}]"), alias)?);
        }
        for (k, name) in std::iter::once(&host).chain(&aliases).enumerate() {
            let here = if k == 0 {
                field("host")
            } else {
                format!("routes[{i}].aliases[{}]", k - 1)
            };
            if let Some(previous) = hosts.insert(name.clone(), here.clone()) {
                return Err(ConfigError::invalid(
                    here,
                    format!("`{name}` is already routed by {previous}"),
                ));
            }
        }
        check_origin(origins, field("origin"), &route.origin, hint)?;
        if route.port == 0 {
            return Err(ConfigError::invalid(
                field("port"),
                "must be 1-65535 (the service port inside the tunnel)",
            ));
        }
        let rate = route_rate(
            &format!("routes[{i}]"),
            route.rate,
            route.burst,
            limits.rate,
        )?;
        route_policies.push(RoutePolicy {
            rate,
            max_body_bytes: match route.max_body_bytes {
                Some(0) => None,
                Some(max) => Some(max),
                None => limits.max_body_bytes,
            },
            acl: acl(&format!("routes[{i}]"), &route.allow, &route.deny)?,
        });
        routes.push(RouteConfig {
            host,
            aliases,
            origin: route.origin,
            port: route.port,
        });
    }

    Ok((routes, route_policies))
}

/// Validates raw TCP routes against `origins` and the edge's own `listeners`.
fn validate_tcp_routes(
    file: Vec<FileTcpRoute>,
    origins: &[Origin],
    listeners: &[(&str, SocketAddr)],
    hint: &str,
) -> Result<Vec<TcpRoute>, ConfigError> {
    let mut tcp_routes = Vec::with_capacity(file.len());
    let mut tcp_listens = HashSet::new();
    for (i, route) in file.into_iter().enumerate() {
        let field = |name: &str| format!("tcp_routes[{i}].{name}");
        let listen = route.listen.ok_or_else(|| {
            ConfigError::invalid(
                field("listen"),
                "missing: the public address, such as 0.0.0.0:4001",
            )
        })?;
        if listen.port() != 0 {
            if let Some((name, _)) = listeners.iter().find(|(_, addr)| *addr == listen) {
                return Err(ConfigError::invalid(
                    field("listen"),
                    format!("{listen} is already used by {name}"),
                ));
            }
            if !tcp_listens.insert(listen) {
                return Err(ConfigError::invalid(
                    field("listen"),
                    format!("{listen} is used by another tcp route"),
                ));
            }
        }
        check_origin(origins, field("origin"), &route.origin, hint)?;
        if route.port == 0 {
            return Err(ConfigError::invalid(field("port"), "must be 1-65535"));
        }
        let proxy_protocol = route
            .proxy_protocol
            .as_deref()
            .unwrap_or("none")
            .parse()
            .map_err(|reason| ConfigError::invalid(field("proxy_protocol"), reason))?;
        tcp_routes.push(TcpRoute {
            listen,
            origin: route.origin,
            port: route.port,
            proxy_protocol,
            acl: acl(&format!("tcp_routes[{i}]"), &route.allow, &route.deny)?,
        });
    }
    Ok(tcp_routes)
}

fn check_origin(
    origins: &[Origin],
    field: String,
    origin: &str,
    hint: &str,
) -> Result<(), ConfigError> {
    if origins.iter().any(|o| o.name == origin) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("unknown origin \"{origin}\": {hint}"),
        ))
    }
}

fn acl(prefix: &str, allow: &[String], deny: &[String]) -> Result<Acl, ConfigError> {
    let parse = |name: &str, list: &[String]| {
        list.iter()
            .enumerate()
            .map(|(j, text)| {
                parse_network(text)
                    .map_err(|reason| ConfigError::invalid(format!("{prefix}.{name}[{j}]"), reason))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Acl::new(parse("allow", allow)?, parse("deny", deny)?))
}

fn check_rate(field: &str, rate: f64) -> Result<(), ConfigError> {
    if !rate.is_finite() || !(0.0..=MAX_RATE).contains(&rate) {
        return Err(ConfigError::invalid(
            field,
            format!("{rate} is not a rate: use requests per second between 0 (off) and {MAX_RATE}"),
        ));
    }
    Ok(())
}

fn default_burst(rate: f64) -> u32 {
    // Whole seconds' worth of requests, at least one: a client may send one second's quota at
    // once. The cast saturates; MAX_RATE keeps it well inside u32.
    (rate.ceil() as u32).max(1)
}

fn check_burst(field: &str, burst: u32) -> Result<(), ConfigError> {
    if burst == 0 {
        return Err(ConfigError::invalid(
            field,
            "must be at least 1 (requests a client may send at once)",
        ));
    }
    Ok(())
}

/// A route's rate policy: its own `rate`/`burst` when set (`rate = 0` turns limiting off for
/// the route), else the default. A route `burst` alone reshapes the default rate.
fn route_rate(
    prefix: &str,
    rate: Option<f64>,
    burst: Option<u32>,
    default: Option<RatePolicy>,
) -> Result<Option<RatePolicy>, ConfigError> {
    if let Some(burst) = burst {
        check_burst(&format!("{prefix}.burst"), burst)?;
    }
    match rate {
        Some(rate) => {
            check_rate(&format!("{prefix}.rate"), rate)?;
            if rate == 0.0 {
                return Ok(None);
            }
            Ok(Some(RatePolicy {
                per_second: rate,
                burst: burst.unwrap_or_else(|| default_burst(rate)),
            }))
        }
        None => match (default, burst) {
            (Some(default), Some(burst)) => Ok(Some(RatePolicy {
                per_second: default.per_second,
                burst,
            })),
            (default, None) => Ok(default),
            (None, Some(_)) => Err(ConfigError::invalid(
                format!("{prefix}.burst"),
                "set without a rate: add `rate` to the route or to [limits]",
            )),
        },
    }
}

fn validate_limits(file: FileLimits, mut limits: Limits) -> Result<Limits, ConfigError> {
    limits.rate = route_rate("limits", file.rate, file.burst, None)?;
    let ipv4_prefix = file.ipv4_prefix.unwrap_or(DEFAULT_IPV4_PREFIX);
    if ipv4_prefix > 32 {
        return Err(ConfigError::invalid(
            "limits.ipv4_prefix",
            format!("{ipv4_prefix} is above 32"),
        ));
    }
    let ipv6_prefix = file.ipv6_prefix.unwrap_or(DEFAULT_IPV6_PREFIX);
    if ipv6_prefix > 128 {
        return Err(ConfigError::invalid(
            "limits.ipv6_prefix",
            format!("{ipv6_prefix} is above 128"),
        ));
    }
    limits.key_mask = KeyMask {
        ipv4_prefix,
        ipv6_prefix,
    };
    limits.max_tracked_clients = file
        .max_tracked_clients
        .unwrap_or(DEFAULT_MAX_TRACKED_CLIENTS);
    if !(16..=100_000_000).contains(&limits.max_tracked_clients) {
        return Err(ConfigError::invalid(
            "limits.max_tracked_clients",
            format!("{} is outside 16..=100000000", limits.max_tracked_clients),
        ));
    }
    limits.connections_per_client = file
        .connections_per_client
        .unwrap_or(DEFAULT_CONNECTIONS_PER_CLIENT);
    limits.max_connections = file.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    limits.max_headers = file.max_headers.unwrap_or(DEFAULT_MAX_HEADERS);
    if !(8..=10_000).contains(&limits.max_headers) {
        return Err(ConfigError::invalid(
            "limits.max_headers",
            format!("{} is outside 8..=10000", limits.max_headers),
        ));
    }
    limits.max_body_bytes = file.max_body_bytes.filter(|&max| max > 0);
    limits.idle_timeout = secs(
        "limits.idle_timeout",
        file.idle_timeout,
        DEFAULT_IDLE_TIMEOUT_SECS,
        1,
    )?;
    limits.h2_max_concurrent_streams = file
        .h2_max_concurrent_streams
        .unwrap_or(DEFAULT_H2_MAX_CONCURRENT_STREAMS);
    if limits.h2_max_concurrent_streams == 0 {
        return Err(ConfigError::invalid(
            "limits.h2_max_concurrent_streams",
            "must be at least 1",
        ));
    }
    limits.h2_max_pending_reset_streams = file
        .h2_max_pending_reset_streams
        .unwrap_or(DEFAULT_H2_MAX_PENDING_RESET_STREAMS);
    limits.h2_max_local_error_reset_streams = file
        .h2_max_local_error_reset_streams
        .unwrap_or(DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS);
    for (field, value) in [
        (
            "limits.h2_max_pending_reset_streams",
            limits.h2_max_pending_reset_streams,
        ),
        (
            "limits.h2_max_local_error_reset_streams",
            limits.h2_max_local_error_reset_streams,
        ),
    ] {
        if value == 0 {
            return Err(ConfigError::invalid(field, "must be at least 1"));
        }
    }
    limits.h2_keepalive_interval = match file.h2_keepalive_interval {
        Some(0) => None,
        Some(secs) => Some(Duration::from_secs(secs)),
        None => Some(Duration::from_secs(DEFAULT_H2_KEEPALIVE_INTERVAL_SECS)),
    };
    Ok(limits)
}

fn validate_tls(tls: FileTls, base_dir: Option<&Path>) -> Result<TlsSettings, ConfigError> {
    let default = match tls.default {
        Some(name) => Some(route_host("tls.default", &name)?),
        None => None,
    };
    let mut certificates = Vec::with_capacity(tls.certificates.len());
    for (i, certificate) in tls.certificates.into_iter().enumerate() {
        let cert = certificate.cert.ok_or_else(|| {
            ConfigError::invalid(
                format!("tls.certificates[{i}].cert"),
                "missing: the PEM chain file",
            )
        })?;
        let key = certificate.key.ok_or_else(|| {
            ConfigError::invalid(
                format!("tls.certificates[{i}].key"),
                "missing: the PEM key file",
            )
        })?;
        certificates.push(CertificateFiles {
            cert: anchored(base_dir, cert),
            key: anchored(base_dir, key),
        });
    }
    Ok(TlsSettings {
        cert_dir: tls.cert_dir.map(|dir| anchored(base_dir, dir)),
        default,
        certificates,
    })
}

fn validate_tunnel(
    tunnel: FileTunnel,
    base_dir: Option<&Path>,
    control: bool,
) -> Result<TunnelSettings, ConfigError> {
    let key_from_control =
        control && tunnel.private_key.is_none() && tunnel.private_key_file.is_none();
    let private_key = match (tunnel.private_key, tunnel.private_key_file) {
        (None, None) if key_from_control => PrivateKey::generate(),
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                "tunnel.private_key_file",
                "set either private_key or private_key_file, not both",
            ))
        }
        (None, None) => {
            return Err(ConfigError::invalid(
                "tunnel.private_key",
                "missing: set private_key (from `kokoa-edge genkey`) or private_key_file",
            ))
        }
        (Some(key), None) => PrivateKey::from_base64(key.trim()).map_err(|e| {
            ConfigError::invalid(
                "tunnel.private_key",
                format!("not a WireGuard private key ({e}); generate one with `kokoa-edge genkey`"),
            )
        })?,
        (None, Some(file)) => {
            let path = anchored(base_dir, file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError::invalid(
                    "tunnel.private_key_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            PrivateKey::from_base64(text.trim()).map_err(|e| {
                ConfigError::invalid(
                    "tunnel.private_key_file",
                    format!(
                        "{} does not hold a WireGuard private key ({e})",
                        path.display()
                    ),
                )
            })?
        }
    };
    let mtu = tunnel.mtu.unwrap_or(kokoa_tunnel::DEFAULT_MTU);
    if mtu < MIN_MTU {
        return Err(ConfigError::invalid(
            "tunnel.mtu",
            format!("{mtu} is below {MIN_MTU}; use 1420 (or 1280 on unknown paths)"),
        ));
    }
    let (window, stall_timeout) = kokoa_tunnel::window::WindowFile {
        tcp_buffer: tunnel.tcp_buffer,
        min_tcp_buffer: tunnel.min_tcp_buffer,
        window_budget: tunnel.window_budget,
        window_per_client: tunnel.window_per_client,
        window_per_peer: tunnel.window_per_peer,
        stall_timeout: tunnel.stall_timeout,
    }
    .settings()
    .map_err(|e| ConfigError::invalid(format!("tunnel.{}", e.field), e.reason))?;
    Ok(TunnelSettings {
        private_key,
        listen: tunnel.listen.unwrap_or(DEFAULT_TUNNEL_LISTEN),
        mtu,
        window,
        stall_timeout,
        key_from_control,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        PrivateKey::generate().to_base64()
    }

    fn base(extra: &str) -> String {
        format!(
            r#"
[tunnel]
private_key = "{}"
[[origins]]
name = "home"
public_key = "{}"
address = "10.100.1.10"
origin_address = "10.100.1.1"
{extra}
"#,
            key(),
            PrivateKey::generate().public_key().to_base64()
        )
    }

    fn error(text: &str) -> String {
        match EdgeConfig::from_toml(text, None) {
            Ok(_) => panic!("config was accepted:\n{text}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn example_file_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let config = EdgeConfig::load(&dir.join("edge.toml")).expect("examples/edge.toml");
        assert_eq!(config.https.port(), 443);
        assert_eq!(config.routes.len(), 2);
        assert_eq!(config.routes[1].host, "*.example.com");
        assert_eq!(config.tcp_routes.len(), 1);
        assert_eq!(config.origins[0].name, "home");
        assert_eq!(config.tls.cert_dir, Some(PathBuf::from("/etc/kokoa/certs")));
        assert_eq!(config.tls.default.as_deref(), Some("app.example.com"));
        // The seeds' Nginx limits, as the example sets them.
        assert_eq!(
            config.limits.rate,
            Some(RatePolicy {
                per_second: 10.0,
                burst: 20
            })
        );
        assert_eq!(config.limits.connections_per_client, 10);
        assert_eq!(config.tcp_routes[0].proxy_protocol, ProxyProtocol::None);
    }

    #[test]
    fn defaults_apply() {
        let config = EdgeConfig::from_toml(&base(""), None).unwrap();
        assert_eq!(config.https, DEFAULT_HTTPS);
        assert_eq!(config.http, DEFAULT_HTTP);
        assert_eq!(config.admin, DEFAULT_ADMIN);
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.drain_timeout, Duration::from_secs(10));
        assert_eq!(config.tunnel.mtu, 1420);
    }

    #[test]
    fn unknown_origin_names_the_field() {
        let text = base(
            r#"
[[routes]]
host = "a.example.com"
origin = "home"
port = 1
[[routes]]
host = "b.example.com"
origin = "home"
port = 2
[[routes]]
host = "c.example.com"
origin = "x"
port = 3
"#,
        );
        assert_eq!(
            error(&text),
            "routes[2].origin: unknown origin \"x\": add an [[origins]] entry with that name"
        );
    }

    #[test]
    fn bad_hosts_and_wildcards_are_rejected() {
        for (host, expect) in [
            ("a.*.example.com", "leftmost"),
            ("*example.com", "leftmost"),
            ("*.com", "not a valid wildcard"),
            ("bad host", "not a valid host name"),
            ("-a.example.com", "not a valid host name"),
        ] {
            let text = base(&format!(
                "[[routes]]\nhost = \"{host}\"\norigin = \"home\"\nport = 1\n"
            ));
            let message = error(&text);
            assert!(message.starts_with("routes[0].host:"), "{message}");
            assert!(message.contains(expect), "{host}: {message}");
        }
    }

    #[test]
    fn duplicate_hosts_and_aliases_are_rejected() {
        let text = base(
            r#"
[[routes]]
host = "App.Example.com."
origin = "home"
port = 1
[[routes]]
host = "b.example.com"
aliases = ["app.example.com"]
origin = "home"
port = 2
"#,
        );
        assert_eq!(
            error(&text),
            "routes[1].aliases[0]: `app.example.com` is already routed by routes[0].host"
        );
    }

    #[test]
    fn field_errors() {
        let cases = [
            (
                "[[routes]]\nhost = \"a.example.com\"\norigin = \"home\"\nport = 0\n",
                "routes[0].port:",
            ),
            (
                "[[tcp_routes]]\nlisten = \"0.0.0.0:4001\"\norigin = \"nope\"\nport = 1\n",
                "tcp_routes[0].origin: unknown origin \"nope\"",
            ),
            ("[tls]\ndefault = \"*x\"\n", "tls.default:"),
            (
                "[edge]\nhttps = \"0.0.0.0:80\"\n",
                "edge.http: 0.0.0.0:80 is already used by edge.https",
            ),
            ("[edge]\nbogus = 1\n", "unknown field `bogus`"),
        ];
        for (extra, expect) in cases {
            let message = error(&base(extra));
            assert!(message.contains(expect), "{expect}: {message}");
        }
        let message = error(&format!(
            "[tunnel]\nprivate_key = \"{}\"\n[[origins]]\nname = \"o\"\npublic_key = \"abc\"\naddress = \"10.100.1.10\"\norigin_address = \"10.100.1.1\"\n",
            key()
        ));
        assert!(
            message.starts_with("origins[0].public_key: not a WireGuard public key"),
            "{message}"
        );
        let message = error("[tunnel]\nprivate_key = \"short\"\n");
        assert!(message.starts_with("tunnel.private_key:"), "{message}");
        let message = error("");
        assert!(
            message.starts_with("tunnel.private_key: missing"),
            "{message}"
        );
    }

    #[test]
    fn protection_keys_parse() {
        let text = base(
            r#"
[limits]
rate = 10.0
burst = 20
ipv4_prefix = 24
ipv6_prefix = 48
max_tracked_clients = 5000
connections_per_client = 10
max_connections = 1000
max_headers = 50
max_body_bytes = 4096
idle_timeout = 15
h2_max_concurrent_streams = 50
h2_max_pending_reset_streams = 5
h2_max_local_error_reset_streams = 100
h2_keepalive_interval = 0
[[routes]]
host = "admin.example.com"
origin = "home"
port = 8080
rate = 100.0
burst = 200
max_body_bytes = 1048576
allow = ["127.0.0.2/32", "10.0.0.0/8"]
deny = ["127.0.0.3/32"]
[[routes]]
host = "plain.example.com"
origin = "home"
port = 8081
[[routes]]
host = "only-rate.example.com"
origin = "home"
port = 8082
rate = 2.5
max_body_bytes = 0
[[routes]]
host = "off.example.com"
origin = "home"
port = 8083
rate = 0
[[tcp_routes]]
listen = "0.0.0.0:4001"
origin = "home"
port = 4001
proxy_protocol = "v2"
allow = []
deny = ["2001:db8::/32"]
"#,
        );
        let config = EdgeConfig::from_toml(&text, None).unwrap();
        let limits = &config.limits;
        assert_eq!(
            limits.rate,
            Some(RatePolicy {
                per_second: 10.0,
                burst: 20
            })
        );
        assert_eq!(
            limits.key_mask,
            KeyMask {
                ipv4_prefix: 24,
                ipv6_prefix: 48
            }
        );
        assert_eq!(limits.max_tracked_clients, 5000);
        assert_eq!(limits.connections_per_client, 10);
        assert_eq!(limits.max_connections, 1000);
        assert_eq!(limits.max_headers, 50);
        assert_eq!(limits.max_body_bytes, Some(4096));
        assert_eq!(limits.idle_timeout, Duration::from_secs(15));
        assert_eq!(limits.h2_max_concurrent_streams, 50);
        assert_eq!(limits.h2_max_pending_reset_streams, 5);
        assert_eq!(limits.h2_max_local_error_reset_streams, 100);
        assert_eq!(limits.h2_keepalive_interval, None);

        let policies = &config.route_policies;
        assert_eq!(policies.len(), 4);
        assert_eq!(
            policies[0].rate,
            Some(RatePolicy {
                per_second: 100.0,
                burst: 200
            })
        );
        assert_eq!(policies[0].max_body_bytes, Some(1_048_576));
        assert!(policies[0].acl.permits("127.0.0.2".parse().unwrap()));
        assert!(policies[0].acl.permits("10.9.9.9".parse().unwrap()));
        assert!(!policies[0].acl.permits("127.0.0.3".parse().unwrap()));
        assert!(!policies[0].acl.permits("127.0.0.4".parse().unwrap()));
        // Defaults from [limits].
        assert_eq!(policies[1].rate, limits.rate);
        assert_eq!(policies[1].max_body_bytes, Some(4096));
        assert!(policies[1].acl.is_open());
        // Rate alone: burst is one second's worth; max_body_bytes = 0 is unlimited.
        assert_eq!(
            policies[2].rate,
            Some(RatePolicy {
                per_second: 2.5,
                burst: 3
            })
        );
        assert_eq!(policies[2].max_body_bytes, None);
        assert_eq!(policies[3].rate, None, "rate = 0 turns the limit off");

        let tcp = &config.tcp_routes[0];
        assert_eq!(tcp.proxy_protocol, ProxyProtocol::V2);
        assert!(!tcp.acl.permits("2001:db8::1".parse().unwrap()));
        assert!(tcp.acl.permits("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn protection_defaults() {
        let config = EdgeConfig::from_toml(&base(""), None).unwrap();
        let limits = &config.limits;
        assert_eq!(limits.rate, None, "no request rate limit by default");
        assert_eq!(limits.connections_per_client, 256);
        assert_eq!(limits.max_connections, 16_384);
        assert_eq!(limits.max_tracked_clients, 100_000);
        assert_eq!(limits.max_headers, 100);
        assert_eq!(limits.max_body_bytes, None);
        assert_eq!(limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(limits.h2_max_concurrent_streams, 100);
        assert_eq!(limits.h2_max_pending_reset_streams, 20);
        assert_eq!(limits.key_mask, KeyMask::default());
        // [limits] rate alone: burst = ceil(rate).
        let config = EdgeConfig::from_toml(&base("[limits]\nrate = 10.0\n"), None).unwrap();
        assert_eq!(
            config.limits.rate,
            Some(RatePolicy {
                per_second: 10.0,
                burst: 10
            })
        );
    }

    #[test]
    fn protection_errors_name_the_field() {
        let route = "[[routes]]\nhost = \"a.example.com\"\norigin = \"home\"\nport = 1\n";
        let cases = [
            ("[limits]\nrate = -1.0\n", "limits.rate:"),
            ("[limits]\nrate = nan\n", "limits.rate:"),
            ("[limits]\nburst = 5\n", "limits.burst: set without a rate"),
            (
                "[limits]\nrate = 1.0\nburst = 0\n",
                "limits.burst: must be at least 1",
            ),
            ("[limits]\nipv4_prefix = 33\n", "limits.ipv4_prefix:"),
            ("[limits]\nipv6_prefix = 129\n", "limits.ipv6_prefix:"),
            ("[limits]\nmax_headers = 1\n", "limits.max_headers:"),
            ("[limits]\nidle_timeout = 0\n", "limits.idle_timeout:"),
            (
                "[limits]\nh2_max_concurrent_streams = 0\n",
                "limits.h2_max_concurrent_streams:",
            ),
            ("[limits]\nbogus = 1\n", "unknown field `bogus`"),
        ];
        for (extra, expect) in cases {
            let message = error(&base(extra));
            assert!(message.contains(expect), "{expect}: {message}");
        }
        for (extra, expect) in [
            ("allow = [\"10.0.0.0/33\"]\n", "routes[0].allow[0]:"),
            ("deny = [\"10.0.0.1\", \"nope\"]\n", "routes[0].deny[1]:"),
            ("burst = 3\n", "routes[0].burst: set without a rate"),
            ("rate = -2.0\n", "routes[0].rate:"),
        ] {
            let message = error(&base(&format!("{route}{extra}")));
            assert!(message.contains(expect), "{expect}: {message}");
        }
        let message = error(&base(
            "[[tcp_routes]]\nlisten = \"0.0.0.0:4001\"\norigin = \"home\"\nport = 1\nproxy_protocol = \"v1\"\n",
        ));
        assert!(
            message.starts_with("tcp_routes[0].proxy_protocol:"),
            "{message}"
        );
    }

    fn control_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["control.test".to_owned()]).unwrap();
        std::fs::write(dir.path().join("control-ca.pem"), ca.cert.pem()).unwrap();
        dir
    }

    const CONTROL: &str = "[control]\nurl = \"https://control.test:7443\"\nca_file = \"control-ca.pem\"\ntoken_file = \"enroll.token\"\nstate_dir = \"state\"\n";

    #[test]
    fn control_example_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let text = std::fs::read_to_string(dir.join("edge-control.toml")).unwrap();
        let base = control_dir();
        let config = EdgeConfig::from_toml(&text, Some(base.path())).expect("edge-control.toml");
        let control = config.control.expect("control mode");
        assert_eq!(control.url, "https://control.example.com:7443");
        assert_eq!(control.host, "control.example.com");
        assert_eq!(control.token_file, base.path().join("enroll.token"));
        assert_eq!(control.state_dir, PathBuf::from("/var/lib/kokoa-edge"));
        assert!(config.tunnel.key_from_control);
        assert!(config.origins.is_empty() && config.routes.is_empty());
    }

    #[test]
    fn control_mode_excludes_file_routing() {
        let dir = control_dir();
        let config = EdgeConfig::from_toml(CONTROL, Some(dir.path())).unwrap();
        assert!(config.tunnel.key_from_control);
        for (extra, field) in [
            ("[[origins]]\nname = \"home\"\n", "origins:"),
            ("[[routes]]\nhost = \"a.example.com\"\n", "routes:"),
            ("[[tcp_routes]]\nport = 1\n", "tcp_routes:"),
            ("[tls]\ncert_dir = \"certs\"\n", "tls.cert_dir:"),
        ] {
            let message =
                match EdgeConfig::from_toml(&format!("{CONTROL}{extra}"), Some(dir.path())) {
                    Ok(_) => panic!("accepted {extra}"),
                    Err(error) => error.to_string(),
                };
            assert!(message.starts_with(field), "{message}");
            assert!(message.contains("from control"), "{message}");
        }
        let message = match EdgeConfig::from_toml(
            &CONTROL.replace("control-ca.pem", "missing.pem"),
            Some(dir.path()),
        ) {
            Ok(_) => panic!("accepted a missing CA"),
            Err(error) => error.to_string(),
        };
        assert!(message.starts_with("control.ca_file:"), "{message}");
        // A local key is kept when the operator holds it.
        let text = format!("{CONTROL}[tunnel]\nprivate_key = \"{}\"\n", key());
        let config = EdgeConfig::from_toml(&text, Some(dir.path())).unwrap();
        assert!(!config.tunnel.key_from_control);
    }

    #[test]
    fn snapshots_are_validated_like_the_file() {
        use kokoa_proto::v1::{EdgePeer, EdgeSnapshot, Route, TcpRoute as ProtoTcpRoute};
        let dir = control_dir();
        let config = EdgeConfig::from_toml(CONTROL, Some(dir.path())).unwrap();
        let origin_key = PrivateKey::generate().public_key();
        let mut snapshot = EdgeSnapshot {
            name: "vps1".into(),
            origins: vec![EdgePeer {
                name: "home".into(),
                public_key: origin_key.to_base64(),
                endpoint: String::new(),
                address: "10.100.1.10".into(),
                origin_address: "10.100.1.1".into(),
                keepalive: 25,
            }],
            routes: vec![Route {
                host: "App.Example.com".into(),
                aliases: vec!["www.example.com".into()],
                origin: "home".into(),
                port: 8001,
                limits_json: r#"{"rate": 5, "allow": ["10.0.0.0/8"]}"#.into(),
            }],
            tcp_routes: vec![ProtoTcpRoute {
                listen_port: 4001,
                origin: "home".into(),
                port: 4001,
                proxy_protocol_v2: true,
                allow: vec![],
                deny: vec!["192.0.2.0/24".into()],
            }],
            ..EdgeSnapshot::default()
        };
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let applied = config.with_snapshot(&snapshot, ip, None).unwrap();
        assert_eq!(applied.origins[0].public_key, origin_key);
        assert_eq!(applied.origins[0].keepalive, Some(25));
        assert_eq!(applied.routes[0].host, "app.example.com");
        assert_eq!(
            applied.route_policies[0].rate,
            Some(RatePolicy {
                per_second: 5.0,
                burst: 5
            })
        );
        assert!(!applied.route_policies[0]
            .acl
            .permits("192.0.2.1".parse().unwrap()));
        assert_eq!(
            applied.tcp_routes[0].listen,
            "127.0.0.1:4001".parse().unwrap()
        );
        assert_eq!(applied.tcp_routes[0].proxy_protocol, ProxyProtocol::V2);

        let reject = |snapshot: &EdgeSnapshot| {
            config
                .with_snapshot(snapshot, ip, None)
                .unwrap_err()
                .to_string()
        };
        let own = config
            .with_snapshot(&snapshot, ip, Some(origin_key))
            .unwrap_err()
            .to_string();
        assert!(
            own.starts_with("origins[0].public_key: is this edge's own"),
            "{own}"
        );
        let mut bad = snapshot.clone();
        bad.routes[0].origin = "nowhere".into();
        assert_eq!(
            reject(&bad),
            "routes[0].origin: unknown origin \"nowhere\": the snapshot has no origin peer of that name"
        );
        let mut bad = snapshot.clone();
        bad.routes[0].limits_json = r#"{"rate": -1}"#.into();
        assert!(
            reject(&bad).starts_with("routes[0].rate:"),
            "{}",
            reject(&bad)
        );
        let mut bad = snapshot.clone();
        bad.routes[0].limits_json = r#"{"speed": 1}"#.into();
        assert!(reject(&bad).starts_with("routes[0].limits_json:"));
        let mut bad = snapshot.clone();
        bad.origins[0].endpoint = "nope".into();
        assert!(reject(&bad).starts_with("origins[0].endpoint:"));
        let mut bad = snapshot.clone();
        bad.tcp_routes[0].listen_port = 70000;
        assert!(reject(&bad).starts_with("tcp_routes[0].listen_port:"));
        snapshot.routes.push(snapshot.routes[0].clone());
        assert!(reject(&snapshot).contains("already routed"));
    }

    #[test]
    fn private_key_file_is_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let private = PrivateKey::generate();
        std::fs::write(dir.path().join("edge.key"), private.to_base64()).unwrap();
        let path = dir.path().join("edge.toml");
        std::fs::write(&path, "[tunnel]\nprivate_key_file = \"edge.key\"\n").unwrap();
        let config = EdgeConfig::load(&path).unwrap();
        assert_eq!(config.tunnel.private_key.public_key(), private.public_key());
    }
}
