//! Soak run (issue 16, "faults as a habit"): mixed load through control + edge + origin on
//! loopback for a long time (default 30 minutes) while the fleet is disrupted as operators
//! disrupt it, reporting every failed request by cause and the resident memory of every
//! process over time. A benchmark, not a test: run it on purpose (`bench/soak.sh`).
//!
//! - The fleet: `kokoa-control serve`, one edge and one origin started from the bundles control
//!   hands out ([`kokoa_tests::control::Fleet`]), configured only through the REST API; the apps
//!   (HTTP and WebSocket echo) run in this process.
//! - Load, all the time: HTTP/1.1 keep-alive requests (two connections), HTTP/2 (one
//!   connection, four streams at a time), a WebSocket echo every 200 ms, and bulk transfers
//!   (8 MiB download and 8 MiB upload, alternately, each checked by SHA-256, a second apart)
//!   on fresh connections. Every answer is checked (status, `x-app`, body); a failed request is counted
//!   by its load, its cause and the last disruption before it.
//! - Disruptions, one every `KOKOA_SOAK_PERIOD` seconds (default 60) in turn: control restart
//!   (SIGKILL), origin restart, edge restart (alternately SIGTERM with drain and SIGKILL),
//!   origin key rotation, edge key rotation (`POST .../rotate-key` through the API). With the
//!   defaults each happens every five minutes, six times in 30 minutes.
//! - `VmRSS` of control, edge and origin every 10 s.
//!
//! ```sh
//! bench/soak.sh                       # release binaries, 30 minutes
//! KOKOA_SOAK_SECS=300 bench/soak.sh   # a shorter run (labelled as such in its file)
//! ```
//!
//! `KOKOA_SOAK_NOTE` adds a sentence to the results file (e.g. which profile each binary was
//! built in). Writes `bench/results/<UTC date>-<build>-soak.md` (build: `git describe --always --dirty`
//! or `$KOKOA_BUILD`), refusing to overwrite an existing file.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Empty, Full};
use kokoa_tests::apps::{fill_pattern, hex, pattern_sha256, HttpApp, WsEchoApp};
use kokoa_tests::client::{read, request, Connection, EdgeClient, Proto};
use kokoa_tests::control::Fleet;
use kokoa_tests::hostile::rss_kib;
use kokoa_tests::net::loopback;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio_tungstenite::tungstenite::Message;

const WEB: &str = "web.ctl.test";
const WS: &str = "ws.ctl.test";
const BULK_BYTES: u64 = 8 * 1024 * 1024;
const BULK_PAUSE: Duration = Duration::from_secs(1);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// A request that gets no answer within this long counts as failed ("timed out").
const REQUEST_LIMIT: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing and must not run this.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let secs = env_secs("KOKOA_SOAK_SECS", 1800)?;
    let period = env_secs("KOKOA_SOAK_PERIOD", 60)?;
    let build = kokoa_bench::build_name();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("results")
        .join(format!("{}-{build}-soak.md", &kokoa_bench::utc_now()[..10]));
    ensure!(
        !path.exists(),
        "{} exists: results files are never overwritten",
        path.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(Duration::from_secs(secs), Duration::from_secs(period)))?;
    std::fs::write(&path, report).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", path.display());
    Ok(())
}

fn env_secs(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not seconds")),
        Err(_) => Ok(default),
    }
}

/// The disruptions, in the order they come round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Disruption {
    ControlRestart,
    OriginRestart,
    EdgeRestart,
    OriginKey,
    EdgeKey,
}

const CYCLE: [Disruption; 5] = [
    Disruption::ControlRestart,
    Disruption::OriginRestart,
    Disruption::EdgeRestart,
    Disruption::OriginKey,
    Disruption::EdgeKey,
];

/// What the loads share: when to stop, the failures, the counts, the last disruption.
#[derive(Default)]
struct Book {
    stop: AtomicBool,
    inner: Mutex<Tally>,
}

