//! The health checker over a real SQLite store, probing a real TLS listener on loopback: an
//! edge whose public listener answers becomes online, goes offline with the reason when the
//! listener dies (the transition is an event, the probes are history and metrics), and comes
//! back after the healthy threshold when it returns. History is pruned by retention. DNS
//! steering, fed by the checker, follows the states against a real BIND.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kokoa_control::dns::{
    DnsManager, Rfc2136Config, Rfc2136Provider, Steering, SteeringOptions, TsigAlgorithm,
};
use kokoa_control::health::{HealthChecker, HealthSettings};
use kokoa_control::store::{
    self, Actor, CheckKind, Entity, EventQuery, HealthQuery, HostPattern, MasterKey, NewEdge,
    NewHealthCheck, NewOrigin, NewRoute, NewService, NodeId, NodeStatus, Port, Store,
};
use kokoa_tests::acme::{Named, DEADLINE, TSIG_KEY, ZONE};
use kokoa_tests::dns::dig_addresses;
use kokoa_tests::eventually;
use tokio::net::TcpListener;

async fn open() -> Result<(tempfile::TempDir, Arc<dyn Store>)> {
    let dir = tempfile::tempdir()?;
    let store = store::open(
        &format!("sqlite://{}", dir.path().join("control.db").display()),
        MasterKey::generate(),
    )
    .await?;
    Ok((dir, store))
}

fn tls_acceptor() -> Result<tokio_rustls::TlsAcceptor> {
    let cert = rcgen::generate_simple_self_signed(vec!["edge.test".into()])?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A TLS listener on `addr` completing handshakes until aborted.
fn public_listener(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(stream).await;
            });
        }
    })
}

async fn round(checker: &HealthChecker, store: &dyn Store) -> Result<(NodeStatus, String)> {
    checker.probe_all().await?;
    checker.judge_all().await?;
    let edge = store.list_edges().await?.pop().context("the edge")?;
    Ok((edge.state.status, edge.state.reason.unwrap_or_default()))
}

