//! DNS steering fed by fleet health, end to end: the real `kokoa-control serve` with `--dns-*`
//! flags pointing at a real authoritative server started by the test (BIND over RFC 2136 +
//! TSIG, PowerDNS over its HTTP API), three real `kokoa-edge`s from control's bundles, each
//! with its own public address (127.0.0.2..=4, one HTTPS port) and serving the route's origin.
//! What is checked is what a resolver sees: the server's answer, asked with `dig`; and what
//! an operator sees: the audit trail's `edge.offline` and `dns.fail_open` events.
//!
//! The rules under test (README "Fleet"): the healthy edges' addresses are published; an edge
//! killed with SIGKILL fails its public probes and is withdrawn within the detection window of
//! the default checks, while the others stay; an edge that hangs (SIGSTOP: its kernel still
//! accepts TCP, its TLS never answers) is withdrawn the same way; the last edge is never
//! withdrawn (fail open, logged, an event); an edge that comes back is published again.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use kokoa_tests::acme::{Named, TSIG_KEY, ZONE};
use kokoa_tests::control::{id, Control, Node};
use kokoa_tests::dns::{dig, tools_or_skip, PowerDns};
use kokoa_tests::eventually;
use kokoa_tests::net::{free_tcp, free_udp, loopback};
use serde_json::{json, Value};

use crate::run_bounded;

/// The default checks' detection window: an edge that dies right after a passing probe fails
/// the next three probes, 5 s apart (`--health-check-interval` x `--health-unhealthy-threshold`),
/// the last one after its 2 s timeout at worst, and the checker judges every second. The
/// steering pass follows the state change at once. The figure printed by the test is the
/// measurement; this is the bound the defaults promise.
const DETECTION_WINDOW: Duration = Duration::from_secs(5 * 3 + 2 + 1);
/// Slack for the DNS write and the `dig` polling after the state change (one RFC 2136 update
/// or one PowerDNS PATCH on loopback).
const PUBLISH: Duration = Duration::from_secs(3);
/// Time for control and the edges to start, their probes to pass the healthy threshold (3 x
/// 5 s) and the first records to appear.
const SETTLE: Duration = Duration::from_secs(90);
/// The TTL the test asks for.
const TTL: u32 = 30;

/// The authoritative server under test.
enum Server {
    Bind(Named),
    PowerDns(PowerDns),
}

impl Server {
    fn dns(&self) -> SocketAddr {
        match self {
            Server::Bind(named) => named.addr,
            Server::PowerDns(pdns) => pdns.dns,
        }
    }

    /// `kokoa-control serve`'s flags for this server; secrets go to files under `dir`.
    fn control_args(&self, dir: &Path) -> Result<Vec<String>> {
        let mut args: Vec<String> = ["--dns-zone", ZONE, "--dns-ttl", &TTL.to_string()]
            .map(String::from)
            .to_vec();
        match self {
            Server::Bind(named) => {
                let secret = dir.join("tsig.secret");
                std::fs::write(&secret, &named.secret)?;
                args.extend([
                    "--dns-provider".into(),
                    "rfc2136".into(),
                    "--dns-rfc2136-server".into(),
                    named.addr.to_string(),
                    "--dns-tsig-key-name".into(),
                    TSIG_KEY.into(),
                    "--dns-tsig-secret-file".into(),
                    secret.display().to_string(),
                ]);
            }
            Server::PowerDns(pdns) => {
                let key = dir.join("pdns.key");
                std::fs::write(&key, &pdns.api_key)?;
                args.extend([
                    "--dns-provider".into(),
                    "powerdns".into(),
                    "--dns-powerdns-url".into(),
                    pdns.api_url.clone(),
                    "--dns-powerdns-api-key-file".into(),
                    key.display().to_string(),
                ]);
            }
        }
        Ok(args)
    }
}

/// Control, three edges (public addresses 127.0.0.2..=4, one HTTPS port) serving origin
/// `home`, whose service `web` has the route `app.<ZONE>` and the wildcard route `*.w.<ZONE>`.
struct World {
    server: Server,
    control: Control,
    edges: Vec<(IpAddr, String, Node)>,
    _dir: tempfile::TempDir,
}

fn app() -> String {
    format!("app.{ZONE}")
}

fn wildcard() -> String {
    format!("*.w.{ZONE}")
}

/// A TCP port free on each of `ips` a moment ago.
fn common_port(ips: &[IpAddr]) -> Result<u16> {
    for _ in 0..20 {
        let port = free_tcp(ips[0])?.port();
        if ips[1..]
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok())
        {
            return Ok(port);
        }
    }
    anyhow::bail!("no TCP port free on all of {ips:?}")
}