#[derive(Default)]
struct Tally {
    /// (load, cause, last disruption) -> count.
    failures: BTreeMap<(&'static str, String, String), u64>,
    /// load -> (good, failed).
    counts: BTreeMap<&'static str, (u64, u64)>,
    /// The last disruption: its label and when it started.
    last: Option<(String, Instant)>,
    bulk_bytes: u64,
}

impl Book {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn ok(&self, load: &'static str) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.counts.entry(load).or_default().0 += 1;
    }

    fn failed(&self, load: &'static str, error: &anyhow::Error) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.counts.entry(load).or_default().1 += 1;
        let during = match &t.last {
            None => "none yet".to_owned(),
            Some((label, at)) => format!("{label} (+{} s)", bucket(at.elapsed())),
        };
        *t.failures.entry((load, cause(error), during)).or_default() += 1;
    }

    fn disrupted(&self, label: String) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.last = Some((label, Instant::now()));
    }
}

/// Seconds since a disruption, rounded into coarse buckets so failures group.
fn bucket(elapsed: Duration) -> &'static str {
    match elapsed.as_secs() {
        0..=4 => "0-5",
        5..=14 => "5-15",
        15..=59 => "15-60",
        _ => ">60",
    }
}

/// A failure's cause: its message chain with numbers (ports, byte counts, ids) taken out, so
/// that the same cause groups.
fn cause(error: &anyhow::Error) -> String {
    let text = format!("{error:#}");
    let mut out = String::with_capacity(text.len());
    let mut digits = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            if !digits {
                out.push('N');
            }
            digits = true;
        } else {
            digits = false;
            out.push(c);
        }
    }
    // Status codes matter: keep them.
    if let Some(status) = error.downcast_ref::<Status>() {
        return format!("HTTP {}", status.0);
    }
    out.chars().take(160).collect()
}

/// An answer with an unexpected status.
#[derive(Debug)]
struct Status(u16);

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.0)
    }
}

impl std::error::Error for Status {}

