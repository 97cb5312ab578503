//! `kokoa-control serve`'s `--provisioner` and `--replace-*` flags
//! (`#[command(flatten)] provision: ProvisionArgs`) and how they become one [`Provisioner`]
//! plus the [`ReplaceSettings`]. Every flag is checked here, before control binds a port; an
//! error names the flag.
//!
//! The cloud API token comes from `--provision-token-file` or, without it, [`TOKEN_ENV`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use super::cloud::{CloudSettings, Release, DEFAULT_TIMEOUT};
use super::local::{self, LocalProvisioner, LocalSettings};
use super::replace::{
    ReplaceSettings, DEFAULT_AFTER, DEFAULT_COOLDOWN, DEFAULT_DRAIN_GRACE, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_TIMEOUT as DEFAULT_REPLACE_TIMEOUT,
};
use super::{digitalocean, hetzner, vultr, ProvisionError, Provisioner};

/// A configured provisioner and the replacement settings it runs with.
pub type Configured = (Arc<dyn Provisioner>, ReplaceSettings);

/// Environment variable holding the cloud provider's API token, instead of a file.
pub const TOKEN_ENV: &str = "KOKOA_PROVISION_TOKEN";
/// The directory of local edges inside the data directory, unless given.
pub const LOCAL_DIR: &str = "provision/local";

/// The provisioner and replacement flags. Without `--provisioner` control makes no machines,
/// and `edge replace` / `edge provision` answer that none is configured.
#[derive(Clone, Debug, clap::Args)]
pub struct ProvisionArgs {
    /// Edge provisioner: local (kokoa-edge processes on this machine, each on its own
    /// loopback address), digitalocean, vultr or hetzner.
    #[arg(long = "provisioner", value_name = "PROVIDER")]
    pub provisioner: Option<String>,
    /// Cloud: file holding the API token (else KOKOA_PROVISION_TOKEN).
    #[arg(long = "provision-token-file", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Cloud: the API base URL, when not the provider's own (a proxy, a test fake).
    #[arg(long = "provision-api-url", value_name = "URL")]
    pub api_url: Option<String>,
    /// Cloud: region / location of new edges (digitalocean fra1, vultr fra, hetzner nbg1).
    #[arg(long = "provision-region", value_name = "REGION")]
    pub region: Option<String>,
    /// Cloud: size / plan / server type (digitalocean s-1vcpu-1gb, vultr vc2-1c-1gb,
    /// hetzner cx22).
    #[arg(long = "provision-size", value_name = "SIZE")]
    pub size: Option<String>,
    /// Cloud: OS image (digitalocean ubuntu-24-04-x64, vultr os_id 2284, hetzner
    /// ubuntu-24.04).
    #[arg(long = "provision-image", value_name = "IMAGE")]
    pub image: Option<String>,
    /// Cloud: SSH key (provider id or fingerprint) put on new edges (repeatable).
    #[arg(long = "provision-ssh-key", value_name = "KEY")]
    pub ssh_keys: Vec<String>,
    /// Cloud: https:// URL of the kokoa-edge binary new VPSes download (with
    /// --provision-release-sha256); without it the image must already have kokoa-edge.
    #[arg(
        long = "provision-release-url",
        value_name = "URL",
        requires = "release_sha256"
    )]
    pub release_url: Option<String>,
    /// Cloud: SHA-256 (hex) of the --provision-release-url binary, checked on the VPS.
    #[arg(
        long = "provision-release-sha256",
        value_name = "HEX",
        requires = "release_url"
    )]
    pub release_sha256: Option<String>,
    /// Cloud: seconds allowed for one provider API request.
    #[arg(long = "provision-timeout", value_name = "SECONDS", default_value_t = DEFAULT_TIMEOUT.as_secs())]
    pub timeout_seconds: u64,
    /// Local: directory of the local edges (default DATA_DIR/provision/local).
    #[arg(long = "provision-local-dir", value_name = "DIR")]
    pub local_dir: Option<PathBuf>,
    /// Local: the addresses local edges get, one each (loopback: no root needed).
    #[arg(long = "provision-local-range", value_name = "CIDR", default_value = local::DEFAULT_RANGE)]
    pub local_range: String,
    /// Local: plain HTTP port of local edges (HTTPS is on --health-public-port).
    #[arg(long = "provision-local-http-port", value_name = "PORT", default_value_t = local::DEFAULT_HTTP_PORT)]
    pub local_http_port: u16,
    /// Local: admin port of local edges (control probes /healthz there).
    #[arg(long = "provision-local-admin-port", value_name = "PORT", default_value_t = local::DEFAULT_ADMIN_PORT)]
    pub local_admin_port: u16,
    /// Local: WireGuard UDP port of local edges.
    #[arg(long = "provision-local-tunnel-port", value_name = "PORT", default_value_t = local::DEFAULT_TUNNEL_PORT)]
    pub local_tunnel_port: u16,
    /// Local: the kokoa-edge program (default: next to this program, else in PATH).
    #[arg(long = "edge-bin", env = "KOKOA_EDGE_BIN", value_name = "PATH")]
    pub edge_bin: Option<PathBuf>,

    /// Replace an edge control provisioned once it has been offline for --replace-after.
    #[arg(long = "auto-replace")]
    pub auto_replace: bool,
    /// Seconds an edge is offline before --auto-replace replaces it.
    #[arg(long = "replace-after", value_name = "SECONDS", default_value_t = DEFAULT_AFTER.as_secs())]
    pub replace_after_seconds: u64,
    /// Replacements running at once.
    #[arg(long = "replace-max-in-flight", value_name = "N", default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    pub replace_max_in_flight: usize,
    /// Seconds between two automatic replacements.
    #[arg(long = "replace-cooldown", value_name = "SECONDS", default_value_t = DEFAULT_COOLDOWN.as_secs())]
    pub replace_cooldown_seconds: u64,
    /// Seconds a new edge has to serve before its replacement fails (and it is destroyed).
    #[arg(long = "replace-timeout", value_name = "SECONDS", default_value_t = DEFAULT_REPLACE_TIMEOUT.as_secs())]
    pub replace_timeout_seconds: u64,
    /// Seconds a replaced edge that still served keeps running after it is drained.
    #[arg(long = "replace-drain-grace", value_name = "SECONDS", default_value_t = DEFAULT_DRAIN_GRACE.as_secs())]
    pub replace_drain_grace_seconds: u64,
}

