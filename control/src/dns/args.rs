//! `kokoa-control serve`'s `--dns-*` flags (`#[command(flatten)] dns: DnsArgs`) and how they
//! become one [`DnsProvider`] (shared by ACME DNS-01 and DNS steering) plus the steering
//! settings. Every flag is checked here, before control binds a port; an error names the flag.
//!
//! Secrets come from a file flag or, without it, an environment variable:
//! [`TSIG_SECRET_ENV`], [`POWERDNS_API_KEY_ENV`], [`CLOUDFLARE_TOKEN_ENV`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use super::cloudflare::{self, CloudflareConfig, CloudflareProvider};
use super::manager::{DnsManager, SteeringOptions, DEFAULT_INTERVAL, DEFAULT_TTL};
use super::powerdns::{self, PowerDnsConfig, PowerDnsProvider};
use super::rfc2136::{self, Rfc2136Config, Rfc2136Provider, TsigAlgorithm};
use super::DnsProvider;

/// Environment variable holding the RFC 2136 TSIG secret (base64), instead of a file.
pub const TSIG_SECRET_ENV: &str = "KOKOA_DNS_TSIG_SECRET";
/// Environment variable holding the PowerDNS API key, instead of a file.
pub const POWERDNS_API_KEY_ENV: &str = "KOKOA_DNS_POWERDNS_API_KEY";
/// Environment variable holding the Cloudflare API token, instead of a file.
pub const CLOUDFLARE_TOKEN_ENV: &str = "KOKOA_DNS_CLOUDFLARE_API_TOKEN";
/// Default time allowed for one DNS exchange or API request.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = rfc2136::DEFAULT_TIMEOUT.as_secs();

/// The DNS provider and steering flags. Without `--dns-provider` (or `--dns-rfc2136-server`)
/// control changes no DNS.
#[derive(Clone, Debug, clap::Args)]
pub struct DnsArgs {
    /// DNS provider for DNS-01 challenges and DNS steering: rfc2136 (BIND, Knot, ...),
    /// powerdns (its HTTP API) or cloudflare. Implied by --dns-rfc2136-server.
    #[arg(long = "dns-provider", value_name = "PROVIDER")]
    pub provider: Option<String>,
    /// The zone control changes (e.g. example.com); route names outside it are reported, not
    /// sent.
    #[arg(long = "dns-zone", alias = "dns-rfc2136-zone", value_name = "ZONE")]
    pub zone: Option<String>,
    /// Seconds allowed for one DNS update, zone transfer or API request.
    #[arg(id = "dns_timeout", long = "dns-timeout", value_name = "SECONDS", default_value_t = DEFAULT_TIMEOUT_SECONDS)]
    pub timeout_seconds: u64,
    /// TTL of the A/AAAA records DNS steering publishes, seconds.
    #[arg(long = "dns-ttl", value_name = "SECONDS", default_value_t = DEFAULT_TTL)]
    pub ttl: u32,
    /// Seconds between two DNS steering passes when nothing changes (a record edited by hand
    /// converges back within this).
    #[arg(
        long = "dns-reconcile-interval",
        value_name = "SECONDS",
        default_value_t = DEFAULT_INTERVAL.as_secs()
    )]
    pub reconcile_interval_seconds: u64,

    /// rfc2136: the zone's primary server (ip:port) taking TSIG-signed updates and transfers.
    #[arg(long = "dns-rfc2136-server", value_name = "IP:PORT")]
    pub rfc2136_server: Option<SocketAddr>,
    /// rfc2136: the TSIG key's name.
    #[arg(long = "dns-tsig-key-name", value_name = "NAME")]
    pub tsig_key_name: Option<String>,
    /// rfc2136: the TSIG algorithm: hmac-sha256, hmac-sha384 or hmac-sha512.
    #[arg(
        long = "dns-tsig-algorithm",
        value_name = "ALG",
        default_value = "hmac-sha256"
    )]
    pub tsig_algorithm: String,
    /// rfc2136: file holding the TSIG secret (base64); else KOKOA_DNS_TSIG_SECRET.
    #[arg(long = "dns-tsig-secret-file", value_name = "PATH")]
    pub tsig_secret_file: Option<PathBuf>,

    /// powerdns: the API's base URL (its webserver), e.g. http://127.0.0.1:8081.
    #[arg(long = "dns-powerdns-url", value_name = "URL")]
    pub powerdns_url: Option<String>,
    /// powerdns: the server id in API paths.
    #[arg(long = "dns-powerdns-server-id", value_name = "ID", default_value = powerdns::DEFAULT_SERVER_ID)]
    pub powerdns_server_id: String,
    /// powerdns: file holding the API key; else KOKOA_DNS_POWERDNS_API_KEY.
    #[arg(long = "dns-powerdns-api-key-file", value_name = "PATH")]
    pub powerdns_api_key_file: Option<PathBuf>,

    /// cloudflare: file holding an API token with the zone's DNS Edit permission; else
    /// KOKOA_DNS_CLOUDFLARE_API_TOKEN.
    #[arg(long = "dns-cloudflare-token-file", value_name = "PATH")]
    pub cloudflare_token_file: Option<PathBuf>,
    /// cloudflare: the zone id; without it the zone is looked up by name (needs Zone Read).
    #[arg(long = "dns-cloudflare-zone-id", value_name = "ID")]
    pub cloudflare_zone_id: Option<String>,
    /// cloudflare: the zone's minimum TTL (60; 30 on Enterprise plans); lower TTLs are raised.
    #[arg(long = "dns-cloudflare-min-ttl", value_name = "SECONDS", default_value_t = cloudflare::DEFAULT_MIN_TTL)]
    pub cloudflare_min_ttl: u32,
    /// cloudflare: the API's base URL (change only for a proxy).
    #[arg(long = "dns-cloudflare-api-url", value_name = "URL", default_value = cloudflare::DEFAULT_API_URL)]
    pub cloudflare_api_url: String,
}

