//! Edge provisioners and the replacement state machine.
//!
//! - The DigitalOcean, Vultr and Hetzner provisioners against local fakes of their APIs
//!   (`kokoa_tests::clouds`, which enforce each API's documented request and response shapes,
//!   auth header, status codes and ids): create, status (the address arriving while the VPS
//!   boots), find by name, destroy (twice: the second finds it gone), a refused request with
//!   the provider's message, rate limits retried and then given up, a bad token.
//! - [`Replacer`] over the store, on both engines, making machines through the DigitalOcean
//!   fake; the health checker's judgement of the new edge is recorded by hand (as the checker
//!   would), so every step is driven deterministically by [`Replacer::pass`]: an edge offline
//!   for `--replace-after` is replaced (provision, wait until the new edge serves, destroy the
//!   old machine, delete the old edge), a provider that refuses fails the replacement and
//!   keeps the old edge, a second replacer over the same store (a restarted control) resumes
//!   one in flight, the in-flight bound holds, and a machine whose edge was deleted is
//!   destroyed by the sweep.

#[macro_use]
mod engines;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use engines::Db;
use kokoa_control::bundle::BundleSettings;
use kokoa_control::provision::cloud::{CloudSettings, ATTEMPTS};
use kokoa_control::provision::replace::{ReplaceError, ReplaceSettings, Replacer};
use kokoa_control::provision::{
    digitalocean::DigitalOcean, hetzner::Hetzner, vultr::Vultr, InstanceSpec, InstanceStatus,
    ProvisionError, Provisioner,
};
use kokoa_control::store::{
    Actor, Entity, EventQuery, InstanceState, Name, NewOrigin, NodeId, NodeStatus, ReplaceCause,
    ReplacementStage, Store, StoreError,
};
use kokoa_tests::clouds::{Cloud, CloudFake};

const TOKEN: &str = "dop_v1_0123456789abcdef";

fn settings(fake: &CloudFake, token: &str) -> CloudSettings {
    CloudSettings {
        api_url: fake.url.clone(),
        token: zeroize::Zeroizing::new(token.to_owned()),
        region: "fra1".into(),
        size: "s-1vcpu-1gb".into(),
        image: match fake.cloud {
            Cloud::Vultr => "2284".into(),
            _ => "ubuntu-24-04-x64".into(),
        },
        release: None,
        ssh_keys: vec!["12345".into()],
        timeout: Duration::from_secs(5),
    }
}

fn provisioner(fake: &CloudFake, token: &str) -> Result<Arc<dyn Provisioner>> {
    let s = settings(fake, token);
    Ok(match fake.cloud {
        Cloud::DigitalOcean => Arc::new(DigitalOcean::new(s)?),
        Cloud::Vultr => Arc::new(Vultr::new(s)?),
        Cloud::Hetzner => Arc::new(Hetzner::new(s)?),
    })
}

fn spec(name: &str) -> InstanceSpec {
    InstanceSpec {
        name: name.into(),
        region: None,
        size: None,
        image: None,
        bundle: b"not really a tar.gz".to_vec(),
    }
}