impl Default for ProvisionArgs {
    /// No provisioner; every other flag at its default.
    fn default() -> Self {
        ProvisionArgs {
            provisioner: None,
            token_file: None,
            api_url: None,
            region: None,
            size: None,
            image: None,
            ssh_keys: Vec::new(),
            release_url: None,
            release_sha256: None,
            timeout_seconds: DEFAULT_TIMEOUT.as_secs(),
            local_dir: None,
            local_range: local::DEFAULT_RANGE.into(),
            local_http_port: local::DEFAULT_HTTP_PORT,
            local_admin_port: local::DEFAULT_ADMIN_PORT,
            local_tunnel_port: local::DEFAULT_TUNNEL_PORT,
            edge_bin: None,
            auto_replace: false,
            replace_after_seconds: DEFAULT_AFTER.as_secs(),
            replace_max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            replace_cooldown_seconds: DEFAULT_COOLDOWN.as_secs(),
            replace_timeout_seconds: DEFAULT_REPLACE_TIMEOUT.as_secs(),
            replace_drain_grace_seconds: DEFAULT_DRAIN_GRACE.as_secs(),
        }
    }
}

fn bad(flag: &str, why: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::Config(format!("{flag}: {why}"))
}

fn token(file: Option<&Path>, provider: &str) -> Result<Zeroizing<String>, ProvisionError> {
    let flag = "--provision-token-file";
    let value = match file {
        Some(path) => Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| bad(flag, format!("{}: {e}", path.display())))?
                .trim()
                .to_owned(),
        ),
        None => Zeroizing::new(
            std::env::var(TOKEN_ENV)
                .map_err(|_| {
                    bad(
                        flag,
                        format!("required with --provisioner {provider} (or set {TOKEN_ENV})"),
                    )
                })?
                .trim()
                .to_owned(),
        ),
    };
    if value.is_empty() {
        return Err(bad(flag, "the token is empty"));
    }
    Ok(value)
}

