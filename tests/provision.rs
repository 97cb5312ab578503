//! A fleet that heals itself, for the replacement test and the failover benchmark: the real
//! `kokoa-control serve` with the `local` provisioner (each edge a real `kokoa-edge` process on
//! its own loopback address from a /28 of 127/8 picked at random), DNS steering into a real BIND
//! started here (RFC 2136 + TSIG), an origin with a sample app behind the route `app.<ZONE>`
//! (certificate from a test CA), and a webhook receiver subscribed to `edge.*` and
//! `provision.*`.
//!
//! Edges are made by control, not by this harness, so they are not children of this process:
//! [`SelfHealing`] kills whatever its control's local provisioner still runs when dropped (by
//! the PID each edge's directory records, after checking `/proc/PID/cmdline` names that
//! directory), so a failed test leaves no process behind.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::acme::{Named, TSIG_KEY, ZONE};
use crate::apps::HttpApp;
use crate::client::{EdgeClient, Proto};
use crate::control::{id, Control, Node};
use crate::dns::dig;
use crate::eventually;
use crate::net::{free_tcp, free_udp, loopback};
use crate::pki::TestCa;
use crate::process::binary;

/// The route the fleet serves.
pub fn host() -> String {
    format!("app.{ZONE}")
}

/// The sample app's name (in its answers).
pub const APP: &str = "healed-app";

/// One event a webhook delivered: the audit event id and its kind (`edge.replaced`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivered {
    /// The audit event's id.
    pub event_id: u64,
    /// `ENTITY.ACTION`.
    pub kind: String,
    /// The event's detail.
    pub detail: Value,
}

/// A webhook receiver on loopback recording every delivery in arrival order.
pub struct Webhook {
    /// Its URL.
    pub url: String,
    /// What arrived.
    pub received: Arc<Mutex<Vec<Delivered>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Webhook {
    /// Starts the receiver.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let received: Arc<Mutex<Vec<Delivered>>> = Arc::default();
        let sink = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let sink = sink.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            let sink = sink.clone();
                            async move {
                                let body = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                if let Ok(value) = serde_json::from_slice::<Value>(&body) {
                                    let delivered = Delivered {
                                        event_id: value["event"]["id"].as_u64().unwrap_or(0),
                                        kind: value["kind"].as_str().unwrap_or_default().to_owned(),
                                        detail: value["event"]["detail"].clone(),
                                    };
                                    sink.lock()
                                        .unwrap_or_else(|e| e.into_inner())
                                        .push(delivered);
                                }
                                Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Webhook {
            url: format!("http://{addr}/hook"),
            received,
            task,
        })
    }

    /// What arrived so far.
    pub fn received(&self) -> Vec<Delivered> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// How the fleet's control deviates from the defaults.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `--replace-after` seconds.
    pub replace_after: u64,
    /// `--replace-cooldown` seconds.
    pub cooldown: u64,
    /// `--dns-ttl` seconds.
    pub ttl: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            replace_after: 5,
            cooldown: 0,
            ttl: 30,
        }
    }
}

/// Control with the local provisioner and auto-replace, BIND, an origin, a webhook.
pub struct SelfHealing {
    /// Control.
    pub control: Control,
    /// BIND.
    pub named: Named,
    /// The origin.
    pub origin: Node,
    /// The sample app behind the route.
    pub app: HttpApp,
    /// The webhook receiver.
    pub webhook: Webhook,
    /// The CA of the route's certificate.
    pub ca: TestCa,
    /// The port every edge's HTTPS listener has (on its own address).
    pub https_port: u16,
    /// Where control's local provisioner keeps its edges.
    pub local_dir: PathBuf,
    /// The settings control runs with.
    pub settings: Settings,
    /// Last, so it is removed after the processes are gone.
    pub dir: tempfile::TempDir,
}

impl Drop for SelfHealing {
    fn drop(&mut self) {
        kill_local_edges(&self.local_dir);
    }
}

