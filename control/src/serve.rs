//! `kokoa-control serve`: opens the store, loads (or creates) control's CA, and runs the REST
//! API and the gRPC config stream side by side until SIGTERM or SIGINT.
//!
//! It also runs the health checker ([`crate::health`]), which judges every node's state, and
//! serves control's metrics at `/metrics` on the API listener ([`crate::metrics`]). With
//! `--acme-directory` it runs the certificate manager ([`crate::acme`]), which orders and
//! renews certificates for every route name; DNS-01 goes through the `--dns-*` provider
//! ([`crate::dns`]), which also steers route names to the healthy edges. It always runs the
//! notifier ([`crate::notify`]), which sends the audit trail to the notification targets
//! configured through the API.
//!
//! Startup order is "check everything, then bind": the master key, the data directory, the
//! database (created and migrated on first start) and the CA are loaded before any port is
//! bound, so a misconfigured control fails fast with a message naming the problem.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::account::{Accounts, SessionPolicy};
use crate::acme::AcmeArgs;
use crate::api::{self, ApiState, LiveNodes};
use crate::bundle::BundleSettings;
use crate::dns::{steer, DnsArgs, Steering};
use crate::grpc::{GrpcOptions, GrpcServer};
use crate::health::args::HealthArgs;
use crate::health::HealthChecker;
use crate::https;
use crate::metrics::MetricSource;
use crate::notify::{Notifier, NotifyArgs};
use crate::pki::ControlCa;
use crate::provision::{ProvisionArgs, Replacer};
use crate::store::{self, MasterKey};
use crate::web::{self, Web, WebOptions};

/// How the REST API and dashboard listener speaks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ApiTls {
    /// HTTPS with a certificate signed by control's CA for the API names (the default).
    #[default]
    ControlCa,
    /// HTTPS with this PEM certificate chain and key.
    Files {
        /// Chain, leaf first.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// HTTPS with control's ACME certificate for this name (control's CA-signed one until it
    /// is issued).
    Acme(String),
    /// Plain HTTP: only on a loopback address.
    Plain,
}

/// Default REST API listener.
pub const DEFAULT_API: &str = "127.0.0.1:7080";
/// Default gRPC listener.
pub const DEFAULT_GRPC: &str = "0.0.0.0:7443";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "kokoa-data";
/// The SQLite file inside the data directory.
pub const DATABASE_FILE: &str = "control.db";
/// The master key `--dev` creates inside the data directory.
pub const DEV_MASTER_KEY_FILE: &str = "master.key";
/// How long bundle enrollment tokens are valid.
pub const BUNDLE_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// What `serve` runs with (the command-line flags).
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Holds `control.db` (unless `database` says otherwise) and the CA.
    pub data_dir: PathBuf,
    /// Database URL: `sqlite://PATH` or `postgres://...`; default `sqlite://DATA_DIR/control.db`.
    pub database: Option<String>,
    /// File holding the base64 master key; else `KOKOA_MASTER_KEY`.
    pub master_key_file: Option<PathBuf>,
    /// Development: without a configured master key, create `DATA_DIR/master.key`.
    pub dev: bool,
    /// REST API listener.
    pub api: SocketAddr,
    /// gRPC listener.
    pub grpc: SocketAddr,
    /// DNS names and IPs in the gRPC server certificate; empty: localhost, 127.0.0.1 and the
    /// host name.
    pub grpc_names: Vec<String>,
    /// The gRPC URL bundles tell nodes; default `https://<first name>:<grpc port>`.
    pub public_url: Option<String>,
    /// Automatic certificates (ACME); off without a directory URL.
    pub acme: AcmeArgs,
    /// How node health is judged (checked by [`check`] and before `run` binds).
    pub health: HealthArgs,
    /// Dashboard session timeouts and login limits.
    pub sessions: SessionPolicy,
    /// How the REST API and dashboard listener speaks.
    pub api_tls: ApiTls,
    /// Names in the API's CA-signed certificate; empty: the gRPC names.
    pub api_names: Vec<String>,
    /// Connections to the API listener at once.
    pub api_max_connections: usize,
    /// Dashboard settings (`secure_cookies` is set from `api_tls`).
    pub web: WebOptions,
    /// Notification delivery (retries, queue bound); targets are configured through the API.
    pub notify: NotifyArgs,
    /// The DNS provider (DNS-01, DNS steering); none without `--dns-provider`.
    pub dns: DnsArgs,
    /// The edge provisioner and replacement settings; none without `--provisioner`.
    pub provision: ProvisionArgs,
}

