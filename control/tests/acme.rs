//! The certificate manager against real components: Pebble (Let's Encrypt's test CA) and BIND
//! (`named`), both started on loopback ports by `kokoa_tests::acme`, and an in-process kokoa-edge whose
//! HTTP and TLS listeners answer the challenges.
//!
//! `named` serves `kokoa.test` (every name -> 127.0.0.1) and accepts TSIG-signed RFC 2136
//! updates; Pebble resolves names through it (`-dnsserver`), so its validator reaches the edge
//! for HTTP-01 and TLS-ALPN-01 and finds the TXT records for DNS-01.
//!
//! One test runs the whole path (gRPC config stream to a control-mode kokoa-edge). The others
//! drive an in-process edge directly: a small sync task hands it the store's pending challenges
//! (the same data the snapshot carries) and acknowledges each config version as an edge does,
//! and can withhold them to make a validation fail.
//!
//! Without `pebble` / `named` the tests print `SKIPPED: ...` and pass, except under `CI=true`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use kokoa_control::acme::{AcmeOptions, CertificateManager, ChallengeKind, PassReport};
use kokoa_control::dns::{DnsProvider, RecordData, Rfc2136Config, Rfc2136Provider, TsigAlgorithm};
use kokoa_control::store::{
    self, AcmeChallengeAnswer, AcmeStore, Actor, CertificateSource, MasterKey, NewCertificate,
    NewEdge, NewOrigin, NewRoute, NewService, NodeId, Store,
};
use kokoa_edge::acme::{AcmeChallenges, HttpChallenge, TlsAlpnChallenge};
use kokoa_edge::sni::CertStore;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use kokoa_tests::acme::{
    client_config, free_port, tools_or_skip, Named, Pebble, DEADLINE, TSIG_KEY, ZONE,
};

fn actor() -> Actor {
    Actor::Cli
}

/// An in-process edge plus the task that hands it the store's pending challenges.
struct TestEdge {
    http: SocketAddr,
    https: SocketAddr,
    /// Installs certificates on the edge (what the snapshot path does).
    set_certificates: Box<dyn Fn(CertStore) + Send + Sync>,
    /// While false, challenges are acknowledged but not applied: the validator gets 404.
    deliver: Arc<AtomicBool>,
    _stop: tokio::sync::oneshot::Sender<()>,
    sync: tokio::task::JoinHandle<()>,
}

impl Drop for TestEdge {
    fn drop(&mut self) {
        self.sync.abort();
    }
}

