//! The origin's configuration: the TOML file form (`origin.toml`) and the validated model
//! ([`OriginConfig`]) that everything else uses.
//!
//! The file structs reject unknown fields so that a typo is an error rather than a silently
//! ignored setting. [`OriginConfig`] is the one model: the control plane will build the same
//! type from its gRPC snapshots later. Host names in endpoints are kept as written and resolved
//! when the origin starts ([`Endpoint::resolve`]).

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kokoa_node::control::{ControlSettings, FileControl};
use kokoa_tunnel::key::{PrivateKey, PublicKey};
use serde::Deserialize;

/// Admin listener (`/healthz`, `/metrics`) when `[origin] admin` is not set.
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9091);
/// UDP address of the tunnel when `[tunnel] listen` is not set: any interface, ephemeral port,
/// so that an origin behind NAT needs no open port.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
/// Persistent keepalive toward each edge (seconds) when `keepalive` is not set; keeps NAT
/// mappings open so that edges can reach an origin that only dials out.
pub const DEFAULT_KEEPALIVE: u16 = 25;
/// How long SIGTERM waits for open streams to finish (seconds).
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 10;
/// How long connecting to a local service may take before the tunnel stream is dropped
/// (seconds).
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 5;
/// Runtime threads when `[origin] workers` is not set. The origin's data plane is the tunnel
/// driver, one task; on one thread it spends ~10% less CPU per request than on two, where its
/// streams and the driver wake each other across threads (measured in `bench/README.md`), and
/// it leaves the other cores to the apps it publishes.
pub const DEFAULT_WORKERS: usize = 1;
/// Most runtime threads `[origin] workers` accepts.
pub const MAX_WORKERS: usize = 1024;
/// Smallest inner MTU accepted: IPv4's minimum reassembly size, below which TCP cannot work
/// sensibly.
pub const MIN_MTU: u16 = 576;

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
    /// The TOML is malformed, a field is unknown, missing or of the wrong type.
    #[error("{0}")]
    Parse(#[from] toml::de::Error),
    /// A field has a value that is not allowed.
    #[error("invalid `{field}`: {reason}")]
    Invalid {
        /// The field, as a TOML path (`edges[0].public_key`).
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

/// A network endpoint as written in the config: an address, or a host name resolved at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A literal `ip:port`.
    Addr(SocketAddr),
    /// `host:port`, resolved with the system resolver when the origin starts.
    Host {
        /// The host name.
        host: String,
        /// The port.
        port: u16,
    },
}

impl Endpoint {
    /// Parses `ip:port`, `[v6]:port` or `host:port`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Self::Addr(addr));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` has no port: write host:port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{s}` has an invalid port: write host:port"))?;
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !valid_host {
            return Err(format!(
                "`{s}` is neither ip:port nor host:port with a valid host name"
            ));
        }
        Ok(Self::Host {
            host: host.to_owned(),
            port,
        })
    }

    /// Resolves to one socket address, preferring one of the same family as `prefer` (so that an
    /// IPv4 UDP socket gets an IPv4 endpoint).
    pub async fn resolve(&self, prefer_ipv4: bool) -> std::io::Result<SocketAddr> {
        match self {
            Self::Addr(addr) => Ok(*addr),
            Self::Host { host, port } => {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), *port))
                    .await?
                    .collect();
                addrs
                    .iter()
                    .find(|a| a.is_ipv4() == prefer_ipv4)
                    .or_else(|| addrs.first())
                    .copied()
                    .ok_or_else(|| {
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("host name {host} has no addresses"),
                        )
                    })
            }
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(addr) => addr.fmt(f),
            Self::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// The validated origin configuration.
