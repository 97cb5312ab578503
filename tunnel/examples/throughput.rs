//! Throughput and request-rate check for two `Tunnel`s on loopback.
//!
//! `cargo run -p kokoa-tunnel --release --example throughput -- [SECS [PHASES]]` (default 5 s
//! per phase; use 30 to check that sustained load does not wedge; PHASES is a comma-separated
//! subset of idle,up,down,keepalive,connect, e.g. for `perf record`). Phases:
//! 1. one stream, edge -> origin bulk (MB/s); 2. the same origin -> edge;
//! 3. 32 keep-alive streams doing 128-byte request / 1 KiB response exchanges (req/s);
//! 4. a new stream per request (connect, request, response, close) from 16 tasks (req/s).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use kokoa_tunnel::{PeerConfig, PrivateKey, Tunnel, TunnelConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REQ: usize = 128;
const RESP: usize = 1024;

#[tokio::main]
async fn main() -> Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let phase = Duration::from_secs(secs);
    let phases = Phases(std::env::args().nth(2));

    let (ek, ok) = (PrivateKey::generate(), PrivateKey::generate());
    let mut oc = TunnelConfig::new(ok.clone(), "127.0.0.1:0".parse()?);
    oc.accept_ports = vec![1, 2, 3];
    oc.peers = vec![PeerConfig {
        public_key: ek.public_key(),
        endpoint: None,
        allowed_ips: vec!["10.100.1.10/32".parse()?],
        local_address: Ipv4Addr::new(10, 100, 1, 1),
        persistent_keepalive: None,
    }];
    let (origin, mut incoming) = Tunnel::bind(oc).await?;
    let mut ec = TunnelConfig::new(ek, "127.0.0.1:0".parse()?);
    ec.peers = vec![PeerConfig {
        public_key: ok.public_key(),
        endpoint: Some(origin.local_addr()),
        allowed_ips: vec!["10.100.1.1/32".parse()?],
        local_address: Ipv4Addr::new(10, 100, 1, 10),
        persistent_keepalive: None,
    }];
    let (edge, _) = Tunnel::bind(ec).await?;
    let peer = ok.public_key();
    let dst = |port| SocketAddrV4::new(Ipv4Addr::new(10, 100, 1, 1), port);

    // Origin: port 1 discards, port 2 sends forever, port 3 answers REQ-byte requests.
    tokio::spawn(async move {
        while let Some(inc) = incoming.accept().await {
            let mut s = inc.stream;
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                match inc.local_port {
                    1 => {
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                        }
                    }
                    2 => while s.write_all(&buf).await.is_ok() {},
                    _ => {
                        let resp = vec![0x5au8; RESP];
                        loop {
                            if s.read_exact(&mut buf[..REQ]).await.is_err() {
                                break;
                            }
                            if s.write_all(&resp).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });

    let t = Duration::from_secs(5);
    if phases.wants("idle") {
        // 0. idle streams must cost (almost) no CPU: the driver sleeps until a deadline.
        let mut idle = Vec::new();
        for _ in 0..10 {
            idle.push(edge.connect(&peer, dst(3), t).await?);
        }
        let cpu = cpu_time();
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let (Some(a), Some(b)) = (cpu, cpu_time()) {
            println!("10 idle streams for 2 s: {:?} of CPU", b.saturating_sub(a));
        }
        drop(idle);
    }

    if phases.wants("up") {
        // 1. upload
        let mut s = edge.connect(&peer, dst(1), t).await?;
        let buf = vec![0xa5u8; 64 * 1024];
        let cpu = cpu_time();
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < phase {
            s.write_all(&buf).await?;
            sent += buf.len() as u64;
        }
        let up = sent as f64 / start.elapsed().as_secs_f64() / 1e6;
        println!(
            "one stream edge->origin: {up:.0} MB/s{}",
            cpu_per(cpu, sent as f64 / 1e9, "GB")
        );
        drop(s);
    }

    if phases.wants("down") {
        // 2. download
        let mut s = edge.connect(&peer, dst(2), t).await?;
        let mut rbuf = vec![0u8; 64 * 1024];
        let cpu = cpu_time();
        let start = Instant::now();
        let mut got = 0u64;
        while start.elapsed() < phase {
            let n = s.read(&mut rbuf).await?;
            anyhow::ensure!(n > 0, "download ended early");
            got += n as u64;
        }
        let down = got as f64 / start.elapsed().as_secs_f64() / 1e6;
        println!(
            "one stream origin->edge: {down:.0} MB/s{}",
            cpu_per(cpu, got as f64 / 1e9, "GB")
        );
        drop(s);
    }

    // Idle streams held open during the request phases (KOKOA_IDLE_STREAMS, default 0): every
    // netstack poll visits every socket of the peer, so this shows what idle connections cost.
    let idle_streams: usize = std::env::var("KOKOA_IDLE_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut held = Vec::with_capacity(idle_streams);
    for _ in 0..idle_streams {
        held.push(edge.connect(&peer, dst(3), t).await?);
    }
    if idle_streams > 0 {
        println!("holding {idle_streams} idle streams");
    }

    if phases.wants("keepalive") {
        // 3. keep-alive request/response
        let count = Arc::new(AtomicU64::new(0));
        let cpu = cpu_time();
        let start = Instant::now();
        let reporter = report_every_5s(count.clone(), "keep-alive");
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let edge = edge.clone();
            let count = count.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = edge.connect(&peer, dst(3), t).await?;
                let req = [1u8; REQ];
                let mut resp = [0u8; RESP];
                while start.elapsed() < phase {
                    s.write_all(&req).await?;
                    s.read_exact(&mut resp).await?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            tokio::time::timeout(phase + t, task)
                .await
                .context("keep-alive phase wedged")???;
        }
        reporter.abort();
        let rps = count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
        let n = count.load(Ordering::Relaxed) as f64;
        println!(
            "32 keep-alive streams: {rps:.0} req/s{}",
            cpu_per(cpu, n / 1e6, "M req")
        );
    }

    if phases.wants("connect") {
        // 4. a new stream per request
        let count = Arc::new(AtomicU64::new(0));
        let cpu = cpu_time();
        let start = Instant::now();
        let reporter = report_every_5s(count.clone(), "new stream per request");
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let edge = edge.clone();
            let count = count.clone();
            tasks.push(tokio::spawn(async move {
                let req = [1u8; REQ];
                let mut resp = [0u8; RESP];
                while start.elapsed() < phase {
                    let mut s = edge.connect(&peer, dst(3), t).await?;
                    s.write_all(&req).await?;
                    s.read_exact(&mut resp).await?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            tokio::time::timeout(phase + t, task)
                .await
                .context("connect-per-request phase wedged")???;
        }
        reporter.abort();
        let cps = count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
        let n = count.load(Ordering::Relaxed) as f64;
        println!(
            "16 tasks, new stream per request: {cps:.0} req/s{}",
            cpu_per(cpu, n / 1e6, "M req")
        );
    }

    println!(
        "sockets: edge {}, origin {}",
        edge.socket_count(),
        origin.socket_count()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "sockets 1 s later: edge {}, origin {}",
        edge.socket_count(),
        origin.socket_count()
    );
    let es = edge.stats();
    println!(
        "edge: {} datagrams out, {} in, junk {}, active streams {}",
        es.datagrams_tx, es.datagrams_rx, es.dropped_junk, es.active_streams
    );
    edge.shutdown();
    origin.shutdown();
    Ok(())
}

/// The phases to run: all, or a comma-separated list (idle,up,down,keepalive,connect), so a
/// profiler can look at one load alone.
struct Phases(Option<String>);

impl Phases {
    fn wants(&self, name: &str) -> bool {
        self.0
            .as_deref()
            .is_none_or(|list| list.split(',').any(|p| p == name))
    }
}

/// Prints the rate of each 5-second window, so a slowdown or wedge over time shows.
fn report_every_5s(count: Arc<AtomicU64>, what: &'static str) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = 0;
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = count.load(Ordering::Relaxed);
            println!(
                "  {what}: {:.0} req/s in the last 5 s",
                (now - last) as f64 / 5.0
            );
            last = now;
        }
    })
}

/// ", X CPU s per UNIT" since `start` (both tunnels and the load run in this process, so it
/// is the whole cost; unlike the rate it barely moves when other processes share the cores).
fn cpu_per(start: Option<Duration>, units: f64, unit: &str) -> String {
    match (start, cpu_time()) {
        (Some(a), Some(b)) if units > 0.0 => format!(
            ", {:.2} CPU s per {unit}",
            b.saturating_sub(a).as_secs_f64() / units
        ),
        _ => String::new(),
    }
}

/// User + system CPU time of this process (Linux `/proc/self/stat`, clock ticks of 10 ms).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}
