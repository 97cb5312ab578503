//! The dashboard in a real browser: headless Chromium (Debian's `chromium` +
//! `chromium-driver`) over WebDriver against a real `kokoa-control serve` on HTTPS, with real
//! edges and origins started from their bundles.
//!
//! With `KOKOA_SCREENSHOTS=docs/screenshots` these tests also write the README's screenshots
//! (desktop and phone sizes).

use std::time::Duration;

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use kokoa_tests::apps::HttpApp;
use kokoa_tests::browser::{self, Browser, DESKTOP, PHONE};
use kokoa_tests::client::{EdgeClient, Proto};
use kokoa_tests::control::{id, Control, Node};
use kokoa_tests::eventually;
use kokoa_tests::net::{free_udp, loopback};
use kokoa_tests::pki::TestCa;
use serde_json::{json, Value};

use crate::run_bounded;

async fn browser_for(control: &Control, dir: &std::path::Path) -> anyhow::Result<Browser> {
    let cert = control.server_certificate().await?;
    Browser::start(dir, &browser::spki_sha256(&cert)?).await
}

async fn login(b: &Browser, control: &Control, name: &str, password: &str) -> anyhow::Result<()> {
    b.open(&format!("{}/login", control.url())).await?;
    b.fill("#name", name).await?;
    b.fill("#password", password).await?;
    b.click("#login button[type=submit]").await?;
    Ok(())
}

/// Waits until the page at the browser's URL has `selector`, reloading in between.
async fn until_present(b: &Browser, selector: &str, within: Duration) -> anyhow::Result<()> {
    eventually(&format!("{selector} on the page"), within, || async {
        if b.has(selector).await? {
            return Ok(());
        }
        b.client.refresh().await?;
        anyhow::bail!("not yet: {}", b.url().await)
    })
    .await
}

#[test]
fn dashboard_login_with_password_and_totp_refuses_a_wrong_code() {
    if !browser::available("dashboard_login_with_password_and_totp_refuses_a_wrong_code") {
        return;
    }
    run_bounded(Duration::from_secs(120), async {
        let dir = tempfile::tempdir()?;
        let control = Control::start(dir.path()).await?;
        let password = control.add_user("alice", "admin").await?;
        let b = browser_for(&control, dir.path()).await?;

        // The login page, then the overview.
        b.open(&format!("{}/", control.url())).await?;
        ensure!(
            b.url().await.ends_with("/login"),
            "not sent to the login page: {}",
            b.url().await
        );
        b.screenshot("login.png", DESKTOP).await?;
        login(&b, &control, "alice", "wrong password!").await?;
        ensure!(
            b.text("#login .error")
                .await?
                .contains("wrong user name, password or code"),
            "a wrong password is refused"
        );
        login(&b, &control, "alice", &password).await?;
        b.find("#live").await?;

        // Enrol TOTP: the QR code (an SVG) and the secret, then confirm with a current code.
        b.open(&format!("{}/account", control.url())).await?;
        b.click("#totp-begin button").await?;
        b.find("figure.qr svg").await?;
        let secret = b.text("#totp-secret").await?;
        b.screenshot("account-totp.png", DESKTOP).await?;
        b.fill("#totp-confirm-code", "12345").await?;
        b.click("#totp-confirm button").await?;
        // The refusal arrives with the next page: wait for it rather than look at once.
        b.find("#totp-confirm-error")
            .await
            .context("a malformed confirmation code is refused with the API's message")?;
        b.fill("#totp-confirm-code", &browser::totp_code(&secret, 0)?)
            .await?;
        b.click("#totp-confirm button").await?;
        let codes = b.text("#recovery-codes").await?;
        ensure!(codes.lines().count() == 10, "ten recovery codes: {codes}");

        // Log out; log in again: the password now leads to the code step.
        b.click("header form.inline button").await?;
        b.find("#login").await?;
        login(&b, &control, "alice", &password).await?;
        b.find("#totp").await?;
        ensure!(b.url().await.ends_with("/login/totp"));
        b.screenshot("login-totp.png", DESKTOP).await?;
        b.screenshot("login-totp-phone.png", PHONE).await?;
        // A wrong code is refused and the step stays.
        let right = browser::totp_code(&secret, 1)?;
        let wrong = if right == "000000" {
            "111111"
        } else {
            "000000"
        };
        b.fill("#code", wrong).await?;
        b.click("#totp button").await?;
        ensure!(
            b.text("#code-error")
                .await?
                .contains("wrong user name, password or code"),
            "a wrong code is refused"
        );
        ensure!(
            b.url().await.ends_with("/login/totp"),
            "still on the code step"
        );
        ensure!(
            !b.has("#live").await?,
            "no dashboard without the second factor"
        );
        // The code of the next step (the current one was spent on enrolment) logs in.
        b.fill("#code", &right).await?;
        b.click("#totp button").await?;
        b.find("#live").await?;
        // The audit trail recorded the failed code and the logins.
        let events = control
            .ok("GET", "/events?entity=user&limit=100", None)
            .await?;
        let actions: Vec<&str> = events
            .as_array()
            .context("events")?
            .iter()
            .filter_map(|e| e["action"].as_str())
            .collect();
        ensure!(actions.contains(&"login_failed"), "{actions:?}");
        ensure!(actions.contains(&"totp_enabled"), "{actions:?}");
        b.close().await?;
        Ok(())
    });
}

