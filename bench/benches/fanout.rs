//! Config fan-out: the time from a committed store change to every watching edge holding the
//! new snapshot, through kokoa-control's real gRPC server (TLS with its own CA, SQLite store)
//! and real tonic clients on loopback, each edge enrolled and on its own TLS connection.
//!
//! - `fanout/200_edges`: a route change on the origin all 200 edges serve;
//! - `fanout/1_of_201_edges`: a route change on an origin only one edge serves, while the 200
//!   others stay connected (they evaluate the version and are sent nothing).
//!
//! An iteration starts before the store write (`update_route`), so it includes the commit, the
//! hub's snapshot build and every stream's filter, encode and send. Run with
//! `cargo bench -p kokoa-bench --bench fanout`; not run in CI.
//!
//! Measured 2026-11-24 on the 2-core development VM while other builds ran (load average
//! 2.7-4), with 2 tokio worker threads shared by control and all 201 clients (so the clients'
//! TLS, decoding and ACKs compete with the fan-out itself):
//! - `fanout/200_edges`: 24.6 ms median (19.7-29.1 ms);
//! - `fanout/1_of_201_edges`: 7.3 ms (6.3-9.0 ms), store commit and snapshot build included.
//!
//! Before ACKs were written by one task (each stream wrote its own), back-to-back changes
//! queued behind the previous change's 200 ACK writes on SQLite's write lock: 102-150 ms for
//! 200 edges and 5.5-10 ms for one.

// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use criterion::{criterion_group, criterion_main, Criterion};
use kokoa_control::grpc::{GrpcOptions, GrpcServer};
use kokoa_control::pki::ControlCa;
use kokoa_control::store::{
    self, Actor, Id, MasterKey, NewEdge, NewOrigin, NewRoute, NewService, NodeId, RouteUpdate,
    Store,
};
use kokoa_proto::v1 as pb;
use kokoa_proto::v1::config_client::ConfigClient;
use kokoa_proto::v1::enrollment_client::EnrollmentClient;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const EDGES: usize = 200;
/// Bound on one iteration: a stuck fan-out fails the bench instead of hanging it.
const LIMIT: Duration = Duration::from_secs(30);

/// A control with `EDGES` edges serving `home` and one more edge serving `lab`, all watching.
struct Fleet {
    store: Arc<dyn Store>,
    home_route: Id,
    lab_route: Id,
    /// Versions received by the home edges.
    home_rx: mpsc::UnboundedReceiver<u64>,
    /// Versions received by the lab edge.
    lab_rx: mpsc::UnboundedReceiver<u64>,
    /// Per-iteration counter: each change sets a new rate limit so the version always moves.
    rate: u64,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn origin(store: &dyn Store, name: &str, port: u32) -> Result<(Id, Id)> {
    let origin = store
        .create_origin(&Actor::System, NewOrigin::named(name.parse()?))
        .await?;
    let service = store
        .create_service(
            &Actor::System,
            origin.id,
            NewService::http("web".parse()?, store::Port::new(port)?),
        )
        .await?;
    let route = store
        .create_route(
            &Actor::System,
            NewRoute::to(format!("{name}.example.com").parse()?, service.id),
        )
        .await?;
    Ok((origin.id, route.id))
}

async fn channel(addr: std::net::SocketAddr, ca_pem: &str) -> Result<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await?)
}

/// Enrolls `node` and keeps a Watch stream open, ACKing every snapshot and reporting its
/// version on `report` (after the first).
async fn watcher(
    store: Arc<dyn Store>,
    addr: std::net::SocketAddr,
    ca_pem: String,
    node: NodeId,
    ready: mpsc::UnboundedSender<()>,
    report: mpsc::UnboundedSender<u64>,
) -> Result<()> {
    let channel = channel(addr, &ca_pem).await?;
    let token = store
        .create_enrollment_token(&Actor::System, node, Duration::from_secs(600))
        .await?;
    let credential = EnrollmentClient::new(channel.clone())
        .enroll(pb::EnrollRequest {
            token: token.secret.expose().to_owned(),
            hostname: "bench".into(),
            software_version: "bench".into(),
        })
        .await?
        .into_inner()
        .credential;
    let (tx, rx) = mpsc::channel(8);
    let hello = pb::node_message::Message::Hello(pb::Hello {
        applied_version: 0,
        software_version: "bench".into(),
        hostname: "bench".into(),
        listeners: Vec::new(),
    });
    tx.send(pb::NodeMessage {
        message: Some(hello),
    })
    .await?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {credential}").parse()?);
    let mut stream = ConfigClient::new(channel)
        .watch(request)
        .await?
        .into_inner();
    let mut first = true;
    while let Some(message) = stream.message().await? {
        let Some(pb::control_message::Message::Snapshot(snapshot)) = message.message else {
            continue;
        };
        if first {
            first = false;
            let _ = ready.send(());
        } else {
            let _ = report.send(snapshot.version);
        }
        let ack = pb::node_message::Message::Ack(pb::Ack {
            version: snapshot.version,
        });
        tx.send(pb::NodeMessage { message: Some(ack) }).await?;
    }
    Ok(())
}

