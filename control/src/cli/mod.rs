//! The `kokoa-control` command line: `serve` and `dev` run control; `token create` works on
//! the database directly (to make the first API token); every other command is a client of the
//! REST API (`--api-url` / `KOKOA_API_URL`, `--token` / `KOKOA_API_TOKEN`) that prints aligned
//! tables, or the API's JSON with `--json`.

pub mod client;
mod commands;
mod direct;
mod limits;
mod notify;
mod show;
pub mod table;
mod tcp_route;
mod views;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};
use hyper::Method;
use serde_json::{json, Value};
use time::OffsetDateTime;

use crate::account::SessionPolicy;
use crate::acme::AcmeArgs;
use crate::api::{
    EdgeView, NodeDetail, NodeStatusView, OriginView, RouteView, ServiceView, StatusSummary,
};
use crate::dev::{self, DevOptions};
use crate::dns::DnsArgs;
use crate::health::args::HealthArgs;
use crate::serve::{self, ServeOptions};
use crate::store::{self, ApiToken, IssuedNodeToken, Role, User};
use client::{segment, ApiClient, DEFAULT_API_URL};
use commands::Api;
use limits::{EdgeSettingsArgs, RouteLimitArgs};
pub use tcp_route::TcpRouteCommand;
#[allow(clippy::wildcard_imports)]
use views::*;