async fn run(total: Duration, period: Duration) -> anyhow::Result<String> {
    let web = HttpApp::start("web", loopback(1)).await?;
    let ws = WsEchoApp::start(loopback(1)).await?;
    let mut fleet = Fleet::start(
        &["home"],
        &[
            ("home", "web", 8001, web.addr),
            ("home", "ws", 8003, ws.addr),
        ],
        &[(WEB, "home", "web"), (WS, "home", "ws")],
    )
    .await
    .context("starting control, an edge and an origin (binaries built?)")?;
    fleet.serves(WEB, "web", Duration::from_secs(30)).await?;
    fleet.converged(Duration::from_secs(30)).await?;
    let client = fleet.client()?;
    let book = Arc::new(Book::default());
    let started = Instant::now();
    let mut loads = tokio::task::JoinSet::new();
    for _ in 0..2 {
        loads.spawn(keepalive(
            client.clone(),
            Proto::Http1,
            "HTTP/1.1",
            1,
            book.clone(),
        ));
    }
    loads.spawn(keepalive(
        client.clone(),
        Proto::Http2,
        "HTTP/2",
        4,
        book.clone(),
    ));
    loads.spawn(websocket(client.clone(), book.clone()));
    loads.spawn(bulk(client.clone(), book.clone()));

    let origin_id = fleet.origins[0].0.clone();
    let mut samples: Vec<Sample> = Vec::new();
    let mut events: Vec<(Duration, String, Duration)> = Vec::new();
    let mut next_sample = started;
    let mut next_disruption = started + period;
    let mut turn = 0usize;
    while started.elapsed() < total {
        let now = Instant::now();
        if now >= next_sample {
            samples.push(Sample {
                at: started.elapsed(),
                control: fleet
                    .control
                    .process()
                    .ok()
                    .and_then(|p| p.id())
                    .and_then(rss_mib),
                edge: fleet
                    .edge
                    .process
                    .as_ref()
                    .and_then(|p| p.id())
                    .and_then(rss_mib),
                origin: fleet.origins[0]
                    .1
                    .process
                    .as_ref()
                    .and_then(|p| p.id())
                    .and_then(rss_mib),
                event: None,
            });
            next_sample += SAMPLE_EVERY;
        }
        if now >= next_disruption && started.elapsed() + period / 2 < total {
            let what = CYCLE[turn % CYCLE.len()];
            let round = turn / CYCLE.len();
            let kill = round % 2 == 1;
            let label = match what {
                Disruption::ControlRestart => "control restart (SIGKILL)".to_owned(),
                Disruption::OriginRestart | Disruption::EdgeRestart => format!(
                    "{} restart ({})",
                    if what == Disruption::EdgeRestart {
                        "edge"
                    } else {
                        "origin"
                    },
                    if kill { "SIGKILL" } else { "SIGTERM" }
                ),
                Disruption::OriginKey => "origin key rotation".to_owned(),
                Disruption::EdgeKey => "edge key rotation".to_owned(),
            };
            book.disrupted(label.clone());
            let at = started.elapsed();
            let took = Instant::now();
            // A disruption the fleet does not recover from within its bound is recorded, and
            // the run goes on (the loads count what it costs).
            let outcome = disrupt(&mut fleet, what, kill, &origin_id).await;
            let took = took.elapsed();
            let label = match outcome {
                Ok(()) => label,
                Err(error) => format!("{label}: FAILED: {error:#}"),
            };
            eprintln!(
                "{:>5} s: {label} (took {:.1} s)",
                at.as_secs(),
                took.as_secs_f64()
            );
            if let Some(last) = samples.last_mut() {
                last.event.get_or_insert_with(String::new).push_str(&label);
            }
            events.push((at, label, took));
            turn += 1;
            next_disruption += period;
        }
        let wake = next_sample.min(next_disruption);
        tokio::time::sleep_until(wake.into()).await;
    }
    book.stop.store(true, Ordering::Relaxed);
    while let Some(joined) = tokio::time::timeout(Duration::from_secs(60), loads.join_next())
        .await
        .context("the loads did not stop within 60 s")?
    {
        joined.context("a load task")?;
    }
    let ran = started.elapsed();
    Ok(report(total, period, ran, &samples, &events, &book))
}

/// One process's reading out of a [`Sample`].
type Pick = fn(&Sample) -> Option<f64>;

struct Sample {
    at: Duration,
    control: Option<f64>,
    edge: Option<f64>,
    origin: Option<f64>,
    event: Option<String>,
}

fn rss_mib(pid: u32) -> Option<f64> {
    rss_kib(pid).ok().map(|k| k as f64 / 1024.0)
}

/// Runs one disruption and waits until the fleet serves again (bounded).
async fn disrupt(
    fleet: &mut Fleet,
    what: Disruption,
    kill: bool,
    origin_id: &str,
) -> anyhow::Result<()> {
    match what {
        Disruption::ControlRestart => {
            fleet.control.kill().await?;
            fleet.control.restart().await?;
        }
        Disruption::OriginRestart => restart(&mut fleet.origins[0].1, kill).await?,
        Disruption::EdgeRestart => {
            let node = &mut fleet.edge;
            restart(node, kill).await?;
        }
        Disruption::OriginKey => {
            fleet
                .control
                .ok(
                    "POST",
                    &format!("/origins/{origin_id}/rotate-key"),
                    Some(json!({})),
                )
                .await?;
        }
        Disruption::EdgeKey => {
            let edge_id = fleet.edge_id.clone();
            fleet
                .control
                .ok(
                    "POST",
                    &format!("/edge-nodes/{edge_id}/rotate-key"),
                    Some(json!({})),
                )
                .await?;
        }
    }
    fleet.serves(WEB, "web", Duration::from_secs(60)).await?;
    Ok(())
}

