//! The certificate manager: control is the fleet's one ACME client (RFC 8555, instant-acme).
//!
//! [`CertificateManager`] keeps a certificate for every route host name and alias that no
//! manual certificate covers: it creates an ACME certificate entry per name (one order per
//! name), orders it, and renews it `renew_before` its expiry. Challenges are answered by the
//! edges: HTTP-01 and TLS-ALPN-01 answers are stored as pending challenges (which bumps the
//! config version, so every edge's snapshot carries them), DNS-01 (always used for wildcards)
//! goes through a [`DnsProvider`](crate::dns::DnsProvider). Issued certificates and keys land in
//! the store ([`set_certificate_material`]) and reach the edges the same way.
//!
//! A failed order is recorded on the certificate ([`set_certificate_error`]), retried
//! with exponential backoff, and never touches the certificate already in place. Manual
//! certificates are never ordered, renewed or overwritten.
//!
//! [`set_certificate_material`]: crate::store::CertificateStore::set_certificate_material
//! [`set_certificate_error`]: crate::store::CertificateStore::set_certificate_error
//!
//! One account per directory URL, its credentials (including the private key) sealed in the
//! store. Orders run one at a time; [`CertificateManager::run`] is the loop `kokoa-control
//! serve` starts.

mod args;
mod order;
mod tls_alpn;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use instant_acme::{Account, AccountCredentials, NewAccount};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tracing::Instrument as _;

use crate::api::LiveNodes;
use crate::dns::{DnsError, DnsProvider};
use crate::store::{
    Actor, Certificate, CertificateSource, HostPattern, Id, Leadership, NewCertificate, Store,
    StoreError,
};

pub use crate::dns::args::TSIG_SECRET_ENV;
pub use args::{AcmeArgs, AcmeArgsError};
pub use tls_alpn::validation_certificate;

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT_PRODUCTION: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (untrusted certificates, generous rate limits).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// Renew this long before expiry by default.
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often the manager looks for due certificates when nothing wakes it.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// The challenge type to use for non-wildcard names (wildcards always use DNS-01).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ChallengeKind {
    /// HTTP-01: the edges answer on their plain HTTP port (80).
    #[default]
    Http01,
    /// TLS-ALPN-01: the edges answer `acme-tls/1` handshakes on their TLS port (443), for
    /// when port 80 is closed.
    TlsAlpn01,
    /// DNS-01 through the DNS provider.
    Dns01,
}

impl ChallengeKind {
    /// The RFC 8555 name (`http-01`, `tls-alpn-01`, `dns-01`).
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Dns01 => "dns-01",
        }
    }
}

impl FromStr for ChallengeKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "http-01" | "http" => Ok(ChallengeKind::Http01),
            "tls-alpn-01" | "tls-alpn" => Ok(ChallengeKind::TlsAlpn01),
            "dns-01" | "dns" => Ok(ChallengeKind::Dns01),
            other => Err(format!(
                "unknown ACME challenge {other:?}; use http-01, tls-alpn-01 or dns-01"
            )),
        }
    }
}

/// How the manager talks to the CA and when it renews.
#[derive(Clone, Debug)]
pub struct AcmeOptions {
    /// The ACME directory URL ([`LETS_ENCRYPT_PRODUCTION`], [`LETS_ENCRYPT_STAGING`], or any
    /// other CA's).
    pub directory_url: String,
    /// Contact e-mail for the account (expiry notices from the CA), without `mailto:`.
    pub contact_email: Option<String>,
    /// A PEM CA certificate to trust for the directory's HTTPS instead of the system roots
    /// (a private or test CA such as Pebble's).
    pub directory_ca_file: Option<PathBuf>,
    /// Renew this long before a certificate expires.
    pub renew_before: Duration,
    /// How often to look for due certificates when nothing changed.
    pub check_interval: Duration,
    /// The challenge for non-wildcard names.
    pub preferred_challenge: ChallengeKind,
    /// First retry delay after a failed order; doubles per failure up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How long the CA may take to validate and issue.
    pub validation_timeout: Duration,
    /// How long to wait for the online edges to acknowledge the config carrying new challenges
    /// before telling the CA to validate.
    pub propagation_timeout: Duration,
    /// How long to wait after a DNS-01 TXT record was accepted by the primary before telling
    /// the CA to validate (secondaries need to catch up).
    pub dns_propagation: Duration,
    /// TTL of DNS-01 TXT records.
    pub dns_ttl: u32,
}

