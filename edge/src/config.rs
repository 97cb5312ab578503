//! The edge's config file (`edge.toml`): its listeners and timeouts (`[edge]`), the tunnel's
//! table (`[tunnel]`, [`kokoa_tunnel::settings`]), `[control]`, and the routing tables
//! (`[[origins]]`, `[[routes]]`, `[[tcp_routes]]`, `[limits]`, `[tls]`), which parse straight
//! into the shared model ([`EdgeSpec`]): the same types and validators control's API and the
//! gRPC snapshots go through. A control snapshot becomes an `EdgeSpec` too, and both are
//! applied by the same [`crate::apply`] step.
//!
//! Unknown keys are errors, and every error names the field to fix as a path
//! (`routes[2].limits.allow[0]`, `tls.certificates[0].key`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kokoa_model::limits::TimeoutSecs;
use kokoa_model::{
    Bounded, Certificate, EdgeLimits, EdgeSpec, HostPattern, HttpRoute, ModelError, Network,
    OriginPeer, Port, SniHostCheck, TcpRoute,
};
use kokoa_node::control::{ControlSettings, FileControl};
use kokoa_tunnel::settings::{TunnelFile, TunnelSettings};
use serde::Deserialize;

/// TLS listener when `[edge] https` is not set.
pub const DEFAULT_HTTPS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 443);
/// Plain HTTP listener (redirects, ACME HTTP-01) when `[edge] http` is not set.
pub const DEFAULT_HTTP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 80);
/// Admin listener (`/healthz`, `/metrics`) when `[edge] admin` is not set.
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);
/// Tunnel UDP address when `[tunnel] listen` is not set: the standard WireGuard port.
pub const DEFAULT_TUNNEL_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 51820);
/// How long SIGTERM waits for in-flight connections (seconds).
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 10;
/// How long a TCP connect through the tunnel may take (seconds).
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 5;
/// How long a client may take to complete the TLS handshake (seconds).
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
/// How long an HTTP/1 client may take to send a complete request head (seconds).
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 30;
/// Largest request head accepted, in bytes (HTTP/1 buffer and HTTP/2 header list).
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 64 * 1024;
/// Idle upstream connections kept per origin service (Nginx's upstream `keepalive`).
pub const DEFAULT_UPSTREAM_KEEPALIVE: u64 = 64;
/// How long an idle upstream connection is kept (seconds).
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT_SECS: u64 = 90;

/// Seconds SIGTERM may wait (0: close at once).
pub type DrainSecs = Bounded<0, 86_400>;
/// Largest request head in bytes.
pub type HeaderBytes = Bounded<8192, 1_048_576>;
/// Idle upstream connections kept per service.
pub type Keepalive = Bounded<0, 100_000>;

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
    /// A field is missing, unknown or has a value the model refuses.
    #[error("{0}")]
    Invalid(#[from] ModelError),
}

impl ConfigError {
    /// The offending field's path, when the error is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid(error) if !error.field.is_empty() => Some(&error.field),
            _ => None,
        }
    }
}