async fn world(start: impl AsyncFnOnce(&Path) -> Result<Server>) -> Result<World> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path()).await?;
    let ips: Vec<IpAddr> = (2..=4u8).map(loopback).collect();
    let port = common_port(&ips)?;
    let mut args = server.control_args(dir.path())?;
    // The health checker probes every edge's public address on this port; every other
    // health setting is the default.
    args.extend(["--health-public-port".into(), port.to_string()]);
    let control = Control::start_with(dir.path(), args).await?;
    let origin = control
        .ok("POST", "/origins", Some(json!({ "name": "home" })))
        .await?;
    let origin = id(&origin)?;
    control
        .ok(
            "POST",
            "/origins/home/services",
            Some(json!({ "name": "web", "port": 8001, "local_address": "127.0.0.1:9" })),
        )
        .await?;
    let mut edges = Vec::new();
    for (n, ip) in (2u8..).zip(ips) {
        let tunnel = free_udp(ip)?;
        let edge = control
            .ok(
                "POST",
                "/edge-nodes",
                Some(json!({
                    "name": format!("edge{n}"),
                    "public_ip": ip.to_string(),
                    "endpoint": tunnel.to_string(),
                    "origins": [origin.clone()],
                })),
            )
            .await?;
        let edge_id = id(&edge)?;
        let node = Node::edge_with_https(
            &control,
            &edge_id,
            &dir.path().join(format!("edge{n}")),
            tunnel,
            SocketAddr::new(ip, port),
        )
        .await?;
        edges.push((ip, edge_id, node));
    }
    let service = control
        .ok("GET", "/origins/home/services/web", None)
        .await?;
    for hostname in [app(), wildcard()] {
        control
            .ok(
                "POST",
                "/routes",
                Some(json!({ "hostname": hostname, "service_id": id(&service)? })),
            )
            .await?;
    }
    Ok(World {
        server,
        control,
        edges,
        _dir: dir,
    })
}

impl World {
    /// The A records the server answers for `name`, with their TTLs.
    async fn answer(&self, name: &str) -> Result<(BTreeSet<IpAddr>, BTreeSet<u32>)> {
        let mut addresses = BTreeSet::new();
        let mut ttls = BTreeSet::new();
        for (ttl, data) in dig(self.server.dns(), name, "A").await? {
            addresses.insert(data.parse().context("dig printed a bad address")?);
            ttls.insert(ttl);
        }
        Ok((addresses, ttls))
    }

    /// Fails unless `name` answers exactly `expected` now, with the TTL asked for.
    async fn check(&self, name: &str, expected: &BTreeSet<IpAddr>) -> Result<()> {
        let (addresses, ttls) = self.answer(name).await?;
        ensure!(
            addresses == *expected,
            "{name} answers {addresses:?}, not {expected:?}"
        );
        ensure!(
            ttls == BTreeSet::from([TTL]),
            "{name} has TTLs {ttls:?}, not {TTL}"
        );
        Ok(())
    }

    /// Waits until both route names (the wildcard through a name under it) answer exactly
    /// `expected`, for at most `within`; how long the first took.
    async fn all_answer(&self, expected: &[IpAddr], within: Duration) -> Result<Duration> {
        let started = Instant::now();
        let expected: BTreeSet<IpAddr> = expected.iter().copied().collect();
        let under_wildcard = format!("anything.w.{ZONE}");
        for name in [app(), under_wildcard] {
            let left = within.saturating_sub(started.elapsed());
            eventually(&format!("{name} answers {expected:?}"), left, || {
                self.check(&name, &expected)
            })
            .await?;
        }
        Ok(started.elapsed())
    }

    /// Both route names answer exactly `expected` now (no waiting).
    async fn all_answer_now(&self, expected: &[IpAddr]) -> Result<()> {
        let expected: BTreeSet<IpAddr> = expected.iter().copied().collect();
        self.check(&app(), &expected).await?;
        self.check(&format!("anything.w.{ZONE}"), &expected).await
    }

    fn ip(&self, index: usize) -> IpAddr {
        self.edges[index].0
    }

    fn edge(&mut self, index: usize) -> &mut Node {
        &mut self.edges[index].2
    }

    fn control_logs(&mut self) -> Result<String> {
        Ok(self.control.process()?.logs())
    }

    /// The audit trail's events about `entity` (`edge`, `dns`) after event `after`, oldest
    /// first.
    async fn events(&self, entity: &str, after: u64) -> Result<Vec<Value>> {
        let events = self
            .control
            .ok(
                "GET",
                &format!("/events?entity={entity}&after={after}&limit=1000"),
                None,
            )
            .await?;
        Ok(events.as_array().cloned().unwrap_or_default())
    }

    /// The id of the newest event in the audit trail.
    async fn last_event(&self) -> Result<u64> {
        let latest = self.control.ok("GET", "/events?limit=1", None).await?;
        Ok(latest[0]["id"].as_u64().unwrap_or(0))
    }

    /// How many lines of control's log say it keeps `name`'s addresses (fail open).
    fn fail_open_lines(&mut self, name: &str) -> Result<usize> {
        Ok(self
            .control_logs()?
            .lines()
            .filter(|line| line.contains("(fail open)") && line.contains(name))
            .count())
    }