impl ServeOptions {
    /// Defaults for everything, data in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServeOptions {
            data_dir: data_dir.into(),
            database: None,
            master_key_file: None,
            dev: false,
            api: DEFAULT_API
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7080))),
            grpc: DEFAULT_GRPC
                .parse()
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 7443))),
            grpc_names: Vec::new(),
            public_url: None,
            acme: AcmeArgs::default(),
            health: HealthArgs::default(),
            sessions: SessionPolicy::default(),
            api_tls: ApiTls::default(),
            api_names: Vec::new(),
            api_max_connections: https::DEFAULT_MAX_CONNECTIONS,
            web: WebOptions::default(),
            notify: NotifyArgs::default(),
            dns: DnsArgs::default(),
            provision: ProvisionArgs::default(),
        }
    }
}

/// The database URL for `data_dir` / `database`.
pub fn database_url(data_dir: &Path, database: Option<&str>) -> String {
    match database {
        Some(url) => url.to_string(),
        None => format!("sqlite://{}", data_dir.join(DATABASE_FILE).display()),
    }
}

/// Loads the master key as `serve` does: `--master-key-file`, else `KOKOA_MASTER_KEY`, else (only
/// with `dev`) `DATA_DIR/master.key`, created when missing.
pub fn master_key(file: Option<&Path>, data_dir: &Path, dev: bool) -> anyhow::Result<MasterKey> {
    match MasterKey::load(file) {
        Ok(key) => Ok(key),
        Err(store::CryptoError::Missing) if dev => {
            let path = data_dir.join(DEV_MASTER_KEY_FILE);
            tracing::warn!(path = %path.display(), "dev mode: using a master key kept next to the data; do not do this in production");
            Ok(MasterKey::generate_dev(&path)?)
        }
        Err(error) => Err(error.into()),
    }
}

/// Creates the data directory (mode 0700: it holds the CA key and, by default, the database).
pub fn create_data_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("cannot create the data directory {}", dir.display()))
}

/// This machine's host name, when it is a usable DNS name.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()?;
    let name = name.trim().to_ascii_lowercase();
    kokoa_model::HostName::new(&name)
        .ok()
        .map(|name| name.to_string())
}

/// The names in the gRPC certificate: the given ones, or localhost, 127.0.0.1 and the host name.
pub fn grpc_names(given: &[String]) -> Vec<String> {
    if !given.is_empty() {
        return given.to_vec();
    }
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if let Some(host) = host_name() {
        if !names.contains(&host) {
            names.push(host);
        }
    }
    names
}

/// The URL bundles tell nodes: `--public-url`, else `https://NAME:PORT` with the gRPC
/// listener's address when it is specific, else the first non-loopback certificate name.
pub fn public_url(given: Option<&str>, grpc: SocketAddr, names: &[String]) -> String {
    if let Some(url) = given {
        return url.trim_end_matches('/').to_string();
    }
    let port = grpc.port();
    if !grpc.ip().is_unspecified() {
        return match grpc.ip() {
            IpAddr::V6(ip) => format!("https://[{ip}]:{port}"),
            IpAddr::V4(ip) => format!("https://{ip}:{port}"),
        };
    }
    let host = names
        .iter()
        .find(|n| *n != "localhost" && n.parse::<IpAddr>().map_or(true, |ip| !ip.is_loopback()))
        .or_else(|| names.first())
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("https://[{ip}]:{port}"),
        _ => format!("https://{host}:{port}"),
    }
}

/// Exit code of `check-config` (and of `serve`) for settings control cannot run with.
pub const EXIT_BAD_CONFIG: u8 = 2;

/// Settings `serve` cannot run with, as `check-config` reports them (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("bad settings: {0}")]
pub struct BadSettings(pub String);

