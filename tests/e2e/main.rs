//! End-to-end tests: the real `kokoa-edge` and `kokoa-origin` binaries on loopback (and stock
//! WireGuard in network namespaces), with sample apps in this process. One test binary, so the
//! binaries are located and built once; every test is bounded in time.

mod acme;
mod bulk;
mod control;
mod dashboard;
mod dev;
mod dist;
mod http;
mod install;
mod interop;
mod memory;
mod polish;
mod probes;
mod protection;
mod replace;
mod restart;
mod shutdown;
mod steering;
mod tcp;
mod timeouts;
mod tunnel;
mod websocket;

use std::future::Future;
use std::time::Duration;

/// Runs a test body on a multi-threaded runtime with a hard time limit.
pub fn run_bounded<F>(limit: Duration, body: F)
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let (result, logs) =
            kokoa_tests::process::capture_logs(tokio::time::timeout(limit, body)).await;
        let failure = match result {
            Ok(Ok(())) => return,
            Ok(Err(error)) => format!("{error:#}"),
            Err(_) => format!("test did not finish within {limit:?}"),
        };
        for log in logs {
            eprintln!("{log}");
        }
        panic!("{failure}");
    });
}
