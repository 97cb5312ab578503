//! Bounded memory for tunnel streams (issue 16): a client that stalls a thousand HTTP/2
//! streams, clients that trickle request bodies or stop halfway, and an edge that stops
//! reading. Both nodes' resident memory stays under a stated bound while a good client keeps
//! getting answers, what they held is released when the attacker goes, and the origin never
//! holds a stream its edge stopped reading for longer than `[tunnel] stall_timeout`.
//!
//! Before issue 16, 1,000 stalled streams took each node to about 600 MB and the origin kept
//! it after the client left.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use kokoa_tests::apps::HttpApp;
use kokoa_tests::client::{EdgeClient, Proto};
use kokoa_tests::config::TunnelKeys;
use kokoa_tests::hostile::{rss_kib, slow_body, StalledWindows};
use kokoa_tests::net::{eventually, loopback, metric};
use kokoa_tests::topology::{Builder, Topology};

use crate::run_bounded;

const MIB: u64 = 1024;

/// Each node's resident memory with 1,000 stalled streams open, at most (KiB). About 600 MB
/// per node before issue 16.
const STALLED_RSS_BOUND: u64 = 160 * MIB;

/// How far above its pre-attack reading a node's resident memory may stay once the attacker
/// has gone (KiB): what the allocator keeps for reuse.
const RETURNED_RSS_SLACK: u64 = 48 * MIB;

/// A good client from its own address: requests `/echo` in a loop (and a 1 MiB download now
/// and then) until `stop`, counting answers; fails on any answer that is not right.
fn good_client(
    client: EdgeClient,
    host: &'static str,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<anyhow::Result<Duration>> {
    tokio::spawn(async move {
        let mut slowest = Duration::ZERO;
        let mut i = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let (path, len) = if i % 10 == 9 {
                ("/bytes/1048576", Some(1_048_576))
            } else {
                ("/echo", None)
            };
            let answer = tokio::time::timeout(
                Duration::from_secs(10),
                client.get(host, path, Proto::Http2),
            )
            .await
            .with_context(|| format!("the good client's {path} got no answer within 10 s"))??;
            ensure!(
                answer.status == 200,
                "the good client got {}",
                answer.status
            );
            if let Some(len) = len {
                ensure!(
                    answer.body.len() == len,
                    "short download: {}",
                    answer.body.len()
                );
            }
            slowest = slowest.max(started.elapsed());
            served.fetch_add(1, Ordering::Relaxed);
            i += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(slowest)
    })
}

fn rss(topology: &Topology) -> anyhow::Result<(u64, u64)> {
    let edge = topology.edge.process.id().context("edge pid")?;
    let origin = topology.origins[0].process.id().context("origin pid")?;
    Ok((rss_kib(edge)?, rss_kib(origin)?))
}

async fn window_bytes(admin: SocketAddr) -> anyhow::Result<f64> {
    metric(admin, "kokoa_tunnel_window_bytes")
        .await?
        .context("no kokoa_tunnel_window_bytes")
}

