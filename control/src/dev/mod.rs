//! `kokoa-control dev`: the whole product on loopback with one command. Control runs in this
//! process (embedded SQLite in the dev directory); the sample app too; the edge and the origin
//! are the real `kokoa-edge` and `kokoa-origin` binaries, started as child processes from the
//! bundles control hands out, so they enroll and take their routes, keys and certificate over
//! gRPC exactly as nodes on real hosts do. Control links neither node crate.
//!
//! The setup goes through the REST API ([`setup`]) and is idempotent, so a later run in the same
//! directory resumes: routes added meanwhile are still there. A run while another holds the
//! directory's lock fails before it changes anything.

pub mod app;
pub mod nodes;
pub mod setup;

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdTcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::net::TcpListener;

use crate::cli::client::{ApiClient, Trust};
use crate::serve::{self, ServeOptions};
use nodes::NodeProcess;

/// Where the dashboard is served, relative to the control API's base URL (`None` would print the
/// REST API instead).
pub const DASHBOARD_PATH: Option<&str> = Some("/");

/// How long `dev` waits for control, the nodes and the first config to be applied.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it waits for nodes it did not start (containers that may restart until their
/// bundle is there).
const EXTERNAL_READY_TIMEOUT: Duration = Duration::from_secs(600);

/// Everything `dev` runs with; every listener is on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Holds control's data, the node directories, the API token, the dev CA and the logs.
    pub dir: PathBuf,
    /// The host name routed to the sample app.
    pub host: String,
    /// Control's REST API port.
    pub api_port: u16,
    /// Control's gRPC port (the nodes' config stream).
    pub grpc_port: u16,
    /// Edge HTTPS port.
    pub https_port: u16,
    /// Edge plain HTTP port (redirects to HTTPS).
    pub http_port: u16,
    /// Edge WireGuard UDP port.
    pub tunnel_port: u16,
    /// Edge admin port (`/healthz`, `/metrics`); the origin's admin is this plus one.
    pub admin_port: u16,
    /// Sample app port.
    pub app_port: u16,
    /// The `kokoa-edge` binary; default: next to this executable, else `PATH`.
    pub edge_bin: Option<PathBuf>,
    /// The `kokoa-origin` binary; default: next to this executable, else `PATH`.
    pub origin_bin: Option<PathBuf>,
    /// Control's own log (`logs/control.log`) as JSON lines.
    pub log_json: bool,
    /// Where control's REST API and gRPC listen (127.0.0.1; 0.0.0.0 in a container).
    pub listen: IpAddr,
    /// The name nodes dial control by (in their bundles and control's gRPC certificate).
    pub control_host: String,
    /// The edge's WireGuard endpoint origins dial; default `127.0.0.1:TUNNEL_PORT`.
    pub edge_endpoint: Option<String>,
    /// Where the origin reaches the sample app; default: `dev` runs it on `127.0.0.1:APP_PORT`.
    pub app_address: Option<String>,
    /// Do not start the edge and origin: write their unpacked bundles into `DIR/edge` and
    /// `DIR/origin` for nodes that run elsewhere (the compose demo's containers).
    pub bundles_to: Option<PathBuf>,
}

