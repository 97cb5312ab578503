//! Notifications against real HTTP receivers on loopback: the webhook signature verifies (checked
//! here with the HMAC computed independently), the Slack body has Slack's shape, 500s are
//! retried with backoff and given up after the limit, a 4xx is not retried, a dead receiver hits
//! the queue bound while a good one gets every delivery in order, and with two control replicas
//! on one PostgreSQL database each notification is sent once.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kokoa_control::notify::{Notifier, NotifyOptions};
use kokoa_control::store::{
    self, Actor, DeliveryQuery, DeliveryStatus, MasterKey, NewEdge, NewNotificationTarget, NodeId,
    NotificationKind, Store,
};
use parking_lot::Mutex;
use serde_json::Value;
use sha2::Sha256;

const SECRET: &str = "test-signing-secret-0123456789";

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Received {
    headers: BTreeMap<String, String>,
    body: Bytes,
    at: Instant,
}

impl Received {
    fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).context("body is not JSON")
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// How a receiver answers its Nth request (0-based).
type Answer = Arc<dyn Fn(usize) -> Option<u16> + Send + Sync>;

/// An HTTP/1.1 server on 127.0.0.1 that records requests and answers with the status `answer`
/// picks, or never answers (`None`: a hung endpoint).
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(answer: Answer) -> Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook/path-secret", listener.local_addr()?);
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let recorded = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorded = recorded.clone();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let recorded = recorded.clone();
                        let answer = answer.clone();
                        async move {
                            let headers = request
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.as_str().to_string(),
                                        v.to_str().unwrap_or_default().to_string(),
                                    )
                                })
                                .collect();
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let n = {
                                let mut got = recorded.lock();
                                got.push(Received {
                                    headers,
                                    body,
                                    at: Instant::now(),
                                });
                                got.len() - 1
                            };
                            match answer(n) {
                                Some(status) => Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::from(if status == 200 {
                                            "ok"
                                        } else {
                                            "receiver says no"
                                        })))
                                        .unwrap_or_default(),
                                ),
                                None => {
                                    // Hang (bounded, so the test process never leaks a task
                                    // forever).
                                    tokio::time::sleep(Duration::from_secs(120)).await;
                                    Ok(Response::new(Full::new(Bytes::new())))
                                }
                            }
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Receiver {
            url,
            got,
            _task: task,
        })
    }

    async fn always(status: u16) -> Result<Receiver> {
        Receiver::start(Arc::new(move |_| Some(status))).await
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().clone()
    }

    /// Waits (at most 30 s) until `n` requests arrived.
    async fn wait_for(&self, n: usize) -> Result<Vec<Received>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.got();
            if got.len() >= n {
                return Ok(got);
            }
            ensure!(
                Instant::now() < deadline,
                "receiver got {} of {n} requests in 30 s",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn fast() -> NotifyOptions {
    NotifyOptions {
        max_attempts: 3,
        retry_base: Duration::from_millis(100),
        retry_max: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        queue_limit: 100,
        history: 100,
        poll_interval: Duration::from_millis(50),
        max_in_flight: 16,
    }
}

async fn sqlite() -> Result<(Arc<dyn Store>, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let store = store::open(
        &format!("sqlite://{}", dir.path().join("control.db").display()),
        MasterKey::generate(),
    )
    .await?;
    Ok((store, dir))
}

/// Runs a notifier until the returned sender is dropped.
fn run(store: Arc<dyn Store>, options: NotifyOptions) -> Result<tokio::sync::oneshot::Sender<()>> {
    let notifier = Notifier::new(store, options)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(notifier.run(async move {
        let _ = stopped.await;
    }));
    Ok(stop)
}

async fn target(
    store: &dyn Store,
    name: &str,
    kind: NotificationKind,
    url: &str,
    events: &[&str],
) -> Result<store::NotificationTarget> {
    Ok(store
        .create_notification_target(
            &Actor::Cli,
            NewNotificationTarget {
                name: name.into(),
                kind,
                url: url.into(),
                secret: (kind == NotificationKind::Webhook).then(|| SECRET.to_string()),
                events: events.iter().map(|s| s.to_string()).collect(),
            },
        )
        .await?
        .target)
}

fn edge(name: &str) -> NewEdge {
    NewEdge {
        endpoint: Some(kokoa_control::store::Endpoint::parse("127.0.0.1:51820").expect("endpoint")),
        ..NewEdge::named(kokoa_control::store::Name::new(name).expect("name"))
    }
}

/// Takes the notifier's cursor now (its first pass starts at the newest event and sends only
/// what comes after), so the events a test makes next are all sent.
async fn start_cursor(store: &dyn Store) -> Result<()> {
    store
        .fan_out_notifications(store::QueueLimits {
            events_per_pass: 1,
            pending_per_target: 1000,
            history_per_target: 1000,
        })
        .await?;
    Ok(())
}

fn hmac_hex(secret: &str, message: &[u8]) -> Result<String> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())?;
    mac.update(message);
    Ok(mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

async fn wait_status(
    store: &dyn Store,
    target_id: store::Id,
    status: DeliveryStatus,
    n: usize,
) -> Result<Vec<store::Delivery>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = store
            .list_notification_deliveries(DeliveryQuery {
                target_id: Some(target_id),
                status: Some(status),
                limit: None,
            })
            .await?;
        if found.len() >= n {
            return Ok(found);
        }
        ensure!(
            Instant::now() < deadline,
            "{} of {n} deliveries {status:?} in 30 s",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn webhook_signature_verifies_and_slack_body_has_slack_shape() -> Result<()> {
    let (store, _dir) = sqlite().await?;
    let hook = Receiver::always(200).await?;
    let chat = Receiver::always(200).await?;
    start_cursor(&*store).await?;
    let hook_target = target(
        &*store,
        "hook",
        NotificationKind::Webhook,
        &hook.url,
        &["edge.*"],
    )
    .await?;
    let chat_target = target(
        &*store,
        "chat",
        NotificationKind::Slack,
        &chat.url,
        &["*.config_rejected"],
    )
    .await?;
    let _stop = run(store.clone(), fast())?;
    let e1 = store.create_edge(&Actor::Cli, edge("e1")).await?;
    store
        .record_config_nack(
            NodeId::Edge(e1.id),
            &kokoa_control::store::Nack {
                version: 7,
                error: "route app.example.com: bad upstream".into(),
                object: None,
            },
        )
        .await?;

    // The webhook: edge.created, then edge.config_rejected, each signed.
    let got = hook.wait_for(2).await?;
    let kinds: Vec<_> = got
        .iter()
        .map(|r| r.header("kokoa-event").to_string())
        .collect();
    ensure!(
        kinds == ["edge.created", "edge.config_rejected"],
        "{kinds:?}"
    );
    for request in &got {
        ensure!(request.header("content-type") == "application/json");
        let signature = request.header("kokoa-signature");
        let (t, v1) = signature
            .strip_prefix("t=")
            .and_then(|rest| rest.split_once(",v1="))
            .with_context(|| format!("signature header {signature:?}"))?;
        let t: i64 = t.parse()?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        ensure!((now - t).abs() < 60, "timestamp {t} vs now {now}");
        let mut signed = format!("{t}.").into_bytes();
        signed.extend_from_slice(&request.body);
        ensure!(
            v1 == hmac_hex(SECRET, &signed)?,
            "signature does not verify"
        );
        ensure!(kokoa_control::notify::message::verify(
            SECRET,
            signature,
            &request.body,
            now,
            300
        ));
        ensure!(!kokoa_control::notify::message::verify(
            "another-secret-entirely",
            signature,
            &request.body,
            now,
            300
        ));
        let body = request.json()?;
        ensure!(body["kind"] == request.header("kokoa-event"));
        ensure!(body["delivery_id"] == request.header("kokoa-delivery"));
        ensure!(body["event"]["entity_id"] == e1.id.to_string());
    }
    let nack = got[1].json()?;
    ensure!(nack["event"]["detail"]["error"] == "route app.example.com: bad upstream");
    ensure!(nack["event"]["actor"] == "node:e1");
    ensure!(nack["text"]
        .as_str()
        .is_some_and(|t| t.contains("config_rejected") && t.contains("bad upstream")));

    // Slack: only the NACK matched; a body of exactly {"text": "..."}.
    let got = chat.wait_for(1).await?;
    let body = got[0].json()?;
    let object = body.as_object().context("Slack body is an object")?;
    ensure!(object.keys().collect::<Vec<_>>() == ["text"], "{body}");
    let text = body["text"].as_str().context("text is a string")?;
    ensure!(
        text.contains("config_rejected") && text.contains("bad upstream"),
        "{text}"
    );
    ensure!(got[0].header("kokoa-signature").is_empty());

    let delivered = wait_status(&*store, hook_target.id, DeliveryStatus::Delivered, 2).await?;
    ensure!(delivered
        .iter()
        .all(|d| d.attempts == 1 && d.last_status == Some(200) && d.last_error.is_none()));
    wait_status(&*store, chat_target.id, DeliveryStatus::Delivered, 1).await?;
    // Nothing else arrived (the NACK filter kept edge.created from chat).
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(chat.got().len() == 1 && hook.got().len() == 2);
    Ok(())
}

#[tokio::test]
async fn retries_after_500_with_backoff_and_gives_up_after_the_limit() -> Result<()> {
    let (store, _dir) = sqlite().await?;
    // Two 500s, then 200.
    let flaky = Receiver::start(Arc::new(|n| Some(if n < 2 { 500 } else { 200 }))).await?;
    let broken = Receiver::always(500).await?;
    let gone = Receiver::always(404).await?;
    start_cursor(&*store).await?;
    let flaky_t = target(
        &*store,
        "flaky",
        NotificationKind::Webhook,
        &flaky.url,
        &["edge.*"],
    )
    .await?;
    let broken_t = target(
        &*store,
        "broken",
        NotificationKind::Slack,
        &broken.url,
        &["edge.*"],
    )
    .await?;
    let gone_t = target(
        &*store,
        "gone",
        NotificationKind::Webhook,
        &gone.url,
        &["edge.*"],
    )
    .await?;
    let _stop = run(store.clone(), fast())?;
    store.create_edge(&Actor::Cli, edge("e1")).await?;

    let got = flaky.wait_for(3).await?;
    // The same delivery each time, after a backoff that doubles (100 ms, then 200 ms).
    ensure!(got
        .iter()
        .all(|r| r.header("kokoa-delivery") == got[0].header("kokoa-delivery")));
    let first_gap = got[1].at - got[0].at;
    let second_gap = got[2].at - got[1].at;
    ensure!(first_gap >= Duration::from_millis(100), "{first_gap:?}");
    ensure!(second_gap >= Duration::from_millis(200), "{second_gap:?}");
    let delivered = wait_status(&*store, flaky_t.id, DeliveryStatus::Delivered, 1).await?;
    ensure!(delivered[0].attempts == 3 && delivered[0].last_status == Some(200));

    let failed = wait_status(&*store, broken_t.id, DeliveryStatus::Failed, 1).await?;
    ensure!(failed[0].attempts == 3 && failed[0].last_status == Some(500));
    let error = failed[0].last_error.as_deref().unwrap_or_default();
    ensure!(
        error.contains("gave up after 3 attempts") && error.contains("receiver says no"),
        "{error}"
    );
    // A 4xx is the receiver's final word: one attempt.
    let refused = wait_status(&*store, gone_t.id, DeliveryStatus::Failed, 1).await?;
    ensure!(refused[0].attempts == 1 && refused[0].last_status == Some(404));
    // No attempt after giving up (the next would have been due 400 ms later).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ensure!(broken.got().len() == 3, "{} requests", broken.got().len());
    ensure!(gone.got().len() == 1);
    Ok(())
}

#[tokio::test]
async fn a_dead_receiver_hits_the_queue_bound_while_a_good_one_gets_everything() -> Result<()> {
    let (store, _dir) = sqlite().await?;
    let good = Receiver::always(200).await?;
    // Accepts the request and never answers.
    let dead = Receiver::start(Arc::new(|_| None)).await?;
    start_cursor(&*store).await?;
    let good_t = target(
        &*store,
        "good",
        NotificationKind::Webhook,
        &good.url,
        &["edge.*"],
    )
    .await?;
    let dead_t = target(
        &*store,
        "dead",
        NotificationKind::Webhook,
        &dead.url,
        &["edge.*"],
    )
    .await?;
    const BOUND: u32 = 4;
    const EVENTS: usize = 20;
    let options = NotifyOptions {
        queue_limit: BOUND,
        timeout: Duration::from_secs(60),
        ..fast()
    };
    let _stop = run(store.clone(), options)?;
    // Events one after the other as a good receiver keeps up with them (a burst larger than
    // the bound would be dropped for every target: that is what the bound means).
    for i in 0..EVENTS {
        store
            .create_edge(&Actor::Cli, edge(&format!("e{i}")))
            .await?;
        good.wait_for(i + 1).await?;
    }
    let got = good.wait_for(EVENTS).await?;
    let names: Vec<String> = got
        .iter()
        .map(|r| {
            Ok(r.json()?["event"]["detail"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string())
        })
        .collect::<Result<_>>()?;
    let expected: Vec<String> = (0..EVENTS).map(|i| format!("e{i}")).collect();
    ensure!(names == expected, "{names:?}");
    // The dead receiver holds one request; its queue never exceeds the bound, the rest were
    // dropped and say so.
    let deliveries = store
        .list_notification_deliveries(DeliveryQuery {
            target_id: Some(dead_t.id),
            status: None,
            limit: Some(1000),
        })
        .await?;
    let count = |s| deliveries.iter().filter(|d| d.status == s).count();
    ensure!(
        count(DeliveryStatus::Pending) <= BOUND as usize,
        "{deliveries:?}"
    );
    ensure!(
        count(DeliveryStatus::Pending) + count(DeliveryStatus::Dropped) == EVENTS,
        "{deliveries:?}"
    );
    ensure!(count(DeliveryStatus::Dropped) >= EVENTS - BOUND as usize);
    ensure!(deliveries
        .iter()
        .filter(|d| d.status == DeliveryStatus::Dropped)
        .all(|d| d
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("queue was full"))));
    ensure!(dead.got().len() == 1, "{} requests", dead.got().len());
    wait_status(&*store, good_t.id, DeliveryStatus::Delivered, EVENTS).await?;
    Ok(())
}

/// Two control replicas on one PostgreSQL database: only the leader sends, so each
/// notification arrives once.
#[tokio::test]
async fn with_two_replicas_on_postgresql_each_notification_is_sent_once() -> Result<()> {
    let Some(base) = kokoa_tests::prereq::postgres("notification leadership test") else {
        return Ok(());
    };
    use sqlx::{ConnectOptions, Connection};
    use std::str::FromStr;
    let name = format!("kokoa_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&base).await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    let url = sqlx::postgres::PgConnectOptions::from_str(&base)?
        .database(&name)
        .to_url_lossy()
        .to_string();
    let key = MasterKey::generate();
    let result = async {
        let a = store::open(&url, key.clone()).await?;
        let b = store::open(&url, key.clone()).await?;
        let hook = Receiver::always(200).await?;
        start_cursor(&*a).await?;
        target(
            &*a,
            "hook",
            NotificationKind::Webhook,
            &hook.url,
            &["edge.*"],
        )
        .await?;
        let _stop_a = run(a.clone(), fast())?;
        let _stop_b = run(b.clone(), fast())?;
        for i in 0..5 {
            let store = if i % 2 == 0 { &a } else { &b };
            store
                .create_edge(&Actor::Cli, edge(&format!("e{i}")))
                .await?;
        }
        let got = hook.wait_for(5).await?;
        tokio::time::sleep(Duration::from_millis(800)).await;
        let ids: std::collections::BTreeSet<_> = hook
            .got()
            .iter()
            .map(|r| r.header("kokoa-delivery").to_string())
            .collect();
        ensure!(hook.got().len() == 5 && ids.len() == 5, "{:?}", got.len());
        anyhow::Ok(())
    }
    .await;
    // Close the replicas' connections before dropping the database.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
    result
}
