//! Resident memory of kokoa-edge and kokoa-origin against 2,000 stalled HTTP/2 streams from one
//! attacker (issue 16: target edge + origin under 256 MB, and flat after the client leaves).
//!
//! One edge and one origin (release binaries, default `[tunnel]` and `[limits]`) on loopback, an
//! app whose responses are 100 MB. The attacker is one address with 20 HTTP/2 connections of
//! 100 streams each, `SETTINGS_INITIAL_WINDOW_SIZE = 0`, never a WINDOW_UPDATE
//! (`kokoa_tests::hostile::StalledWindows`). A good client from another address requests
//! small responses and a 1 MiB download throughout; its answers and slowest answer are
//! reported. `VmRSS` of each process is read before the attack, every few seconds while the
//! streams are held, and after the attacker leaves (at once, and 10 s and 30 s later).
//!
//! ```sh
//! cargo build --release -p kokoa-edge -p kokoa-origin
//! KOKOA_BIN_DIR=$PWD/target/release cargo bench --profile dev -p kokoa-bench --bench stalled_rss
//! ```
//!
//! (The harness itself may be built in any profile; `KOKOA_BIN_DIR` picks the binaries it
//! measures. Without it, `cargo bench` measures the `target/release` binaries next to it.)
//!
//! Writes `bench/results/<UTC date>-stalled-rss-<build>.md` (build: `git describe --always
//! --dirty`) and refuses to overwrite an existing file.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use kokoa_tests::apps::HttpApp;
use kokoa_tests::client::Proto;
use kokoa_tests::hostile::{rss_kib, StalledWindows};
use kokoa_tests::net::{loopback, metric};
use kokoa_tests::topology::{Builder, Topology};

const CONNECTIONS: usize = 20;
const STREAMS_PER_CONNECTION: usize = 100;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and must not run this.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(run())?;
    let path = kokoa_bench::results_path("stalled-rss")?;
    std::fs::write(&path, report).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}

/// (edge, origin) `VmRSS` in MiB.
fn rss(topology: &Topology) -> anyhow::Result<(f64, f64)> {
    let edge = topology.edge.process.id().context("edge pid")?;
    let origin = topology.origins[0].process.id().context("origin pid")?;
    Ok((
        rss_kib(edge)? as f64 / 1024.0,
        rss_kib(origin)? as f64 / 1024.0,
    ))
}

async fn run() -> anyhow::Result<String> {
    let app = HttpApp::start_with_send_buffer("big", loopback(1), Some(32 * 1024)).await?;
    let topology = Builder::new()
        .origin("home", &[("web", 8001, app.addr)])
        .route("big.test", "home", 8001)
        .start()
        .await
        .context("starting an edge and an origin (release binaries built?)")?;
    let client = topology.client()?;
    for _ in 0..3 {
        let warm = client
            .get("big.test", "/bytes/1048576", Proto::Http2)
            .await?;
        ensure!(warm.status == 200 && warm.body.len() == 1_048_576);
    }
    let mut rows = vec![("before the attack".to_owned(), rss(&topology)?)];

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let good = {
        let client = client.with_source(loopback(4));
        let (stop, served) = (stop.clone(), served.clone());
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let path = if i % 10 == 9 {
                    "/bytes/1048576"
                } else {
                    "/echo"
                };
                let answer = client.get("big.test", path, Proto::Http2).await?;
                ensure!(
                    answer.status == 200,
                    "the good client got {}",
                    answer.status
                );
                slowest = slowest.max(started.elapsed());
                served.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(slowest)
        })
    };

    let attacker = client.with_source(loopback(3));
    let opened = Instant::now();
    let attack = StalledWindows::open(
        &attacker,
        "big.test",
        "/zeros/100000000",
        CONNECTIONS,
        STREAMS_PER_CONNECTION,
        Duration::from_secs(120),
    )
    .await?;
    let answered = attack.answered();
    let failed = attack.failed().len();
    // How the streams that were not answered ended, grouped by message.
    let mut causes = std::collections::BTreeMap::<String, usize>::new();
    for error in attack.failed() {
        *causes.entry(error.clone()).or_default() += 1;
    }
    let open_took = opened.elapsed();
    for second in [0u64, 5, 10, 20] {
        tokio::time::sleep(Duration::from_secs(if second == 0 { 3 } else { 5 })).await;
        rows.push((
            format!("{answered} stalled streams held, +{}s", second + 3),
            rss(&topology)?,
        ));
    }
    let edge_window = metric(topology.edge.spec.admin, "kokoa_tunnel_window_bytes")
        .await?
        .unwrap_or(0.0);
    let origin_window = metric(topology.origins[0].spec.admin, "kokoa_tunnel_window_bytes")
        .await?
        .unwrap_or(0.0);
    stop.store(true, Ordering::Relaxed);
    let slowest = good.await??;
    let good_answers = served.load(Ordering::Relaxed);

    attack.leave().await;
    let left = Instant::now();
    for after in [1u64, 10, 30] {
        let at = left + Duration::from_secs(after);
        tokio::time::sleep_until(at.into()).await;
        rows.push((format!("attacker gone, +{after}s"), rss(&topology)?));
    }

    let peak = rows.iter().map(|(_, (e, o))| e + o).fold(0.0f64, f64::max);
    let mut out = String::new();
    out.push_str(&format!(
        "# Resident memory against {} stalled HTTP/2 streams, {}\n\n",
        CONNECTIONS * STREAMS_PER_CONNECTION,
        kokoa_bench::utc_now()
    ));
    out.push_str(&format!(
        "Build {}. Generated by `{}` (release kokoa-edge and kokoa-origin, default `[tunnel]` and `[limits]`, loopback). One attacker address: {CONNECTIONS} HTTP/2 connections x {STREAMS_PER_CONNECTION} streams of a 100 MB response, initial window 0, no WINDOW_UPDATE; {answered} streams answered, {failed} refused or failed, all open after {:.1} s. Machine: {} cores, 1-minute load average {} at the end (shared with other work).\n\n",
        kokoa_bench::build_name(),
        kokoa_bench::bench_command("stalled_rss"),
        open_took.as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kokoa_bench::load_average(),
    ));
    out.push_str(
        "| moment | edge RSS (MiB) | origin RSS (MiB) | together (MiB) |\n|---|---:|---:|---:|\n",
    );
    for (moment, (edge, origin)) in &rows {
        out.push_str(&format!(
            "| {moment} | {edge:.1} | {origin:.1} | {:.1} |\n",
            edge + origin
        ));
    }
    if !causes.is_empty() {
        out.push_str(
            "\nStreams not answered, by how they ended:\n\n| how | streams |\n|---|---:|\n",
        );
        for (cause, count) in &causes {
            out.push_str(&format!("| {} | {count} |\n", cause.replace('|', "\\|")));
        }
    }
    out.push_str(&format!(
        "\nPeak together: {peak:.1} MiB (issue 16's target: under 256 MB = 244.1 MiB: {}). Stream buffers while held (`kokoa_tunnel_window_bytes`): edge {:.1} MiB, origin {:.1} MiB. The good client (another address) got {good_answers} answers during the attack, the slowest in {:.0} ms.\n",
        if peak * 1024.0 * 1024.0 < 256e6 { "met" } else { "missed" },
        edge_window / 1048576.0,
        origin_window / 1048576.0,
        slowest.as_secs_f64() * 1000.0,
    ));
    Ok(out)
}