impl AcmeOptions {
    /// Defaults for `directory_url`: renew 30 days ahead, check hourly, HTTP-01, retries from
    /// one minute up to six hours.
    pub fn new(directory_url: impl Into<String>) -> Self {
        Self {
            directory_url: directory_url.into(),
            contact_email: None,
            directory_ca_file: None,
            renew_before: DEFAULT_RENEW_BEFORE,
            check_interval: DEFAULT_CHECK_INTERVAL,
            preferred_challenge: ChallengeKind::Http01,
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(6 * 3600),
            validation_timeout: Duration::from_secs(120),
            propagation_timeout: Duration::from_secs(15),
            dns_propagation: Duration::from_secs(10),
            dns_ttl: 60,
        }
    }
}

/// Why an order failed. The message is what operators see as the certificate's `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The ACME server refused a request or could not be reached.
    #[error("ACME server: {0}")]
    Protocol(#[from] instant_acme::Error),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The DNS provider failed (DNS-01).
    #[error("DNS-01: {0}")]
    Dns(#[from] DnsError),
    /// A wildcard (or DNS-01 preferred) but no DNS provider is configured.
    #[error("{0} needs a DNS-01 challenge, but no DNS provider is configured (set up RFC 2136)")]
    NoDnsProvider(String),
    /// The CA offered no challenge type the manager can answer.
    #[error("{name}: the CA offers no usable challenge (offered: {offered})")]
    NoUsableChallenge {
        /// The name.
        name: String,
        /// What was offered.
        offered: String,
    },
    /// The CA could not validate a name.
    #[error("the CA could not validate {name}: {detail}")]
    Validation {
        /// The name.
        name: String,
        /// The CA's explanation.
        detail: String,
    },
    /// Key, CSR, validation certificate or issued certificate handling failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The stored account credentials are unusable.
    #[error("ACME account for {directory}: {reason}")]
    Account {
        /// The directory URL.
        directory: String,
        /// Why.
        reason: String,
    },
}

/// Labels of [`AcmeMetrics::orders`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrderLabels {
    /// `issued` or `failed`.
    pub result: String,
}

/// Labels of [`AcmeMetrics::expiry`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// The certificate's first name.
    pub name: String,
    /// `acme` or `manual`.
    pub source: String,
}

/// Prometheus metrics of the certificate manager.
#[derive(Clone, Debug, Default)]
pub struct AcmeMetrics {
    /// Orders finished, by result.
    pub orders: Family<OrderLabels, Counter>,
    /// Expiry (Unix seconds) of every issued certificate, ACME and manual.
    pub expiry: Family<CertificateLabels, Gauge>,
}

impl AcmeMetrics {
    /// Registers the metrics (`kokoa_acme_orders_total`,
    /// `kokoa_certificate_expiry_timestamp_seconds`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kokoa_acme_orders",
            "ACME orders finished, by result (issued, failed)",
            self.orders.clone(),
        );
        registry.register(
            "kokoa_certificate_expiry_timestamp_seconds",
            "Expiry of each certificate, Unix seconds",
            self.expiry.clone(),
        );
    }

    fn order(&self, result: &str) {
        self.orders
            .get_or_create(&OrderLabels {
                result: result.to_owned(),
            })
            .inc();
    }
}

