//! Slow and stalled clients against the real binaries (issue 16): request bodies that stall or
//! dribble (`client_body_timeout`, `client_body_min_rate`) and clients that stop reading their
//! responses (`send_timeout`, over HTTP/1.1 and HTTP/2 with a window of 0). Each attack must
//! release everything it held, on both nodes: the client connection or stream, the tunnel
//! stream (the edge's and the origin's stream gauges) and the app's connection (the app sees
//! its request cut off), while a good client on the same edge is served.
//!
//! Timers never fire early, so lower bounds are tight; upper bounds leave room for a machine
//! shared with builds.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use bytes::Bytes;
use kokoa_tests::apps::{AppStats, HttpApp};
use kokoa_tests::client::{EdgeClient, Proto};
use kokoa_tests::config::Limits;
use kokoa_tests::eventually;
use kokoa_tests::net::{loopback, metric};
use kokoa_tests::topology::{Builder, Topology};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::run_bounded;

/// The configured timeout in these tests, seconds.
const TIMEOUT: u64 = 2;

/// The tunnel streams open at the edge and at the origin.
async fn stream_gauges(topology: &Topology) -> anyhow::Result<(f64, f64)> {
    let edge = metric(topology.edge.spec.admin, "kokoa_tunnel_active_streams").await?;
    let origin = metric(
        topology.origin("home")?.spec.admin,
        "kokoa_origin_streams_active",
    )
    .await?;
    Ok((edge.unwrap_or(0.0), origin.unwrap_or(0.0)))
}

/// Waits until the app holds `active` requests, and the edge and the origin at least as many
/// tunnel streams; returns how long that took.
async fn wait_held(
    topology: &Topology,
    stats: &AppStats,
    upload: bool,
    active: usize,
    baseline: (f64, f64),
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    eventually(
        "the attack reaches the app",
        Duration::from_secs(20),
        || {
            let stats = stats.snapshot();
            async move {
                let now = if upload { stats.0 } else { stats.2 };
                ensure!(now == active, "{now} of {active} at the app: {stats:?}");
                Ok(())
            }
        },
    )
    .await?;
    // The attack may have taken the baseline's idle pooled connection.
    let (edge, origin) = stream_gauges(topology).await?;
    ensure!(
        edge >= active as f64 && origin >= active as f64,
        "streams held: edge {edge}, origin {origin} (baseline {baseline:?})"
    );
    Ok(started.elapsed())
}

/// Waits until the app saw `cut` requests cut off and has none left, and the edge's and the
/// origin's stream gauges are back at `baseline`; returns how long that took.
async fn wait_released(
    topology: &Topology,
    stats: &AppStats,
    upload: bool,
    cut: usize,
    baseline: (f64, f64),
    limit: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    eventually("everything released", limit, || {
        let snapshot = stats.snapshot();
        async move {
            let (active, done) = if upload {
                (snapshot.0, snapshot.1)
            } else {
                (snapshot.2, snapshot.3)
            };
            ensure!(
                active == 0 && done == cut,
                "app: {active} still running, {done} of {cut} cut ({snapshot:?})"
            );
            let (edge, origin) = stream_gauges(topology).await?;
            ensure!(
                edge <= baseline.0 && origin <= baseline.1,
                "streams: edge {edge}, origin {origin} (baseline {baseline:?})"
            );
            Ok(())
        }
    })
    .await?;
    Ok(started.elapsed())
}

