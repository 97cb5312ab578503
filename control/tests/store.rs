//! The store test suite, run against both engines: SQLite always (a temp file), PostgreSQL when
//! `KOKOA_TEST_POSTGRES` holds a URL (each test in its own fresh database, so tests run in
//! parallel). Without it the PostgreSQL tests print `SKIPPED` and pass, unless `CI=true`, where
//! they fail: CI must exercise both engines.
//!
//! Why this file is longer than ~1,000 lines: every test runs on both engines through one
//! macro and one fixture set; the suite is the store trait's contract in one place.

#[macro_use]
mod engines;

use engines::Db;
use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kokoa_control::store::{
    self, Actor, AssignmentFilter, CertificateMaterial, CertificateSource, CheckKind, CryptoError,
    Endpoint, Entity, EventQuery, HealthPath, HealthQuery, HostPattern, MasterKey, Nack,
    NackObject, Name, NewCertificate, NewEdge, NewHealthCheck, NewOrigin, NewRoute, NewService,
    NewTcpRoute, NodeId, NodeStatus, OriginUpdate, Port, Protocol, RouteUpdate, ServiceUpdate,
    StoreError,
};
use kokoa_model::key::PrivateKey;
use sqlx::Row;

both_engines!(
    migrations_are_idempotent_on_reopen,
    subnets_lowest_free_never_reused_freed_after_delete,
    subnet_pool_exhausts_at_254,
    concurrent_creates_get_distinct_subnets,
    edge_addresses_are_allocated_per_origin,
    duplicates_conflict,
    bad_input_is_invalid,
    tcp_routes_are_unique_per_port_and_clear_of_edge_listeners,
    edge_settings_and_route_limits_are_stored_typed,
    certificates_are_checked_and_listed_by_their_own_names,
    private_keys_are_sealed_at_rest,
    certificate_keys_are_sealed_at_rest,
    node_tokens_are_hashed_one_time_and_revocable,
    api_tokens_are_hashed_expire_and_revoke,
    every_change_writes_an_event_with_its_actor,
    config_version_increases_on_each_relevant_change,
    node_status_ack_nack_and_heartbeat,
    health_check_history,
    edges_drain_and_name_their_admin_listener,
    updates_validate_and_record_changes,
    notification_targets_seal_url_and_secret,
    notifications_fan_out_in_order_with_bounded_queue,
);

fn cli() -> Actor {
    Actor::Cli
}

/// Config values as the model makes them (inputs are typed: what reaches the store was
/// validated by the model already).
fn n(text: &str) -> Name {
    Name::new(text).expect("a valid name")
}

fn host(text: &str) -> HostPattern {
    HostPattern::new(text).expect("a valid host pattern")
}

fn port(number: u16) -> Port {
    Port::new(number).expect("a valid port")
}

fn endpoint(text: &str) -> Endpoint {
    Endpoint::parse(text).expect("a valid endpoint")
}

fn origin(name: &str) -> NewOrigin {
    NewOrigin::named(n(name))
}

fn service(name: &str, number: u16) -> NewService {
    NewService {
        health_path: Some(HealthPath::new("/healthz").expect("a path")),
        ..NewService::http(n(name), port(number))
    }
}

fn route(hostname: &str, service_id: uuid::Uuid) -> NewRoute {
    NewRoute::to(host(hostname), service_id)
}

fn edge(name: &str) -> NewEdge {
    NewEdge {
        public_ip: Some("192.0.2.10".parse().expect("ip")),
        endpoint: Some(endpoint("192.0.2.10:51820")),
        ..NewEdge::named(n(name))
    }
}

fn is_conflict<T: std::fmt::Debug>(r: Result<T, StoreError>) -> bool {
    matches!(r, Err(StoreError::Conflict { .. }))
}

/// The field an `Invalid` error names, comparable with `Some("field")`.
#[derive(Debug)]
struct Field(Option<String>);

impl PartialEq<Option<&str>> for Field {
    fn eq(&self, other: &Option<&str>) -> bool {
        self.0.as_deref() == *other
    }
}

fn invalid_field<T: std::fmt::Debug>(r: Result<T, StoreError>) -> Field {
    match r {
        Err(StoreError::Invalid { field, .. }) => Field(Some(field.into_owned())),
        _ => Field(None),
    }
}

async fn migrations_are_idempotent_on_reopen(db: &Db) -> Result<()> {
    let home = db.store.create_origin(&cli(), origin("home")).await?;
    let version = db.store.config_version().await?;
    // Opening again runs the migrator again: nothing is re-applied, nothing lost.
    for _ in 0..2 {
        let again = db.reopen(db.key.clone()).await?;
        assert_eq!(again.get_origin(home.id).await?, home);
        assert_eq!(again.config_version().await?, version);
    }
    let applied = sqlx::query("SELECT COUNT(*) AS n FROM schema_migrations")
        .fetch_one(db.sql.pool())
        .await?
        .try_get::<i64, _>("n")?;
    // 0001_initial, 0002_acme, 0003_notifications, 0004_parity, 0005_health, 0006_accounts,
    // 0007_provision.
    assert_eq!(applied, 7);
    if db.store.engine() == store::Engine::Sqlite {
        let mode: String = sqlx::query("PRAGMA journal_mode")
            .fetch_one(db.sql.pool())
            .await?
            .try_get(0)?;
        assert_eq!(mode, "wal");
        let fk: i64 = sqlx::query("PRAGMA foreign_keys")
            .fetch_one(db.sql.pool())
            .await?
            .try_get(0)?;
        assert_eq!(fk, 1);
    }
    Ok(())
}

async fn subnets_lowest_free_never_reused_freed_after_delete(db: &Db) -> Result<()> {
    let s = &db.store;
    let a = s.create_origin(&cli(), origin("a")).await?;
    let b = s.create_origin(&cli(), origin("b")).await?;
    let c = s.create_origin(&cli(), origin("c")).await?;
    assert_eq!((a.subnet, b.subnet, c.subnet), (1, 2, 3));
    assert_eq!(a.network().to_string(), "10.100.1.0/24");
    assert_eq!(b.address().to_string(), "10.100.2.1");
    s.delete_origin(&cli(), b.id).await?;
    assert!(matches!(
        s.get_origin(b.id).await,
        Err(StoreError::NotFound {
            entity: Entity::Origin,
            ..
        })
    ));
    // The freed /24 is the lowest free one again; the others keep theirs.
    let d = s.create_origin(&cli(), origin("d")).await?;
    assert_eq!(d.subnet, 2);
    let e = s.create_origin(&cli(), origin("e")).await?;
    assert_eq!(e.subnet, 4);
    let subnets: Vec<u8> = s.list_origins().await?.iter().map(|o| o.subnet).collect();
    let unique: BTreeSet<u8> = subnets.iter().copied().collect();
    assert_eq!(
        subnets.len(),
        unique.len(),
        "a subnet is used twice: {subnets:?}"
    );
    assert_eq!(s.get_origin(a.id).await?.subnet, 1);
    Ok(())
}

async fn subnet_pool_exhausts_at_254(db: &Db) -> Result<()> {
    let s = &db.store;
    let mut ids = Vec::new();
    for i in 1..=254u32 {
        // Operator-supplied keys keep this fast (no key generation and sealing).
        let key = PrivateKey::generate().public_key();
        let o = s
            .create_origin(
                &cli(),
                NewOrigin {
                    public_key: Some(key),
                    ..origin(&format!("o{i}"))
                },
            )
            .await?;
        assert_eq!(u32::from(o.subnet), i);
        ids.push(o.id);
    }
    let full = s.create_origin(&cli(), origin("one-too-many")).await;
    assert!(
        matches!(full, Err(StoreError::PoolExhausted { .. })),
        "{full:?}"
    );
    s.delete_origin(&cli(), ids[99]).await?;
    let again = s.create_origin(&cli(), origin("fits-again")).await?;
    assert_eq!(again.subnet, 100);
    Ok(())
}