#[derive(Clone, Debug)]
pub struct OriginConfig {
    /// Address of the admin listener (`/healthz`, `/metrics`).
    pub admin: SocketAddr,
    /// The origin's own address inside the tunnel (`10.100.X.1`).
    pub address: Ipv4Addr,
    /// How long SIGTERM waits for open streams before closing them.
    pub drain_timeout: Duration,
    /// How long connecting to a local service may take.
    pub connect_timeout: Duration,
    /// Runtime threads: 1 runs everything on one thread (the default), more use tokio's
    /// work-stealing runtime with that many workers.
    pub workers: usize,
    /// The WireGuard side.
    pub tunnel: TunnelSettings,
    /// The edges this origin dials; at least one.
    pub edges: Vec<EdgeConfig>,
    /// The services reachable through the tunnel; ports are unique.
    pub services: Vec<ServiceConfig>,
    /// Control mode: the address, edges, services (and the tunnel key, unless the operator
    /// holds it) come from `kokoa-control`; `address` is unspecified until then.
    pub control: Option<ControlSettings>,
}

/// The origin's WireGuard settings.
#[derive(Clone, Debug)]
pub struct TunnelSettings {
    /// The origin's private key.
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
    /// sends the origin's managed key.
    pub key_from_control: bool,
}

/// One edge peer.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// A name for logs and metrics.
    pub name: String,
    /// The edge's WireGuard public key.
    pub public_key: PublicKey,
    /// Where to send the first handshake; `None` waits for the edge to dial in.
    pub endpoint: Option<Endpoint>,
    /// The edge's address inside the tunnel: the only inner source address accepted from it.
    pub address: Ipv4Addr,
    /// Persistent keepalive in seconds; `None` disables it.
    pub keepalive: Option<u16>,
}

/// One service reachable through the tunnel.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// A name for logs and metrics.
    pub name: String,
    /// The TCP port inside the tunnel that edges connect to.
    pub port: u16,
    /// Where the local app listens.
    pub local: Endpoint,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    origin: FileOrigin,
    #[serde(default)]
    tunnel: FileTunnel,
    #[serde(default)]
    edges: Vec<FileEdge>,
    #[serde(default)]
    services: Vec<FileService>,
    control: Option<FileControl>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOrigin {
    admin: Option<SocketAddr>,
    address: Option<Ipv4Addr>,
    drain_timeout: Option<u64>,
    connect_timeout: Option<u64>,
    workers: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEdge {
    name: String,
    public_key: String,
    endpoint: Option<String>,
    address: Ipv4Addr,
    keepalive: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileService {
    name: String,
    port: u16,
    local: String,
}

impl OriginConfig {
    /// Reads and validates a config file. A relative `private_key_file` is taken relative to
    /// the config file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path.parent())
    }

    /// Parses and validates TOML text; `base_dir` anchors a relative `private_key_file`.
    pub fn from_toml(text: &str, base_dir: Option<&Path>) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text)?;
        file.validate(base_dir)
    }
}

