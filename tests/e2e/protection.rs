//! Edge protection against hostile clients (issue 4): per-client request rate limits, slow and
//! oversized requests, HTTP/2 rapid reset, WireGuard junk and handshake floods, allow/deny lists,
//! PROXY protocol v2 on raw TCP routes and per-client connection caps.
//!
//! Clients come from several loopback addresses (the client socket is bound to 127.0.0.x before
//! connecting), so the edge sees several distinct clients. Timing assertions carry wide margins:
//! timers never fire early, so lower bounds are tight and upper bounds are generous.
//!
//! Why this file is longer than ~1,000 lines: one attack per test, all against the same
//! deployment helpers; the list of attacks is the list, kept in one place.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use kokoa_tests::apps::{fill_pattern, pattern_sha256, HttpApp, ProxyProtocolApp};
use kokoa_tests::client::{read, request, EdgeClient, Proto};
use kokoa_tests::config::{EdgeTimeouts, Limits};
use kokoa_tests::eventually;
use kokoa_tests::net::{connect_from, http_get, loopback, metric, refused_at_accept, wait_closed};
use kokoa_tests::topology::{Builder, Topology};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::run_bounded;

fn has_app_header(headers: &hyper::HeaderMap) -> bool {
    headers.contains_key("x-app")
}

/// Scrapes the edge's counter `name`, 0 when absent.
async fn edge_counter(topology: &Topology, name: &str) -> anyhow::Result<f64> {
    Ok(metric(topology.edge.spec.admin, name).await?.unwrap_or(0.0))
}