/// SIGKILLs every edge recorded under `dir` that still runs (checked by its command line).
pub fn kill_local_edges(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if let Some(pid) = local_edge_pid(&entry.path()) {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// The PID of the local edge in `edge_dir`, if it runs (its command line names the directory's
/// `edge.toml`).
pub fn local_edge_pid(edge_dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(edge_dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let config = edge_dir.join("edge.toml");
    let config = config.as_os_str().as_encoded_bytes();
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == config)
        .then_some(pid)
}

/// A port free on 127.0.0.1 a moment ago (the provisioner skips addresses where it is taken).
fn some_port(udp: bool) -> Result<u16> {
    Ok(if udp {
        free_udp(loopback(1))?.port()
    } else {
        free_tcp(loopback(1))?.port()
    })
}

impl SelfHealing {
    /// Starts everything (no edge yet: see [`SelfHealing::provision`]).
    pub async fn start(settings: Settings) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let named_dir = dir.path().join("named");
        std::fs::create_dir_all(&named_dir)?;
        let named = Named::start_with_records(&named_dir, "").await?;
        let secret = dir.path().join("tsig.secret");
        std::fs::write(&secret, &named.secret)?;
        // A /28 of 127/8 nobody else in this test run uses: 127.R.S.0/28, R in 64..=127.
        let r = 64 + rand::random::<u8>() % 64;
        let s = rand::random::<u8>() & 0xf0;
        let range = format!("127.{r}.{s}.0/28");
        let https_port = some_port(false)?;
        let local_dir = dir.path().join("local-edges");
        let args: Vec<String> = [
            "--dns-provider",
            "rfc2136",
            "--dns-rfc2136-server",
            &named.addr.to_string(),
            "--dns-tsig-key-name",
            TSIG_KEY,
            "--dns-tsig-secret-file",
            &secret.display().to_string(),
            "--dns-zone",
            ZONE,
            "--dns-ttl",
            &settings.ttl.to_string(),
            "--health-public-port",
            &https_port.to_string(),
            "--provisioner",
            "local",
            "--provision-local-dir",
            &local_dir.display().to_string(),
            "--provision-local-range",
            &range,
            "--provision-local-http-port",
            &some_port(false)?.to_string(),
            "--provision-local-admin-port",
            &some_port(false)?.to_string(),
            "--provision-local-tunnel-port",
            &some_port(true)?.to_string(),
            "--edge-bin",
            &binary("kokoa-edge")?.display().to_string(),
            "--auto-replace",
            "--replace-after",
            &settings.replace_after.to_string(),
            "--replace-cooldown",
            &settings.cooldown.to_string(),
        ]
        .map(String::from)
        .to_vec();
        let control = Control::start_with(dir.path(), args).await?;
        let webhook = Webhook::start().await?;
        control
            .ok(
                "POST",
                "/notification-targets",
                Some(json!({
                    "name": "fleet-hook", "kind": "webhook", "url": webhook.url,
                    "events": ["edge.*", "provision.*"],
                })),
            )
            .await?;
        let app = HttpApp::start(APP, loopback(1)).await?;
        let origin = control
            .ok("POST", "/origins", Some(json!({ "name": "home" })))
            .await?;
        let origin_id = id(&origin)?;
        let service = control
            .ok(
                "POST",
                "/origins/home/services",
                Some(json!({ "name": "web", "port": 8001, "local_address": app.addr.to_string() })),
            )
            .await?;
        let ca = TestCa::new()?;
        let issued = ca.issue(&[&host()])?;
        control
            .ok(
                "POST",
                "/certificates",
                Some(json!({ "chain_pem": issued.chain_pem, "key_pem": issued.key_pem })),
            )
            .await?;
        control
            .ok(
                "POST",
                "/routes",
                Some(json!({ "hostname": host(), "service_id": id(&service)? })),
            )
            .await?;
        let origin = Node::origin(&control, &origin_id, &dir.path().join("home")).await?;
        Ok(SelfHealing {
            control,
            named,
            origin,
            app,
            webhook,
            ca,
            https_port,
            local_dir,
            settings,
            dir,
        })
    }

    /// Provisions edge `name` serving `home` through `kokoa-control edge provision` (the CLI,
    /// over the REST API); its public address.
    pub async fn provision(&self, name: &str) -> Result<IpAddr> {
        self.control
            .cli(&["edge", "provision", name, "--origin", "home"])
            .await
            .with_context(|| format!("edge provision {name}"))?;
        self.public_ip(name).await
    }

    /// The stored public address of edge `name`.
    pub async fn public_ip(&self, name: &str) -> Result<IpAddr> {
        let edge = self
            .control
            .ok("GET", &format!("/edge-nodes/{name}"), None)
            .await?;
        edge["public_ip"]
            .as_str()
            .context("the edge has no public address")?
            .parse()
            .context("bad public address")
    }

    /// Every edge's name and state.
    pub async fn edges(&self) -> Result<Vec<(String, String)>> {
        let edges = self.control.ok("GET", "/edge-nodes", None).await?;
        Ok(edges
            .as_array()
            .context("edge list")?
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or_default().to_owned(),
                    e["state"]["status"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect())
    }

    /// The addresses BIND answers for the route.
    pub async fn answer(&self) -> Result<BTreeSet<IpAddr>> {
        let mut out = BTreeSet::new();
        for (_, data) in dig(self.named.addr, &host(), "A").await? {
            out.insert(data.parse().context("dig printed a bad address")?);
        }
        Ok(out)
    }

    /// Waits until BIND answers exactly `expected` for the route.
    pub async fn dns_is(&self, expected: &BTreeSet<IpAddr>, within: Duration) -> Result<()> {
        eventually(
            &format!("{} answers {expected:?}", host()),
            within,
            || async {
                let got = self.answer().await?;
                ensure!(got == *expected, "{} answers {got:?}", host());
                Ok(())
            },
        )
        .await
    }

    /// One request for the route through the edge at `ip`: Ok when it is the app's 200.
    pub async fn fetch(&self, ip: IpAddr) -> Result<()> {
        let client = EdgeClient::new(SocketAddr::new(ip, self.https_port), &self.ca)?;
        let answer = tokio::time::timeout(
            Duration::from_secs(3),
            client.get(&host(), "/", Proto::Http1),
        )
        .await
        .context("no answer within 3 s")??;
        ensure!(
            answer.status == 200 && answer.text().contains(APP),
            "{}: {} {}",
            host(),
            answer.status,
            answer.text()
        );
        Ok(())
    }

    /// Waits until the route is served through the edge at `ip`.
    pub async fn serves(&self, ip: IpAddr, within: Duration) -> Result<()> {
        eventually(&format!("{} served through {ip}", host()), within, || {
            self.fetch(ip)
        })
        .await
    }

    /// SIGKILLs the local edge `name` (by the PID its directory records); when.
    pub async fn kill(&self, name: &str) -> Result<Instant> {
        let pid = local_edge_pid(&self.local_dir.join(name))
            .with_context(|| format!("edge {name} does not run"))?;
        let status = tokio::process::Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status()
            .await?;
        ensure!(status.success(), "kill -KILL {pid} failed");
        Ok(Instant::now())
    }

    /// Waits for a finished replacement of `old`; the new edge's name.
    pub async fn replaced(&self, old: &str, within: Duration) -> Result<String> {
        eventually(&format!("edge {old} replaced"), within, || async {
            let list = self
                .control
                .ok("GET", "/provision/replacements?limit=50", None)
                .await?;
            let r = list
                .as_array()
                .context("replacement list")?
                .iter()
                .find(|r| r["old_edge_name"] == old)
                .with_context(|| format!("no replacement of {old} yet"))?
                .clone();
            match r["stage"].as_str() {
                Some("done") => r["new_edge_name"]
                    .as_str()
                    .map(str::to_owned)
                    .context("done without a new edge"),
                Some("failed") => bail!("the replacement of {old} failed: {}", r["error"]),
                other => {
                    // What the replacer waits on: the new edge's state as control has it.
                    let mut new = String::new();
                    if let Some(name) = r["new_edge_name"].as_str() {
                        let (_, edge) = self
                            .control
                            .call("GET", &format!("/edge-nodes/{name}"), None)
                            .await?;
                        new = format!("; {name}: {edge}");
                    }
                    bail!("the replacement of {old} is at {other:?}{new}")
                }
            }
        })
        .await
    }

    /// The name of the edge a replacement of `old` is bringing up, once it has one.
    pub async fn successor(&self, old: &str, within: Duration) -> Result<String> {
        eventually(&format!("a successor of {old}"), within, || async {
            let list = self
                .control
                .ok("GET", "/provision/replacements?limit=50", None)
                .await?;
            list.as_array()
                .context("replacement list")?
                .iter()
                .find(|r| r["old_edge_name"] == old)
                .and_then(|r| r["new_edge_name"].as_str().map(str::to_owned))
                .with_context(|| format!("no successor of {old} yet"))
        })
        .await
    }

    /// Destroys every edge through the API (at the end of a test or benchmark round).
    pub async fn destroy_all(&self) -> Result<()> {
        for (name, _) in self.edges().await? {
            self.control
                .ok(
                    "POST",
                    &format!("/edge-nodes/{name}/destroy"),
                    Some(json!({})),
                )
                .await?;
        }
        Ok(())
    }
}