impl FileConfig {
    fn validate(self, base_dir: Option<&Path>) -> Result<OriginConfig, ConfigError> {
        let origin = self.origin;
        let control = match self.control {
            Some(control) => {
                for (field, present) in [
                    ("origin.address", origin.address.is_some()),
                    ("edges", !self.edges.is_empty()),
                    ("services", !self.services.is_empty()),
                ] {
                    if present {
                        return Err(ConfigError::invalid(
                            field,
                            "a config with [control] gets its address, edges and services from control: remove this (or remove [control] to run from this file)",
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
        let address = match (origin.address, &control) {
            (Some(address), _) => check_address(address)?,
            (None, Some(_)) => Ipv4Addr::UNSPECIFIED,
            (None, None) => {
                return Err(ConfigError::invalid(
                    "origin.address",
                    "missing: the origin's own address inside the tunnel, such as 10.100.1.1",
                ))
            }
        };
        let drain_timeout =
            Duration::from_secs(origin.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT_SECS));
        let connect_timeout = origin
            .connect_timeout
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECS);
        if connect_timeout == 0 {
            return Err(ConfigError::invalid(
                "origin.connect_timeout",
                "must be at least 1 second",
            ));
        }
        let workers = origin.workers.unwrap_or(DEFAULT_WORKERS);
        if !(1..=MAX_WORKERS).contains(&workers) {
            return Err(ConfigError::invalid(
                "origin.workers",
                format!("{workers} is outside 1..={MAX_WORKERS}"),
            ));
        }

        let tunnel = validate_tunnel(self.tunnel, base_dir, control.is_some())?;
        if control.is_none() && self.edges.is_empty() {
            return Err(ConfigError::invalid(
                "edges",
                "no [[edges]] entry: add at least one edge for this origin to dial",
            ));
        }
        let own_key = (!tunnel.key_from_control).then(|| tunnel.private_key.public_key());
        let edges = validate_edges(self.edges, address, own_key)?;
        let services = validate_services(self.services)?;

        Ok(OriginConfig {
            admin: origin.admin.unwrap_or(DEFAULT_ADMIN),
            address,
            drain_timeout,
            connect_timeout: Duration::from_secs(connect_timeout),
            workers,
            tunnel,
            edges,
            services,
            control,
        })
    }
}

fn check_address(address: Ipv4Addr) -> Result<Ipv4Addr, ConfigError> {
    if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
        return Err(ConfigError::invalid(
            "origin.address",
            format!("{address} cannot be a host address; use the origin's 10.100.X.1"),
        ));
    }
    Ok(address)
}

/// Validates the edges (tunnel peers) of an origin at `address`; `own_key` (the origin's
/// public key, when known) may not be one of them.
fn validate_edges(
    file: Vec<FileEdge>,
    address: Ipv4Addr,
    own_key: Option<PublicKey>,
) -> Result<Vec<EdgeConfig>, ConfigError> {
    let mut edges = Vec::with_capacity(file.len());
    let mut names = HashSet::new();
    let mut keys = HashSet::new();
    let mut addresses = HashSet::new();
    for (i, edge) in file.into_iter().enumerate() {
        let field = |name: &str| format!("edges[{i}].{name}");
        if edge.name.trim().is_empty() {
            return Err(ConfigError::invalid(field("name"), "must not be empty"));
        }
        if !names.insert(edge.name.clone()) {
            return Err(ConfigError::invalid(
                field("name"),
                format!("`{}` is used by another edge", edge.name),
            ));
        }
        let public_key = PublicKey::from_base64(&edge.public_key).map_err(|e| {
            ConfigError::invalid(
                field("public_key"),
                format!("not a WireGuard public key ({e}); use the edge's `pubkey` output"),
            )
        })?;
        if Some(public_key) == own_key {
            return Err(ConfigError::invalid(
                field("public_key"),
                "is this origin's own public key; use the edge's key",
            ));
        }
        if !keys.insert(public_key) {
            return Err(ConfigError::invalid(
                field("public_key"),
                "is used by another edge",
            ));
        }
        if edge.address == address {
            return Err(ConfigError::invalid(
                field("address"),
                format!("{} is the origin's own address", edge.address),
            ));
        }
        if !addresses.insert(edge.address) {
            return Err(ConfigError::invalid(
                field("address"),
                format!("{} is used by another edge", edge.address),
            ));
        }
        let endpoint = edge
            .endpoint
            .as_deref()
            .map(Endpoint::parse)
            .transpose()
            .map_err(|reason| ConfigError::invalid(field("endpoint"), reason))?;
        let keepalive = match edge.keepalive {
            None => Some(DEFAULT_KEEPALIVE),
            Some(0) => None,
            Some(secs) => Some(secs),
        };
        edges.push(EdgeConfig {
            name: edge.name,
            public_key,
            endpoint,
            address: edge.address,
            keepalive,
        });
    }
    Ok(edges)
}

/// Validates the services: unique names and ports, connectable local addresses.
fn validate_services(file: Vec<FileService>) -> Result<Vec<ServiceConfig>, ConfigError> {
    let mut services = Vec::with_capacity(file.len());
    let mut names = HashSet::new();
    let mut ports = HashSet::new();
    for (i, service) in file.into_iter().enumerate() {
        let field = |name: &str| format!("services[{i}].{name}");
        if service.name.trim().is_empty() {
            return Err(ConfigError::invalid(field("name"), "must not be empty"));
        }
        if !names.insert(service.name.clone()) {
            return Err(ConfigError::invalid(
                field("name"),
                format!("`{}` is used by another service", service.name),
            ));
        }
        if service.port == 0 {
            return Err(ConfigError::invalid(field("port"), "must be 1-65535"));
        }
        if !ports.insert(service.port) {
            return Err(ConfigError::invalid(
                field("port"),
                format!("{} is used by another service", service.port),
            ));
        }
        let local = Endpoint::parse(&service.local)
            .map_err(|reason| ConfigError::invalid(field("local"), reason))?;
        if let Endpoint::Addr(addr) = &local {
            if addr.port() == 0 || addr.ip().is_unspecified() {
                return Err(ConfigError::invalid(
                    field("local"),
                    format!(
                        "{addr} is not connectable; write the app's address such as 127.0.0.1:8001"
                    ),
                ));
            }
        }
        services.push(ServiceConfig {
            name: service.name,
            port: service.port,
            local,
        });
    }
    Ok(services)
}

impl OriginConfig {
    /// This config with the address, edges and services of a control snapshot, validated
    /// exactly like the file's `[origin] address`, `[[edges]]` and `[[services]]` (the one
    /// model both forms converge on). Errors name the snapshot field (`edges[0].public_key`).
    /// `own_key` is this origin's public key: no edge may use it.
    pub fn with_snapshot(
        &self,
        snapshot: &kokoa_proto::v1::OriginSnapshot,
        own_key: Option<PublicKey>,
    ) -> Result<OriginConfig, ConfigError> {
        let address: Ipv4Addr = snapshot.address.parse().map_err(|_| {
            ConfigError::invalid(
                "address",
                format!("`{}` is not an IPv4 address", snapshot.address),
            )
        })?;
        let address = check_address(address)?;
        let mut edges = Vec::with_capacity(snapshot.edges.len());
        for (i, edge) in snapshot.edges.iter().enumerate() {
            let edge_address = edge.address.parse().map_err(|_| {
                ConfigError::invalid(
                    format!("edges[{i}].address"),
                    format!("`{}` is not an IPv4 address", edge.address),
                )
            })?;
            let keepalive = u16::try_from(edge.keepalive).map_err(|_| {
                ConfigError::invalid(
                    format!("edges[{i}].keepalive"),
                    format!("{} s is too long", edge.keepalive),
                )
            })?;
            edges.push(FileEdge {
                name: edge.name.clone(),
                public_key: edge.public_key.clone(),
                endpoint: (!edge.endpoint.is_empty()).then(|| edge.endpoint.clone()),
                address: edge_address,
                keepalive: Some(keepalive),
            });
        }
        let edges = validate_edges(edges, address, own_key)?;
        let mut services = Vec::with_capacity(snapshot.services.len());
        for (i, service) in snapshot.services.iter().enumerate() {
            if !matches!(service.protocol.as_str(), "" | "http" | "tcp") {
                return Err(ConfigError::invalid(
                    format!("services[{i}].protocol"),
                    format!("`{}` is not http or tcp", service.protocol),
                ));
            }
            let port = u16::try_from(service.port).map_err(|_| {
                ConfigError::invalid(
                    format!("services[{i}].port"),
                    format!("{} is not a port (1-65535)", service.port),
                )
            })?;
            services.push(FileService {
                name: service.name.clone(),
                port,
                local: service.local.clone(),
            });
        }
        let services = validate_services(services)?;
        Ok(OriginConfig {
            address,
            edges,
            services,
            ..self.clone()
        })
    }
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
                "missing: set private_key (from `kokoa-origin genkey`) or private_key_file",
            ))
        }
        (Some(key), None) => PrivateKey::from_base64(key.trim()).map_err(|e| {
            ConfigError::invalid(
                "tunnel.private_key",
                format!(
                    "not a WireGuard private key ({e}); generate one with `kokoa-origin genkey`"
                ),
            )
        })?,
        (None, Some(file)) => {
            let path = match base_dir {
                Some(dir) if file.is_relative() => dir.join(&file),
                _ => file,
            };
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
        listen: tunnel.listen.unwrap_or(DEFAULT_LISTEN),
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

    fn pubkey() -> String {
        PrivateKey::generate().public_key().to_base64()
    }

    fn minimal(extra: &str) -> String {
        format!(
            r#"
[origin]
address = "10.100.1.1"
[tunnel]
private_key = "{}"
[[edges]]
name = "vps1"
public_key = "{}"
address = "10.100.1.10"
{extra}
"#,
            key(),
            pubkey()
        )
    }

    fn invalid_field(result: Result<OriginConfig, ConfigError>) -> String {
        match result {
            Err(ConfigError::Invalid { field, .. }) => field,
            Err(other) => panic!("expected an Invalid error, got {other}"),
            Ok(_) => panic!("expected an error"),
        }
    }

    #[test]
    fn example_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/origin.toml");
        let text = std::fs::read_to_string(&path).expect("examples/origin.toml exists");
        let config = OriginConfig::from_toml(&text, path.parent()).expect("example is valid");
        assert_eq!(config.address, Ipv4Addr::new(10, 100, 1, 1));
        assert_eq!(config.edges.len(), 2);
        assert_eq!(
            config.edges[0].endpoint,
            Some(Endpoint::Addr("198.51.100.7:51820".parse().unwrap()))
        );
        assert_eq!(
            config.edges[1].endpoint,
            Some(Endpoint::Host {
                host: "edge2.example.com".into(),
                port: 51820
            })
        );
        assert_eq!(config.services.len(), 2);
        assert_eq!(config.services[0].port, 8001);
        assert_eq!(config.drain_timeout, Duration::from_secs(10));
    }