#[test]
fn a_thousand_stalled_streams_cost_little_and_their_memory_returns() {
    run_bounded(Duration::from_secs(240), async {
        // The app's kernel buffers are kept small: they are not what is measured, and filling
        // megabytes per connection would slow the test process down.
        let app = HttpApp::start_with_send_buffer("big", loopback(1), Some(32 * 1024)).await?;
        let topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route("big.test", "home", 8001)
            .start()
            .await?;
        let client = topology.client()?;
        let warm = client
            .get("big.test", "/bytes/1048576", Proto::Http2)
            .await?;
        ensure!(warm.status == 200 && warm.body.len() == 1_048_576);
        let before = rss(&topology)?;

        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let good = good_client(
            client.with_source(loopback(4)),
            "big.test",
            stop.clone(),
            served.clone(),
        );

        // Ten HTTP/2 connections from one address, 100 streams of a 100 MB response each,
        // every stream's window at 0.
        let attacker = client.with_source(loopback(3));
        let attack = StalledWindows::open(
            &attacker,
            "big.test",
            "/zeros/100000000",
            10,
            100,
            Duration::from_secs(90),
        )
        .await?;
        eprintln!(
            "stalled streams: {} answered of {} ({} failed: {:?})",
            attack.answered(),
            attack.requested(),
            attack.failed().len(),
            attack.failed().first()
        );
        ensure!(
            attack.answered() >= 900,
            "only {} of 1,000 stalled streams were answered: {:?}",
            attack.answered(),
            attack.failed().first()
        );
        // Let every stream fill what it may hold.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let during = rss(&topology)?;
        let edge_window = window_bytes(topology.edge.spec.admin).await?;
        let origin_window = window_bytes(topology.origins[0].spec.admin).await?;
        eprintln!(
            "RSS before {before:?} KiB, with 1,000 stalled streams {during:?} KiB; window bytes edge {edge_window}, origin {origin_window}"
        );
        ensure!(
            during.0 <= STALLED_RSS_BOUND && during.1 <= STALLED_RSS_BOUND,
            "RSS with 1,000 stalled streams: edge {} KiB, origin {} KiB (bound {STALLED_RSS_BOUND} KiB each)",
            during.0,
            during.1
        );
        // The stalled client's share (16 MiB) plus the minimum (2 x 4 KiB) per further stream,
        // plus the good client's: nowhere near 2 x 256 KiB per stream.
        for (node, bytes) in [("edge", edge_window), ("origin", origin_window)] {
            ensure!(
                bytes <= 40.0 * 1024.0 * 1024.0,
                "{node} holds {bytes} bytes of stream buffers"
            );
        }

        // The good client was served all along.
        let count = served.load(Ordering::Relaxed);
        ensure!(
            count >= 10,
            "the good client got only {count} answers during the attack"
        );

        // The attacker leaves: streams, app connections and memory are released. (The good
        // client's few keep-alive connections stay open in the edge's upstream pool.)
        stop.store(true, Ordering::Relaxed);
        let slowest = good.await.context("the good client task")??;
        attack.leave().await;
        eventually("streams released", Duration::from_secs(30), || async {
            let active = metric(
                topology.origins[0].spec.admin,
                "kokoa_origin_streams_active",
            )
            .await?
            .unwrap_or(0.0);
            let edge_window = window_bytes(topology.edge.spec.admin).await?;
            let origin_window = window_bytes(topology.origins[0].spec.admin).await?;
            ensure!(
                active <= 4.0
                    && edge_window <= 8.0 * 1024.0 * 1024.0
                    && origin_window <= 8.0 * 1024.0 * 1024.0,
                "origin streams {active}, window bytes edge {edge_window}, origin {origin_window}"
            );
            Ok(())
        })
        .await?;
        let after = eventually("memory returned", Duration::from_secs(30), || async {
            let now = rss(&topology)?;
            ensure!(
                now.0 <= before.0 + RETURNED_RSS_SLACK && now.1 <= before.1 + RETURNED_RSS_SLACK,
                "RSS {now:?} KiB, before the attack {before:?} KiB"
            );
            Ok(now)
        })
        .await?;
        eprintln!(
            "after the attacker left: {after:?} KiB; the good client got {} answers, the slowest in {slowest:?}",
            served.load(Ordering::Relaxed)
        );
        Ok(())
    });
}