    /// The edge's stored state and reason.
    async fn state(&self, index: usize) -> Result<(String, String)> {
        let edge = self
            .control
            .ok("GET", &format!("/edge-nodes/{}", self.edges[index].1), None)
            .await?;
        Ok((
            edge["state"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            edge["state"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ))
    }
}

/// Waits for the edge's `edge.offline` event and returns its reason.
async fn offline_event(world: &World, index: usize) -> Result<String> {
    let edge_id = world.edges[index].1.clone();
    eventually(
        &format!("an edge.offline event for edge {index}"),
        PUBLISH,
        || async {
            let events = world.events("edge", 0).await?;
            events
                .iter()
                .rev()
                .find(|e| e["entity_id"] == edge_id.as_str() && e["action"] == "offline")
                .and_then(|e| e["detail"]["reason"].as_str().map(str::to_owned))
                .context("no edge.offline event yet")
        },
    )
    .await
}

/// The sequence both servers go through.
async fn steering(mut world: World, hang: bool) -> Result<()> {
    let all = [world.ip(0), world.ip(1), world.ip(2)];
    world.all_answer(&all, SETTLE).await?;

    // A killed edge leaves the answer within the detection window; the others stay.
    world.edge(0).kill().await?;
    let took = world
        .all_answer(&[world.ip(1), world.ip(2)], DETECTION_WINDOW + PUBLISH)
        .await?;
    eprintln!("steering: SIGKILLed edge withdrawn after {took:?}");
    let reason = offline_event(&world, 0).await?;
    ensure!(
        reason.contains("failed probes of https://127.0.0.2:"),
        "edge.offline names no failed probe: {reason}"
    );
    let (status, _) = world.state(0).await?;
    ensure!(status == "offline", "the killed edge is {status}");

    if hang {
        // A hung edge: its kernel still completes TCP handshakes, its TLS never answers.
        world
            .edge(1)
            .process
            .as_ref()
            .context("edge 1 is not running")?
            .signal("STOP")
            .await?;
        let took = world
            .all_answer(&[world.ip(2)], DETECTION_WINDOW + PUBLISH)
            .await?;
        eprintln!("steering: SIGSTOPped edge withdrawn after {took:?}");
        offline_event(&world, 1).await?;
        world.edge(1).kill().await?;
    } else {
        world.edge(1).kill().await?;
        world
            .all_answer(&[world.ip(2)], DETECTION_WINDOW + PUBLISH)
            .await?;
    }

    // The last edge goes too: its address stays (fail open), control logs it and records a
    // dns.fail_open event naming the route. (The names were held open once already, at the
    // start, before any edge had passed its probes: only what comes after counts.)
    let before = world.last_event().await?;
    let logged_before = world.fail_open_lines(&app())?;
    world.edge(2).kill().await?;
    let fail_open = eventually(
        "a dns.fail_open event for the route",
        DETECTION_WINDOW + PUBLISH,
        || async {
            let events = world.events("dns", before).await?;
            events
                .iter()
                .find(|e| e["action"] == "fail_open" && e["entity_id"] == app().as_str())
                .and_then(|e| e["id"].as_u64())
                .with_context(|| format!("no new dns.fail_open event for {} yet", app()))
        },
    )
    .await?;
    ensure!(
        world.fail_open_lines(&app())? > logged_before,
        "control logged no new fail open naming {}",
        app()
    );
    let (status, _) = world.state(2).await?;
    ensure!(status == "offline", "the last edge is {status}");
    // Still published: the last healthy edge is never withdrawn.
    world.all_answer_now(&[world.ip(2)]).await?;

    // An edge that comes back is published again once its probes pass the healthy threshold;
    // the fail-open address, still down, is dropped.
    world.edge(0).start().await?;
    let took = world.all_answer(&[world.ip(0)], SETTLE).await?;
    eprintln!("steering: restarted edge published after {took:?}");
    eventually(
        "a dns.fail_open_ended event for the route",
        PUBLISH,
        || async {
            let events = world.events("dns", fail_open).await?;
            ensure!(
                events
                    .iter()
                    .any(|e| e["action"] == "fail_open_ended" && e["entity_id"] == app().as_str()),
                "no dns.fail_open_ended event for {}",
                app()
            );
            Ok(())
        },
    )
    .await?;
    Ok(())
}

#[test]
fn steering_follows_edge_health_through_bind() {
    run_bounded(Duration::from_secs(400), async {
        if !tools_or_skip(
            "steering_follows_edge_health_through_bind",
            &["named", "dig", "nsupdate"],
        ) {
            return Ok(());
        }
        let world =
            world(async |dir: &Path| Ok(Server::Bind(Named::start_with_records(dir, "").await?)))
                .await?;
        steering(world, true).await
    });
}

#[test]
fn steering_follows_edge_health_through_powerdns() {
    run_bounded(Duration::from_secs(400), async {
        if !tools_or_skip(
            "steering_follows_edge_health_through_powerdns",
            &["pdns_server", "sqlite3", "dig"],
        ) {
            return Ok(());
        }
        let world =
            world(async |dir: &Path| Ok(Server::PowerDns(PowerDns::start(dir).await?))).await?;
        steering(world, false).await
    });
}