async fn provider_lifecycle(cloud: Cloud) -> Result<()> {
    let fake = CloudFake::start(cloud, TOKEN).await?;
    let p = provisioner(&fake, TOKEN)?;
    assert_eq!(p.kind(), cloud.kind());

    let made = p.create(&spec("edge_1")).await?;
    let machines = fake.machines();
    ensure!(machines.len() == 1, "{machines:?}");
    // `_` is not allowed in host names: the machine is named edge-1.
    ensure!(machines[0].name == "edge-1", "{:?}", machines[0]);
    ensure!(machines[0].id == made.id, "{made:?}");
    let data = match cloud {
        Cloud::Vultr => {
            use base64::Engine as _;
            String::from_utf8(
                base64::engine::general_purpose::STANDARD.decode(
                    machines[0].request["user_data"]
                        .as_str()
                        .context("user_data")?,
                )?,
            )?
        }
        _ => machines[0].request["user_data"]
            .as_str()
            .context("user_data")?
            .to_owned(),
    };
    ensure!(data.starts_with("#cloud-config\n"), "{data}");
    ensure!(data.contains("/install.sh"), "{data}");
    if cloud != Cloud::Hetzner {
        ensure!(
            made.public_ip.is_none() && made.status == InstanceStatus::Starting,
            "{made:?}"
        );
    }

    // The address comes while it boots.
    let status = p.status(&made.id).await?;
    ensure!(status.status == InstanceStatus::Running, "{status:?}");
    let ip = status.public_ip.context("no address after boot")?;
    ensure!(
        status.endpoint.as_deref() == Some(format!("{ip}:51820").as_str()),
        "{status:?}"
    );
    let found = p.find("edge_1").await?.context("find by name")?;
    ensure!(found.id == made.id, "{found:?}");
    ensure!(
        p.find("other").await?.is_none(),
        "found a machine never made"
    );

    p.destroy(&made.id).await?;
    ensure!(fake.machines().is_empty(), "not destroyed");
    ensure!(
        p.status(&made.id).await?.status == InstanceStatus::Gone,
        "still there"
    );
    // Destroying again succeeds: the provider answers 404 and that means gone.
    p.destroy(&made.id).await?;

    // A refused request names the provider's reason.
    fake.fail_next(422, "unprocessable_entity", "You specified an invalid size");
    match p.create(&spec("edge2")).await {
        Err(ProvisionError::Refused {
            status, message, ..
        }) => ensure!(
            status == 422 && message == "You specified an invalid size",
            "{status} {message}"
        ),
        other => anyhow::bail!("a 422 became {other:?}"),
    }
    // A rate limit is retried...
    fake.fail_next(429, "too_many_requests", "API Rate limit exceeded.");
    let made = p.create(&spec("edge3")).await?;
    let posts = fake
        .requests()
        .iter()
        .filter(|(m, _, _)| m == "POST")
        .map(|(_, _, s)| *s)
        .collect::<Vec<_>>();
    ensure!(
        posts.ends_with(&[429, 201]) || posts.ends_with(&[429, 202]),
        "{posts:?}"
    );
    p.destroy(&made.id).await?;
    // ... until the attempts run out.
    for _ in 0..ATTEMPTS {
        fake.fail_next(429, "too_many_requests", "API Rate limit exceeded.");
    }
    match p.create(&spec("edge4")).await {
        Err(ProvisionError::RateLimited { .. }) => {}
        other => anyhow::bail!("four 429s became {other:?}"),
    }
    ensure!(fake.machines().is_empty(), "{:?}", fake.machines());

    // A bad token is refused by the provider, and said so.
    let bad = provisioner(&fake, "wrong")?;
    match bad.create(&spec("edge5")).await {
        Err(ProvisionError::Unauthorized { status: 401, .. }) => {}
        other => anyhow::bail!("a bad token became {other:?}"),
    }
    match bad.status("1001").await {
        Err(ProvisionError::Unauthorized { .. }) => {}
        other => anyhow::bail!("a bad token became {other:?}"),
    }
    // Ids that are not the provider's kind are refused before any request.
    let before = fake.requests().len();
    ensure!(p.destroy("../etc").await.is_err(), "a bad id was sent");
    ensure!(fake.requests().len() == before, "a bad id reached the API");
    Ok(())
}

#[tokio::test]
async fn digitalocean_against_its_fake() -> Result<()> {
    provider_lifecycle(Cloud::DigitalOcean).await
}

#[tokio::test]
async fn vultr_against_its_fake() -> Result<()> {
    provider_lifecycle(Cloud::Vultr).await
}

#[tokio::test]
async fn hetzner_against_its_fake() -> Result<()> {
    provider_lifecycle(Cloud::Hetzner).await
}

// ---- the replacement state machine ---------------------------------------------------------

fn bundle() -> Arc<BundleSettings> {
    Arc::new(BundleSettings {
        control_url: "https://control.example.com:7443".into(),
        ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        enrollment_ttl: Duration::from_secs(3600),
    })
}

fn replace_settings() -> ReplaceSettings {
    ReplaceSettings {
        auto: true,
        after: Duration::ZERO,
        max_in_flight: 1,
        cooldown: Duration::ZERO,
        timeout: Duration::from_secs(600),
        drain_grace: Duration::ZERO,
    }
}

async fn replacer(store: &Arc<dyn Store>, fake: &CloudFake) -> Result<Replacer> {
    Ok(Replacer::new(
        store.clone(),
        provisioner(fake, TOKEN)?,
        bundle(),
        replace_settings(),
        None,
    ))
}