#[tokio::test]
async fn probes_take_a_dead_edge_offline_and_bring_it_back() -> Result<()> {
    let (_dir, store) = open().await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let acceptor = tls_acceptor()?;
    let server = public_listener(listener, acceptor.clone());
    let edge = store
        .create_edge(
            &Actor::Cli,
            NewEdge {
                public_ip: Some(addr.ip()),
                ..NewEdge::named("vps1".parse()?)
            },
        )
        .await?;
    let settings = HealthSettings {
        public_port: addr.port(),
        unhealthy_threshold: 3,
        healthy_threshold: 2,
        check_timeout: Duration::from_secs(2),
        ..HealthSettings::default()
    };
    let checker = HealthChecker::new(store.clone(), settings, None);
    let target = format!("https://{addr}");

    // A new edge is enrolling until its probes pass the healthy threshold (it has not talked
    // to control either, so that is the reason until then).
    let (status, reason) = round(&checker, &*store).await?;
    assert_eq!(status, NodeStatus::Enrolling);
    assert!(reason.starts_with("has never connected"), "{reason}");
    assert_eq!(
        round(&checker, &*store).await?,
        (
            NodeStatus::Online,
            "no heartbeat yet; its probe passes".to_owned()
        )
    );

    // The listener dies: still online after two failures, offline at the third.
    server.abort();
    let _ = server.await;
    let mut failures = Vec::new();
    for _ in 0..3 {
        failures.push(round(&checker, &*store).await?);
    }
    assert_eq!(failures[0].0, NodeStatus::Online);
    assert_eq!(failures[1].0, NodeStatus::Online);
    assert_eq!(
        failures[2],
        (
            NodeStatus::Offline,
            format!("3 failed probes of {target}: connection refused")
        )
    );

    // The transitions are events, with the reason.
    let events = store
        .list_events(EventQuery {
            entity_id: Some(edge.id.to_string()),
            ..EventQuery::default()
        })
        .await?;
    let changes: Vec<(String, String)> = events
        .iter()
        // A state change's action is the new state: kinds `edge.offline`, `edge.online`.
        .filter(|e| e.detail["to"] == e.action.as_str() && e.detail["name"] == "vps1")
        .map(|e| {
            (
                e.detail["to"].as_str().unwrap_or_default().to_owned(),
                e.detail["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(
        changes.contains(&(
            "offline".into(),
            format!("3 failed probes of {target}: connection refused")
        )),
        "{changes:?}"
    );
    assert!(changes.iter().any(|(to, _)| to == "online"), "{changes:?}");

    // Every probe is history, newest first.
    let history = store
        .health_checks(HealthQuery {
            edge_id: Some(edge.id),
            ..HealthQuery::default()
        })
        .await?;
    assert_eq!(history.len(), 5);
    assert!(history[..3].iter().all(|h| !h.success
        && h.kind == Some(CheckKind::Public)
        && h.error.as_deref() == Some("connection refused")
        && h.target.as_deref() == Some(target.as_str())));
    assert!(history[3..].iter().all(|h| h.success));

    // And metrics.
    let text =
        kokoa_control::metrics::render(&kokoa_control::metrics::registry(&[checker.metrics()]));
    for line in [
        "kokoa_health_checks_total{check=\"public\",result=\"fail\"} 3",
        "kokoa_health_checks_total{check=\"public\",result=\"pass\"} 2",
        "kokoa_nodes{kind=\"edge\",state=\"offline\"} 1",
        "kokoa_node_state{kind=\"edge\",name=\"vps1\",state=\"offline\"} 1",
        "kokoa_health_check_duration_seconds_count{check=\"public\"} 5",
    ] {
        ensure!(text.contains(line), "no {line} in\n{text}");
    }

    // It comes back on the same port: offline (recovering) until the healthy threshold.
    let listener = TcpListener::bind(addr).await?;
    let server = public_listener(listener, acceptor);
    let (status, reason) = round(&checker, &*store).await?;
    assert_eq!(status, NodeStatus::Offline);
    assert!(
        reason.starts_with(&format!("recovering: 1 passed probe of {target}")),
        "{reason}"
    );
    assert_eq!(round(&checker, &*store).await?.0, NodeStatus::Online);
    server.abort();

    // A drained edge is draining whatever its probes say.
    store
        .update_edge(
            &Actor::Cli,
            edge.id,
            store::model::EdgeUpdate {
                draining: Some(true),
                ..Default::default()
            },
        )
        .await?;
    checker.judge_all().await?;
    let states = checker.subscribe().borrow().clone();
    assert_eq!(
        states.get(NodeId::Edge(edge.id)),
        Some(NodeStatus::Draining)
    );
    Ok(())
}

#[tokio::test]
async fn history_older_than_the_retention_is_pruned() -> Result<()> {
    let (_dir, store) = open().await?;
    let edge = store
        .create_edge(&Actor::Cli, NewEdge::named("vps1".parse()?))
        .await?;
    let now = time::OffsetDateTime::now_utc();
    let row = |hours_ago: i64| NewHealthCheck {
        kind: CheckKind::Public,
        target: "https://127.0.0.9".into(),
        edge_id: Some(edge.id),
        origin_id: None,
        service_id: None,
        success: true,
        response_time_ms: Some(1),
        error: None,
        checked_at: now - time::Duration::hours(hours_ago),
    };
    store
        .record_health_checks(vec![row(0), row(2), row(30), row(50)])
        .await?;
    let checker = HealthChecker::new(
        store.clone(),
        HealthSettings {
            history_retention: Duration::from_secs(24 * 3600),
            ..HealthSettings::default()
        },
        None,
    );
    assert_eq!(checker.prune_history().await?, 2);
    let left = store.health_checks(HealthQuery::default()).await?;
    assert_eq!(left.len(), 2);
    assert!(left
        .iter()
        .all(|h| now - h.checked_at < time::Duration::hours(3)));
    let text =
        kokoa_control::metrics::render(&kokoa_control::metrics::registry(&[checker.metrics()]));
    assert!(
        text.contains("kokoa_health_history_pruned_total 2"),
        "{text}"
    );
    Ok(())
}

/// Runs one probe round and one judgement, as the checker's loop does.
async fn tick(checker: &HealthChecker) -> Result<()> {
    checker.probe_all().await?;
    checker.judge_all().await?;
    Ok(())
}

/// DNS steering fed by the health checker, against a real BIND: the edges whose probes pass
/// are published; one whose listener dies goes offline (an `edge.offline` event) and leaves
/// the answer while the other stays; when the last one dies its address is kept (fail open, a
/// `dns.fail_open` event); an edge that comes back is published again (`dns.fail_open_ended`).
#[tokio::test]
async fn steering_follows_edge_states_and_keeps_the_last_edge() -> Result<()> {
    if !kokoa_tests::dns::tools_or_skip(
        "steering_follows_edge_states_and_keeps_the_last_edge",
        &["named", "dig", "nsupdate"],
    ) {
        return Ok(());
    }
    let (dir, store) = open().await?;
    let named = Named::start_with_records(dir.path(), "").await?;
    let acceptor = tls_acceptor()?;
    // Two edges, each with its public listener at its own loopback address, on one port.
    let first = TcpListener::bind("127.0.0.2:0").await?;
    let port = first.local_addr()?.port();
    let second = TcpListener::bind(("127.0.0.3", port)).await?;
    let (ip1, ip2): (IpAddr, IpAddr) = ("127.0.0.2".parse()?, "127.0.0.3".parse()?);
    let mut server1 = public_listener(first, acceptor.clone());
    let server2 = public_listener(second, acceptor.clone());

    let home = store
        .create_origin(&Actor::Cli, NewOrigin::named("home".parse()?))
        .await?;
    let web = store
        .create_service(
            &Actor::Cli,
            home.id,
            NewService::http("web".parse()?, Port::new(8001)?),
        )
        .await?;
    let app = format!("app.{ZONE}");
    store
        .create_route(&Actor::Cli, NewRoute::to(HostPattern::new(&app)?, web.id))
        .await?;
    let mut edges = Vec::new();
    for (name, ip) in [("e1", ip1), ("e2", ip2)] {
        let edge = store
            .create_edge(
                &Actor::Cli,
                NewEdge {
                    public_ip: Some(ip),
                    origins: vec![home.id],
                    ..NewEdge::named(name.parse()?)
                },
            )
            .await?;
        edges.push(edge);
    }

    let checker = HealthChecker::new(
        store.clone(),
        HealthSettings {
            public_port: port,
            unhealthy_threshold: 2,
            healthy_threshold: 2,
            check_timeout: Duration::from_secs(2),
            ..HealthSettings::default()
        },
        None,
    );
    let provider = Rfc2136Provider::new(Rfc2136Config {
        server: named.addr,
        zone: ZONE.into(),
        key_name: TSIG_KEY.into(),
        algorithm: TsigAlgorithm::HmacSha256,
        secret_base64: named.secret.clone().into(),
        timeout: Duration::from_secs(5),
    })?;
    let manager = DnsManager::new(
        vec![Arc::new(provider)],
        SteeringOptions {
            ttl: 30,
            interval: Duration::from_secs(60),
        },
    );
    let steering = Steering {
        manager,
        store: store.clone(),
        health: checker.clone(),
        // Long: every change below must reach DNS through the checker's change signal.
        recheck: Duration::from_secs(60),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(steering.run(async {
        let _ = stop_rx.await;
    }));
    let answers = |want: Vec<IpAddr>, what: &'static str| {
        let app = app.clone();
        let want: BTreeSet<IpAddr> = want.into_iter().collect();
        let server = named.addr;
        async move {
            eventually(what, DEADLINE, || {
                let (app, want) = (app.clone(), want.clone());
                async move {
                    let got = dig_addresses(server, &app).await?;
                    ensure!(got == want, "{app} answers {got:?}");
                    Ok(())
                }
            })
            .await
        }
    };
    let dns_events = |action: &'static str, after: u64| {
        let store = store.clone();
        let app = app.clone();
        async move {
            eventually(&format!("a dns.{action} event"), DEADLINE, || {
                let (store, app) = (store.clone(), app.clone());
                async move {
                    let events = store
                        .list_events(EventQuery {
                            entity: Some(Entity::Dns),
                            entity_id: Some(app.clone()),
                            after: Some(after),
                            ..EventQuery::default()
                        })
                        .await?;
                    events
                        .into_iter()
                        .find(|e| e.action == action)
                        .with_context(|| format!("no dns.{action} for {app} yet"))
                }
            })
            .await
        }
    };

    // Both pass their probes twice: online, both published.
    for _ in 0..2 {
        tick(&checker).await?;
    }
    answers(vec![ip1, ip2], "both edges published").await?;

    // The first dies: offline after two failed probes, withdrawn; the second stays.
    server1.abort();
    let _ = server1.await;
    for _ in 0..2 {
        tick(&checker).await?;
    }
    answers(vec![ip2], "the dead edge withdrawn").await?;
    let offline = store
        .list_events(EventQuery {
            entity: Some(Entity::Edge),
            entity_id: Some(edges[0].id.to_string()),
            ..EventQuery::default()
        })
        .await?
        .into_iter()
        .find(|e| e.action == "offline")
        .context("no edge.offline event")?;
    assert_eq!(offline.detail["name"], "e1");
    assert_eq!(offline.detail["from"], "online");
    assert_eq!(
        offline.detail["reason"],
        format!("2 failed probes of https://127.0.0.2:{port}: connection refused")
    );

    // The last one dies too: offline, but its address stays (fail open), and that is an event
    // a notification target can match (`dns.fail_open`).
    server2.abort();
    let _ = server2.await;
    for _ in 0..2 {
        tick(&checker).await?;
    }
    let states = checker.subscribe().borrow().clone();
    assert_eq!(
        states.get(NodeId::Edge(edges[1].id)),
        Some(NodeStatus::Offline)
    );
    let fail_open = dns_events("fail_open", offline.id).await?;
    assert_eq!(fail_open.actor, "system");
    assert_eq!(fail_open.detail["kept"], serde_json::json!(["127.0.0.3"]));
    answers(vec![ip2], "the last edge kept").await?;

    // The first comes back: published once its probes pass again; the dead one is dropped.
    server1 = public_listener(TcpListener::bind((ip1, port)).await?, acceptor);
    for _ in 0..2 {
        tick(&checker).await?;
    }
    answers(vec![ip1], "the recovered edge published").await?;
    let ended = dns_events("fail_open_ended", fail_open.id).await?;
    assert_eq!(ended.detail["addresses"], serde_json::json!(["127.0.0.2"]));

    server1.abort();
    let _ = stop_tx.send(());
    tokio::time::timeout(DEADLINE, task)
        .await
        .context("steering did not stop")??;
    Ok(())
}

/// The services an origin reports: the first report is a baseline (history, no event); a change
/// is an event `service.down` / `service.up`, a history row with the service's id and metrics.
#[tokio::test]
async fn reported_services_going_down_and_up_are_events_history_and_metrics() -> Result<()> {
    use kokoa_control::health::heartbeat::ServiceHeartbeat;
    use kokoa_control::health::services::{OriginReport, ServiceWatch};
    use kokoa_control::health::HealthMetrics;

    let (_dir, store) = open().await?;
    let home = store
        .create_origin(&Actor::Cli, NewOrigin::named("home".parse()?))
        .await?;
    let web = store
        .create_service(
            &Actor::Cli,
            home.id,
            NewService::http("web".parse()?, Port::new(8001)?),
        )
        .await?;
    let metrics = HealthMetrics::default();
    let mut watch = ServiceWatch::default();
    let beat = |healthy: bool| ServiceHeartbeat {
        name: "web".into(),
        port: 8001,
        healthy,
        error: (!healthy).then(|| "connecting to 127.0.0.1:8001: refused".to_owned()),
        check: Some("TCP connect 127.0.0.1:8001".into()),
        consecutive_failures: if healthy { 0 } else { 3 },
        since_ms: Some(10),
    };
    let start = time::OffsetDateTime::now_utc();
    let mut step = 0i64;
    let mut observe = async |healthy: bool| {
        step += 1;
        let services = vec![beat(healthy)];
        let report = OriginReport {
            id: home.id,
            name: "home",
            services: &services,
        };
        let at = start + time::Duration::seconds(step);
        watch.observe(&*store, &metrics, &[report], at).await
    };
    let events = |store: Arc<dyn Store>| async move {
        let events = store
            .list_events(EventQuery {
                entity: Some(Entity::Service),
                entity_id: Some(web.id.to_string()),
                ..EventQuery::default()
            })
            .await?;
        anyhow::Ok(
            events
                .into_iter()
                .filter(|e| e.action == "down" || e.action == "up")
                .map(|e| (e.action, e.detail))
                .collect::<Vec<_>>(),
        )
    };

    let changes = observe(true).await?;
    ensure!(
        changes.down.is_empty() && changes.up.is_empty(),
        "{changes:?}"
    );
    ensure!(
        events(store.clone()).await?.is_empty(),
        "a baseline is no event"
    );
    // Unchanged: nothing recorded.
    observe(true).await?;
    let changes = observe(false).await?;
    ensure!(
        changes.down == [("home".to_owned(), "web".to_owned())],
        "{changes:?}"
    );
    observe(false).await?;
    let changes = observe(true).await?;
    ensure!(
        changes.up == [("home".to_owned(), "web".to_owned())],
        "{changes:?}"
    );

    let recorded = events(store.clone()).await?;
    let actions: Vec<&str> = recorded.iter().map(|(a, _)| a.as_str()).collect();
    ensure!(actions == ["down", "up"], "{recorded:?}");
    ensure!(recorded[0].1["origin"] == "home" && recorded[0].1["service"] == "web");
    ensure!(
        recorded[0].1["error"] == "connecting to 127.0.0.1:8001: refused",
        "{recorded:?}"
    );
    let history = store
        .health_checks(HealthQuery {
            service_id: Some(web.id),
            ..HealthQuery::default()
        })
        .await?;
    // Newest first: up, down, the baseline.
    let results: Vec<bool> = history.iter().map(|c| c.success).collect();
    ensure!(results == [true, false, true], "{history:?}");
    ensure!(history.iter().all(|c| c.kind == Some(CheckKind::Service)
        && c.origin_id == Some(home.id)
        && c.target.as_deref() == Some("home: TCP connect 127.0.0.1:8001")));
    let text = kokoa_control::metrics::render(&kokoa_control::metrics::registry(&[&metrics]));
    ensure!(
        text.contains("kokoa_service_up{origin=\"home\",service=\"web\"} 1"),
        "{text}"
    );
    ensure!(
        text.contains("kokoa_health_checks_total{check=\"service\",result=\"fail\"} 1"),
        "{text}"
    );
    // An origin that stops reporting a service forgets it: gone from the gauge.
    watch
        .observe(
            &*store,
            &metrics,
            &[OriginReport {
                id: home.id,
                name: "home",
                services: &[],
            }],
            start,
        )
        .await?;
    let text = kokoa_control::metrics::render(&kokoa_control::metrics::registry(&[&metrics]));
    ensure!(!text.contains("kokoa_service_up{"), "{text}");
    Ok(())
}
