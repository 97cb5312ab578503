//! Self-healing timings (issue 13), over several runs: an edge is SIGKILLed, and the benchmark
//! records
//!
//! - kill -> withdrawn: the dead edge's address leaves BIND's answer for the route (DNS
//!   steering fed by control's health checks, default check settings: target 15 s);
//! - kill -> replacement serving: the first 200 for the route through the replacement edge's
//!   own address (target 60 s with the local provisioner);
//! - kill -> replacement published: its address in BIND's answer.
//!
//! The fleet (harness `kokoa_tests::provision`): the real `kokoa-control serve` with
//! `--provisioner local --auto-replace --replace-after 0 --replace-cooldown 0`, RFC 2136 into a
//! real BIND (`named`), an origin with a sample app, two edges made by control's local
//! provisioner. Each run kills one of the two current edges; the other keeps serving.
//! `--replace-after 0` measures the machinery itself: with the default (60 s) a replacement
//! starts 60 s later.
//!
//! ```sh
//! cargo build -p kokoa-edge -p kokoa-origin -p kokoa-control
//! KOKOA_BIN_DIR=$PWD/target/debug cargo bench --profile dev -p kokoa-bench --bench failover
//! ```
//!
//! `FAILOVER_RUNS` (default 3) sets the number of runs. Writes
//! `bench/results/<UTC date>-failover-<build>.md` and refuses to overwrite an existing file.
//! Needs `named` and `dig` (Debian `bind9`, `bind9-dnsutils`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use kokoa_tests::provision::{SelfHealing, Settings};

/// Give up on one run after this long.
const RUN_LIMIT: Duration = Duration::from_secs(240);

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and must not run this.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let runs: usize = std::env::var("FAILOVER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(runs))?;
    let path = kokoa_bench::results_path("failover")?;
    std::fs::write(&path, report).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}

struct Run {
    killed: String,
    by: String,
    withdrawn: Duration,
    serving: Duration,
    published: Duration,
}