impl DevOptions {
    /// The default ports, state in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            host: "app.kokoa.localhost".to_owned(),
            api_port: 7080,
            grpc_port: 7443,
            https_port: 8443,
            http_port: 8080,
            tunnel_port: 51820,
            admin_port: 9090,
            app_port: 8001,
            edge_bin: None,
            origin_bin: None,
            log_json: false,
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            control_host: "127.0.0.1".to_owned(),
            edge_endpoint: None,
            app_address: None,
            bundles_to: None,
        }
    }

    /// The default dev directory: `$XDG_STATE_HOME/kokoa-dev`, else `~/.local/state/kokoa-dev`,
    /// else `kokoa-dev` in the temporary directory.
    pub fn default_dir() -> PathBuf {
        let state = std::env::var_os("XDG_STATE_HOME")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|home| !home.is_empty())
                    .map(|home| PathBuf::from(home).join(".local/state"))
            });
        match state {
            Some(dir) => dir.join("kokoa-dev"),
            None => std::env::temp_dir().join("kokoa-dev"),
        }
    }

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    /// The REST API's base URL.
    pub fn api_url(&self) -> String {
        let ip = if self.listen.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            self.listen
        };
        let scheme = if self.api_tls() { "https" } else { "http" };
        format!("{scheme}://{}", SocketAddr::new(ip, self.api_port))
    }

    /// Whether control's API and dashboard speak HTTPS: plain HTTP is only allowed on
    /// loopback, so a dev control listening elsewhere (containers) uses its CA's certificate.
    pub fn api_tls(&self) -> bool {
        !self.listen.is_loopback()
    }

    /// Control's own CA, which signs the API's certificate when [`Self::api_tls`].
    pub fn control_ca_file(&self) -> PathBuf {
        self.dir.join("control").join("ca.crt")
    }

    /// A client of this control's API.
    fn api_client(&self, token: String) -> anyhow::Result<ApiClient> {
        let trust = if self.api_tls() {
            Trust::CaFile(self.control_ca_file())
        } else {
            Trust::SystemRoots
        };
        Ok(ApiClient::with_trust(&self.api_url(), Some(token), trust)?)
    }

    /// The edge endpoint control gives origins.
    pub fn edge_endpoint(&self) -> String {
        self.edge_endpoint
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{}", self.tunnel_port))
    }

    /// Where the origin reaches the sample app.
    pub fn app_address(&self) -> String {
        self.app_address
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{}", self.app_port))
    }

    /// The sample app's URL through the edge.
    pub fn app_url(&self) -> String {
        format!("https://{}:{}/", self.host, self.https_port)
    }

    /// The file holding the API token `dev` made.
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("api-token")
    }

    /// The dev CA that signed the edge's certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("dev-ca.pem")
    }

    /// The log directory.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }
}

/// The dev directory's lock, held while `dev` runs: a second `dev` on the same directory fails
/// before it changes anything.
#[derive(Debug)]
pub struct DevLock {
    file: File,
    path: PathBuf,
}