impl Default for DnsArgs {
    /// What the flags say when none is given: no provider.
    fn default() -> Self {
        DnsArgs {
            provider: None,
            zone: None,
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            ttl: DEFAULT_TTL,
            reconcile_interval_seconds: DEFAULT_INTERVAL.as_secs(),
            rfc2136_server: None,
            tsig_key_name: None,
            tsig_algorithm: "hmac-sha256".into(),
            tsig_secret_file: None,
            powerdns_url: None,
            powerdns_server_id: powerdns::DEFAULT_SERVER_ID.into(),
            powerdns_api_key_file: None,
            cloudflare_token_file: None,
            cloudflare_zone_id: None,
            cloudflare_min_ttl: cloudflare::DEFAULT_MIN_TTL,
            cloudflare_api_url: cloudflare::DEFAULT_API_URL.into(),
        }
    }
}

/// A flag combination that cannot work. The message names the flag.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {reason}")]
pub struct DnsArgsError {
    /// The flag to fix.
    pub flag: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn bad(flag: &'static str, reason: impl Into<String>) -> DnsArgsError {
    DnsArgsError {
        flag,
        reason: reason.into(),
    }
}

/// What the flags configure: the provider and how steering uses it.
#[derive(Clone, Debug)]
pub struct DnsSetup {
    /// The provider (ACME DNS-01 uses it too).
    pub provider: Arc<dyn DnsProvider>,
    /// TTL and pass interval for [`DnsManager`].
    pub steering: SteeringOptions,
}

impl DnsSetup {
    /// A steering manager over this provider (started with [`DnsManager::run`] by whoever
    /// builds the desired state).
    pub fn manager(&self) -> Arc<DnsManager> {
        DnsManager::new(vec![self.provider.clone()], self.steering.clone())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Rfc2136,
    PowerDns,
    Cloudflare,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Rfc2136 => "rfc2136",
            Kind::PowerDns => "powerdns",
            Kind::Cloudflare => "cloudflare",
        }
    }
}