async fn one_run(fleet: &SelfHealing, victim: &str, other: IpAddr) -> anyhow::Result<Run> {
    let killed_ip = fleet.public_ip(victim).await?;
    let killed = fleet.kill(victim).await?;
    let mut withdrawn = None;
    let mut serving = None;
    let mut published = None;
    let mut new: Option<(String, Option<IpAddr>)> = None;
    while killed.elapsed() < RUN_LIMIT {
        if withdrawn.is_none() || published.is_none() {
            let answer = fleet.answer().await?;
            if withdrawn.is_none() && !answer.contains(&killed_ip) && answer.contains(&other) {
                withdrawn = Some(killed.elapsed());
            }
            if let Some((_, Some(ip))) = &new {
                if published.is_none() && answer.contains(ip) {
                    published = Some(killed.elapsed());
                }
            }
        }
        match &mut new {
            None => {
                if let Ok(name) = fleet.successor(victim, Duration::from_millis(1)).await {
                    new = Some((name, None));
                }
            }
            Some((name, ip @ None)) => {
                if let Ok(found) = fleet.public_ip(name).await {
                    *ip = Some(found);
                }
            }
            Some((_, Some(ip))) => {
                if serving.is_none() && fleet.fetch(*ip).await.is_ok() {
                    serving = Some(killed.elapsed());
                }
            }
        }
        if let (Some(withdrawn), Some(serving), Some(published), Some((name, _))) =
            (withdrawn, serving, published, &new)
        {
            // Wait for the replacement to finish (old machine destroyed) before the next run.
            let by = fleet.replaced(victim, RUN_LIMIT).await?;
            anyhow::ensure!(&by == name, "replaced by {by}, not {name}");
            return Ok(Run {
                killed: victim.to_owned(),
                by,
                withdrawn,
                serving,
                published,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "run on {victim} did not finish within {RUN_LIMIT:?} (withdrawn {withdrawn:?}, serving \
         {serving:?}, published {published:?}, new {new:?})"
    )
}

async fn run(runs: usize) -> anyhow::Result<String> {
    let settings = Settings {
        replace_after: 0,
        cooldown: 0,
        ttl: 30,
    };
    let fleet = SelfHealing::start(settings.clone())
        .await
        .context("starting the fleet (binaries built? named and dig installed?)")?;
    let a = fleet.provision("edge-a").await?;
    let b = fleet.provision("edge-b").await?;
    fleet.serves(a, Duration::from_secs(90)).await?;
    fleet.serves(b, Duration::from_secs(90)).await?;
    fleet
        .dns_is(&BTreeSet::from([a, b]), Duration::from_secs(90))
        .await?;
    let mut current = ["edge-a".to_owned(), "edge-b".to_owned()];
    let mut rows = Vec::new();
    for round in 0..runs {
        let victim = current[round % 2].clone();
        let survivor = current[(round + 1) % 2].clone();
        let other = fleet.public_ip(&survivor).await?;
        let run = one_run(&fleet, &victim, other)
            .await
            .with_context(|| format!("run {}", round + 1))?;
        eprintln!(
            "failover run {}: {} -> {}: withdrawn {:?}, serving {:?}, published {:?}",
            round + 1,
            run.killed,
            run.by,
            run.withdrawn,
            run.serving,
            run.published
        );
        current[round % 2] = run.by.clone();
        // Both edges published again before the next run.
        let both = BTreeSet::from([
            fleet.public_ip(&current[0]).await?,
            fleet.public_ip(&current[1]).await?,
        ]);
        fleet.dns_is(&both, Duration::from_secs(60)).await?;
        rows.push(run);
    }
    fleet.destroy_all().await?;

    let mut out = format!(
        "# Edge failover: kill -> withdrawn from DNS -> replacement serving, {}\n\nBuild {}. Generated by `{}`. \
         The real kokoa-control (`--provisioner local --auto-replace --replace-after {} --replace-cooldown {}`, \
         every health-check setting at its default: probes every 5 s, 2 s timeout, 3 failures -> offline, \
         3 passes -> online), DNS steering over RFC 2136 into BIND `named` (TTL {} s), one origin with a sample app, \
         two edges made by the local provisioner (each a kokoa-edge process on its own loopback address). \
         Each run SIGKILLs one edge. Withdrawn: the dead address leaves BIND's answer (polled every 100 ms with dig). \
         Serving: the first 200 for the route through the replacement's own address. Published: the replacement's \
         address in BIND's answer. Machine: {} cores, 1-minute load average {} at the end (shared with other work).\n\n\
         | run | killed | replaced by | withdrawn (s) | replacement serving (s) | replacement published (s) |\n|---:|---|---|---:|---:|---:|\n",
        kokoa_bench::utc_now(),
        kokoa_bench::build_name(),
        kokoa_bench::bench_command("failover"),
        settings.replace_after,
        settings.cooldown,
        settings.ttl,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kokoa_bench::load_average(),
    );
    for (i, r) in rows.iter().enumerate() {
        out.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} |\n",
            i + 1,
            r.killed,
            r.by,
            r.withdrawn.as_secs_f64(),
            r.serving.as_secs_f64(),
            r.published.as_secs_f64()
        ));
    }
    let stat = |f: &dyn Fn(&Run) -> Duration| {
        let mut v: Vec<f64> = rows.iter().map(|r| f(r).as_secs_f64()).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (wm, ww) = stat(&|r| r.withdrawn);
    let (sm, sw) = stat(&|r| r.serving);
    let (pm, pw) = stat(&|r| r.published);
    out.push_str(&format!(
        "\nOver {} runs: withdrawn median {wm:.1} s, worst {ww:.1} s (target 15 s); replacement serving median \
         {sm:.1} s, worst {sw:.1} s (target 60 s); replacement published median {pm:.1} s, worst {pw:.1} s.\n",
        rows.len()
    ));
    Ok(out)
}
