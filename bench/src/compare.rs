//! `kokoa-bench compare`: sets up the edge and origin hosts, starts the app, then for each
//! round and each contender (rotated, so contenders interleave) starts the contender's stack,
//! runs every load, records the samples and stops the stack. Writes the Markdown report and
//! the SVG chart. Everything it created is removed on the way out, also on error or Ctrl-C.
//!
//! Why this file is longer than ~1,000 lines: it is the whole sequence of one comparison run —
//! host setup, each contender's stack (see `report::Contender`), the loads and
//! the teardown that must undo exactly what setup did — and the setup/teardown pairs are kept
//! next to each other so that a change to one is seen with the other. Reports and charts live
//! in their own modules.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use kokoa_tunnel::key::PrivateKey;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use crate::apps::Pki;
use crate::files;
use crate::load::{parse_curl_write_out, parse_h2load, parse_wrk};
use crate::render::{self, KokoaPlan, RateLimit, TlsFiles, APP_HOST, UPLOAD_HOST};
use crate::report::{civil_from_unix, render_markdown, Contender, Metric, Results, RunInfo};
use crate::sys::{self, Hosts, Netns, Process, Scratch};

/// What `compare` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// Rounds (each runs every contender once).
    pub rounds: usize,
    /// Short loads (for shaking the harness out, not for numbers).
    pub quick: bool,
    /// Contenders to run (all when empty).
    pub only: Vec<Contender>,
    /// Where the report and chart go.
    pub out_dir: PathBuf,
    /// kokoa-edge binary; default: the workspace's `target/release/kokoa-edge`, rebuilt first.
    pub edge_bin: Option<PathBuf>,
    /// kokoa-origin binary; default as for the edge.
    pub origin_bin: Option<PathBuf>,
    /// Do not run `cargo build --release` for the kokoa binaries first.
    pub no_build: bool,
    /// Seconds per timed load (default 10, quick 3).
    pub duration: Option<u64>,
    /// Idle keep-alive connections (default 10,000, quick 2,000).
    pub idle_connections: Option<usize>,
    /// The command line, for the report.
    pub command_line: String,
}

const BULK_BYTES: u64 = 64 * 1024 * 1024;
const BULK_CONNECTIONS: usize = 4;
const TLS_PORT: u16 = render::TLS_PORT;

fn url(host: &str, path: &str) -> String {
    format!("https://{host}:{TLS_PORT}{path}")
}

/// Runs the comparison; returns the path of the Markdown report.
pub async fn compare(options: Options) -> anyhow::Result<PathBuf> {
    preflight()?;
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let wall = Instant::now();
    // The tree being measured, named before the build: results are filed under it.
    let build = files::build_id(Path::new(env!("CARGO_MANIFEST_DIR")));
    let (edge_bin, origin_bin) = kokoa_binaries(&options).await?;
    let onetun = which("onetun");
    let contenders: Vec<Contender> = if options.only.is_empty() {
        Contender::ALL.to_vec()
    } else {
        options.only.clone()
    };
    let duration = options
        .duration
        .unwrap_or(if options.quick { 3 } else { 10 });
    let idle = options
        .idle_connections
        .unwrap_or(if options.quick { 2_000 } else { 10_000 });

    let mut results = Results::default();
    let mut info = RunInfo {
        command: options.command_line.clone(),
        rounds: options.rounds,
        duration_secs: duration,
        idle_connections: idle,
        ..RunInfo::default()
    };
    machine_info(&mut info, onetun.as_deref()).await;
    let (y, mo, d, h, mi) = civil_from_unix(started);
    info.started = format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02} UTC");

    let bench = Bench::setup(edge_bin, origin_bin, onetun, duration, idle).await?;
    for round in 0..options.rounds {
        for i in 0..contenders.len() {
            let contender = contenders[(i + round) % contenders.len()];
            info.load_average
                .push((round, contender, sys::load_average()));
            eprintln!(
                "round {}/{} {} (load average {:.2})",
                round + 1,
                options.rounds,
                contender.label(),
                sys::load_average()
            );
            if let Err(error) = bench.measure(contender, &mut results).await {
                let note = format!("round {}: {}: {error:#}", round + 1, contender.label());
                eprintln!("{note}");
                results.notes.push(note);
            }
        }
    }
    drop(bench);
    info.wall_secs = wall.elapsed().as_secs_f64();

    let mut out = files::create_new(
        &options.out_dir,
        &files::stem(&files::date_of(started), &build, None),
        &["md", "svg"],
    )?;
    let chart_name = match crate::chart::render(&results) {
        Ok(svg) => {
            out.write("svg", svg.as_bytes())?;
            Some(out.name("svg"))
        }
        Err(error) => {
            results.notes.push(format!("chart not drawn: {error:#}"));
            // The empty file was made by this run a moment ago: nothing else is lost.
            let _ = std::fs::remove_file(options.out_dir.join(out.name("svg")));
            None
        }
    };
    let md = out.write(
        "md",
        render_markdown(&info, &results, chart_name.as_deref()).as_bytes(),
    )?;
    println!("{}", results.table());
    println!("{}", results.rate_limit_summary());
    Ok(md)
}