/// The validated edge configuration: the node's own settings and what it serves.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// TLS listener.
    pub https: SocketAddr,
    /// Plain HTTP listener (redirects to HTTPS; ACME HTTP-01).
    pub http: SocketAddr,
    /// Admin listener (`/healthz`, `/metrics`).
    pub admin: SocketAddr,
    /// Port written into redirects' `Location`; `None` uses the HTTPS listener's port.
    pub https_port_in_redirect: Option<u16>,
    /// How long SIGTERM waits for in-flight connections.
    pub drain_timeout: Duration,
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
    /// Proxies in front of the edge whose forwarding headers are believed.
    pub trusted_proxies: Vec<Network>,
    /// Whether an HTTPS request's host must agree with its connection's SNI.
    pub sni_host_check: SniHostCheck,
    /// The tunnel's key, UDP address and options.
    pub tunnel: TunnelSettings,
    /// What the edge serves. From a file: origins, routes, TCP routes, certificates (read
    /// from their files), `[limits]` and the tunnel options; in control mode the file's
    /// `[limits]` and tunnel options only, until control's snapshots bring the rest.
    pub spec: EdgeSpec,
    /// The host whose certificate is served for unknown or absent SNI (`[tls] default`).
    pub tls_default: Option<HostPattern>,
    /// Control mode: origins, routes, TCP routes, certificates, limits (and the tunnel key,
    /// unless the operator holds it) come from `kokoa-control` instead of this file.
    pub control: Option<ControlSettings>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    edge: FileEdge,
    tunnel: TunnelFile,
    origins: Vec<OriginPeer>,
    routes: Vec<HttpRoute>,
    tcp_routes: Vec<TcpRoute>,
    tls: FileTls,
    limits: EdgeLimits,
    control: Option<FileControl>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileEdge {
    https: Option<SocketAddr>,
    http: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    https_port_in_redirect: Option<Port>,
    drain_timeout: Option<DrainSecs>,
    connect_timeout: Option<TimeoutSecs>,
    tls_handshake_timeout: Option<TimeoutSecs>,
    header_read_timeout: Option<TimeoutSecs>,
    max_header_bytes: Option<HeaderBytes>,
    upstream_keepalive: Option<Keepalive>,
    upstream_idle_timeout: Option<TimeoutSecs>,
    trusted_proxies: Vec<Network>,
    sni_host_check: SniHostCheck,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct FileTls {
    cert_dir: Option<PathBuf>,
    default: Option<HostPattern>,
    certificates: Vec<FileCertificate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCertificate {
    cert: PathBuf,
    key: PathBuf,
}

impl EdgeConfig {
    /// Reads and validates a config file, and reads the certificates it names. Relative paths
    /// (`private_key_file`, certificates, `cert_dir`) are taken relative to the config file's
    /// directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path.parent())
    }

    /// Parses and validates TOML text; `base_dir` anchors relative paths.
    pub fn from_toml(text: &str, base_dir: Option<&Path>) -> Result<Self, ConfigError> {
        let file: FileConfig = kokoa_model::from_toml(text)?;
        Ok(file.validate(base_dir)?)
    }

    /// The origin named `name`.
    pub fn origin(&self, name: &str) -> Option<&OriginPeer> {
        self.spec
            .origins
            .iter()
            .find(|origin| origin.name.as_str() == name)
    }

    /// The node's own listeners, by field name, for overlap checks.
    pub fn listeners(&self) -> [(&'static str, SocketAddr); 3] {
        [
            ("edge.https", self.https),
            ("edge.http", self.http),
            ("edge.admin", self.admin),
        ]
    }

    /// The address TCP routes without one listen on: the HTTPS listener's.
    pub fn tcp_ip(&self) -> IpAddr {
        self.https.ip()
    }

    /// The `[limits]` in force when control has sent none.
    pub fn limits(&self) -> EdgeLimits {
        self.spec.limits.clone().unwrap_or_default()
    }
}

fn anchored(base_dir: Option<&Path>, path: PathBuf) -> PathBuf {
    match base_dir {
        Some(dir) if path.is_relative() && !dir.as_os_str().is_empty() => dir.join(path),
        _ => path,
    }
}

impl FileConfig {
    fn validate(self, base_dir: Option<&Path>) -> Result<EdgeConfig, ModelError> {
        let edge = self.edge;
        let https = edge.https.unwrap_or(DEFAULT_HTTPS);
        let http = edge.http.unwrap_or(DEFAULT_HTTP);
        let admin = edge.admin.unwrap_or(DEFAULT_ADMIN);
        let listeners = [
            ("edge.https", https),
            ("edge.http", http),
            ("edge.admin", admin),
        ];
        for (i, (name, addr)) in listeners.iter().enumerate() {
            if let Some((other, _)) = listeners[..i]
                .iter()
                .find(|(_, a)| kokoa_model::net::listeners_overlap(*a, *addr))
            {
                return Err(ModelError::new(
                    *name,
                    format!("{addr} overlaps {other}; give each listener its own port"),
                ));
            }
        }
        let secs = |value: Option<TimeoutSecs>, default: u64| {
            value.map_or(Duration::from_secs(default), TimeoutSecs::as_secs)
        };

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
                        return Err(ModelError::new(
                            field,
                            "a config with [control] gets its origins, routes, tcp routes and certificates from control: remove this (or remove [control] to run from this file)",
                        ));
                    }
                }
                Some(
                    ControlSettings::from_file(control, base_dir)
                        .map_err(|e| ModelError::new(e.field, e.reason))?,
                )
            }
            None => None,
        };
        let tunnel = self.tunnel.settings(
            "kokoa-edge",
            DEFAULT_TUNNEL_LISTEN,
            base_dir,
            control.is_some(),
        )?;
        let certificates = load_certificates(&self.tls, base_dir)?;
        let spec = EdgeSpec {
            origins: self.origins,
            routes: self.routes,
            tcp_routes: self.tcp_routes,
            certificates,
            limits: Some(self.limits),
            tunnel: Some(tunnel.options),
        };
        let own_key = (!tunnel.key_from_control).then(|| tunnel.private_key.public_key());
        spec.validate(own_key, tunnel.options.overlay)?;
        if let Some((_, error)) = spec
            .listener_conflicts(&listeners, https.ip())
            .into_iter()
            .next()
        {
            return Err(error);
        }
        let tls_default = self.tls.default;
        if let Some(name) = &tls_default {
            if !spec.certificates.iter().any(|cert| cert.covers(name)) {
                return Err(ModelError::new(
                    "tls.default",
                    format!("no certificate covers `{name}`; add one or remove the setting"),
                ));
            }
        }

        Ok(EdgeConfig {
            https,
            http,
            admin,
            https_port_in_redirect: edge.https_port_in_redirect.map(Port::get),
            drain_timeout: edge.drain_timeout.map_or(
                Duration::from_secs(DEFAULT_DRAIN_TIMEOUT_SECS),
                DrainSecs::as_secs,
            ),
            tls_handshake_timeout: secs(
                edge.tls_handshake_timeout,
                DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS,
            ),
            header_read_timeout: secs(edge.header_read_timeout, DEFAULT_HEADER_READ_TIMEOUT_SECS),
            max_header_bytes: edge
                .max_header_bytes
                .map_or(DEFAULT_MAX_HEADER_BYTES as usize, HeaderBytes::as_usize),
            connect_timeout: secs(edge.connect_timeout, DEFAULT_CONNECT_TIMEOUT_SECS),
            upstream_keepalive: edge
                .upstream_keepalive
                .map_or(DEFAULT_UPSTREAM_KEEPALIVE as usize, Keepalive::as_usize),
            upstream_idle_timeout: secs(
                edge.upstream_idle_timeout,
                DEFAULT_UPSTREAM_IDLE_TIMEOUT_SECS,
            ),
            trusted_proxies: edge.trusted_proxies,
            sni_host_check: edge.sni_host_check,
            tunnel,
            spec,
            tls_default,
            control,
        })
    }
}