    #[test]
    fn defaults_apply() {
        let config = OriginConfig::from_toml(&minimal(""), None).unwrap();
        assert_eq!(config.admin, DEFAULT_ADMIN);
        assert_eq!(config.tunnel.listen, DEFAULT_LISTEN);
        assert_eq!(config.tunnel.mtu, kokoa_tunnel::DEFAULT_MTU);
        assert_eq!(config.edges[0].keepalive, Some(DEFAULT_KEEPALIVE));
        assert_eq!(config.edges[0].endpoint, None);
        assert_eq!(
            config.drain_timeout,
            Duration::from_secs(DEFAULT_DRAIN_TIMEOUT_SECS)
        );
        assert!(config.services.is_empty());
        assert_eq!(config.workers, 1);
    }

    #[test]
    fn workers_are_bounded() {
        let with = |n: &str| minimal("").replace("[origin]", &format!("[origin]\nworkers = {n}"));
        let config = OriginConfig::from_toml(&with("4"), None).unwrap();
        assert_eq!(config.workers, 4);
        for bad in ["0", "1025"] {
            assert_eq!(
                invalid_field(OriginConfig::from_toml(&with(bad), None)),
                "origin.workers",
                "workers = {bad}"
            );
        }
    }

    #[test]
    fn keepalive_zero_disables() {
        let text = minimal("").replace(
            "address = \"10.100.1.10\"",
            "address = \"10.100.1.10\"\nkeepalive = 0",
        );
        let config = OriginConfig::from_toml(&text, None).unwrap();
        assert_eq!(config.edges[0].keepalive, None);
    }