async fn fleet() -> Result<Fleet> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("control.db");
    let store = store::open(&format!("sqlite://{}", db.display()), MasterKey::generate()).await?;
    let ca = ControlCa::load_or_create(dir.path())?;
    let tls = ca.server_tls(&["localhost".into()])?;
    let server = GrpcServer::new(store.clone(), GrpcOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(listener, tls, async move {
        let _ = stopped.await;
    }));

    let (home, home_route) = origin(store.as_ref(), "home", 8001).await?;
    let (lab, lab_route) = origin(store.as_ref(), "lab", 8002).await?;
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (home_tx, home_rx) = mpsc::unbounded_channel();
    let (lab_tx, lab_rx) = mpsc::unbounded_channel();
    for i in 0..=EDGES {
        let (name, origin, report) = if i < EDGES {
            (format!("edge-{i:03}"), home, home_tx.clone())
        } else {
            ("edge-lab".to_owned(), lab, lab_tx.clone())
        };
        let edge = store
            .create_edge(
                &Actor::System,
                NewEdge {
                    origins: vec![origin],
                    ..NewEdge::named(kokoa_model::Name::new(&name)?)
                },
            )
            .await?;
        let task = watcher(
            store.clone(),
            addr,
            ca.ca_pem().to_owned(),
            NodeId::Edge(edge.id),
            ready_tx.clone(),
            report,
        );
        tokio::spawn(async move {
            if let Err(e) = task.await {
                eprintln!("watcher failed: {e:#}");
            }
        });
    }
    for _ in 0..=EDGES {
        tokio::time::timeout(LIMIT, ready_rx.recv())
            .await
            .context("edges did not all get their first snapshot")?;
    }
    Ok(Fleet {
        store,
        home_route,
        lab_route,
        home_rx,
        lab_rx,
        rate: 0,
        _dir: dir,
        _stop: stop,
    })
}

impl Fleet {
    /// Changes `route`'s limits; returns the new config version.
    async fn change(&mut self, route: Id) -> Result<u64> {
        self.rate += 1;
        self.store
            .update_route(
                &Actor::System,
                route,
                RouteUpdate {
                    limits: Some(kokoa_model::RouteLimits::new(
                        Some(kokoa_model::Rate::new(f64::from(u32::try_from(
                            self.rate,
                        )?))?),
                        None,
                        None,
                        kokoa_model::AccessRules::default(),
                    )?),
                    ..RouteUpdate::default()
                },
            )
            .await?;
        Ok(self.store.config_version().await?)
    }

    /// One change on `home`, until all `EDGES` edges have it.
    async fn fan_out_all(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let version = self.change(self.home_route).await?;
        let mut got = 0;
        while got < EDGES {
            let v = tokio::time::timeout(LIMIT, self.home_rx.recv())
                .await
                .context("fan-out timed out")?
                .context("watchers gone")?;
            if v == version {
                got += 1;
            } else if v > version {
                bail!("unexpected version {v} > {version}");
            }
        }
        Ok(started.elapsed())
    }

    /// One change on `lab`, until its single edge has it.
    async fn fan_out_one(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let version = self.change(self.lab_route).await?;
        loop {
            let v = tokio::time::timeout(LIMIT, self.lab_rx.recv())
                .await
                .context("single-edge update timed out")?
                .context("watcher gone")?;
            if v == version {
                return Ok(started.elapsed());
            }
        }
    }
}

fn fanout(c: &mut Criterion) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let mut fleet = match runtime.block_on(fleet()) {
        Ok(fleet) => fleet,
        Err(e) => panic!("setting up {EDGES} watching edges failed: {e:#}"),
    };
    let mut group = c.benchmark_group("fanout");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function(format!("{EDGES}_edges"), |b| {
        b.iter_custom(|iters| run(&runtime, iters, &mut fleet, Case::All))
    });
    group.bench_function(format!("1_of_{}_edges", EDGES + 1), |b| {
        b.iter_custom(|iters| run(&runtime, iters, &mut fleet, Case::One))
    });
    group.finish();
}

#[derive(Clone, Copy)]
enum Case {
    /// A change every home edge gets.
    All,
    /// A change only the lab edge gets.
    One,
}

/// Sums `iters` runs of `case` (criterion's custom timing).
fn run(runtime: &Runtime, iters: u64, fleet: &mut Fleet, case: Case) -> Duration {
    runtime.block_on(async {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let one = match case {
                Case::All => fleet.fan_out_all().await,
                Case::One => fleet.fan_out_one().await,
            };
            match one {
                Ok(elapsed) => total += elapsed,
                Err(e) => panic!("fan-out iteration failed: {e:#}"),
            }
        }
        total
    })
}

criterion_group!(benches, fanout);
criterion_main!(benches);
