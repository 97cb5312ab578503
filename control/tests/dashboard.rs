//! The dashboard and the API's access rules without a browser: the app `serve` runs (REST router
//! merged with the dashboard's) driven in-process with `oneshot`. Roles for tokens and sessions,
//! CSRF on every state change, forms that go through the API and show its error next to the
//! field, and the bound on live event streams. (The browser tests in `tests/e2e/dashboard.rs`
//! do the same through Chromium.)

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use kokoa_control::account::{Accounts, SessionPolicy};
use kokoa_control::api::{self, ApiState};
use kokoa_control::store::{self, Actor, MasterKey, Role, Store};
use kokoa_control::web::{self, Web, WebOptions};
use tower::ServiceExt;

struct App {
    router: Router,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

impl App {
    async fn start(max_streams: usize) -> Result<App> {
        let dir = tempfile::tempdir()?;
        let store = store::open(
            &format!("sqlite://{}", dir.path().join("control.db").display()),
            MasterKey::generate(),
        )
        .await?;
        let state = ApiState {
            accounts: Arc::new(Accounts::new(store.clone(), SessionPolicy::default())),
            ..ApiState::new(store.clone())
        };
        let api_router = api::router(state.clone());
        let dashboard = Web::new(
            api_router.clone(),
            store.clone(),
            state.accounts.clone(),
            WebOptions {
                secure_cookies: false,
                max_streams,
            },
        );
        state
            .accounts
            .create_user(&Actor::Cli, "root", "root password!", Role::Admin)
            .await?;
        state
            .accounts
            .create_user(&Actor::Cli, "val", "viewer password", Role::Viewer)
            .await?;
        Ok(App {
            router: api_router.merge(web::router(dashboard)),
            store,
            _dir: dir,
        })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, String)>,
    ) -> Result<(StatusCode, Vec<(String, String)>, String)> {
        let mut request = Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = match body {
            Some((kind, text)) => {
                request = request.header(header::CONTENT_TYPE, kind);
                Body::from(text)
            }
            None => Body::empty(),
        };
        let response = self.router.clone().oneshot(request.body(body)?).await?;
        let status = response.status();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((
            status,
            headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        ))
    }

    /// Logs `name` in through the login form; the session cookie and the page's CSRF token.
    async fn login(&self, name: &str, password: &str) -> Result<(String, String)> {
        let (_, headers, page) = self.send("GET", "/login", &[], None).await?;
        let login_cookie = cookie(&headers, "kokoa_login").context("login cookie")?;
        let token = hidden(&page, "_csrf").context("login form token")?;
        let form = format!(
            "name={name}&password={}&_csrf={token}",
            password.replace(' ', "+")
        );
        let (status, headers, _) = self
            .send(
                "POST",
                "/login",
                &[("cookie", &format!("kokoa_login={login_cookie}"))],
                Some(("application/x-www-form-urlencoded", form)),
            )
            .await?;
        ensure!(status == StatusCode::SEE_OTHER, "login answered {status}");
        let session = cookie(&headers, "kokoa_session").context("session cookie")?;
        let set_cookie = headers
            .iter()
            .find(|(k, v)| k == "set-cookie" && v.starts_with("kokoa_session="))
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        ensure!(
            set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
            "session cookie flags: {set_cookie}"
        );
        let cookie = format!("kokoa_session={session}");
        let (status, _, page) = self.send("GET", "/", &[("cookie", &cookie)], None).await?;
        ensure!(status == StatusCode::OK, "overview answered {status}");
        let csrf = hidden(&page, "_csrf").context("csrf in the page")?;
        Ok((cookie, csrf))
    }
}

fn cookie(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .find_map(|(_, v)| v.strip_prefix(&format!("{name}=")))
        .map(|v| v.split(';').next().unwrap_or("").to_string())
}

fn hidden(page: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page.find(&marker)? + marker.len();
    Some(page[start..].split('"').next()?.to_string())
}

const JSON: &str = "application/json";
const FORM: &str = "application/x-www-form-urlencoded";

