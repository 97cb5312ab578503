//! Route propagation: the time from `POST /api/v1/routes` on kokoa-control to the first
//! successful request for that host through an edge, with the real binaries on loopback
//! (control, one edge, one origin, started from control's bundles), repeated for many routes.
//! Issue 3's target: under 100 ms.
//!
//! Needs release builds of the binaries next to this benchmark:
//! `cargo build --release -p kokoa-control -p kokoa-edge -p kokoa-origin`
//! then `cargo bench -p kokoa-bench --bench propagation`.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use kokoa_tests::apps::HttpApp;
use kokoa_tests::client::Proto;
use kokoa_tests::control::Fleet;
use kokoa_tests::net::loopback;

const ROUTES: usize = 50;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and must not run this.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let app = HttpApp::start("web", loopback(1)).await?;
    let fleet = Fleet::start(
        &["home"],
        &[("home", "web", 8001, app.addr)],
        &[("web.ctl.test", "home", "web")],
    )
    .await
    .context("starting control, an edge and an origin (release binaries built?)")?;
    fleet
        .serves("web.ctl.test", "web", Duration::from_secs(20))
        .await?;
    let client = fleet.client()?;
    let mut samples = Vec::with_capacity(ROUTES);
    for i in 0..ROUTES {
        let host = format!("r{i}.ctl.test");
        let started = Instant::now();
        fleet.add_route(&host, "home", "web").await?;
        let api = started.elapsed();
        loop {
            let answer = client.get(&host, "/", Proto::Http1).await?;
            if answer.status == 200 {
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(10),
                "{host} not served after 10 s (last status {})",
                answer.status
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push((started.elapsed(), api));
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].0;
    println!(
        "route propagation, API call -> first 200 through the edge ({ROUTES} routes): \
         median {:.1} ms, p90 {:.1} ms, max {:.1} ms (the API call itself: median {:.1} ms); target < 100 ms",
        ms(pick(0.5)),
        ms(pick(0.9)),
        ms(pick(1.0)),
        ms({
            let mut api: Vec<Duration> = samples.iter().map(|s| s.1).collect();
            api.sort();
            api[api.len() / 2]
        }),
    );
    Ok(())
}