#[test]
fn dashboard_builds_a_route_that_a_running_edge_serves_and_shows_the_edge_go_offline() {
    if !browser::available("dashboard_builds_a_route_that_a_running_edge_serves") {
        return;
    }
    run_bounded(Duration::from_secs(240), async {
        let dir = tempfile::tempdir()?;
        let app = HttpApp::start("dash-app", loopback(1)).await?;
        let control = Control::start(dir.path()).await?;
        let password = control.add_user("admin", "admin").await?;
        let b = browser_for(&control, dir.path()).await?;
        login(&b, &control, "admin", &password).await?;
        b.find("#live").await?;
        let url = control.url();

        // An origin with a bad name first: the API's message lands next to the field.
        b.open(&format!("{url}/origins")).await?;
        b.fill("#origin-create-name", "Home Lab").await?;
        b.click("#origin-create button[type=submit]").await?;
        let error = b.text(".field.invalid .field-error").await?;
        ensure!(error.contains("a name is a-z, 0-9"), "field error: {error}");
        ensure!(
            b.find("#origin-create-name")
                .await?
                .prop("value")
                .await?
                .as_deref()
                == Some("Home Lab"),
            "the typed value is kept"
        );
        b.fill("#origin-create-name", "home").await?;
        b.click("#origin-create button[type=submit]").await?;
        b.find("a[href='/origins/home']").await?;

        // Its service, on the origin's page.
        b.open(&format!("{url}/origins/home")).await?;
        b.fill("#service-create-name", "web").await?;
        b.fill("#service-create-port", "8001").await?;
        b.fill("#service-create-local_address", &app.addr.to_string())
            .await?;
        b.click("#service-create button[type=submit]").await?;
        b.find("details.edit").await?;

        // An edge serving it.
        let tunnel = free_udp(loopback(2))?;
        b.open(&format!("{url}/edges")).await?;
        b.fill("#edge-create-name", "edge1").await?;
        b.fill("#edge-create-endpoint", &tunnel.to_string()).await?;
        b.click("input[name='origins:list'][value='home']").await?;
        b.click("#edge-create button[type=submit]").await?;
        b.find("a[href='/edges/edge1']").await?;

        // A certificate, uploaded in the UI.
        let ca = TestCa::new()?;
        let issued = ca.issue(&["ctl.test", "*.ctl.test"])?;
        b.open(&format!("{url}/certificates")).await?;
        b.fill("#cert-upload-chain_pem", &issued.chain_pem).await?;
        b.fill("#cert-upload-key_pem", &issued.key_pem).await?;
        b.click("#cert-upload button[type=submit]").await?;
        b.find(".toast").await?;

        // The nodes, from their bundles (as an operator installs them).
        let origin_id = id(&control.ok("GET", "/origins/home", None).await?)?;
        let edge_id = id(&control.ok("GET", "/edge-nodes/edge1", None).await?)?;
        let _origin = Node::origin(&control, &origin_id, &dir.path().join("home")).await?;
        let mut edge = Node::edge(
            &control,
            &edge_id,
            &dir.path().join("edge1"),
            std::net::IpAddr::V4(kokoa_tests::control::Fleet::EDGE_IP),
            tunnel,
        )
        .await?;

        // The route, with an alias and a rate limit.
        b.open(&format!("{url}/routes")).await?;
        b.fill("#route-create-hostname", "app.ctl.test").await?;
        b.fill("#route-create-aliases", "www.ctl.test").await?;
        b.fill("#route-create-limits\\.rate", "50").await?;
        b.click("#route-create button[type=submit]").await?;
        b.find("tr[data-route='app.ctl.test']").await?;

        // Fetched through the running edge.
        let https = edge.https.context("edge https")?;
        let client = EdgeClient::new(https, &ca)?;
        for host in ["app.ctl.test", "www.ctl.test"] {
            eventually(
                &format!("{host} served through the edge"),
                Duration::from_secs(30),
                || async {
                    let answer = client.get(host, "/", Proto::Http1).await?;
                    ensure!(
                        answer.status == 200 && answer.text().contains("dash-app"),
                        "{host}: {} {}",
                        answer.status,
                        answer.text()
                    );
                    Ok(())
                },
            )
            .await?;
        }

        // The overview shows the edge online with its heartbeat, then offline once killed,
        // without a reload (the page refreshes its panels itself).
        b.open(&format!("{url}/")).await?;
        until_present(
            &b,
            "tr[data-edge='edge1'] [data-state='online'], tr[data-edge='edge1'] [data-state='degraded']",
            Duration::from_secs(30),
        )
        .await?;
        eventually("edge1 heartbeats", Duration::from_secs(30), || async {
            let status = control.ok("GET", "/status", None).await?;
            let node = status["nodes"]
                .as_array()
                .context("nodes")?
                .iter()
                .find(|n| n["name"] == "edge1")
                .cloned()
                .unwrap_or(Value::Null);
            ensure!(node["last_heartbeat"].is_string(), "{node}");
            Ok(())
        })
        .await?;
        b.open(&format!("{url}/")).await?;
        b.find("tr[data-edge='edge1']").await?;
        b.screenshot("overview.png", DESKTOP).await?;
        b.screenshot("overview-phone.png", PHONE).await?;
        b.open(&format!("{url}/edges/edge1")).await?;
        b.find("#figures-h").await?;
        b.screenshot("edge.png", DESKTOP).await?;
        b.screenshot("edge-phone.png", PHONE).await?;
        b.open(&format!("{url}/routes")).await?;
        b.screenshot("routes.png", DESKTOP).await?;
        b.screenshot("routes-phone.png", PHONE).await?;

        b.open(&format!("{url}/")).await?;
        let before = b.text("tr[data-edge='edge1'] .state").await?;
        ensure!(before != "offline", "edge1 is up before the kill: {before}");
        edge.kill().await?;
        eventually(
            "the overview shows edge1 offline",
            Duration::from_secs(40),
            || async {
                let state = b.text("tr[data-edge='edge1'] .state").await?;
                ensure!(state == "offline", "edge1 shows {state}");
                Ok(())
            },
        )
        .await?;
        ensure!(
            b.url().await.ends_with('/'),
            "the overview was not reloaded by hand"
        );
        b.close().await?;
        Ok(())
    });
}