    #[test]
    fn unknown_field_is_named() {
        let text = minimal("").replace("[origin]", "[origin]\nadmn = \"127.0.0.1:1\"");
        let error = OriginConfig::from_toml(&text, None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("admn"), "{error}");
    }

    #[test]
    fn bad_public_key_names_the_field() {
        let text = format!(
            "{}\n[[edges]]\nname = \"b\"\npublic_key = \"nope\"\naddress = \"10.100.1.11\"\n",
            minimal("")
        );
        assert_eq!(
            invalid_field(OriginConfig::from_toml(&text, None)),
            "edges[1].public_key"
        );
    }

    #[test]
    fn duplicate_service_port_is_rejected() {
        let services = r#"
[[services]]
name = "a"
port = 8001
local = "127.0.0.1:8001"
[[services]]
name = "b"
port = 8001
local = "127.0.0.1:8002"
"#;
        assert_eq!(
            invalid_field(OriginConfig::from_toml(&minimal(services), None)),
            "services[1].port"
        );
    }

    #[test]
    fn service_local_must_be_an_endpoint() {
        let services = "[[services]]\nname = \"a\"\nport = 8001\nlocal = \"8001\"\n";
        assert_eq!(
            invalid_field(OriginConfig::from_toml(&minimal(services), None)),
            "services[0].local"
        );
        let services = "[[services]]\nname = \"a\"\nport = 8001\nlocal = \"localhost:8001\"\n";
        let config = OriginConfig::from_toml(&minimal(services), None).unwrap();
        assert_eq!(
            config.services[0].local,
            Endpoint::Host {
                host: "localhost".into(),
                port: 8001
            }
        );
    }