/// The retry state of a certificate whose last order failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryState {
    /// Consecutive failed orders.
    pub failures: u32,
    /// When the next order may start.
    pub next_attempt: Instant,
    /// The last failure.
    pub last_error: String,
}

/// What one [`CertificateManager::run_once`] pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassReport {
    /// ACME certificate entries created for newly routed names.
    pub created: Vec<String>,
    /// Certificates issued or renewed (by id).
    pub issued: Vec<Id>,
    /// Orders that failed (by id).
    pub failed: Vec<Id>,
}

/// Obtains and renews certificates; see the module doc.
pub struct CertificateManager {
    store: Arc<dyn Store>,
    options: AcmeOptions,
    dns: Option<Arc<dyn DnsProvider>>,
    metrics: AcmeMetrics,
    account: tokio::sync::Mutex<Option<Account>>,
    retries: Mutex<HashMap<Id, RetryState>>,
    forced: Mutex<HashSet<Id>>,
    wake: Notify,
    /// The nodes connected to this control process (the gRPC server's registry), set by
    /// [`CertificateManager::watch_connected_nodes`].
    live: std::sync::OnceLock<Arc<dyn LiveNodes>>,
}

impl std::fmt::Debug for CertificateManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateManager")
            .field("directory_url", &self.options.directory_url)
            .field("dns", &self.dns)
            .finish_non_exhaustive()
    }
}

const ACTOR: Actor = Actor::System;
/// The singleton job name of the certificate manager
/// ([`try_lead`](crate::store::LeaderStore::try_lead)).
pub const LEADERSHIP_JOB: &str = "acme";
/// How often a replica that does not lead tries to take over.
const LEADERSHIP_RETRY: Duration = Duration::from_secs(15);

