//! The certificate manager's command-line flags, for `kokoa-control serve` to flatten into its
//! own (`#[command(flatten)] acme: AcmeArgs`), and how they become a [`CertificateManager`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use super::{AcmeOptions, CertificateManager, ChallengeKind};
use crate::dns::{rfc2136, DnsProvider, Rfc2136Config, Rfc2136Provider, TsigAlgorithm};
use crate::store::Store;

/// Environment variable holding the RFC 2136 TSIG secret (base64), instead of a file.
pub const TSIG_SECRET_ENV: &str = "KOKOA_DNS_TSIG_SECRET";

/// ACME and DNS-01 flags. Without `--acme-directory` no certificates are ordered.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct AcmeArgs {
    /// ACME directory URL: `letsencrypt`, `letsencrypt-staging`, or any CA's directory URL.
    /// Enables automatic certificates for every route name without a manual certificate.
    #[arg(
        long = "acme-directory",
        env = "KOKOA_ACME_DIRECTORY",
        value_name = "URL"
    )]
    pub directory: Option<String>,
    /// Contact e-mail for the ACME account (the CA's expiry notices).
    #[arg(long = "acme-email", env = "KOKOA_ACME_EMAIL", value_name = "EMAIL")]
    pub email: Option<String>,
    /// PEM CA certificate to trust for the directory's HTTPS (a private or test CA).
    #[arg(long = "acme-ca-file", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
    /// Renew certificates this many days before they expire.
    #[arg(
        long = "acme-renew-before-days",
        value_name = "DAYS",
        default_value_t = 30
    )]
    pub renew_before_days: u32,
    /// Look for due certificates at least this often, in seconds.
    #[arg(
        long = "acme-check-interval",
        value_name = "SECONDS",
        default_value_t = 3600
    )]
    pub check_interval_seconds: u64,
    /// Challenge for non-wildcard names: http-01 (edges' port 80), tls-alpn-01 (edges' port
    /// 443) or dns-01. Wildcards always use dns-01.
    #[arg(
        long = "acme-challenge",
        value_name = "TYPE",
        default_value = "http-01"
    )]
    pub challenge: String,
    /// RFC 2136 server (the zone's primary, `ip:port`) for DNS-01.
    #[arg(long = "dns-rfc2136-server", value_name = "IP:PORT")]
    pub rfc2136_server: Option<SocketAddr>,
    /// The zone RFC 2136 updates go to (e.g. `example.com`).
    #[arg(long = "dns-rfc2136-zone", value_name = "ZONE")]
    pub rfc2136_zone: Option<String>,
    /// The TSIG key's name.
    #[arg(long = "dns-tsig-key-name", value_name = "NAME")]
    pub tsig_key_name: Option<String>,
    /// The TSIG algorithm: hmac-sha256, hmac-sha384 or hmac-sha512.
    #[arg(
        long = "dns-tsig-algorithm",
        value_name = "ALG",
        default_value = "hmac-sha256"
    )]
    pub tsig_algorithm: String,
    /// File holding the TSIG secret (base64); else `KOKOA_DNS_TSIG_SECRET`.
    #[arg(long = "dns-tsig-secret-file", value_name = "PATH")]
    pub tsig_secret_file: Option<PathBuf>,
}

/// A flag combination that cannot work. The message names the flag.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {reason}")]
pub struct AcmeArgsError {
    /// The flag to fix.
    pub flag: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn bad(flag: &'static str, reason: impl Into<String>) -> AcmeArgsError {
    AcmeArgsError {
        flag,
        reason: reason.into(),
    }
}

impl AcmeArgs {
    /// The manager these flags describe, or `None` without `--acme-directory`.
    pub fn manager(
        &self,
        store: Arc<dyn Store>,
    ) -> Result<Option<Arc<CertificateManager>>, AcmeArgsError> {
        Ok(self
            .options()?
            .map(|(options, dns)| CertificateManager::new(store, options, dns)))
    }

    /// What the flags describe, checked (`kokoa-control check-config` stops here), or `None`
    /// without `--acme-directory`.
    #[allow(clippy::type_complexity)]
    pub fn options(
        &self,
    ) -> Result<Option<(AcmeOptions, Option<Arc<dyn DnsProvider>>)>, AcmeArgsError> {
        let Some(directory) = &self.directory else {
            return Ok(None);
        };
        let directory = match directory.as_str() {
            "letsencrypt" => super::LETS_ENCRYPT_PRODUCTION.to_owned(),
            "letsencrypt-staging" => super::LETS_ENCRYPT_STAGING.to_owned(),
            url if url.starts_with("https://") || url.starts_with("http://") => url.to_owned(),
            other => {
                return Err(bad(
                    "--acme-directory",
                    format!("{other:?} is not a URL, `letsencrypt` or `letsencrypt-staging`"),
                ))
            }
        };
        let mut options = AcmeOptions::new(directory);
        options.contact_email = self.email.clone();
        options.directory_ca_file = self.ca_file.clone();
        options.renew_before = Duration::from_secs(u64::from(self.renew_before_days) * 24 * 3600);
        options.check_interval = Duration::from_secs(self.check_interval_seconds.max(1));
        options.preferred_challenge = self
            .challenge
            .parse::<ChallengeKind>()
            .map_err(|reason| bad("--acme-challenge", reason))?;
        let dns = self.dns_provider()?;
        if options.preferred_challenge == ChallengeKind::Dns01 && dns.is_none() {
            return Err(bad(
                "--acme-challenge",
                "dns-01 needs a DNS provider (--dns-rfc2136-server and friends)",
            ));
        }
        Ok(Some((options, dns)))
    }