/// A good client asks `count` times, each answered 200 within a second.
async fn good_client_is_served(
    client: &EdgeClient,
    host: &str,
    count: usize,
) -> anyhow::Result<()> {
    for i in 0..count {
        let proto = if i % 2 == 0 {
            Proto::Http1
        } else {
            Proto::Http2
        };
        let started = Instant::now();
        let answer = client.get(host, "/echo", proto).await?;
        ensure!(
            answer.status == 200,
            "good request {i} over {proto:?}: {}",
            answer.status
        );
        ensure!(
            started.elapsed() < Duration::from_secs(1),
            "good request {i} took {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Sends `head`, then up to `length` body bytes one every `every` while reading; returns what
/// came back and when the connection ended, counted from the head.
async fn dribble(
    client: EdgeClient,
    host: &'static str,
    head: String,
    length: usize,
    every: Duration,
) -> anyhow::Result<(String, Duration)> {
    let tls = client.tls(host, Proto::Http1).await?;
    let (mut read, mut write) = tokio::io::split(tls);
    write.write_all(head.as_bytes()).await?;
    write.flush().await?;
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..length {
            if write.write_all(b"x").await.is_err() || write.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
        // Keep the write half open: the edge decides when the exchange ends.
        std::future::pending::<()>().await;
    });
    let mut response = Vec::new();
    // The edge may reset the connection after its answer: what arrived before counts.
    let _ = tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut response)).await;
    let ended = started.elapsed();
    writer.abort();
    Ok((String::from_utf8_lossy(&response).into_owned(), ended))
}

