//! The `kokoa-edge` binary: parses flags, loads and validates the config (and certificates)
//! before binding any port, and runs [`kokoa_edge::run`] until SIGTERM or SIGINT.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};
use kokoa_edge::sni::CertStore;
use kokoa_edge::EdgeConfig;
use kokoa_tunnel::key::PrivateKey;

/// Exit code for a config that cannot be loaded (runtime failures exit 1).
const EXIT_BAD_CONFIG: u8 = 2;

/// Kokoa edge: terminates TLS, routes HTTP/1.1, HTTP/2 and WebSocket by host, and forwards
/// through the userspace WireGuard tunnel to origins.
#[derive(Parser, Debug)]
#[command(name = "kokoa-edge", version = env!("KOKOA_LONG_VERSION"), about, long_about = None)]
struct Cli {
    /// Path of the edge config file (TOML; see examples/edge.toml).
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "KOKOA_EDGE_CONFIG",
        default_value = "/etc/kokoa/edge.toml"
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
    /// Run the edge (the default).
    Run,
    /// Print a new WireGuard private key (base64).
    Genkey,
    /// Read a private key on stdin and print its public key.
    Pubkey,
    /// Load and validate the config and certificates, then exit: 0 if valid, 2 if not.
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

fn load(cli: &Cli) -> Result<(EdgeConfig, CertStore), ExitCode> {
    let bad = |error: &dyn std::fmt::Display| {
        eprintln!("kokoa-edge: bad config {}: {error}", cli.config.display());
        ExitCode::from(EXIT_BAD_CONFIG)
    };
    let config = EdgeConfig::load(&cli.config).map_err(|error| bad(&error))?;
    let certificates = kokoa_edge::load_certificates(&config).map_err(|error| bad(&error))?;
    Ok((config, certificates))
}

fn docs_exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kokoa-edge: {error:#}");
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
                eprintln!("kokoa-edge: cannot read a private key on stdin: {error}");
                return ExitCode::FAILURE;
            }
            match PrivateKey::from_base64(input.trim()) {
                Ok(key) => {
                    println!("{}", key.public_key().to_base64());
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!(
                        "kokoa-edge: stdin is not a WireGuard private key ({error}); \
                         pipe in the output of `kokoa-edge genkey`"
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig => match load(&cli) {
            Ok((config, _)) if config.control.is_some() => {
                let control = config.control.as_ref().map(|c| c.url.as_str());
                println!(
                    "{}: ok (control mode: origins, routes and certificates come from {})",
                    cli.config.display(),
                    control.unwrap_or_default()
                );
                ExitCode::SUCCESS
            }
            Ok((config, _)) => {
                println!(
                    "{}: ok ({} origins, {} routes, {} tcp routes)",
                    cli.config.display(),
                    config.origins.len(),
                    config.routes.len(),
                    config.tcp_routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run => {
            kokoa_node::telemetry::init(cli.log_json);
            let (config, certificates) = match load(&cli) {
                Ok(loaded) => loaded,
                Err(code) => return code,
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("kokoa-edge: cannot start the async runtime: {error}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(kokoa_edge::run_with_certificates(
                config,
                certificates,
                kokoa_node::signal::shutdown(),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "edge failed");
                    eprintln!("kokoa-edge: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