    /// The RFC 2136 provider, when `--dns-rfc2136-server` is given.
    pub fn dns_provider(&self) -> Result<Option<Arc<dyn DnsProvider>>, AcmeArgsError> {
        let Some(server) = self.rfc2136_server else {
            return Ok(None);
        };
        let zone = self
            .rfc2136_zone
            .clone()
            .ok_or_else(|| bad("--dns-rfc2136-zone", "required with --dns-rfc2136-server"))?;
        let key_name = self
            .tsig_key_name
            .clone()
            .ok_or_else(|| bad("--dns-tsig-key-name", "required with --dns-rfc2136-server"))?;
        let algorithm = self
            .tsig_algorithm
            .parse::<TsigAlgorithm>()
            .map_err(|e| bad("--dns-tsig-algorithm", e.to_string()))?;
        let secret = match &self.tsig_secret_file {
            Some(path) => Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| bad("--dns-tsig-secret-file", format!("{}: {e}", path.display())))?
                    .trim()
                    .to_owned(),
            ),
            None => Zeroizing::new(std::env::var(TSIG_SECRET_ENV).map_err(|_| {
                bad(
                    "--dns-tsig-secret-file",
                    format!("required with --dns-rfc2136-server (or set {TSIG_SECRET_ENV})"),
                )
            })?),
        };
        let provider = Rfc2136Provider::new(Rfc2136Config {
            server,
            zone,
            key_name,
            algorithm,
            secret_base64: secret,
            timeout: rfc2136::DEFAULT_TIMEOUT,
        })
        .map_err(|e| bad("--dns-tsig-secret-file", e.to_string()))?;
        Ok(Some(Arc::new(provider)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        acme: AcmeArgs,
    }

    fn args(flags: &[&str]) -> AcmeArgs {
        Cli::parse_from(std::iter::once("kokoa-control").chain(flags.iter().copied())).acme
    }

    #[tokio::test]
    async fn flags_become_a_manager_and_bad_combinations_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(
            &format!("sqlite://{}", dir.path().join("c.db").display()),
            crate::store::MasterKey::generate(),
        )
        .await
        .unwrap();
        assert!(args(&[]).manager(store.clone()).unwrap().is_none());
        let manager = args(&[
            "--acme-directory",
            "letsencrypt-staging",
            "--acme-challenge",
            "tls-alpn-01",
            "--acme-renew-before-days",
            "20",
        ])
        .manager(store.clone())
        .unwrap()
        .unwrap();
        assert_eq!(
            manager.options().directory_url,
            super::super::LETS_ENCRYPT_STAGING
        );
        assert_eq!(
            manager.options().preferred_challenge,
            ChallengeKind::TlsAlpn01
        );
        assert_eq!(
            manager.options().renew_before,
            Duration::from_secs(20 * 24 * 3600)
        );

        let flag = |flags: &[&str]| args(flags).manager(store.clone()).err().unwrap().flag;
        assert_eq!(flag(&["--acme-directory", "ftp://ca"]), "--acme-directory");
        assert_eq!(
            flag(&[
                "--acme-directory",
                "letsencrypt",
                "--acme-challenge",
                "smtp"
            ]),
            "--acme-challenge"
        );
        assert_eq!(
            flag(&[
                "--acme-directory",
                "letsencrypt",
                "--acme-challenge",
                "dns-01"
            ]),
            "--acme-challenge"
        );
        assert_eq!(
            flag(&[
                "--acme-directory",
                "letsencrypt",
                "--dns-rfc2136-server",
                "127.0.0.1:53"
            ]),
            "--dns-rfc2136-zone"
        );
        let secret = dir.path().join("tsig.key");
        std::fs::write(&secret, "c2VjcmV0\n").unwrap();
        let dns = args(&[
            "--dns-rfc2136-server",
            "127.0.0.1:53",
            "--dns-rfc2136-zone",
            "example.com",
            "--dns-tsig-key-name",
            "kokoa",
            "--dns-tsig-secret-file",
            secret.to_str().unwrap(),
        ])
        .dns_provider()
        .unwrap();
        assert!(dns.is_some());
    }
}
