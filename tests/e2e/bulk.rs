//! Large bodies both ways with checksums, and 1,000 concurrent connections.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, StreamBody};
use hyper::body::Frame;
use kokoa_tests::apps::{fill_pattern, hex, pattern_sha256, HttpApp};
use kokoa_tests::client::{read, request, Proto};
use kokoa_tests::net::loopback;
use kokoa_tests::topology::Builder;
use sha2::{Digest as _, Sha256};

use crate::run_bounded;

const BIG: u64 = 64 * 1024 * 1024;

#[test]
fn upload_and_download_64_mib_with_checksums() {
    run_bounded(Duration::from_secs(150), async {
        let app = HttpApp::start("bulk", loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route("bulk.test", "home", 8001)
            .start()
            .await?;
        let client = topology.client()?;
        let expected = pattern_sha256(BIG);

        // Download: hashed as it streams, never held whole.
        let started = Instant::now();
        let mut connection = client.connect("bulk.test", Proto::Http1).await?;
        let response = connection
            .send(request(
                "bulk.test",
                &format!("/bytes/{BIG}"),
                "GET",
                Empty::new().boxed(),
            )?)
            .await?;
        ensure!(response.status() == 200, "download: {}", response.status());
        let mut body = response.into_body();
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), body.frame())
            .await
            .context("download stalled for 30 s")?
        {
            if let Some(data) = frame.context("download body")?.data_ref() {
                hasher.update(data);
                len += data.len() as u64;
            }
        }
        ensure!(len == BIG, "downloaded {len} bytes");
        ensure!(
            hex(&hasher.finalize()) == expected,
            "download checksum differs"
        );
        let secs = started.elapsed().as_secs_f64();
        eprintln!("64 MiB download: {secs:.2} s ({:.1} MiB/s)", 64.0 / secs);

        // Upload: streamed from the pattern; the app answers with its own SHA-256.
        let started = Instant::now();
        let chunks = futures_util::stream::unfold(0u64, |offset| async move {
            if offset >= BIG {
                return None;
            }
            let n = (BIG - offset).min(256 * 1024) as usize;
            let mut buf = vec![0u8; n];
            fill_pattern(offset, &mut buf);
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from(buf))),
                offset + n as u64,
            ))
        });
        let mut upload = request(
            "bulk.test",
            "/upload",
            "POST",
            StreamBody::new(chunks).boxed(),
        )?;
        upload
            .headers_mut()
            .insert("content-length", BIG.to_string().parse()?);
        let mut connection = client.connect("bulk.test", Proto::Http1).await?;
        let answer = read(connection.send(upload).await?).await?;
        ensure!(
            answer.status == 200,
            "upload: {} {}",
            answer.status,
            answer.text()
        );
        ensure!(
            answer.text().trim() == format!("{expected} {BIG}"),
            "upload checksum: app saw {}",
            answer.text()
        );
        let secs = started.elapsed().as_secs_f64();
        eprintln!("64 MiB upload: {secs:.2} s ({:.1} MiB/s)", 64.0 / secs);

        // And a smaller download over HTTP/2 (flow control through the edge).
        let size = 8 * 1024 * 1024;
        let answer = client
            .get("bulk.test", &format!("/bytes/{size}"), Proto::Http2)
            .await?;
        ensure!(answer.status == 200);
        ensure!(
            answer.body.len() as u64 == size,
            "h2 download {} bytes",
            answer.body.len()
        );
        ensure!(hex(&Sha256::digest(&answer.body)) == pattern_sha256(size));
        Ok(())
    });
}

/// The soft and hard limits on open files, from /proc/self/limits.
fn open_files_limits() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line.split_whitespace().skip(3);
    let soft = fields.next()?.parse().ok()?;
    let hard = fields.next()?.parse().unwrap_or(u64::MAX);
    Some((soft, hard))
}

/// Makes sure this process may open `needed` files, raising the soft limit up to the hard one
/// with prlimit(1) if necessary (the workspace forbids the unsafe setrlimit call). The edge and
/// origin started afterwards inherit the limit.
fn ensure_open_files(needed: u64) {
    let Some((soft, hard)) = open_files_limits() else {
        return;
    };
    if soft >= needed {
        return;
    }
    assert!(
        hard >= needed,
        "RLIMIT_NOFILE hard limit is {hard}, below the {needed} this test needs"
    );
    let status = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={needed}:{hard}"))
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "could not raise RLIMIT_NOFILE from {soft} to {needed} with prlimit: {status:?}; \
         run `ulimit -n {needed}` before the tests"
    );
    let raised = open_files_limits().map(|(soft, _)| soft).unwrap_or(0);
    assert!(raised >= needed, "RLIMIT_NOFILE is still {raised}");
}

#[test]
fn a_thousand_concurrent_connections_are_all_answered() {
    const N: usize = 1000;
    // This process holds the clients and the app's side (about 2 fds per connection), the edge
    // and the origin about 2 each; they inherit this process's limit.
    ensure_open_files(4 * N as u64 + 1024);
    run_bounded(Duration::from_secs(120), async {
        let app = HttpApp::start("many", loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route("many.test", "home", 8001)
            .start()
            .await?;
        let client = topology.client()?;
        let barrier = Arc::new(tokio::sync::Barrier::new(N));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..N {
            // Spread the clients over many source addresses, as real traffic would be.
            let client = client.with_source(spread_source(i));
            let barrier = barrier.clone();
            tasks.spawn(async move {
                let connection = client.connect("many.test", Proto::Http1).await;
                // Every connection is open before any request is sent.
                barrier.wait().await;
                let mut connection = connection?;
                let answer = read(
                    connection
                        .send(request(
                            "many.test",
                            &format!("/echo/{i}"),
                            "GET",
                            Empty::new().boxed(),
                        )?)
                        .await?,
                )
                .await?;
                ensure!(answer.status == 200, "connection {i}: {}", answer.status);
                ensure!(
                    answer.text().contains(&format!("\"path\":\"/echo/{i}\"")),
                    "connection {i} got someone else's answer: {}",
                    answer.text()
                );
                anyhow::Ok(())
            });
        }
        let mut failures = Vec::new();
        let mut ok = 0;
        while let Some(result) = tasks.join_next().await {
            match result.context("client task")? {
                Ok(()) => ok += 1,
                Err(error) => failures.push(format!("{error:#}")),
            }
        }
        ensure!(
            failures.is_empty(),
            "{ok} of {N} answered; first failures: {:?}",
            &failures[..failures.len().min(5)]
        );
        Ok(())
    });
}

/// Source address 127.0.1.1 ..= 127.0.4.250 for client number `i`.
fn spread_source(i: usize) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(
        127,
        0,
        1 + (i / 250) as u8,
        1 + (i % 250) as u8,
    ))
}
