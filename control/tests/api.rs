//! The REST API over a real SQLite store, served on 127.0.0.1:0 and called over HTTP with the
//! CLI's client: every resource's create / list / get / update / delete, each 4xx the issue
//! names (bad hostname, duplicate route, unknown origin, port out of range, missing or bad
//! token), bundles, and that every endpoint in the OpenAPI document is routed.
//!
//! Why this file is longer than ~1,000 lines: it walks the whole REST vocabulary (see
//! `store/model.rs`) through one served harness.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use hyper::{Method, StatusCode};
use kokoa_control::api::openapi::ENDPOINTS;
use kokoa_control::api::{
    self, ApiState, EdgeView, ErrorBody, LiveNode, LiveNodes, OriginView, RouteView, ServiceView,
    TcpRouteView,
};
use kokoa_control::bundle::BundleSettings;
use kokoa_control::cli::client::{ApiClient, ClientError};
use kokoa_control::store::{
    self, Actor, ApiToken, Certificate, Event, IssuedApiToken, IssuedNodeToken, MasterKey, NodeId,
    NodeToken, Store,
};
use serde_json::{json, Value};

const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nTESTCA\n-----END CERTIFICATE-----\n";

struct Harness {
    store: Arc<dyn Store>,
    /// Authenticated as token "test".
    api: ApiClient,
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Result<Harness> {
        Harness::start_with(None).await
    }

    async fn start_with(live: Option<Arc<dyn LiveNodes>>) -> Result<Harness> {
        let dir = tempfile::tempdir()?;
        let store = store::open(
            &format!("sqlite://{}", dir.path().join("control.db").display()),
            MasterKey::generate(),
        )
        .await?;
        let token = store.create_api_token(&Actor::Cli, "test", None).await?;
        let state = ApiState {
            store: store.clone(),
            bundle: Some(Arc::new(BundleSettings {
                control_url: "https://control.test:7443".into(),
                ca_pem: CA_PEM.into(),
                enrollment_ttl: Duration::from_secs(600),
            })),
            live,
            ..ApiState::new(store.clone())
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(api::serve(listener, state, async move {
            let _ = stopped.await;
        }));
        let api = ApiClient::new(&url, Some(token.secret.expose().to_string()))?;
        Ok(Harness {
            store,
            api,
            url,
            _stop: stop,
            _dir: dir,
        })
    }

    fn client(&self, token: Option<&str>) -> Result<ApiClient> {
        Ok(ApiClient::new(&self.url, token.map(str::to_string))?)
    }

    /// Sends raw JSON text and returns the status and decoded error body.
    async fn raw(&self, method: Method, path: &str, body: &str) -> Result<(StatusCode, Value)> {
        let (status, bytes) = self
            .api
            .send(method, path, Some(body.as_bytes().to_vec()))
            .await?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("not JSON: {:?}", String::from_utf8_lossy(&bytes)))?
        };
        Ok((status, value))
    }

    async fn origin(&self, name: &str) -> Result<OriginView> {
        Ok(self.api.post("/origins", &json!({"name": name})).await?)
    }

    async fn service(&self, origin: &str, name: &str, port: u16) -> Result<ServiceView> {
        Ok(self
            .api
            .post(
                &format!("/origins/{origin}/services"),
                &json!({"name": name, "port": port}),
            )
            .await?)
    }
}

/// Asserts an API error's status and field.
fn expect_error<T: std::fmt::Debug>(
    result: Result<T, ClientError>,
    status: StatusCode,
    field: Option<&str>,
) -> Result<String> {
    match result {
        Err(ClientError::Api {
            status: got,
            message,
            field: got_field,
        }) => {
            ensure!(got == status, "expected {status}, got {got}: {message}");
            ensure!(
                got_field.as_deref() == field,
                "expected field {field:?}, got {got_field:?} ({message})"
            );
            ensure!(!message.is_empty(), "empty error message");
            Ok(message)
        }
        other => anyhow::bail!("expected {status}, got {other:?}"),
    }
}

#[tokio::test]
async fn tokens_are_required_and_checked() -> Result<()> {
    let h = Harness::start().await?;
    for token in [None, Some("kokoa_api_wrong"), Some("")] {
        let client = h.client(token)?;
        let (status, bytes) = client.send(Method::GET, "/origins", None).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "token {token:?}");
        let body: ErrorBody = serde_json::from_slice(&bytes)?;
        assert!(!body.error.is_empty());
    }
    // The header says how to authenticate.
    let raw = reqwest_free_get(&h.url, "/api/v1/routes").await?;
    assert!(raw.starts_with("HTTP/1.1 401"), "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{raw}"
    );

    // A second token works, and stops working once revoked.
    let issued: IssuedApiToken = h.api.post("/api-tokens", &json!({"name": "ci"})).await?;
    let second = h.client(Some(issued.secret.expose()))?;
    let _: Vec<OriginView> = second.get("/origins").await?;
    let tokens: Vec<ApiToken> = h.api.get("/api-tokens").await?;
    assert_eq!(
        tokens.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["ci", "test"]
    );
    let revoked: ApiToken = h
        .api
        .json(
            Method::DELETE,
            &format!("/api-tokens/{}", issued.token.id),
            &json!({}),
        )
        .await?;
    assert!(revoked.revoked_at.is_some());
    expect_error(
        second.get::<Vec<OriginView>>("/origins").await,
        StatusCode::UNAUTHORIZED,
        None,
    )?;
    expect_error(
        h.api
            .post::<_, IssuedApiToken>("/api-tokens", &json!({"name": "ci"}))
            .await,
        StatusCode::CONFLICT,
        Some("name"),
    )?;

    // Public: the OpenAPI document and the readiness probe.
    let anonymous = h.client(None)?;
    let doc: Value = anonymous.get("/openapi.json").await?;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/v1/routes"]["post"].is_object());
    for path in ["/api/v1/tcp-routes", "/api/v1/tcp-routes/{route}"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} documented");
    }
    let schemas = &doc["components"]["schemas"];
    // Request bodies refuse unknown fields, as the API does (422 naming the field).
    for body in [
        "RouteCreate",
        "RoutePatch",
        "TcpRouteCreate",
        "EdgeCreate",
        "CertificateUpload",
    ] {
        assert_eq!(
            schemas[body]["additionalProperties"], false,
            "{body} is strict in the document"
        );
    }
    assert!(
        schemas["TcpRouteCreate"]["properties"]["proxy_protocol"].is_object()
            && schemas["EdgeCreate"]["properties"]["limits"].is_object()
            && schemas["Nack"]["properties"]["object"].is_object(),
        "TCP routes, edge limits and the NACK's object are described"
    );
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 50, "{}", refs.len());
    for reference in refs {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .context("local schema ref")?;
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {reference}"
        );
    }
    let health = reqwest_free_get(&h.url, "/healthz").await?;
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok"),
        "{health}"
    );
    Ok(())
}

