//! DNS steering end to end: the real `kokoa-control serve` with `--dns-*` flags pointing at a
//! real authoritative server started by the test (BIND over RFC 2136 + TSIG, PowerDNS over
//! its HTTP API), and three real `kokoa-edge`s from control's bundles, each with a public
//! address and serving the route's origin. What is checked is what a resolver sees: the
//! server's answer, asked with `dig`.
//!
//! The rules under test (README "DNS steering"): the healthy edges' addresses are published;
//! an edge killed with SIGKILL (its control stream closes) is withdrawn within
//! [`WITHDRAWAL_BOUND`]; the last edge is never withdrawn (fail open, logged by control); an
//! edge that comes back is published again. Against BIND an edge that hangs (SIGSTOP: its
//! stream stays open, its heartbeats stop) is withdrawn too, after the heartbeat silence.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use kokoa_tests::acme::{Named, TSIG_KEY, ZONE};
use kokoa_tests::control::{id, Control, Node};
use kokoa_tests::dns::{dig, tools_or_skip, PowerDns};
use kokoa_tests::eventually;
use kokoa_tests::net::{free_udp, loopback};
use serde_json::json;

use crate::run_bounded;

/// Control's heartbeat interval (its default) times the heartbeats an edge may miss
/// (`kokoa_control::dns::steer::MISSED_HEARTBEATS`), plus the recheck period: the longest an
/// unhealthy edge stays published. A closed stream is noticed at once, so a killed edge
/// leaves well within it; the figure printed by the test is the measurement.
const WITHDRAWAL_BOUND: Duration = Duration::from_secs(10 * 3 + 2);
/// Time for control and the edges to start and the first records to appear.
const SETTLE: Duration = Duration::from_secs(60);

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
        let mut args: Vec<String> = ["--dns-zone", ZONE, "--dns-ttl", "30"]
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

/// Control, three edges (public addresses 127.0.0.2..=4) serving origin `home`, whose
/// service `web` has the route `app.<ZONE>` and the wildcard route `*.w.<ZONE>`.
struct World {
    server: Server,
    control: Control,
    edges: Vec<(IpAddr, Node)>,
    _dir: tempfile::TempDir,
}

fn app() -> String {
    format!("app.{ZONE}")
}

fn wildcard() -> String {
    format!("*.w.{ZONE}")
}

async fn world(start: impl AsyncFnOnce(&Path) -> Result<Server>) -> Result<World> {
    let dir = tempfile::tempdir()?;
    let server = start(dir.path()).await?;
    let control = Control::start_with(dir.path(), server.control_args(dir.path())?).await?;
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
    for n in 2..=4u8 {
        let ip = loopback(n);
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
        let node = Node::edge(
            &control,
            &id(&edge)?,
            &dir.path().join(format!("edge{n}")),
            ip,
            tunnel,
        )
        .await?;
        edges.push((ip, node));
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

    /// Waits until `name` answers exactly `expected` (with TTL 30) within `within`; how long
    /// that took.
    async fn answers(&self, name: &str, expected: &[IpAddr], within: Duration) -> Result<Duration> {
        let started = Instant::now();
        let expected: BTreeSet<IpAddr> = expected.iter().copied().collect();
        eventually(&format!("{name} answers {expected:?}"), within, || async {
            let (addresses, ttls) = self.answer(name).await?;
            ensure!(addresses == expected, "{name} answers {addresses:?}");
            ensure!(ttls == BTreeSet::from([30]), "{name} has TTLs {ttls:?}");
            Ok(())
        })
        .await?;
        Ok(started.elapsed())
    }

    /// Both route names answer `expected`.
    async fn all_answer(&self, expected: &[IpAddr], within: Duration) -> Result<Duration> {
        let took = self.answers(&app(), expected, within).await?;
        // The wildcard record answers for any name under it.
        self.answers(&format!("anything.w.{ZONE}"), expected, within)
            .await?;
        Ok(took)
    }

    fn ip(&self, index: usize) -> IpAddr {
        self.edges[index].0
    }

    fn control_logs(&mut self) -> Result<String> {
        Ok(self.control.process()?.logs())
    }
}

/// The sequence both servers go through.
async fn steering(mut world: World, hang: bool) -> Result<()> {
    let all = [world.ip(0), world.ip(1), world.ip(2)];
    world.all_answer(&all, SETTLE).await?;

    // A killed edge leaves the answer; the others stay.
    world.edges[0].1.kill().await?;
    let took = world
        .all_answer(&[world.ip(1), world.ip(2)], WITHDRAWAL_BOUND)
        .await?;
    eprintln!("steering: SIGKILLed edge withdrawn after {took:?}");

    if hang {
        // A hung edge keeps its stream open but stops heartbeating.
        let edge = &world.edges[1].1;
        edge.process
            .as_ref()
            .context("edge 2 is not running")?
            .signal("STOP")
            .await?;
        let took = world.all_answer(&[world.ip(2)], WITHDRAWAL_BOUND).await?;
        eprintln!("steering: SIGSTOPped edge withdrawn after {took:?}");
        world.edges[1].1.kill().await?;
    } else {
        world.edges[1].1.kill().await?;
        world.all_answer(&[world.ip(2)], WITHDRAWAL_BOUND).await?;
    }

    // The last edge goes too: its address stays (fail open), and control says so.
    world.edges[2].1.kill().await?;
    let deadline = Instant::now() + WITHDRAWAL_BOUND;
    while !world.control_logs()?.contains("fail open") {
        ensure!(
            Instant::now() < deadline,
            "control logged no fail open within {WITHDRAWAL_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Still there a full withdrawal bound later.
    tokio::time::sleep(WITHDRAWAL_BOUND).await;
    world.all_answer(&[world.ip(2)], Duration::ZERO).await?;
    let logs = world.control_logs()?;
    ensure!(
        logs.contains(&app()),
        "the fail-open log line does not name {}: {logs}",
        app()
    );

    // An edge that comes back is published again, and the fail-open one, down, is dropped.
    world.edges[0].1.start().await?;
    world.all_answer(&[world.ip(0)], SETTLE).await?;
    Ok(())
}

#[test]
fn steering_follows_edges_through_bind() {
    run_bounded(Duration::from_secs(300), async {
        if !tools_or_skip(
            "steering_follows_edges_through_bind",
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
fn steering_follows_edges_through_powerdns() {
    run_bounded(Duration::from_secs(300), async {
        if !tools_or_skip(
            "steering_follows_edges_through_powerdns",
            &["pdns_server", "sqlite3", "dig"],
        ) {
            return Ok(());
        }
        let world =
            world(async |dir: &Path| Ok(Server::PowerDns(PowerDns::start(dir).await?))).await?;
        steering(world, false).await
    });
}