#[test]
fn trickling_and_stalled_bodies_are_released_as_soon_as_their_clients_go() {
    run_bounded(Duration::from_secs(120), async {
        let app = HttpApp::start("upload", loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route("up.test", "home", 8001)
            .start()
            .await?;
        let client = topology.client()?;
        // Warm up (first-use allocations: TLS, HTTP/1.1 and upload paths), then measure.
        for _ in 0..3 {
            let answer = client.get("up.test", "/echo", Proto::Http1).await?;
            ensure!(answer.status == 200);
        }
        let before = rss(&topology)?;
        let origin_admin = topology.origins[0].spec.admin;
        // The warm-up's keep-alive connection stays open in the edge's upstream pool.
        let pooled = metric(origin_admin, "kokoa_origin_streams_active")
            .await?
            .unwrap_or(0.0);

        // Twenty bodies of 100 bytes sent one byte a second, and one that stops after 2 bytes.
        let attacker = client.with_source(loopback(3));
        let mut bodies = tokio::task::JoinSet::new();
        for i in 0..21 {
            let attacker = attacker.clone();
            let sent = if i == 20 { 2 } else { 100 };
            bodies.spawn(async move {
                slow_body(
                    &attacker,
                    "up.test",
                    "/upload",
                    100,
                    sent,
                    Duration::from_secs(1),
                    Duration::from_secs(600),
                )
                .await
            });
        }
        // Each reached the app through its own tunnel stream.
        eventually("bodies under way", Duration::from_secs(20), || async {
            let active = metric(origin_admin, "kokoa_origin_streams_active").await?;
            // (The pooled connection may carry one of them.)
            ensure!(active >= Some(21.0), "origin streams {active:?}");
            Ok(())
        })
        .await?;
        // A good client meanwhile.
        let answer = client
            .with_source(loopback(4))
            .get("up.test", "/echo", Proto::Http1)
            .await?;
        ensure!(answer.status == 200);
        let during = rss(&topology)?;
        eprintln!("RSS before {before:?} KiB, with 21 trickling bodies {during:?} KiB");
        ensure!(
            during.0 <= before.0 + 32 * MIB && during.1 <= before.1 + 32 * MIB,
            "21 slow bodies grew RSS from {before:?} to {during:?} KiB"
        );

        // The clients go: every tunnel stream and app connection is released at once.
        bodies.shutdown().await;
        let left = Instant::now();
        eventually("streams released", Duration::from_secs(10), || async {
            let active = metric(origin_admin, "kokoa_origin_streams_active").await?;
            ensure!(active <= Some(pooled), "origin streams {active:?}");
            Ok(())
        })
        .await?;
        let took = left.elapsed();
        eprintln!("released {took:?} after the clients left");
        ensure!(
            took < Duration::from_secs(3),
            "the origin held the streams {took:?} after their clients left"
        );
        Ok(())
    });
}

#[test]
fn the_origin_resets_streams_whose_edge_stopped_reading() {
    run_bounded(Duration::from_secs(120), async {
        let app = HttpApp::start_with_send_buffer("big", loopback(1), Some(32 * 1024)).await?;
        let topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route("big.test", "home", 8001)
            .origin_tunnel(TunnelKeys {
                stall_timeout: Some(3),
                ..TunnelKeys::default()
            })
            .start()
            .await?;
        let origin_admin = topology.origins[0].spec.admin;
        let attacker = topology.client()?.with_source(loopback(3));
        let attack = StalledWindows::open(
            &attacker,
            "big.test",
            "/zeros/100000000",
            1,
            50,
            Duration::from_secs(30),
        )
        .await?;
        ensure!(attack.answered() == 50, "{:?}", attack.failed().first());
        let opened = Instant::now();
        // The client keeps its connection open; the origin gives up on each stream after
        // 3 s without an acknowledgment, resets it and closes its app connection.
        eventually("stalled streams reset", Duration::from_secs(20), || async {
            let resets = metric(origin_admin, "kokoa_tunnel_stalled_resets_total")
                .await?
                .unwrap_or(0.0);
            let active = metric(origin_admin, "kokoa_origin_streams_active").await?;
            ensure!(
                resets >= 50.0 && active == Some(0.0),
                "resets {resets}, origin streams {active:?}"
            );
            Ok(())
        })
        .await?;
        let took = opened.elapsed();
        eprintln!("all 50 stalled streams reset {took:?} after they stalled");
        ensure!(
            took >= Duration::from_secs(2),
            "reset after {took:?}: before the stall timeout"
        );
        attack.leave().await;
        Ok(())
    });
}