/// Kokoa control plane: the source of truth for origins, services, edges and routes, streaming
/// config to every edge and origin over gRPC.
#[derive(Debug, Parser)]
#[command(name = "kokoa-control", version = crate::LONG_VERSION)]
pub struct Cli {
    /// Log as one JSON object per line.
    #[arg(long, global = true)]
    pub log_json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How the client commands reach control: only they take these flags (server commands such as
/// `serve` and `dev` do not).
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// REST API of a running control (`serve --api`).
    #[arg(long, global = true, env = "KOKOA_API_URL", default_value = DEFAULT_API_URL)]
    pub api_url: String,
    /// API bearer token (from `token create`).
    #[arg(long, global = true, env = "KOKOA_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// For an https:// API URL: trust this CA certificate (PEM; control's is DATA_DIR/ca.crt)
    /// instead of the system's roots.
    #[arg(long, global = true, env = "KOKOA_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ClientArgs {
    fn api(&self) -> anyhow::Result<Api> {
        let trust = match &self.ca_file {
            Some(path) => client::Trust::CaFile(path.clone()),
            None => client::Trust::SystemRoots,
        };
        Ok(Api {
            client: ApiClient::with_trust(&self.api_url, self.token.clone(), trust)?,
            json: self.json,
        })
    }
}

/// Where the database is, for commands that open it directly.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Data directory: holds control.db (by default) and the CA.
    #[arg(long, env = "KOKOA_DATA_DIR", default_value = serve::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Database URL: sqlite://PATH or postgres://...; default sqlite://DATA_DIR/control.db.
    #[arg(long, env = "KOKOA_DATABASE")]
    pub database: Option<String>,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run control: the REST API and the gRPC config stream.
    Serve(Box<ServeArgs>),
    /// Run Kokoa end to end on loopback: control (embedded SQLite), the real kokoa-edge and
    /// kokoa-origin enrolled through it, and a sample app; prints the app URL and the next
    /// commands to try. Ctrl-C stops it; a later run resumes from the same directory.
    Dev(DevArgs),
    /// Check `serve`'s settings (master key, data directory, database URL, CA, ACME flags)
    /// without binding any port or writing anything: exit 0 if usable, 2 if not.
    CheckConfig(Box<ServeArgs>),
    /// Run only the sample app that `dev` publishes (for containers and demos).
    SampleApp {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8001")]
        listen: SocketAddr,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (kokoa-control.1 and one per subcommand) into a directory.
    Man {
        /// Where to write them.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// API tokens (`create` works on the database directly, so the first needs no API token).
    Token {
        /// How to reach control.
        #[command(flatten)]
        client: ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Dashboard users (`add` works on the database directly, so the first needs nothing else).
    User {
        /// How to reach control.
        #[command(flatten)]
        client: ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Origins: private hosts running kokoa-origin.
    Origin {
        /// How to reach control.
        #[command(flatten)]
        client: ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: OriginCommand,
    },
    /// Services origins publish into the tunnel.
    Service {
        /// How to reach control.
        #[command(flatten)]
        client: ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: ServiceCommand,
    },
    /// Edges: public hosts running kokoa-edge.
    Edge {
        /// How to reach control.
        #[command(flatten)]
        client: ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: EdgeCommand,
    },
    /// HTTP routes: host names to origin services.
    Route {
        /// How to reach control.
        #[command(flatten)]
        client: ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// Raw TCP routes: public ports on the edges to origin services.
    TcpRoute {
        /// How to reach control.
        #[command(flatten)]
        client: ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: TcpRouteCommand,
    },
    /// TLS certificates: ACME-issued and uploaded, with their status.
    Certificate {
        /// How to reach control.
        #[command(flatten)]
        client: ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: CertificateCommand,
    },
    /// One-time node enrollment tokens.
    NodeToken {
        /// How to reach control.
        #[command(flatten)]
        client: ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: NodeTokenCommand,
    },
    /// Download a node's install bundle (config, control CA, enrollment token, systemd unit,
    /// install script).
    Bundle {
        /// Edge or origin.
        kind: NodeKind,
        /// The node's name.
        name: String,
        /// Where to write the tar.gz.
        #[arg(short, long)]
        output: PathBuf,
        /// Put the node's program in the bundle too, so `install.sh` needs nothing but the
        /// bundle: the kokoa-edge / kokoa-origin next to this program, or the file given (e.g.
        /// an aarch64 build for a Raspberry Pi origin).
        #[arg(long, value_name = "PATH", num_args = 0..=1)]
        with_binary: Option<Option<PathBuf>>,
        /// How to reach control.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every node: applied config version, last heartbeat, last rejected config.
    Status {
        /// How to reach control.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Notifications: webhook and Slack targets fed from the audit trail, and their deliveries.
    Notify {
        /// How to reach control.
        #[command(flatten)]
        client: ClientArgs,
        /// What to do.
        #[command(subcommand)]
        command: notify::NotifyCommand,
    },
}

/// `serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where the data lives.
    #[command(flatten)]
    pub store: StoreArgs,
    /// File with the base64 master key that seals private keys (else KOKOA_MASTER_KEY).
    #[arg(long, env = "KOKOA_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Development only: without a master key, create one in DATA_DIR/master.key.
    #[arg(long)]
    pub dev: bool,
    /// REST API and dashboard listener (HTTPS; see --api-plain).
    #[arg(long, env = "KOKOA_API_LISTEN", default_value = serve::DEFAULT_API)]
    pub api: SocketAddr,
    /// DNS name or IP in the API's certificate from control's CA (repeatable; default: the
    /// --grpc-name names).
    #[arg(long = "api-name")]
    pub api_names: Vec<String>,
    /// Serve the API and dashboard with this PEM certificate chain (with --api-tls-key)
    /// instead of one from control's CA.
    #[arg(long, requires = "api_tls_key", conflicts_with_all = ["api_tls_acme", "api_plain"])]
    pub api_tls_cert: Option<PathBuf>,
    /// The private key of --api-tls-cert.
    #[arg(long, requires = "api_tls_cert")]
    pub api_tls_key: Option<PathBuf>,
    /// Serve the API and dashboard with control's ACME certificate for this name (control's
    /// CA-signed one until it is issued).
    #[arg(long, conflicts_with = "api_plain")]
    pub api_tls_acme: Option<String>,
    /// Plain HTTP instead of HTTPS: refused unless --api is a loopback address.
    #[arg(long)]
    pub api_plain: bool,
    /// API connections open at once.
    #[arg(long, default_value_t = crate::https::DEFAULT_MAX_CONNECTIONS)]
    pub api_max_connections: usize,
    /// A dashboard session ends after this many idle minutes.
    #[arg(long, default_value_t = 30)]
    pub session_idle_minutes: u64,
    /// A dashboard session ends this many hours after login.
    #[arg(long, default_value_t = 12)]
    pub session_max_hours: u64,
    /// Failed logins within 15 minutes that lock an account for 15 minutes.
    #[arg(long, default_value_t = 5)]
    pub login_max_failures: u32,
    /// Failed logins from one address (IPv6: one /64) within 15 minutes that lock it out.
    #[arg(long, default_value_t = 20)]
    pub login_max_failures_per_address: u32,
    /// Live event streams (dashboard) open at once.
    #[arg(long, default_value_t = crate::web::feed::DEFAULT_MAX_STREAMS)]
    pub ui_max_streams: usize,
    /// gRPC listener (TLS with control's CA).
    #[arg(long, env = "KOKOA_GRPC_LISTEN", default_value = serve::DEFAULT_GRPC)]
    pub grpc: SocketAddr,
    /// DNS name or IP in the gRPC server certificate (repeatable; default: localhost,
    /// 127.0.0.1 and the host name).
    #[arg(long = "grpc-name", env = "KOKOA_GRPC_NAMES", value_delimiter = ',')]
    pub grpc_names: Vec<String>,
    /// The gRPC URL bundles tell nodes, e.g. https://control.example.com:7443.
    #[arg(long, env = "KOKOA_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Automatic certificates.
    #[command(flatten)]
    pub acme: AcmeArgs,
    /// Node health.
    #[command(flatten)]
    pub health: HealthArgs,
    /// Notification delivery.
    #[command(flatten)]
    pub notify: crate::notify::NotifyArgs,
    /// The DNS provider (ACME DNS-01, DNS steering).
    #[command(flatten)]
    pub dns: DnsArgs,
    /// The edge provisioner and automatic replacement.
    #[command(flatten)]
    pub provision: crate::provision::ProvisionArgs,
}

/// `dev` flags.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for control's data, the nodes' files, the API token, the dev CA and the logs
    /// (default: $XDG_STATE_HOME/kokoa-dev or ~/.local/state/kokoa-dev).
    #[arg(long, env = "KOKOA_DEV_DIR")]
    pub dir: Option<PathBuf>,
    /// Host name routed to the sample app (names under .localhost reach 127.0.0.1 in browsers
    /// and curl).
    #[arg(long, default_value = "app.kokoa.localhost")]
    pub host: String,
    /// Control's REST API port on 127.0.0.1.
    #[arg(long, default_value_t = 7080)]
    pub api_port: u16,
    /// Control's gRPC port on 127.0.0.1.
    #[arg(long, default_value_t = 7443)]
    pub grpc_port: u16,
    /// Edge HTTPS port on 127.0.0.1.
    #[arg(long, default_value_t = 8443)]
    pub https_port: u16,
    /// Edge plain HTTP port on 127.0.0.1.
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// Edge WireGuard UDP port on 127.0.0.1.
    #[arg(long, default_value_t = 51820)]
    pub tunnel_port: u16,
    /// Edge admin port; the origin's admin listens on the next port.
    #[arg(long, default_value_t = 9090)]
    pub admin_port: u16,
    /// Sample app port on 127.0.0.1.
    #[arg(long, default_value_t = 8001)]
    pub app_port: u16,
    /// The kokoa-edge program (default: next to this one, else in PATH).
    #[arg(long, env = "KOKOA_EDGE_BIN")]
    pub edge_bin: Option<PathBuf>,
    /// The kokoa-origin program (default: next to this one, else in PATH).
    #[arg(long, env = "KOKOA_ORIGIN_BIN")]
    pub origin_bin: Option<PathBuf>,
    /// Where control's REST API and gRPC listen (0.0.0.0 in a container).
    #[arg(long, default_value = "127.0.0.1")]
    pub listen: std::net::IpAddr,
    /// The name nodes dial control by (in their bundles and control's gRPC certificate).
    #[arg(long, default_value = "127.0.0.1")]
    pub control_host: String,
    /// The edge's WireGuard endpoint that origins dial (default 127.0.0.1:TUNNEL_PORT).
    #[arg(long)]
    pub edge_endpoint: Option<String>,
    /// Where the origin reaches the sample app (default: dev runs it on 127.0.0.1:APP_PORT).
    #[arg(long)]
    pub app_address: Option<String>,
    /// Do not start the edge and origin: write their unpacked bundles into DIR/edge and
    /// DIR/origin for nodes that run elsewhere (containers: see compose.yaml).
    #[arg(long, value_name = "DIR")]
    pub bundles_to: Option<PathBuf>,
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token on the database directly and print its secret (shown once).
    Create {
        /// Unique name; changes made with the token are recorded as `api:NAME`.
        #[arg(long)]
        name: String,
        /// Expire after this many days (default: never).
        #[arg(long)]
        ttl_days: Option<u64>,
        /// What requests with it may do: admin (everything) or viewer (read only).
        #[arg(long, default_value = "admin")]
        role: Role,
        /// Where the database is.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List API tokens (through the API).
    List,
    /// Revoke an API token by name (through the API); requests with it get 401 at once.
    Revoke {
        /// The token's name.
        name: String,
    },
}

/// `user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a dashboard user on the database directly; the password is read from the
    /// terminal's standard input (one line), or from KOKOA_USER_PASSWORD.
    Add {
        /// Login name.
        name: String,
        /// admin (everything) or viewer (read only).
        #[arg(long, default_value = "admin")]
        role: Role,
        /// Where the database is.
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List dashboard users (through the API).
    List,
    /// Delete a dashboard user (through the API).
    Rm {
        /// The user's name.
        name: String,
    },
}

/// `origin` subcommands.
#[derive(Debug, Subcommand)]
pub enum OriginCommand {
    /// Create an origin (allocates its 10.100.X.0/24 and a WireGuard key pair).
    Add {
        /// Unique name.
        name: String,
        /// Use this WireGuard public key (you keep the private key) instead of a generated pair.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// List origins.
    List,
    /// Delete an origin (refused while routes use its services).
    Rm {
        /// Name or id.
        name: String,
    },
    /// Give an origin a new WireGuard key pair (applied in place; streams continue).
    RotateKey {
        /// Name or id.
        name: String,
    },
    /// An origin's state and why, its last heartbeat (rates, CPU, memory, tunnel peers,
    /// services) and its latest service checks.
    Show {
        /// Name or id.
        name: String,
    },
}

/// What a service speaks.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProtocolArg {
    /// HTTP/1.1 or HTTP/2 (reachable through routes).
    Http,
    /// Raw TCP.
    Tcp,
}

/// `service` subcommands.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Publish a local service of an origin into the tunnel.
    Add {
        /// The origin (name or id).
        origin: String,
        /// Service name, unique per origin.
        name: String,
        /// Port inside the tunnel.
        #[arg(long)]
        port: u32,
        /// Where the app listens on the origin host (default 127.0.0.1:PORT).
        #[arg(long)]
        local: Option<String>,
        /// What it speaks.
        #[arg(long, value_enum, default_value = "http")]
        protocol: ProtocolArg,
        /// HTTP path for end-to-end health checks.
        #[arg(long)]
        health_path: Option<String>,
    },
    /// List services (of one origin).
    List {
        /// Only this origin's.
        origin: Option<String>,
    },
    /// Delete a service (refused while routes use it).
    Rm {
        /// The origin.
        origin: String,
        /// The service.
        name: String,
    },
}

/// `edge` subcommands.
#[derive(Debug, Subcommand)]
pub enum EdgeCommand {
    /// Create an edge (with a generated WireGuard key pair).
    Add {
        /// Unique name.
        name: String,
        /// WireGuard endpoint origins dial (HOST:PORT).
        #[arg(long)]
        endpoint: String,
        /// Origin it serves (repeatable).
        #[arg(long = "origin")]
        origins: Vec<String>,
        /// Public IP address DNS should point at (and control probes).
        #[arg(long)]
        public_ip: Option<String>,
        /// The edge's admin listener (HOST:PORT) control probes /healthz on.
        #[arg(long)]
        admin_address: Option<String>,
        /// Use this WireGuard public key (you keep the private key) instead of a generated pair.
        #[arg(long)]
        public_key: Option<String>,
        /// `[limits]` defaults and tunnel settings control sends the edge.
        #[command(flatten)]
        settings: EdgeSettingsArgs,
    },
    /// Change an edge's public address, admin listener, `[limits]` defaults and tunnel
    /// settings (flags not given stay as they are).
    Set {
        /// Name or id.
        name: String,
        /// Public IP address DNS should point at (`none` clears it).
        #[arg(long)]
        public_ip: Option<String>,
        /// Admin listener (HOST:PORT) control probes /healthz on (`none` clears it).
        #[arg(long)]
        admin_address: Option<String>,
        /// What to set.
        #[command(flatten)]
        settings: EdgeSettingsArgs,
        /// Stop sending `[limits]`: the edge goes back to its file's.
        #[arg(long, conflicts_with = "limits")]
        clear_limits: bool,
        /// Stop sending tunnel settings: the edge goes back to its file's.
        #[arg(long, conflicts_with_all = ["mtu", "tcp_buffer"])]
        clear_tunnel: bool,
    },
    /// List edges.
    List,
    /// An edge's state and why, its last heartbeat (rates, CPU, memory, tunnel peers with
    /// their last handshake, applied version, last NACK) and its latest probes.
    Show {
        /// Name or id.
        name: String,
    },
    /// Drain an edge: it leaves DNS (state draining) and keeps running until undrained.
    Drain {
        /// Name or id.
        name: String,
    },
    /// Undrain an edge: it returns to DNS once its checks pass.
    Undrain {
        /// Name or id.
        name: String,
    },
    /// Delete an edge.
    Rm {
        /// Name or id.
        name: String,
    },
    /// Make an edge serve an origin.
    Assign {
        /// The edge.
        edge: String,
        /// The origin.
        origin: String,
    },
    /// Stop an edge serving an origin.
    Unassign {
        /// The edge.
        edge: String,
        /// The origin.
        origin: String,
    },
    /// Give an edge a new WireGuard key pair.
    RotateKey {
        /// Name or id.
        name: String,
    },
    /// Create an edge on a new machine made by control's provisioner (`serve --provisioner`).
    Provision {
        /// Unique name.
        name: String,
        /// Origin it serves (repeatable).
        #[arg(long = "origin")]
        origins: Vec<String>,
    },
    /// Replace an edge: provision a new one serving the same origins, wait until it serves,
    /// then drain and destroy the old one.
    Replace {
        /// Name or id.
        name: String,
    },
    /// Destroy an edge's machine (made by control's provisioner) and delete the edge.
    Destroy {
        /// Name or id.
        name: String,
    },
    /// Replacements: in flight and finished, newest first.
    Replacements,
}

/// `certificate` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertificateCommand {
    /// Every certificate: names, source, issuer, expiry and the last ACME error.
    List,
}

/// `route` subcommands.
#[derive(Debug, Subcommand)]
pub enum RouteCommand {
    /// Route a host name (exact or *.wildcard) to an origin's service.
    Add {
        /// Host name.
        host: String,
        /// The origin.
        #[arg(long)]
        origin: String,
        /// The origin's service.
        #[arg(long)]
        service: String,
        /// Further host names (repeatable).
        #[arg(long = "alias")]
        aliases: Vec<String>,
        /// The route's own limits.
        #[command(flatten)]
        limits: RouteLimitArgs,
    },
    /// Change a route (flags not given stay as they are).
    Set {
        /// Host name or id.
        host: String,
        /// A new target origin (with --service).
        #[arg(long)]
        origin: Option<String>,
        /// A new target service (of --origin, or of the route's origin).
        #[arg(long)]
        service: Option<String>,
        /// Replaces the further host names (repeatable).
        #[arg(long = "alias")]
        aliases: Vec<String>,
        /// The route's own limits; given ones replace the current ones.
        #[command(flatten)]
        limits: RouteLimitArgs,
        /// Remove every allowed network.
        #[arg(long, conflicts_with = "allow")]
        clear_allow: bool,
        /// Remove every denied network.
        #[arg(long, conflicts_with = "deny")]
        clear_deny: bool,
        /// Remove all of the route's own limits (the edge's defaults apply).
        #[arg(long)]
        clear_limits: bool,
    },
    /// List routes.
    List,
    /// Delete a route.
    Rm {
        /// Host name or id.
        host: String,
    },
}

/// Edge or origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NodeKind {
    /// An edge node.
    Edge,
    /// An origin.
    Origin,
}

impl NodeKind {
    /// The node's program.
    pub fn program(self) -> &'static str {
        match self {
            NodeKind::Edge => "kokoa-edge",
            NodeKind::Origin => "kokoa-origin",
        }
    }

    fn collection(self) -> &'static str {
        match self {
            NodeKind::Edge => "edge-nodes",
            NodeKind::Origin => "origins",
        }
    }
}

/// `node-token` subcommands.
#[derive(Debug, Subcommand)]
pub enum NodeTokenCommand {
    /// Create a one-time enrollment token for a node and print it (shown once).
    Create {
        /// Edge or origin.
        kind: NodeKind,
        /// The node's name.
        name: String,
        /// Valid for this many hours (default 24).
        #[arg(long)]
        ttl_hours: Option<u64>,
    },
}

/// Parses the command line and runs it; the process exit code (2 for `check-config` on
/// unusable settings, 1 for any other failure).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Completions { shell } => {
            return exit(kokoa_node::docs::completions(
                Cli::command(),
                *shell,
                &mut std::io::stdout(),
            ))
        }
        Command::Man { dir } => return exit(kokoa_node::docs::man_pages(Cli::command(), dir)),
        // dev logs into its directory, so the terminal shows only what it prints.
        Command::Dev(_) => {}
        _ => kokoa_node::telemetry::init(cli.log_json),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kokoa-control: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kokoa-control: {error:#}");
            if error.downcast_ref::<serve::BadSettings>().is_some() {
                ExitCode::from(serve::EXIT_BAD_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kokoa-control: {error:#}");
            ExitCode::FAILURE
        }
    }
}

impl From<ServeArgs> for ServeOptions {
    fn from(args: ServeArgs) -> Self {
        let sessions = sessions(&args);
        ServeOptions {
            data_dir: args.store.data_dir,
            database: args.store.database,
            master_key_file: args.master_key_file,
            dev: args.dev,
            api: args.api,
            grpc: args.grpc,
            grpc_names: args.grpc_names,
            public_url: args.public_url,
            acme: args.acme,
            health: args.health,
            sessions,
            api_tls: match (
                args.api_plain,
                args.api_tls_cert,
                args.api_tls_key,
                args.api_tls_acme,
            ) {
                (true, ..) => serve::ApiTls::Plain,
                (_, Some(cert), Some(key), _) => serve::ApiTls::Files { cert, key },
                (_, _, _, Some(name)) => serve::ApiTls::Acme(name),
                _ => serve::ApiTls::ControlCa,
            },
            api_names: args.api_names,
            api_max_connections: args.api_max_connections,
            web: crate::web::WebOptions {
                secure_cookies: true,
                max_streams: args.ui_max_streams,
            },
            notify: args.notify,
            dns: args.dns,
            provision: args.provision,
        }
    }
}

/// Runs one parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let log_json = cli.log_json;
    match cli.command {
        Command::Serve(args) => serve::run((*args).into(), kokoa_node::signal::shutdown()).await,
        Command::CheckConfig(args) => {
            let report = serve::check((*args).into())?;
            println!("{report}");
            Ok(())
        }
        Command::Dev(args) => run_dev(args, log_json).await,
        Command::SampleApp { listen } => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            eprintln!("kokoa-control sample-app: serving http://{listen}/");
            tokio::select! {
                () = dev::app::serve(listener) => Ok(()),
                () = kokoa_node::signal::shutdown() => Ok(()),
            }
        }
        Command::Completions { .. } | Command::Man { .. } => Ok(()),
        Command::Token {
            client,
            command:
                TokenCommand::Create {
                    name,
                    ttl_days,
                    role,
                    store,
                },
        } => direct::token_create(&store, &name, ttl_days, role, client.json).await,
        Command::User {
            client,
            command: UserCommand::Add { name, role, store },
        } => direct::user_add(&store, &name, role, client.json).await,
        Command::User {
            client,
            command: UserCommand::List,
        } => client.api()?.user_list().await,
        Command::User {
            client,
            command: UserCommand::Rm { name },
        } => client.api()?.user_rm(&name).await,
        Command::Token {
            client,
            command: TokenCommand::List,
        } => client.api()?.token_list().await,
        Command::Token {
            client,
            command: TokenCommand::Revoke { name },
        } => client.api()?.token_revoke(&name).await,
        Command::Origin { client, command } => client.api()?.origin(command).await,
        Command::Service { client, command } => client.api()?.service(command).await,
        Command::Edge { client, command } => client.api()?.edge(command).await,
        Command::Route { client, command } => client.api()?.route(command).await,
        Command::TcpRoute { client, command } => client.api()?.tcp_route(command).await,
        Command::Certificate { client, command } => client.api()?.certificate(command).await,
        Command::NodeToken {
            client,
            command:
                NodeTokenCommand::Create {
                    kind,
                    name,
                    ttl_hours,
                },
        } => client.api()?.node_token(kind, &name, ttl_hours).await,
        Command::Bundle {
            kind,
            name,
            output,
            with_binary,
            client,
        } => {
            let binary = match with_binary {
                None => None,
                Some(None) => Some(dev::nodes::find_binary(kind.program(), None)?),
                Some(Some(path)) => Some(path),
            };
            client
                .api()?
                .bundle(kind, &name, &output, binary.as_deref())
                .await
        }
        Command::Status { client } => client.api()?.status().await,
        Command::Notify { client, command } => client.api()?.notify(command).await,
    }
}