    #[test]
    fn missing_key_and_both_keys_are_rejected() {
        let text = minimal("");
        let without = text
            .lines()
            .filter(|l| !l.starts_with("private_key"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            invalid_field(OriginConfig::from_toml(&without, None)),
            "tunnel.private_key"
        );
        let both = text.replace("[tunnel]", "[tunnel]\nprivate_key_file = \"x.key\"");
        assert_eq!(
            invalid_field(OriginConfig::from_toml(&both, None)),
            "tunnel.private_key_file"
        );
    }

    #[test]
    fn private_key_file_is_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let private = PrivateKey::generate();
        std::fs::write(dir.path().join("origin.key"), private.to_base64() + "\n").unwrap();
        let text = format!(
            "[origin]\naddress = \"10.100.1.1\"\n[tunnel]\nprivate_key_file = \"origin.key\"\n\
             [[edges]]\nname = \"e\"\npublic_key = \"{}\"\naddress = \"10.100.1.10\"\n",
            pubkey()
        );
        let config = OriginConfig::from_toml(&text, Some(dir.path())).unwrap();
        assert_eq!(config.tunnel.private_key.public_key(), private.public_key());
    }

    #[test]
    fn edge_rules() {
        let no_edges = format!(
            "[origin]\naddress = \"10.100.1.1\"\n[tunnel]\nprivate_key = \"{}\"\n",
            key()
        );
        assert_eq!(
            invalid_field(OriginConfig::from_toml(&no_edges, None)),
            "edges"
        );
        let same_address = minimal("").replace("10.100.1.10", "10.100.1.1");
        assert_eq!(
            invalid_field(OriginConfig::from_toml(&same_address, None)),
            "edges[0].address"
        );
        let bad_endpoint = minimal("").replace(
            "address = \"10.100.1.10\"",
            "address = \"10.100.1.10\"\nendpoint = \"no port\"",
        );
        assert_eq!(
            invalid_field(OriginConfig::from_toml(&bad_endpoint, None)),
            "edges[0].endpoint"
        );
    }

    #[test]
    fn endpoint_parsing() {
        assert_eq!(
            Endpoint::parse("[::1]:80").unwrap(),
            Endpoint::Addr("[::1]:80".parse().unwrap())
        );
        assert!(Endpoint::parse("host:99999").is_err());
        assert!(Endpoint::parse(":80").is_err());
        assert!(Endpoint::parse("a b:80").is_err());
    }