#[test]
fn dashboard_viewer_changes_nothing_and_csrf_is_required() {
    if !browser::available("dashboard_viewer_changes_nothing_and_csrf_is_required") {
        return;
    }
    run_bounded(Duration::from_secs(120), async {
        let dir = tempfile::tempdir()?;
        let control = Control::start(dir.path()).await?;
        control
            .ok("POST", "/origins", Some(json!({"name": "home"})))
            .await?;
        let admin_password = control.add_user("root", "admin").await?;
        let viewer_password = control.add_user("val", "viewer").await?;
        let url = control.url();

        // The viewer sees everything, with no control that changes anything.
        let b = browser_for(&control, dir.path()).await?;
        login(&b, &control, "val", &viewer_password).await?;
        b.find("#live").await?;
        ensure!(b.text("[data-role]").await? == "viewer");
        for page in [
            "/origins",
            "/origins/home",
            "/edges",
            "/routes",
            "/certificates",
            "/tokens",
            "/users",
        ] {
            b.open(&format!("{url}{page}")).await?;
            b.find("main h1").await?;
            ensure!(
                !b.has("main form[action='/action']").await?
                    && !b.has("main form[method='post']").await?,
                "{page} offers a change to a viewer"
            );
        }
        // The API refuses the viewer's session even with a valid CSRF token.
        let session = b.cookie("kokoa_session").await?;
        b.open(&format!("{url}/")).await?;
        let csrf = b
            .find("header input[name='_csrf']")
            .await?
            .attr("value")
            .await?
            .context("csrf value")?;
        let cookie = format!("kokoa_session={session}");
        let body = Some((
            "application/json",
            Bytes::from_static(br#"{"name":"evil"}"#),
        ));
        let (status, answer) = control
            .request(
                "POST",
                "/api/v1/origins",
                body.clone(),
                &[("cookie", &cookie), ("x-csrf-token", &csrf)],
            )
            .await?;
        ensure!(
            status == 403,
            "viewer POST answered {status}: {}",
            String::from_utf8_lossy(&answer)
        );
        let (status, _) = control
            .request("GET", "/api/v1/origins", None, &[("cookie", &cookie)])
            .await?;
        ensure!(status == 200, "viewer GET answered {status}");
        // A form posted by hand is refused by the API behind /action too.
        let form =
            format!("_csrf={csrf}&_method=POST&_path=%2Forigins&_return=%2Forigins&name=evil");
        let (status, _) = control
            .request(
                "POST",
                "/action",
                Some(("application/x-www-form-urlencoded", Bytes::from(form))),
                &[("cookie", &cookie)],
            )
            .await?;
        ensure!(status == 403, "viewer /action answered {status}");
        b.close().await?;

        // An admin session: state changes without the CSRF token are refused, with it they work.
        let b = browser_for(&control, dir.path()).await?;
        login(&b, &control, "root", &admin_password).await?;
        b.find("#live").await?;
        // The session cookie is out of scripts' reach, HTTPS only, and never sent cross-site.
        let flags = b.cookie_flags("kokoa_session").await?;
        ensure!(
            flags == (true, true, Some("Strict".to_string())),
            "session cookie flags (HttpOnly, Secure, SameSite): {flags:?}"
        );
        let session = b.cookie("kokoa_session").await?;
        let csrf = b
            .find("header input[name='_csrf']")
            .await?
            .attr("value")
            .await?
            .context("csrf value")?;
        let cookie = format!("kokoa_session={session}");
        let (status, _) = control
            .request(
                "POST",
                "/api/v1/origins",
                body.clone(),
                &[("cookie", &cookie)],
            )
            .await?;
        ensure!(status == 403, "cookie POST without CSRF answered {status}");
        let (status, _) = control
            .request(
                "POST",
                "/api/v1/origins",
                body.clone(),
                &[("cookie", &cookie), ("x-csrf-token", "forged")],
            )
            .await?;
        ensure!(
            status == 403,
            "cookie POST with a forged CSRF token answered {status}"
        );
        let form = "_method=POST&_path=%2Forigins&_return=%2Forigins&name=evil";
        let (status, _) = control
            .request(
                "POST",
                "/action",
                Some(("application/x-www-form-urlencoded", Bytes::from(form))),
                &[("cookie", &cookie)],
            )
            .await?;
        ensure!(status == 403, "/action without _csrf answered {status}");
        let (status, _) = control
            .request(
                "GET",
                "/api/v1/origins/home/bundle",
                None,
                &[("cookie", &cookie)],
            )
            .await?;
        ensure!(
            status == 403,
            "a bundle (mints a token) without CSRF answered {status}"
        );
        let origins = control.ok("GET", "/origins", None).await?;
        ensure!(
            origins.as_array().map(Vec::len) == Some(1),
            "nothing was created: {origins}"
        );
        let (status, _) = control
            .request(
                "POST",
                "/api/v1/origins",
                body,
                &[("cookie", &cookie), ("x-csrf-token", &csrf)],
            )
            .await?;
        ensure!(
            status == 201,
            "cookie POST with the CSRF token answered {status}"
        );
        b.close().await?;
        Ok(())
    });
}