/// An edge named `name` listening on `http` and `https` (port 0: any).
async fn start_edge(
    store: Arc<dyn Store>,
    name: &str,
    http: SocketAddr,
    https: SocketAddr,
) -> Result<TestEdge> {
    let text = format!(
        "[edge]\nhttps = \"{https}\"\nhttp = \"{http}\"\nadmin = \"127.0.0.1:0\"\n\
         drain_timeout = 1\n[tunnel]\nprivate_key = \"{}\"\n",
        kokoa_tunnel::key::PrivateKey::generate().to_base64()
    );
    let config = kokoa_edge::EdgeConfig::from_toml(&text, None)?;
    let listeners = kokoa_edge::Listeners::bind(&config).await?;
    let http = listeners.http.local_addr()?;
    let https = listeners.https.local_addr()?;
    let dialer = kokoa_edge::dial::TcpDialer::new(Default::default(), Duration::from_secs(1));
    let edge = kokoa_edge::Edge::new(
        config,
        CertStore::placeholder()?,
        dialer,
        kokoa_edge::metrics::Metrics::default(),
    );
    let acme = edge.acme().clone();
    let certificates = edge.certificates().clone();
    let set_certificates = Box::new(move |store: CertStore| certificates.store(Arc::new(store)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(edge.serve(
        listeners,
        async {
            let _ = stopped.await;
        },
        || {},
    ));

    // The store's view of this edge, so the manager waits for its ACK of each challenge.
    let node = store
        .create_edge(&actor(), NewEdge::named(name.parse()?))
        .await?;
    let node = NodeId::Edge(node.id);
    let deliver = Arc::new(AtomicBool::new(true));
    let sync = tokio::spawn(sync_challenges(store, acme, node, deliver.clone()));
    Ok(TestEdge {
        http,
        https,
        set_certificates,
        deliver,
        _stop: stop,
        sync,
    })
}

/// What the snapshot path does for challenges: on every config version, give the edge the
/// pending challenges, then heartbeat + ACK the version.
async fn sync_challenges(
    store: Arc<dyn Store>,
    acme: Arc<AcmeChallenges>,
    node: NodeId,
    deliver: Arc<AtomicBool>,
) {
    let mut versions = store.subscribe_config_version();
    loop {
        let version = *versions.borrow_and_update();
        let mut http = Vec::new();
        let mut tls_alpn = Vec::new();
        if let Ok(challenges) = store.list_acme_challenges().await {
            for challenge in challenges {
                match challenge.answer {
                    AcmeChallengeAnswer::Http01 {
                        token,
                        key_authorization,
                    } => http.push(HttpChallenge {
                        token,
                        key_authorization,
                    }),
                    AcmeChallengeAnswer::TlsAlpn01 { cert_pem } => {
                        if let Ok(Some(key_pem)) = store.acme_challenge_key(challenge.id).await {
                            tls_alpn.push(TlsAlpnChallenge {
                                name: challenge.name,
                                cert_pem,
                                key_pem: key_pem.to_string(),
                            });
                        }
                    }
                }
            }
        }
        if !deliver.load(Ordering::SeqCst) {
            http.clear();
            tls_alpn.clear();
        }
        acme.set_http(http).expect("valid HTTP-01 challenges");
        acme.set_tls_alpn(tls_alpn)
            .expect("valid TLS-ALPN-01 challenges");
        let _ = store.record_heartbeat(node, serde_json::json!({})).await;
        let _ = store.record_config_ack(node, version).await;
        if versions.changed().await.is_err() {
            return;
        }
    }
}

struct World {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    named: Named,
    pebble: Pebble,
    edge: TestEdge,
    service: store::Id,
}

async fn world() -> Result<World> {
    let dir = tempfile::tempdir()?;
    let store = store::open(
        &format!("sqlite://{}", dir.path().join("control.db").display()),
        MasterKey::generate(),
    )
    .await?;
    let named = Named::start(dir.path(), Ipv4Addr::LOCALHOST).await?;
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let edge = start_edge(store.clone(), "edge-1", any, any).await?;
    let pebble = Pebble::start(dir.path(), named.addr, edge.http.port(), edge.https.port()).await?;
    let origin = store
        .create_origin(&actor(), NewOrigin::named("home".parse()?))
        .await?;
    let service = store
        .create_service(
            &actor(),
            origin.id,
            NewService {
                protocol: store::Protocol::Http,
                local_address: Some("127.0.0.1:8001".parse()?),
                ..NewService::http("web".parse()?, store::Port::new(8001)?)
            },
        )
        .await?;
    Ok(World {
        _dir: dir,
        store,
        named,
        pebble,
        edge,
        service: service.id,
    })
}

impl World {
    fn dns(&self) -> Result<Arc<dyn DnsProvider>> {
        Ok(Arc::new(Rfc2136Provider::new(Rfc2136Config {
            server: self.named.addr,
            zone: ZONE.into(),
            key_name: TSIG_KEY.into(),
            algorithm: TsigAlgorithm::HmacSha256,
            secret_base64: self.named.secret.clone().into(),
            timeout: Duration::from_secs(5),
        })?))
    }

    fn manager(&self, challenge: ChallengeKind) -> Result<Arc<CertificateManager>> {
        let mut options = AcmeOptions::new(&self.pebble.directory);
        options.contact_email = Some("ops@kokoa.test".into());
        options.directory_ca_file = Some(self.pebble.ca_file.clone());
        options.preferred_challenge = challenge;
        options.retry_initial = Duration::from_millis(500);
        options.validation_timeout = Duration::from_secs(20);
        options.propagation_timeout = Duration::from_secs(5);
        options.dns_propagation = Duration::ZERO;
        Ok(CertificateManager::new(
            self.store.clone(),
            options,
            Some(self.dns()?),
        ))
    }

    async fn route(&self, hostname: &str) -> Result<()> {
        self.store
            .create_route(&actor(), NewRoute::to(hostname.parse()?, self.service))
            .await?;
        Ok(())
    }

    async fn certificate(&self, name: &str) -> Result<store::Certificate> {
        self.store
            .list_certificates()
            .await?
            .into_iter()
            .find(|cert| cert.names == [name])
            .with_context(|| format!("no certificate for {name}"))
    }

    /// Serves the store's certificate for `name` on the edge (what the snapshot path does) and
    /// checks that an HTTPS handshake for `sni` validates against Pebble's root.
    async fn serve_and_verify(&self, name: &str, sni: &str) -> Result<CertificateDer<'static>> {
        let cert = self.certificate(name).await?;
        let chain = cert.chain_pem.context("issued chain")?;
        let key = self.store.certificate_key(cert.id).await?.context("key")?;
        let certificate = kokoa_model::Certificate::from_pem(&chain, &key)?;
        (self.edge.set_certificates)(CertStore::from_certificates(&[certificate], None)?);
        let root = self.pebble.root().await?;
        let connector = TlsConnector::from(client_config(root, &[b"http/1.1"])?);
        let stream = TcpStream::connect(self.edge.https).await?;
        let tls = connector
            .connect(ServerName::try_from(sni.to_owned())?, stream)
            .await
            .context("the edge's certificate validates against Pebble's root")?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .context("leaf")?
            .clone()
            .into_owned();
        Ok(leaf)
    }
}

#[tokio::test]
async fn store_keeps_challenges_sealed_and_versioned() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = store::open(
        &format!("sqlite://{}", dir.path().join("control.db").display()),
        MasterKey::generate(),
    )
    .await?;
    let cert = store
        .create_certificate(
            &actor(),
            NewCertificate {
                names: vec!["app.kokoa.test".parse()?],
                source: CertificateSource::Acme,
                material: None,
            },
        )
        .await?;
    let before = store.config_version().await?;
    let (cert_pem, key_pem) =
        kokoa_control::acme::validation_certificate("app.kokoa.test", &[1u8; 32])?;
    let added = store
        .add_acme_challenges(
            &actor(),
            vec![
                store::NewAcmeChallenge {
                    certificate_id: cert.id,
                    name: "App.Kokoa.Test".into(),
                    answer: AcmeChallengeAnswer::Http01 {
                        token: "tok".into(),
                        key_authorization: "tok.thumb".into(),
                    },
                    key_pem: None,
                    ttl: Duration::from_secs(60),
                },
                store::NewAcmeChallenge {
                    certificate_id: cert.id,
                    name: "app.kokoa.test".into(),
                    answer: AcmeChallengeAnswer::TlsAlpn01 { cert_pem },
                    key_pem: Some(key_pem.to_string()),
                    ttl: Duration::from_secs(60),
                },
            ],
        )
        .await?;
    assert_eq!(added.len(), 2);
    assert!(added.iter().all(|c| c.name == "app.kokoa.test"));
    assert_eq!(store.config_version().await?, before + 1);
    let snapshot = store.snapshot().await?;
    assert_eq!(
        snapshot.acme_challenges,
        store.list_acme_challenges().await?
    );
    assert_eq!(snapshot.acme_challenges.len(), 2);
    let tls = added
        .iter()
        .find(|c| matches!(c.answer, AcmeChallengeAnswer::TlsAlpn01 { .. }))
        .context("tls-alpn challenge")?;
    assert_eq!(
        store.acme_challenge_key(tls.id).await?.as_deref(),
        Some(&*key_pem)
    );
    // The key is sealed at rest.
    let sql = store::SqlStore::open(
        &format!("sqlite://{}", dir.path().join("control.db").display()),
        MasterKey::generate(),
    )
    .await?;
    assert!(sql.acme_challenge_key(tls.id).await.is_err());
    // A duplicate token is a conflict.
    let duplicate = store
        .add_acme_challenges(
            &actor(),
            vec![store::NewAcmeChallenge {
                certificate_id: cert.id,
                name: "app.kokoa.test".into(),
                answer: AcmeChallengeAnswer::Http01 {
                    token: "tok".into(),
                    key_authorization: "x".into(),
                },
                key_pem: None,
                ttl: Duration::from_secs(60),
            }],
        )
        .await;
    assert!(
        matches!(duplicate, Err(store::StoreError::Conflict { .. })),
        "{duplicate:?}"
    );

    assert_eq!(
        store
            .remove_acme_challenges(&actor(), Some(cert.id))
            .await?,
        2
    );
    assert_eq!(store.config_version().await?, before + 2);
    assert_eq!(store.remove_acme_challenges(&actor(), None).await?, 0);
    assert_eq!(store.config_version().await?, before + 2);

    assert!(store.acme_account("https://ca.test/dir").await?.is_none());
    store
        .save_acme_account(&actor(), "https://ca.test/dir", &[], "{\"id\":1}")
        .await?;
    assert_eq!(
        store.acme_account("https://ca.test/dir").await?.as_deref(),
        Some(&"{\"id\":1}".to_owned())
    );
    Ok(())
}

