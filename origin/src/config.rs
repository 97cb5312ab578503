//! The origin's config file (`origin.toml`): its own settings (`[origin]`), the tunnel's table
//! (`[tunnel]`, [`kokoa_tunnel::settings`]), `[control]`, and what it runs (`address`,
//! `[[edges]]`, `[[services]]`), which parses straight into the shared model
//! ([`OriginSpec`]): the same types and validators control's API and the gRPC snapshots go
//! through. A control snapshot becomes an `OriginSpec` too, and both are applied by the same
//! [`crate::apply`] step.
//!
//! Unknown keys are errors and every error names the field (`edges[0].public_key`). Host names
//! in endpoints and service addresses are kept as written: an edge's is resolved when the
//! config is applied, a service's when a stream arrives.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use kokoa_model::limits::TimeoutSecs;
use kokoa_model::{Bounded, EdgePeer, ModelError, OriginSpec, Service, ServiceChecks, TunnelIp};
pub use kokoa_node::config::{ConfigError, DrainSecs};
use kokoa_node::control::{ControlSettings, FileControl};
use kokoa_tunnel::settings::{TunnelFile, TunnelSettings};
use serde::Deserialize;

/// Admin listener (`/healthz`, `/metrics`) when `[origin] admin` is not set.
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9091);
/// UDP address of the tunnel when `[tunnel] listen` is not set: any interface, ephemeral port,
/// so that an origin behind NAT needs no open port.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
/// How long SIGTERM waits for open streams to finish (seconds).
pub const DEFAULT_DRAIN_TIMEOUT_SECS: u64 = 10;
/// How long connecting to a local service may take before the tunnel stream is dropped
/// (seconds).
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 5;
/// Runtime threads when `[origin] workers` is not set. The origin's data plane is the tunnel
/// driver, one task; on one thread it spends ~10% less CPU per request than on two, where its
/// streams and the driver wake each other across threads (measured in `bench/README.md`), and
/// it leaves the other cores to the apps it publishes.
pub const DEFAULT_WORKERS: u64 = 1;

/// Runtime threads.
pub type Workers = Bounded<1, 1024>;

/// The validated origin configuration.
#[derive(Clone, Debug)]
pub struct OriginConfig {
    /// Address of the admin listener (`/healthz`, `/metrics`).
    pub admin: SocketAddr,
    /// How long SIGTERM waits for open streams before closing them.
    pub drain_timeout: Duration,
    /// How long connecting to a local service may take.
    pub connect_timeout: Duration,
    /// How the services are probed (`[checks]`; the same in file and control mode).
    pub checks: ServiceChecks,
    /// Runtime threads: 1 runs everything on one thread (the default), more use tokio's
    /// work-stealing runtime with that many workers.
    pub workers: usize,
    /// The tunnel's key, UDP address and options.
    pub tunnel: TunnelSettings,
    /// What the origin runs: its address, edges and services. `None` in control mode until
    /// control's first snapshot.
    pub spec: Option<OriginSpec>,
    /// Control mode: the address, edges and services (and the tunnel key, unless the operator
    /// holds it) come from `kokoa-control`.
    pub control: Option<ControlSettings>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    origin: FileOrigin,
    #[serde(default)]
    tunnel: TunnelFile,
    #[serde(default)]
    edges: Vec<EdgePeer>,
    #[serde(default)]
    services: Vec<Service>,
    #[serde(default)]
    checks: ServiceChecks,
    control: Option<FileControl>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOrigin {
    admin: Option<SocketAddr>,
    address: Option<TunnelIp>,
    drain_timeout: Option<DrainSecs>,
    connect_timeout: Option<TimeoutSecs>,
    workers: Option<Workers>,
}

impl OriginConfig {
    /// Reads and validates a config file. A relative `private_key_file` is taken relative to
    /// the config file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_toml(&kokoa_node::config::read_file(path)?, path.parent())
    }

    /// Parses and validates TOML text; `base_dir` anchors a relative `private_key_file`.
    pub fn from_toml(text: &str, base_dir: Option<&Path>) -> Result<Self, ConfigError> {
        let file: FileConfig = kokoa_model::from_toml(text)?;
        Ok(file.validate(base_dir)?)
    }
}