#[test]
fn rate_limit_is_per_client_address_and_recovers() {
    run_bounded(Duration::from_secs(60), async {
        let app = HttpApp::start("limited", loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route("rate.test", "home", 8001)
            .limits(Limits {
                rate: Some(5.0),
                burst: Some(5),
                ..Limits::default()
            })
            .start()
            .await?;
        let client = topology.client()?;
        let noisy = client.with_source(loopback(2));
        let quiet = [
            (3, client.with_source(loopback(3))),
            (4, client.with_source(loopback(4))),
        ];

        // 30 quick requests from 127.0.0.2, each on a fresh connection (so a 429 that closes the
        // connection cannot hide the next answer); the quiet clients ask now and then, 4 times
        // each: under their burst whatever the timing.
        let started = Instant::now();
        let (mut ok, mut limited, mut retry_after_max) = (0u32, 0u32, 0u64);
        for i in 0..30 {
            let answer = noisy
                .get("rate.test", "/echo", Proto::Http1)
                .await
                .with_context(|| format!("request {i} of the noisy client"))?;
            match answer.status.as_u16() {
                200 => ok += 1,
                429 => {
                    limited += 1;
                    let retry_after = answer
                        .headers
                        .get("retry-after")
                        .with_context(|| format!("429 without Retry-After: {:?}", answer.headers))?
                        .to_str()?
                        .to_owned();
                    let secs: u64 = retry_after.trim().parse().with_context(|| {
                        format!("Retry-After {retry_after:?} is not a number of seconds")
                    })?;
                    ensure!(
                        secs <= 60,
                        "Retry-After {secs} s for a 5 r/s limit with burst 5"
                    );
                    retry_after_max = retry_after_max.max(secs);
                    ensure!(
                        !has_app_header(&answer.headers),
                        "the 429 came from the app: the request went through"
                    );
                }
                other => bail!("noisy request {i}: unexpected {other} {}", answer.text()),
            }
            if i % 8 == 3 {
                for (x, quiet) in &quiet {
                    let answer = quiet.get("rate.test", "/echo", Proto::Http1).await?;
                    ensure!(
                        answer.status == 200,
                        "client 127.0.0.{x} was limited along with 127.0.0.2: {} {}",
                        answer.status,
                        answer.text()
                    );
                    let body = answer.text();
                    ensure!(
                        body.contains(&format!("\"x-real-ip\":\"127.0.0.{x}\"")),
                        "the app did not see 127.0.0.{x}: {body}"
                    );
                }
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        eprintln!(
            "noisy client: {ok} x 200, {limited} x 429 in {elapsed:.2} s, Retry-After up to {retry_after_max} s"
        );
        // A token bucket of 5 refilled at 5/s admits at most 5 + 5 t requests in t seconds
        // (one more for rounding at the edges).
        let admissible = 5.0 + 5.0 * elapsed + 1.0;
        ensure!(
            f64::from(ok) <= admissible,
            "{ok} requests passed in {elapsed:.2} s; rate 5/s with burst 5 admits {admissible:.1}"
        );
        ensure!(
            limited > 0,
            "30 requests in {elapsed:.2} s and none got 429"
        );

        // After the window, the same client is served again.
        tokio::time::sleep(Duration::from_secs(retry_after_max.max(1))).await;
        eventually(
            "the noisy client is served after the window",
            Duration::from_secs(10),
            || async {
                let answer = noisy.get("rate.test", "/echo", Proto::Http1).await?;
                ensure!(answer.status == 200, "still {}", answer.status);
                Ok(())
            },
        )
        .await?;

        let counted = eventually("429s counted", Duration::from_secs(5), || async {
            let counted = edge_counter(&topology, "kokoa_edge_rate_limited_total").await?;
            ensure!(
                counted >= f64::from(limited),
                "kokoa_edge_rate_limited_total is {counted}, {limited} requests got 429"
            );
            Ok(counted)
        })
        .await?;
        eprintln!("kokoa_edge_rate_limited_total = {counted}");
        Ok(())
    });
}

/// What a slowloris connection saw.
#[derive(Debug)]
struct Slowloris {
    /// From the TLS handshake's end to the edge closing the connection.
    lasted: Duration,
    /// Head bytes dripped in before the close.
    sent: usize,
    /// What the edge answered before closing (a 408, or nothing).
    answer: Vec<u8>,
    /// How the close showed.
    how: String,
}

/// Opens a TLS connection from 127.0.0.`x` and drips an endless request head, one byte every
/// 250 ms, until the edge closes the connection (or `limit` passes: an error).
async fn slowloris(
    client: EdgeClient,
    host: &'static str,
    limit: Duration,
    connected: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<Slowloris> {
    let tls = client.tls(host, Proto::Http1).await?;
    let started = Instant::now();
    let _ = connected.send(()).await;
    let (mut read, mut write) = tokio::io::split(tls);
    let head = format!("GET /echo HTTP/1.1\r\nHost: {host}\r\nX-Slow: ");
    let mut drip = head.bytes().chain(std::iter::repeat(b'a'));
    let mut sent = 0;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let how = loop {
        if started.elapsed() > limit {
            bail!("a slowloris connection was still open after {limit:?} ({sent} head bytes sent)");
        }
        tokio::select! {
            result = read.read(&mut buf) => match result {
                Ok(0) => break "EOF".to_owned(),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(error) => break error.to_string(),
            },
            _ = tick.tick() => {
                let byte = [drip.next().unwrap_or(b'a')];
                let written = async {
                    write.write_all(&byte).await?;
                    write.flush().await
                };
                if let Err(error) = written.await {
                    break format!("write failed: {error}");
                }
                sent += 1;
            }
        }
    };
    Ok(Slowloris {
        lasted: started.elapsed(),
        sent,
        answer,
        how,
    })
}

fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().next()?;
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

#[test]
fn slowloris_is_cut_off_and_oversized_requests_are_refused() {
    run_bounded(Duration::from_secs(60), async {
        let app = HttpApp::start("sizes", loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route_with(
                "small.test",
                "home",
                8001,
                Limits {
                    max_body_bytes: Some(64 * 1024),
                    ..Limits::default()
                },
            )
            .route("big.test", "home", 8001)
            .timeouts(EdgeTimeouts {
                header_read_timeout: Some(2),
                tls_handshake_timeout: Some(3),
                max_header_bytes: Some(16 * 1024),
            })
            .limits(Limits {
                max_headers: Some(50),
                ..Limits::default()
            })
            .start()
            .await?;
        let client = topology.client()?;

        // --- Slowloris: 8 connections from 127.0.0.3 drip a head slower than the 2 s timeout,
        // and one more from there never even starts TLS (3 s handshake timeout).
        let (connected, mut ready) = tokio::sync::mpsc::channel(8);
        let attackers: Vec<_> = (0..8)
            .map(|_| {
                tokio::spawn(slowloris(
                    client.with_source(loopback(3)),
                    "small.test",
                    Duration::from_secs(15),
                    connected.clone(),
                ))
            })
            .collect();
        let mut silent = connect_from(3, topology.edge.spec.https).await?;
        let silent_started = Instant::now();
        let silent = tokio::spawn(async move {
            let how = wait_closed(&mut silent, Duration::from_secs(15)).await;
            (how, silent_started.elapsed())
        });
        for _ in 0..8 {
            ready
                .recv()
                .await
                .context("a slowloris connection failed its TLS handshake")?;
        }

        // A normal client is served while the attack is on.
        let normal_started = Instant::now();
        for i in 0..5 {
            let answer = client.get("small.test", "/echo", Proto::Http1).await?;
            ensure!(
                answer.status == 200,
                "normal request {i} during the slowloris attack: {} {}",
                answer.status,
                answer.text()
            );
        }
        let normal_took = normal_started.elapsed();
        let still_attacking = attackers.iter().filter(|a| !a.is_finished()).count();
        eprintln!(
            "5 normal requests took {normal_took:?}; {still_attacking} of 8 slowloris connections were still open then"
        );

        for attacker in attackers {
            let seen = attacker.await??;
            eprintln!(
                "slowloris: closed after {:?} ({} bytes sent, {}), answered {:?}",
                seen.lasted,
                seen.sent,
                seen.how,
                String::from_utf8_lossy(&seen.answer)
            );
            // Not before the timeout (timers do not fire early), within a wide margin after.
            ensure!(
                seen.lasted >= Duration::from_millis(1500),
                "a slowloris connection was closed after only {:?}: not the 2 s header timeout",
                seen.lasted
            );
            ensure!(
                seen.lasted <= Duration::from_secs(10),
                "a slowloris connection took {:?} to be closed with a 2 s header timeout",
                seen.lasted
            );
            if !seen.answer.is_empty() {
                ensure!(
                    status_of(&seen.answer) == Some(408),
                    "the edge answered a slowloris with {:?}",
                    String::from_utf8_lossy(&seen.answer)
                );
            }
        }
        let (how, lasted) = silent.await?;
        let how = how.context("a connection that never started TLS")?;
        eprintln!("silent connection: closed after {lasted:?} ({how})");
        ensure!(
            lasted >= Duration::from_millis(2500) && lasted <= Duration::from_secs(10),
            "a connection that never started TLS was closed after {lasted:?} (3 s handshake timeout)"
        );

        // --- Oversized heads: a 20 KiB header (limit 16 KiB), 80 headers (limit 50).
        let big_header = format!(
            "GET /echo HTTP/1.1\r\nHost: small.test\r\nX-Big: {}\r\n\r\n",
            "b".repeat(20 * 1024)
        );
        let many = |count: usize| {
            let mut head = "GET /echo HTTP/1.1\r\nHost: small.test\r\n".to_owned();
            for h in 0..count {
                head.push_str(&format!("X-Header-{h}: {h}\r\n"));
            }
            head.push_str("Connection: close\r\n\r\n");
            head
        };
        let wait = Duration::from_secs(10);
        for (what, head) in [
            ("a 20 KiB header", big_header),
            ("80 header fields", many(80)),
        ] {
            let answer = client
                .raw_http1("small.test", head.into_bytes(), wait)
                .await?;
            ensure!(
                answer.status() == Some(431),
                "{what} got {:?}, expected 431: {:?} (closed: {:?}, write error: {:?})",
                answer.status(),
                answer.text().chars().take(300).collect::<String>(),
                answer.closed,
                answer.write_error
            );
        }
        // Under the limits: served.
        let answer = client
            .raw_http1("small.test", many(30).into_bytes(), wait)
            .await?;
        ensure!(
            answer.status() == Some(200),
            "30 header fields (limit 50) got {:?}: {}",
            answer.status(),
            answer.text()
        );

        // --- Oversized bodies on small.test (max_body_bytes = 64 KiB).
        let over = 200 * 1024;
        let mut body = vec![0u8; over];
        fill_pattern(0, &mut body);
        // Declared by Content-Length: refused from the head, before any body byte.
        let answer = client
            .raw_http1(
                "small.test",
                format!(
                    "POST /upload HTTP/1.1\r\nHost: small.test\r\nContent-Length: {over}\r\n\r\n"
                )
                .into_bytes(),
                wait,
            )
            .await?;
        ensure!(
            answer.status() == Some(413),
            "a declared {over}-byte body (limit 64 KiB) got {:?}: {}",
            answer.status(),
            answer.text()
        );
        // Chunked: refused once the limit is crossed.
        let mut chunked =
            b"POST /upload HTTP/1.1\r\nHost: small.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        for piece in body.chunks(16 * 1024) {
            chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            chunked.extend_from_slice(piece);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let answer = client.raw_http1("small.test", chunked, wait).await?;
        ensure!(
            answer.status() == Some(413),
            "a chunked {over}-byte body (limit 64 KiB) got {:?}: {} (closed: {:?}, write error: {:?})",
            answer.status(),
            answer.text(),
            answer.closed,
            answer.write_error
        );
        // Within the limit, and on a route without one: the app gets every byte.
        for (host, len) in [("small.test", 32 * 1024), ("big.test", over)] {
            for proto in [Proto::Http1, Proto::Http2] {
                let mut connection = client.connect(host, proto).await?;
                let upload = Full::new(Bytes::copy_from_slice(&body[..len]))
                    .map_err(|never| match never {})
                    .boxed();
                let answer = read(
                    connection
                        .send(request(host, "/upload", "POST", upload)?)
                        .await?,
                )
                .await?;
                ensure!(
                    answer.status == 200
                        && answer.text() == format!("{} {len}\n", pattern_sha256(len as u64)),
                    "a {len}-byte upload to {host} over {proto:?}: {} {}",
                    answer.status,
                    answer.text()
                );
            }
        }
        // HTTP/2 too: a declared oversized body is refused.
        let mut connection = client.connect("small.test", Proto::Http2).await?;
        let upload = Full::new(Bytes::from(body.clone()))
            .map_err(|never| match never {})
            .boxed();
        let mut upload = request("small.test", "/upload", "POST", upload)?;
        upload
            .headers_mut()
            .insert("content-length", over.to_string().parse()?);
        match connection.send(upload).await {
            Ok(response) => {
                let answer = read(response).await?;
                ensure!(
                    answer.status == 413,
                    "HTTP/2: a {over}-byte body (limit 64 KiB) got {} {}",
                    answer.status,
                    answer.text()
                );
            }
            Err(error) => bail!("HTTP/2: a {over}-byte body got no response: {error:#}"),
        }
        Ok(())
    });
}

#[test]
fn http2_rapid_reset_does_not_take_the_edge_down_or_starve_others() {
    run_bounded(Duration::from_secs(60), async {
        let app = HttpApp::start("reset", loopback(1)).await?;
        let mut topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route("reset.test", "home", 8001)
            .start()
            .await?;
        let client = topology.client()?;

        // Normal clients from 127.0.0.4, over both protocols, all through the attack.
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let normal = {
            let client = client.with_source(loopback(4));
            let stop = stop.clone();
            let served = served.clone();
            tokio::spawn(async move {
                let mut i = 0u64;
                let mut slowest = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    let proto = if i.is_multiple_of(2) {
                        Proto::Http1
                    } else {
                        Proto::Http2
                    };
                    let started = Instant::now();
                    let answer = tokio::time::timeout(
                        Duration::from_secs(10),
                        client.get("reset.test", "/echo", proto),
                    )
                    .await
                    .with_context(|| {
                        format!("normal request {i} ({proto:?}) starved for 10 s during the burst")
                    })?
                    .with_context(|| format!("normal request {i} ({proto:?}) during the burst"))?;
                    ensure!(
                        answer.status == 200,
                        "normal request {i} during the burst: {} {}",
                        answer.status,
                        answer.text()
                    );
                    slowest = slowest.max(started.elapsed());
                    served.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                anyhow::Ok(slowest)
            })
        };

        // The attacker, from 127.0.0.3: HEADERS then RST_STREAM(CANCEL) at once, in batches of
        // 100 streams, each batch followed by a PING whose PONG proves the edge has read it
        // (frames are processed in order). The burst lasts at least 3 s and until the edge has
        // read 5,000 such streams, reconnecting whenever the edge sends the attacker away.
        const STREAMS: u64 = 5_000;
        const BATCH: u64 = 100;
        const MIN_ATTACK: Duration = Duration::from_secs(3);
        const MAX_ATTACK: Duration = Duration::from_secs(20);
        const CONNECTIONS: u32 = 5_000;
        let attacker = client.with_source(loopback(3));
        let started = Instant::now();
        let (mut queued, mut delivered, mut connections, mut most_on_one) =
            (0u64, 0u64, 0u32, 0u64);
        let mut endings: BTreeMap<String, u32> = BTreeMap::new();
        while (delivered < STREAMS || started.elapsed() < MIN_ATTACK)
            && connections < CONNECTIONS
            && started.elapsed() < MAX_ATTACK
        {
            connections += 1;
            let tls = match attacker.tls("reset.test", Proto::Http2).await {
                Ok(tls) => tls,
                Err(error) => {
                    *endings.entry(format!("connect: {error:#}")).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let (mut sender, mut connection) = h2::client::handshake(tls)
                .await
                .context("HTTP/2 handshake of the attacker")?;
            let mut ping_pong = connection
                .ping_pong()
                .context("the h2 connection gave no PING handle")?;
            let driver = tokio::spawn(connection);
            let mut on_this = 0u64;
            let ending = 'connection: loop {
                let elapsed = started.elapsed();
                if (delivered >= STREAMS && elapsed >= MIN_ATTACK) || elapsed >= MAX_ATTACK {
                    break "the attack ended".to_owned();
                }
                for _ in 0..BATCH {
                    sender =
                        match tokio::time::timeout(Duration::from_secs(5), sender.ready()).await {
                            Ok(Ok(sender)) => sender,
                            Ok(Err(error)) => break 'connection error.to_string(),
                            Err(_) => break 'connection "no stream capacity for 5 s".to_owned(),
                        };
                    let request = hyper::Request::get("https://reset.test/echo").body(())?;
                    match sender.send_request(request, false) {
                        Ok((_response, mut stream)) => {
                            stream.send_reset(h2::Reason::CANCEL);
                            queued += 1;
                        }
                        Err(error) => break 'connection error.to_string(),
                    }
                }
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    ping_pong.ping(h2::Ping::opaque()),
                )
                .await
                {
                    Ok(Ok(_pong)) => {
                        delivered += BATCH;
                        on_this += BATCH;
                    }
                    Ok(Err(error)) => break error.to_string(),
                    Err(_) => break "no PONG within 5 s".to_owned(),
                }
            };
            driver.abort();
            most_on_one = most_on_one.max(on_this);
            *endings.entry(ending).or_default() += 1;
        }
        let attack_took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        let slowest = normal.await.context("the normal client task")??;
        let served = served.load(Ordering::Relaxed);
        eprintln!(
            "rapid reset: {queued} streams queued, {delivered} known read by the edge, on \
             {connections} connections (at most {most_on_one} read on one) in {attack_took:?}; connections ended by {endings:?}; \
             {served} normal requests served meanwhile, the slowest in {slowest:?}"
        );
        ensure!(
            delivered >= 2_000,
            "the edge read only {delivered} reset streams on {connections} connections: {endings:?}"
        );
        // The reset-flood limit: the edge sends a client that keeps resetting streams away.
        let cut_off: u32 = endings
            .iter()
            .filter(|(ending, _)| ending.as_str() != "the attack ended")
            .map(|(_, count)| count)
            .sum();
        ensure!(
            cut_off > 0,
            "the edge let {connections} connections reset {delivered} streams without closing any"
        );
        ensure!(
            served >= 3,
            "only {served} normal requests completed during a {attack_took:?} burst"
        );

        // After the burst: alive, healthy, serving.
        topology.edge.process.check_running()?;
        let (status, body) = http_get(topology.edge.spec.admin, "/healthz").await?;
        ensure!(status == 200, "/healthz after the burst: {status} {body}");
        for proto in [Proto::Http1, Proto::Http2] {
            let answer = client.get("reset.test", "/echo", proto).await?;
            ensure!(
                answer.status == 200,
                "{proto:?} after the burst: {} {}",
                answer.status,
                answer.text()
            );
        }
        Ok(())
    });
}

/// `count` well-formed handshake initiations (valid mac1 for `edge`) from fresh random keys the
/// edge does not know.
fn bogus_initiations(edge: [u8; 32], count: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519;

    let edge = x25519::PublicKey::from(edge);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let key = x25519::StaticSecret::random_from_rng(rand::rngs::OsRng);
        let mut tunn = Tunn::new(key, edge, None, None, i as u32, None);
        let mut buf = [0u8; 256];
        match tunn.format_handshake_initiation(&mut buf, true) {
            TunnResult::WriteToNetwork(packet) => out.push(packet.to_vec()),
            TunnResult::Err(error) => bail!("formatting an initiation: {error:?}"),
            _ => bail!("boringtun produced no initiation"),
        }
    }
    Ok(out)
}

/// Junk datagram number `i`: random bytes of varied lengths, some dressed as WireGuard message
/// types 1-4 (bad MACs, unknown receiver indexes).
fn junk(i: usize, rng: &mut impl rand::Rng) -> Vec<u8> {
    let len = match i % 4 {
        0 => rng.gen_range(1..64),
        1 => 148,
        2 => 92,
        _ => rng.gen_range(32..1400),
    };
    let mut datagram = vec![0u8; len];
    rng.fill(&mut datagram[..]);
    if len >= 8 && !i.is_multiple_of(4) {
        // Message type (1-4, little endian) with three zero bytes, as WireGuard has them.
        datagram[..4].copy_from_slice(&(1 + (i as u32 / 4) % 4).to_le_bytes());
        // A receiver index no session has (ours are small numbers shifted by 8).
        datagram[4..8].copy_from_slice(&0xffff_ff00u32.to_le_bytes());
    }
    datagram
}

#[test]
fn wireguard_port_under_junk_and_handshake_floods_keeps_the_tunnel_working() {
    run_bounded(Duration::from_secs(60), async {
        let app = HttpApp::start("flood", loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route("flood.test", "home", 8001)
            .start()
            .await?;
        let client = topology.client()?;
        let target = topology.edge.spec.listen;
        ensure!(
            target.ip().is_loopback(),
            "the edge's WireGuard port is on {target}"
        );
        let junk_before = edge_counter(&topology, "kokoa_tunnel_dropped_junk_total").await?;
        let edge_public = topology.edge.key.public_key().0;
        let initiations =
            tokio::task::spawn_blocking(move || bogus_initiations(edge_public, 1_000)).await??;

        // Requests keep flowing through the tunnel the whole time.
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let background = {
            let client = client.clone();
            let stop = stop.clone();
            let served = served.clone();
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let answer = tokio::time::timeout(
                        Duration::from_secs(10),
                        client.get("flood.test", "/echo", Proto::Http1),
                    )
                    .await
                    .with_context(|| format!("request {i} stalled for 10 s during the flood"))?
                    .with_context(|| format!("request {i} during the flood"))?;
                    ensure!(
                        answer.status == 200,
                        "request {i} during the flood: {} {}",
                        answer.status,
                        answer.text()
                    );
                    served.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                anyhow::Ok(())
            })
        };

        // Four source ports; each counts the cookie replies that come back to it.
        let mut sockets = Vec::new();
        let mut listeners = Vec::new();
        let cookies = Arc::new(AtomicU64::new(0));
        for _ in 0..4 {
            let socket = Arc::new(tokio::net::UdpSocket::bind((loopback(1), 0)).await?);
            let receiver = socket.clone();
            let cookies = cookies.clone();
            listeners.push(tokio::spawn(async move {
                let mut buf = [0u8; 256];
                while let Ok(n) = receiver.recv(&mut buf).await {
                    // Cookie reply: type 3, 64 bytes.
                    if n == 64 && buf[0] == 3 {
                        cookies.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
            sockets.push(socket);
        }

        let flood_started = Instant::now();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
        let mut junk_sent = 0u64;
        for phase in 0..2 {
            for i in phase * 5_000..(phase + 1) * 5_000 {
                let datagram = junk(i, &mut rng);
                if sockets[i % 4].send_to(&datagram, target).await.is_ok() {
                    junk_sent += 1;
                }
                if i % 100 == 99 {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
            // In the middle of the flood, a request of our own.
            let answer = client.get("flood.test", "/echo", Proto::Http1).await?;
            ensure!(
                answer.status == 200,
                "request during the junk flood: {}",
                answer.status
            );
        }
        // Handshake initiations in bursts of 250, far over the edge's handshake rate limit.
        let mut initiations_sent = 0u64;
        for (i, initiation) in initiations.iter().enumerate() {
            if sockets[i % 4].send_to(initiation, target).await.is_ok() {
                initiations_sent += 1;
            }
            if i % 250 == 249 {
                let answer = client.get("flood.test", "/echo", Proto::Http1).await?;
                ensure!(
                    answer.status == 200,
                    "request during the handshake flood: {}",
                    answer.status
                );
            }
        }
        let flood_took = flood_started.elapsed();

        // After the flood, still serving (fresh connections, so new tunnel streams).
        for _ in 0..3 {
            let answer = client.get("flood.test", "/echo", Proto::Http1).await?;
            ensure!(
                answer.status == 200,
                "request after the flood: {}",
                answer.status
            );
        }
        stop.store(true, Ordering::Relaxed);
        background.await.context("the background client task")??;
        let served = served.load(Ordering::Relaxed);

        let junk_after = eventually("junk counted", Duration::from_secs(10), || async {
            let now = edge_counter(&topology, "kokoa_tunnel_dropped_junk_total").await?;
            ensure!(
                now - junk_before >= 1_000.0,
                "kokoa_tunnel_dropped_junk went from {junk_before} to {now} after {junk_sent} junk datagrams"
            );
            Ok(now)
        })
        .await?;
        let cookies = eventually("cookie replies", Duration::from_secs(5), || async {
            let n = cookies.load(Ordering::Relaxed);
            ensure!(
                n > 0,
                "no cookie reply to {initiations_sent} initiations sent within {flood_took:?}"
            );
            Ok(n)
        })
        .await?;
        for listener in listeners {
            listener.abort();
        }
        eprintln!(
            "flood: {junk_sent} junk datagrams and {initiations_sent} initiations in {flood_took:?}; \
             dropped_junk +{}; {cookies} cookie replies; {served} background requests served",
            junk_after - junk_before
        );
        ensure!(served >= 1, "no background request completed");
        Ok(())
    });
}

#[test]
fn allow_and_deny_lists_per_route() {
    run_bounded(Duration::from_secs(60), async {
        let app = HttpApp::start("acl", loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            // 127.0.0.2 and .3 are allowed, but .3 is also denied: deny wins.
            .route_with(
                "admin.test",
                "home",
                8001,
                Limits {
                    allow: vec!["127.0.0.2/31".into()],
                    deny: vec!["127.0.0.3/32".into()],
                    ..Limits::default()
                },
            )
            .route_with(
                "open.test",
                "home",
                8001,
                Limits {
                    deny: vec!["127.0.0.3/32".into()],
                    ..Limits::default()
                },
            )
            .start()
            .await?;
        let client = topology.client()?;
        let cases = [
            ("admin.test", 2, 200),
            ("admin.test", 3, 403),
            ("admin.test", 4, 403),
            ("admin.test", 1, 403),
            ("open.test", 3, 403),
            ("open.test", 4, 200),
            ("open.test", 1, 200),
        ];
        for proto in [Proto::Http1, Proto::Http2] {
            for (host, x, expected) in cases {
                let answer = client
                    .with_source(loopback(x))
                    .get(host, "/echo", proto)
                    .await
                    .with_context(|| format!("{host} from 127.0.0.{x} over {proto:?}"))?;
                ensure!(
                    answer.status == expected,
                    "{host} from 127.0.0.{x} over {proto:?}: {}, expected {expected}: {}",
                    answer.status,
                    answer.text()
                );
                ensure!(
                    has_app_header(&answer.headers) == (expected == 200),
                    "{host} from 127.0.0.{x}: the app {} the request",
                    if expected == 200 {
                        "did not get"
                    } else {
                        "got"
                    }
                );
            }
        }
        Ok(())
    });
}

#[test]
fn tcp_route_sends_proxy_protocol_v2_with_the_client_address() {
    run_bounded(Duration::from_secs(60), async {
        let mut app = ProxyProtocolApp::start(loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("p2p", 4002, app.addr)])
            .tcp_route_proxy_protocol("home", 4002, "v2")
            .start()
            .await?;
        let listen = topology.tcp_listens[0];
        for (round, x) in [4u8, 5].into_iter().enumerate() {
            let mut stream =
                eventually("the TCP route accepts", Duration::from_secs(10), || async {
                    connect_from(x, listen).await
                })
                .await?;
            let client_addr = stream.local_addr()?;
            let message = format!("hello through PROXY v2, round {round}\n");
            stream.write_all(message.as_bytes()).await?;
            let header = app.next_header(Duration::from_secs(10)).await?;
            eprintln!("PROXY v2 header: {header:?}");
            ensure!(
                header.proxied,
                "a LOCAL header instead of PROXY: {header:?}"
            );
            ensure!(
                header.source == Some(client_addr),
                "the header names the client {:?}, it was {client_addr}",
                header.source
            );
            ensure!(
                header.destination == Some(listen),
                "the header names the destination {:?}, the client dialed {listen}",
                header.destination
            );
            // The bytes after the header are the client's, unchanged, and the echo comes back.
            let mut echoed = vec![0u8; message.len()];
            tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut echoed))
                .await
                .context("no echo within 10 s")??;
            ensure!(
                echoed == message.as_bytes(),
                "echo {:?}",
                String::from_utf8_lossy(&echoed)
            );
            stream.shutdown().await?;
        }
        Ok(())
    });
}

#[test]
fn connections_per_client_are_capped_before_tls() {
    run_bounded(Duration::from_secs(60), async {
        let app = HttpApp::start("cap", loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route("cap.test", "home", 8001)
            .limits(Limits {
                connections_per_client: Some(4),
                ..Limits::default()
            })
            .start()
            .await?;
        let client = topology.client()?;
        let capped = client.with_source(loopback(3));
        let refused_before =
            edge_counter(&topology, "kokoa_edge_connections_refused_total").await?;

        // Four connections from 127.0.0.3, each proven established by a response.
        let mut held = Vec::new();
        for i in 0..4 {
            let mut connection = capped.connect("cap.test", Proto::Http1).await?;
            let request = request("cap.test", "/echo", "GET", Empty::new().boxed())?;
            let answer = read(connection.send(request).await?).await?;
            ensure!(
                answer.status == 200,
                "held connection {i}: {}",
                answer.status
            );
            held.push(connection);
        }

        // A fifth from the same address: closed right after accept. With the TLS handshake
        // timeout at its 10 s default, a close within 5 s is the cap, not the timeout.
        let started = Instant::now();
        let how = refused_at_accept(3, topology.edge.spec.https, Duration::from_secs(5))
            .await
            .context("a fifth connection from 127.0.0.3 (cap 4) was not closed")?;
        eprintln!(
            "fifth connection closed after {:?} ({how})",
            started.elapsed()
        );
        match capped.tls("cap.test", Proto::Http1).await {
            Ok(_) => bail!("a TLS handshake from 127.0.0.3 completed over its cap of 4"),
            Err(error) => eprintln!("TLS over the cap fails: {error:#}"),
        }

        // Other addresses are not affected, nor are the held connections.
        for x in [4, 1] {
            let answer = client
                .with_source(loopback(x))
                .get("cap.test", "/echo", Proto::Http1)
                .await
                .with_context(|| format!("from 127.0.0.{x} while 127.0.0.3 is at its cap"))?;
            ensure!(answer.status == 200, "127.0.0.{x}: {}", answer.status);
        }
        let request = request("cap.test", "/echo", "GET", Empty::new().boxed())?;
        let answer = read(held[0].send(request).await?).await?;
        ensure!(answer.status == 200, "held connection: {}", answer.status);

        // Closing one frees a slot.
        held.pop();
        eventually(
            "127.0.0.3 connects again after closing one",
            Duration::from_secs(10),
            || async {
                let answer = capped.get("cap.test", "/echo", Proto::Http1).await?;
                ensure!(answer.status == 200, "{}", answer.status);
                Ok(())
            },
        )
        .await?;

        let refused = edge_counter(&topology, "kokoa_edge_connections_refused_total").await?;
        ensure!(
            refused - refused_before >= 2.0,
            "kokoa_edge_connections_refused_total went from {refused_before} to {refused} after 2 refusals"
        );
        Ok(())
    });
}

#[test]
fn global_connection_cap_refuses_new_connections_from_anyone() {
    run_bounded(Duration::from_secs(60), async {
        let app = HttpApp::start("global", loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route("global.test", "home", 8001)
            .limits(Limits {
                max_connections: Some(5),
                ..Limits::default()
            })
            .start()
            .await?;
        let client = topology.client()?;
        let refused_before =
            edge_counter(&topology, "kokoa_edge_connections_refused_total").await?;

        // Five clients, one connection each: the edge is full.
        let mut held = Vec::new();
        for x in 2..7u8 {
            let mut connection = client
                .with_source(loopback(x))
                .connect("global.test", Proto::Http1)
                .await?;
            let request = request("global.test", "/echo", "GET", Empty::new().boxed())?;
            let answer = read(connection.send(request).await?).await?;
            ensure!(answer.status == 200, "127.0.0.{x}: {}", answer.status);
            held.push(connection);
        }
        // A sixth client, never seen before, is closed at once.
        let how = refused_at_accept(7, topology.edge.spec.https, Duration::from_secs(5))
            .await
            .context("a sixth connection over the global cap of 5 was not closed")?;
        eprintln!("sixth connection over the global cap: {how}");

        // One leaves: the newcomer gets in.
        held.remove(0);
        eventually(
            "a newcomer connects once a slot is free",
            Duration::from_secs(10),
            || async {
                let answer = client
                    .with_source(loopback(7))
                    .get("global.test", "/echo", Proto::Http1)
                    .await?;
                ensure!(answer.status == 200, "{}", answer.status);
                Ok(())
            },
        )
        .await?;
        let refused = edge_counter(&topology, "kokoa_edge_connections_refused_total").await?;
        ensure!(
            refused > refused_before,
            "kokoa_edge_connections_refused_total stayed at {refused} after a refusal"
        );
        Ok(())
    });
}

/// Reads one HTTP/1.1 response with a `Content-Length` body from `stream`.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> anyhow::Result<u16> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .context("a response without Content-Length")?;
            if bytes.len() >= end + 4 + len {
                return status_of(&bytes).context("no status line");
            }
        }
        let n = stream.read(&mut buf).await?;
        ensure!(n > 0, "the connection closed mid-response");
        bytes.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    run_bounded(Duration::from_secs(60), async {
        let app = HttpApp::start("idle", loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("web", 8001, app.addr)])
            .route("idle.test", "home", 8001)
            .limits(Limits {
                idle_timeout: Some(2),
                ..Limits::default()
            })
            .start()
            .await?;
        let client = topology.client()?;
        let bounds = Duration::from_millis(1500)..=Duration::from_secs(10);

        // HTTP/1.1: one request, then silence.
        let mut tls = client.tls("idle.test", Proto::Http1).await?;
        tls.write_all(b"GET /echo HTTP/1.1\r\nHost: idle.test\r\n\r\n")
            .await?;
        tls.flush().await?;
        let status = tokio::time::timeout(Duration::from_secs(10), read_response(&mut tls))
            .await
            .context("no response within 10 s")??;
        ensure!(status == 200, "HTTP/1.1 request: {status}");
        let idle_since = Instant::now();
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(15), tls.read(&mut buf)).await;
        let lasted = idle_since.elapsed();
        match closed {
            Err(_) => bail!("an idle HTTP/1.1 connection was still open after 15 s"),
            Ok(Ok(n)) if n > 0 => bail!(
                "the edge sent {:?} on an idle connection",
                String::from_utf8_lossy(&buf[..n])
            ),
            Ok(_) => {}
        }
        eprintln!("idle HTTP/1.1 connection closed after {lasted:?}");
        ensure!(
            bounds.contains(&lasted),
            "an idle HTTP/1.1 connection was closed after {lasted:?} (idle_timeout = 2 s)"
        );

        // HTTP/2: one request, then silence; the edge ends the connection (GOAWAY, close).
        let tls = client.tls("idle.test", Proto::Http2).await?;
        let (sender, connection) = h2::client::handshake(tls).await?;
        let connection = tokio::spawn(connection);
        let mut sender = sender.ready().await?;
        let (response, _) = sender.send_request(
            hyper::Request::get("https://idle.test/echo").body(())?,
            true,
        )?;
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .context("no HTTP/2 response within 10 s")??;
        ensure!(
            response.status() == 200,
            "HTTP/2 request: {}",
            response.status()
        );
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            body.flow_control().release_capacity(chunk.len())?;
        }
        let idle_since = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(15), connection)
            .await
            .context("an idle HTTP/2 connection was still open after 15 s")?;
        let lasted = idle_since.elapsed();
        eprintln!("idle HTTP/2 connection ended after {lasted:?}: {ended:?}");
        ensure!(
            bounds.contains(&lasted),
            "an idle HTTP/2 connection was closed after {lasted:?} (idle_timeout = 2 s)"
        );
        drop(sender);
        Ok(())
    });
}
