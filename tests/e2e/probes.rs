//! Service probes (README "Health"): the origin probes each service; a service that fails its
//! probes is down, its tunnel port refuses streams, and the edge answers its route with an
//! immediate 503 "service down" page while other routes are served; when the app is back the
//! next passing probe serves it again.

use std::time::Duration;

use anyhow::{ensure, Context as _};
use kokoa_tests::apps::HttpApp;
use kokoa_tests::client::{Answer, EdgeClient, Proto};
use kokoa_tests::control::{Fleet, FleetOptions};
use kokoa_tests::eventually;
use kokoa_tests::net::{loopback, metric};
use kokoa_tests::topology::Builder;

use crate::run_bounded;

/// Probes every second, down after two failures, up after one pass: a stopped app is refused
/// within about two seconds (one probe window: interval x unhealthy threshold).
pub const FAST_CHECKS: &str =
    "interval = 1\ntimeout_ms = 500\nunhealthy_threshold = 2\nhealthy_threshold = 1";

/// Whether `answer` is the edge's own "service down" page.
pub fn is_service_down(answer: &Answer) -> bool {
    answer.status == 503
        && answer
            .headers
            .get("kokoa-error")
            .is_some_and(|v| v == "service-down")
        && answer.headers.get("retry-after").is_some()
        && answer.text().contains("Service down")
}

/// Waits (bounded) until `host` answers with the "service down" page.
pub async fn wait_service_down(client: &EdgeClient, host: &str) -> anyhow::Result<()> {
    kokoa_tests::eventually(
        &format!("{host} answers 503 service down"),
        Duration::from_secs(15),
        || {
            let client = client.clone();
            let host = host.to_owned();
            async move {
                let answer = client.get(&host, "/", Proto::Http1).await?;
                ensure!(
                    is_service_down(&answer),
                    "still {} {:?} {}",
                    answer.status,
                    answer.headers,
                    answer.text()
                );
                Ok(())
            }
        },
    )
    .await
}

/// Waits (bounded) until `host` is served by its app again.
pub async fn wait_served(client: &EdgeClient, host: &str) -> anyhow::Result<()> {
    kokoa_tests::eventually(
        &format!("{host} served again"),
        Duration::from_secs(15),
        || {
            let client = client.clone();
            let host = host.to_owned();
            async move {
                let answer = client.get(&host, "/", Proto::Http1).await?;
                ensure!(answer.status == 200, "still {}", answer.status);
                Ok(())
            }
        },
    )
    .await
}