/// Starts the topology, the app and one contender, prints how to reach it (namespace, URL,
/// CA, pids) and keeps it up until the returned future is dropped (Ctrl-C in the binary):
/// for profiling a contender under a load run by hand.
pub async fn serve(options: Options, contender: Contender) -> anyhow::Result<()> {
    preflight()?;
    let (edge_bin, origin_bin) = kokoa_binaries(&options).await?;
    let bench = Bench::setup(edge_bin, origin_bin, which("onetun"), 10, 0).await?;
    let mut stack = bench.start(contender).await?;
    bench.wait_ready(&mut stack).await?;
    println!("{} is up.", contender.label());
    println!("edge host:   ip netns exec {} ...", bench.hosts.edge.name());
    println!(
        "origin host: ip netns exec {} ...",
        bench.hosts.origin.name()
    );
    println!(
        "URLs:        {} and {}",
        url(APP_HOST, "/"),
        url(UPLOAD_HOST, "/")
    );
    println!("CA:          {}", bench.ca_file.display());
    println!("edge pids:   {:?}", stack.edge_pids());
    println!("origin pids: {:?}", stack.origin_pids());
    println!("Ctrl-C tears everything down.");
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        stack.check_alive()?;
    }
}

fn preflight() -> anyhow::Result<()> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if !root {
        bail!("compare needs root (network namespaces); run it with sudo");
    }
    let missing: Vec<&str> = [
        "ip",
        "prlimit",
        "nginx",
        "wrk",
        "h2load",
        "curl",
        "wireguard-go",
        "wg",
    ]
    .into_iter()
    .filter(|t| which(t).is_none())
    .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools: {}; run bench/setup.sh (apt-get install nginx wrk nghttp2-client \
             wireguard-go wireguard-tools iproute2 curl util-linux)",
            missing.join(", ")
        );
    }
    if !Path::new("/dev/net/tun").exists() {
        bail!("/dev/net/tun is missing: wireguard-go needs a TUN device");
    }
    Ok(())
}

/// The full path of a tool on PATH (also /usr/sbin, /sbin and ~/.cargo/bin).
pub fn which(tool: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin".into(), "/sbin".into()]);
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(tool)).find(|c| c.is_file())
}

async fn kokoa_binaries(options: &Options) -> anyhow::Result<(PathBuf, PathBuf)> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the bench crate lives inside the workspace")?
        .to_owned();
    if !options.no_build && (options.edge_bin.is_none() || options.origin_bin.is_none()) {
        eprintln!("building kokoa-edge and kokoa-origin (release)...");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = tokio::process::Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "kokoa-edge",
                "-p",
                "kokoa-origin",
            ])
            .current_dir(&workspace)
            .status()
            .await
            .context("running cargo build")?;
        if !status.success() {
            bail!("cargo build --release -p kokoa-edge -p kokoa-origin failed");
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let edge = options
        .edge_bin
        .clone()
        .unwrap_or_else(|| target.join("release/kokoa-edge"));
    let origin = options
        .origin_bin
        .clone()
        .unwrap_or_else(|| target.join("release/kokoa-origin"));
    for bin in [&edge, &origin] {
        if !bin.is_file() {
            bail!(
                "{} not found: build it with `cargo build --release -p kokoa-edge -p kokoa-origin`",
                bin.display()
            );
        }
    }
    Ok((edge, origin))
}

async fn version_line(args: &[&str]) -> String {
    match sys::run(args, Duration::from_secs(10)).await {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("unknown")
                .to_owned()
        }
        Err(_) => "not installed".to_owned(),
    }
}

async fn machine_info(info: &mut RunInfo, onetun: Option<&Path>) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    info.cpu = format!("{model}, {cores} cores");
    info.kernel = version_line(&["uname", "-r"]).await;
    let onetun = onetun
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "onetun".into());
    info.versions = vec![
        ("nginx".into(), version_line(&["nginx", "-v"]).await),
        (
            "wireguard-go".into(),
            version_line(&["wireguard-go", "--version"]).await,
        ),
        ("onetun".into(), version_line(&[&onetun, "--version"]).await),
        ("wrk".into(), version_line(&["wrk", "-v"]).await),
        (
            "h2load".into(),
            version_line(&["h2load", "--version"]).await,
        ),
        ("curl".into(), version_line(&["curl", "--version"]).await),
        (
            "kokoa".into(),
            version_line(&[
                "git",
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "describe",
                "--always",
                "--dirty",
            ])
            .await,
        ),
    ];
}

