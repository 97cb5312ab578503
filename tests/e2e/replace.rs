//! Self-healing edges, end to end: the real `kokoa-control serve` with `--provisioner local
//! --auto-replace`, DNS steering into a real BIND, an origin with a sample app, a webhook
//! receiver (harness: `kokoa_tests::provision`). Control provisions two edges (real
//! `kokoa-edge` processes it starts, each on its own loopback address); the test SIGKILLs one.
//!
//! What must hold (issue 13): a new edge is provisioned, serves the route through the tunnel
//! (an HTTPS request to its address), and appears in DNS; the killed one is gone from DNS, from
//! the store and from disk; the webhook got the replacement's events in order
//! (`edge.offline`, `edge.replace_started`, `edge.provisioned`, `edge.serving`,
//! `edge.destroyed`, `edge.replaced`). And a control restart in the middle of a replacement
//! leaks no machine: the replacement resumes and finishes.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use kokoa_tests::dns::tools_or_skip;
use kokoa_tests::eventually;
use kokoa_tests::provision::{local_edge_pid, SelfHealing, Settings};

use crate::run_bounded;

/// Time for control, the origin and two edges to start and the edges to pass their first
/// probes (healthy threshold 3 x 5 s) and be published.
const SETTLE: Duration = Duration::from_secs(90);
/// Kill -> replaced: detection (about 15 s with the default checks), `--replace-after` (5 s
/// here), provisioning, the new edge's probes (3 x 5 s), the old one's destruction. The
/// benchmark measures it; this bound is generous.
const REPLACE: Duration = Duration::from_secs(120);

/// The kinds, in order, that a replacement of `old` by `new` must have delivered.
fn in_order(delivered: &[kokoa_tests::provision::Delivered], old: &str, new: &str) -> Result<()> {
    let expected = [
        ("edge.offline", old),
        ("edge.replace_started", old),
        ("edge.provisioned", new),
        ("edge.serving", new),
        ("edge.destroyed", old),
        ("edge.replaced", old),
    ];
    let mut position = 0;
    let mut last_id = 0;
    for (kind, name) in expected {
        let found = delivered[position..]
            .iter()
            .position(|d| d.kind == kind && d.detail["name"] == name)
            .with_context(|| {
                format!(
                    "no {kind} of {name} after position {position}: {:?}",
                    delivered
                        .iter()
                        .map(|d| format!("{}#{} {}", d.kind, d.event_id, d.detail["name"]))
                        .collect::<Vec<_>>()
                )
            })?;
        let d = &delivered[position + found];
        ensure!(d.event_id > last_id, "{kind} arrived out of event order");
        last_id = d.event_id;
        position += found + 1;
    }
    Ok(())
}

#[test]
fn a_killed_edge_is_replaced_by_a_provisioned_one() {
    run_bounded(Duration::from_secs(420), async {
        if !tools_or_skip(
            "a_killed_edge_is_replaced_by_a_provisioned_one",
            &["named", "dig", "nsupdate"],
        ) {
            return Ok(());
        }
        let fleet = SelfHealing::start(Settings::default()).await?;
        let first = fleet.provision("edge1").await?;
        let second = fleet.provision("edge2").await?;
        fleet.serves(first, SETTLE).await?;
        fleet.serves(second, SETTLE).await?;
        fleet
            .dns_is(&BTreeSet::from([first, second]), SETTLE)
            .await?;

        let killed_dir = fleet.local_dir.join("edge1");
        fleet.kill("edge1").await?;
        let new = fleet.successor("edge1", REPLACE).await?;
        let replacement = fleet.replaced("edge1", REPLACE).await?;
        ensure!(new == replacement, "{new} vs {replacement}");
        eprintln!("replace: edge1 replaced by {new}");
        let third = fleet.public_ip(&new).await?;
        ensure!(
            third != first && third != second,
            "the new edge reuses {third}"
        );

        // The new edge serves the route through the tunnel, and DNS has it, not the dead one.
        fleet.serves(third, Duration::from_secs(10)).await?;
        fleet
            .dns_is(&BTreeSet::from([second, third]), Duration::from_secs(10))
            .await?;
        // The old edge is gone from the store and its machine (directory, process) destroyed.
        let (status, _) = fleet.control.call("GET", "/edge-nodes/edge1", None).await?;
        ensure!(status == 404, "edge1 is still in the store ({status})");
        ensure!(!killed_dir.exists(), "edge1's directory is still there");
        let names: BTreeSet<String> = fleet.edges().await?.into_iter().map(|(n, _)| n).collect();
        ensure!(
            names == BTreeSet::from(["edge2".to_owned(), new.clone()]),
            "edges after the replacement: {names:?}"
        );
        let instances = fleet
            .control
            .ok("GET", "/provision/instances", None)
            .await?;
        ensure!(
            instances.as_array().map(Vec::len) == Some(2),
            "machines on record: {instances}"
        );

        // The webhook got the steps, in order.
        eventually(
            "the webhook got edge.replaced",
            Duration::from_secs(10),
            || async { in_order(&fleet.webhook.received(), "edge1", &new) },
        )
        .await?;

        fleet.destroy_all().await?;
        ensure!(
            fleet.edges().await?.is_empty(),
            "edges left after destroying all"
        );
        Ok(())
    });
}

#[test]
fn a_replacement_survives_a_control_restart() {
    run_bounded(Duration::from_secs(420), async {
        if !tools_or_skip(
            "a_replacement_survives_a_control_restart",
            &["named", "dig", "nsupdate"],
        ) {
            return Ok(());
        }
        let mut fleet = SelfHealing::start(Settings::default()).await?;
        let first = fleet.provision("edge1").await?;
        fleet.serves(first, SETTLE).await?;

        // A manual replacement of a healthy edge; control is killed while the new edge is
        // being brought up (it has a machine, it does not serve yet).
        fleet.control.cli(&["edge", "replace", "edge1"]).await?;
        let new = fleet.successor("edge1", Duration::from_secs(30)).await?;
        eventually(
            "the new edge's machine",
            Duration::from_secs(30),
            || async {
                local_edge_pid(&fleet.local_dir.join(&new))
                    .map(drop)
                    .with_context(|| format!("{new} does not run yet"))
            },
        )
        .await?;
        fleet.control.kill().await?;
        fleet.control.restart().await?;

        // It resumes: the new edge serves, the old one is drained and destroyed.
        let replacement = fleet.replaced("edge1", REPLACE).await?;
        ensure!(new == replacement, "{new} vs {replacement}");
        let ip = fleet.public_ip(&new).await?;
        fleet.serves(ip, Duration::from_secs(10)).await?;
        ensure!(
            !fleet.local_dir.join("edge1").exists(),
            "edge1's machine was not destroyed"
        );
        // One machine per edge on record, none leaked.
        let dirs = std::fs::read_dir(&fleet.local_dir)?.count();
        ensure!(dirs == 1, "{dirs} local machines after the replacement");
        fleet.destroy_all().await?;
        Ok(())
    });
}