/// HTTP-01 through the edge, then a failing renewal (the edge never gets the token) that is
/// retried with backoff and keeps the old certificate, then the retry replacing it.
#[tokio::test]
async fn http01_issuance_failure_backoff_and_renewal() -> Result<()> {
    if !tools_or_skip("http01_issuance_failure_backoff_and_renewal") {
        return Ok(());
    }
    let world = world().await?;
    world.route("app.kokoa.test").await?;
    // A manual certificate is never ordered over.
    let manual = rcgen::generate_simple_self_signed(vec!["manual.kokoa.test".to_owned()])?;
    world
        .store
        .create_certificate(
            &actor(),
            NewCertificate {
                names: vec!["manual.kokoa.test".parse()?],
                source: CertificateSource::Manual,
                material: Some(store::CertificateMaterial {
                    chain_pem: manual.cert.pem(),
                    key_pem: manual.key_pair.serialize_pem(),
                }),
            },
        )
        .await?;
    world.route("manual.kokoa.test").await?;
    let manager = world.manager(ChallengeKind::Http01)?;

    let report = manager.run_once().await?;
    let cert = world.certificate("app.kokoa.test").await?;
    assert_eq!(report.created, ["app.kokoa.test"]);
    assert_eq!(report.issued, [cert.id], "{:?}", cert.last_error);
    assert_eq!(cert.source, CertificateSource::Acme);
    assert!(cert.last_error.is_none());
    assert!(
        cert.issuer.as_deref().unwrap_or("").contains("Pebble"),
        "{:?}",
        cert.issuer
    );
    assert!(cert.not_after.context("not_after")? > time::OffsetDateTime::now_utc());
    let first_leaf = world
        .serve_and_verify("app.kokoa.test", "app.kokoa.test")
        .await?;
    assert!(
        world.store.list_acme_challenges().await?.is_empty(),
        "challenges withdrawn"
    );
    let manual_now = world.certificate("manual.kokoa.test").await?;
    assert_eq!(
        manual_now.chain_pem.as_deref(),
        Some(manual.cert.pem().as_str())
    );
    // Nothing is due now.
    assert_eq!(manager.run_once().await?, PassReport::default());

    // The validator cannot get the token: the forced renewal fails, is recorded, backs off.
    world.edge.deliver.store(false, Ordering::SeqCst);
    manager.renew_now(cert.id);
    let report = manager.run_once().await?;
    assert_eq!(report.failed, [cert.id]);
    let failed = world.certificate("app.kokoa.test").await?;
    let error = failed.last_error.clone().context("last_error recorded")?;
    assert!(
        error.contains("could not validate app.kokoa.test"),
        "{error}"
    );
    assert_eq!(
        failed.chain_pem, cert.chain_pem,
        "the previous certificate stays"
    );
    let retry = manager.retry_state(cert.id).context("retry scheduled")?;
    assert_eq!(retry.failures, 1);
    assert!(retry.next_attempt > Instant::now());
    // Within the backoff nothing is attempted.
    assert_eq!(manager.run_once().await?, PassReport::default());
    assert_eq!(
        world
            .serve_and_verify("app.kokoa.test", "app.kokoa.test")
            .await?,
        first_leaf
    );

    // The loop retries once the backoff passes; now the edge answers and the new certificate
    // replaces the old one.
    world.edge.deliver.store(true, Ordering::SeqCst);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(manager.clone().run(async {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + DEADLINE;
    let renewed = loop {
        let now = world.certificate("app.kokoa.test").await?;
        if now.chain_pem != cert.chain_pem {
            break now;
        }
        if Instant::now() > deadline {
            bail!("no renewal; last error {:?}", now.last_error);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = stop.send(());
    running.await?;
    assert!(renewed.last_error.is_none());
    assert!(manager.retry_state(cert.id).is_none());
    let second_leaf = world
        .serve_and_verify("app.kokoa.test", "app.kokoa.test")
        .await?;
    assert_ne!(second_leaf, first_leaf);
    let mut registry = prometheus_client::registry::Registry::default();
    manager.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    assert!(
        text.contains("kokoa_acme_orders_total{result=\"failed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("kokoa_acme_orders_total{result=\"issued\"} 2"),
        "{text}"
    );
    Ok(())
}

/// A wildcard route gets its certificate over DNS-01: TXT records through RFC 2136 + TSIG.
#[tokio::test]
async fn wildcard_via_dns01_and_rfc2136() -> Result<()> {
    if !tools_or_skip("wildcard_via_dns01_and_rfc2136") {
        return Ok(());
    }
    let world = world().await?;
    // The provider on its own: a wrong key is refused with the server's answer.
    let wrong = Rfc2136Provider::new(Rfc2136Config {
        server: world.named.addr,
        zone: ZONE.into(),
        key_name: TSIG_KEY.into(),
        algorithm: TsigAlgorithm::HmacSha256,
        secret_base64: base64::engine::general_purpose::STANDARD
            .encode([7u8; 32])
            .into(),
        timeout: Duration::from_secs(5),
    })?;
    let refused = wrong
        .add_record("x.kokoa.test", &RecordData::Txt("x".into()), 60)
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let dns = world.dns()?;
    dns.add_record("probe.kokoa.test", &RecordData::Txt("v".into()), 60)
        .await?;
    dns.remove_record("probe.kokoa.test", &RecordData::Txt("v".into()))
        .await?;

    world.route("*.wild.kokoa.test").await?;
    let manager = world.manager(ChallengeKind::Http01)?;
    let report = manager.run_once().await?;
    let cert = world.certificate("*.wild.kokoa.test").await?;
    assert_eq!(report.issued, [cert.id], "{:?}", cert.last_error);
    world
        .serve_and_verify("*.wild.kokoa.test", "any.wild.kokoa.test")
        .await?;
    Ok(())
}

/// TLS-ALPN-01 (port 80 closed): the validator's `acme-tls/1` handshake reaches the edge.
#[tokio::test]
async fn tls_alpn01_issuance() -> Result<()> {
    if !tools_or_skip("tls_alpn01_issuance") {
        return Ok(());
    }
    let world = world().await?;
    world.route("alpn.kokoa.test").await?;
    let manager = world.manager(ChallengeKind::TlsAlpn01)?;
    let report = manager.run_once().await?;
    let cert = world.certificate("alpn.kokoa.test").await?;
    assert_eq!(report.issued, [cert.id], "{:?}", cert.last_error);
    world
        .serve_and_verify("alpn.kokoa.test", "alpn.kokoa.test")
        .await?;
    Ok(())
}

/// The whole path: a route is added, control orders its certificate, the HTTP-01 token reaches
/// a control-mode kokoa-edge over the gRPC config stream (the edge ACKs it before the CA is told
/// to validate), Pebble validates through that edge, and the issued certificate reaches the edge
/// the same way: an HTTPS handshake for the name validates against Pebble's root.
#[tokio::test]
async fn http01_end_to_end_through_grpc_and_a_control_mode_edge() -> Result<()> {
    if !tools_or_skip("http01_end_to_end_through_grpc_and_a_control_mode_edge") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let store = store::open(
        &format!("sqlite://{}", dir.path().join("control.db").display()),
        MasterKey::generate(),
    )
    .await?;
    let named = Named::start(dir.path(), Ipv4Addr::LOCALHOST).await?;
    let (http_port, https_port) = (free_port()?, free_port()?);
    let pebble = Pebble::start(dir.path(), named.addr, http_port, https_port).await?;

    let ca = kokoa_control::pki::ControlCa::load_or_create(dir.path())?;
    let tls = ca.server_tls(&["localhost".into(), "127.0.0.1".into()])?;
    let server = kokoa_control::grpc::GrpcServer::new(
        store.clone(),
        kokoa_control::grpc::GrpcOptions {
            heartbeat_interval: Duration::from_secs(1),
            poll_interval: Duration::from_millis(200),
            ..Default::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let grpc = listener.local_addr()?;
    let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    let grpc_task = tokio::spawn(server.serve(listener, tls, async {
        let _ = grpc_stopped.await;
    }));

    let origin = store
        .create_origin(&actor(), NewOrigin::named("home".parse()?))
        .await?;
    let service = store
        .create_service(
            &actor(),
            origin.id,
            NewService {
                protocol: store::Protocol::Http,
                local_address: Some("127.0.0.1:8001".parse()?),
                ..NewService::http("web".parse()?, store::Port::new(8001)?)
            },
        )
        .await?;
    store
        .create_route(
            &actor(),
            NewRoute::to("app.kokoa.test".parse()?, service.id),
        )
        .await?;
    let edge = store
        .create_edge(
            &actor(),
            NewEdge {
                origins: vec![origin.id],
                ..NewEdge::named("edge-1".parse()?)
            },
        )
        .await?;
    let token = store
        .create_enrollment_token(&actor(), NodeId::Edge(edge.id), Duration::from_secs(600))
        .await?;
    let edge_dir = dir.path().join("edge");
    std::fs::create_dir_all(&edge_dir)?;
    std::fs::write(edge_dir.join("control-ca.pem"), ca.ca_pem())?;
    std::fs::write(edge_dir.join("enroll.token"), token.secret.expose())?;
    let config_path = edge_dir.join("edge.toml");
    std::fs::write(
        &config_path,
        format!(
            "[edge]\nhttps = \"127.0.0.1:{https_port}\"\nhttp = \"127.0.0.1:{http_port}\"\n\
             admin = \"127.0.0.1:{}\"\ndrain_timeout = 0\n[tunnel]\nlisten = \"127.0.0.1:0\"\n\
             [control]\nurl = \"https://127.0.0.1:{}\"\nca_file = \"control-ca.pem\"\n\
             token_file = \"enroll.token\"\nstate_dir = \"state\"\n",
            free_port()?,
            grpc.port()
        ),
    )?;
    let config = kokoa_edge::EdgeConfig::load(&config_path)?;
    let (stop_edge, edge_stopped) = tokio::sync::oneshot::channel::<()>();
    let edge_task = tokio::spawn(kokoa_edge::run(config, async {
        let _ = edge_stopped.await;
    }));

    // The edge enrolled and applied control's config.
    let deadline = Instant::now() + DEADLINE;
    while store
        .get_edge(edge.id)
        .await?
        .state
        .applied_version
        .is_none()
    {
        if Instant::now() > deadline || edge_task.is_finished() {
            bail!("the edge never applied control's config");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut options = AcmeOptions::new(&pebble.directory);
    options.directory_ca_file = Some(pebble.ca_file.clone());
    options.validation_timeout = Duration::from_secs(20);
    options.propagation_timeout = Duration::from_secs(10);
    let manager = CertificateManager::new(store.clone(), options, None);
    let report = manager.run_once().await?;
    let cert = store
        .list_certificates()
        .await?
        .into_iter()
        .find(|c| c.names == ["app.kokoa.test"])
        .context("certificate")?;
    assert_eq!(report.issued, [cert.id], "{:?}", cert.last_error);

    let root = pebble.root().await?;
    let connector = TlsConnector::from(client_config(root, &[b"http/1.1"])?);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let stream = TcpStream::connect(("127.0.0.1", https_port)).await?;
        match connector
            .connect(ServerName::try_from("app.kokoa.test")?, stream)
            .await
        {
            Ok(_) => break,
            Err(error) if Instant::now() > deadline => {
                bail!("the edge never served the issued certificate: {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }

    let _ = stop_edge.send(());
    tokio::time::timeout(DEADLINE, edge_task).await???;
    let _ = stop_grpc.send(());
    tokio::time::timeout(DEADLINE, grpc_task).await???;
    Ok(())
}

/// Two edges behind different names' addresses both get every challenge, so validation
/// succeeds whichever edge the validator reaches: `two.kokoa.test` points (by an RFC 2136 A
/// record) at the second edge on 127.0.0.2 while the first withholds the token, and the other
/// way round for `one.kokoa.test`.
#[tokio::test]
async fn either_edge_answers_the_validator() -> Result<()> {
    if !tools_or_skip("either_edge_answers_the_validator") {
        return Ok(());
    }
    let world = world().await?;
    let second = start_edge(
        world.store.clone(),
        "edge-2",
        ([127, 0, 0, 2], world.edge.http.port()).into(),
        ([127, 0, 0, 2], world.edge.https.port()).into(),
    )
    .await?;
    let dns = world.dns()?;
    dns.add_record(
        "two.kokoa.test",
        &RecordData::A(std::net::Ipv4Addr::new(127, 0, 0, 2)),
        60,
    )
    .await?;
    let manager = world.manager(ChallengeKind::Http01)?;

    world.edge.deliver.store(false, Ordering::SeqCst);
    world.route("two.kokoa.test").await?;
    let report = manager.run_once().await?;
    let two = world.certificate("two.kokoa.test").await?;
    assert_eq!(report.issued, [two.id], "{:?}", two.last_error);

    world.edge.deliver.store(true, Ordering::SeqCst);
    second.deliver.store(false, Ordering::SeqCst);
    world.route("one.kokoa.test").await?;
    let report = manager.run_once().await?;
    let one = world.certificate("one.kokoa.test").await?;
    assert_eq!(report.issued, [one.id], "{:?}", one.last_error);
    Ok(())
}

/// One control replica orders certificates: on PostgreSQL the `acme` leadership is an advisory
/// lock only one store holds at a time, released when its holder goes away. (SQLite: always
/// granted.) Needs `KOKOA_TEST_POSTGRES` like the store tests.
#[tokio::test]
async fn one_replica_leads_the_acme_job() -> Result<()> {
    use sqlx::{ConnectOptions as _, Connection as _};
    use std::str::FromStr as _;

    let dir = tempfile::tempdir()?;
    let sqlite = store::open(
        &format!("sqlite://{}", dir.path().join("control.db").display()),
        MasterKey::generate(),
    )
    .await?;
    assert!(sqlite.try_lead("acme").await?.is_some());
    assert!(sqlite.try_lead("acme").await?.is_some());

    let Some(base) = kokoa_tests::prereq::postgres("leadership on PostgreSQL") else {
        return Ok(());
    };
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
        let first = store::open(&url, key.clone()).await?;
        let second = store::open(&url, key.clone()).await?;
        let held = first
            .try_lead("acme")
            .await?
            .context("the first replica leads")?;
        assert!(held.holds().await);
        assert!(second.try_lead("acme").await?.is_none());
        // Another job is independent.
        assert!(second.try_lead("dns").await?.is_some());
        drop(held);
        let deadline = Instant::now() + DEADLINE;
        while second.try_lead("acme").await?.is_none() {
            if Instant::now() > deadline {
                bail!("the leadership was not released");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
    .await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    result
}