impl DevLock {
    /// Takes the lock in `dir` (created when missing), or says which process holds it.
    pub fn acquire(dir: &Path) -> anyhow::Result<DevLock> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the dev directory {}", dir.display()))?;
        let path = dir.join("dev.lock");
        // No truncation before the lock is ours: the holder's pid stays readable.
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                bail!(
                    "another `kokoa-control dev` is running in {} (pid {}); stop it first, or \
                     pass --dir to run a second one with other --*-port values. Nothing was changed.",
                    dir.display(),
                    if holder.is_empty() { "unknown" } else { holder }
                );
            }
            Err(std::fs::TryLockError::Error(error)) => {
                return Err(error).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        Ok(DevLock { file, path })
    }

    /// Records this process's id in the lock file (for the message a second run prints).
    pub fn record_pid(&mut self) -> anyhow::Result<()> {
        let pid = std::process::id().to_string();
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file
            .write_all(pid.as_bytes())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Fails, naming the flag, when one of the ports `dev` needs is taken: checked before any state
/// is touched. Only control's (and the app's, when `dev` runs it) when the nodes run elsewhere.
pub fn check_ports(options: &DevOptions) -> anyhow::Result<()> {
    let local_nodes = options.bundles_to.is_none();
    let mut tcp = vec![
        (options.listen, options.api_port, "--api-port"),
        (options.listen, options.grpc_port, "--grpc-port"),
    ];
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if local_nodes {
        tcp.extend([
            (loopback, options.https_port, "--https-port"),
            (loopback, options.http_port, "--http-port"),
            (loopback, options.admin_port, "--admin-port"),
            (
                loopback,
                options
                    .admin_port
                    .checked_add(1)
                    .context("--admin-port is too large")?,
                "--admin-port (plus one, the origin's admin)",
            ),
        ]);
    }
    if options.app_address.is_none() {
        tcp.push((loopback, options.app_port, "--app-port"));
    }
    for (i, (ip, port, flag)) in tcp.iter().enumerate() {
        if tcp[..i].iter().any(|(_, other, _)| other == port) {
            bail!("port {port} is given twice ({flag}); every dev port must differ");
        }
        StdTcpListener::bind(SocketAddr::new(*ip, *port))
            .with_context(|| format!("{ip}:{port} is in use; pick another with {flag}"))?;
    }
    if local_nodes {
        UdpSocket::bind(DevOptions::loopback(options.tunnel_port)).with_context(|| {
            format!(
                "UDP 127.0.0.1:{} is in use; pick another with --tunnel-port",
                options.tunnel_port
            )
        })?;
    }
    Ok(())
}

/// Runs control, the sample app, an origin and an edge until `shutdown` resolves (or one of them
/// fails), printing the URLs and the next commands to try once the app is served. `lock` is the
/// directory's [`DevLock`], taken by the caller before anything else.
pub async fn run(
    options: &DevOptions,
    lock: DevLock,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut lock = lock;
    check_ports(options)?;
    let binaries = match options.bundles_to {
        Some(_) => None,
        None => Some((
            nodes::find_binary("kokoa-edge", options.edge_bin.as_deref())?,
            nodes::find_binary("kokoa-origin", options.origin_bin.as_deref())?,
        )),
    };
    lock.record_pid()?;
    std::fs::create_dir_all(options.log_dir())?;
    let control_log = options.log_dir().join("control.log");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&control_log)
        .with_context(|| format!("cannot open {}", control_log.display()))?;
    kokoa_node::telemetry::init_with(options.log_json, false, std::sync::Mutex::new(log_file));
    eprintln!(
        "kokoa-control dev: starting in {} (logs in {}) ...",
        options.dir.display(),
        options.log_dir().display()
    );

    let data_dir = options.dir.join("control");
    let token = setup::api_token(&data_dir, &options.token_file()).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut serve_options = ServeOptions::new(&data_dir);
    serve_options.dev = true;
    serve_options.api = SocketAddr::new(options.listen, options.api_port);
    if !options.api_tls() {
        serve_options.api_tls = serve::ApiTls::Plain;
    }
    serve_options.grpc = SocketAddr::new(options.listen, options.grpc_port);
    serve_options.grpc_names = vec![options.control_host.clone()];
    for name in ["127.0.0.1", "localhost"] {
        if options.control_host != name {
            serve_options.grpc_names.push(name.into());
        }
    }
    serve_options.public_url = Some(format!(
        "https://{}:{}",
        options.control_host, options.grpc_port
    ));
    let mut control = spawn_control(serve_options, stopped(stop_rx))?;

    let app = match options.app_address {
        Some(_) => None,
        None => {
            let app_addr = DevOptions::loopback(options.app_port);
            let app_listener = TcpListener::bind(app_addr)
                .await
                .with_context(|| format!("binding the sample app on {app_addr} (--app-port)"))?;
            Some(tokio::spawn(app::serve(app_listener)))
        }
    };

    let mut control_ended = false;
    let result = async {
        let api = options.api_client(token.clone())?;
        tokio::select! {
            ready = setup::wait_for_api(&api, READY_TIMEOUT) => ready?,
            finished = &mut control => {
                control_ended = true;
                return Err(early_exit("control", finished));
            }
        }
        let plan = setup::apply(&api, options).await?;
        let Some((edge_bin, origin_bin)) = &binaries else {
            // The nodes run elsewhere: they enroll from the bundles just written.
            let ready = tokio::select! {
                ready = setup::wait_in_sync(&api, EXTERNAL_READY_TIMEOUT) => ready,
                finished = &mut control => {
                    control_ended = true;
                    Err(early_exit("control", finished))
                }
            };
            ready?;
            println!("{}", external_banner(options));
            return tokio::select! {
                () = shutdown => Ok(()),
                finished = &mut control => {
                    control_ended = true;
                    Err(early_exit("control", finished))
                }
            };
        };
        let mut origin = NodeProcess::start(
            "origin",
            origin_bin,
            &plan.origin_config,
            options.admin_port + 1,
            &options.log_dir(),
        )?;
        let mut edge = NodeProcess::start(
            "edge",
            edge_bin,
            &plan.edge_config,
            options.admin_port,
            &options.log_dir(),
        )?;
        let ready = async {
            origin.wait_healthy(READY_TIMEOUT).await?;
            edge.wait_healthy(READY_TIMEOUT).await?;
            setup::wait_in_sync(&api, READY_TIMEOUT).await
        };
        let ready = tokio::select! {
            ready = ready => ready,
            finished = &mut control => {
                control_ended = true;
                Err(early_exit("control", finished))
            }
        };
        let outcome = match ready {
            Ok(()) => {
                println!("{}", banner(options, &plan));
                tokio::select! {
                    () = shutdown => Ok(()),
                    exit = origin.exited() => Err(exit),
                    exit = edge.exited() => Err(exit),
                    finished = &mut control => {
                        control_ended = true;
                        Err(early_exit("control", finished))
                    }
                }
            }
            Err(error) => Err(error),
        };
        // The edge first, so no request finds it up and the origin gone.
        edge.stop().await;
        origin.stop().await;
        outcome
    }
    .await;

    stop_tx.send_replace(true);
    if let Some(app) = app {
        app.abort();
    }
    if !control_ended {
        if let Ok(Ok(Err(error))) = tokio::time::timeout(Duration::from_secs(10), control).await {
            if result.is_ok() {
                return Err(error.context("control failed while stopping"));
            }
        }
    }
    result
}

