//! `kokoa-control`: parses flags and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kokoa_control::dev::{self, DevOptions};

/// Kokoa control plane. Today: `dev`, a whole Kokoa on loopback. The store, REST API and
/// config streaming come with the control-plane issue; until then edges and origins run from
/// config files (`kokoa-edge --config`, `kokoa-origin --config`).
#[derive(Parser)]
#[command(name = "kokoa-control", version = kokoa_control::VERSION)]
struct Cli {
    /// Log as one JSON object per line.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an edge, an origin and a sample app on loopback with generated keys and a
    /// self-signed certificate; prints how to reach the app. Ctrl-C stops it.
    Dev {
        /// Directory for the generated configs, keys and certificate.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Host name routed to the sample app.
        #[arg(long, default_value = "app.localhost")]
        host: String,
        /// Edge HTTPS port on 127.0.0.1.
        #[arg(long, default_value_t = 8443)]
        https_port: u16,
        /// Edge plain HTTP port on 127.0.0.1.
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        /// Edge WireGuard UDP port on 127.0.0.1.
        #[arg(long, default_value_t = 51820)]
        tunnel_port: u16,
        /// Edge admin port; the origin's admin listens on the next port.
        #[arg(long, default_value_t = 9090)]
        admin_port: u16,
        /// Sample app port on 127.0.0.1.
        #[arg(long, default_value_t = 8001)]
        app_port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    kokoa_node::telemetry::init(cli.log_json);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("kokoa-control: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Dev {
            dir,
            host,
            https_port,
            http_port,
            tunnel_port,
            admin_port,
            app_port,
        } => {
            let defaults = DevOptions::default();
            let options = DevOptions {
                dir: dir.unwrap_or(defaults.dir),
                host,
                https_port,
                http_port,
                tunnel_port,
                admin_port,
                app_port,
            };
            runtime.block_on(run_dev(options))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kokoa-control: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_dev(options: DevOptions) -> anyhow::Result<()> {
    let files = dev::write_files(&options)?;
    eprintln!(
        "\nKokoa dev: edge https://127.0.0.1:{https} -> tunnel -> origin -> sample app 127.0.0.1:{app}\n\
         configs: {edge} and {origin}\n\n  \
         curl -k --resolve {host}:{https}:127.0.0.1 https://{host}:{https}/\n  \
         curl --cacert {cert} --resolve {host}:{https}:127.0.0.1 https://{host}:{https}/\n  \
         curl http://127.0.0.1:{admin}/metrics\n\nCtrl-C stops it.\n",
        https = options.https_port,
        app = options.app_port,
        edge = files.edge_config.display(),
        origin = files.origin_config.display(),
        host = options.host,
        cert = files.certificate.display(),
        admin = options.admin_port,
    );
    dev::run(&options, &files, kokoa_node::signal::shutdown()).await
}