    #[tokio::test]
    async fn endpoint_resolves_literal_and_localhost() {
        let literal = Endpoint::parse("127.0.0.1:9").unwrap();
        assert_eq!(
            literal.resolve(true).await.unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        let host = Endpoint::parse("localhost:9").unwrap();
        let resolved = host.resolve(true).await.unwrap();
        assert!(resolved.ip().is_loopback());
        assert_eq!(resolved.port(), 9);
    }

    fn control_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["control.test".to_owned()]).unwrap();
        std::fs::write(dir.path().join("control-ca.pem"), ca.cert.pem()).unwrap();
        dir
    }

    #[test]
    fn control_example_and_exclusions() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let text = std::fs::read_to_string(examples.join("origin-control.toml")).unwrap();
        let dir = control_dir();
        let config = OriginConfig::from_toml(&text, Some(dir.path())).expect("origin-control.toml");
        let control = config.control.as_ref().expect("control mode");
        assert_eq!(control.host, "control.example.com");
        assert_eq!(control.ca_file, dir.path().join("control-ca.pem"));
        assert!(config.tunnel.key_from_control);
        assert!(config.edges.is_empty() && config.services.is_empty());

        let base = "[origin]\n[control]\nurl = \"https://control.test:7443\"\nca_file = \"control-ca.pem\"\ntoken_file = \"t\"\nstate_dir = \"s\"\n";
        assert!(OriginConfig::from_toml(base, Some(dir.path())).is_ok());
        for (extra, field) in [
            (
                "[[edges]]\nname = \"e\"\npublic_key = \"x\"\naddress = \"10.100.1.10\"\n",
                "`edges`",
            ),
            (
                "[[services]]\nname = \"web\"\nport = 1\nlocal = \"127.0.0.1:1\"\n",
                "`services`",
            ),
        ] {
            let message = invalid_field(OriginConfig::from_toml(
                &format!("{base}{extra}"),
                Some(dir.path()),
            ));
            assert_eq!(format!("`{message}`"), field);
        }
        let message = invalid_field(OriginConfig::from_toml(
            &base.replace("[origin]\n", "[origin]\naddress = \"10.100.1.1\"\n"),
            Some(dir.path()),
        ));
        assert_eq!(message, "origin.address");
        let message = OriginConfig::from_toml(
            &format!("{base}[[services]]\nname = \"web\"\nport = 1\nlocal = \"127.0.0.1:1\"\n"),
            Some(dir.path()),
        )
        .unwrap_err()
        .to_string();
        assert!(message.contains("from control"), "{message}");
    }

    #[test]
    fn snapshots_are_validated_like_the_file() {
        use kokoa_proto::v1::{OriginPeer, OriginSnapshot, Service};
        let config = OriginConfig::from_toml(&minimal(""), None).unwrap();
        let edge_key = PrivateKey::generate().public_key();
        let snapshot = OriginSnapshot {
            name: "home".into(),
            private_key: String::new(),
            address: "10.100.2.1".into(),
            edges: vec![OriginPeer {
                name: "vps1".into(),
                public_key: edge_key.to_base64(),
                endpoint: "127.0.0.1:51820".into(),
                address: "10.100.2.10".into(),
                keepalive: 0,
            }],
            services: vec![Service {
                name: "web".into(),
                port: 8001,
                local: "127.0.0.1:8001".into(),
                protocol: "http".into(),
            }],
        };
        let applied = config.with_snapshot(&snapshot, None).unwrap();
        assert_eq!(applied.address, "10.100.2.1".parse::<Ipv4Addr>().unwrap());
        assert_eq!(applied.edges[0].public_key, edge_key);
        assert_eq!(applied.edges[0].keepalive, None, "0 turns keepalive off");
        assert_eq!(applied.services[0].port, 8001);
        let reject = |snapshot: &OriginSnapshot, own: Option<PublicKey>| {
            invalid_field(config.with_snapshot(snapshot, own))
        };
        assert!(reject(&snapshot, Some(edge_key)).contains("edges[0].public_key"));
        let mut bad = snapshot.clone();
        bad.services.push(bad.services[0].clone());
        assert!(reject(&bad, None).contains("services[1].name"));
        let mut bad = snapshot.clone();
        bad.edges[0].address = "10.100.2.1".into();
        assert_eq!(reject(&bad, None), "edges[0].address");
        let mut bad = snapshot.clone();
        bad.services[0].local = "0.0.0.0:80".into();
        assert!(reject(&bad, None).contains("services[0].local"));
        let mut bad = snapshot;
        bad.address = "nope".into();
        assert!(reject(&bad, None).contains("address"));
    }
}