/// Records what the health checker would for an edge that serves: connected, config ACKed,
/// probes passing.
async fn mark_serving(store: &Arc<dyn Store>, name: &str) -> Result<()> {
    let edge = store.edge_by_name(name).await?;
    let version = store.config_version().await?;
    store
        .record_config_ack(NodeId::Edge(edge.id), version)
        .await?;
    store
        .set_node_state(
            &Actor::System,
            NodeId::Edge(edge.id),
            NodeStatus::Online,
            "ok",
        )
        .await?;
    let checks = (0..3)
        .map(|_| kokoa_control::store::NewHealthCheck {
            kind: kokoa_control::store::CheckKind::Public,
            target: "https://192.0.2.1:443".into(),
            edge_id: Some(edge.id),
            origin_id: None,
            service_id: None,
            success: true,
            response_time_ms: Some(1),
            error: None,
            checked_at: time::OffsetDateTime::now_utc(),
        })
        .collect();
    store.record_health_checks(checks).await?;
    store
        .record_heartbeat(
            NodeId::Edge(edge.id),
            serde_json::json!({"applied_version": version, "peers": [{"public_key": "k", "up": true}]}),
        )
        .await?;
    Ok(())
}

async fn kinds(store: &Arc<dyn Store>) -> Result<Vec<(String, String)>> {
    Ok(store
        .list_events(EventQuery {
            limit: Some(1000),
            ..EventQuery::default()
        })
        .await?
        .into_iter()
        .filter(|e| matches!(e.entity, Entity::Edge | Entity::Provision))
        .map(|e| {
            (
                format!("{}.{}", e.entity, e.action),
                e.detail["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

async fn setup(store: &Arc<dyn Store>, r: &Replacer) -> Result<()> {
    let origin = store
        .create_origin(
            &Actor::Cli,
            NewOrigin {
                name: Name::new("home")?,
                public_key: None,
                tunnel: None,
            },
        )
        .await?;
    r.provision_edge(&Actor::Cli, Name::new("edge1")?, vec![origin.id])
        .await?;
    Ok(())
}

async fn an_offline_edge_is_replaced(db: &Db) -> Result<()> {
    let fake = CloudFake::start(Cloud::DigitalOcean, TOKEN).await?;
    let store = db.store.clone();
    let r = replacer(&store, &fake).await?;
    setup(&store, &r).await?;
    let old = store.edge_by_name("edge1").await?;
    ensure!(old.provider.as_deref() == Some("digitalocean"), "{old:?}");
    let instance = store.get_instance(old.id).await?.context("no instance")?;
    ensure!(instance.state == InstanceState::Running, "{instance:?}");
    ensure!(fake.machines().len() == 1, "{:?}", fake.machines());

    // Online edges are left alone.
    mark_serving(&store, "edge1").await?;
    r.pass().await?;
    ensure!(
        store.list_replacements(false, 10).await?.is_empty(),
        "replaced a healthy edge"
    );

    // Offline for --replace-after (0 here): replaced.
    store
        .set_node_state(
            &Actor::System,
            NodeId::Edge(old.id),
            NodeStatus::Offline,
            "3 failed probes",
        )
        .await?;
    r.pass().await?;
    let list = store.list_replacements(true, 10).await?;
    ensure!(list.len() == 1, "{list:?}");
    let replacement = &list[0];
    ensure!(
        replacement.cause == ReplaceCause::Auto
            && replacement.stage == ReplacementStage::Waiting
            && replacement.new_edge_name.as_deref() == Some("edge1-r2"),
        "{replacement:?}"
    );
    ensure!(fake.machines().len() == 2, "{:?}", fake.machines());
    let new = store.edge_by_name("edge1-r2").await?;
    let served: Vec<_> = store
        .list_assignments(kokoa_control::store::AssignmentFilter {
            edge_id: Some(new.id),
            origin_id: None,
        })
        .await?;
    ensure!(served.len() == 1, "the new edge serves {served:?}");

    // It waits while the new edge does not serve; the droplet's address arrives meanwhile.
    r.pass().await?;
    let new = store.get_edge(new.id).await?;
    let ip = new.public_ip.context("the new edge has no address")?;
    ensure!(
        new.endpoint.as_deref() == Some(format!("{ip}:51820").as_str()),
        "{new:?}"
    );
    ensure!(
        store.get_edge(old.id).await.is_ok(),
        "the old edge went before the new one served"
    );
    ensure!(fake.machines().len() == 2, "a machine went early");

    // Serving: the old machine is destroyed and the old edge deleted.
    mark_serving(&store, "edge1-r2").await?;
    r.pass().await?;
    let done = store.list_replacements(false, 10).await?;
    ensure!(done[0].stage == ReplacementStage::Done, "{done:?}");
    ensure!(
        matches!(
            store.get_edge(old.id).await,
            Err(StoreError::NotFound { .. })
        ),
        "the old edge is still in the store"
    );
    let machines = fake.machines();
    ensure!(
        machines.len() == 1 && machines[0].name == "edge1-r2",
        "{machines:?}"
    );
    ensure!(
        store.get_instance(old.id).await?.is_none(),
        "old instance on record"
    );
    let kinds = kinds(&store).await?;
    let steps: Vec<&str> = kinds
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| {
            [
                "edge.replace_started",
                "edge.provisioned",
                "edge.serving",
                "edge.destroyed",
                "edge.replaced",
            ]
            .contains(k)
        })
        .collect();
    ensure!(
        steps
            == [
                "edge.provisioned", // edge1 itself, by `provision_edge`
                "edge.replace_started",
                "edge.provisioned",
                "edge.serving",
                "edge.destroyed",
                "edge.replaced"
            ],
        "{kinds:?}"
    );

    // A provider that refuses fails the replacement: new edge removed, old kept.
    fake.fail_next(422, "unprocessable_entity", "droplet limit reached");
    let current = store.edge_by_name("edge1-r2").await?;
    r.replace(&Actor::Cli, &current, ReplaceCause::Manual, "test".into())
        .await?;
    r.pass().await?;
    let last = &store.list_replacements(false, 10).await?[0];
    ensure!(
        last.stage == ReplacementStage::Failed
            && last
                .error
                .as_deref()
                .is_some_and(|e| e.contains("droplet limit reached")),
        "{last:?}"
    );
    let names: Vec<String> = store
        .list_edges()
        .await?
        .into_iter()
        .map(|e| e.name)
        .collect();
    ensure!(names == ["edge1-r2"], "{names:?}");
    ensure!(fake.machines().len() == 1, "{:?}", fake.machines());
    let kinds = kinds_after(&store).await?;
    ensure!(
        kinds.iter().any(|k| k == "provision.failed")
            && kinds.iter().any(|k| k == "edge.replace_failed"),
        "{kinds:?}"
    );
    Ok(())
}

async fn kinds_after(store: &Arc<dyn Store>) -> Result<Vec<String>> {
    Ok(kinds(store).await?.into_iter().map(|(k, _)| k).collect())
}

async fn a_restarted_control_resumes_and_bounds_hold(db: &Db) -> Result<()> {
    let fake = CloudFake::start(Cloud::DigitalOcean, TOKEN).await?;
    let store = db.store.clone();
    let first = replacer(&store, &fake).await?;
    setup(&store, &first).await?;
    mark_serving(&store, "edge1").await?;
    let old = store.edge_by_name("edge1").await?;
    let replacement = first
        .replace(&Actor::Cli, &old, ReplaceCause::Manual, "rotate".into())
        .await?;
    // The in-flight bound (1): a second replacement is refused while this one runs.
    let second = store.edge_by_name("edge1").await?;
    match first
        .replace(&Actor::Cli, &second, ReplaceCause::Manual, "again".into())
        .await
    {
        Err(ReplaceError::Store(StoreError::Conflict { .. })) => {}
        other => anyhow::bail!("a second replacement of one edge became {other:?}"),
    }
    first.pass().await?;
    ensure!(
        store.list_replacements(true, 10).await?[0].stage == ReplacementStage::Waiting,
        "not waiting"
    );
    drop(first);

    // "Control restarts": a new replacer over a new store on the same database picks it up.
    let restarted = Replacer::new(
        db.reopen(db.key.clone()).await?,
        provisioner(&fake, TOKEN)?,
        bundle(),
        replace_settings(),
        None,
    );
    mark_serving(&store, "edge1-r2").await?;
    restarted.pass().await?;
    let r = store.list_replacements(false, 10).await?;
    ensure!(r[0].id == replacement.id, "{r:?}");
    // The old edge was serving: drained first (grace 0 here), destroyed on the next pass.
    restarted.pass().await?;
    let r = store.list_replacements(false, 10).await?;
    ensure!(r[0].stage == ReplacementStage::Done, "{r:?}");
    let machines = fake.machines();
    ensure!(
        machines.len() == 1 && machines[0].name == "edge1-r2",
        "{machines:?}"
    );

    // A machine whose edge record is deleted behind the provisioner's back is destroyed by the
    // sweep, not leaked.
    let new = store.edge_by_name("edge1-r2").await?;
    store.delete_edge(&Actor::Cli, new.id).await?;
    ensure!(restarted.sweep().await? == 1, "nothing swept");
    ensure!(fake.machines().is_empty(), "{:?}", fake.machines());
    ensure!(
        store.list_instances().await?.is_empty(),
        "instance still on record"
    );
    Ok(())
}

both_engines!(
    an_offline_edge_is_replaced,
    a_restarted_control_resumes_and_bounds_hold
);
