//! Automatic certificates end to end: the real `kokoa-control serve` with `--acme-*` flags
//! pointing at a Pebble started by the test, a real `kokoa-edge` from control's bundle whose
//! plain HTTP port is Pebble's HTTP-01 port, and `named` resolving the test zone to the edge's
//! loopback address. Every check is what a client sees: TLS handshakes that validate against
//! Pebble's root, response bodies, and the REST API's certificate list.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use http_body_util::BodyExt as _;
use kokoa_tests::acme::{
    client_config, first_pem_certificate, free_port, tools_or_skip_of, Named, Pebble,
};
use kokoa_tests::apps::{hex, pattern_sha256, HttpApp};
use kokoa_tests::client::{request, EdgeClient, Proto};
use kokoa_tests::control::{Fleet, FleetOptions};
use kokoa_tests::eventually;
use kokoa_tests::net::{free_tcp, loopback};
use rustls::pki_types::CertificateDer;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;

use crate::run_bounded;

/// The route's host name (in `named`'s zone, so Pebble resolves it to the edge).
const NAME: &str = "app.kokoa.test";

/// Control (with ACME), one edge, one origin with the `app` sample app, Pebble and named.
struct World {
    fleet: Fleet,
    named: Named,
    /// Trusts only Pebble's root (the CA that signs this run's certificates).
    client: EdgeClient,
    _app: HttpApp,
    _pebble: Pebble,
    _dir: TempDir,
}

/// Starts everything, with `acme_args` added to control's ACME flags, then adds the route
/// `NAME` through the API. `None` (after printing `SKIPPED: reason`) without the tools.
/// Control flags that make every check (each second) renew: renew-before is longer than
/// Pebble's certificate validity.
const RENEW_EVERY_CHECK: &[&str] = &[
    "--acme-renew-before-days",
    "3650",
    "--acme-check-interval",
    "1",
];

async fn world(acme_args: &[&str]) -> Result<Option<World>> {
    if !tools_or_skip_of("ACME end to end", &["pebble", "named", "nsupdate"]) {
        return Ok(None);
    }
    let dir = tempfile::tempdir()?;
    let named = Named::start(dir.path(), Fleet::EDGE_IP).await?;
    let edge_http = free_tcp(IpAddr::V4(Fleet::EDGE_IP))?;
    // TLS-ALPN-01 is not used here: Pebble's TLS port is simply a free one.
    let pebble = Pebble::start(dir.path(), named.addr, edge_http.port(), free_port()?).await?;
    let mut control_args: Vec<String> = vec![
        "--acme-directory".into(),
        pebble.directory.clone(),
        "--acme-email".into(),
        "ops@kokoa.test".into(),
        "--acme-ca-file".into(),
        pebble.ca_file.display().to_string(),
    ];
    control_args.extend(acme_args.iter().map(|arg| arg.to_string()));
    let app = HttpApp::start("app", loopback(1)).await?;
    let fleet = Fleet::start_with(
        &["home"],
        &[("home", "web", 8001, app.addr)],
        &[],
        FleetOptions {
            control_args,
            edge_http: Some(edge_http),
            ..FleetOptions::default()
        },
    )
    .await?;
    fleet.add_route(NAME, "home", "web").await?;
    let root = pebble.root().await?;
    let https = fleet.edge.https.context("the edge has no https listener")?;
    let client = EdgeClient::with_configs(
        https,
        client_config(root.clone(), &[b"http/1.1"])?,
        client_config(root, &[b"h2"])?,
    );
    Ok(Some(World {
        fleet,
        named,
        client,
        _app: app,
        _pebble: pebble,
        _dir: dir,
    }))
}

impl World {
    /// The API's certificate for `NAME` (`None` until the manager created it).
    async fn certificate(&self) -> Result<Option<Value>> {
        let list = self.fleet.control.ok("GET", "/certificates", None).await?;
        let items = match &list {
            Value::Array(items) => items.clone(),
            other => other["certificates"]
                .as_array()
                .or_else(|| other["items"].as_array())
                .cloned()
                .with_context(|| format!("no certificate list in {other}"))?,
        };
        Ok(items.into_iter().find(|cert| {
            cert["names"]
                .as_array()
                .is_some_and(|names| names.iter().any(|n| n.as_str() == Some(NAME)))
        }))
    }

    /// The leaf the edge serves for `NAME`; the handshake validates it against Pebble's root.
    async fn served(&self) -> Result<CertificateDer<'static>> {
        let tls = self.client.tls(NAME, Proto::Http1).await?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .context("the edge sent no certificate")?
            .clone()
            .into_owned();
        Ok(leaf)
    }

    /// Waits until the edge serves a Pebble-issued certificate for `NAME` and proxies to the
    /// app; that certificate.
    async fn issued(&self, within: Duration) -> Result<CertificateDer<'static>> {
        let started = Instant::now();
        let leaf = eventually(
            "a Pebble certificate served for the route",
            within,
            || async {
                let answer = self.client.get(NAME, "/", Proto::Http1).await?;
                ensure!(
                    answer.status == 200 && answer.text().contains("app"),
                    "{NAME}: {} {}",
                    answer.status,
                    answer.text()
                );
                self.served().await
            },
        )
        .await?;
        eprintln!(
            "route added -> Pebble certificate served by the edge in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(leaf)
    }
}

/// The leaf of a certificate's `chain_pem` in the API.
fn api_leaf(cert: &Value) -> Result<CertificateDer<'static>> {
    let chain = cert["chain_pem"]
        .as_str()
        .with_context(|| format!("no chain_pem in {cert}"))?;
    first_pem_certificate(chain)
}

