//! The `kokoa-origin` binary: the shared node entry point ([`kokoa_node::cli`]) with the
//! origin's config and [`kokoa_origin::run_with_reload`].

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kokoa_origin::OriginConfig;

struct Origin;

impl kokoa_node::cli::Node for Origin {
    const NAME: &'static str = "kokoa-origin";
    const ABOUT: &'static str = "Kokoa origin: dials out to edges over userspace WireGuard and bridges tunnel streams to local services";
    const DEFAULT_CONFIG: &'static str = "/etc/kokoa/origin.toml";
    const CONFIG_ENV: &'static str = "KOKOA_ORIGIN_CONFIG";
    const VERSION: &'static str = env!("KOKOA_LONG_VERSION");
    type Config = OriginConfig;

    fn load(path: &Path) -> Result<OriginConfig, String> {
        OriginConfig::load(path).map_err(|e| e.to_string())
    }

    fn summary(config: &OriginConfig) -> String {
        match (&config.control, &config.spec) {
            (Some(control), _) => format!(
                "control mode: address, edges and services come from {}",
                control.url
            ),
            (None, Some(spec)) => format!(
                "{} edges, {} services",
                spec.edges.len(),
                spec.services.len()
            ),
            (None, None) => String::new(),
        }
    }

    fn workers(config: &OriginConfig) -> Option<usize> {
        Some(config.workers)
    }

    fn run(
        config: OriginConfig,
        path: PathBuf,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = anyhow::Result<()>> {
        kokoa_origin::run_with_reload(config, Some(path), shutdown)
    }
}

fn main() -> ExitCode {
    kokoa_node::cli::main::<Origin>()
}
