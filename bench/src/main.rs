//! `kokoa-bench`: the load-comparison harness (`compare`, `chart`) and the helpers it starts inside
//! the benchmark namespaces (`upload-sink`, `idle-clients`). See `bench/README.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kokoa_bench::compare::{compare, Options};
use kokoa_bench::report::Contender;

#[derive(Parser)]
#[command(version, about = "Kokoa benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compare Kokoa with Nginx + WireGuard, Nginx alone, Nginx + onetun and Nginx + a plain
    /// relay on the origin host (needs root).
    Compare {
        /// Rounds; contenders are interleaved within each round.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Short loads (3 s, 2,000 idle connections): to check the harness, not for numbers.
        #[arg(long)]
        quick: bool,
        /// Seconds per timed load (default 10; 3 with --quick).
        #[arg(long)]
        duration: Option<u64>,
        /// Idle keep-alive connections (default 10000; 2000 with --quick).
        #[arg(long)]
        idle_connections: Option<usize>,
        /// Only these contenders: kokoa, nginx-wg, nginx-direct, nginx-onetun, nginx-relay,
        /// kokoa-ratelimit.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Where the report and chart are written.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results"))]
        out: PathBuf,
        /// kokoa-edge binary (default: target/release/kokoa-edge, rebuilt first).
        #[arg(long)]
        edge_bin: Option<PathBuf>,
        /// kokoa-origin binary (default: target/release/kokoa-origin, rebuilt first).
        #[arg(long)]
        origin_bin: Option<PathBuf>,
        /// Use the existing release binaries without running cargo build.
        #[arg(long)]
        no_build: bool,
    },
    /// Redraw the chart of a committed report from its "Every round" table into a new file
    /// (`<report>-chart.svg`, never replacing one).
    Chart {
        /// The report, e.g. bench/results/2026-11-25.md.
        #[arg(long)]
        from: PathBuf,
        /// Directory for the chart (default: the report's).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Start the namespaces, the app and one contender, and keep them up until Ctrl-C (for
    /// profiling it under a load run by hand).
    Serve {
        /// kokoa, nginx-wg, nginx-direct, nginx-onetun, nginx-relay or kokoa-ratelimit.
        contender: String,
        /// kokoa-edge binary (default: target/release/kokoa-edge, rebuilt first).
        #[arg(long)]
        edge_bin: Option<PathBuf>,
        /// kokoa-origin binary (default: target/release/kokoa-origin, rebuilt first).
        #[arg(long)]
        origin_bin: Option<PathBuf>,
        /// Use the existing release binaries without running cargo build.
        #[arg(long)]
        no_build: bool,
    },
    /// (internal) The upload sink app: reads request bodies, answers with their length.
    #[command(hide = true)]
    UploadSink {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// (internal) Opens N TLS keep-alive connections and holds them idle.
    #[command(hide = true)]
    IdleClients {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        host: String,
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        warm: usize,
        #[arg(long, default_value_t = 300)]
        hold_secs: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Compare {
            rounds,
            quick,
            duration,
            idle_connections,
            only,
            out,
            edge_bin,
            origin_bin,
            no_build,
        } => {
            let only = only
                .iter()
                .map(|k| Contender::from_key(k).with_context(|| format!("unknown contender {k:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let options = Options {
                rounds,
                quick,
                only,
                out_dir: out,
                edge_bin,
                origin_bin,
                no_build,
                duration,
                idle_connections,
                command_line: format!(
                    "cargo run -p kokoa-bench --release -- {}",
                    std::env::args().skip(1).collect::<Vec<_>>().join(" ")
                ),
            };
            let report = until_signal(compare(options)).await??;
            println!("report: {}", report.display());
        }
        Command::Chart { from, out } => {
            let path = kokoa_bench::chart::rerender(&from, out.as_deref())?;
            println!("chart: {}", path.display());
        }
        Command::Serve {
            contender,
            edge_bin,
            origin_bin,
            no_build,
        } => {
            let contender = Contender::from_key(&contender)
                .with_context(|| format!("unknown contender {contender:?}"))?;
            let options = Options {
                rounds: 1,
                quick: false,
                only: vec![contender],
                out_dir: PathBuf::new(),
                edge_bin,
                origin_bin,
                no_build,
                duration: None,
                idle_connections: None,
                command_line: String::new(),
            };
            until_signal(kokoa_bench::compare::serve(options, contender)).await??;
        }
        Command::UploadSink { listen } => kokoa_bench::apps::upload_sink(listen).await?,
        Command::IdleClients {
            addr,
            host,
            ca,
            count,
            warm,
            hold_secs,
        } => {
            let ca = std::fs::read_to_string(&ca)
                .with_context(|| format!("reading {}", ca.display()))?;
            kokoa_bench::apps::idle_clients(
                addr,
                &host,
                &ca,
                count,
                warm,
                Duration::from_secs(hold_secs),
            )
            .await?;
        }
    }
    Ok(())
}

/// Runs `work` until it ends or Ctrl-C / SIGTERM arrives. On a signal the future is dropped:
/// its guards kill every process it started and delete the namespaces, then this fails.
async fn until_signal<T>(work: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = work => Ok(result),
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; everything was torn down"),
        _ = term.recv() => anyhow::bail!("terminated; everything was torn down"),
    }
}