#[test]
fn a_stopped_app_is_answered_503_service_down_at_once_and_served_again_when_back() {
    run_bounded(Duration::from_secs(120), async {
        let mut alpha = HttpApp::start("alpha", loopback(1)).await?;
        let beta = HttpApp::start("beta", loopback(1)).await?;
        let alpha_addr = alpha.addr;
        let topology = Builder::new()
            .origin(
                "home",
                &[("web", 8001, alpha.addr), ("api", 8002, beta.addr)],
            )
            .health_path(8001, "/healthz")
            .origin_checks(FAST_CHECKS)
            .route("alpha.test", "home", 8001)
            .route("beta.test", "home", 8002)
            .start()
            .await?;
        let client = topology.client()?;
        let origin = topology.origin("home")?;
        let edge_admin = topology.edge.spec.admin;
        let origin_admin = origin.spec.admin;

        let answer = client.get("alpha.test", "/", Proto::Http1).await?;
        ensure!(answer.status == 200, "alpha before: {}", answer.status);

        alpha.stop().await;
        wait_service_down(&client, "alpha.test").await?;
        // The origin has judged it down (a request that raced the judgement may have been
        // reset after its connect: 502); from now on its port refuses every stream.
        eventually(
            "the origin judges web down",
            Duration::from_secs(15),
            || async {
                let healthy = metric(
                    origin_admin,
                    "kokoa_origin_service_healthy{service=\"web\"}",
                )
                .await?;
                ensure!(healthy == Some(0.0), "web healthy = {healthy:?}");
                Ok(())
            },
        )
        .await?;
        // Every further request is the edge's own answer, on both protocols, counted as such.
        let before = metric(
            edge_admin,
            "kokoa_edge_service_down_total{host=\"alpha.test\"}",
        )
        .await?
        .context("no service_down counter for alpha.test")?;
        for proto in [Proto::Http1, Proto::Http2, Proto::Http1, Proto::Http2] {
            let answer = client.get("alpha.test", "/x", proto).await?;
            ensure!(
                is_service_down(&answer),
                "{proto:?}: {} {}",
                answer.status,
                answer.text()
            );
        }
        let after = metric(
            edge_admin,
            "kokoa_edge_service_down_total{host=\"alpha.test\"}",
        )
        .await?
        .unwrap_or(0.0);
        ensure!(after >= before + 4.0, "service_down {before} -> {after}");
        // The origin refused them in the tunnel, and says why in its metrics.
        let healthy = metric(
            origin_admin,
            "kokoa_origin_service_healthy{service=\"web\"}",
        )
        .await?;
        ensure!(healthy == Some(0.0), "web healthy = {healthy:?}");
        let fails = metric(
            origin_admin,
            "kokoa_origin_service_probes_total{service=\"web\",result=\"fail\"}",
        )
        .await?
        .unwrap_or(0.0);
        // Streams whose app refused count like failed probes (only web fails here).
        let refused = metric(origin_admin, "kokoa_origin_local_connect_failures_total{")
            .await?
            .unwrap_or(0.0);
        ensure!(
            fails + refused >= 2.0,
            "web: {fails} failed probes, {refused} refused streams"
        );
        // The other service of the same origin is untouched.
        for proto in [Proto::Http1, Proto::Http2] {
            let answer = client.get("beta.test", "/", proto).await?;
            ensure!(answer.status == 200, "beta {proto:?}: {}", answer.status);
        }
        let healthy = metric(
            origin_admin,
            "kokoa_origin_service_healthy{service=\"api\"}",
        )
        .await?;
        ensure!(healthy == Some(1.0), "api healthy = {healthy:?}");

        // The app comes back where it was: the next passing probe serves it again.
        let _alpha = HttpApp::start_on("alpha", alpha_addr).await?;
        wait_served(&client, "alpha.test").await?;
        let answer = client.get("alpha.test", "/", Proto::Http2).await?;
        ensure!(answer.status == 200, "alpha over h2: {}", answer.status);
        let logs = origin.process.logs();
        ensure!(
            logs.contains("service down") && logs.contains("service up"),
            "the origin logged no down/up:\n{logs}"
        );
        Ok(())
    });
}