#[test]
fn stalled_and_dribbling_bodies_release_the_tunnel_stream_and_the_app_connection() {
    run_bounded(Duration::from_secs(120), async {
        let app = HttpApp::start("uploads", loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route("slow.test", "home", 8001)
            .limits(Limits {
                client_body_timeout: Some(TIMEOUT),
                client_body_min_rate: Some(100),
                ..Limits::default()
            })
            .start()
            .await?;
        let client = topology.client()?;
        let good = client.with_source(loopback(3));
        // Warm up: the good client's pooled upstream connection belongs to the baseline.
        good_client_is_served(&good, "slow.test", 2).await?;
        let baseline = stream_gauges(&topology).await?;

        // Twenty connections from 127.0.0.2, each sending one body byte every 100 ms (10
        // bytes/s, a tenth of the minimum rate), and one from 127.0.0.4 that stops after 2 of
        // its 100 bytes.
        let mut attackers = Vec::new();
        for _ in 0..20 {
            attackers.push(tokio::spawn(dribble(
                client.with_source(loopback(2)),
                "slow.test",
                "POST /upload HTTP/1.1\r\nHost: slow.test\r\nContent-Length: 100000\r\n\r\n".into(),
                100_000,
                Duration::from_millis(100),
            )));
        }
        attackers.push(tokio::spawn(dribble(
            client.with_source(loopback(4)),
            "slow.test",
            "POST /upload HTTP/1.1\r\nHost: slow.test\r\nContent-Length: 100\r\n\r\n".into(),
            2,
            Duration::from_millis(10),
        )));
        let held = wait_held(&topology, &app.stats, true, 21, baseline).await?;
        eprintln!("21 bodies held at the app and in the tunnel after {held:?}");
        good_client_is_served(&good, "slow.test", 6).await?;

        for (i, attacker) in attackers.into_iter().enumerate() {
            let (response, ended) = attacker.await??;
            ensure!(
                response.starts_with("HTTP/1.1 408"),
                "attacker {i} got {response:?}"
            );
            ensure!(
                ended >= Duration::from_millis(TIMEOUT * 1000 - 100)
                    && ended < Duration::from_secs(TIMEOUT + 6),
                "attacker {i} cut off after {ended:?}"
            );
        }
        let released = wait_released(
            &topology,
            &app.stats,
            true,
            21,
            baseline,
            Duration::from_secs(10),
        )
        .await?;
        eprintln!("everything released {released:?} after the last 408");

        let admin = topology.edge.spec.admin;
        let timeouts = metric(admin, "kokoa_edge_timeouts_total{kind=\"client_body\"}").await?;
        ensure!(timeouts == Some(21.0), "client_body timeouts: {timeouts:?}");
        let refused = metric(
            admin,
            "kokoa_edge_requests_total{host=\"slow.test\",class=\"4xx\"}",
        )
        .await?;
        ensure!(refused == Some(21.0), "4xx on the route: {refused:?}");
        let failed = metric(
            admin,
            "kokoa_edge_requests_total{host=\"slow.test\",class=\"5xx\"}",
        )
        .await?;
        ensure!(failed.is_none(), "5xx on the route: {failed:?}");
        good_client_is_served(&good, "slow.test", 2).await?;
        Ok(())
    });
}

/// Opens `streams` HTTP/2 streams for `path` on one connection whose stream window is 0 and
/// never opened; returns the connection and the streams' bodies.
async fn stalled_h2(
    client: &EdgeClient,
    host: &str,
    path: &str,
    streams: usize,
) -> anyhow::Result<(h2::client::SendRequest<Bytes>, Vec<h2::RecvStream>)> {
    let tls = client.tls(host, Proto::Http2).await?;
    let (mut sender, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tls)
        .await?;
    tokio::spawn(connection);
    let mut bodies = Vec::new();
    for _ in 0..streams {
        sender = sender.ready().await?;
        let request = hyper::Request::get(format!("https://{host}{path}")).body(())?;
        let (response, _) = sender.send_request(request, true)?;
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .context("response head")??;
        ensure!(response.status() == 200, "{}", response.status());
        bodies.push(response.into_body());
    }
    Ok((sender, bodies))
}

#[test]
fn clients_that_stop_reading_release_the_tunnel_stream_and_the_app_connection() {
    run_bounded(Duration::from_secs(120), async {
        let app = HttpApp::start("downloads", loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route("big.test", "home", 8001)
            .limits(Limits {
                send_timeout: Some(TIMEOUT),
                ..Limits::default()
            })
            .start()
            .await?;
        let client = topology.client()?;
        let good = client.with_source(loopback(3));
        good_client_is_served(&good, "big.test", 2).await?;
        let baseline = stream_gauges(&topology).await?;
        let path = "/bytes/1000000000";

        // HTTP/1.1 from 127.0.0.2: asks for a gigabyte and reads nothing.
        let mut h1 = client
            .with_source(loopback(2))
            .tls("big.test", Proto::Http1)
            .await?;
        h1.write_all(format!("GET {path} HTTP/1.1\r\nHost: big.test\r\n\r\n").as_bytes())
            .await?;
        // HTTP/2 from 127.0.0.4: ten streams of a gigabyte behind a window of 0.
        let (mut sender, mut bodies) =
            stalled_h2(&client.with_source(loopback(4)), "big.test", path, 10).await?;
        let started = Instant::now();
        let held = wait_held(&topology, &app.stats, false, 11, baseline).await?;
        eprintln!("11 responses held at the app and in the tunnel after {held:?}");
        good_client_is_served(&good, "big.test", 6).await?;

        let released = wait_released(
            &topology,
            &app.stats,
            false,
            11,
            baseline,
            Duration::from_secs(TIMEOUT + 8),
        )
        .await?;
        let elapsed = started.elapsed();
        eprintln!("released after {elapsed:?} ({released:?} of waiting)");
        ensure!(
            elapsed >= Duration::from_millis(TIMEOUT * 1000 - 100),
            "released after {elapsed:?}, before the timeout"
        );
        // Each HTTP/2 stream was reset; the connection itself still serves.
        for (i, body) in bodies.iter_mut().enumerate() {
            match tokio::time::timeout(Duration::from_secs(5), body.data()).await {
                Ok(Some(Err(error))) if error.reason() == Some(h2::Reason::CANCEL) => {}
                other => bail!("stream {i}: {other:?}"),
            }
        }
        sender = sender.ready().await?;
        let request = hyper::Request::head("https://big.test/echo").body(())?;
        let (response, _) = sender.send_request(request, true)?;
        let response = tokio::time::timeout(Duration::from_secs(10), response).await??;
        ensure!(
            response.status() == 200,
            "HEAD after the resets: {}",
            response.status()
        );
        // The HTTP/1.1 connection is gone: what was buffered drains, then it ends.
        let mut sink = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), h1.read_to_end(&mut sink))
            .await
            .context("the stalled HTTP/1.1 connection is still open")?
            .ok();
        let timeouts = metric(
            topology.edge.spec.admin,
            "kokoa_edge_timeouts_total{kind=\"send\"}",
        )
        .await?;
        ensure!(timeouts == Some(11.0), "send timeouts: {timeouts:?}");
        Ok(())
    });
}