/// The session and login limits `serve`'s flags ask for.
fn sessions(args: &ServeArgs) -> SessionPolicy {
    let defaults = SessionPolicy::default();
    SessionPolicy {
        idle: Duration::from_secs(args.session_idle_minutes.max(1) * 60),
        absolute: Duration::from_secs(args.session_max_hours.max(1) * 3600),
        account: store::LockoutPolicy {
            max_failures: args.login_max_failures.max(1),
            ..defaults.account
        },
        address: crate::account::throttle::AddressPolicy {
            max_failures: args.login_max_failures_per_address.max(1),
            ..defaults.address
        },
        ..defaults
    }
}

async fn run_dev(args: DevArgs, log_json: bool) -> anyhow::Result<()> {
    let options = DevOptions {
        dir: args.dir.unwrap_or_else(DevOptions::default_dir),
        host: args.host,
        api_port: args.api_port,
        grpc_port: args.grpc_port,
        https_port: args.https_port,
        http_port: args.http_port,
        tunnel_port: args.tunnel_port,
        admin_port: args.admin_port,
        app_port: args.app_port,
        edge_bin: args.edge_bin,
        origin_bin: args.origin_bin,
        log_json,
        listen: args.listen,
        control_host: args.control_host,
        edge_endpoint: args.edge_endpoint,
        app_address: args.app_address,
        bundles_to: args.bundles_to,
    };
    // First, before anything in the directory changes: a second dev on it stops here.
    let lock = dev::DevLock::acquire(&options.dir)?;
    dev::run(&options, lock, kokoa_node::signal::shutdown()).await
}

fn time_text(t: Option<OffsetDateTime>) -> String {
    let Some(t) = t else {
        return String::new();
    };
    let age = OffsetDateTime::now_utc() - t;
    let secs = age.whole_seconds().max(0);
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        7200..=172_799 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

fn opt<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}