#[test]
fn control_shows_a_service_down_then_up_with_events_history_and_metrics() {
    run_bounded(Duration::from_secs(150), async {
        let mut web = HttpApp::start("web", loopback(1)).await?;
        let api = HttpApp::start("api", loopback(1)).await?;
        let web_addr = web.addr;
        let fleet = Fleet::start_with(
            &["home"],
            &[
                ("home", "web", 8001, web.addr),
                ("home", "api", 8002, api.addr),
            ],
            &[
                ("web.ctl.test", "home", "web"),
                ("api.ctl.test", "home", "api"),
            ],
            FleetOptions {
                // Heartbeats every second, so control sees the origin's report at once.
                control_args: vec!["--heartbeat-interval".into(), "1".into()],
                origin_checks: FAST_CHECKS.into(),
                ..FleetOptions::default()
            },
        )
        .await?;
        fleet
            .serves("web.ctl.test", "web", Duration::from_secs(20))
            .await?;
        let control = &fleet.control;
        let service_row = |show: &str, state: &str| {
            show.lines()
                .any(|line| line.starts_with("web ") && line.contains(state))
        };
        eventually("control shows web up", Duration::from_secs(20), || async {
            let show = control.cli(&["origin", "show", "home"]).await?;
            ensure!(service_row(&show, " up"), "{show}");
            Ok(())
        })
        .await?;

        web.stop().await;
        let client = fleet.client()?;
        wait_service_down(&client, "web.ctl.test").await?;
        let answer = client.get("api.ctl.test", "/", Proto::Http1).await?;
        ensure!(
            answer.status == 200,
            "api while web is down: {}",
            answer.status
        );
        eventually(
            "control shows web down",
            Duration::from_secs(20),
            || async {
                let show = control.cli(&["origin", "show", "home"]).await?;
                ensure!(
                    service_row(&show, "down") && show.contains("TCP connect"),
                    "{show}"
                );
                Ok(())
            },
        )
        .await?;
        let metrics = |body: &str, value: &str| {
            body.lines().any(|line| {
                line.starts_with("kokoa_service_up{")
                    && line.contains("service=\"web\"")
                    && line.ends_with(value)
            })
        };
        // The health checker records the change on its next judgement (each second).
        eventually(
            "control's metrics show web down",
            Duration::from_secs(10),
            || async {
                let (status, body) = control.request("GET", "/metrics", None, &[]).await?;
                let body = String::from_utf8_lossy(&body).into_owned();
                ensure!(
                    status == 200 && metrics(&body, " 0"),
                    "control /metrics:\n{body}"
                );
                Ok(())
            },
        )
        .await?;

        let _web = HttpApp::start_on("web", web_addr).await?;
        wait_served(&client, "web.ctl.test").await?;
        eventually(
            "control shows web up again",
            Duration::from_secs(20),
            || async {
                let show = control.cli(&["origin", "show", "home"]).await?;
                ensure!(service_row(&show, " up"), "{show}");
                Ok(())
            },
        )
        .await?;

        // The audit trail has service.down, then service.up, naming the origin and service.
        eventually(
            "control recorded web up",
            Duration::from_secs(10),
            || async {
                let checks = control
                    .ok("GET", "/health-checks?kind=service&success=true", None)
                    .await?;
                ensure!(checks.as_array().is_some_and(|c| c.len() >= 3), "{checks}");
                Ok(())
            },
        )
        .await?;
        let events = control.ok("GET", "/events?entity=service", None).await?;
        let actions: Vec<String> = events
            .as_array()
            .context("events are a list")?
            .iter()
            .filter(|e| e["detail"]["service"] == "web")
            .filter_map(|e| e["action"].as_str().map(str::to_owned))
            .filter(|action| action == "down" || action == "up")
            .collect();
        ensure!(
            actions == ["down", "up"],
            "service events {actions:?}: {events}"
        );
        // The history: a failed and a passed service check of web.
        let checks = control
            .ok("GET", "/health-checks?kind=service", None)
            .await?;
        let web_checks: Vec<bool> = checks
            .as_array()
            .context("checks are a list")?
            .iter()
            .filter(|c| {
                c["target"]
                    .as_str()
                    .is_some_and(|t| t.contains(&web_addr.to_string()))
            })
            .filter_map(|c| c["success"].as_bool())
            .collect();
        ensure!(
            web_checks.contains(&false) && web_checks.first() == Some(&true),
            "service history of web (newest first): {web_checks:?}: {checks}"
        );
        eventually(
            "control's metrics show web up",
            Duration::from_secs(10),
            || async {
                let (_, body) = control.request("GET", "/metrics", None, &[]).await?;
                let body = String::from_utf8_lossy(&body).into_owned();
                ensure!(metrics(&body, " 1"), "control /metrics:\n{body}");
                ensure!(
                    body.contains("kokoa_health_checks_total{check=\"service\",result=\"fail\"} 1"),
                    "{body}"
                );
                Ok(())
            },
        )
        .await?;
        Ok(())
    });
}