/// A secret from `file` (trimmed), else from the environment variable `env`.
fn secret(
    file: Option<&Path>,
    env: &str,
    flag: &'static str,
    provider: Kind,
) -> Result<Zeroizing<String>, DnsArgsError> {
    let value = match file {
        Some(path) => Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| bad(flag, format!("{}: {e}", path.display())))?
                .trim()
                .to_owned(),
        ),
        None => Zeroizing::new(std::env::var(env).map_err(|_| {
            bad(
                flag,
                format!(
                    "required with --dns-provider {} (or set {env})",
                    provider.name()
                ),
            )
        })?),
    };
    if value.trim().is_empty() {
        return Err(bad(flag, "the secret is empty"));
    }
    Ok(value)
}

impl DnsArgs {
    /// The steering settings the flags give.
    pub fn steering(&self) -> Result<SteeringOptions, DnsArgsError> {
        if !(1..=cloudflare::MAX_TTL).contains(&self.ttl) {
            return Err(bad(
                "--dns-ttl",
                format!("must be between 1 and {} seconds", cloudflare::MAX_TTL),
            ));
        }
        if self.reconcile_interval_seconds == 0 {
            return Err(bad("--dns-reconcile-interval", "must be at least 1 second"));
        }
        Ok(SteeringOptions {
            ttl: self.ttl,
            interval: Duration::from_secs(self.reconcile_interval_seconds),
        })
    }

    /// The provider (and steering settings) the flags describe, or `None` when no provider is
    /// configured. Every problem is reported with the flag to fix.
    pub fn setup(&self) -> Result<Option<DnsSetup>, DnsArgsError> {
        let steering = self.steering()?;
        let kind = match self.provider.as_deref() {
            Some("rfc2136") => Kind::Rfc2136,
            Some("powerdns") => Kind::PowerDns,
            Some("cloudflare") => Kind::Cloudflare,
            Some(other) => {
                return Err(bad(
                    "--dns-provider",
                    format!("{other:?} is not a provider; use rfc2136, powerdns or cloudflare"),
                ))
            }
            None if self.rfc2136_server.is_some() => Kind::Rfc2136,
            None => {
                if let Some(flag) = self.stray_flags(None).first() {
                    return Err(bad(flag, "needs --dns-provider"));
                }
                return Ok(None);
            }
        };
        if let Some(flag) = self.stray_flags(Some(kind)).first() {
            return Err(bad(
                flag,
                format!("not used by --dns-provider {}", kind.name()),
            ));
        }
        let zone = self.zone.clone().ok_or_else(|| {
            bad(
                "--dns-zone",
                format!("required with --dns-provider {}", kind.name()),
            )
        })?;
        if self.timeout_seconds == 0 {
            return Err(bad("--dns-timeout", "must be at least 1 second"));
        }
        let timeout = Duration::from_secs(self.timeout_seconds);
        let provider: Arc<dyn DnsProvider> = match kind {
            Kind::Rfc2136 => {
                let server = self.rfc2136_server.ok_or_else(|| {
                    bad(
                        "--dns-rfc2136-server",
                        "required with --dns-provider rfc2136",
                    )
                })?;
                let key_name = self.tsig_key_name.clone().ok_or_else(|| {
                    bad(
                        "--dns-tsig-key-name",
                        "required with --dns-provider rfc2136",
                    )
                })?;
                let algorithm = self
                    .tsig_algorithm
                    .parse::<TsigAlgorithm>()
                    .map_err(|e| bad("--dns-tsig-algorithm", e.to_string()))?;
                let secret_base64 = secret(
                    self.tsig_secret_file.as_deref(),
                    TSIG_SECRET_ENV,
                    "--dns-tsig-secret-file",
                    kind,
                )?;
                Arc::new(
                    Rfc2136Provider::new(Rfc2136Config {
                        server,
                        zone,
                        key_name,
                        algorithm,
                        secret_base64,
                        timeout,
                    })
                    .map_err(|e| bad("--dns-tsig-secret-file", e.to_string()))?,
                )
            }
            Kind::PowerDns => {
                let api_url = self.powerdns_url.clone().ok_or_else(|| {
                    bad(
                        "--dns-powerdns-url",
                        "required with --dns-provider powerdns",
                    )
                })?;
                let api_key = secret(
                    self.powerdns_api_key_file.as_deref(),
                    POWERDNS_API_KEY_ENV,
                    "--dns-powerdns-api-key-file",
                    kind,
                )?;
                Arc::new(
                    PowerDnsProvider::new(PowerDnsConfig {
                        api_url,
                        server_id: self.powerdns_server_id.clone(),
                        zone,
                        api_key,
                        timeout,
                    })
                    .map_err(|e| bad("--dns-powerdns-url", e.to_string()))?,
                )
            }
            Kind::Cloudflare => {
                let token = secret(
                    self.cloudflare_token_file.as_deref(),
                    CLOUDFLARE_TOKEN_ENV,
                    "--dns-cloudflare-token-file",
                    kind,
                )?;
                Arc::new(
                    CloudflareProvider::new(CloudflareConfig {
                        api_url: self.cloudflare_api_url.clone(),
                        zone,
                        zone_id: self.cloudflare_zone_id.clone(),
                        token,
                        min_ttl: self.cloudflare_min_ttl,
                        timeout,
                        max_pages: cloudflare::DEFAULT_MAX_PAGES,
                    })
                    .map_err(|e| bad("--dns-cloudflare-zone-id", e.to_string()))?,
                )
            }
        };
        Ok(Some(DnsSetup { provider, steering }))
    }