/// Reads every certificate `[tls]` names (explicit pairs, then `cert_dir`'s `NAME.crt` +
/// `NAME.key`), each through the model's one certificate parser.
fn load_certificates(
    tls: &FileTls,
    base_dir: Option<&Path>,
) -> Result<Vec<Certificate>, ModelError> {
    let mut pairs: Vec<(String, PathBuf, PathBuf)> = tls
        .certificates
        .iter()
        .enumerate()
        .map(|(i, files)| {
            (
                format!("tls.certificates[{i}]"),
                anchored(base_dir, files.cert.clone()),
                anchored(base_dir, files.key.clone()),
            )
        })
        .collect();
    if let Some(dir) = &tls.cert_dir {
        let dir = anchored(base_dir, dir.clone());
        pairs.extend(
            dir_pairs(&dir)?
                .into_iter()
                .map(|(cert, key)| ("tls.cert_dir".to_owned(), cert, key)),
        );
    }
    pairs
        .into_iter()
        .map(|(field, cert, key)| {
            let read = |path: &Path, which: &str| {
                std::fs::read_to_string(path).map_err(|e| {
                    ModelError::new(
                        format!("{field}.{which}"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })
            };
            let chain_pem = read(&cert, "cert")?;
            let key_pem = zeroize::Zeroizing::new(read(&key, "key")?);
            Certificate::from_pem(&chain_pem, &key_pem).map_err(|e| {
                let (which, path) = if e.field == "key_pem" {
                    ("key", &key)
                } else {
                    ("cert", &cert)
                };
                ModelError::new(
                    format!("{field}.{which}"),
                    format!("{}: {}", path.display(), e.message),
                )
            })
        })
        .collect()
}

/// `NAME.crt` + `NAME.key` pairs in `dir`, sorted by name. A `.crt` without its `.key` is an
/// error, so a half-copied certificate is noticed.
fn dir_pairs(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>, ModelError> {
    let listing = |e: std::io::Error| {
        ModelError::new(
            "tls.cert_dir",
            format!("cannot list {}: {e}", dir.display()),
        )
    };
    let mut pairs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(listing)? {
        let path = entry.map_err(listing)?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("crt") {
            continue;
        }
        let key = path.with_extension("key");
        if !key.is_file() {
            return Err(ModelError::new(
                "tls.cert_dir",
                format!(
                    "{} has no key next to it (expected {})",
                    path.display(),
                    key.display()
                ),
            ));
        }
        pairs.push((path, key));
    }
    pairs.sort();
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use kokoa_model::{ProxyProtocol, RatePolicy};
    use kokoa_tunnel::key::PrivateKey;

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

    fn write_cert(dir: &Path, name: &str, hosts: &[&str]) {
        let hosts: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
        let generated = rcgen::generate_simple_self_signed(hosts).unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), generated.cert.pem()).unwrap();
        std::fs::write(
            dir.join(format!("{name}.key")),
            generated.key_pair.serialize_pem(),
        )
        .unwrap();
    }

    #[test]
    fn example_file_parses() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let text = std::fs::read_to_string(examples.join("edge.toml")).unwrap();
        // The example's cert_dir is an absolute system path: point it at generated ones.
        let dir = tempfile::tempdir().unwrap();
        write_cert(dir.path(), "app", &["app.example.com", "www.example.com"]);
        write_cert(dir.path(), "wild", &["*.example.com"]);
        let text = text.replace("/etc/kokoa/certs", &dir.path().display().to_string());
        let config = EdgeConfig::from_toml(&text, Some(&examples)).expect("examples/edge.toml");
        assert_eq!(config.https.port(), 443);
        let spec = &config.spec;
        assert_eq!(spec.routes.len(), 2);
        assert_eq!(spec.routes[1].host.as_str(), "*.example.com");
        assert_eq!(spec.tcp_routes.len(), 1);
        assert_eq!(spec.origins[0].name.as_str(), "home");
        assert_eq!(spec.certificates.len(), 2);
        assert_eq!(
            config.tls_default.as_ref().unwrap().as_str(),
            "app.example.com"
        );
        let limits = config.limits();
        assert_eq!(
            limits.rate,
            Some(RatePolicy {
                per_second: 10.0,
                burst: 20
            })
        );
        assert_eq!(limits.connections_per_client.get(), 10);
        assert_eq!(spec.tcp_routes[0].proxy_protocol, ProxyProtocol::None);
    }

    #[test]
    fn defaults_apply() {
        let config = EdgeConfig::from_toml(&base(""), None).unwrap();
        assert_eq!(config.https, DEFAULT_HTTPS);
        assert_eq!(config.http, DEFAULT_HTTP);
        assert_eq!(config.admin, DEFAULT_ADMIN);
        assert_eq!(config.limits(), EdgeLimits::default());
        assert_eq!(config.drain_timeout, Duration::from_secs(10));
        assert_eq!(config.tunnel.options.mtu.get(), 1420);
        assert_eq!(config.max_header_bytes, 65536);
        assert!(config.trusted_proxies.is_empty());
        assert_eq!(config.sni_host_check, SniHostCheck::Off);
    }

    #[test]
    fn http_keys_parse_and_are_checked() {
        let text = format!(
            "[edge]\ntrusted_proxies = [\"10.0.0.0/8\", \"2001:db8::1\"]\nsni_host_check = \"certificate\"\n{}",
            base("[limits]\nsend_timeout = 5\nsend_min_rate = 0\nclient_body_timeout = 7\nclient_body_min_rate = 0\n")
        );
        let config = EdgeConfig::from_toml(&text, None).unwrap();
        let proxies: Vec<String> = config
            .trusted_proxies
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(proxies, ["10.0.0.0/8", "2001:db8::1/128"]);
        assert_eq!(config.sni_host_check, SniHostCheck::Certificate);
        let limits = config.limits();
        assert_eq!(limits.send_timeout.get(), 5);
        assert_eq!(limits.send_min_rate.get(), 0);
        assert_eq!(limits.client_body_timeout.get(), 7);
        assert_eq!(limits.client_body_min_rate.get(), 0);

        for (extra, expect) in [
            ("[limits]\nsend_timeout = 0\n", "limits.send_timeout:"),
            (
                "[limits]\nclient_body_timeout = 100000\n",
                "limits.client_body_timeout:",
            ),
            (
                "[limits]\nclient_body_min_rate = 10000000000\n",
                "limits.client_body_min_rate:",
            ),
            (
                "[limits]\nsend_min_rate = 10000000000\n",
                "limits.send_min_rate:",
            ),
        ] {
            let message = error(&base(extra));
            assert!(message.contains(expect), "{expect}: {message}");
        }
        for (edge, expect) in [
            ("trusted_proxies = [\"nope\"]", "edge.trusted_proxies[0]:"),
            ("sni_host_check = \"on\"", "edge.sni_host_check:"),
        ] {
            let message = error(&format!("[edge]\n{edge}\n{}", base("")));
            assert!(message.contains(expect), "{expect}: {message}");
        }
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
        let message = error(&text);
        assert!(
            message.starts_with("routes[2].origin: unknown origin \"x\""),
            "{message}"
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
                "[[routes]]\nhost = \"a_b.example.com\"\norigin = \"home\"\nport = 1\n",
                "routes[0].host:",
            ),
            (
                "[[routes]]\nhost = \"a.example.com\"\norigin = \"home\"\nport = 1\nalow = [\"10.0.0.0/8\"]\n",
                "routes[0].alow: unknown field",
            ),
            (
                "[[tcp_routes]]\nlisten = \"0.0.0.0:4001\"\norigin = \"nope\"\nport = 1\n",
                "tcp_routes[0].origin: unknown origin \"nope\"",
            ),
            (
                "[[tcp_routes]]\nlisten = \"0.0.0.0:443\"\norigin = \"home\"\nport = 1\n",
                "tcp_routes[0].listen: 0.0.0.0:443 overlaps edge.https",
            ),
            ("[tls]\ndefault = \"*x\"\n", "tls.default:"),
            (
                "[tls]\ndefault = \"a.example.com\"\n",
                "tls.default: no certificate covers",
            ),
            (
                "[edge]\nhttps = \"0.0.0.0:80\"\n",
                "edge.http: 0.0.0.0:80 overlaps edge.https",
            ),
            (
                "[edge]\nadmin = \"127.0.0.1:443\"\n",
                "edge.admin: 127.0.0.1:443 overlaps edge.https",
            ),
            ("[edge]\nbogus = 1\n", "edge.bogus: unknown field `bogus`"),
            ("[edge]\nmax_header_bytes = 100\n", "edge.max_header_bytes:"),
            ("[edge]\nconnect_timeout = 0\n", "edge.connect_timeout:"),
            ("[limits]\nrate = -1.0\n", "limits.rate:"),
            ("[limits]\nipv4_prefix = 33\n", "limits.ipv4_prefix:"),
            ("[tls]\ncert_dir = \"/nonexistent\"\n", "tls.cert_dir: cannot list"),
        ];
        for (extra, expect) in cases {
            let message = error(&base(extra));
            assert!(message.starts_with(expect), "{expect}: {message}");
        }
        let message = error(&format!(
            "[tunnel]\nprivate_key = \"{}\"\n[[origins]]\nname = \"o\"\npublic_key = \"abc\"\naddress = \"10.100.1.10\"\norigin_address = \"10.100.1.1\"\n",
            key()
        ));
        assert!(message.starts_with("origins[0].public_key:"), "{message}");
        let message = error(&format!(
            "[tunnel]\nprivate_key = \"{}\"\nmtu = 70000\n",
            key()
        ));
        assert!(message.starts_with("tunnel.mtu:"), "{message}");
        let message = error("[tunnel]\nprivate_key = \"short\"\n");
        assert!(message.starts_with("tunnel.private_key:"), "{message}");
        let message = error("");
        assert!(
            message.starts_with("tunnel.private_key: missing"),
            "{message}"
        );
    }

    #[test]
    fn certificates_are_read_through_the_model() {
        let dir = tempfile::tempdir().unwrap();
        write_cert(dir.path(), "a", &["a.example.com"]);
        write_cert(dir.path(), "b", &["b.example.com"]);
        let config = EdgeConfig::from_toml(
            &base("[tls]\ncert_dir = \"certs\"\ndefault = \"a.example.com\"\n[[tls.certificates]]\ncert = \"certs/b.crt\"\nkey = \"certs/b.key\"\n"),
            None,
        );
        assert!(
            config.is_err(),
            "relative to no base dir: certs/ does not exist here"
        );
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        for name in ["a.crt", "a.key", "b.crt", "b.key"] {
            std::fs::rename(dir.path().join(name), dir.path().join("certs").join(name)).unwrap();
        }
        let config = EdgeConfig::from_toml(
            &base("[tls]\ncert_dir = \"certs\"\ndefault = \"a.example.com\"\n[[tls.certificates]]\ncert = \"certs/b.crt\"\nkey = \"certs/b.key\"\n"),
            Some(dir.path()),
        )
        .unwrap();
        assert_eq!(config.spec.certificates.len(), 3);
        // A key that does not match its certificate names the key file.
        std::fs::copy(
            dir.path().join("certs/a.key"),
            dir.path().join("certs/b.key"),
        )
        .unwrap();
        let message = EdgeConfig::from_toml(
            &base("[[tls.certificates]]\ncert = \"certs/b.crt\"\nkey = \"certs/b.key\"\n"),
            Some(dir.path()),
        )
        .unwrap_err()
        .to_string();
        assert!(message.starts_with("tls.certificates[0].key:"), "{message}");
        assert!(message.contains("does not match"), "{message}");
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
        assert!(config.spec.origins.is_empty() && config.spec.routes.is_empty());
    }

    #[test]
    fn control_mode_excludes_file_routing() {
        let dir = control_dir();
        let config = EdgeConfig::from_toml(CONTROL, Some(dir.path())).unwrap();
        assert!(config.tunnel.key_from_control);
        let origin = format!(
            "[[origins]]\nname = \"home\"\npublic_key = \"{}\"\naddress = \"10.100.1.10\"\norigin_address = \"10.100.1.1\"\n",
            PrivateKey::generate().public_key()
        );
        for (extra, field) in [
            (origin.as_str(), "origins:"),
            (
                "[[routes]]\nhost = \"a.example.com\"\norigin = \"home\"\nport = 1\n",
                "routes:",
            ),
            (
                "[[tcp_routes]]\nlisten = 1\norigin = \"home\"\nport = 1\n",
                "tcp_routes:",
            ),
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
