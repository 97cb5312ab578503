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
    /// The WireGuard side.
    pub tunnel: TunnelSettings,
    /// The edges this origin dials; at least one.
    pub edges: Vec<EdgeConfig>,
    /// The services reachable through the tunnel; ports are unique.
    pub services: Vec<ServiceConfig>,
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
    /// Per-direction TCP buffer per stream, in bytes.
    pub tcp_buffer: usize,
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
    tunnel: FileTunnel,
    #[serde(default)]
    edges: Vec<FileEdge>,
    #[serde(default)]
    services: Vec<FileService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOrigin {
    admin: Option<SocketAddr>,
    address: Ipv4Addr,
    drain_timeout: Option<u64>,
    connect_timeout: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTunnel {
    private_key: Option<String>,
    private_key_file: Option<PathBuf>,
    listen: Option<SocketAddr>,
    mtu: Option<u16>,
    tcp_buffer: Option<usize>,
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
        let address = origin.address;
        if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
            return Err(ConfigError::invalid(
                "origin.address",
                format!("{address} cannot be a host address; use the origin's 10.100.X.1"),
            ));
        }
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

        let tunnel = validate_tunnel(self.tunnel, base_dir)?;
        let own_key = tunnel.private_key.public_key();

        if self.edges.is_empty() {
            return Err(ConfigError::invalid(
                "edges",
                "no [[edges]] entry: add at least one edge for this origin to dial",
            ));
        }
        let mut edges = Vec::with_capacity(self.edges.len());
        let mut names = HashSet::new();
        let mut keys = HashSet::new();
        let mut addresses = HashSet::new();
        for (i, edge) in self.edges.into_iter().enumerate() {
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
            if public_key == own_key {
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

        let mut services = Vec::with_capacity(self.services.len());
        let mut names = HashSet::new();
        let mut ports = HashSet::new();
        for (i, service) in self.services.into_iter().enumerate() {
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
                        format!("{addr} is not connectable; write the app's address such as 127.0.0.1:8001"),
                    ));
                }
            }
            services.push(ServiceConfig {
                name: service.name,
                port: service.port,
                local,
            });
        }

        Ok(OriginConfig {
            admin: origin.admin.unwrap_or(DEFAULT_ADMIN),
            address,
            drain_timeout,
            connect_timeout: Duration::from_secs(connect_timeout),
            tunnel,
            edges,
            services,
        })
    }
}

fn validate_tunnel(
    tunnel: FileTunnel,
    base_dir: Option<&Path>,
) -> Result<TunnelSettings, ConfigError> {
    let private_key = match (tunnel.private_key, tunnel.private_key_file) {
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
    let tcp_buffer = tunnel
        .tcp_buffer
        .unwrap_or(kokoa_tunnel::DEFAULT_TCP_BUFFER);
    if !(4096..=64 * 1024 * 1024).contains(&tcp_buffer) {
        return Err(ConfigError::invalid(
            "tunnel.tcp_buffer",
            format!("{tcp_buffer} bytes is outside 4096..=67108864"),
        ));
    }
    Ok(TunnelSettings {
        private_key,
        listen: tunnel.listen.unwrap_or(DEFAULT_LISTEN),
        mtu,
        tcp_buffer,
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
}
