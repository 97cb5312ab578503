//! The `kokoa-edge` binary: the shared node entry point ([`kokoa_node::cli`]) with the edge's
//! config and [`kokoa_edge::run_with_reload`].

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kokoa_edge::EdgeConfig;

struct Edge;

impl kokoa_node::cli::Node for Edge {
    const NAME: &'static str = "kokoa-edge";
    const ABOUT: &'static str = "Kokoa edge: terminates TLS, routes HTTP/1.1, HTTP/2 and WebSocket by host, and forwards through the userspace WireGuard tunnel to origins";
    const DEFAULT_CONFIG: &'static str = "/etc/kokoa/edge.toml";
    const CONFIG_ENV: &'static str = "KOKOA_EDGE_CONFIG";
    const VERSION: &'static str = env!("KOKOA_LONG_VERSION");
    type Config = EdgeConfig;

    fn load(path: &Path) -> Result<EdgeConfig, String> {
        let config = EdgeConfig::load(path).map_err(|e| e.to_string())?;
        // The certificate store too (default name, placeholder), before anything binds.
        kokoa_edge::load_certificates(&config).map_err(|e| e.to_string())?;
        Ok(config)
    }

    fn summary(config: &EdgeConfig) -> String {
        match &config.control {
            Some(control) => format!(
                "control mode: origins, routes and certificates come from {}",
                control.url
            ),
            None => format!(
                "{} origins, {} routes, {} tcp routes, {} certificates",
                config.spec.origins.len(),
                config.spec.routes.len(),
                config.spec.tcp_routes.len(),
                config.spec.certificates.len()
            ),
        }
    }

    fn workers(_: &EdgeConfig) -> Option<usize> {
        // TLS and HTTP work scale with cores on an edge VPS of its own.
        None
    }

    fn run(
        config: EdgeConfig,
        path: PathBuf,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = anyhow::Result<()>> {
        kokoa_edge::run_with_reload(config, Some(path), shutdown)
    }
}

fn main() -> ExitCode {
    kokoa_node::cli::main::<Edge>()
}