async fn restart(node: &mut kokoa_tests::control::Node, kill: bool) -> anyhow::Result<()> {
    if kill {
        node.kill().await?;
    } else if let Some(mut process) = node.process.take() {
        process.signal("TERM").await?;
        process.wait_exit(Duration::from_secs(30)).await?;
    }
    node.start().await
}

/// Requests `GET /echo` on one kept-alive connection (HTTP/2: `streams` at a time), opening a
/// new connection after a failure.
async fn keepalive(
    client: EdgeClient,
    proto: Proto,
    load: &'static str,
    streams: usize,
    book: Arc<Book>,
) {
    let mut connection: Option<Connection> = None;
    while !book.stopped() {
        let conn = match connection.as_mut() {
            Some(c) => c,
            None => match tokio::time::timeout(REQUEST_LIMIT, client.connect(WEB, proto)).await {
                Ok(Ok(c)) => connection.insert(c),
                Ok(Err(error)) => {
                    book.failed(load, &error.context("connect"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(_) => {
                    book.failed(load, &anyhow::anyhow!("connect: timed out"));
                    continue;
                }
            },
        };
        let mut broken = false;
        let h2 = match conn {
            Connection::H2(sender) => Some(sender.clone()),
            Connection::H1(_) => None,
        };
        let outcomes = match h2 {
            Some(sender) => {
                let mut batch = tokio::task::JoinSet::new();
                for i in 0..streams {
                    let mut c = Connection::H2(sender.clone());
                    batch.spawn(async move { echo_once(&mut c, i).await });
                }
                let mut out = Vec::new();
                while let Some(joined) = batch.join_next().await {
                    out.push(joined.unwrap_or_else(|e| Err(anyhow::anyhow!("task: {e}"))));
                }
                out
            }
            None => vec![echo_once(conn, 0).await],
        };
        for outcome in outcomes {
            match outcome {
                Ok(()) => book.ok(load),
                Err(error) => {
                    broken = true;
                    book.failed(load, &error);
                }
            }
        }
        if broken {
            connection = None;
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn echo_once(connection: &mut Connection, i: usize) -> anyhow::Result<()> {
    let path = format!("/echo?n={i}");
    let request = request(WEB, &path, "GET", Empty::new().boxed())?;
    let answer = tokio::time::timeout(REQUEST_LIMIT, async {
        let response = connection.send(request).await?;
        read(response).await
    })
    .await
    .context("timed out")??;
    if answer.status != 200 {
        return Err(Status(answer.status.as_u16()).into());
    }
    ensure!(
        answer.headers.get("x-app").is_some_and(|v| v == "web") && answer.text().contains(&path),
        "wrong answer: {}",
        answer.text()
    );
    Ok(())
}

/// One WebSocket, a message every 200 ms echoed back; a new one after a failure.
async fn websocket(client: EdgeClient, book: Arc<Book>) {
    let mut n = 0u64;
    while !book.stopped() {
        let opened = tokio::time::timeout(REQUEST_LIMIT, async {
            let tls = client.tls(WS, Proto::Http1).await?;
            let (socket, _) = tokio_tungstenite::client_async(format!("wss://{WS}/echo"), tls)
                .await
                .context("WebSocket handshake")?;
            anyhow::Ok(socket)
        })
        .await
        .context("WebSocket open timed out")
        .and_then(|r| r);
        let mut socket = match opened {
            Ok(s) => s,
            Err(error) => {
                book.failed("WebSocket", &error.context("open"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while !book.stopped() {
            n += 1;
            let text = format!("message {n}");
            let echoed = tokio::time::timeout(Duration::from_secs(10), async {
                socket.send(Message::text(text.clone())).await?;
                loop {
                    match socket.next().await {
                        Some(Ok(Message::Text(t))) => return anyhow::Ok(t.to_string()),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        Some(Ok(other)) => anyhow::bail!("unexpected message {other:?}"),
                        Some(Err(error)) => return Err(error.into()),
                        None => anyhow::bail!("WebSocket closed"),
                    }
                }
            })
            .await;
            match echoed {
                Ok(Ok(t)) if t == text => book.ok("WebSocket"),
                Ok(Ok(t)) => {
                    book.failed("WebSocket", &anyhow::anyhow!("wrong echo {t:?}"));
                    break;
                }
                Ok(Err(error)) => {
                    book.failed("WebSocket", &error);
                    break;
                }
                Err(_) => {
                    book.failed("WebSocket", &anyhow::anyhow!("no echo within 10 s"));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
    }
}

/// Alternately an 8 MiB download and an 8 MiB upload, each on a fresh HTTP/1.1 connection,
/// checked by SHA-256.
async fn bulk(client: EdgeClient, book: Arc<Book>) {
    let mut upload = vec![0u8; BULK_BYTES as usize];
    fill_pattern(0, &mut upload);
    let upload = Bytes::from(upload);
    let digest = pattern_sha256(BULK_BYTES);
    let mut turn = 0u64;
    while !book.stopped() {
        turn += 1;
        let (load, outcome) = if turn % 2 == 1 {
            ("bulk download", download(&client, &digest).await)
        } else {
            (
                "bulk upload",
                send_upload(&client, upload.clone(), &digest).await,
            )
        };
        match outcome {
            Ok(()) => {
                book.ok(load);
                book.inner
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .bulk_bytes += BULK_BYTES;
            }
            Err(error) => book.failed(load, &error),
        }
        // A pause between transfers: the machine is shared, and a soak is about hours of
        // mixed traffic, not about saturating a core.
        tokio::time::sleep(BULK_PAUSE).await;
    }
}

async fn download(client: &EdgeClient, digest: &str) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(120), async {
        let mut connection = client.connect(WEB, Proto::Http1).await.context("connect")?;
        let request = request(
            WEB,
            &format!("/bytes/{BULK_BYTES}"),
            "GET",
            Empty::new().boxed(),
        )?;
        let response = connection.send(request).await?;
        if response.status() != 200 {
            return Err(Status(response.status().as_u16()).into());
        }
        let mut body = response.into_body();
        let (mut hasher, mut received) = (Sha256::new(), 0u64);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.context("download body")?.into_data() {
                hasher.update(&data);
                received += data.len() as u64;
            }
        }
        ensure!(received == BULK_BYTES, "download cut at {received} bytes");
        ensure!(hex(&hasher.finalize()) == digest, "download corrupted");
        Ok(())
    })
    .await
    .context("download timed out")?
}

async fn send_upload(client: &EdgeClient, body: Bytes, digest: &str) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(120), async {
        let mut connection = client.connect(WEB, Proto::Http1).await.context("connect")?;
        let request = request(WEB, "/upload", "POST", Full::new(body).boxed())?;
        let answer = read(connection.send(request).await?).await?;
        if answer.status != 200 {
            return Err(Status(answer.status.as_u16()).into());
        }
        ensure!(
            answer.text().trim() == format!("{digest} {BULK_BYTES}"),
            "upload arrived wrong: {}",
            answer.text()
        );
        Ok(())
    })
    .await
    .context("upload timed out")?
}

fn report(
    total: Duration,
    period: Duration,
    ran: Duration,
    samples: &[Sample],
    events: &[(Duration, String, Duration)],
    book: &Book,
) -> String {
    let t = book.inner.lock().unwrap_or_else(|e| e.into_inner());
    let full = total >= Duration::from_secs(1800);
    let mut out = format!(
        "# Soak{}: {} minutes of mixed load with restarts and key rotations, {}\n\n",
        if full {
            ""
        } else {
            " (SHORTER RUN, not the 30-minute soak)"
        },
        ran.as_secs() / 60,
        kokoa_bench::utc_now()
    );
    out.push_str(&format!(
        "Build {}. Generated by `{}` with KOKOA_SOAK_SECS={} KOKOA_SOAK_PERIOD={}: \
         kokoa-control, one kokoa-edge and one kokoa-origin on loopback, configured through \
         control's API (defaults otherwise). Load all the time: HTTP/1.1 keep-alive `GET /echo` \
         (2 connections), HTTP/2 (1 connection, 4 streams at a time), a WebSocket echo every \
         200 ms, bulk 8 MiB download / 8 MiB upload alternately on fresh connections, 1 s apart (SHA-256 \
         checked). One disruption every {} s in turn: control restart (SIGKILL), origin \
         restart, edge restart (SIGTERM with drain in even rounds, SIGKILL in odd ones), origin \
         key rotation, edge key rotation. Machine: {} cores, 1-minute load average {} at the end \
         (shared with other work).\n\n",
        kokoa_bench::build_name(),
        kokoa_bench::bench_command("soak"),
        total.as_secs(),
        period.as_secs(),
        period.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kokoa_bench::load_average(),
    ));

    if let Ok(note) = std::env::var("KOKOA_SOAK_NOTE") {
        out.push_str(&format!("Note: {note}\n\n"));
    }
    out.push_str("## Requests\n\n| load | good | failed |\n|---|---:|---:|\n");
    for (load, (good, failed)) in &t.counts {
        out.push_str(&format!("| {load} | {good} | {failed} |\n"));
    }
    out.push_str(&format!(
        "\nBulk bytes moved and checked: {} MiB.\n\n",
        t.bulk_bytes / (1024 * 1024)
    ));

    out.push_str("## Failed requests by cause\n\n");
    if t.failures.is_empty() {
        out.push_str("None.\n\n");
    } else {
        out.push_str(
            "Grouped by load, cause (numbers replaced by N) and the last disruption before the \
             failure (seconds after it began).\n\n| load | cause | after | count |\n|---|---|---|---:|\n",
        );
        for ((load, cause, during), count) in &t.failures {
            let cause = cause.replace('|', "\\|");
            out.push_str(&format!("| {load} | {cause} | {during} | {count} |\n"));
        }
        out.push('\n');
    }

    out.push_str("## Disruptions\n\n| at (s) | what | until served again (s) |\n|---:|---|---:|\n");
    for (at, label, took) in events {
        out.push_str(&format!(
            "| {} | {label} | {:.1} |\n",
            at.as_secs(),
            took.as_secs_f64()
        ));
    }

    out.push_str("\n## Resident memory\n\n");
    out.push_str(&summary(samples));
    out.push_str(
        "\nEvery sample (`VmRSS`, MiB; a restarted process starts again from its own start-up \
         size):\n\n| at (s) | control | edge | origin | event since the previous sample |\n\
         |---:|---:|---:|---:|---|\n",
    );
    let mib = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    for s in samples {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            s.at.as_secs(),
            mib(s.control),
            mib(s.edge),
            mib(s.origin),
            s.event.as_deref().unwrap_or("")
        ));
    }
    out
}

/// Per process: the largest RSS, and the median of the samples in the second third of the run
/// against the last third (after warm-up: flat means these two are close).
fn summary(samples: &[Sample]) -> String {
    let mut out = String::from(
        "| process | peak (MiB) | median, 2nd third of the run (MiB) | median, last third (MiB) |\n\
         |---|---:|---:|---:|\n",
    );
    let n = samples.len();
    let median = |mut v: Vec<f64>| -> Option<f64> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    };
    let pick = |f: Pick, range: std::ops::Range<usize>| {
        median(samples[range].iter().filter_map(f).collect())
    };
    let fmt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    let rows: [(&str, Pick); 3] = [
        ("kokoa-control", |s| s.control),
        ("kokoa-edge", |s| s.edge),
        ("kokoa-origin", |s| s.origin),
    ];
    for (name, f) in rows {
        let peak = samples
            .iter()
            .filter_map(f)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        out.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            fmt(peak),
            fmt(pick(f, n / 3..2 * n / 3)),
            fmt(pick(f, 2 * n / 3..n))
        ));
    }
    out
}