impl ProvisionArgs {
    /// The replacement settings (checked).
    pub fn replace_settings(&self) -> Result<ReplaceSettings, ProvisionError> {
        if self.replace_max_in_flight == 0 {
            return Err(bad("--replace-max-in-flight", "must be at least 1"));
        }
        if self.replace_timeout_seconds < 10 {
            return Err(bad("--replace-timeout", "must be at least 10 seconds"));
        }
        if self.auto_replace && self.provisioner.is_none() {
            return Err(bad(
                "--auto-replace",
                "needs --provisioner (which makes the new edges)",
            ));
        }
        Ok(ReplaceSettings {
            auto: self.auto_replace,
            after: Duration::from_secs(self.replace_after_seconds),
            max_in_flight: self.replace_max_in_flight,
            cooldown: Duration::from_secs(self.replace_cooldown_seconds),
            timeout: Duration::from_secs(self.replace_timeout_seconds),
            drain_grace: Duration::from_secs(self.replace_drain_grace_seconds),
        })
    }

    /// The provisioner (none without `--provisioner`) and replacement settings. `data_dir`
    /// holds local edges by default; `https_port` is the port control probes edges on (local
    /// edges listen there). Reads the token file; starts nothing.
    pub fn setup(
        &self,
        data_dir: &Path,
        https_port: u16,
    ) -> Result<Option<Configured>, ProvisionError> {
        let settings = self.replace_settings()?;
        let Some(kind) = self.provisioner.as_deref() else {
            return Ok(None);
        };
        let provisioner: Arc<dyn Provisioner> = match kind {
            "local" => {
                let range: ipnet::Ipv4Net = self.local_range.parse().map_err(|e| {
                    bad(
                        "--provision-local-range",
                        format!("{:?}: {e}", self.local_range),
                    )
                })?;
                if range.hosts().next().is_none() {
                    return Err(bad("--provision-local-range", "has no host addresses"));
                }
                let ports = [
                    ("--health-public-port", https_port),
                    ("--provision-local-http-port", self.local_http_port),
                    ("--provision-local-admin-port", self.local_admin_port),
                ];
                for (i, (flag, port)) in ports.iter().enumerate() {
                    if *port == 0 {
                        return Err(bad(flag, "a local edge needs a fixed port"));
                    }
                    if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                        return Err(bad(flag, format!("port {port} is also {other}")));
                    }
                }
                if self.local_tunnel_port == 0 {
                    return Err(bad(
                        "--provision-local-tunnel-port",
                        "a local edge needs a fixed port",
                    ));
                }
                let program =
                    crate::dev::nodes::find_binary("kokoa-edge", self.edge_bin.as_deref())
                        .map_err(|e| bad("--edge-bin", format!("{e:#}")))?;
                Arc::new(LocalProvisioner::new(LocalSettings {
                    dir: self
                        .local_dir
                        .clone()
                        .unwrap_or_else(|| data_dir.join(LOCAL_DIR)),
                    program,
                    range,
                    https_port,
                    http_port: self.local_http_port,
                    admin_port: self.local_admin_port,
                    tunnel_port: self.local_tunnel_port,
                }))
            }
            "digitalocean" | "vultr" | "hetzner" => {
                let (url, region, size, image) = match kind {
                    "digitalocean" => (
                        digitalocean::API_URL,
                        digitalocean::DEFAULT_REGION,
                        digitalocean::DEFAULT_SIZE,
                        digitalocean::DEFAULT_IMAGE,
                    ),
                    "vultr" => (
                        vultr::API_URL,
                        vultr::DEFAULT_REGION,
                        vultr::DEFAULT_PLAN,
                        vultr::DEFAULT_OS,
                    ),
                    _ => (
                        hetzner::API_URL,
                        hetzner::DEFAULT_LOCATION,
                        hetzner::DEFAULT_SERVER_TYPE,
                        hetzner::DEFAULT_IMAGE,
                    ),
                };
                let release = match (&self.release_url, &self.release_sha256) {
                    (Some(url), Some(sum)) => {
                        if !url.starts_with("https://") {
                            return Err(bad("--provision-release-url", "must be an https:// URL"));
                        }
                        if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
                            return Err(bad(
                                "--provision-release-sha256",
                                "must be 64 hex digits (sha256sum's output)",
                            ));
                        }
                        Some(Release {
                            url: url.clone(),
                            sha256: sum.to_ascii_lowercase(),
                        })
                    }
                    (None, None) => None,
                    _ => {
                        return Err(bad(
                            "--provision-release-url",
                            "give it together with --provision-release-sha256",
                        ))
                    }
                };
                if self.timeout_seconds == 0 {
                    return Err(bad("--provision-timeout", "must be at least 1 second"));
                }
                let settings = CloudSettings {
                    api_url: self.api_url.clone().unwrap_or_else(|| url.to_owned()),
                    token: token(self.token_file.as_deref(), kind)?,
                    region: self.region.clone().unwrap_or_else(|| region.to_owned()),
                    size: self.size.clone().unwrap_or_else(|| size.to_owned()),
                    image: self.image.clone().unwrap_or_else(|| image.to_owned()),
                    release,
                    ssh_keys: self.ssh_keys.clone(),
                    timeout: Duration::from_secs(self.timeout_seconds),
                };
                match kind {
                    "digitalocean" => Arc::new(digitalocean::DigitalOcean::new(settings)?),
                    "vultr" => Arc::new(vultr::Vultr::new(settings)?),
                    _ => Arc::new(hetzner::Hetzner::new(settings)?),
                }
            }
            other => {
                return Err(bad(
                    "--provisioner",
                    format!("{other:?} is not one of local, digitalocean, vultr, hetzner"),
                ))
            }
        };
        Ok(Some((provisioner, settings)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ProvisionArgs {
        ProvisionArgs::default()
    }

    #[test]
    fn flags_are_checked_and_name_themselves() {
        let dir = tempfile::tempdir().expect("dir");
        assert!(args().setup(dir.path(), 443).expect("none").is_none());
        let error = |a: ProvisionArgs| a.setup(dir.path(), 443).expect_err("refused").to_string();
        let e = error(ProvisionArgs {
            provisioner: Some("aws".into()),
            ..args()
        });
        assert!(e.contains("--provisioner"), "{e}");
        let e = error(ProvisionArgs {
            auto_replace: true,
            ..args()
        });
        assert!(e.contains("--auto-replace"), "{e}");
        let e = error(ProvisionArgs {
            provisioner: Some("local".into()),
            local_http_port: 443,
            ..args()
        });
        assert!(e.contains("--provision-local-http-port"), "{e}");
        let e = error(ProvisionArgs {
            provisioner: Some("hetzner".into()),
            token_file: Some(dir.path().join("missing")),
            ..args()
        });
        assert!(e.contains("--provision-token-file"), "{e}");
        let token = dir.path().join("token");
        std::fs::write(&token, "secret\n").expect("write");
        let e = error(ProvisionArgs {
            provisioner: Some("vultr".into()),
            token_file: Some(token.clone()),
            release_url: Some("http://example.com/kokoa-edge".into()),
            release_sha256: Some("00".repeat(32)),
            ..args()
        });
        assert!(e.contains("--provision-release-url"), "{e}");
        let (provisioner, _) = ProvisionArgs {
            provisioner: Some("digitalocean".into()),
            token_file: Some(token),
            ..args()
        }
        .setup(dir.path(), 443)
        .expect("ok")
        .expect("some");
        assert_eq!(provisioner.kind(), "digitalocean");
        assert_eq!(
            provisioner.defaults(),
            (
                Some("fra1".into()),
                Some("s-1vcpu-1gb".into()),
                Some("ubuntu-24-04-x64".into())
            )
        );
    }
}