#[test]
fn a_new_route_gets_a_certificate_from_pebble_through_the_edge() {
    run_bounded(Duration::from_secs(120), async {
        let Some(world) = world(&[]).await? else {
            return Ok(());
        };
        world.issued(Duration::from_secs(60)).await?;
        let answer = world.client.get(NAME, "/", Proto::Http2).await?;
        ensure!(
            answer.status == 200 && answer.text().contains("app"),
            "over HTTP/2: {} {}",
            answer.status,
            answer.text()
        );
        let cert = world
            .certificate()
            .await?
            .context("GET /certificates lists no certificate for the route")?;
        ensure!(
            cert["issuer"]
                .as_str()
                .is_some_and(|i| i.contains("Pebble")),
            "issuer: {cert}"
        );
        ensure!(cert["names"] == serde_json::json!([NAME]), "names: {cert}");
        ensure!(
            cert["not_after"]
                .as_str()
                .is_some_and(|t| t.len() >= 10 && t[..4].parse::<u32>().is_ok()),
            "not_after: {cert}"
        );
        ensure!(cert["last_error"].is_null(), "last_error: {cert}");
        let stored = api_leaf(&cert)?;
        ensure!(
            world.served().await? == stored,
            "the edge serves another certificate than the API's"
        );
        Ok(())
    });
}

#[test]
fn renewal_replaces_the_certificate_while_a_download_stays_open() {
    run_bounded(Duration::from_secs(150), async {
        let Some(world) = world(RENEW_EVERY_CHECK).await? else {
            return Ok(());
        };
        world.issued(Duration::from_secs(60)).await?;

        // A download read slowly until the certificate changed twice, then to the end.
        let size: u64 = 16 * 1024 * 1024;
        let mut download = world.client.connect(NAME, Proto::Http1).await?;
        let response = download
            .send(request(
                NAME,
                &format!("/bytes/{size}"),
                "GET",
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )?)
            .await?;
        ensure!(response.status() == 200, "download: {}", response.status());
        let renewed = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn({
            let renewed = renewed.clone();
            async move {
                let mut body = response.into_body();
                let (mut hasher, mut received) = (Sha256::new(), 0u64);
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame?.into_data() {
                        hasher.update(&data);
                        received += data.len() as u64;
                        if !renewed.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                anyhow::Ok((received, hex(&hasher.finalize())))
            }
        });

        let started = Instant::now();
        let first = world.served().await?;
        let first_api = world.certificate().await?.context("no certificate")?;
        let mut seen = vec![first];
        for round in 1..=2 {
            let leaf = eventually(
                "the edge serves a renewed certificate",
                Duration::from_secs(40),
                || async {
                    let leaf = world.served().await?;
                    ensure!(!seen.contains(&leaf), "still an earlier certificate");
                    Ok(leaf)
                },
            )
            .await?;
            eprintln!(
                "renewal {round}: new certificate served {:.1} s into the download",
                started.elapsed().as_secs_f64()
            );
            seen.push(leaf);
        }
        let api = world.certificate().await?.context("no certificate")?;
        // Renewals can land within one second (same not_after): the certificate itself (serial,
        // key) is what must differ.
        ensure!(
            api_leaf(&api)? != api_leaf(&first_api)?,
            "the API still shows the first certificate: {}",
            api["not_after"]
        );
        ensure!(
            !reader.is_finished(),
            "the download ended before the renewals"
        );
        renewed.store(true, Ordering::SeqCst);
        let (received, digest) = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .context("the download did not finish")???;
        ensure!(
            received == size,
            "download cut at {received} of {size} bytes"
        );
        ensure!(digest == pattern_sha256(size), "download corrupted");
        eprintln!(
            "download of {size} bytes completed across the renewals in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    });
}

#[test]
fn a_failing_renewal_is_reported_and_the_previous_certificate_keeps_serving() {
    run_bounded(Duration::from_secs(120), async {
        let Some(world) = world(RENEW_EVERY_CHECK).await? else {
            return Ok(());
        };
        world.issued(Duration::from_secs(60)).await?;

        // The name now points where nothing answers HTTP-01: the next renewal fails.
        world.named.point(NAME, Ipv4Addr::new(127, 0, 0, 3)).await?;
        let started = Instant::now();
        let failed = eventually(
            "last_error on the certificate",
            Duration::from_secs(60),
            || async {
                let cert = world.certificate().await?.context("no certificate")?;
                ensure!(cert["last_error"].is_string(), "no last_error yet: {cert}");
                Ok(cert)
            },
        )
        .await?;
        eprintln!(
            "failed renewal reported after {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            failed["last_error"]
        );

        // The edge keeps serving the certificate control holds (the last one issued, which a
        // renewal just before the failure may still be delivering), valid, and the app.
        let stored = api_leaf(&failed)?;
        eventually(
            "the edge serves control's certificate",
            Duration::from_secs(10),
            || async {
                ensure!(
                    world.served().await? == stored,
                    "the edge serves another certificate"
                );
                Ok(())
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        ensure!(
            world.served().await? == stored,
            "the served certificate changed after the failure"
        );
        let answer = world.client.get(NAME, "/", Proto::Http1).await?;
        ensure!(
            answer.status == 200 && answer.text().contains("app"),
            "after the failed renewal: {} {}",
            answer.status,
            answer.text()
        );
        let cert = world.certificate().await?.context("no certificate")?;
        ensure!(
            cert["not_after"] == failed["not_after"] && cert["last_error"].is_string(),
            "the certificate changed after the failure: {failed} -> {cert}"
        );
        Ok(())
    });
}