impl CertificateManager {
    /// A manager over `store`; `dns` answers DNS-01 challenges (needed for wildcard names).
    pub fn new(
        store: Arc<dyn Store>,
        options: AcmeOptions,
        dns: Option<Arc<dyn DnsProvider>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            options,
            dns,
            metrics: AcmeMetrics::default(),
            account: tokio::sync::Mutex::new(None),
            retries: Mutex::new(HashMap::new()),
            forced: Mutex::new(HashSet::new()),
            wake: Notify::new(),
            live: std::sync::OnceLock::new(),
        })
    }

    /// Makes orders wait for every edge connected to this control process to apply the config
    /// carrying their challenges, not only the edges whose heartbeat the store has seen: an edge
    /// that has just connected may not have sent one yet, and the CA's validator may pick it.
    /// Set once (by `serve`, with the gRPC server's registry); later calls are ignored.
    pub fn watch_connected_nodes(&self, live: Arc<dyn LiveNodes>) {
        let _ = self.live.set(live);
    }

    /// The manager's metrics (register them on the admin registry).
    pub fn metrics(&self) -> &AcmeMetrics {
        &self.metrics
    }

    /// The options in use.
    pub fn options(&self) -> &AcmeOptions {
        &self.options
    }

    /// Renews certificate `id` at the next pass whatever its expiry (and wakes the loop). A
    /// forced renewal that fails is retried with backoff until it succeeds.
    pub fn renew_now(&self, id: Id) {
        self.forced.lock().insert(id);
        self.retries.lock().remove(&id);
        self.wake.notify_one();
    }

    /// The retry state of a certificate whose last order failed (`None` once one succeeds).
    pub fn retry_state(&self, id: Id) -> Option<RetryState> {
        self.retries.lock().get(&id).cloned()
    }

    /// Runs until `shutdown` resolves. Only the replica holding the `acme` leadership
    /// ([`try_lead`](crate::store::LeaderStore::try_lead): always on SQLite, a PostgreSQL
    /// advisory lock otherwise) orders; the others retry every 15 s. The leader clears challenges
    /// left by an earlier run, then passes over the certificates on start, every
    /// `check_interval`, whenever the config changes (a new route), when a retry is due, and on
    /// [`CertificateManager::renew_now`]. An order
    /// in progress when `shutdown` resolves is abandoned (its challenges expire on the edges).
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut versions = self.store.subscribe_config_version();
        tracing::info!(
            directory = %self.options.directory_url,
            challenge = self.options.preferred_challenge.as_str(),
            renew_before = ?self.options.renew_before,
            "certificate manager started"
        );
        let mut leadership: Option<Leadership> = None;
        loop {
            versions.borrow_and_update();
            let leading = tokio::select! {
                _ = &mut shutdown => return,
                leading = self.lead(&mut leadership) => leading,
            };
            if leading {
                tokio::select! {
                    _ = &mut shutdown => return,
                    result = self.run_once() => match result {
                        Ok(report) if report != PassReport::default() => {
                            tracing::info!(
                                created = ?report.created,
                                issued = report.issued.len(),
                                failed = report.failed.len(),
                                "certificate pass done"
                            );
                        }
                        Ok(_) => {}
                        Err(error) => tracing::warn!(%error, "certificate pass failed"),
                    },
                }
            }
            let wait = if leading {
                self.next_wakeup()
            } else {
                LEADERSHIP_RETRY.min(self.options.check_interval)
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(wait) => {}
                changed = versions.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Keeps or takes the `acme` job's leadership (one control replica orders certificates);
    /// on taking it, clears challenges an earlier leader left behind.
    async fn lead(&self, leadership: &mut Option<Leadership>) -> bool {
        if let Some(held) = leadership.as_ref() {
            if held.holds().await {
                return true;
            }
            tracing::warn!("lost the ACME leadership (database connection); trying again");
            *leadership = None;
        }
        match self.store.try_lead(LEADERSHIP_JOB).await {
            Ok(Some(held)) => {
                tracing::info!("this control replica now orders certificates");
                if let Err(error) = self.store.remove_acme_challenges(&ACTOR, None).await {
                    tracing::warn!(%error, "could not clear stale ACME challenges");
                }
                *leadership = Some(held);
                true
            }
            Ok(None) => {
                tracing::debug!("another control replica orders certificates");
                false
            }
            Err(error) => {
                tracing::warn!(%error, "cannot take the ACME leadership");
                false
            }
        }
    }

    /// Time until the next pass: the check interval, or sooner when a retry is due.
    fn next_wakeup(&self) -> Duration {
        let now = Instant::now();
        self.retries
            .lock()
            .values()
            .map(|retry| retry.next_attempt.saturating_duration_since(now))
            .min()
            .map_or(self.options.check_interval, |due| {
                due.min(self.options.check_interval)
            })
            .max(Duration::from_millis(50))
    }

    /// One pass: creates ACME certificate entries for routed names no certificate covers, then
    /// orders every ACME certificate that is due (never issued, within `renew_before` of
    /// expiry, or forced) and not waiting for a retry. Orders run one after the other.
    pub async fn run_once(&self) -> Result<PassReport, AcmeError> {
        let mut report = PassReport::default();
        let routes = self.store.list_routes().await?;
        let routed: BTreeSet<String> = routes
            .iter()
            .flat_map(|route| std::iter::once(&route.hostname).chain(route.aliases.iter()))
            .map(|name| name.to_ascii_lowercase())
            .collect();
        let mut certificates = self.store.list_certificates().await?;
        for name in &routed {
            if certificates.iter().any(|cert| covers(cert, name)) {
                continue;
            }
            let Ok(pattern) = HostPattern::new(name) else {
                // A route name an older control stored without the model's check: its route
                // is held back from the edges, so no certificate is needed for it.
                continue;
            };
            let cert = self
                .store
                .create_certificate(
                    &ACTOR,
                    NewCertificate {
                        names: vec![pattern],
                        source: CertificateSource::Acme,
                        material: None,
                    },
                )
                .await?;
            tracing::info!(name, id = %cert.id, "ordering a certificate for a new route name");
            report.created.push(name.clone());
            certificates.push(cert);
        }
        self.record_expiry(&certificates);

        let now = OffsetDateTime::now_utc();
        for cert in certificates {
            if cert.source != CertificateSource::Acme {
                continue;
            }
            let forced = self.forced.lock().contains(&cert.id);
            // A name no route uses any more is left to expire rather than renewed.
            let routed_now = cert.names.iter().all(|name| routed.contains(name));
            let due = forced || (routed_now && self.due(&cert, now));
            if !due || self.waiting(cert.id) {
                continue;
            }
            match self.issue(&cert).await {
                Ok(_) => report.issued.push(cert.id),
                Err(_) => report.failed.push(cert.id),
            }
        }
        Ok(report)
    }

    fn due(&self, cert: &Certificate, now: OffsetDateTime) -> bool {
        match (cert.chain_pem.as_ref(), cert.not_after) {
            (Some(_), Some(not_after)) => not_after - self.options.renew_before <= now,
            _ => true,
        }
    }

    fn waiting(&self, id: Id) -> bool {
        self.retries
            .lock()
            .get(&id)
            .is_some_and(|retry| retry.next_attempt > Instant::now())
    }

    fn record_expiry(&self, certificates: &[Certificate]) {
        for cert in certificates {
            if let (Some(not_after), Some(name)) = (cert.not_after, cert.names.first()) {
                let source = match cert.source {
                    CertificateSource::Acme => "acme",
                    CertificateSource::Manual => "manual",
                };
                self.metrics
                    .expiry
                    .get_or_create(&CertificateLabels {
                        name: name.clone(),
                        source: source.to_owned(),
                    })
                    .set(not_after.unix_timestamp());
            }
        }
    }

    /// Orders certificate `cert` now (whatever its schedule) and installs the result. On
    /// failure the error is recorded on the certificate, a retry is scheduled with backoff, and
    /// the certificate in place is kept. Manual certificates are refused.
    pub async fn issue(&self, cert: &Certificate) -> Result<Certificate, AcmeError> {
        if cert.source != CertificateSource::Acme {
            return Err(AcmeError::Certificate(format!(
                "certificate {} is a manual certificate; control never replaces it",
                cert.id
            )));
        }
        let span = tracing::info_span!("acme_order", id = %cert.id, names = ?cert.names);
        let started = Instant::now();
        let result = async {
            let account = self.account().await?;
            order::obtain(self, &account, cert).await
        }
        .instrument(span)
        .await;
        match result {
            Ok(material) => {
                let updated = self
                    .store
                    .set_certificate_material(&ACTOR, cert.id, material)
                    .await?;
                let not_after = updated.not_after.map(|t| t.to_string()).unwrap_or_default();
                self.retries.lock().remove(&cert.id);
                self.forced.lock().remove(&cert.id);
                self.metrics.order("issued");
                self.record_expiry(std::slice::from_ref(&updated));
                tracing::info!(
                    id = %cert.id,
                    names = ?cert.names,
                    %not_after,
                    took = ?started.elapsed(),
                    "certificate issued"
                );
                Ok(updated)
            }
            Err(error) => {
                let message = error.to_string();
                self.metrics.order("failed");
                let retry = {
                    let mut retries = self.retries.lock();
                    let failures = retries.get(&cert.id).map_or(0, |r| r.failures) + 1;
                    let delay =
                        backoff(self.options.retry_initial, self.options.retry_max, failures);
                    let retry = RetryState {
                        failures,
                        next_attempt: Instant::now() + delay,
                        last_error: message.clone(),
                    };
                    retries.insert(cert.id, retry.clone());
                    (retry, delay)
                };
                tracing::warn!(
                    id = %cert.id,
                    names = ?cert.names,
                    error = %message,
                    failures = retry.0.failures,
                    retry_in = ?retry.1,
                    "certificate order failed; the current certificate stays in place"
                );
                if let Err(store_error) = self
                    .store
                    .set_certificate_error(&ACTOR, cert.id, &message)
                    .await
                {
                    tracing::warn!(%store_error, "could not record the order failure");
                }
                Err(error)
            }
        }
    }

    /// The account for the directory: loaded from the store, or created and stored.
    async fn account(&self) -> Result<Account, AcmeError> {
        let mut cached = self.account.lock().await;
        if let Some(account) = cached.as_ref() {
            return Ok(account.clone());
        }
        let directory = self.options.directory_url.clone();
        let account_error = |reason: String| AcmeError::Account {
            directory: directory.clone(),
            reason,
        };
        let builder = match &self.options.directory_ca_file {
            Some(path) => Account::builder_with_root(path)?,
            None => Account::builder()?,
        };
        let account = match self.store.acme_account(&directory).await? {
            Some(stored) => {
                let credentials: AccountCredentials =
                    serde_json::from_str(&stored).map_err(|e| {
                        account_error(format!("stored credentials are unreadable: {e}"))
                    })?;
                builder.from_credentials(credentials).await?
            }
            None => {
                let contact: Vec<String> = self
                    .options
                    .contact_email
                    .iter()
                    .map(|email| format!("mailto:{email}"))
                    .collect();
                let contact_refs: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder
                    .create(
                        &NewAccount {
                            contact: &contact_refs,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        directory.clone(),
                        None,
                    )
                    .await?;
                let json =
                    zeroize::Zeroizing::new(serde_json::to_string(&credentials).map_err(|e| {
                        account_error(format!("cannot serialize credentials: {e}"))
                    })?);
                self.store
                    .save_acme_account(&ACTOR, &directory, &contact, &json)
                    .await?;
                tracing::info!(directory, id = account.id(), "ACME account created");
                account
            }
        };
        *cached = Some(account.clone());
        Ok(account)
    }
}

/// `initial * 2^(failures-1)`, at most `max`.
fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(31));
    initial.saturating_mul(factor).min(max)
}