/// Runs control on a runtime of its own, on its own thread (as if it were another process on
/// the same machine); its result arrives on the returned channel.
fn spawn_control(
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<anyhow::Result<()>>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("kokoa-control".into())
        .spawn(move || {
            let result = tokio::runtime::Runtime::new()
                .context("cannot start control's runtime")
                .and_then(|runtime| runtime.block_on(serve::run(options, shutdown)));
            let _ = done_tx.send(result);
        })
        .context("cannot start control's thread")?;
    Ok(done_rx)
}

fn early_exit(
    what: &str,
    finished: Result<anyhow::Result<()>, tokio::sync::oneshot::error::RecvError>,
) -> anyhow::Error {
    match finished {
        Ok(Ok(())) => anyhow::anyhow!("the dev {what} stopped unexpectedly"),
        Ok(Err(error)) => error.context(format!("the dev {what} failed")),
        Err(_) => anyhow::anyhow!("the dev {what} panicked"),
    }
}

/// A path as a shell word (quoted when it holds anything but safe characters).
fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@%=".contains(c))
    {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// What `dev` prints once the app is served: where to look and the next three commands.
pub fn banner(options: &DevOptions, plan: &setup::Plan) -> String {
    let me = std::env::current_exe()
        .map(|exe| shell_word(&exe))
        .unwrap_or_else(|_| "kokoa-control".into());
    let ca = shell_word(&options.ca_file());
    let https = options.https_port;
    let curl = |host: &str| {
        format!("curl --cacert {ca} --resolve {host}:{https}:127.0.0.1 https://{host}:{https}/")
    };
    let api = options.api_url();
    let dashboard = match DASHBOARD_PATH {
        Some(path) => format!(
            "{api}{path}   (first user: {me} user add NAME --data-dir {})",
            shell_word(&options.dir.join("control"))
        ),
        None => format!(
            "not built yet; the control API is {api}/api/v1 (OpenAPI: {api}/api/v1/openapi.json)"
        ),
    };
    let new_host = match &plan.wildcard_parent {
        Some(parent) => format!("hello.{parent}"),
        None => format!("hello-{}", options.host),
    };
    format!(
        "\n\
Kokoa is running on loopback: control, an edge, an origin and a sample app, enrolled through control.\n\
\n  app        {app}\n  \
dashboard  {dashboard}\n  \
state      {dir}   (logs in {logs})\n\
\n  {curl_app}\n\
\nNext, in another terminal:\n\
\n  export KOKOA_API_URL={api}{ca_env} KOKOA_API_TOKEN=$(cat {token})\n\
\n  # 1. add a route\n  \
{me} route add {new_host} --origin {origin} --service {service}\n\
\n  # 2. watch it go live: every node applied the new config version, and the edge serves it\n  \
{me} status\n  \
{curl_new}\n\
\n  # 3. rotate the origin's WireGuard key (in place: open connections survive)\n  \
{me} origin rotate-key {origin}\n\
\nCtrl-C stops everything; `{me} dev` again resumes from {dir}.",
        app = options.app_url(),
        dir = shell_word(&options.dir),
        logs = shell_word(&options.log_dir()),
        curl_app = curl(&options.host),
        curl_new = curl(&new_host),
        token = shell_word(&options.token_file()),
        ca_env = if options.api_tls() {
            format!(" KOKOA_CA_FILE={}", shell_word(&options.control_ca_file()))
        } else {
            String::new()
        },
        origin = setup::ORIGIN,
        service = setup::SERVICE,
    )
}

/// What `dev --bundles-to` prints once the nodes elsewhere run control's config.
pub fn external_banner(options: &DevOptions) -> String {
    format!(
        "\nKokoa control is running (REST API port {api}, gRPC {host}:{grpc}); the edge ({edge}) and \
         the origin enrolled from the bundles in {bundles} and run the current config.\n\
         The sample app is routed as {app_host}; the API token is in {token}.",
        api = options.api_port,
        host = options.control_host,
        grpc = options.grpc_port,
        edge = options.edge_endpoint(),
        bundles = options
            .bundles_to
            .as_deref()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        app_host = options.host,
        token = options.token_file().display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word(Path::new("/tmp/kokoa-dev")), "/tmp/kokoa-dev");
        assert_eq!(shell_word(Path::new("/tmp/my dir")), "'/tmp/my dir'");
        assert_eq!(shell_word(Path::new("/tmp/it's")), r"'/tmp/it'\''s'");
    }

    #[test]
    fn a_second_lock_on_the_same_directory_fails_without_changing_it() {
        let dir = tempfile::tempdir().expect("dir");
        let mut first = DevLock::acquire(dir.path()).expect("first lock");
        first.record_pid().expect("pid");
        let before = std::fs::read(dir.path().join("dev.lock")).expect("lock file");
        let error = DevLock::acquire(dir.path()).expect_err("second lock refused");
        let message = format!("{error:#}");
        assert!(
            message.contains("another `kokoa-control dev` is running"),
            "{message}"
        );
        assert!(
            message.contains(&std::process::id().to_string()),
            "{message}"
        );
        assert_eq!(
            std::fs::read(dir.path().join("dev.lock")).expect("lock"),
            before
        );
        drop(first);
        DevLock::acquire(dir.path()).expect("free again once the first is gone");
    }

    #[test]
    fn a_taken_port_is_named_by_its_flag() {
        let free = || {
            StdTcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port()
        };
        let taken = StdTcpListener::bind("127.0.0.1:0").expect("bind");
        let mut options = DevOptions::new("/nonexistent");
        // api and grpc are checked first: free; https is the taken one.
        options.api_port = free();
        options.grpc_port = loop {
            let port = free();
            if port != options.api_port {
                break port;
            }
        };
        options.https_port = taken.local_addr().expect("addr").port();
        let error = check_ports(&options).expect_err("taken");
        assert!(format!("{error:#}").contains("--https-port"), "{error:#}");
    }
}
