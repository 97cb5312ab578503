//! The one entry point both node binaries run: flags, subcommands, the bad-config exit code,
//! tracing, the runtime and the shutdown signal. A binary describes itself with [`Node`] and
//! calls [`main`]; everything else is the same for the edge and the origin.
//!
//! ```text
//! kokoa-edge [-c|--config PATH] [--log-json] [run|genkey|pubkey|check-config]
//! kokoa-edge completions SHELL | man [--dir DIR] | --version
//! ```
//!
//! `-c/--config` defaults to the node's file (`/etc/kokoa/edge.toml`) or its environment
//! variable (`KOKOA_EDGE_CONFIG`). `run` (the default) loads and validates the config before
//! binding anything and runs until SIGTERM or SIGINT; `genkey` prints a new WireGuard private
//! key; `pubkey` reads one on stdin and prints its public key; `check-config` validates and
//! exits 0, or 2 naming the offending field (the same code `run` exits with on a bad config);
//! `completions` and `man` print a shell completion script or write man pages generated from
//! these very definitions ([`crate::docs`]); `--version` names the commit, build date and
//! target the binary was built from (`kokoa-build-info`).

use std::future::Future;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use kokoa_model::PrivateKey;

/// Exit code for a config that cannot be loaded (runtime failures exit 1).
pub const EXIT_BAD_CONFIG: u8 = 2;

/// What differs between the node binaries.
pub trait Node {
    /// The binary's name (`kokoa-edge`).
    const NAME: &'static str;
    /// One line about it, for `--help`.
    const ABOUT: &'static str;
    /// The config file when `-c` is not given.
    const DEFAULT_CONFIG: &'static str;
    /// The environment variable that overrides it.
    const CONFIG_ENV: &'static str;
    /// What `--version` prints after the name: the binary's `env!("KOKOA_LONG_VERSION")`,
    /// set by its build script through `kokoa-build-info`.
    const VERSION: &'static str;
    /// The validated config.
    type Config: Send + 'static;

    /// Reads and validates the config file: everything a start checks before binding a port
    /// (certificates included). The error names the field to fix.
    fn load(path: &Path) -> Result<Self::Config, String>;

    /// What `check-config` prints after `PATH: ok`.
    fn summary(config: &Self::Config) -> String;

    /// Runtime threads: `None` for one per core.
    fn workers(config: &Self::Config) -> Option<usize>;

    /// Runs the node until `shutdown` resolves; `path` is the config file (SIGHUP re-reads it).
    fn run(
        config: Self::Config,
        path: PathBuf,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = anyhow::Result<()>>;
}

#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// Path of the config file (TOML; see the examples).
    #[arg(long, short = 'c', global = true)]
    config: PathBuf,
    /// Log one JSON object per line instead of human-readable lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
enum Command {
    /// Run the node (the default).
    Run,
    /// Print a new WireGuard private key (base64).
    Genkey,
    /// Read a private key on stdin and print its public key.
    Pubkey,
    /// Load and validate the config, then exit: 0 if valid, 2 if not.
    CheckConfig,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write man pages (one for the program and one per subcommand) into a directory.
    Man {
        /// Where to write them.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

/// The binary's clap definition: the shared flags under `N`'s name, about line, version and
/// config default.
fn command<N: Node>() -> clap::Command {
    Cli::command()
        .name(N::NAME)
        .bin_name(N::NAME)
        .about(N::ABOUT)
        .version(N::VERSION)
        // With a default the flag is not required (clap's debug builds refuse a global
        // argument that is, so every debug binary panicked at start).
        .mut_arg("config", |arg| {
            arg.env(N::CONFIG_ENV)
                .default_value(N::DEFAULT_CONFIG)
                .required(false)
        })
}

fn parse<N: Node>() -> Cli {
    let matches = command::<N>().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

fn docs_exit(name: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the node binary `N`. See the module documentation.
pub fn main<N: Node>() -> ExitCode {
    let cli = parse::<N>();
    let name = N::NAME;
    match cli.command.clone().unwrap_or(Command::Run) {
        Command::Completions { shell } => docs_exit(
            name,
            crate::docs::completions(command::<N>(), shell, &mut std::io::stdout()),
        ),
        Command::Man { dir } => docs_exit(name, crate::docs::man_pages(command::<N>(), &dir)),
        Command::Genkey => {
            println!("{}", PrivateKey::generate().to_base64());
            ExitCode::SUCCESS
        }
        Command::Pubkey => {
            let mut input = String::new();
            if let Err(error) = std::io::stdin().read_to_string(&mut input) {
                eprintln!("{name}: cannot read a private key on stdin: {error}");
                return ExitCode::FAILURE;
            }
            match PrivateKey::from_base64(input.trim()) {
                Ok(key) => {
                    println!("{}", key.public_key().to_base64());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!(
                        "{name}: stdin is not a WireGuard private key ({error}); \
                         pipe in the output of `{name} genkey`"
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig => match load::<N>(&cli.config) {
            Ok(config) => {
                println!("{}: ok ({})", cli.config.display(), N::summary(&config));
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run => {
            crate::telemetry::init(cli.log_json);
            let config = match load::<N>(&cli.config) {
                Ok(config) => config,
                Err(code) => return code,
            };
            let mut builder = match N::workers(&config) {
                Some(1) => tokio::runtime::Builder::new_current_thread(),
                Some(workers) => {
                    let mut builder = tokio::runtime::Builder::new_multi_thread();
                    builder.worker_threads(workers);
                    builder
                }
                None => tokio::runtime::Builder::new_multi_thread(),
            };
            let runtime = match builder.enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("{name}: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(N::run(config, cli.config, crate::signal::shutdown()));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "{name} failed");
                    eprintln!("{name}: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn load<N: Node>(path: &Path) -> Result<N::Config, ExitCode> {
    N::load(path).map_err(|error| {
        eprintln!("{}: bad config {}: {error}", N::NAME, path.display());
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}