async fn concurrent_creates_get_distinct_subnets(db: &Db) -> Result<()> {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = db.store.clone();
        tasks.push(tokio::spawn(async move {
            s.create_origin(&Actor::System, origin(&format!("c{i}")))
                .await
        }));
    }
    let mut subnets = BTreeSet::new();
    for t in tasks {
        subnets.insert(t.await??.subnet);
    }
    assert_eq!(subnets, (1..=16).collect::<BTreeSet<u8>>());
    // Serialized writers also keep the config version and event ids gap-free.
    assert_eq!(db.store.config_version().await?, 16);
    let events = db
        .store
        .list_events(EventQuery {
            after: Some(0),
            ..Default::default()
        })
        .await?;
    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids, (1..=16).collect::<Vec<u64>>());
    Ok(())
}

async fn edge_addresses_are_allocated_per_origin(db: &Db) -> Result<()> {
    let s = &db.store;
    let home = s.create_origin(&cli(), origin("home")).await?;
    let lab = s.create_origin(&cli(), origin("lab")).await?;
    let e1 = s
        .create_edge(
            &cli(),
            NewEdge {
                origins: vec![home.id, lab.id],
                ..edge("e1")
            },
        )
        .await?;
    let e2 = s.create_edge(&cli(), edge("e2")).await?;
    let a2 = s.assign_edge(&cli(), e2.id, home.id).await?;
    assert_eq!(a2.address.to_string(), "10.100.1.11");
    assert_eq!(a2.origin_address.to_string(), "10.100.1.1");
    let of_e1 = s
        .list_assignments(AssignmentFilter {
            edge_id: Some(e1.id),
            origin_id: None,
        })
        .await?;
    let addrs: Vec<String> = of_e1.iter().map(|a| a.address.to_string()).collect();
    assert_eq!(addrs, ["10.100.1.10", "10.100.2.10"]);
    assert!(is_conflict(s.assign_edge(&cli(), e2.id, home.id).await));
    assert_eq!(
        invalid_field(s.assign_edge(&cli(), e2.id, uuid::Uuid::new_v4()).await),
        Some("origin_id")
    );
    // Freed on unassign, reused lowest-first; not while in use.
    s.unassign_edge(&cli(), e1.id, home.id).await?;
    let e3 = s.create_edge(&cli(), edge("e3")).await?;
    assert_eq!(
        s.assign_edge(&cli(), e3.id, home.id)
            .await?
            .address
            .to_string(),
        "10.100.1.10"
    );
    let e4 = s.create_edge(&cli(), edge("e4")).await?;
    assert_eq!(
        s.assign_edge(&cli(), e4.id, home.id)
            .await?
            .address
            .to_string(),
        "10.100.1.12"
    );
    // Deleting an edge frees its addresses.
    s.delete_edge(&cli(), e2.id).await?;
    let e5 = s.create_edge(&cli(), edge("e5")).await?;
    assert_eq!(
        s.assign_edge(&cli(), e5.id, home.id)
            .await?
            .address
            .to_string(),
        "10.100.1.11"
    );
    let all = s
        .list_assignments(AssignmentFilter {
            edge_id: None,
            origin_id: Some(home.id),
        })
        .await?;
    assert_eq!(all.len(), 3);
    Ok(())
}

async fn duplicates_conflict(db: &Db) -> Result<()> {
    let s = &db.store;
    let home = s.create_origin(&cli(), origin("home")).await?;
    assert!(is_conflict(s.create_origin(&cli(), origin("home")).await));
    let web = s
        .create_service(&cli(), home.id, service("web", 8001))
        .await?;
    assert_eq!(web.local_address, "127.0.0.1:8001");
    // Same port, other name: conflict. Same name, other port: conflict.
    let dup_port = s
        .create_service(&cli(), home.id, service("api", 8001))
        .await;
    assert!(is_conflict(dup_port), "duplicate port accepted");
    assert!(is_conflict(
        s.create_service(&cli(), home.id, service("web", 8002))
            .await
    ));
    // The same port on another origin is fine.
    let lab = s.create_origin(&cli(), origin("lab")).await?;
    s.create_service(&cli(), lab.id, service("web", 8001))
        .await?;

    let r = s
        .create_route(
            &cli(),
            NewRoute {
                aliases: vec![host("www.example.com")],
                ..route("app.example.com", web.id)
            },
        )
        .await?;
    assert!(is_conflict(
        s.create_route(&cli(), route("app.example.com", web.id))
            .await
    ));
    // Names are case-insensitive, and hostnames and aliases share one namespace.
    assert!(is_conflict(
        s.create_route(&cli(), route("APP.Example.com.", web.id))
            .await
    ));
    assert!(is_conflict(
        s.create_route(&cli(), route("www.example.com", web.id))
            .await
    ));
    let other = s
        .create_route(&cli(), route("*.example.com", web.id))
        .await?;
    assert!(is_conflict(
        s.update_route(
            &cli(),
            other.id,
            RouteUpdate {
                aliases: Some(vec![host("app.example.com")]),
                ..Default::default()
            }
        )
        .await
    ));
    assert_eq!(s.route_by_hostname("www.example.com").await?.id, r.id);
    assert_eq!(s.route_by_hostname("*.example.com").await?.id, other.id);

    // Still referenced: refused with a message naming the routes.
    let err = s.delete_service(&cli(), web.id).await.expect_err("in use");
    assert!(err.to_string().contains("app.example.com"), "{err}");
    assert!(is_conflict(s.delete_origin(&cli(), home.id).await));
    // Same public key for two nodes: conflict.
    let key = PrivateKey::generate().public_key();
    s.create_origin(
        &cli(),
        NewOrigin {
            public_key: Some(key),
            ..origin("k1")
        },
    )
    .await?;
    assert!(is_conflict(
        s.create_edge(
            &cli(),
            NewEdge {
                public_key: Some(key),
                ..edge("k2")
            }
        )
        .await
    ));
    s.create_edge(&cli(), edge("e1")).await?;
    assert!(is_conflict(s.create_edge(&cli(), edge("e1")).await));
    Ok(())
}

async fn bad_input_is_invalid(db: &Db) -> Result<()> {
    let s = &db.store;
    let home = s.create_origin(&cli(), origin("home")).await?;
    s.create_service(&cli(), home.id, service("max", 65535))
        .await?;
    s.create_service(&cli(), home.id, service("min", 1)).await?;
    assert_eq!(
        invalid_field(
            s.create_service(&cli(), uuid::Uuid::new_v4(), service("x", 80))
                .await
        ),
        Some("origin_id")
    );
    let web = s
        .create_service(&cli(), home.id, service("web", 8001))
        .await?;
    // An alias that is the route's own name is refused, naming the alias.
    let twice = NewRoute {
        aliases: vec![host("www.example.com"), host("ok.example.com")],
        ..route("ok.example.com", web.id)
    };
    assert_eq!(
        invalid_field(s.create_route(&cli(), twice).await),
        Some("aliases[1]")
    );
    assert_eq!(
        invalid_field(
            s.create_route(&cli(), route("ok.example.com", uuid::Uuid::new_v4()))
                .await
        ),
        Some("service_id")
    );
    let tcp = s
        .create_service(
            &cli(),
            home.id,
            NewService {
                protocol: Protocol::Tcp,
                ..service("db", 5432)
            },
        )
        .await?;
    assert_eq!(
        invalid_field(
            s.create_route(&cli(), route("db.example.com", tcp.id))
                .await
        ),
        Some("service_id")
    );
    assert!(matches!(
        s.get_route(uuid::Uuid::new_v4()).await,
        Err(StoreError::NotFound {
            entity: Entity::Route,
            ..
        })
    ));
    assert!(matches!(
        s.origin_by_name("nope").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.route_by_hostname("not a host").await,
        Err(StoreError::NotFound { .. })
    ));
    // Nothing of the refused input reached the database.
    assert!(s.list_routes().await?.is_empty());
    Ok(())
}