/// Checks `options` as `serve` would before binding, without binding, creating or writing
/// anything (so it is safe on a live host): the master key, the data directory, the database
/// URL, an existing CA, the gRPC names and URL, the ACME, DNS and notification flags. The summary
/// on success.
pub fn check(options: ServeOptions) -> Result<String, BadSettings> {
    let bad = |what: &str, error: &dyn std::fmt::Display| BadSettings(format!("{what}: {error}"));
    let key = match MasterKey::load(options.master_key_file.as_deref()) {
        Ok(_) => match &options.master_key_file {
            Some(file) => format!("master key from {}", file.display()),
            None => format!("master key from {}", store::MASTER_KEY_ENV),
        },
        Err(store::CryptoError::Missing) if options.dev => format!(
            "dev master key {} (created on first start)",
            options.data_dir.join(DEV_MASTER_KEY_FILE).display()
        ),
        Err(error) => return Err(bad("master key", &error)),
    };
    let dir = &options.data_dir;
    if dir.exists() {
        if !dir.is_dir() {
            return Err(bad(
                "--data-dir",
                &format!("{} is not a directory", dir.display()),
            ));
        }
    } else {
        let parent = dir
            .ancestors()
            .skip(1)
            .find(|p| p.exists() && !p.as_os_str().is_empty());
        if parent.is_some_and(|p| !p.is_dir()) {
            return Err(bad(
                "--data-dir",
                &format!(
                    "{} cannot be created (a parent is not a directory)",
                    dir.display()
                ),
            ));
        }
    }
    let url = database_url(dir, options.database.as_deref());
    let engine = if url.starts_with("sqlite:") {
        "SQLite"
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        "PostgreSQL"
    } else {
        return Err(bad(
            "--database",
            &format!("{url:?} is neither sqlite://PATH nor postgres://USER:PASS@HOST/DB"),
        ));
    };
    let ca = if dir.join("ca.crt").exists() || dir.join("ca.key").exists() {
        ControlCa::load_or_create(dir).map_err(|e| bad("CA", &e))?;
        "existing CA"
    } else {
        "CA created on first start"
    };
    let names = grpc_names(&options.grpc_names);
    for name in &names {
        if name.parse::<IpAddr>().is_err() {
            kokoa_model::HostName::new(name).map_err(|e| bad("--grpc-name", &e))?;
        }
    }
    let control_url = public_url(options.public_url.as_deref(), options.grpc, &names);
    match control_url.parse::<hyper::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
        _ => {
            return Err(bad(
                "--public-url",
                &format!("{control_url:?} is not an https://HOST:PORT URL"),
            ))
        }
    }
    let health = options.health.settings().map_err(|e| bad("health", &e))?;
    let dns = options.dns.setup().map_err(|e| bad("DNS", &e))?;
    let dns_summary = match &dns {
        Some(dns) => format!(
            "DNS {} for {} (TTL {} s)",
            dns.provider.kind(),
            dns.provider.zone(),
            dns.steering.ttl
        ),
        None => "DNS off".to_owned(),
    };
    let provider = dns.map(|dns| dns.provider);
    let acme = match options
        .acme
        .options(provider)
        .map_err(|e| bad("ACME", &e))?
    {
        Some((acme, _)) => format!("ACME from {}", acme.directory_url),
        None => "ACME off".to_owned(),
    };
    let notify = options
        .notify
        .options()
        .map_err(|e| bad("notifications", &e))?;
    let provision = match options
        .provision
        .setup(dir, health.public_port)
        .map_err(|e| bad("provisioner", &e))?
    {
        Some((provisioner, replace)) => format!(
            "; provisioner {}{}",
            provisioner.kind(),
            if replace.auto {
                format!(", auto-replace after {} s offline", replace.after.as_secs())
            } else {
                String::new()
            }
        ),
        None => String::new(),
    };
    let acme = format!(
        "{acme}; notifications: {} attempts, queue {} per target{provision}",
        notify.max_attempts, notify.queue_limit
    );
    Ok(format!(
        "settings ok: data {} ({engine}), {key}, {ca}; REST API {}, gRPC {} (nodes told \
         {control_url}); {acme}; {dns_summary}; edges probed every {} s",
        dir.display(),
        options.api,
        options.grpc,
        health.check_interval.as_secs(),
    ))
}