/// Whether `cert` serves `name`: one of its names exactly, or, for a manual certificate, a
/// wildcard one label above (an operator's wildcard certificate stops per-name orders).
fn covers(cert: &Certificate, name: &str) -> bool {
    cert.names.iter().any(|covered| {
        covered == name
            || (cert.source == CertificateSource::Manual
                && !name.starts_with("*.")
                && covered.strip_prefix("*.").is_some_and(|domain| {
                    name.split_once('.')
                        .is_some_and(|(label, rest)| !label.is_empty() && rest == domain)
                }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str], source: CertificateSource) -> Certificate {
        Certificate {
            id: Id::new_v4(),
            names: names.iter().map(|n| n.to_string()).collect(),
            source,
            chain_pem: None,
            issuer: None,
            not_after: None,
            last_error: None,
            created_at: OffsetDateTime::now_utc(),
            updated_at: OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(60), s(3600), 1), s(60));
        assert_eq!(backoff(s(60), s(3600), 2), s(120));
        assert_eq!(backoff(s(60), s(3600), 4), s(480));
        assert_eq!(backoff(s(60), s(3600), 10), s(3600));
        assert_eq!(backoff(s(60), s(3600), u32::MAX), s(3600));
    }

    #[test]
    fn coverage_by_exact_names_and_manual_wildcards() {
        let manual = cert(&["*.example.com"], CertificateSource::Manual);
        assert!(covers(&manual, "app.example.com"));
        assert!(covers(&manual, "*.example.com"));
        assert!(!covers(&manual, "a.b.example.com"));
        assert!(!covers(&manual, "example.com"));
        let acme = cert(&["*.example.com"], CertificateSource::Acme);
        assert!(!covers(&acme, "app.example.com"));
        assert!(covers(&acme, "*.example.com"));
    }

    #[tokio::test]
    async fn due_when_unissued_or_within_renew_before() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(
            &format!("sqlite://{}", dir.path().join("c.db").display()),
            crate::store::MasterKey::generate(),
        )
        .await
        .unwrap();
        let manager = CertificateManager::new(store, AcmeOptions::new("https://ca.test/dir"), None);
        let now = OffsetDateTime::now_utc();
        let mut acme = cert(&["a.example.com"], CertificateSource::Acme);
        assert!(manager.due(&acme, now), "never issued");
        acme.chain_pem = Some("PEM".into());
        acme.not_after = Some(now + time::Duration::days(40));
        assert!(!manager.due(&acme, now));
        acme.not_after = Some(now + time::Duration::days(29));
        assert!(manager.due(&acme, now), "inside the 30 days");
        manager.renew_now(acme.id);
        assert!(manager.forced.lock().contains(&acme.id));
    }

    /// The ACME flake of issue 16: an edge that has connected but not yet sent a heartbeat must
    /// still be waited for, or the CA may ask it for a challenge it does not have yet.
    #[tokio::test]
    async fn orders_wait_for_connected_edges_without_a_heartbeat() {
        use crate::grpc::NodeRegistry;
        use crate::store::{NewEdge, NodeId};

        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(
            &format!("sqlite://{}", dir.path().join("c.db").display()),
            crate::store::MasterKey::generate(),
        )
        .await
        .unwrap();
        let actor = Actor::Cli;
        let new_edge = |name: &str| NewEdge::named(name.parse().unwrap());
        let connected = store
            .create_edge(&actor, new_edge("connected"))
            .await
            .unwrap();
        let elsewhere = store
            .create_edge(&actor, new_edge("elsewhere"))
            .await
            .unwrap();
        store
            .create_edge(&actor, new_edge("offline"))
            .await
            .unwrap();
        let version = store.config_version().await.unwrap();
        let manager =
            CertificateManager::new(store.clone(), AcmeOptions::new("https://ca.test/dir"), None);
        let lagging = || async { order::lagging_edges(&manager, version).await.unwrap() };

        // No edge has sent a heartbeat and none is known to be connected.
        assert!(lagging().await.is_empty());

        // One connects, running an older config: it is waited for without a heartbeat.
        let registry = NodeRegistry::default();
        manager.watch_connected_nodes(Arc::new(registry.clone()));
        let node = NodeId::Edge(connected.id);
        let hello = kokoa_proto::v1::Hello {
            applied_version: version - 1,
            software_version: "test".into(),
            hostname: "h".into(),
            listeners: Vec::new(),
        };
        let session = registry.connect(node, "connected", None, &hello);
        assert_eq!(lagging().await, ["connected"]);

        // An edge connected to another replica is known by its heartbeat.
        let other = NodeId::Edge(elsewhere.id);
        store
            .record_heartbeat(other, serde_json::json!({}))
            .await
            .unwrap();
        store.record_config_ack(other, version - 1).await.unwrap();
        assert_eq!(lagging().await, ["connected", "elsewhere"]);

        // Both apply the version: nothing left to wait for ("offline" never counted).
        registry.acked(node, session, version);
        store.record_config_ack(other, version).await.unwrap();
        assert!(lagging().await.is_empty());

        // A connected edge that fell behind again is waited for again.
        assert_eq!(
            order::lagging_edges(&manager, version + 1).await.unwrap(),
            ["connected", "elsewhere"]
        );
        registry.disconnect(node, session);
        assert_eq!(
            order::lagging_edges(&manager, version + 1).await.unwrap(),
            ["elsewhere"]
        );
    }

    #[test]
    fn challenge_kinds_parse() {
        assert_eq!("HTTP-01".parse(), Ok(ChallengeKind::Http01));
        assert_eq!("tls-alpn-01".parse(), Ok(ChallengeKind::TlsAlpn01));
        assert_eq!("dns".parse(), Ok(ChallengeKind::Dns01));
        assert!("smtp".parse::<ChallengeKind>().is_err());
    }
}