/// Every `$ref` in a JSON document.
fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("$ref", Value::String(target)) => out.push(target.clone()),
                    _ => collect_refs(inner, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, out)),
        _ => {}
    }
}

/// A raw HTTP/1.1 GET (to see headers the client hides).
async fn reqwest_free_get(base: &str, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut out)).await??;
    Ok(out)
}

#[tokio::test]
async fn origins_crud_and_errors() -> Result<()> {
    let h = Harness::start().await?;
    let home = h.origin("home").await?;
    assert_eq!(home.address.to_string(), "10.100.1.1");
    assert_eq!(home.network.to_string(), "10.100.1.0/24");
    assert!(home.origin.managed_key);
    let office = h.origin("office").await?;
    assert_eq!(office.origin.subnet, 2);

    let list: Vec<OriginView> = h.api.get("/origins").await?;
    assert_eq!(
        list.iter()
            .map(|o| o.origin.name.as_str())
            .collect::<Vec<_>>(),
        ["home", "office"]
    );
    let by_name: OriginView = h.api.get("/origins/home").await?;
    let by_id: OriginView = h.api.get(&format!("/origins/{}", home.origin.id)).await?;
    assert_eq!(by_name.origin.id, by_id.origin.id);

    let renamed: OriginView = h
        .api
        .json(Method::PATCH, "/origins/office", &json!({"name": "branch"}))
        .await?;
    assert_eq!(renamed.origin.name, "branch");

    let rotated: OriginView = h.api.post("/origins/home/rotate-key", &json!({})).await?;
    assert_ne!(rotated.origin.public_key, home.origin.public_key);
    let own_key = kokoa_model::key::PrivateKey::generate().public_key();
    let rotated: OriginView = h
        .api
        .post(
            "/origins/home/rotate-key",
            &json!({"public_key": own_key.to_base64()}),
        )
        .await?;
    assert_eq!(rotated.origin.public_key, own_key);
    assert!(!rotated.origin.managed_key);

    // Errors.
    expect_error(
        h.api
            .post::<_, OriginView>("/origins", &json!({"name": "home"}))
            .await,
        StatusCode::CONFLICT,
        Some("name"),
    )?;
    expect_error(
        h.api
            .post::<_, OriginView>("/origins", &json!({"name": "Bad Name"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("name"),
    )?;
    expect_error(
        h.api
            .post::<_, OriginView>("/origins", &json!({"nom": "x"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("nom"),
    )?;
    expect_error(
        h.api
            .post::<_, OriginView>("/origins", &json!({"name": "k", "public_key": "nope"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("public_key"),
    )?;
    let (status, body) = h.raw(Method::POST, "/origins", "{\"name\": ").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("JSON")),
        "{body}"
    );
    expect_error(
        h.api.get::<OriginView>("/origins/nowhere").await,
        StatusCode::NOT_FOUND,
        None,
    )?;
    expect_error(
        h.api
            .get::<OriginView>(&format!("/origins/{}", uuid::Uuid::new_v4()))
            .await,
        StatusCode::NOT_FOUND,
        None,
    )?;
    expect_error(
        h.api.get::<Value>("/no-such-thing").await,
        StatusCode::NOT_FOUND,
        None,
    )?;

    h.api.delete("/origins/branch").await?;
    expect_error(
        h.api.delete("/origins/branch").await,
        StatusCode::NOT_FOUND,
        None,
    )?;
    Ok(())
}

#[tokio::test]
async fn services_crud_and_port_validation() -> Result<()> {
    let h = Harness::start().await?;
    h.origin("home").await?;
    let web = h.service("home", "web", 8001).await?;
    assert_eq!(web.service.local_address, "127.0.0.1:8001");
    assert_eq!(web.origin, "home");
    let ssh: ServiceView = h
        .api
        .post(
            "/origins/home/services",
            &json!({"name": "ssh", "port": 22, "protocol": "tcp", "local_address": "127.0.0.1:2222"}),
        )
        .await?;

    for port in [0, 65536, 70000] {
        expect_error(
            h.api
                .post::<_, ServiceView>(
                    "/origins/home/services",
                    &json!({"name": "x", "port": port}),
                )
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("port"),
        )?;
    }
    expect_error(
        h.api
            .post::<_, ServiceView>("/origins/home/services", &json!({"name": "x", "port": -1}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("port"),
    )?;
    expect_error(
        h.api
            .post::<_, ServiceView>(
                "/origins/home/services",
                &json!({"name": "x", "port": "80"}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("port"),
    )?;
    expect_error(
        h.api
            .post::<_, ServiceView>(
                "/origins/home/services",
                &json!({"name": "dup", "port": 8001}),
            )
            .await,
        StatusCode::CONFLICT,
        Some("port"),
    )?;
    expect_error(
        h.api
            .post::<_, ServiceView>(
                "/origins/nowhere/services",
                &json!({"name": "x", "port": 80}),
            )
            .await,
        StatusCode::NOT_FOUND,
        None,
    )?;
    expect_error(
        h.api
            .post::<_, ServiceView>(
                "/origins/home/services",
                &json!({"name": "x", "port": 81, "health_path": "nope"}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("health_path"),
    )?;

    let all: Vec<ServiceView> = h.api.get("/services").await?;
    assert_eq!(all.len(), 2);
    let of_home: Vec<ServiceView> = h.api.get("/services?origin=home").await?;
    assert_eq!(of_home.len(), 2);
    let by_name: ServiceView = h.api.get("/origins/home/services/web").await?;
    assert_eq!(by_name.service.id, web.service.id);
    let by_id: ServiceView = h.api.get(&format!("/services/{}", ssh.service.id)).await?;
    assert_eq!(by_id.service.name, "ssh");

    let changed: ServiceView = h
        .api
        .json(
            Method::PATCH,
            "/origins/home/services/web",
            &json!({"port": 8080, "health_path": "/healthz"}),
        )
        .await?;
    assert_eq!(changed.service.port, 8080);
    assert_eq!(changed.service.health_path.as_deref(), Some("/healthz"));
    let cleared: ServiceView = h
        .api
        .json(
            Method::PATCH,
            &format!("/services/{}", web.service.id),
            &json!({"health_path": null}),
        )
        .await?;
    assert_eq!(cleared.service.health_path, None);

    h.api.delete("/origins/home/services/ssh").await?;
    h.api
        .delete(&format!("/services/{}", web.service.id))
        .await?;
    let all: Vec<ServiceView> = h.api.get("/services").await?;
    assert!(all.is_empty());
    Ok(())
}

#[tokio::test]
async fn edges_with_origin_assignment() -> Result<()> {
    let h = Harness::start().await?;
    h.origin("home").await?;
    h.origin("office").await?;
    let edge: EdgeView = h
        .api
        .post(
            "/edge-nodes",
            &json!({"name": "vps1", "endpoint": "198.51.100.7:51820", "origins": ["home"]}),
        )
        .await?;
    assert_eq!(edge.origins.len(), 1);
    assert_eq!(edge.origins[0].origin, "home");
    assert_eq!(edge.origins[0].address.to_string(), "10.100.1.10");
    assert_eq!(edge.origins[0].origin_address.to_string(), "10.100.1.1");

    expect_error(
        h.api
            .post::<_, EdgeView>(
                "/edge-nodes",
                &json!({"name": "vps2", "origins": ["nowhere"]}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("origins[0]"),
    )?;
    expect_error(
        h.api
            .post::<_, EdgeView>(
                "/edge-nodes",
                &json!({"name": "vps2", "endpoint": "host:99999"}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("endpoint"),
    )?;
    expect_error(
        h.api
            .post::<_, EdgeView>("/edge-nodes", &json!({"name": "vps1"}))
            .await,
        StatusCode::CONFLICT,
        Some("name"),
    )?;

    let assigned: Value = h
        .api
        .json(Method::PUT, "/edge-nodes/vps1/origins/office", &json!({}))
        .await?;
    assert_eq!(assigned["address"], "10.100.2.10");
    expect_error(
        h.api
            .json::<_, Value>(Method::PUT, "/edge-nodes/vps1/origins/office", &json!({}))
            .await,
        StatusCode::CONFLICT,
        None,
    )?;
    let served: Vec<Value> = h.api.get("/edge-nodes/vps1/origins").await?;
    assert_eq!(served.len(), 2);
    let of_office: Vec<EdgeView> = h.api.get("/origins/office/edge-nodes").await?;
    assert_eq!(of_office.len(), 1);
    assert_eq!(of_office[0].edge.name, "vps1");
    h.api.delete("/edge-nodes/vps1/origins/office").await?;
    let of_office: Vec<EdgeView> = h.api.get("/origins/office/edge-nodes").await?;
    assert!(of_office.is_empty());

    let changed: EdgeView = h
        .api
        .json(
            Method::PATCH,
            "/edge-nodes/vps1",
            &json!({"public_ip": "198.51.100.7", "region": "fra1"}),
        )
        .await?;
    assert_eq!(changed.edge.region.as_deref(), Some("fra1"));
    assert_eq!(changed.edge.endpoint.as_deref(), Some("198.51.100.7:51820"));
    let rotated: EdgeView = h
        .api
        .post("/edge-nodes/vps1/rotate-key", &json!({}))
        .await?;
    assert_ne!(rotated.edge.public_key, edge.edge.public_key);

    let list: Vec<EdgeView> = h.api.get("/edge-nodes").await?;
    assert_eq!(list.len(), 1);
    let history: Vec<Value> = h.api.get("/edge-nodes/vps1/health-history?limit=5").await?;
    assert!(history.is_empty());
    expect_error(
        h.api
            .get::<Vec<Value>>("/edge-nodes/vps1/health-history?limit=x")
            .await,
        StatusCode::BAD_REQUEST,
        None,
    )?;
    h.api
        .delete(&format!("/edge-nodes/{}", edge.edge.id))
        .await?;
    expect_error(
        h.api.get::<EdgeView>("/edge-nodes/vps1").await,
        StatusCode::NOT_FOUND,
        None,
    )?;
    Ok(())
}

#[tokio::test]
async fn routes_crud_and_the_issue_errors() -> Result<()> {
    let h = Harness::start().await?;
    h.origin("home").await?;
    let web = h.service("home", "web", 8001).await?;
    let api_svc = h.service("home", "api", 8002).await?;

    let route: RouteView = h
        .api
        .post(
            "/routes",
            &json!({"hostname": "App.Example.com", "origin": "home", "service": "web", "aliases": ["www.example.com"]}),
        )
        .await?;
    assert_eq!(route.route.hostname, "app.example.com");
    assert_eq!(
        (route.origin.as_str(), route.service.as_str(), route.port),
        ("home", "web", 8001)
    );
    let by_id: RouteView = h
        .api
        .post(
            "/routes",
            &json!({"hostname": "*.example.net", "service_id": api_svc.service.id}),
        )
        .await?;
    assert_eq!(by_id.service, "api");

    // Bad host name.
    for bad in ["exa mple.com", "-a.example.com", "a..b", "http://x.com"] {
        expect_error(
            h.api
                .post::<_, RouteView>(
                    "/routes",
                    &json!({"hostname": bad, "origin": "home", "service": "web"}),
                )
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("hostname"),
        )?;
    }
    // Duplicate route (as host name and as alias): 409 naming the field that collides.
    for dup in ["app.example.com", "www.example.com"] {
        expect_error(
            h.api
                .post::<_, RouteView>(
                    "/routes",
                    &json!({"hostname": dup, "origin": "home", "service": "web"}),
                )
                .await,
            StatusCode::CONFLICT,
            Some("hostname"),
        )?;
    }
    expect_error(
        h.api
            .post::<_, RouteView>(
                "/routes",
                &json!({"hostname": "fresh.example.com", "origin": "home", "service": "web",
                        "aliases": ["other.example.com", "www.example.com"]}),
            )
            .await,
        StatusCode::CONFLICT,
        Some("aliases[1]"),
    )?;
    // Unknown origin, unknown service, no target.
    expect_error(
        h.api
            .post::<_, RouteView>(
                "/routes",
                &json!({"hostname": "x.example.com", "origin": "nowhere", "service": "web"}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("origin"),
    )?;
    expect_error(
        h.api
            .post::<_, RouteView>(
                "/routes",
                &json!({"hostname": "x.example.com", "origin": "home", "service": "nope"}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("service"),
    )?;
    expect_error(
        h.api
            .post::<_, RouteView>("/routes", &json!({"hostname": "x.example.com"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("service_id"),
    )?;

    let list: Vec<RouteView> = h.api.get("/routes").await?;
    assert_eq!(
        list.iter()
            .map(|r| r.route.hostname.as_str())
            .collect::<Vec<_>>(),
        ["*.example.net", "app.example.com"]
    );
    let by_host: RouteView = h.api.get("/routes/app.example.com").await?;
    assert_eq!(by_host.route.id, route.route.id);
    let moved: RouteView = h
        .api
        .json(
            Method::PATCH,
            "/routes/app.example.com",
            &json!({"service": "api", "aliases": []}),
        )
        .await?;
    assert_eq!((moved.service.as_str(), moved.port), ("api", 8002));
    assert!(moved.route.aliases.is_empty());

    // A service in use cannot be deleted.
    expect_error(
        h.api
            .delete(&format!("/services/{}", api_svc.service.id))
            .await,
        StatusCode::CONFLICT,
        None,
    )?;
    h.api.delete("/routes/app.example.com").await?;
    h.api.delete(&format!("/routes/{}", by_id.route.id)).await?;
    h.api
        .delete(&format!("/services/{}", web.service.id))
        .await?;
    expect_error(
        h.api.get::<RouteView>("/routes/app.example.com").await,
        StatusCode::NOT_FOUND,
        None,
    )?;

    // Every change is in the audit trail under the token's name.
    let events: Vec<Event> = h.api.get("/events?entity=route&limit=10").await?;
    assert!(events.len() >= 4, "{events:?}");
    assert!(events.iter().all(|e| e.actor == "api:test"));
    expect_error(
        h.api.get::<Vec<Event>>("/events?entity=spaceship").await,
        StatusCode::BAD_REQUEST,
        None,
    )?;
    Ok(())
}

#[tokio::test]
async fn certificates_upload_without_leaking_keys() -> Result<()> {
    let h = Harness::start().await?;
    let cert = rcgen::generate_simple_self_signed(vec!["app.example.com".to_string()])?;
    let key_pem = cert.key_pair.serialize_pem();
    let uploaded: Certificate = h
        .api
        .post(
            "/certificates",
            &json!({"chain_pem": cert.cert.pem(), "key_pem": key_pem}),
        )
        .await?;
    assert_eq!(uploaded.names, ["app.example.com"]);
    assert!(uploaded.not_after.is_some());
    let (_, list) = h.api.send(Method::GET, "/certificates", None).await?;
    let list = String::from_utf8_lossy(&list);
    assert!(
        list.contains("app.example.com") && !list.contains("PRIVATE KEY"),
        "{list}"
    );
    let got: Certificate = h.api.get(&format!("/certificates/{}", uploaded.id)).await?;
    assert_eq!(got.id, uploaded.id);
    expect_error(
        h.api
            .post::<_, Certificate>(
                "/certificates",
                &json!({"chain_pem": "nope", "key_pem": key_pem}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("chain_pem"),
    )?;
    expect_error(
        h.api
            .post::<_, Certificate>(
                "/certificates",
                &json!({"chain_pem": cert.cert.pem(), "key_pem": "nope"}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("key_pem"),
    )?;
    h.api
        .delete(&format!("/certificates/{}", uploaded.id))
        .await?;
    let list: Vec<Certificate> = h.api.get("/certificates").await?;
    assert!(list.is_empty());
    Ok(())
}

#[tokio::test]
async fn node_tokens_enroll_once_and_revoke() -> Result<()> {
    let h = Harness::start().await?;
    h.origin("home").await?;
    let edge: EdgeView = h.api.post("/edge-nodes", &json!({"name": "vps1"})).await?;
    let issued: IssuedNodeToken = h
        .api
        .post("/edge-nodes/vps1/tokens", &json!({"ttl_seconds": 600}))
        .await?;
    assert_eq!(issued.token.node, NodeId::Edge(edge.edge.id));
    let enrollment = h.store.enroll(issued.secret.expose()).await?;
    assert_eq!(enrollment.node, NodeId::Edge(edge.edge.id));
    assert!(
        h.store.enroll(issued.secret.expose()).await.is_err(),
        "second use"
    );

    let origin_token: IssuedNodeToken = h.api.post("/origins/home/tokens", &json!({})).await?;
    let listed: Vec<NodeToken> = h.api.get("/origins/home/tokens").await?;
    assert_eq!(listed.len(), 1);
    let all: Vec<NodeToken> = h.api.get("/node-tokens").await?;
    assert_eq!(
        all.len(),
        3,
        "edge enrollment + credential + origin enrollment"
    );
    let of_edge: Vec<NodeToken> = h.api.get("/edge-nodes/vps1/tokens").await?;
    assert_eq!(of_edge.len(), 2);
    let revoked: NodeToken = h
        .api
        .json(
            Method::DELETE,
            &format!("/node-tokens/{}", origin_token.token.id),
            &json!({}),
        )
        .await?;
    assert!(revoked.revoked_at.is_some());
    assert!(
        h.store.enroll(origin_token.secret.expose()).await.is_err(),
        "revoked"
    );
    expect_error(
        h.api
            .post::<_, IssuedNodeToken>("/origins/home/tokens", &json!({"ttl_seconds": 0}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("ttl_seconds"),
    )?;
    Ok(())
}

#[tokio::test]
async fn status_lists_every_node() -> Result<()> {
    let h = Harness::start().await?;
    h.origin("home").await?;
    let edge: EdgeView = h
        .api
        .post("/edge-nodes", &json!({"name": "vps1", "origins": ["home"]}))
        .await?;
    h.store
        .record_config_ack(NodeId::Edge(edge.edge.id), h.store.config_version().await?)
        .await?;
    h.store
        .record_config_nack(
            NodeId::Edge(edge.edge.id),
            &store::Nack {
                version: 99,
                error: "routes[0].port: bad route".into(),
                object: Some(store::NackObject {
                    kind: "route".into(),
                    key: "app.example.com".into(),
                    field: "routes[0].port".into(),
                }),
            },
        )
        .await?;
    let status: Value = h.api.get("/status").await?;
    let nodes = status["nodes"].as_array().context("nodes")?;
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0]["kind"], "edge");
    assert_eq!(nodes[0]["in_sync"], true);
    assert_eq!(nodes[0]["nack"]["error"], "routes[0].port: bad route");
    assert_eq!(
        nodes[0]["nack"]["object"],
        json!({"kind": "route", "key": "app.example.com", "field": "routes[0].port"})
    );
    assert_eq!(nodes[0]["connected"], Value::Null);
    assert_eq!(nodes[1]["name"], "home");
    assert_eq!(nodes[1]["in_sync"], false);
    let list: Vec<Value> = h.api.get("/nodes").await?;
    assert_eq!(list.len(), 2);
    Ok(())
}

#[tokio::test]
async fn node_detail_names_peers_and_shows_figures_and_checks() -> Result<()> {
    let h = Harness::start().await?;
    let home = h.origin("home").await?;
    let web = h.service("home", "web", 8001).await?;
    let edge: EdgeView = h
        .api
        .post(
            "/edge-nodes",
            &json!({"name": "vps1", "origins": ["home"], "public_ip": "127.0.0.9",
                    "admin_address": "127.0.0.1:9090"}),
        )
        .await?;
    assert_eq!(edge.edge.admin_address.as_deref(), Some("127.0.0.1:9090"));
    let heartbeat = kokoa_control::health::Heartbeat {
        applied_version: 3,
        requests_per_second: 7.5,
        memory_bytes: 1 << 20,
        peers: vec![kokoa_control::health::heartbeat::PeerHeartbeat {
            public_key: home.origin.public_key.to_base64(),
            up: true,
            last_handshake_age_ms: Some(4000),
            ..Default::default()
        }],
        ..Default::default()
    };
    h.store
        .record_heartbeat(NodeId::Edge(edge.edge.id), heartbeat.to_value())
        .await?;
    h.store
        .set_node_state(
            &Actor::System,
            NodeId::Edge(edge.edge.id),
            store::NodeStatus::Online,
            "heartbeat 1 s ago",
        )
        .await?;
    let now = time::OffsetDateTime::now_utc();
    h.store
        .record_health_checks(vec![
            store::NewHealthCheck {
                kind: store::CheckKind::Public,
                target: "https://127.0.0.9:443/healthz".into(),
                edge_id: Some(edge.edge.id),
                origin_id: None,
                service_id: None,
                success: true,
                response_time_ms: Some(3),
                error: None,
                checked_at: now,
            },
            store::NewHealthCheck {
                kind: store::CheckKind::Service,
                target: "tcp 127.0.0.1:8001".into(),
                edge_id: None,
                origin_id: Some(home.origin.id),
                service_id: Some(web.service.id),
                success: false,
                response_time_ms: None,
                error: Some("connection refused".into()),
                checked_at: now,
            },
        ])
        .await?;
    let detail: api::NodeDetail = h.api.get("/edge-nodes/vps1/status").await?;
    assert_eq!(detail.status.status, store::NodeStatus::Online);
    assert_eq!(detail.status.reason.as_deref(), Some("heartbeat 1 s ago"));
    assert!(detail.status.since.is_some());
    assert_eq!(detail.public_ip, Some("127.0.0.9".parse()?));
    assert_eq!(detail.peers.len(), 1);
    assert_eq!(detail.peers[0].name.as_deref(), Some("home"));
    assert_eq!(detail.peers[0].peer.last_handshake_age_ms, Some(4000));
    assert_eq!(
        detail.heartbeat.as_ref().map(|h| h.requests_per_second),
        Some(7.5)
    );
    assert_eq!(detail.checks.len(), 1, "only the edge's own checks");
    assert_eq!(detail.checks[0].kind, Some(store::CheckKind::Public));
    let origin: api::NodeDetail = h.api.get("/origins/home/status").await?;
    assert_eq!(origin.status.status, store::NodeStatus::Enrolling);
    assert_eq!(origin.checks.len(), 1);
    assert_eq!(origin.checks[0].service_id, Some(web.service.id));
    // The history endpoints serve what was recorded.
    let history: Vec<Value> = h.api.get("/edge-nodes/vps1/health-history").await?;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["target"], "https://127.0.0.9:443/healthz");
    let failed: Vec<Value> = h
        .api
        .get("/health-checks?success=false&kind=service")
        .await?;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["error"], "connection refused");
    expect_error(
        h.api.get::<Value>("/health-checks?kind=bogus").await,
        StatusCode::BAD_REQUEST,
        None,
    )?;
    // An operator's drain and an admin address are edge fields (PATCH).
    let drained: EdgeView = h
        .api
        .json(
            Method::PATCH,
            "/edge-nodes/vps1",
            &json!({"draining": true, "admin_address": null}),
        )
        .await?;
    assert!(drained.edge.draining);
    assert_eq!(drained.edge.admin_address, None);
    expect_error(
        h.api
            .json::<_, Value>(
                Method::PATCH,
                "/edge-nodes/vps1",
                &json!({"admin_address": "not an address"}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("admin_address"),
    )?;
    Ok(())
}

/// A gRPC registry stand-in: the nodes in the mutex are "connected".
struct FakeLive(std::sync::Mutex<Vec<LiveNode>>);

impl LiveNodes for FakeLive {
    fn connected(&self) -> Vec<LiveNode> {
        self.0.lock().map(|nodes| nodes.clone()).unwrap_or_default()
    }
}

#[tokio::test]
async fn status_overlays_the_live_connections() -> Result<()> {
    let live = Arc::new(FakeLive(std::sync::Mutex::new(Vec::new())));
    let h = Harness::start_with(Some(live.clone())).await?;
    h.origin("home").await?;
    let edge: EdgeView = h.api.post("/edge-nodes", &json!({"name": "vps1"})).await?;
    let beat = time::OffsetDateTime::now_utc();
    live.0
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .push(LiveNode {
            node: NodeId::Edge(edge.edge.id),
            applied_version: Some(1),
            last_heartbeat: Some(beat),
            nack: Some(store::Nack {
                version: 2,
                error: "cannot bind 0.0.0.0:443".into(),
                object: None,
            }),
            in_sync: true,
        });
    let nodes: Vec<Value> = h.api.get("/nodes").await?;
    assert_eq!(nodes[0]["name"], "vps1");
    assert_eq!(nodes[0]["connected"], true);
    assert_eq!(nodes[0]["in_sync"], true);
    assert_eq!(nodes[0]["applied_version"], 1);
    assert_eq!(nodes[0]["nack"]["version"], 2);
    assert!(nodes[0]["last_heartbeat"].is_string());
    assert_eq!(nodes[1]["name"], "home");
    assert_eq!(nodes[1]["connected"], false);
    assert_eq!(nodes[1]["in_sync"], false);
    Ok(())
}

#[tokio::test]
async fn bundles_carry_config_ca_and_a_working_token() -> Result<()> {
    let h = Harness::start().await?;
    let origin = h.origin("home").await?;
    h.api
        .post::<_, EdgeView>(
            "/edge-nodes",
            &json!({"name": "vps1", "endpoint": "edge.example.com:51821", "origins": ["home"]}),
        )
        .await?;
    for (kind, name, collection) in [
        ("edge", "vps1", "edge-nodes"),
        ("origin", "home", "origins"),
    ] {
        let (status, bytes) = h
            .api
            .send(Method::GET, &format!("/{collection}/{name}/bundle"), None)
            .await?;
        assert_eq!(status, StatusCode::OK);
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let mut files = BTreeMap::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.display().to_string();
            let mut text = String::new();
            entry.read_to_string(&mut text)?;
            files.insert(path, text);
        }
        let dir = format!("kokoa-{kind}-{name}");
        let mut names: Vec<String> = files.keys().cloned().collect();
        names.sort();
        let mut expected = vec![
            format!("{dir}/control-ca.pem"),
            format!("{dir}/enroll.token"),
            format!("{dir}/install.sh"),
            format!("{dir}/kokoa-{kind}.service"),
            format!("{dir}/{kind}.toml"),
        ];
        expected.sort();
        assert_eq!(names, expected);
        assert_eq!(files[&format!("{dir}/control-ca.pem")], CA_PEM);
        let config: toml::Value = toml::from_str(&files[&format!("{dir}/{kind}.toml")])?;
        assert_eq!(
            config["control"]["url"].as_str(),
            Some("https://control.test:7443")
        );
        assert_eq!(
            config["control"]["ca_file"].as_str(),
            Some("control-ca.pem")
        );
        assert_eq!(
            config["control"]["token_file"].as_str(),
            Some("enroll.token")
        );
        if kind == "edge" {
            assert_eq!(config["tunnel"]["listen"].as_str(), Some("0.0.0.0:51821"));
        }
        // The token is fresh and enrolls this very node.
        let token = files[&format!("{dir}/enroll.token")].trim().to_string();
        let enrolled = h.store.enroll(&token).await?;
        match (kind, enrolled.node) {
            ("edge", NodeId::Edge(_)) => {}
            ("origin", NodeId::Origin(id)) => assert_eq!(id, origin.origin.id),
            other => anyhow::bail!("enrolled the wrong node: {other:?}"),
        }
    }
    expect_error(
        h.api
            .call(Method::GET, "/origins/nowhere/bundle", None)
            .await,
        StatusCode::NOT_FOUND,
        None,
    )?;
    Ok(())
}

#[tokio::test]
async fn every_documented_endpoint_is_routed_and_bodies_are_limited() -> Result<()> {
    let h = Harness::start().await?;
    for endpoint in ENDPOINTS {
        let path = endpoint
            .path
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') {
                    "unknown-thing"
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let method = Method::from_bytes(endpoint.method.to_ascii_uppercase().as_bytes())?;
        let body = endpoint.body.map(|_| b"{}".to_vec());
        let (status, bytes) = h.api.send(method.clone(), &path, body).await?;
        let text = String::from_utf8_lossy(&bytes);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            !text.contains("no such API endpoint"),
            "{method} {path} is documented but not routed"
        );
        assert!(status.as_u16() < 500, "{method} {path}: {status} {text}");
    }
    let (status, body) = h.raw(Method::PUT, "/origins", "{}").await?;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["error"].as_str().is_some(), "{body}");
    let big = format!("{{\"name\": \"{}\"}}", "a".repeat(api::BODY_LIMIT + 10));
    let (status, _) = h.raw(Method::POST, "/origins", &big).await?;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    Ok(())
}

/// Issue 15's list of things control used to accept and every node then refused: each is now a
/// 422 naming the field, and nothing of it is stored.
#[tokio::test]
async fn the_model_refuses_what_a_node_would_naming_the_field() -> Result<()> {
    let h = Harness::start().await?;
    h.origin("home").await?;
    let web = h.service("home", "web", 8001).await?;
    let route: RouteView = h
        .api
        .post(
            "/routes",
            &json!({"hostname": "app.example.com", "service_id": web.service.id}),
        )
        .await?;
    let version = h.store.config_version().await?;
    let path = format!("/routes/{}", route.route.id);
    // The typo of the issue, and limits no edge accepts.
    for (limits, field) in [
        (json!({"alow": ["10.0.0.0/8"]}), "limits.alow"),
        (json!({"rate": "fast"}), "limits.rate"),
        (json!({"rate": -1}), "limits.rate"),
        (json!({"allow": ["10.0.0.0/8", "nope"]}), "limits.allow[1]"),
        (json!({"max_body_bytes": -5}), "limits.max_body_bytes"),
    ] {
        let message = expect_error(
            h.api
                .json::<_, RouteView>(Method::PATCH, &path, &json!({ "limits": limits }))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(field),
        )?;
        assert!(!message.is_empty(), "{field}");
    }
    let limits_without_rate = expect_error(
        h.api
            .json::<_, RouteView>(Method::PATCH, &path, &json!({"limits": {"burst": 3}}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("limits"),
    )?;
    assert!(
        limits_without_rate.contains("without a rate"),
        "{limits_without_rate}"
    );
    // A misspelt field of a service is not ignored (it used to create a service pointing at
    // the default 127.0.0.1:8002).
    expect_error(
        h.api
            .post::<_, ServiceView>(
                "/origins/home/services",
                &json!({"name": "api", "port": 8002, "local": "127.0.0.1:28001"}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("local"),
    )?;
    // Node names are identifiers (no dots); host names have no `_`.
    expect_error(
        h.api
            .post::<_, OriginView>("/origins", &json!({"name": "home.lab"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("name"),
    )?;
    expect_error(
        h.api
            .post::<_, RouteView>(
                "/routes",
                &json!({"hostname": "a_b.example.com", "service_id": web.service.id}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("hostname"),
    )?;
    expect_error(
        h.api
            .post::<_, RouteView>(
                "/routes",
                &json!({"hostname": "b.example.com", "aliases": ["ok.example.com", "x y"], "service_id": web.service.id}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("aliases[1]"),
    )?;
    assert_eq!(
        h.store.config_version().await?,
        version,
        "nothing refused reached the store"
    );
    // A local address that resolves only on the origin host is accepted (the origin resolves
    // it when a stream arrives; it is that service's problem if it does not).
    let db: ServiceView = h
        .api
        .post(
            "/origins/home/services",
            &json!({"name": "db", "port": 5432, "protocol": "tcp", "local_address": "db.internal:5432"}),
        )
        .await?;
    assert_eq!(db.service.local_address, "db.internal:5432");
    // Valid limits are stored typed and shown back.
    let limited: RouteView = h
        .api
        .json(
            Method::PATCH,
            &path,
            &json!({"limits": {"rate": 10, "burst": 20, "allow": ["10.1.2.3/8"]}}),
        )
        .await?;
    assert_eq!(
        serde_json::to_value(&limited.route.limits)?,
        json!({"rate": 10.0, "burst": 20, "allow": ["10.0.0.0/8"]})
    );
    Ok(())
}

#[tokio::test]
async fn tcp_routes_crud_and_conflicts() -> Result<()> {
    let h = Harness::start().await?;
    h.origin("home").await?;
    h.api
        .post::<_, ServiceView>(
            "/origins/home/services",
            &json!({"name": "db", "port": 5432, "protocol": "tcp"}),
        )
        .await?;
    let created: TcpRouteView = h
        .api
        .post(
            "/tcp-routes",
            &json!({"listen_port": 15432, "origin": "home", "service": "db",
                    "proxy_protocol": "v2", "allow": ["10.0.0.0/8"]}),
        )
        .await?;
    assert_eq!(
        (
            created.route.listen_port.get(),
            created.port,
            created.origin.as_str()
        ),
        (15432, 5432, "home")
    );
    assert_eq!(created.route.proxy_protocol, store::ProxyProtocol::V2);
    let by_port: TcpRouteView = h.api.get("/tcp-routes/15432").await?;
    assert_eq!(by_port.route.id, created.route.id);
    for (body, field) in [
        (
            json!({"listen_port": 0, "origin": "home", "service": "db"}),
            "listen_port",
        ),
        (
            json!({"listen_port": 70000, "origin": "home", "service": "db"}),
            "listen_port",
        ),
        (
            json!({"listen_port": 1, "origin": "home", "service": "db", "allow": ["nope"]}),
            "allow[0]",
        ),
        (
            json!({"listen_port": 1, "origin": "home", "service": "db", "proxy_protocol": "v1"}),
            "proxy_protocol",
        ),
        (
            json!({"listen_port": 1, "origin": "home", "service": "db", "alow": []}),
            "alow",
        ),
        (
            json!({"listen_port": 1, "origin": "home", "service": "nope"}),
            "service",
        ),
    ] {
        expect_error(
            h.api.post::<_, TcpRouteView>("/tcp-routes", &body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(field),
        )?;
    }
    expect_error(
        h.api
            .post::<_, TcpRouteView>(
                "/tcp-routes",
                &json!({"listen_port": 15432, "origin": "home", "service": "db"}),
            )
            .await,
        StatusCode::CONFLICT,
        Some("listen_port"),
    )?;
    let changed: TcpRouteView = h
        .api
        .json(
            Method::PATCH,
            "/tcp-routes/15432",
            &json!({"listen_port": 25432, "proxy_protocol": "none", "deny": ["192.0.2.0/24"]}),
        )
        .await?;
    assert_eq!(changed.route.listen_port.get(), 25432);
    assert_eq!(changed.route.allow.len(), 1, "untouched");
    assert_eq!(changed.route.deny[0].to_string(), "192.0.2.0/24");
    let list: Vec<TcpRouteView> = h.api.get("/tcp-routes").await?;
    assert_eq!(list.len(), 1);
    // The service is in use.
    expect_error(
        h.api.delete("/origins/home/services/db").await,
        StatusCode::CONFLICT,
        None,
    )?;
    h.api.delete("/tcp-routes/25432").await?;
    expect_error(
        h.api.get::<TcpRouteView>("/tcp-routes/25432").await,
        StatusCode::NOT_FOUND,
        None,
    )?;
    let events: Vec<Event> = h.api.get("/events?entity=tcp_route").await?;
    assert_eq!(
        events.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["created", "updated", "deleted"]
    );
    Ok(())
}

#[tokio::test]
async fn edges_take_limits_and_tunnel_settings() -> Result<()> {
    let h = Harness::start().await?;
    let edge: EdgeView = h
        .api
        .post(
            "/edge-nodes",
            &json!({"name": "vps1", "limits": {"rate": 10, "max_connections": 500},
                    "tunnel": {"mtu": 1280}}),
        )
        .await?;
    let limits = serde_json::to_value(&edge.edge.limits)?;
    assert_eq!(limits["rate"], json!(10.0));
    assert_eq!(limits["max_connections"], json!(500));
    assert_eq!(
        limits["connections_per_client"],
        json!(256),
        "defaults filled in"
    );
    assert_eq!(
        serde_json::to_value(edge.edge.tunnel)?,
        json!({"mtu": 1280})
    );
    for (body, field) in [
        (
            json!({"limits": {"max_conections": 5}}),
            "limits.max_conections",
        ),
        (json!({"limits": {"ipv4_prefix": 33}}), "limits.ipv4_prefix"),
        (json!({"tunnel": {"mtu": 70000}}), "tunnel.mtu"),
        (json!({"tunnel": {"tcp_buffer": 1}}), "tunnel.tcp_buffer"),
        (
            json!({"tunnel": {"overlay": "10.0.0.0/8"}}),
            "tunnel.overlay",
        ),
    ] {
        expect_error(
            h.api
                .json::<_, EdgeView>(Method::PATCH, "/edge-nodes/vps1", &body)
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(field),
        )?;
    }
    let cleared: EdgeView = h
        .api
        .json(
            Method::PATCH,
            "/edge-nodes/vps1",
            &json!({"limits": null, "tunnel": {"tcp_buffer": 65536}}),
        )
        .await?;
    assert!(cleared.edge.limits.is_none());
    assert_eq!(
        serde_json::to_value(cleared.edge.tunnel)?,
        json!({"tcp_buffer": 65536})
    );
    Ok(())
}

#[tokio::test]
async fn certificates_are_checked_at_upload_and_listed_as_served() -> Result<()> {
    let h = Harness::start().await?;
    let cert = rcgen::generate_simple_self_signed(vec![
        "app.example.com".to_string(),
        "www.example.com".to_string(),
    ])?;
    let other = rcgen::generate_simple_self_signed(vec!["app.example.com".to_string()])?;
    // Another certificate's key.
    expect_error(
        h.api
            .post::<_, Certificate>(
                "/certificates",
                &json!({"chain_pem": cert.cert.pem(), "key_pem": other.key_pair.serialize_pem()}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("key_pem"),
    )?;
    // Claimed names must be the certificate's.
    expect_error(
        h.api
            .post::<_, Certificate>(
                "/certificates",
                &json!({"chain_pem": cert.cert.pem(), "key_pem": cert.key_pair.serialize_pem(),
                        "names": ["app.example.com", "admin.example.com"]}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("names[1]"),
    )?;
    // No DNS name in the subjectAltName.
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("192.0.2.1".parse()?));
    let ip_only = params.self_signed(&key)?;
    expect_error(
        h.api
            .post::<_, Certificate>(
                "/certificates",
                &json!({"chain_pem": ip_only.pem(), "key_pem": key.serialize_pem(), "names": ["app.example.com"]}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("chain_pem"),
    )?;
    // Expired.
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["old.example.com".to_string()])?;
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = params.self_signed(&key)?;
    let message = expect_error(
        h.api
            .post::<_, Certificate>(
                "/certificates",
                &json!({"chain_pem": expired.pem(), "key_pem": key.serialize_pem()}),
            )
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("chain_pem"),
    )?;
    assert!(message.contains("expired"), "{message}");
    // A good one is listed by the names it serves.
    let uploaded: Certificate = h
        .api
        .post(
            "/certificates",
            &json!({"chain_pem": cert.cert.pem(), "key_pem": cert.key_pair.serialize_pem(),
                    "names": ["www.example.com"]}),
        )
        .await?;
    assert_eq!(uploaded.names, ["app.example.com", "www.example.com"]);
    let list: Vec<Certificate> = h.api.get("/certificates").await?;
    assert_eq!(list.len(), 1);
    Ok(())
}

/// A duplicate in a request body is refused naming the field that collides, like every other
/// refusal of a body (found by tests/pipeline.rs: these 409s named no field).
#[tokio::test]
async fn duplicates_are_refused_naming_their_field() -> Result<()> {
    let h = Harness::start().await?;
    h.origin("home").await?;
    h.origin("lab").await?;
    h.service("home", "web", 8001).await?;
    h.service("home", "api", 8002).await?;
    let edge: EdgeView = h.api.post("/edge-nodes", &json!({"name": "vps1"})).await?;
    h.api
        .post::<_, EdgeView>("/edge-nodes", &json!({"name": "vps2"}))
        .await?;
    let version = h.store.config_version().await?;
    let cases: [(Method, &str, Value, &str); 8] = [
        (Method::POST, "/origins", json!({"name": "home"}), "name"),
        (
            Method::PATCH,
            "/origins/lab",
            json!({"name": "home"}),
            "name",
        ),
        (
            Method::POST,
            "/origins/home/services",
            json!({"name": "web", "port": 9000}),
            "name",
        ),
        (
            Method::POST,
            "/origins/home/services",
            json!({"name": "other", "port": 8001}),
            "port",
        ),
        (
            Method::PATCH,
            "/origins/home/services/api",
            json!({"name": "web"}),
            "name",
        ),
        (
            Method::PATCH,
            "/origins/home/services/api",
            json!({"port": 8001}),
            "port",
        ),
        (Method::POST, "/edge-nodes", json!({"name": "vps1"}), "name"),
        (
            Method::POST,
            "/edge-nodes",
            json!({"name": "vps3", "public_key": edge.edge.public_key.to_base64()}),
            "public_key",
        ),
    ];
    for (method, path, body, field) in cases {
        let (status, error) = h.raw(method.clone(), path, &body.to_string()).await?;
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "{method} {path} {body}: {error}"
        );
        assert_eq!(
            error["field"],
            json!(field),
            "{method} {path} {body}: {error}"
        );
    }
    let renamed = h
        .raw(
            Method::PATCH,
            "/edge-nodes/vps2",
            &json!({"name": "vps1"}).to_string(),
        )
        .await?;
    assert_eq!(
        (renamed.0, &renamed.1["field"]),
        (StatusCode::CONFLICT, &json!("name"))
    );
    assert_eq!(
        h.store.config_version().await?,
        version,
        "nothing refused was stored"
    );
    // An HTTP route keeps its service http.
    h.api
        .post::<_, RouteView>(
            "/routes",
            &json!({"hostname": "app.example.com", "origin": "home", "service": "web"}),
        )
        .await?;
    let version = h.store.config_version().await?;
    let (status, error) = h
        .raw(
            Method::PATCH,
            "/origins/home/services/web",
            &json!({"protocol": "tcp"}).to_string(),
        )
        .await?;
    assert_eq!(
        (status, &error["field"]),
        (StatusCode::CONFLICT, &json!("protocol"))
    );
    assert_eq!(
        h.store.config_version().await?,
        version,
        "nothing refused was stored"
    );
    Ok(())
}