/// Runs control until `shutdown` resolves: the REST API on `options.api`, gRPC on
/// `options.grpc`. Returns an error (before binding anything) for a missing master key, an
/// unusable data directory, database or CA.
pub async fn run(
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let health_settings = options.health.settings()?;
    create_data_dir(&options.data_dir)?;
    let key = master_key(
        options.master_key_file.as_deref(),
        &options.data_dir,
        options.dev,
    )?;
    let url = database_url(&options.data_dir, options.database.as_deref());
    let store = store::open(&url, key)
        .await
        .with_context(|| format!("cannot open the store at {url}"))?;
    let notify = options
        .notify
        .options()
        .map_err(|e| BadSettings(format!("notifications: {e}")))?;
    let notifier = Notifier::new(store.clone(), notify)?;
    let dns = options.dns.setup()?;
    let provision = options
        .provision
        .setup(&options.data_dir, health_settings.public_port)
        .map_err(|e| BadSettings(e.to_string()))?;
    let certificates = options
        .acme
        .manager(store.clone(), dns.as_ref().map(|dns| dns.provider.clone()))?;
    let ca = ControlCa::load_or_create(&options.data_dir)?;
    let names = grpc_names(&options.grpc_names);
    let tls = ca.server_tls(&names)?;
    if options.api_tls == ApiTls::Plain && !options.api.ip().is_loopback() {
        anyhow::bail!(
            "--api-plain serves the dashboard and API without TLS, so only on a loopback address; \
             {} is not one (drop --api-plain to serve HTTPS with control's CA)",
            options.api
        );
    }
    // The API listens on loopback by default, so its certificate always covers loopback too.
    let mut api_names = if options.api_names.is_empty() {
        names.clone()
    } else {
        options.api_names.clone()
    };
    for local in ["localhost", "127.0.0.1"] {
        if !api_names.iter().any(|n| n == local) {
            api_names.push(local.to_string());
        }
    }
    let api_certificate = match &options.api_tls {
        ApiTls::Plain => None,
        ApiTls::Files { cert, key } => {
            let read = |path: &Path| {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))
            };
            let key = https::certified_key(&read(cert)?, &read(key)?)
                .context("--api-tls-cert / --api-tls-key")?;
            Some(https::ApiCertificate::new(key))
        }
        ApiTls::ControlCa | ApiTls::Acme(_) => {
            let signed = ca.server_tls(&api_names)?;
            Some(https::ApiCertificate::new(https::certified_key(
                &signed.chain_pem(),
                signed.key_pem(),
            )?))
        }
    };

    let api_listener = TcpListener::bind(options.api)
        .await
        .with_context(|| format!("cannot listen on {} (--api)", options.api))?;
    let grpc_listener = TcpListener::bind(options.grpc)
        .await
        .with_context(|| format!("cannot listen on {} (--grpc)", options.grpc))?;
    let api_addr = api_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;
    // From the bound address, so `--grpc 127.0.0.1:0` yields a URL with the real port.
    let control_url = public_url(options.public_url.as_deref(), grpc_addr, &names);

    let grpc_options = GrpcOptions {
        heartbeat_interval: health_settings.heartbeat_interval,
        ..GrpcOptions::default()
    };
    let grpc = GrpcServer::new(store.clone(), grpc_options);
    let live: Arc<dyn LiveNodes> = Arc::new(grpc.nodes());
    let health = HealthChecker::new(store.clone(), health_settings, Some(grpc.nodes()));
    // DNS steering: route names -> the edges serving them that the health checker judges
    // online or degraded.
    let steering = dns.as_ref().map(|dns| Steering {
        manager: dns.manager(),
        store: store.clone(),
        health: health.clone(),
        recheck: steer::DEFAULT_RECHECK,
    });
    let mut sources: Vec<&dyn MetricSource> = vec![health.metrics()];
    if let Some(manager) = &certificates {
        sources.push(manager.metrics());
    }
    if let Some(steering) = &steering {
        sources.push(steering.manager.metrics());
    }
    let registry = Arc::new(crate::metrics::registry(&sources));
    if let Some(manager) = &certificates {
        manager.watch_connected_nodes(live.clone());
    }
    let bundle = Arc::new(BundleSettings {
        control_url: control_url.clone(),
        ca_pem: ca.ca_pem().to_string(),
        enrollment_ttl: BUNDLE_TOKEN_TTL,
    });
    let replacer = provision.map(|(provisioner, settings)| {
        Arc::new(Replacer::new(
            store.clone(),
            provisioner,
            bundle.clone(),
            settings,
            Some(live.clone()),
        ))
    });
    let state = ApiState {
        store: store.clone(),
        bundle: Some(bundle),
        live: Some(live),
        accounts: Arc::new(Accounts::new(store.clone(), options.sessions)),
        replacer: replacer.clone(),
    };
    let api_router = api::router(state.clone());
    let dashboard = Web::new(
        api_router.clone(),
        store.clone(),
        state.accounts.clone(),
        WebOptions {
            secure_cookies: api_certificate.is_some(),
            ..options.web
        },
    );
    let app = api_router
        .merge(web::router(dashboard))
        .merge(crate::metrics::router(registry));
    let acceptor = api_certificate.clone().map(https::acceptor).transpose()?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        // Err means the sender is gone, which also means stop.
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let api_task = tokio::spawn(https::serve(
        api_listener,
        app,
        acceptor,
        options.api_max_connections,
        stopped(stop_rx.clone()),
    ));
    if let (ApiTls::Acme(name), Some(certificate)) = (&options.api_tls, &api_certificate) {
        tokio::spawn(
            certificate
                .clone()
                .follow_acme(store.clone(), name.clone(), stop_rx.clone()),
        );
    }
    let grpc_task = tokio::spawn(grpc.serve(grpc_listener, tls, stopped(stop_rx.clone())));
    let health_task = tokio::spawn(health.run(stopped(stop_rx.clone())));
    // The certificate manager is not a server: it ends only on shutdown, so it is awaited then.
    let acme_task = certificates.map(|manager| tokio::spawn(manager.run(stopped(stop_rx.clone()))));
    let notify_task = tokio::spawn(notifier.run(stopped(stop_rx.clone())));
    let provision_task = replacer.map(|r| tokio::spawn(r.run(stopped(stop_rx.clone()))));
    let dns_task = steering.map(|steering| tokio::spawn(steering.run(stopped(stop_rx))));
    let dashboard_url = https::dashboard_url(api_addr, api_certificate.is_some());
    tracing::info!(%api_addr, %grpc_addr, %control_url, %dashboard_url, engine = ?store.engine(), "kokoa-control serving");
    eprintln!(
        "kokoa-control: dashboard {dashboard_url}{}, REST API {dashboard_url}api/v1 (OpenAPI: \
         /api/v1/openapi.json), gRPC {grpc_addr} (nodes are told {control_url}), data {}",
        match options.api_tls {
            ApiTls::ControlCa | ApiTls::Acme(_) => format!(" (trust {})", ca.cert_path().display()),
            _ => String::new(),
        },
        options.data_dir.display()
    );
    if store.count_users().await.unwrap_or(0) == 0 {
        eprintln!(
            "kokoa-control: no dashboard user yet; create the first with \
             `kokoa-control user add NAME --data-dir {}`",
            options.data_dir.display()
        );
    }

    let mut api_task = api_task;
    let mut grpc_task = grpc_task;
    // Whichever ends first (a signal, or a server failing) stops the other.
    let first = tokio::select! {
        () = shutdown => None,
        result = &mut api_task => Some(("REST API", result.map(|r| r.map_err(anyhow::Error::from)))),
        result = &mut grpc_task => Some(("gRPC", result)),
    };
    let _ = stop_tx.send(true);
    if let Some((which, result)) = first {
        result
            .with_context(|| format!("{which} server task panicked"))?
            .with_context(|| format!("{which} server failed"))?;
        anyhow::bail!("{which} server stopped unexpectedly");
    }
    tracing::info!("shutting down");
    let api_result = api_task.await.context("REST API task panicked")?;
    let grpc_result = grpc_task.await.context("gRPC task panicked")?;
    health_task.await.context("health checker task panicked")?;
    if let Some(task) = acme_task {
        task.await.context("certificate manager task panicked")?;
    }
    notify_task.await.context("notifier task panicked")?;
    if let Some(task) = provision_task {
        task.await.context("provisioner task panicked")?;
    }
    if let Some(task) = dns_task {
        task.await.context("DNS steering task panicked")?;
    }
    api_result.context("REST API server failed")?;
    grpc_result.context("gRPC server failed")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_url_prefers_flag_then_specific_listener_then_names() {
        let any: SocketAddr = "0.0.0.0:7443".parse().expect("addr");
        let names = vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "ctl.example.com".into(),
        ];
        assert_eq!(
            public_url(Some("https://c.example:1/"), any, &names),
            "https://c.example:1"
        );
        assert_eq!(
            public_url(None, "127.0.0.1:9".parse().expect("addr"), &names),
            "https://127.0.0.1:9"
        );
        assert_eq!(
            public_url(None, any, &names),
            "https://ctl.example.com:7443"
        );
        assert_eq!(
            public_url(None, any, &["localhost".into()]),
            "https://localhost:7443"
        );
    }

    #[test]
    fn master_key_is_refused_without_configuration_unless_dev() {
        let dir = tempfile::tempdir().expect("dir");
        // With neither file nor (in this process, unset) env var, only dev works.
        if std::env::var(store::MASTER_KEY_ENV).is_err() {
            let error = master_key(None, dir.path(), false).expect_err("refused");
            assert!(error.to_string().contains("--master-key-file"), "{error}");
        }
        master_key(None, dir.path(), true).expect("dev key");
        assert!(dir.path().join(DEV_MASTER_KEY_FILE).exists());
    }
}