/// A contender's processes, split by host (for CPU and memory readings).
struct Stack {
    edge: Vec<Process>,
    origin: Vec<Process>,
}

impl Stack {
    fn edge_pids(&self) -> Vec<u32> {
        self.edge.iter().flat_map(Process::tree).collect()
    }

    fn origin_pids(&self) -> Vec<u32> {
        self.origin.iter().flat_map(Process::tree).collect()
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in self.edge.iter_mut().chain(self.origin.iter_mut()) {
            p.check_alive()?;
        }
        Ok(())
    }

    async fn stop(self) {
        for p in self.edge.into_iter().chain(self.origin) {
            p.stop().await;
        }
    }
}

/// The run's fixed parts: hosts, files, the app and the sink.
struct Bench {
    // Field order is drop order: processes before the namespaces, namespaces before files.
    _app: Process,
    _sink: Process,
    hosts: Hosts,
    scratch: Scratch,
    tls: TlsFiles,
    ca_file: PathBuf,
    upload_file: PathBuf,
    edge_bin: PathBuf,
    origin_bin: PathBuf,
    onetun: Option<PathBuf>,
    duration: u64,
    idle: usize,
}

impl Bench {
    async fn setup(
        edge_bin: PathBuf,
        origin_bin: PathBuf,
        onetun: Option<PathBuf>,
        duration: u64,
        idle: usize,
    ) -> anyhow::Result<Self> {
        let scratch = Scratch::create()?;
        let hosts = Hosts::create(&[APP_HOST, UPLOAD_HOST]).await?;
        for ns in [&hosts.edge, &hosts.origin] {
            // Many short connections on one loopback: reuse TIME-WAIT ports, widen the range,
            // but keep it above the fixed ports (8080, 8443, onetun's 18080/18081): a client
            // socket lingering on one of those would make its listener fail to bind.
            ns.exec(&["sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1"])
                .await?;
            ns.exec(&[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_local_port_range=20000 65000",
            ])
            .await?;
        }
        let pki = Pki::generate(&[APP_HOST, UPLOAD_HOST])?;
        let dir = scratch.path();
        let tls = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&tls.cert, &pki.chain_pem).context("writing the certificate")?;
        std::fs::write(&tls.key, &pki.key_pem).context("writing the key")?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem).context("writing the CA")?;

        let www = scratch.dir("www")?;
        std::fs::write(www.join("index.html"), render::SMALL_BODY).context("writing index")?;
        write_pattern(&www.join(render::FILE_1M), 1024 * 1024)?;
        write_pattern(&www.join(render::FILE_64M), BULK_BYTES)?;
        let upload_file = dir.join("upload.bin");
        write_pattern(&upload_file, BULK_BYTES)?;

        let app_dir = scratch.dir("app")?;
        let conf = app_dir.join("nginx.conf");
        std::fs::write(&conf, render::nginx_app(&app_dir, &www)).context("app config")?;
        let conf_s = conf.to_string_lossy().into_owned();
        let app = hosts.origin.spawn(
            "app (nginx)",
            &["nginx", "-c", &conf_s, "-e", "stderr"],
            &app_dir.join("log"),
        )?;
        let exe = std::env::current_exe().context("locating the kokoa-bench binary")?;
        let exe_s = exe.to_string_lossy().into_owned();
        let sink_addr = format!("0.0.0.0:{}", render::SINK_PORT);
        let sink = hosts.origin.spawn(
            "upload sink",
            &[&exe_s, "upload-sink", "--listen", &sink_addr],
            &dir.join("sink.log"),
        )?;
        let bench = Self {
            _app: app,
            _sink: sink,
            hosts,
            scratch,
            tls,
            ca_file,
            upload_file,
            edge_bin,
            origin_bin,
            onetun,
            duration,
            idle,
        };
        // The app answers on the origin host before anything is measured.
        let origin_url = format!("http://{}:{}/", bench.hosts.origin_ip, render::APP_PORT);
        eventually("the app", Duration::from_secs(10), || async {
            let out = bench
                .hosts
                .origin
                .output(
                    &[
                        "curl",
                        "-sS",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        &origin_url,
                    ],
                    Duration::from_secs(5),
                )
                .await?;
            if String::from_utf8_lossy(&out.stdout).trim() == "200" {
                Ok(())
            } else {
                bail!("{}", String::from_utf8_lossy(&out.stderr))
            }
        })
        .await?;
        Ok(bench)
    }

    /// Starts the contender, runs its loads, records samples, stops it.
    async fn measure(&self, contender: Contender, results: &mut Results) -> anyhow::Result<()> {
        let mut stack = self.start(contender).await?;
        let outcome = self.loads(contender, &mut stack, results).await;
        stack.stop().await;
        // Let sockets settle between contenders.
        tokio::time::sleep(Duration::from_secs(1)).await;
        outcome
    }

    async fn loads(
        &self,
        contender: Contender,
        stack: &mut Stack,
        results: &mut Results,
    ) -> anyhow::Result<()> {
        self.wait_ready(stack).await?;
        if contender == Contender::KokoaRateLimited {
            return self.small(contender, stack, results).await;
        }
        // Idle memory first, on fresh processes: what a connection costs, not what earlier
        // loads left in allocator caches.
        let mut first_error = None;
        let steps: [(&str, LoadStep); 5] = [
            ("idle", LoadStep::Idle),
            ("small", LoadStep::Small),
            ("h2", LoadStep::H2),
            ("new connections", LoadStep::NewConn),
            ("bulk", LoadStep::Bulk),
        ];
        for (name, step) in steps {
            let outcome = match step {
                LoadStep::Idle => self.idle(contender, stack, results).await,
                LoadStep::Small => self.small(contender, stack, results).await,
                LoadStep::H2 => self.h2(contender, results).await,
                LoadStep::NewConn => self.new_connections(contender, results).await,
                LoadStep::Bulk => self.bulk(contender, stack, results).await,
            };
            if let Err(error) = outcome {
                let error = error.context(format!("load '{name}'"));
                stack.check_alive()?;
                // Record this load's failure and go on with the others.
                eprintln!("{}: {error:#}", contender.label());
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn edge_exec(&self) -> &Netns {
        &self.hosts.edge
    }

    async fn wait_ready(&self, stack: &mut Stack) -> anyhow::Result<()> {
        let ca = self.ca_file.to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            stack.check_alive()?;
            let mut ok = true;
            for u in [url(APP_HOST, "/"), url(UPLOAD_HOST, "/")] {
                let out = self
                    .edge_exec()
                    .output(
                        &[
                            "curl",
                            "-sS",
                            "--max-time",
                            "3",
                            "--cacert",
                            &ca,
                            "-o",
                            "/dev/null",
                            "-w",
                            "%{http_code}",
                            &u,
                        ],
                        Duration::from_secs(5),
                    )
                    .await?;
                let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if code != "200" {
                    ok = false;
                    last = format!("{u}: {code} {}", String::from_utf8_lossy(&out.stderr));
                }
            }
            if ok {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let logs: Vec<String> = stack
            .edge
            .iter()
            .chain(&stack.origin)
            .map(|p| format!("--- {}:\n{}", p.name(), p.log_tail(20)))
            .collect();
        bail!("not ready after 30 s ({last})\n{}", logs.join("\n"))
    }

    async fn in_edge(&self, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
        let out = self.edge_exec().output(args, timeout).await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("{} failed ({}): {text}", args[0], out.status);
        }
        Ok(text)
    }

    fn load_timeout(&self) -> Duration {
        Duration::from_secs(self.duration + 60)
    }

    async fn small(
        &self,
        contender: Contender,
        stack: &mut Stack,
        results: &mut Results,
    ) -> anyhow::Result<()> {
        let d = format!("{}s", self.duration);
        let u = url(APP_HOST, "/");
        // Warm the upstream pools first.
        self.in_edge(&["wrk", "-t2", "-c64", "-d1s", &u], Duration::from_secs(60))
            .await?;
        let out = self
            .in_edge(
                &["wrk", "-t2", "-c64", &format!("-d{d}"), "--latency", &u],
                self.load_timeout(),
            )
            .await?;
        stack.check_alive()?;
        let report = parse_wrk(&out)?;
        if report.errors > 0 {
            results.notes.push(format!(
                "{}: small requests: {} errors in {} requests",
                contender.label(),
                report.errors,
                report.requests
            ));
        }
        results.add(contender, Metric::SmallRps, report.requests_per_sec);
        if let Some(p50) = report.p50_ms {
            results.add(contender, Metric::SmallP50Ms, p50);
        }
        if let Some(p99) = report.p99_ms {
            results.add(contender, Metric::SmallP99Ms, p99);
        }
        Ok(())
    }

    async fn h2(&self, contender: Contender, results: &mut Results) -> anyhow::Result<()> {
        let d = self.duration.to_string();
        let out = self
            .in_edge(
                &[
                    "h2load",
                    "-t2",
                    "-c16",
                    "-m16",
                    "-D",
                    &d,
                    "--warm-up-time=1",
                    &url(APP_HOST, "/"),
                ],
                self.load_timeout(),
            )
            .await?;
        if !out.contains("Application protocol: h2") {
            bail!("h2load did not negotiate h2:\n{out}");
        }
        let report = parse_h2load(&out)?;
        if report.errors > 0 {
            results.notes.push(format!(
                "{}: HTTP/2: {} errors, {} succeeded",
                contender.label(),
                report.errors,
                report.succeeded
            ));
        }
        results.add(contender, Metric::H2Rps, report.requests_per_sec);
        Ok(())
    }

    async fn new_connections(
        &self,
        contender: Contender,
        results: &mut Results,
    ) -> anyhow::Result<()> {
        let d = format!("-d{}s", self.duration);
        let out = self
            .in_edge(
                &[
                    "wrk",
                    "-t2",
                    "-c32",
                    &d,
                    "-H",
                    "Connection: close",
                    &url(APP_HOST, "/"),
                ],
                self.load_timeout(),
            )
            .await?;
        let report = parse_wrk(&out)?;
        if report.errors > 0 {
            results.notes.push(format!(
                "{}: new connection per request: {} errors in {} requests",
                contender.label(),
                report.errors,
                report.requests
            ));
        }
        results.add(contender, Metric::NewConnPerSec, report.requests_per_sec);
        Ok(())
    }

    /// Four parallel curls; returns (bytes moved, seconds).
    async fn curl_parallel(&self, upload: bool) -> anyhow::Result<(u64, f64)> {
        let ca = self.ca_file.to_string_lossy().into_owned();
        let data = format!("@{}", self.upload_file.display());
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..BULK_CONNECTIONS {
            let mut args: Vec<String> = [
                "curl",
                "-sS",
                "--http1.1",
                "--max-time",
                "300",
                "--cacert",
                &ca,
                "-w",
                "\n%{http_code} %{size_download} %{size_upload}",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if upload {
                args.extend(["-H", "Expect:", "--data-binary", &data, "-o", "-"].map(String::from));
                args.push(url(UPLOAD_HOST, "/"));
            } else {
                args.extend(["-o", "/dev/null"].map(String::from));
                args.push(url(APP_HOST, &format!("/{}", render::FILE_64M)));
            }
            tasks.push(async move {
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                self.in_edge(&refs, Duration::from_secs(320)).await
            });
        }
        let outputs = futures_join_all(tasks).await;
        let seconds = start.elapsed().as_secs_f64();
        let mut total = 0;
        for out in outputs {
            let out = out?;
            let last = out.lines().last().unwrap_or_default();
            let (status, down, up) = parse_curl_write_out(last)?;
            if status != 200 {
                bail!("bulk transfer got HTTP {status}: {out}");
            }
            if upload {
                let echoed: u64 = out
                    .lines()
                    .next()
                    .and_then(|l| l.trim().parse().ok())
                    .unwrap_or(0);
                if echoed != BULK_BYTES || up != BULK_BYTES {
                    bail!("upload: sent {up} bytes, the app read {echoed}, expected {BULK_BYTES}");
                }
                total += up;
            } else {
                if down != BULK_BYTES {
                    bail!("download: got {down} bytes, expected {BULK_BYTES}");
                }
                total += down;
            }
        }
        Ok((total, seconds))
    }

    async fn bulk(
        &self,
        contender: Contender,
        stack: &mut Stack,
        results: &mut Results,
    ) -> anyhow::Result<()> {
        let edge_pids = stack.edge_pids();
        let origin_pids = stack.origin_pids();
        let edge_cpu = sys::cpu_seconds(&edge_pids);
        let origin_cpu = sys::cpu_seconds(&origin_pids);
        let (down, down_secs) = self.curl_parallel(false).await?;
        results.add(
            contender,
            Metric::BulkDownMBps,
            down as f64 / down_secs / 1e6,
        );
        let (up, up_secs) = self.curl_parallel(true).await?;
        results.add(contender, Metric::BulkUpMBps, up as f64 / up_secs / 1e6);
        stack.check_alive()?;
        let gb = (down + up) as f64 / 1e9;
        results.add(
            contender,
            Metric::CpuEdgeSecPerGb,
            (sys::cpu_seconds(&edge_pids) - edge_cpu) / gb,
        );
        if !origin_pids.is_empty() {
            results.add(
                contender,
                Metric::CpuOriginSecPerGb,
                (sys::cpu_seconds(&origin_pids) - origin_cpu) / gb,
            );
        }
        Ok(())
    }

    /// Idle keep-alive connections: resident memory per connection at edge and origin, as the
    /// growth from a warm state (the measured phase's connections opened and closed once, so
    /// pools are filled; then a tenth of the connections open) to all open, divided by the
    /// connections added; and the resident memory with all open.
    async fn idle(
        &self,
        contender: Contender,
        stack: &mut Stack,
        results: &mut Results,
    ) -> anyhow::Result<()> {
        let edge_pids = stack.edge_pids();
        let origin_pids = stack.origin_pids();
        let exe = std::env::current_exe().context("locating the kokoa-bench binary")?;
        let exe = exe.to_string_lossy().into_owned();
        let ca = self.ca_file.to_string_lossy().into_owned();
        let warm = (self.idle / 10).max(1);
        let (count_s, warm_s) = (self.idle.to_string(), warm.to_string());
        let addr = format!("127.0.0.1:{TLS_PORT}");
        let mut child = self
            .edge_exec()
            .command(&[
                &exe,
                "idle-clients",
                "--addr",
                &addr,
                "--host",
                APP_HOST,
                "--ca",
                &ca,
                "--count",
                &count_s,
                "--warm",
                &warm_s,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting the idle clients")?;
        let stdout = child.stdout.take().context("idle clients' stdout")?;
        let mut stdin = child.stdin.take().context("idle clients' stdin")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let mut readings = Vec::new();
        for expected in ["WARM", "READY"] {
            let line = tokio::time::timeout(Duration::from_secs(180), lines.next_line()).await;
            match line {
                Ok(Ok(Some(line))) if line.starts_with(expected) => {}
                other => {
                    drop(stdin);
                    let _ = child.start_kill();
                    let stderr = child
                        .wait_with_output()
                        .await
                        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                        .unwrap_or_default();
                    bail!("idle clients: expected {expected}, got {other:?}: {stderr}");
                }
            }
            // Let the servers settle (lazy frees, timers) before reading memory.
            tokio::time::sleep(Duration::from_secs(2)).await;
            stack.check_alive()?;
            readings.push((sys::rss_kib(&edge_pids), sys::rss_kib(&origin_pids)));
            stdin
                .write_all(b"go\n")
                .await
                .context("signalling the idle clients")?;
        }
        drop(stdin);
        let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
        let _ = child.start_kill();
        let added = (self.idle - warm) as f64;
        let [(edge_before, origin_before), (edge_after, origin_after)] = readings[..] else {
            bail!("idle clients: missing memory readings");
        };
        results.add(
            contender,
            Metric::IdleEdgeKib,
            (edge_after as f64 - edge_before as f64) / added,
        );
        // The whole, too: a fixed cost (upstream pools, buffer caches) that grows between the
        // two readings shows in the per-connection figure; the total tells it apart.
        results.add(contender, Metric::IdleEdgeMib, edge_after as f64 / 1024.0);
        if !origin_pids.is_empty() {
            results.add(
                contender,
                Metric::IdleOriginKib,
                (origin_after as f64 - origin_before as f64) / added,
            );
            results.add(
                contender,
                Metric::IdleOriginMib,
                origin_after as f64 / 1024.0,
            );
        }
        // Let the servers close the idle connections before the next load.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    }

    async fn start(&self, contender: Contender) -> anyhow::Result<Stack> {
        match contender {
            Contender::Kokoa => self.start_kokoa(None).await,
            Contender::KokoaRateLimited => self.start_kokoa(Some(RateLimit::UNREACHABLE)).await,
            Contender::NginxDirect => {
                let front = self.start_front(
                    "direct",
                    SocketAddr::from((self.hosts.origin_ip, render::APP_PORT)),
                    SocketAddr::from((self.hosts.origin_ip, render::SINK_PORT)),
                )?;
                Ok(Stack {
                    edge: vec![front],
                    origin: vec![],
                })
            }
            Contender::NginxWireguard => self.start_nginx_wireguard().await,
            Contender::NginxOnetun => self.start_nginx_onetun().await,
            Contender::NginxRelay => self.start_nginx_relay(),
        }
    }

    async fn start_kokoa(&self, limits: Option<RateLimit>) -> anyhow::Result<Stack> {
        let edge_key = PrivateKey::generate();
        let origin_key = PrivateKey::generate();
        let plan = KokoaPlan {
            edge_key: edge_key.to_base64(),
            edge_public: edge_key.public_key().to_base64(),
            origin_key: origin_key.to_base64(),
            origin_public: origin_key.public_key().to_base64(),
            edge_udp: SocketAddrV4::new(self.hosts.edge_ip, 51820),
            origin_udp: SocketAddrV4::new(self.hosts.origin_ip, 51820),
        };
        let dir = self.scratch.dir(if limits.is_some() {
            "kokoa-limits"
        } else {
            "kokoa"
        })?;
        let edge_conf = dir.join("edge.toml");
        let origin_conf = dir.join("origin.toml");
        let mut edge_toml = render::kokoa_edge(&plan, &self.tls, limits);
        // Experiments: extra `[edge]` keys (e.g. "upstream_keepalive = 256"), recorded in the
        // report's notes by the caller's command line only, so keep them out of real runs.
        if let Ok(extra) = std::env::var("KOKOA_BENCH_EDGE_EXTRA") {
            edge_toml = edge_toml.replacen("[edge]\n", &format!("[edge]\n{extra}\n"), 1);
        }
        std::fs::write(&edge_conf, edge_toml).context("edge config")?;
        std::fs::write(&origin_conf, render::kokoa_origin(&plan)).context("origin config")?;
        let edge_bin = self.edge_bin.to_string_lossy().into_owned();
        let origin_bin = self.origin_bin.to_string_lossy().into_owned();
        let edge_conf = edge_conf.to_string_lossy().into_owned();
        let origin_conf = origin_conf.to_string_lossy().into_owned();
        if limits.is_some() {
            let out = sys::run(
                &[&edge_bin, "--config", &edge_conf, "check-config"],
                Duration::from_secs(10),
            )
            .await?;
            if !out.status.success() {
                bail!(
                    "this kokoa-edge does not accept `[limits] rate/burst` yet: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        let origin = self.hosts.origin.spawn(
            "kokoa-origin",
            &[&origin_bin, "--config", &origin_conf],
            &dir.join("origin.log"),
        )?;
        let edge = self.hosts.edge.spawn(
            "kokoa-edge",
            &[&edge_bin, "--config", &edge_conf],
            &dir.join("edge.log"),
        )?;
        Ok(Stack {
            edge: vec![edge],
            origin: vec![origin],
        })
    }

    fn start_front(
        &self,
        name: &str,
        app: SocketAddr,
        upload: SocketAddr,
    ) -> anyhow::Result<Process> {
        let dir = self.scratch.dir(&format!("front-{name}"))?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, render::nginx_front(&dir, &self.tls, app, upload))
            .context("front config")?;
        let conf = conf.to_string_lossy().into_owned();
        self.hosts.edge.spawn(
            &format!("nginx front ({name})"),
            &["nginx", "-c", &conf, "-e", "stderr"],
            &dir.join("log"),
        )
    }

    /// Starts wireguard-go as `iface.dev` in `iface.ns` and configures it with `wg`: one peer
    /// (`peer`'s public key) whose only allowed IP is `peer_allowed`.
    async fn wireguard_go(
        &self,
        iface: WgInterface<'_>,
        peer: &PrivateKey,
        peer_allowed: std::net::Ipv4Addr,
        peer_endpoint: Option<SocketAddr>,
    ) -> anyhow::Result<Process> {
        let WgInterface {
            ns,
            dev,
            key,
            address,
        } = iface;
        let dir = self.scratch.dir(dev)?;
        let key_file = dir.join("private.key");
        write_secret(&key_file, &key.to_base64())?;
        let process = ns.spawn(
            &format!("wireguard-go {dev}"),
            &["env", "WG_PROCESS_FOREGROUND=1", "wireguard-go", "-f", dev],
            &dir.join("log"),
        )?;
        eventually(
            "the wireguard-go interface",
            Duration::from_secs(10),
            || async { ns.exec(&["ip", "link", "show", dev]).await.map(drop) },
        )
        .await?;
        let key_file = key_file.to_string_lossy().into_owned();
        let public = peer.public_key().to_base64();
        let allowed = format!("{peer_allowed}/32");
        let mut args = vec![
            "wg".to_owned(),
            "set".into(),
            dev.into(),
            "private-key".into(),
            key_file,
            "listen-port".into(),
            "51820".into(),
            "peer".into(),
            public,
            "allowed-ips".into(),
            allowed,
        ];
        if let Some(endpoint) = peer_endpoint {
            args.extend(["endpoint".into(), endpoint.to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ns.exec(&refs).await?;
        ns.exec(&["ip", "addr", "add", &format!("{address}/24"), "dev", dev])
            .await?;
        ns.exec(&["ip", "link", "set", dev, "mtu", "1420", "up"])
            .await?;
        Ok(process)
    }

    fn wg_addr(&self, host: u8) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::new(10, 250, self.hosts.wg_subnet, host)
    }

    async fn start_nginx_wireguard(&self) -> anyhow::Result<Stack> {
        let edge_key = PrivateKey::generate();
        let origin_key = PrivateKey::generate();
        let tag = &self.hosts.tag;
        let origin_wg = self
            .wireguard_go(
                WgInterface {
                    ns: &self.hosts.origin,
                    dev: &format!("kbwo{tag}"),
                    key: &origin_key,
                    address: self.wg_addr(2),
                },
                &edge_key,
                self.wg_addr(1),
                Some(SocketAddr::from((self.hosts.edge_ip, 51820))),
            )
            .await?;
        let edge_wg = self
            .wireguard_go(
                WgInterface {
                    ns: &self.hosts.edge,
                    dev: &format!("kbwe{tag}"),
                    key: &edge_key,
                    address: self.wg_addr(1),
                },
                &origin_key,
                self.wg_addr(2),
                Some(SocketAddr::from((self.hosts.origin_ip, 51820))),
            )
            .await?;
        let front = self.start_front(
            "wg",
            SocketAddr::from((self.wg_addr(2), render::APP_PORT)),
            SocketAddr::from((self.wg_addr(2), render::SINK_PORT)),
        )?;
        Ok(Stack {
            edge: vec![front, edge_wg],
            origin: vec![origin_wg],
        })
    }

    fn start_nginx_relay(&self) -> anyhow::Result<Stack> {
        if !Path::new(render::NGINX_STREAM_MODULE).exists() {
            bail!(
                "Nginx's stream module is not installed ({} is missing): \
                 apt-get install libnginx-mod-stream",
                render::NGINX_STREAM_MODULE
            );
        }
        let dir = self.scratch.dir("relay")?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, render::nginx_relay(&dir, self.hosts.origin_ip))
            .context("relay config")?;
        let conf = conf.to_string_lossy().into_owned();
        let relay = self.hosts.origin.spawn(
            "nginx relay",
            &["nginx", "-c", &conf, "-e", "stderr"],
            &dir.join("log"),
        )?;
        let (app, sink) = render::RELAY_PORTS;
        let front = self.start_front(
            "relay",
            SocketAddr::from((self.hosts.origin_ip, app)),
            SocketAddr::from((self.hosts.origin_ip, sink)),
        )?;
        Ok(Stack {
            edge: vec![front],
            origin: vec![relay],
        })
    }

    async fn start_nginx_onetun(&self) -> anyhow::Result<Stack> {
        let onetun = self
            .onetun
            .as_ref()
            .context("onetun is not installed (cargo install onetun)")?;
        let onetun_key = PrivateKey::generate();
        let origin_key = PrivateKey::generate();
        let tag = &self.hosts.tag;
        let origin_wg = self
            .wireguard_go(
                WgInterface {
                    ns: &self.hosts.origin,
                    dev: &format!("kbwo{tag}"),
                    key: &origin_key,
                    address: self.wg_addr(2),
                },
                &onetun_key,
                self.wg_addr(3),
                None,
            )
            .await?;
        let dir = self.scratch.dir("onetun")?;
        let key_file = dir.join("private.key");
        write_secret(&key_file, &onetun_key.to_base64())?;
        let onetun_s = onetun.to_string_lossy().into_owned();
        let key_file = key_file.to_string_lossy().into_owned();
        let origin_pub = origin_key.public_key().to_base64();
        let endpoint = SocketAddr::from((self.hosts.origin_ip, 51820)).to_string();
        let source = self.wg_addr(3).to_string();
        let fwd_app = format!("127.0.0.1:18080:{}:{}", self.wg_addr(2), render::APP_PORT);
        let fwd_sink = format!("127.0.0.1:18081:{}:{}", self.wg_addr(2), render::SINK_PORT);
        let onetun_process = self.hosts.edge.spawn(
            "onetun",
            &[
                &onetun_s,
                "--private-key-file",
                &key_file,
                "--endpoint-public-key",
                &origin_pub,
                "--endpoint-addr",
                &endpoint,
                "--source-peer-ip",
                &source,
                "--keep-alive",
                "25",
                "--log",
                "warn",
                &fwd_app,
                &fwd_sink,
            ],
            &dir.join("log"),
        )?;
        let front = self.start_front(
            "onetun",
            "127.0.0.1:18080".parse().context("address")?,
            "127.0.0.1:18081".parse().context("address")?,
        )?;
        Ok(Stack {
            edge: vec![front, onetun_process],
            origin: vec![origin_wg],
        })
    }
}

/// A wireguard-go interface to create.
struct WgInterface<'a> {
    ns: &'a Netns,
    dev: &'a str,
    key: &'a PrivateKey,
    address: std::net::Ipv4Addr,
}

#[derive(Clone, Copy)]
enum LoadStep {
    Idle,
    Small,
    H2,
    NewConn,
    Bulk,
}

/// Runs futures concurrently on the current task and collects their outputs in order.
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *output = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Retries `check` until it succeeds or `timeout` passes.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() >= deadline => {
                return Err(error.context(format!("{what} not ready after {timeout:?}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Writes a (throwaway) private key readable by its owner only, as wg and onetun expect.
fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Writes `len` bytes of a non-constant pattern (compression anywhere would flatter zeros).
fn write_pattern(path: &Path, len: u64) -> anyhow::Result<()> {
    use std::io::Write as _;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = std::io::BufWriter::new(file);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 64 * 1024];
    let mut written = 0;
    while written < len {
        for chunk in block.chunks_mut(8) {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        let n = (len - written).min(block.len() as u64) as usize;
        writer
            .write_all(&block[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        written += n as u64;
    }
    writer.flush().context("flushing a bulk file")?;
    Ok(())
}
