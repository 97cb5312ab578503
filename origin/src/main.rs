//! The `kokoa-origin` binary: parses flags, loads and validates the config before binding any
//! port, and runs [`kokoa_origin::run`] until SIGTERM or SIGINT.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use kokoa_origin::OriginConfig;
use kokoa_tunnel::key::PrivateKey;

/// Exit code for a config that cannot be loaded (distinct from runtime failures, which exit 1).
const EXIT_BAD_CONFIG: u8 = 2;

/// Kokoa origin: dials out to edges over userspace WireGuard and bridges tunnel streams to
/// local services.
#[derive(Parser, Debug)]
#[command(name = "kokoa-origin", version = env!("KOKOA_LONG_VERSION"), about, long_about = None)]
struct Cli {
    /// Path of the origin config file (TOML; see examples/origin.toml).
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "KOKOA_ORIGIN_CONFIG",
        default_value = "/etc/kokoa/origin.toml"
    )]
    config: PathBuf,
    /// Log one JSON object per line instead of human-readable lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the origin (the default).
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

fn load(cli: &Cli) -> Result<OriginConfig, ExitCode> {
    OriginConfig::load(&cli.config).map_err(|error| {
        eprintln!("kokoa-origin: bad config {}: {error}", cli.config.display());
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

fn docs_exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kokoa-origin: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.as_ref().unwrap_or(&Command::Run) {
        Command::Completions { shell } => docs_exit(kokoa_node::docs::completions(
            Cli::command(),
            *shell,
            &mut std::io::stdout(),
        )),
        Command::Man { dir } => docs_exit(kokoa_node::docs::man_pages(Cli::command(), dir)),
        Command::Genkey => {
            println!("{}", PrivateKey::generate().to_base64());
            ExitCode::SUCCESS
        }
        Command::Pubkey => {
            let mut input = String::new();
            if let Err(error) = std::io::stdin().read_to_string(&mut input) {
                eprintln!("kokoa-origin: cannot read a private key on stdin: {error}");
                return ExitCode::FAILURE;
            }
            match PrivateKey::from_base64(input.trim()) {
                Ok(key) => {
                    println!("{}", key.public_key().to_base64());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!(
                        "kokoa-origin: stdin is not a WireGuard private key ({error}); \
                         pipe in the output of `kokoa-origin genkey`"
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig => match load(&cli) {
            Ok(config) if config.control.is_some() => {
                println!(
                    "{}: ok (control mode: address, edges and services come from {})",
                    cli.config.display(),
                    config
                        .control
                        .as_ref()
                        .map(|c| c.url.as_str())
                        .unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Ok(config) => {
                println!(
                    "{}: ok ({} edges, {} services)",
                    cli.config.display(),
                    config.edges.len(),
                    config.services.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run => {
            let config = match load(&cli) {
                Ok(config) => config,
                Err(code) => return code,
            };
            kokoa_node::telemetry::init(cli.log_json);
            let mut builder = if config.workers == 1 {
                tokio::runtime::Builder::new_current_thread()
            } else {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(config.workers);
                builder
            };
            let runtime = match builder.enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("kokoa-origin: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            let result =
                runtime.block_on(kokoa_origin::run(config, kokoa_node::signal::shutdown()));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "origin failed");
                    eprintln!("kokoa-origin: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
