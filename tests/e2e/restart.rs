//! An edge restart is not an outage: after `kill -9` or a SIGTERM restart the new edge serves
//! an origin behind NAT again within 2 s of its readiness, in file mode and in control mode
//! (with control up and down).
//!
//! The origins here have no inbound reachability the edge could be configured with: the edge
//! has no endpoint for them (`[[origins]]` without `endpoint`, or control's snapshot without
//! one) and only ever learns where they are from their packets, as with an origin behind NAT.
//! Their keepalive is 5 s (file mode) or control's default (25 s): without the restarted edge
//! reaching out, the origin would notice the lost session only after two keepalive intervals
//! and more.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use kokoa_tests::apps::HttpApp;
use kokoa_tests::client::{EdgeClient, Proto};
use kokoa_tests::control::Fleet;
use kokoa_tests::net::loopback;
use kokoa_tests::topology::Builder;

use crate::run_bounded;

/// The bound of issue 16: from the restarted edge's readiness to the first good response.
const RESTART_BOUND: Duration = Duration::from_secs(2);

/// Sends requests for `host` until one is answered 200, each bounded so that a request stuck
/// on a tunnel that is not up yet does not hide a later success; returns how long it took
/// from `ready`. Gives up after `limit`.
pub async fn first_good_response(
    client: &EdgeClient,
    host: &str,
    ready: Instant,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let mut last = String::from("no attempt");
    while ready.elapsed() < limit {
        match tokio::time::timeout(Duration::from_secs(1), client.get(host, "/", Proto::Http1))
            .await
        {
            Ok(Ok(answer)) if answer.status == 200 => return Ok(ready.elapsed()),
            Ok(Ok(answer)) => last = format!("status {}", answer.status),
            Ok(Err(error)) => last = format!("{error:#}"),
            Err(_) => last = "no answer within 1 s".into(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("no good response within {limit:?} of the edge's readiness (last: {last})")
}

async fn file_mode(signal: &'static str) -> anyhow::Result<()> {
    let app = HttpApp::start("nat", loopback(1)).await?;
    let mut topology = Builder::new()
        .origin("home", &[("web", 8001, app.addr)])
        .route("nat.test", "home", 8001)
        .drain_timeout(2)
        .start()
        .await?;
    let client = topology.client()?;
    let answer = client.get("nat.test", "/", Proto::Http1).await?;
    ensure!(
        answer.status == 200,
        "before the restart: {}",
        answer.status
    );
    // The edge remembers the endpoint it learned (written within a second of learning it).
    let cache = topology.edge.spec.state_dir.join("tunnel-peers");
    kokoa_tests::eventually("the edge's peer cache", Duration::from_secs(5), || {
        let cache = cache.clone();
        async move {
            let text = std::fs::read_to_string(&cache)
                .with_context(|| format!("reading {}", cache.display()))?;
            ensure!(text.lines().any(|l| !l.starts_with('#')), "{text:?}");
            Ok(())
        }
    })
    .await?;

    for round in 1..=2 {
        let ready = topology.restart_edge(signal).await?;
        let gap = first_good_response(&client, "nat.test", ready, Duration::from_secs(30))
            .await
            .with_context(|| {
                format!(
                    "restart {round} ({signal})\n{}\n{}",
                    topology.edge.process.logs(),
                    topology.origins[0].process.logs()
                )
            })?;
        eprintln!(
            "file mode, SIG{signal} restart {round}: first good response {gap:?} after readiness"
        );
        ensure!(
            gap <= RESTART_BOUND,
            "restart {round} (SIG{signal}): the first good response came {gap:?} after the edge was ready (bound {RESTART_BOUND:?})"
        );
    }
    Ok(())
}

#[test]
fn an_edge_killed_and_restarted_serves_an_origin_behind_nat_within_2s() {
    run_bounded(Duration::from_secs(120), file_mode("KILL"));
}

#[test]
fn an_edge_restarted_with_sigterm_and_drain_serves_an_origin_behind_nat_within_2s() {
    run_bounded(Duration::from_secs(120), file_mode("TERM"));
}

#[test]
fn a_control_mode_edge_restart_serves_within_2s_with_control_up_and_down() {
    run_bounded(Duration::from_secs(240), async {
        let app = HttpApp::start("ctl", loopback(1)).await?;
        let mut fleet = Fleet::start(
            &["home"],
            &[("home", "web", 8001, app.addr)],
            &[("web.ctl.test", "home", "web")],
        )
        .await?;
        fleet
            .serves("web.ctl.test", "ctl", Duration::from_secs(30))
            .await?;
        let client = fleet.client()?;
        // Give the edge a moment to write the origin's endpoint down (within a second).
        let cache = fleet
            .edge
            .config
            .parent()
            .context("the edge's directory")?
            .join("state")
            .join("tunnel-peers");
        kokoa_tests::eventually("the edge's peer cache", Duration::from_secs(5), || {
            let cache = cache.clone();
            async move {
                let text = std::fs::read_to_string(&cache)
                    .with_context(|| format!("reading {}", cache.display()))?;
                ensure!(text.lines().any(|l| !l.starts_with('#')), "{text:?}");
                Ok(())
            }
        })
        .await?;

        // Control up: SIGKILL, then SIGTERM.
        for signal in ["KILL", "TERM"] {
            let process = fleet.edge.process.take().context("the edge runs")?;
            process.signal(signal).await?;
            let mut process = process;
            process.wait_exit(Duration::from_secs(15)).await?;
            fleet.edge.start().await?;
            let ready = Instant::now();
            let gap = first_good_response(&client, "web.ctl.test", ready, Duration::from_secs(60))
                .await
                .with_context(|| format!("control up, SIG{signal}\n{}", fleet.edge.logs()))?;
            eprintln!("control mode, control up, SIG{signal}: first good response {gap:?} after readiness");
            ensure!(
                gap <= RESTART_BOUND,
                "control up, SIG{signal}: the first good response came {gap:?} after the edge was ready (bound {RESTART_BOUND:?})"
            );
        }

        // Control down: the edge restarts from its persisted snapshot and peer cache.
        fleet.control.kill().await?;
        fleet.edge.kill().await?;
        fleet.edge.start().await?;
        let ready = Instant::now();
        let gap = first_good_response(&client, "web.ctl.test", ready, Duration::from_secs(60))
            .await
            .with_context(|| format!("control down\n{}", fleet.edge.logs()))?;
        eprintln!(
            "control mode, control down, SIGKILL: first good response {gap:?} after readiness"
        );
        ensure!(
            gap <= RESTART_BOUND,
            "control down: the first good response came {gap:?} after the edge was ready (bound {RESTART_BOUND:?})"
        );
        Ok(())
    });
}