impl FileConfig {
    fn validate(self, base_dir: Option<&Path>) -> Result<OriginConfig, ModelError> {
        let origin = self.origin;
        let control = match self.control {
            Some(control) => {
                for (field, present) in [
                    ("origin.address", origin.address.is_some()),
                    ("edges", !self.edges.is_empty()),
                    ("services", !self.services.is_empty()),
                ] {
                    if present {
                        return Err(ModelError::new(
                            field,
                            "a config with [control] gets its address, edges and services from control: remove this (or remove [control] to run from this file)",
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
        let tunnel =
            self.tunnel
                .settings("kokoa-origin", DEFAULT_LISTEN, base_dir, control.is_some())?;
        let spec = match (origin.address, &control) {
            (_, Some(_)) => None,
            (None, None) => {
                return Err(ModelError::new(
                    "origin.address",
                    "missing: the origin's own address inside the tunnel, such as 10.100.1.1",
                ))
            }
            (Some(address), None) => {
                // No [[edges]] yet is valid: the origin dials nobody until they are added (a
                // SIGHUP applies them), like an edge without routes. The packaged config starts
                // this way, and `check-config` says "0 edges".
                let spec = OriginSpec {
                    address,
                    edges: self.edges,
                    services: self.services,
                    tunnel: Some(tunnel.options),
                };
                let own_key = tunnel.private_key.public_key();
                spec.validate(Some(own_key), tunnel.options.overlay)
                    .map_err(|e| match e.field.as_str() {
                        "address" => ModelError::new("origin.address", e.message),
                        _ => e,
                    })?;
                Some(spec)
            }
        };
        Ok(OriginConfig {
            admin: origin.admin.unwrap_or(DEFAULT_ADMIN),
            drain_timeout: origin.drain_timeout.map_or(
                Duration::from_secs(DEFAULT_DRAIN_TIMEOUT_SECS),
                DrainSecs::as_secs,
            ),
            connect_timeout: origin.connect_timeout.map_or(
                Duration::from_secs(DEFAULT_CONNECT_TIMEOUT_SECS),
                TimeoutSecs::as_secs,
            ),
            checks: self.checks,
            workers: origin
                .workers
                .map_or(DEFAULT_WORKERS as usize, Workers::as_usize),
            tunnel,
            spec,
            control,
        })
    }
}

#[cfg(test)]
mod tests {
    use kokoa_model::{Endpoint, Keepalive};
    use kokoa_tunnel::key::PrivateKey;

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
            Err(error) => error.field().expect("an error about a field").to_owned(),
            Ok(_) => panic!("expected an error"),
        }
    }

    #[test]
    fn example_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/origin.toml");
        let config = OriginConfig::load(&path).expect("example is valid");
        let spec = config.spec.expect("file mode");
        assert_eq!(spec.address.ip(), Ipv4Addr::new(10, 100, 1, 1));
        assert_eq!(spec.edges.len(), 2);
        assert_eq!(
            spec.edges[0].endpoint,
            Some(Endpoint::Addr("198.51.100.7:51820".parse().unwrap()))
        );
        assert_eq!(
            spec.edges[1]
                .endpoint
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("edge2.example.com:51820")
        );
        assert_eq!(spec.services.len(), 2);
        assert_eq!(spec.services[0].port.get(), 8001);
        assert_eq!(
            spec.services[0].health_path.as_ref().map(|p| p.as_str()),
            Some("/healthz")
        );
        assert_eq!(config.checks, ServiceChecks::default());
        assert_eq!(config.drain_timeout, Duration::from_secs(10));
    }

    #[test]
    fn an_origin_without_edges_yet_is_valid() {
        let text = format!(
            "[origin]\naddress = \"10.100.1.1\"\n[tunnel]\nprivate_key = \"{}\"\n",
            key()
        );
        let config = OriginConfig::from_toml(&text, None).expect("valid without edges");
        assert_eq!(config.spec.expect("file mode").edges.len(), 0);
    }

    #[test]
    fn defaults_apply() {
        let config = OriginConfig::from_toml(&minimal(""), None).unwrap();
        assert_eq!(config.admin, DEFAULT_ADMIN);
        assert_eq!(config.tunnel.listen, DEFAULT_LISTEN);
        assert_eq!(config.tunnel.options.mtu.get(), kokoa_tunnel::DEFAULT_MTU);
        let spec = config.spec.unwrap();
        assert_eq!(spec.edges[0].keepalive.seconds(), Some(25));
        assert_eq!(spec.edges[0].endpoint, None);
        assert_eq!(
            config.drain_timeout,
            Duration::from_secs(DEFAULT_DRAIN_TIMEOUT_SECS)
        );
        assert!(spec.services.is_empty());
        assert_eq!(config.workers, 1);
    }

    #[test]
    fn checks_come_from_the_model_in_both_modes() {
        let config = OriginConfig::from_toml(&minimal(""), None).unwrap();
        assert_eq!(config.checks, ServiceChecks::default());
        let config =
            OriginConfig::from_toml(&minimal("[checks]\ninterval = 1\ntimeout_ms = 250"), None)
                .unwrap();
        assert_eq!(config.checks.interval(), Duration::from_secs(1));
        assert_eq!(config.checks.timeout(), Duration::from_millis(250));
        for (extra, field) in [
            ("[checks]\ninterval = 0", "checks.interval"),
            ("[checks]\nintervl = 2", "checks.intervl"),
        ] {
            assert_eq!(
                invalid_field(OriginConfig::from_toml(&minimal(extra), None)),
                field,
                "{extra}"
            );
        }
        let error =
            OriginConfig::from_toml(&minimal("[checks]\ninterval = 1\ntimeout_ms = 1000"), None)
                .map(|_| ())
                .unwrap_err()
                .to_string();
        assert!(error.contains("not shorter than the interval"), "{error}");
        let dir = control_dir();
        let text = "[origin]\n[control]\nurl = \"https://control.test:7443\"\nca_file = \"control-ca.pem\"\ntoken_file = \"t\"\nstate_dir = \"s\"\n[checks]\nunhealthy_threshold = 2\n";
        let config = OriginConfig::from_toml(text, Some(dir.path())).unwrap();
        assert_eq!(config.checks.unhealthy_threshold.get(), 2);
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
        assert_eq!(config.spec.unwrap().edges[0].keepalive, Keepalive::OFF);
    }

    #[test]
    fn field_errors() {
        let service = |extra: &str| {
            minimal(&format!(
                "[[services]]\nname = \"a\"\nport = 8001\nlocal = \"127.0.0.1:8001\"\n{extra}"
            ))
        };
        for (text, field) in [
            (
                minimal("").replace("[origin]", "[origin]\nadmn = \"127.0.0.1:1\""),
                "origin.admn",
            ),
            (
                format!(
                    "{}\n[[edges]]\nname = \"b\"\npublic_key = \"nope\"\naddress = \"10.100.1.11\"\n",
                    minimal("")
                ),
                "edges[1].public_key",
            ),
            (
                service("[[services]]\nname = \"b\"\nport = 8001\nlocal = \"127.0.0.1:8002\""),
                "services[1].port",
            ),
            (
                minimal("[[services]]\nname = \"a\"\nport = 8001\nlocal = \"8001\""),
                "services[0].local",
            ),
            (
                minimal("[[services]]\nname = \"a\"\nport = 8001\nlocal_address = \"127.0.0.1:1\""),
                "services[0].local_address",
            ),
            (minimal("").replace("10.100.1.10", "10.100.1.1"), "edges[0].address"),
            (minimal("").replace("10.100.1.10", "10.100.2.10"), "edges[0].address"),
            (minimal("").replace("\"10.100.1.1\"", "\"10.99.1.1\""), "origin.address"),
            (
                minimal("").replace(
                    "address = \"10.100.1.10\"",
                    "address = \"10.100.1.10\"\nendpoint = \"no port\"",
                ),
                "edges[0].endpoint",
            ),
            (minimal("").replace("[tunnel]\nprivate_key", "[tunnel]\nprivate_key_file = \"x.key\"\nprivate_key"), "tunnel.private_key_file"),
        ] {
            assert_eq!(invalid_field(OriginConfig::from_toml(&text, None)), field, "{text}");
        }
    }

    #[test]
    fn a_local_host_name_is_kept_unresolved() {
        let config = OriginConfig::from_toml(
            &minimal(
                "[[services]]\nname = \"db\"\nport = 5432\nlocal = \"db.internal.invalid:5432\"",
            ),
            None,
        )
        .unwrap();
        let spec = config.spec.unwrap();
        assert_eq!(
            spec.services[0].local.to_string(),
            "db.internal.invalid:5432"
        );
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
        assert!(config.spec.is_none());

        let base = "[origin]\n[control]\nurl = \"https://control.test:7443\"\nca_file = \"control-ca.pem\"\ntoken_file = \"t\"\nstate_dir = \"s\"\n";
        assert!(OriginConfig::from_toml(base, Some(dir.path())).is_ok());
        for (extra, field) in [
            (
                format!(
                    "[[edges]]\nname = \"e\"\npublic_key = \"{}\"\naddress = \"10.100.1.10\"\n",
                    pubkey()
                ),
                "edges",
            ),
            (
                "[[services]]\nname = \"web\"\nport = 1\nlocal = \"127.0.0.1:1\"\n".to_owned(),
                "services",
            ),
        ] {
            let result = OriginConfig::from_toml(&format!("{base}{extra}"), Some(dir.path()));
            let message = result.as_ref().map(|_| ()).unwrap_err().to_string();
            assert_eq!(invalid_field(result), field);
            assert!(message.contains("from control"), "{message}");
        }
        let message = invalid_field(OriginConfig::from_toml(
            &base.replace("[origin]\n", "[origin]\naddress = \"10.100.1.1\"\n"),
            Some(dir.path()),
        ));
        assert_eq!(message, "origin.address");
    }
}
