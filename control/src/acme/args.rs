//! The certificate manager's command-line flags, for `kokoa-control serve` to flatten into its
//! own (`#[command(flatten)] acme: AcmeArgs`), and how they become a [`CertificateManager`].
//! DNS-01 uses the provider of the `--dns-*` flags ([`crate::dns::DnsArgs`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{AcmeOptions, CertificateManager, ChallengeKind};
use crate::dns::DnsProvider;
use crate::store::Store;

/// ACME flags. Without `--acme-directory` no certificates are ordered.
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
    /// The manager these flags describe, or `None` without `--acme-directory`; `dns` (from the
    /// `--dns-*` flags) answers DNS-01 challenges.
    pub fn manager(
        &self,
        store: Arc<dyn Store>,
        dns: Option<Arc<dyn DnsProvider>>,
    ) -> Result<Option<Arc<CertificateManager>>, AcmeArgsError> {
        Ok(self
            .options(dns)?
            .map(|(options, dns)| CertificateManager::new(store, options, dns)))
    }

    /// What the flags describe, checked (`kokoa-control check-config` stops here), or `None`
    /// without `--acme-directory`; `dns` is the `--dns-*` provider DNS-01 would use.
    #[allow(clippy::type_complexity)]
    pub fn options(
        &self,
        dns: Option<Arc<dyn DnsProvider>>,
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
        if options.preferred_challenge == ChallengeKind::Dns01 && dns.is_none() {
            return Err(bad(
                "--acme-challenge",
                "dns-01 needs a DNS provider (--dns-provider and its flags)",
            ));
        }
        Ok(Some((options, dns)))
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
        assert!(args(&[]).manager(store.clone(), None).unwrap().is_none());
        let manager = args(&[
            "--acme-directory",
            "letsencrypt-staging",
            "--acme-challenge",
            "tls-alpn-01",
            "--acme-renew-before-days",
            "20",
        ])
        .manager(store.clone(), None)
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

        let flag = |flags: &[&str]| args(flags).manager(store.clone(), None).err().unwrap().flag;
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
        // With a DNS provider (from the --dns-* flags), dns-01 is accepted.
        let dns: Arc<dyn DnsProvider> = Arc::new(
            crate::dns::Rfc2136Provider::new(crate::dns::Rfc2136Config {
                server: "127.0.0.1:53".parse().unwrap(),
                zone: "example.com".into(),
                key_name: "kokoa".into(),
                algorithm: Default::default(),
                secret_base64: "c2VjcmV0".to_owned().into(),
                timeout: Duration::from_secs(1),
            })
            .unwrap(),
        );
        let manager = args(&[
            "--acme-directory",
            "letsencrypt",
            "--acme-challenge",
            "dns-01",
        ])
        .manager(store.clone(), Some(dns))
        .unwrap()
        .unwrap();
        assert_eq!(manager.options().preferred_challenge, ChallengeKind::Dns01);
    }
}