#[tokio::test]
async fn token_roles_are_enforced() -> Result<()> {
    let app = App::start(4).await?;
    let viewer = app
        .store
        .create_api_token_with_role(&Actor::Cli, "ro", None, Role::Viewer)
        .await?;
    let admin = app.store.create_api_token(&Actor::Cli, "rw", None).await?;
    let auth = |secret: &str| format!("Bearer {secret}");
    let viewer_auth = auth(viewer.secret.expose());
    let body = || Some((JSON, r#"{"name":"home"}"#.to_string()));
    let (status, _, text) = app
        .send(
            "POST",
            "/api/v1/origins",
            &[("authorization", &viewer_auth)],
            body(),
        )
        .await?;
    ensure!(status == StatusCode::FORBIDDEN, "{status} {text}");
    ensure!(text.contains("viewer"), "{text}");
    let (status, _, _) = app
        .send(
            "GET",
            "/api/v1/origins",
            &[("authorization", &viewer_auth)],
            None,
        )
        .await?;
    ensure!(status == StatusCode::OK);
    let (status, _, _) = app
        .send(
            "POST",
            "/api/v1/origins",
            &[("authorization", &auth(admin.secret.expose()))],
            body(),
        )
        .await?;
    ensure!(status == StatusCode::CREATED);
    // A viewer may not download a bundle (it mints an enrollment token) either.
    let (status, _, _) = app
        .send(
            "GET",
            "/api/v1/origins/home/bundle",
            &[("authorization", &viewer_auth)],
            None,
        )
        .await?;
    ensure!(status == StatusCode::FORBIDDEN, "{status}");
    // Tokens are created with a role through the API.
    let (status, _, text) = app
        .send(
            "POST",
            "/api/v1/api-tokens",
            &[("authorization", &auth(admin.secret.expose()))],
            Some((JSON, r#"{"name":"dash","role":"viewer"}"#.into())),
        )
        .await?;
    ensure!(
        status == StatusCode::CREATED && text.contains(r#""role":"viewer""#),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn sessions_need_csrf_for_changes_and_viewers_change_nothing() -> Result<()> {
    let app = App::start(4).await?;
    let (cookie, csrf) = app.login("root", "root password!").await?;
    let origin = || Some((JSON, r#"{"name":"home"}"#.to_string()));
    let (status, _, _) = app
        .send("POST", "/api/v1/origins", &[("cookie", &cookie)], origin())
        .await?;
    ensure!(status == StatusCode::FORBIDDEN, "no CSRF: {status}");
    let (status, _, _) = app
        .send(
            "POST",
            "/api/v1/origins",
            &[("cookie", &cookie), ("x-csrf-token", "forged")],
            origin(),
        )
        .await?;
    ensure!(status == StatusCode::FORBIDDEN, "forged CSRF: {status}");
    let form = "_method=POST&_path=%2Forigins&_return=%2Forigins&name=home";
    let (status, _, _) = app
        .send(
            "POST",
            "/action",
            &[("cookie", &cookie)],
            Some((FORM, form.into())),
        )
        .await?;
    ensure!(
        status == StatusCode::FORBIDDEN,
        "/action without _csrf: {status}"
    );
    ensure!(
        app.store.list_origins().await?.is_empty(),
        "nothing was created"
    );

    // With the token: the form goes through the API, and the event names the user.
    let form = format!("_csrf={csrf}&{form}");
    let (status, headers, _) = app
        .send(
            "POST",
            "/action",
            &[("cookie", &cookie)],
            Some((FORM, form)),
        )
        .await?;
    ensure!(status == StatusCode::SEE_OTHER, "/action: {status}");
    ensure!(headers
        .iter()
        .any(|(k, v)| k == "location" && v == "/origins"));
    let origins = app.store.list_origins().await?;
    ensure!(origins.len() == 1 && origins[0].name == "home");
    let events = app.store.list_events(Default::default()).await?;
    ensure!(events
        .iter()
        .any(|e| e.actor == "user:root" && e.action == "created"));

    // A viewer's session: reads work, the API refuses changes even with the right token.
    let (cookie, csrf) = app.login("val", "viewer password").await?;
    let (status, _, page) = app
        .send("GET", "/origins", &[("cookie", &cookie)], None)
        .await?;
    ensure!(status == StatusCode::OK && page.contains("home"));
    ensure!(
        !page.contains("origin-create"),
        "a viewer is offered the create form"
    );
    let form = format!("_csrf={csrf}&_method=POST&_path=%2Forigins&_return=%2Forigins&name=lab");
    let (status, _, page) = app
        .send(
            "POST",
            "/action",
            &[("cookie", &cookie)],
            Some((FORM, form)),
        )
        .await?;
    ensure!(status == StatusCode::FORBIDDEN, "viewer /action: {status}");
    ensure!(page.contains("viewer role"), "the API's message is shown");
    // But their own account is theirs to change.
    let (status, _, text) = app
        .send(
            "POST",
            "/api/v1/me/totp",
            &[("cookie", &cookie), ("x-csrf-token", &csrf)],
            None,
        )
        .await?;
    ensure!(
        status == StatusCode::CREATED && text.contains("otpauth://"),
        "{status} {text}"
    );
    // Logout ends the session.
    let (status, _, _) = app
        .send(
            "POST",
            "/logout",
            &[("cookie", &cookie)],
            Some((FORM, format!("_csrf={csrf}"))),
        )
        .await?;
    ensure!(status == StatusCode::SEE_OTHER);
    let (status, _, _) = app
        .send("GET", "/api/v1/me", &[("cookie", &cookie)], None)
        .await?;
    ensure!(status == StatusCode::UNAUTHORIZED, "after logout: {status}");
    Ok(())
}

#[tokio::test]
async fn form_errors_show_the_apis_message_next_to_the_field() -> Result<()> {
    let app = App::start(4).await?;
    let (cookie, csrf) = app.login("root", "root password!").await?;
    let form = format!(
        "_csrf={csrf}&_method=POST&_path=%2Forigins&_form=origin-create&_return=%2Forigins&name=Bad+Name"
    );
    let (status, _, page) = app
        .send(
            "POST",
            "/action",
            &[("cookie", &cookie)],
            Some((FORM, form)),
        )
        .await?;
    ensure!(status == StatusCode::UNPROCESSABLE_ENTITY, "{status}");
    // The input is marked invalid, points at its error, keeps the typed value.
    let input = page
        .split("<input id=\"origin-create-name\"")
        .nth(1)
        .context("the name input")?;
    let input = input.split('>').next().unwrap_or("");
    ensure!(input.contains("aria-invalid=\"true\""), "{input}");
    ensure!(input.contains("origin-create-name-error"), "{input}");
    ensure!(input.contains("value=\"Bad Name\""), "{input}");
    ensure!(
        page.contains("id=\"origin-create-name-error\""),
        "no field error"
    );
    ensure!(
        page.contains("a name is a-z, 0-9"),
        "not the model's message, as the API gives it"
    );
    Ok(())
}

#[tokio::test]
async fn live_event_streams_are_bounded_and_carry_events() -> Result<()> {
    let app = App::start(1).await?;
    let (cookie, csrf) = app.login("root", "root password!").await?;
    let request = || {
        Request::builder()
            .uri("/events/stream")
            .header("cookie", &cookie)
            .body(Body::empty())
    };
    let first = app.router.clone().oneshot(request()?).await?;
    ensure!(first.status() == StatusCode::OK);
    // The one place is taken: a second stream is refused while the first stays open.
    let second = app.router.clone().oneshot(request()?).await?;
    ensure!(
        second.status() == StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        second.status()
    );
    // A change reaches the open stream.
    let (status, _, _) = app
        .send(
            "POST",
            "/api/v1/origins",
            &[("cookie", &cookie), ("x-csrf-token", &csrf)],
            Some((JSON, r#"{"name":"streamed"}"#.into())),
        )
        .await?;
    ensure!(status == StatusCode::CREATED);
    let mut body = first.into_body();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("origin created") {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .context("no event within 10 s")?
            .context("stream ended")??;
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    ensure!(
        seen.contains("event: audit") && seen.contains("user:root"),
        "{seen}"
    );
    // Closing it frees the place (once the stream's task has seen the close: polled, since
    // how soon that is depends on the machine's load).
    drop(body);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let again = app.router.clone().oneshot(request()?).await?;
        if again.status() == StatusCode::OK {
            break;
        }
        ensure!(
            again.status() == StatusCode::SERVICE_UNAVAILABLE
                && tokio::time::Instant::now() < deadline,
            "the place was not freed within 10 s: {}",
            again.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn pages_show_route_limits_and_the_object_a_nack_names() -> Result<()> {
    let app = App::start(4).await?;
    let (cookie, csrf) = app.login("root", "root password!").await?;
    let headers = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let post = |path: &'static str, body: serde_json::Value| {
        let app = &app;
        async move {
            let (status, _, answer) = app
                .send(
                    "POST",
                    path,
                    &headers,
                    Some(("application/json", body.to_string())),
                )
                .await?;
            ensure!(status == StatusCode::CREATED, "{path}: {status} {answer}");
            Ok::<serde_json::Value, anyhow::Error>(serde_json::from_str(&answer)?)
        }
    };
    post("/api/v1/origins", serde_json::json!({"name": "home"})).await?;
    let service = post(
        "/api/v1/origins/home/services",
        serde_json::json!({"name": "web", "port": 8001}),
    )
    .await?;
    let edge = post(
        "/api/v1/edge-nodes",
        serde_json::json!({"name": "vps1", "origins": ["home"]}),
    )
    .await?;
    post(
        "/api/v1/routes",
        serde_json::json!({
            "hostname": "app.example.com",
            "service_id": service["id"],
            "limits": {"rate": 10, "burst": 20, "max_body_bytes": 1048576,
                       "allow": ["10.0.0.0/8"], "deny": ["10.9.0.0/16"]},
        }),
    )
    .await?;

    // The routes list summarises the limits; the edit form holds each value.
    let (status, _, page) = app
        .send("GET", "/routes", &[("cookie", &cookie)], None)
        .await?;
    ensure!(status == StatusCode::OK, "{status}");
    let row = page
        .split("data-route=\"app.example.com\"")
        .nth(1)
        .and_then(|rest| rest.split("</tr>").next())
        .context("the route's row")?;
    for part in ["10/s, burst 20", "body ≤ 1.0 MiB", "allow 1", "deny 1"] {
        ensure!(row.contains(part), "{part} missing from {row}");
    }
    let (status, _, page) = app
        .send(
            "GET",
            "/routes/app.example.com",
            &[("cookie", &cookie)],
            None,
        )
        .await?;
    ensure!(status == StatusCode::OK, "{status}");
    for value in ["10.0.0.0/8", "10.9.0.0/16", "1048576", "value=\"20\""] {
        ensure!(page.contains(value), "{value} missing from the edit form");
    }

    // A node's NACK, as the gRPC service records it: the edge page and the overview name the
    // version, the node's reason and the object to fix.
    let edge_id: kokoa_control::store::Id = serde_json::from_value(edge["id"].clone())?;
    app.store
        .record_config_nack(
            kokoa_control::store::NodeId::Edge(edge_id),
            &kokoa_control::store::Nack {
                version: 7,
                error: "invalid network".into(),
                object: Some(kokoa_control::store::NackObject {
                    kind: "route".into(),
                    key: "app.example.com".into(),
                    field: "routes[0].limits.allow[0]".into(),
                }),
            },
        )
        .await?;
    let shown = "v7: invalid network in route app.example.com (routes[0].limits.allow[0])";
    for path in ["/edges/vps1", "/"] {
        let (status, _, page) = app.send("GET", path, &[("cookie", &cookie)], None).await?;
        ensure!(status == StatusCode::OK, "{path}: {status}");
        ensure!(
            page.contains(shown),
            "{path} does not show the NACK: {page}"
        );
    }
    Ok(())
}