async fn tcp_routes_are_unique_per_port_and_clear_of_edge_listeners(db: &Db) -> Result<()> {
    let s = &db.store;
    let home = s.create_origin(&cli(), origin("home")).await?;
    let lab = s.create_origin(&cli(), origin("lab")).await?;
    let db_service = s
        .create_service(
            &cli(),
            home.id,
            NewService {
                protocol: Protocol::Tcp,
                ..service("db", 5432)
            },
        )
        .await?;
    let web = s
        .create_service(&cli(), lab.id, service("web", 8001))
        .await?;
    let e1 = s
        .create_edge(
            &cli(),
            NewEdge {
                origins: vec![home.id],
                ..edge("e1")
            },
        )
        .await?;
    let before = s.config_version().await?;
    let route = s
        .create_tcp_route(
            &cli(),
            NewTcpRoute {
                proxy_protocol: store::ProxyProtocol::V2,
                allow: vec![store::Network::parse("10.0.0.0/8").expect("network")],
                ..NewTcpRoute::to(port(15432), db_service.id)
            },
        )
        .await?;
    assert!(
        s.config_version().await? > before,
        "a TCP route is node config"
    );
    assert_eq!((route.origin_id, route.listen_port.get()), (home.id, 15432));
    assert_eq!(s.tcp_route_by_port(15432).await?.id, route.id);
    // Any service may be forwarded, HTTP ones too; one port is one route's.
    let conflict = s
        .create_tcp_route(&cli(), NewTcpRoute::to(port(15432), web.id))
        .await;
    assert!(
        matches!(&conflict, Err(StoreError::Conflict { field: Some(f), .. }) if f == "listen_port"),
        "{conflict:?}"
    );
    assert_eq!(
        invalid_field(
            s.create_tcp_route(&cli(), NewTcpRoute::to(port(1), uuid::Uuid::new_v4()))
                .await
        ),
        Some("service_id")
    );

    // e1 reports its listeners: a port one of them uses is refused for the origins it serves,
    // and assigning it to an origin with such a route is refused too.
    s.record_edge_listeners(
        e1.id,
        &[
            store::Listener {
                name: "https".into(),
                address: "0.0.0.0:8443".parse()?,
            },
            store::Listener {
                name: "admin".into(),
                address: "127.0.0.1:9090".parse()?,
            },
        ],
    )
    .await?;
    assert_eq!(s.get_edge(e1.id).await?.listeners.len(), 2);
    let clash = s
        .create_tcp_route(&cli(), NewTcpRoute::to(port(9090), db_service.id))
        .await;
    assert!(
        matches!(&clash, Err(StoreError::Conflict { field: Some(f), what }) if f == "listen_port" && what.contains("admin")),
        "{clash:?}"
    );
    // Not served by e1: the same port is fine for lab's service...
    let lab_route = s
        .create_tcp_route(&cli(), NewTcpRoute::to(port(9090), web.id))
        .await?;
    // ...until e1 would serve lab.
    assert!(is_conflict(s.assign_edge(&cli(), e1.id, lab.id).await));
    s.delete_tcp_route(&cli(), lab_route.id).await?;
    s.assign_edge(&cli(), e1.id, lab.id).await?;

    // Updates go through the same checks; deleting the service is refused while routed.
    let moved = s
        .update_tcp_route(
            &cli(),
            route.id,
            store::TcpRouteUpdate {
                listen_port: Some(port(25432)),
                deny: Some(vec![store::Network::parse("10.9.0.0/16").expect("network")]),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(moved.listen_port.get(), 25432);
    assert_eq!(moved.allow.len(), 1, "untouched fields stay");
    assert!(is_conflict(
        s.update_tcp_route(
            &cli(),
            route.id,
            store::TcpRouteUpdate {
                listen_port: Some(port(8443)),
                ..Default::default()
            },
        )
        .await
    ));
    assert!(is_conflict(s.delete_service(&cli(), db_service.id).await));
    assert!(is_conflict(s.delete_origin(&cli(), home.id).await));
    let snapshot = s.snapshot().await?;
    assert_eq!(snapshot.tcp_routes, std::slice::from_ref(&moved));
    s.delete_tcp_route(&cli(), route.id).await?;
    s.delete_service(&cli(), db_service.id).await?;
    assert!(s.list_tcp_routes().await?.is_empty());
    Ok(())
}

async fn edge_settings_and_route_limits_are_stored_typed(db: &Db) -> Result<()> {
    let s = &db.store;
    let home = s.create_origin(&cli(), origin("home")).await?;
    let web = s
        .create_service(&cli(), home.id, service("web", 8001))
        .await?;
    let limits: store::RouteLimits =
        kokoa_model::from_json(r#"{"rate": 10, "burst": 20, "allow": ["10.0.0.0/8"]}"#)?;
    let r = s
        .create_route(
            &cli(),
            NewRoute {
                limits: limits.clone(),
                ..route("app.example.com", web.id)
            },
        )
        .await?;
    assert_eq!(s.get_route(r.id).await?.limits, limits);
    let edge_limits: store::EdgeLimits =
        kokoa_model::from_json(r#"{"rate": 5, "max_connections": 100}"#)?;
    let e1 = s
        .create_edge(
            &cli(),
            NewEdge {
                limits: Some(edge_limits.clone()),
                tunnel: Some(store::TunnelSettings {
                    mtu: Some(store::Mtu::new(1280).expect("mtu")),
                    tcp_buffer: None,
                }),
                ..edge("e1")
            },
        )
        .await?;
    let read = s.get_edge(e1.id).await?;
    assert_eq!(read.limits.as_ref(), Some(&edge_limits));
    assert_eq!(read.tunnel.and_then(|t| t.mtu).map(|m| m.get()), Some(1280));
    let cleared = s
        .update_edge(
            &cli(),
            e1.id,
            store::EdgeUpdate {
                limits: Some(None),
                ..Default::default()
            },
        )
        .await?;
    assert!(cleared.limits.is_none() && cleared.tunnel.is_some());

    // Limits an older control stored unchecked: the route stays readable, says what is wrong,
    // is held back from the edges, and replacing its limits fixes it.
    sqlx::query("UPDATE routes SET limits = $1 WHERE id = $2")
        .bind(r#"{"alow": ["10.0.0.0/8"]}"#)
        .bind(r.id.to_string())
        .execute(db.sql.pool())
        .await?;
    let legacy = s.get_route(r.id).await?;
    let problem = legacy.problem.clone().context("a problem")?;
    assert!(problem.contains("alow"), "{problem}");
    let snapshot = s.snapshot().await?;
    let e1_spec = store::spec::edge_spec(&snapshot, e1.id).context("e1")?;
    assert!(e1_spec.spec.routes.is_empty());
    // An unrelated change keeps the stored value as it is.
    let renamed = s
        .update_route(
            &cli(),
            r.id,
            RouteUpdate {
                aliases: Some(vec![host("www.example.com")]),
                ..Default::default()
            },
        )
        .await?;
    assert!(
        renamed.problem.is_some(),
        "the legacy limits were kept, not opened up"
    );
    let fixed = s
        .update_route(
            &cli(),
            r.id,
            RouteUpdate {
                limits: Some(limits.clone()),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!((fixed.problem, fixed.limits), (None, limits));
    Ok(())
}

async fn certificates_are_checked_and_listed_by_their_own_names(db: &Db) -> Result<()> {
    let s = &db.store;
    let issue = |names: &[&str]| -> Result<CertificateMaterial> {
        let certified = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )?;
        Ok(CertificateMaterial {
            chain_pem: certified.cert.pem(),
            key_pem: certified.key_pair.serialize_pem(),
        })
    };
    let manual = |names: Vec<HostPattern>, material| NewCertificate {
        names,
        source: CertificateSource::Manual,
        material: Some(material),
    };
    // Listed by the names the certificate carries, whatever was claimed.
    let cert = s
        .create_certificate(
            &cli(),
            manual(vec![], issue(&["b.example.com", "a.example.com"])?),
        )
        .await?;
    assert_eq!(cert.names, ["a.example.com", "b.example.com"]);
    assert!(cert.not_after.is_some() && cert.issuer.is_some());
    // A claimed name the certificate does not cover.
    assert_eq!(
        invalid_field(
            s.create_certificate(
                &cli(),
                manual(
                    vec![host("a.example.com"), host("c.example.com")],
                    issue(&["a.example.com"])?
                )
            )
            .await
        ),
        Some("names[1]")
    );
    // A wildcard covers one label.
    s.create_certificate(
        &cli(),
        manual(vec![host("x.example.org")], issue(&["*.example.org"])?),
    )
    .await?;
    // The key of another certificate.
    let mut mismatched = issue(&["a.example.com"])?;
    mismatched.key_pem = issue(&["a.example.com"])?.key_pem;
    assert_eq!(
        invalid_field(
            s.create_certificate(&cli(), manual(vec![], mismatched))
                .await
        ),
        Some("key_pem")
    );
    // No DNS name at all.
    let ip_only = rcgen::CertificateParams::new(Vec::<String>::new())?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = ip_only;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("192.0.2.1".parse()?));
    let ip_cert = params.self_signed(&key)?;
    assert_eq!(
        invalid_field(
            s.create_certificate(
                &cli(),
                manual(
                    vec![],
                    CertificateMaterial {
                        chain_pem: ip_cert.pem(),
                        key_pem: key.serialize_pem(),
                    }
                )
            )
            .await
        ),
        Some("chain_pem")
    );
    // Expired.
    let mut params = rcgen::CertificateParams::new(vec!["old.example.com".to_string()])?;
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate()?;
    let old = params.self_signed(&key)?;
    let expired = s
        .create_certificate(
            &cli(),
            manual(
                vec![],
                CertificateMaterial {
                    chain_pem: old.pem(),
                    key_pem: key.serialize_pem(),
                },
            ),
        )
        .await;
    assert_eq!(invalid_field(expired), Some("chain_pem"));
    assert_eq!(s.list_certificates().await?.len(), 2);
    Ok(())
}

async fn private_keys_are_sealed_at_rest(db: &Db) -> Result<()> {
    let s = &db.store;
    let home = s.create_origin(&cli(), origin("home")).await?;
    let lab = s.create_origin(&cli(), origin("lab")).await?;
    let e1 = s.create_edge(&cli(), edge("e1")).await?;
    assert!(home.managed_key && e1.managed_key);

    let private = s
        .origin_private_key(home.id)
        .await?
        .context("generated key")?;
    assert_eq!(private.public_key(), home.public_key);
    let edge_private = s.edge_private_key(e1.id).await?.context("generated key")?;
    assert_eq!(edge_private.public_key(), e1.public_key);

    // The raw column holds neither the key nor anything that decodes to it.
    let sealed = db.column("origins", "private_key_sealed").await?;
    let plain = private.to_base64();
    for value in sealed.iter().flatten() {
        assert!(!value.contains(&plain), "plaintext private key stored");
    }
    let home_sealed: String =
        sqlx::query("SELECT private_key_sealed AS v FROM origins WHERE name = 'home'")
            .fetch_one(db.sql.pool())
            .await?
            .try_get("v")?;
    assert_ne!(home_sealed, plain);

    // Bound to its row: the sealed value copied to another origin does not open there.
    sqlx::query("UPDATE origins SET private_key_sealed = $1 WHERE id = $2")
        .bind(home_sealed)
        .bind(lab.id.to_string())
        .execute(db.sql.pool())
        .await?;
    let moved = s.origin_private_key(lab.id).await;
    assert!(
        matches!(moved, Err(StoreError::Crypto(CryptoError::Open))),
        "{moved:?}"
    );

    // Another master key: reads work, secrets fail cleanly with a message that says why.
    let wrong = db.reopen(MasterKey::generate()).await?;
    assert_eq!(wrong.get_origin(home.id).await?.public_key, home.public_key);
    let err = wrong
        .origin_private_key(home.id)
        .await
        .expect_err("wrong key opened it");
    assert!(
        matches!(err, StoreError::Crypto(CryptoError::Open)),
        "{err:?}"
    );
    assert!(err.to_string().contains("wrong master key"), "{err}");

    // Rotation replaces the key pair; an operator-held key is not stored at all.
    let rotated = s.rotate_origin_key(&cli(), home.id, None).await?;
    assert_ne!(rotated.public_key, home.public_key);
    assert_eq!(
        s.origin_private_key(home.id)
            .await?
            .context("key")?
            .public_key(),
        rotated.public_key
    );
    let own = PrivateKey::generate().public_key();
    let byo = s
        .create_origin(
            &cli(),
            NewOrigin {
                public_key: Some(own),
                ..origin("byo")
            },
        )
        .await?;
    assert!(!byo.managed_key);
    assert!(s.origin_private_key(byo.id).await?.is_none());
    Ok(())
}

async fn certificate_keys_are_sealed_at_rest(db: &Db) -> Result<()> {
    let s = &db.store;
    let certified = rcgen::generate_simple_self_signed(vec!["app.example.com".into()])?;
    let key_pem = certified.key_pair.serialize_pem();
    let material = CertificateMaterial {
        chain_pem: certified.cert.pem(),
        key_pem: key_pem.clone(),
    };
    let cert = s
        .create_certificate(
            &cli(),
            NewCertificate {
                names: vec![host("App.example.com")],
                source: CertificateSource::Manual,
                material: Some(material.clone()),
            },
        )
        .await?;
    assert_eq!(cert.names, ["app.example.com"]);
    for value in db
        .column("certificates", "key_sealed")
        .await?
        .iter()
        .flatten()
    {
        assert!(
            !value.contains("PRIVATE KEY"),
            "plaintext certificate key stored"
        );
    }
    assert_eq!(
        s.certificate_key(cert.id).await?.context("key")?.as_str(),
        key_pem
    );
    let bad = CertificateMaterial {
        chain_pem: "not pem".into(),
        ..material
    };
    assert_eq!(
        invalid_field(
            s.create_certificate(
                &cli(),
                NewCertificate {
                    names: vec![host("a.example.com")],
                    source: CertificateSource::Manual,
                    material: Some(bad)
                }
            )
            .await
        ),
        Some("chain_pem")
    );
    // An ACME certificate may be recorded before issuance.
    let pending = s
        .create_certificate(
            &cli(),
            NewCertificate {
                names: vec![host("*.example.com")],
                source: CertificateSource::Acme,
                material: None,
            },
        )
        .await?;
    assert!(s.certificate_key(pending.id).await?.is_none());
    s.set_certificate_error(&Actor::System, pending.id, "rate limited")
        .await?;
    assert_eq!(
        s.get_certificate(pending.id).await?.last_error.as_deref(),
        Some("rate limited")
    );
    Ok(())
}

async fn node_tokens_are_hashed_one_time_and_revocable(db: &Db) -> Result<()> {
    let s = &db.store;
    let e1 = s.create_edge(&cli(), edge("e1")).await?;
    let issued = s
        .create_enrollment_token(&cli(), NodeId::Edge(e1.id), Duration::from_secs(3600))
        .await?;
    let secret = issued.secret.expose().to_string();
    for hash in db
        .column("node_tokens", "token_hash")
        .await?
        .iter()
        .flatten()
    {
        assert_ne!(hash, &secret);
        assert_eq!(hash.len(), 64);
    }
    // The plaintext appears nowhere in the table.
    let all: Vec<String> = sqlx::query("SELECT * FROM node_tokens")
        .fetch_all(db.sql.pool())
        .await?
        .iter()
        .map(|r| format!("{:?}", r.try_get::<String, _>("token_hash")))
        .collect();
    assert!(all.iter().all(|v| !v.contains(&secret)));

    let enrolled = s.enroll(&secret).await?;
    assert_eq!(enrolled.node, NodeId::Edge(e1.id));
    let credential = enrolled.credential.secret.expose().to_string();
    assert_eq!(s.authenticate_node(&credential).await?, NodeId::Edge(e1.id));
    // One-time: a second use is refused; an enrollment token is not a credential.
    assert!(matches!(
        s.enroll(&secret).await,
        Err(StoreError::Unauthenticated { .. })
    ));
    assert!(matches!(
        s.authenticate_node(&secret).await,
        Err(StoreError::Unauthenticated { .. })
    ));
    assert!(matches!(
        s.enroll("kokoa_enroll_bogus").await,
        Err(StoreError::Unauthenticated { .. })
    ));
    assert!(matches!(
        s.enroll(&credential).await,
        Err(StoreError::Unauthenticated { .. })
    ));

    // Expired: refused.
    let short = s
        .create_enrollment_token(&cli(), NodeId::Edge(e1.id), Duration::from_millis(1))
        .await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let expired = s.enroll(short.secret.expose()).await;
    assert!(
        matches!(expired, Err(StoreError::Unauthenticated { reason }) if reason.contains("expired"))
    );

    // Revoked enrollment token: refused.
    let revoked = s
        .create_enrollment_token(&cli(), NodeId::Edge(e1.id), Duration::from_secs(60))
        .await?;
    s.revoke_node_token(&cli(), revoked.token.id).await?;
    assert!(matches!(
        s.enroll(revoked.secret.expose()).await,
        Err(StoreError::Unauthenticated { .. })
    ));

    // Re-enrolling (a rebuilt VPS) revokes the older credential.
    let again = s
        .create_enrollment_token(&cli(), NodeId::Edge(e1.id), Duration::from_secs(60))
        .await?;
    let second = s.enroll(again.secret.expose()).await?;
    assert!(matches!(
        s.authenticate_node(&credential).await,
        Err(StoreError::Unauthenticated { .. })
    ));
    let second_secret = second.credential.secret.expose().to_string();
    assert_eq!(
        s.authenticate_node(&second_secret).await?,
        NodeId::Edge(e1.id)
    );
    // Revoking a credential locks the node out.
    s.revoke_node_token(&cli(), second.credential.token.id)
        .await?;
    assert!(matches!(
        s.authenticate_node(&second_secret).await,
        Err(StoreError::Unauthenticated { .. })
    ));
    let listed = s.list_node_tokens(Some(NodeId::Edge(e1.id))).await?;
    assert_eq!(listed.len(), 6);
    // Origins enroll the same way; deleting a node deletes its tokens.
    let home = s.create_origin(&cli(), origin("home")).await?;
    let t = s
        .create_enrollment_token(&cli(), NodeId::Origin(home.id), Duration::from_secs(60))
        .await?;
    let cred = s.enroll(t.secret.expose()).await?;
    assert_eq!(
        s.authenticate_node(cred.credential.secret.expose()).await?,
        NodeId::Origin(home.id)
    );
    s.delete_edge(&cli(), e1.id).await?;
    assert_eq!(s.list_node_tokens(None).await?.len(), 2);
    Ok(())
}

async fn api_tokens_are_hashed_expire_and_revoke(db: &Db) -> Result<()> {
    let s = &db.store;
    let issued = s.create_api_token(&cli(), "ops", None).await?;
    let secret = issued.secret.expose().to_string();
    assert!(db
        .column("api_tokens", "token_hash")
        .await?
        .iter()
        .flatten()
        .all(|h| h != &secret));
    assert_eq!(s.authenticate_api_token(&secret).await?.name, "ops");
    assert!(is_conflict(s.create_api_token(&cli(), "ops", None).await));
    let short = s
        .create_api_token(&cli(), "short", Some(Duration::from_millis(1)))
        .await?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(matches!(
        s.authenticate_api_token(short.secret.expose()).await,
        Err(StoreError::Unauthenticated { .. })
    ));
    s.revoke_api_token(&Actor::Api("ops".into()), issued.token.id)
        .await?;
    assert!(matches!(
        s.authenticate_api_token(&secret).await,
        Err(StoreError::Unauthenticated { .. })
    ));
    assert!(matches!(
        s.authenticate_api_token("kokoa_api_nope").await,
        Err(StoreError::Unauthenticated { .. })
    ));
    assert_eq!(s.list_api_tokens().await?.len(), 2);
    Ok(())
}

async fn every_change_writes_an_event_with_its_actor(db: &Db) -> Result<()> {
    let s = &db.store;
    let api = Actor::Api("deploy-bot".into());
    let home = s.create_origin(&cli(), origin("home")).await?;
    let web = s
        .create_service(&api, home.id, service("web", 8001))
        .await?;
    let e1 = s
        .create_edge(
            &Actor::System,
            NewEdge {
                origins: vec![home.id],
                ..edge("e1")
            },
        )
        .await?;
    let r = s
        .create_route(&api, route("app.example.com", web.id))
        .await?;
    s.update_route(
        &api,
        r.id,
        RouteUpdate {
            aliases: Some(vec![host("www.example.com")]),
            ..Default::default()
        },
    )
    .await?;
    // A refused change writes nothing.
    assert!(is_conflict(
        s.create_route(&api, route("app.example.com", web.id)).await
    ));
    s.delete_route(&cli(), r.id).await?;
    s.create_api_token(&cli(), "t", None).await?;
    s.set_node_state(
        &Actor::System,
        NodeId::Edge(e1.id),
        NodeStatus::Online,
        "heartbeat 1 s ago",
    )
    .await?;

    let events = s
        .list_events(EventQuery {
            after: Some(0),
            ..Default::default()
        })
        .await?;
    let seen: Vec<(String, Entity, String)> = events
        .iter()
        .map(|e| (e.actor.clone(), e.entity, e.action.clone()))
        .collect();
    let expected = [
        ("cli", Entity::Origin, "created"),
        ("api:deploy-bot", Entity::Service, "created"),
        ("system", Entity::Edge, "created"),
        ("system", Entity::Assignment, "created"),
        ("api:deploy-bot", Entity::Route, "created"),
        ("api:deploy-bot", Entity::Route, "updated"),
        ("cli", Entity::Route, "deleted"),
        ("cli", Entity::ApiToken, "created"),
        // A state change is an event named after the new state (kind `edge.online`).
        ("system", Entity::Edge, "online"),
    ];
    let expected: Vec<(String, Entity, String)> = expected
        .iter()
        .map(|(a, e, x)| (a.to_string(), *e, x.to_string()))
        .collect();
    assert_eq!(seen, expected);
    let online = events.last().context("the state event")?;
    assert_eq!(
        online.detail,
        serde_json::json!({"name": "e1", "from": "enrolling", "to": "online", "reason": "heartbeat 1 s ago"})
    );
    assert_eq!(events[0].entity_id, home.id.to_string());
    assert_eq!(
        events[5].detail["aliases"]["to"],
        serde_json::json!(["www.example.com"])
    );
    // No event carries a secret.
    for e in &events {
        assert!(!e.detail.to_string().contains("kokoa_api_"), "{e:?}");
    }
    // Filters and the "latest N" form.
    let route_events = s
        .list_events(EventQuery {
            entity: Some(Entity::Route),
            entity_id: Some(r.id.to_string()),
            ..Default::default()
        })
        .await?;
    assert_eq!(route_events.len(), 3);
    let latest = s
        .list_events(EventQuery {
            limit: Some(2),
            ..Default::default()
        })
        .await?;
    assert_eq!(latest.iter().map(|e| e.id).collect::<Vec<_>>(), [8, 9]);
    let feed = s
        .list_events(EventQuery {
            after: Some(7),
            ..Default::default()
        })
        .await?;
    assert_eq!(feed.len(), 2);
    let last_id = s
        .list_events(EventQuery::default())
        .await?
        .last()
        .context("events")?
        .id;
    // What control observes outside a store change (DNS steering) is appended the same way.
    let recorded = s
        .record_event(
            &Actor::System,
            Entity::Dns,
            "app.example.com",
            "fail_open",
            serde_json::json!({"name": "app.example.com", "kept": ["192.0.2.1"]}),
        )
        .await?;
    assert!(recorded.id > last_id);
    let dns = s
        .list_events(EventQuery {
            entity: Some(Entity::Dns),
            ..Default::default()
        })
        .await?;
    assert_eq!(dns, std::slice::from_ref(&recorded));
    assert_eq!(
        (
            recorded.actor.as_str(),
            recorded.entity_id.as_str(),
            recorded.action.as_str()
        ),
        ("system", "app.example.com", "fail_open")
    );
    assert_eq!(recorded.config_version, None);
    Ok(())
}

async fn config_version_increases_on_each_relevant_change(db: &Db) -> Result<()> {
    let s = &db.store;
    let mut watch = s.subscribe_config_version();
    let mut last = s.config_version().await?;
    assert_eq!(last, 0);
    let mut expect_bump = |now: u64, what: &str| -> Result<()> {
        ensure!(
            now == last + 1,
            "{what}: version {now}, expected {}",
            last + 1
        );
        last = now;
        Ok(())
    };
    let home = s.create_origin(&cli(), origin("home")).await?;
    expect_bump(s.config_version().await?, "create origin")?;
    let web = s
        .create_service(&cli(), home.id, service("web", 8001))
        .await?;
    expect_bump(s.config_version().await?, "create service")?;
    let e1 = s
        .create_edge(
            &cli(),
            NewEdge {
                origins: vec![home.id],
                ..edge("e1")
            },
        )
        .await?;
    // Creating an edge and assigning it in one transaction is one version.
    expect_bump(s.config_version().await?, "create edge with origin")?;
    let r = s
        .create_route(&cli(), route("app.example.com", web.id))
        .await?;
    expect_bump(s.config_version().await?, "create route")?;
    s.update_route(
        &cli(),
        r.id,
        RouteUpdate {
            hostname: Some(host("app2.example.com")),
            ..Default::default()
        },
    )
    .await?;
    expect_bump(s.config_version().await?, "update route")?;
    s.rotate_origin_key(&cli(), home.id, None).await?;
    expect_bump(s.config_version().await?, "rotate key")?;
    s.update_service(
        &cli(),
        web.id,
        ServiceUpdate {
            port: Some(port(8002)),
            ..Default::default()
        },
    )
    .await?;
    expect_bump(s.config_version().await?, "update service")?;
    s.delete_route(&cli(), r.id).await?;
    expect_bump(s.config_version().await?, "delete route")?;
    s.unassign_edge(&cli(), e1.id, home.id).await?;
    expect_bump(s.config_version().await?, "unassign")?;

    // Changes no node config depends on leave it alone.
    s.create_api_token(&cli(), "t", None).await?;
    s.create_enrollment_token(&cli(), NodeId::Edge(e1.id), Duration::from_secs(60))
        .await?;
    s.record_heartbeat(NodeId::Edge(e1.id), serde_json::json!({"cpu": 1}))
        .await?;
    s.set_node_state(
        &Actor::System,
        NodeId::Edge(e1.id),
        NodeStatus::Offline,
        "no heartbeat for 31 s",
    )
    .await?;
    // A no-op update is not a change.
    s.update_origin(
        &cli(),
        home.id,
        OriginUpdate {
            name: Some(n("home")),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(s.config_version().await?, last);

    // The watch saw the latest; events carry the version their change produced.
    assert_eq!(*watch.borrow_and_update(), last);
    let events = s
        .list_events(EventQuery {
            after: Some(0),
            ..Default::default()
        })
        .await?;
    let versions: Vec<u64> = events.iter().filter_map(|e| e.config_version).collect();
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    assert_eq!(versions.last().copied(), Some(last));
    let snapshot = s.snapshot().await?;
    assert_eq!(snapshot.version, last);
    assert_eq!(snapshot.origins.len(), 1);
    assert_eq!(snapshot.services[0].port, 8002);
    assert!(snapshot.routes.is_empty() && snapshot.assignments.is_empty());
    // Another store on the same database continues from the stored version.
    let again = db.reopen(db.key.clone()).await?;
    s.delete_service(&cli(), web.id).await?;
    assert_eq!(again.config_version().await?, last + 1);
    Ok(())
}

async fn node_status_ack_nack_and_heartbeat(db: &Db) -> Result<()> {
    let s = &db.store;
    let home = s.create_origin(&cli(), origin("home")).await?;
    let node = NodeId::Origin(home.id);
    assert_eq!(home.state.status, NodeStatus::Enrolling);
    assert_eq!(
        (home.state.reason.as_deref(), home.state.since),
        (None, None)
    );
    s.record_heartbeat(node, serde_json::json!({"active_connections": 3}))
        .await?;
    let nack = Nack {
        version: 5,
        error: "routes[0].limits.allow[0]: `x` is not a network".into(),
        object: Some(NackObject {
            kind: "route".into(),
            key: "app.example.com".into(),
            field: "routes[0].limits.allow[0]".into(),
        }),
    };
    s.record_config_nack(node, &nack).await?;
    let o = s.get_origin(home.id).await?;
    assert!(o.state.last_heartbeat.is_some());
    assert_eq!(
        o.state.heartbeat,
        Some(serde_json::json!({"active_connections": 3}))
    );
    assert_eq!(
        o.state.nack.as_ref(),
        Some(&nack),
        "the NACK and its object"
    );
    // An ACK of an older version keeps the NACK; a newer one clears it.
    s.record_config_ack(node, 4).await?;
    assert!(s.get_origin(home.id).await?.state.nack.is_some());
    s.record_config_ack(node, 6).await?;
    let o = s.get_origin(home.id).await?;
    assert_eq!((o.state.applied_version, o.state.nack), (Some(6), None));
    assert!(
        s.set_node_state(
            &Actor::System,
            node,
            NodeStatus::Online,
            "heartbeat 1 s ago"
        )
        .await?
    );
    let online = s.get_origin(home.id).await?.state;
    assert_eq!(online.status, NodeStatus::Online);
    assert_eq!(online.reason.as_deref(), Some("heartbeat 1 s ago"));
    let since = online.since.expect("since is set on a change");
    // A new reason for the same state is stored without an event and keeps `since`.
    assert!(
        !s.set_node_state(
            &Actor::System,
            node,
            NodeStatus::Online,
            "heartbeat 2 s ago"
        )
        .await?
    );
    let again = s.get_origin(home.id).await?.state;
    assert_eq!(again.reason.as_deref(), Some("heartbeat 2 s ago"));
    assert_eq!(again.since, Some(since));
    let events = s
        .list_events(EventQuery {
            entity: Some(Entity::Origin),
            ..Default::default()
        })
        .await?;
    let actions: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.actor.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("cli", "created"),
            ("node:home", "config_rejected"),
            ("system", "online")
        ]
    );
    assert!(matches!(
        s.record_heartbeat(NodeId::Edge(uuid::Uuid::new_v4()), serde_json::Value::Null)
            .await,
        Err(StoreError::NotFound {
            entity: Entity::Edge,
            ..
        })
    ));
    Ok(())
}

async fn health_check_history(db: &Db) -> Result<()> {
    let s = &db.store;
    let e1 = s.create_edge(&cli(), edge("e1")).await?;
    let home = s.create_origin(&cli(), origin("home")).await?;
    let web = s
        .create_service(&cli(), home.id, service("web", 8001))
        .await?;
    let start = time::OffsetDateTime::now_utc() - time::Duration::minutes(10);
    let at = |minutes: i64| start + time::Duration::minutes(minutes);
    let public = |i: u32| NewHealthCheck {
        kind: CheckKind::Public,
        target: "https://192.0.2.10:443/healthz".into(),
        edge_id: Some(e1.id),
        origin_id: None,
        service_id: None,
        success: i != 1,
        response_time_ms: Some(10 + i),
        error: (i == 1).then(|| "timeout".into()),
        checked_at: at(i64::from(i)),
    };
    // One round in one call: rows keep their own times.
    let written = s
        .record_health_checks(vec![
            public(0),
            public(1),
            public(2),
            NewHealthCheck {
                kind: CheckKind::Service,
                target: "GET http://127.0.0.1:8001/healthz".into(),
                edge_id: None,
                origin_id: Some(home.id),
                service_id: Some(web.id),
                success: false,
                response_time_ms: None,
                error: Some("connection refused".into()),
                checked_at: at(3),
            },
        ])
        .await?;
    assert_eq!(written, 4);
    let history = s
        .health_checks(HealthQuery {
            edge_id: Some(e1.id),
            limit: Some(2),
            ..Default::default()
        })
        .await?;
    assert_eq!(
        history
            .iter()
            .map(|h| h.response_time_ms)
            .collect::<Vec<_>>(),
        [Some(12), Some(11)]
    );
    assert_eq!(history[1].error.as_deref(), Some("timeout"));
    assert!(!history[1].success);
    assert_eq!(history[0].kind, Some(CheckKind::Public));
    assert_eq!(
        history[0].target.as_deref(),
        Some("https://192.0.2.10:443/healthz")
    );
    // Filters: by origin, kind, result.
    let services = s
        .health_checks(HealthQuery {
            origin_id: Some(home.id),
            ..Default::default()
        })
        .await?;
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].service_id, Some(web.id));
    let failures = s
        .health_checks(HealthQuery {
            kind: Some(CheckKind::Public),
            success: Some(false),
            ..Default::default()
        })
        .await?;
    assert_eq!(failures.len(), 1);
    assert_eq!(
        invalid_field(
            s.record_health_checks(vec![NewHealthCheck {
                edge_id: None,
                ..public(0)
            }])
            .await
        ),
        Some("edge_id")
    );
    // Retention: rows older than the cut go, newer stay.
    let pruned = s.prune_health_checks(at(2)).await?;
    assert_eq!(pruned, 2);
    let left = s.health_checks(HealthQuery::default()).await?;
    assert_eq!(left.len(), 2);
    // Deleting the service and the edge deletes their history.
    s.delete_service(&cli(), web.id).await?;
    s.delete_edge(&cli(), e1.id).await?;
    assert!(s.health_checks(HealthQuery::default()).await?.is_empty());
    Ok(())
}

async fn edges_drain_and_name_their_admin_listener(db: &Db) -> Result<()> {
    let s = &db.store;
    let e1 = s
        .create_edge(
            &cli(),
            NewEdge {
                admin_address: Some("127.0.0.1:9090".parse()?),
                ..edge("e1")
            },
        )
        .await?;
    assert_eq!(e1.admin_address.as_deref(), Some("127.0.0.1:9090"));
    assert!(!e1.draining);
    let version = s.config_version().await?;
    let drained = s
        .update_edge(
            &Actor::Api("deploy-bot".into()),
            e1.id,
            store::EdgeUpdate {
                draining: Some(true),
                admin_address: Some(None),
                public_ip: Some(Some("192.0.2.99".parse()?)),
                ..Default::default()
            },
        )
        .await?;
    assert!(drained.draining);
    assert_eq!(drained.admin_address, None);
    assert_eq!(s.get_edge(e1.id).await?, drained);
    // Nothing a node runs changed: no new config version.
    assert_eq!(s.config_version().await?, version);
    let events = s
        .list_events(EventQuery {
            entity: Some(Entity::Edge),
            entity_id: Some(e1.id.to_string()),
            ..Default::default()
        })
        .await?;
    let updated = events
        .iter()
        .find(|e| e.action == "updated")
        .context("updated")?;
    assert_eq!(updated.actor, "api:deploy-bot");
    assert_eq!(
        updated.detail["draining"],
        serde_json::json!({"from": false, "to": true})
    );
    assert_eq!(updated.config_version, None);
    // A rename reaches the edge's snapshot: a new version.
    s.update_edge(
        &cli(),
        e1.id,
        store::EdgeUpdate {
            name: Some(n("e1b")),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(s.config_version().await?, version + 1);
    Ok(())
}

async fn updates_validate_and_record_changes(db: &Db) -> Result<()> {
    let s = &db.store;
    let home = s.create_origin(&cli(), origin("home")).await?;
    s.create_origin(&cli(), origin("lab")).await?;
    assert!(is_conflict(
        s.update_origin(
            &cli(),
            home.id,
            OriginUpdate {
                name: Some(n("lab")),
                ..Default::default()
            }
        )
        .await
    ));
    let renamed = s
        .update_origin(
            &cli(),
            home.id,
            OriginUpdate {
                name: Some(n("house")),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(renamed.name, "house");
    assert_eq!(renamed.subnet, home.subnet);
    let web = s
        .create_service(&cli(), home.id, service("web", 8001))
        .await?;
    s.create_service(&cli(), home.id, service("api", 8002))
        .await?;
    assert!(is_conflict(
        s.update_service(
            &cli(),
            web.id,
            ServiceUpdate {
                port: Some(port(8002)),
                ..Default::default()
            }
        )
        .await
    ));
    let moved = s
        .update_service(
            &cli(),
            web.id,
            ServiceUpdate {
                port: Some(port(9000)),
                health_path: Some(None),
                local_address: Some(endpoint("127.0.0.1:9000")),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!((moved.port, moved.health_path.as_deref()), (9000, None));
    s.create_route(&cli(), route("app.example.com", web.id))
        .await?;
    assert!(is_conflict(
        s.update_service(
            &cli(),
            web.id,
            ServiceUpdate {
                protocol: Some(Protocol::Tcp),
                ..Default::default()
            }
        )
        .await
    ));
    let e1 = s.create_edge(&cli(), edge("e1")).await?;
    let updated = s
        .update_edge(
            &cli(),
            e1.id,
            store::EdgeUpdate {
                endpoint: Some(Some(endpoint("edge1.example.net:51820"))),
                region: Some(Some("ams3".into())),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(updated.endpoint.as_deref(), Some("edge1.example.net:51820"));
    let last = s
        .list_events(EventQuery {
            limit: Some(1),
            ..Default::default()
        })
        .await?;
    assert_eq!(
        last[0].detail["region"],
        serde_json::json!({"from": null, "to": "ams3"})
    );
    assert!(last[0].detail.get("name").is_none());
    Ok(())
}

// ---- notifications ---------------------------------------------------------------------------

fn webhook(name: &str, events: &[&str]) -> store::NewNotificationTarget {
    store::NewNotificationTarget {
        name: name.into(),
        kind: store::NotificationKind::Webhook,
        url: "http://127.0.0.1:9/hooks/secret-path?token=abc".into(),
        secret: None,
        events: events.iter().map(|s| s.to_string()).collect(),
    }
}

const LIMITS: store::QueueLimits = store::QueueLimits {
    events_per_pass: 100,
    pending_per_target: 3,
    history_per_target: 4,
};

async fn notification_targets_seal_url_and_secret(db: &Db) -> Result<()> {
    let s = &db.store;
    let created = s
        .create_notification_target(&cli(), webhook("ops", &["edge.*"]))
        .await?;
    let secret = created
        .secret
        .context("a webhook gets a generated secret")?;
    ensure!(secret.expose().starts_with("kokoa_whsec_"));
    ensure!(
        created.target.url == "http://127.0.0.1:9",
        "{}",
        created.target.url
    );
    ensure!(created.target.signed);
    // Neither the URL's path nor the secret is stored in clear.
    for row in sqlx::query("SELECT url_sealed, secret_sealed FROM notification_targets")
        .fetch_all(db.sql.pool())
        .await?
    {
        let url: String = row.try_get("url_sealed")?;
        let sealed: String = row.try_get("secret_sealed")?;
        ensure!(!url.contains("secret-path") && !sealed.contains(secret.expose()));
    }
    let slack = s
        .create_notification_target(
            &cli(),
            store::NewNotificationTarget {
                name: "chat".into(),
                kind: store::NotificationKind::Slack,
                url: "https://hooks.slack.example/services/T0/B0/XYZ".into(),
                secret: None,
                events: vec![],
            },
        )
        .await?;
    ensure!(slack.secret.is_none() && !slack.target.signed);
    ensure!(slack.target.url == "https://hooks.slack.example");
    ensure!(is_conflict(
        s.create_notification_target(&cli(), webhook("ops", &[]))
            .await
    ));
    for (bad, field) in [
        (
            store::NewNotificationTarget {
                url: "ftp://x".into(),
                ..webhook("a1", &[])
            },
            "url",
        ),
        (webhook("a2", &["edge"]), "events"),
        (webhook("a3", &["Edge.*"]), "events"),
        (
            store::NewNotificationTarget {
                secret: Some("short".into()),
                ..webhook("a4", &[])
            },
            "secret",
        ),
    ] {
        let got = invalid_field(s.create_notification_target(&cli(), bad).await);
        ensure!(got == Some(field), "{got:?} != {field}");
    }
    let names: Vec<_> = s
        .list_notification_targets()
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    ensure!(names == ["chat", "ops"], "{names:?}");
    let due = s.due_notification_deliveries(&[], 10).await?;
    ensure!(due.is_empty());
    // The full URL and secret come back only to the sender.
    let delivery = s
        .test_notification_target(&cli(), created.target.id)
        .await?;
    ensure!(delivery.kind == "notification_target.test");
    let due = s.due_notification_deliveries(&[], 10).await?;
    ensure!(due.len() == 1);
    ensure!(due[0].url.expose() == "http://127.0.0.1:9/hooks/secret-path?token=abc");
    ensure!(due[0].secret.as_ref().map(|x| x.expose()) == Some(secret.expose()));
    // Busy targets are skipped.
    ensure!(s
        .due_notification_deliveries(&[created.target.id], 10)
        .await?
        .is_empty());
    s.delete_notification_target(&cli(), created.target.id)
        .await?;
    ensure!(s
        .list_notification_deliveries(store::DeliveryQuery::default())
        .await?
        .is_empty());
    Ok(())
}

async fn notifications_fan_out_in_order_with_bounded_queue(db: &Db) -> Result<()> {
    let s = &db.store;
    // History before the first pass is not replayed.
    s.create_origin(&cli(), origin("before")).await?;
    let edges_only = s
        .create_notification_target(&cli(), webhook("edges", &["edge.*"]))
        .await?
        .target;
    let all = s
        .create_notification_target(&cli(), webhook("all", &[]))
        .await?
        .target;
    ensure!(s.fan_out_notifications(LIMITS).await? == store::FanOut::default());
    let o = s.create_origin(&cli(), origin("o1")).await?;
    let e = s.create_edge(&cli(), edge("e1")).await?;
    s.record_config_nack(
        NodeId::Edge(e.id),
        &store::Nack {
            version: 1,
            error: "bad route".into(),
            object: None,
        },
    )
    .await?;
    let report = s.fan_out_notifications(LIMITS).await?;
    ensure!(report.events == 3, "{report:?}");
    // "all": 3 events; "edges": the edge's creation and its NACK.
    ensure!(report.queued == 5 && report.dropped == 0, "{report:?}");
    // A second pass finds nothing new.
    ensure!(s.fan_out_notifications(LIMITS).await?.events == 0);
    let edge_kinds: Vec<_> = s
        .list_notification_deliveries(store::DeliveryQuery {
            target_id: Some(edges_only.id),
            ..Default::default()
        })
        .await?
        .into_iter()
        .map(|d| d.kind)
        .collect();
    ensure!(
        edge_kinds == ["edge.config_rejected", "edge.created"],
        "{edge_kinds:?}"
    );
    // One delivery at a time per target, oldest event first.
    let due = s.due_notification_deliveries(&[], 10).await?;
    ensure!(due.len() == 2, "{}", due.len());
    let first_all = due
        .iter()
        .find(|d| d.delivery.target_id == all.id)
        .context("all")?;
    ensure!(first_all.event.entity_id == o.id.to_string());
    // A retry keeps it at the head, not due before its backoff.
    let retried = s
        .finish_delivery_attempt(
            first_all.delivery.id,
            store::AttemptOutcome::Retry {
                status: Some(500),
                error: "HTTP 500".into(),
                retry_in: Duration::from_secs(3600),
            },
        )
        .await?;
    ensure!(retried.attempts == 1 && retried.status == store::DeliveryStatus::Pending);
    ensure!(retried.last_status == Some(500));
    ensure!(s
        .due_notification_deliveries(&[edges_only.id], 10)
        .await?
        .is_empty());
    // The queue bound: "all" holds 3 pending; three more events drop the three oldest.
    for name in ["o2", "o3", "o4"] {
        s.create_origin(&cli(), origin(name)).await?;
    }
    let report = s.fan_out_notifications(LIMITS).await?;
    ensure!(report.queued == 3 && report.dropped == 3, "{report:?}");
    let dropped = s
        .list_notification_deliveries(store::DeliveryQuery {
            target_id: Some(all.id),
            status: Some(store::DeliveryStatus::Dropped),
            ..Default::default()
        })
        .await?;
    ensure!(dropped.len() == 3);
    ensure!(dropped.iter().all(|d| d
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("queue was full"))));
    // Finishing a dropped delivery counts the attempt but keeps it dropped.
    let late = s
        .finish_delivery_attempt(
            first_all.delivery.id,
            store::AttemptOutcome::Delivered { status: 200 },
        )
        .await?;
    ensure!(late.status == store::DeliveryStatus::Dropped && late.attempts == 2);
    // History is pruned to its bound once finished deliveries exceed it.
    for name in ["o5", "o6", "o7", "o8"] {
        s.create_origin(&cli(), origin(name)).await?;
    }
    s.fan_out_notifications(LIMITS).await?;
    let finished = s
        .list_notification_deliveries(store::DeliveryQuery {
            target_id: Some(all.id),
            ..Default::default()
        })
        .await?
        .into_iter()
        .filter(|d| d.status != store::DeliveryStatus::Pending)
        .count();
    ensure!(finished == 4, "{finished} finished deliveries kept");
    Ok(())
}