    /// Provider-specific flags given although `kind` (or no provider) does not use them.
    fn stray_flags(&self, kind: Option<Kind>) -> Vec<&'static str> {
        let defaults = DnsArgs::default();
        let mut stray = Vec::new();
        let mut check = |owner: Kind, flag: &'static str, given: bool| {
            if given && kind != Some(owner) {
                stray.push(flag);
            }
        };
        check(
            Kind::Rfc2136,
            "--dns-rfc2136-server",
            self.rfc2136_server.is_some(),
        );
        check(
            Kind::Rfc2136,
            "--dns-tsig-key-name",
            self.tsig_key_name.is_some(),
        );
        check(
            Kind::Rfc2136,
            "--dns-tsig-algorithm",
            self.tsig_algorithm != defaults.tsig_algorithm,
        );
        check(
            Kind::Rfc2136,
            "--dns-tsig-secret-file",
            self.tsig_secret_file.is_some(),
        );
        check(
            Kind::PowerDns,
            "--dns-powerdns-url",
            self.powerdns_url.is_some(),
        );
        check(
            Kind::PowerDns,
            "--dns-powerdns-server-id",
            self.powerdns_server_id != defaults.powerdns_server_id,
        );
        check(
            Kind::PowerDns,
            "--dns-powerdns-api-key-file",
            self.powerdns_api_key_file.is_some(),
        );
        check(
            Kind::Cloudflare,
            "--dns-cloudflare-token-file",
            self.cloudflare_token_file.is_some(),
        );
        check(
            Kind::Cloudflare,
            "--dns-cloudflare-zone-id",
            self.cloudflare_zone_id.is_some(),
        );
        check(
            Kind::Cloudflare,
            "--dns-cloudflare-min-ttl",
            self.cloudflare_min_ttl != defaults.cloudflare_min_ttl,
        );
        check(
            Kind::Cloudflare,
            "--dns-cloudflare-api-url",
            self.cloudflare_api_url != defaults.cloudflare_api_url,
        );
        if kind.is_none() && self.zone.is_some() {
            stray.push("--dns-zone");
        }
        stray
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        dns: DnsArgs,
    }

    fn args(flags: &[&str]) -> DnsArgs {
        Cli::parse_from(std::iter::once("kokoa-control").chain(flags.iter().copied())).dns
    }

    fn flag(flags: &[&str]) -> &'static str {
        args(flags).setup().expect_err("refused").flag
    }

    #[test]
    fn no_flags_no_provider_and_defaults_match_clap() {
        assert!(args(&[]).setup().unwrap().is_none());
        let parsed = args(&[]);
        let defaults = DnsArgs::default();
        assert_eq!(parsed.ttl, defaults.ttl);
        assert_eq!(parsed.tsig_algorithm, defaults.tsig_algorithm);
        assert_eq!(parsed.cloudflare_api_url, defaults.cloudflare_api_url);
        assert_eq!(parsed.powerdns_server_id, defaults.powerdns_server_id);
        assert_eq!(parsed.steering().unwrap(), SteeringOptions::default());
    }

    #[test]
    fn each_provider_builds_from_its_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let tsig = file("tsig", "c2VjcmV0\n");
        // The old spelling still works: --dns-rfc2136-server implies the provider, and
        // --dns-rfc2136-zone is --dns-zone.
        let setup = args(&[
            "--dns-rfc2136-server",
            "127.0.0.1:53",
            "--dns-rfc2136-zone",
            "example.com",
            "--dns-tsig-key-name",
            "kokoa",
            "--dns-tsig-secret-file",
            &tsig,
            "--dns-ttl",
            "45",
        ])
        .setup()
        .unwrap()
        .unwrap();
        assert_eq!(setup.provider.kind(), "rfc2136");
        assert_eq!(setup.provider.zone(), "example.com");
        assert_eq!(setup.steering.ttl, 45);

        let key = file("pdns", "key");
        let setup = args(&[
            "--dns-provider",
            "powerdns",
            "--dns-zone",
            "example.com",
            "--dns-powerdns-url",
            "http://127.0.0.1:8081",
            "--dns-powerdns-api-key-file",
            &key,
        ])
        .setup()
        .unwrap()
        .unwrap();
        assert_eq!(setup.provider.kind(), "powerdns");

        let token = file("cf", "token\n");
        let setup = args(&[
            "--dns-provider",
            "cloudflare",
            "--dns-zone",
            "example.com",
            "--dns-cloudflare-token-file",
            &token,
            "--dns-cloudflare-min-ttl",
            "30",
        ])
        .setup()
        .unwrap()
        .unwrap();
        assert_eq!(setup.provider.kind(), "cloudflare");
        assert_eq!(setup.provider.effective_ttl(30), 30);
        assert_eq!(setup.manager().options().ttl, DEFAULT_TTL);
    }

    #[test]
    fn bad_combinations_name_the_flag() {
        assert_eq!(flag(&["--dns-provider", "route53"]), "--dns-provider");
        assert_eq!(
            flag(&[
                "--dns-provider",
                "cloudflare",
                "--dns-rfc2136-server",
                "127.0.0.1:53"
            ]),
            "--dns-rfc2136-server"
        );
        assert_eq!(
            flag(&["--dns-powerdns-url", "http://x"]),
            "--dns-powerdns-url"
        );
        assert_eq!(flag(&["--dns-zone", "example.com"]), "--dns-zone");
        assert_eq!(
            flag(&["--dns-rfc2136-server", "127.0.0.1:53"]),
            "--dns-zone"
        );
        assert_eq!(
            flag(&["--dns-provider", "powerdns", "--dns-zone", "example.com"]),
            "--dns-powerdns-url"
        );
        assert_eq!(flag(&["--dns-ttl", "0"]), "--dns-ttl");
        assert_eq!(
            flag(&["--dns-reconcile-interval", "0"]),
            "--dns-reconcile-interval"
        );
        assert_eq!(
            flag(&[
                "--dns-provider",
                "cloudflare",
                "--dns-zone",
                "example.com",
                "--dns-cloudflare-token-file",
                "/nonexistent/kokoa-token",
            ]),
            "--dns-cloudflare-token-file"
        );
    }
}
