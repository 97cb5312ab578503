//! `kokoa-control`: not yet implemented beyond `--help`/`--version`; see the README.

use clap::Parser;

/// Kokoa control plane (store, REST API, config streaming). Not built yet: edges and origins
/// run from their config files (`kokoa-edge --config`, `kokoa-origin --config`).
#[derive(Parser)]
#[command(name = "kokoa-control", version = kokoa_control::VERSION)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!("kokoa-control: the control plane is not built yet; run kokoa-edge and kokoa-origin from config files (see README)");
    std::process::ExitCode::from(2)
}
