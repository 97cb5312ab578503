//! Local stand-ins for the VPS APIs the edge provisioners call (which the tests cannot reach),
//! enforcing the documented contract of each call a provisioner makes:
//!
//! | | DigitalOcean v2 | Vultr v2 | Hetzner Cloud v1 |
//! |---|---|---|---|
//! | create | `POST /v2/droplets` -> 202 `{"droplet"}` | `POST /v2/instances` -> 202 `{"instance"}` | `POST /v1/servers` -> 201 `{"server", "action"}` |
//! | read | `GET /v2/droplets/{id}` | `GET /v2/instances/{id}` | `GET /v1/servers/{id}` |
//! | delete | `DELETE` -> 204 | `DELETE` -> 204 | `DELETE` -> 200 `{"action"}` |
//! | list by name | `?name=` -> `{"droplets", "links", "meta"}` | `?label=` -> `{"instances", "meta"}` | `?name=` -> `{"servers", "meta"}` |
//! | errors | `{"id", "message"}` | `{"error", "status"}` | `{"error": {"code", "message", "details"}}` |
//!
//! Every request needs `Authorization: Bearer <token>` (401 in the provider's shape without it
//! or with another token); bodies must be `Content-Type: application/json`, with the required
//! fields (DigitalOcean `name`, `region`, `size`, `image`; Vultr `region`, `plan` and one of
//! `os_id` / `image_id` / `snapshot_id`, `user_data` base64; Hetzner `name`, `server_type`,
//! `image`), names valid host names, and no field the API does not define (422, so a typo in a
//! provisioner fails a test). Ids are the providers' kinds: integers (DigitalOcean, Hetzner),
//! UUIDs (Vultr). A machine gets its public address on the first read after creation
//! (Hetzner: at creation), as a booting VPS does. [`CloudFake::fail_next`] injects an error
//! answer (a quota, a 429) for the next create.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Which API a fake speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cloud {
    /// DigitalOcean API v2.
    DigitalOcean,
    /// Vultr API v2.
    Vultr,
    /// Hetzner Cloud API v1.
    Hetzner,
}

impl Cloud {
    /// `--provisioner` value.
    pub fn kind(self) -> &'static str {
        match self {
            Cloud::DigitalOcean => "digitalocean",
            Cloud::Vultr => "vultr",
            Cloud::Hetzner => "hetzner",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Cloud::DigitalOcean => "/v2/droplets",
            Cloud::Vultr => "/v2/instances",
            Cloud::Hetzner => "/v1/servers",
        }
    }

    fn version(self) -> &'static str {
        match self {
            Cloud::Hetzner => "/v1",
            _ => "/v2",
        }
    }

    /// (singular, plural) JSON keys.
    fn keys(self) -> (&'static str, &'static str) {
        match self {
            Cloud::DigitalOcean => ("droplet", "droplets"),
            Cloud::Vultr => ("instance", "instances"),
            Cloud::Hetzner => ("server", "servers"),
        }
    }

    /// An error body in the provider's shape.
    pub fn error(self, status: u16, code: &str, message: &str) -> Value {
        match self {
            Cloud::DigitalOcean => json!({"id": code, "message": message}),
            Cloud::Vultr => json!({"error": message, "status": status}),
            Cloud::Hetzner => {
                json!({"error": {"code": code, "message": message, "details": {}}})
            }
        }
    }
}

/// One machine the fake holds.
#[derive(Clone, Debug)]
pub struct Machine {
    /// Its id.
    pub id: String,
    /// Its name (label).
    pub name: String,
    /// The create request's body.
    pub request: Value,
    /// How many reads it has had (the address comes with the first).
    pub reads: u32,
    /// Its public address.
    pub ip: Option<String>,
}

#[derive(Default)]
struct State {
    machines: BTreeMap<String, Machine>,
    next: u64,
    fail_next: Vec<(u16, Value)>,
    requests: Vec<(String, String, u16)>,
}

struct Shared {
    cloud: Cloud,
    token: String,
    state: Arc<Mutex<State>>,
}

/// A fake of one provider's API on loopback.
pub struct CloudFake {
    /// Base URL as the provisioner takes it (`http://127.0.0.1:P/v2`).
    pub url: String,
    /// Which API.
    pub cloud: Cloud,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CloudFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CloudFake {
    /// Starts a fake of `cloud` accepting `token`.
    pub async fn start(cloud: Cloud, token: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            next: 1000,
            ..State::default()
        }));
        let shared = Arc::new(Shared {
            cloud,
            token: token.to_owned(),
            state: state.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self {
            url: format!("http://{addr}{}", cloud.version()),
            cloud,
            state,
            task,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The machines it holds now.
    pub fn machines(&self) -> Vec<Machine> {
        self.lock().machines.values().cloned().collect()
    }

    /// Every request so far: method, path (with query), status answered.
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.lock().requests.clone()
    }

    /// The next creates answer `status` with the provider's error body for `code`/`message`
    /// (queued: call several times for several failures).
    pub fn fail_next(&self, status: u16, code: &str, message: &str) {
        let body = self.cloud.error(status, code, message);
        self.lock().fail_next.push((status, body));
    }
}

fn answer(status: u16, body: Option<Value>) -> Response<Full<Bytes>> {
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status != 204 {
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
    }
    response
}

fn host_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with('-')
}

/// The machine JSON in the provider's shape.
fn render(cloud: Cloud, m: &Machine) -> Value {
    match cloud {
        Cloud::DigitalOcean => json!({
            "id": m.id.parse::<u64>().unwrap_or(0),
            "name": m.name,
            "status": if m.ip.is_some() { "active" } else { "new" },
            "memory": 1024, "vcpus": 1, "disk": 25, "locked": false,
            "region": {"slug": m.request["region"]},
            "size_slug": m.request["size"],
            "tags": m.request["tags"].clone(),
            "networks": {
                "v4": m.ip.iter().map(|ip| json!({"ip_address": ip, "netmask": "255.255.240.0", "gateway": "203.0.113.1", "type": "public"}))
                    .chain(std::iter::once(json!({"ip_address": "10.110.0.2", "netmask": "255.255.240.0", "gateway": "10.110.0.1", "type": "private"})).filter(|_| m.ip.is_some()))
                    .collect::<Vec<_>>(),
                "v6": [],
            },
        }),
        Cloud::Vultr => json!({
            "id": m.id,
            "label": m.name,
            "hostname": m.request["hostname"],
            "main_ip": m.ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
            "status": if m.ip.is_some() { "active" } else { "pending" },
            "power_status": "running",
            "server_status": if m.ip.is_some() { "ok" } else { "none" },
            "region": m.request["region"],
            "plan": m.request["plan"],
            "os_id": m.request["os_id"],
            "tags": m.request["tags"].clone(),
        }),
        Cloud::Hetzner => json!({
            "id": m.id.parse::<u64>().unwrap_or(0),
            "name": m.name,
            "status": if m.reads > 0 { "running" } else { "initializing" },
            "public_net": {
                "ipv4": {"ip": m.ip, "blocked": false, "dns_ptr": format!("static.{}.clients.your-server.de", m.ip.clone().unwrap_or_default())},
                "ipv6": null, "floating_ips": [], "firewalls": [],
            },
            "server_type": {"name": m.request["server_type"]},
            "labels": m.request["labels"].clone(),
        }),
    }
}

/// Checks the create body; the machine name, or the 422 answer.
fn check_create(cloud: Cloud, body: &Value) -> std::result::Result<String, (u16, Value)> {
    let invalid = |message: String| {
        let code = match cloud {
            Cloud::DigitalOcean => "unprocessable_entity",
            Cloud::Vultr => "invalid",
            Cloud::Hetzner => "invalid_input",
        };
        let status = match cloud {
            Cloud::Vultr => 400,
            _ => 422,
        };
        Err((status, cloud.error(status, code, &message)))
    };
    let Some(object) = body.as_object() else {
        return invalid("the body is not a JSON object".into());
    };
    let (known, required): (&[&str], &[&str]) = match cloud {
        Cloud::DigitalOcean => (
            &[
                "name",
                "names",
                "region",
                "size",
                "image",
                "ssh_keys",
                "backups",
                "ipv6",
                "monitoring",
                "tags",
                "user_data",
                "private_networking",
                "vpc_uuid",
                "with_droplet_agent",
                "volumes",
            ],
            &["name", "region", "size", "image"],
        ),
        Cloud::Vultr => (
            &[
                "region",
                "plan",
                "os_id",
                "iso_id",
                "snapshot_id",
                "app_id",
                "image_id",
                "ipxe_chain_url",
                "script_id",
                "enable_ipv6",
                "disable_public_ipv4",
                "attach_vpc",
                "sshkey_id",
                "backups",
                "ddos_protection",
                "user_data",
                "reserved_ipv4",
                "activation_email",
                "hostname",
                "label",
                "tags",
                "firewall_group_id",
                "enable_vpc",
                "user_scheme",
            ],
            &["region", "plan"],
        ),
        Cloud::Hetzner => (
            &[
                "name",
                "server_type",
                "image",
                "location",
                "datacenter",
                "start_after_create",
                "ssh_keys",
                "volumes",
                "networks",
                "firewalls",
                "user_data",
                "labels",
                "automount",
                "public_net",
                "placement_group",
            ],
            &["name", "server_type", "image"],
        ),
    };
    if let Some(unknown) = object.keys().find(|k| !known.contains(&k.as_str())) {
        return invalid(format!("unknown field {unknown:?}"));
    }
    if let Some(missing) = required.iter().find(|k| !object.contains_key(**k)) {
        return invalid(format!("{missing} is required"));
    }
    let name = match cloud {
        Cloud::Vultr => {
            if !["os_id", "image_id", "snapshot_id", "iso_id", "app_id"]
                .iter()
                .any(|k| object.contains_key(*k))
            {
                return invalid(
                    "one of os_id, iso_id, snapshot_id, app_id or image_id is required".into(),
                );
            }
            if let Some(data) = object.get("user_data") {
                let ok = data
                    .as_str()
                    .is_some_and(|d| base64::engine::general_purpose::STANDARD.decode(d).is_ok());
                if !ok {
                    return invalid("user_data must be base64-encoded".into());
                }
            }
            object
                .get("label")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        }
        _ => object["name"].as_str().unwrap_or_default().to_owned(),
    };
    if !host_name_ok(&name) {
        return invalid(format!("{name:?} is not a valid host name"));
    }
    for key in ["ssh_keys", "sshkey_id", "tags"] {
        if object.get(key).is_some_and(|v| !v.is_array()) {
            return invalid(format!("{key} must be an array"));
        }
    }
    if cloud == Cloud::DigitalOcean || cloud == Cloud::Hetzner {
        if let Some(data) = object.get("user_data") {
            if !data
                .as_str()
                .is_some_and(|d| d.starts_with("#cloud-config") || d.starts_with("#!"))
            {
                return invalid("user_data is not a cloud-config or script".into());
            }
        }
    }
    Ok(name)
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let full = if query.is_empty() {
        path.clone()
    } else {
        format!("{path}?{query}")
    };
    let response = route(shared, request, &method, &path, &query).await;
    let status = response.status().as_u16();
    shared
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .requests
        .push((method, full, status));
    response
}

async fn route(
    shared: &Shared,
    request: Request<Incoming>,
    method: &str,
    path: &str,
    query: &str,
) -> Response<Full<Bytes>> {
    let cloud = shared.cloud;
    let bearer = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    if bearer.as_deref() != Some(shared.token.as_str()) {
        let message = match cloud {
            Cloud::DigitalOcean => "Unable to authenticate you",
            Cloud::Vultr => "Invalid API token.",
            Cloud::Hetzner => "unable to authenticate",
        };
        return answer(401, Some(cloud.error(401, "unauthorized", message)));
    }
    let json_body = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let bytes = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (singular, plural) = cloud.keys();
    let not_found = || {
        let message = match cloud {
            Cloud::DigitalOcean => "The resource you were accessing could not be found.".to_owned(),
            Cloud::Vultr => "Invalid instance-id.".to_owned(),
            Cloud::Hetzner => "server not found".to_owned(),
        };
        answer(404, Some(cloud.error(404, "not_found", &message)))
    };
    let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    let Some(rest) = path.strip_prefix(cloud.prefix()) else {
        return not_found();
    };
    match (method, rest) {
        ("POST", "") => {
            if !json_body {
                return answer(
                    415,
                    Some(cloud.error(
                        415,
                        "unsupported_media_type",
                        "Content-Type must be application/json",
                    )),
                );
            }
            if !state.fail_next.is_empty() {
                let (status, body) = state.fail_next.remove(0);
                return answer(status, Some(body));
            }
            let Ok(body) = serde_json::from_slice::<Value>(&bytes) else {
                return answer(400, Some(cloud.error(400, "bad_request", "invalid JSON")));
            };
            let name = match check_create(cloud, &body) {
                Ok(name) => name,
                Err((status, body)) => return answer(status, Some(body)),
            };
            if cloud == Cloud::Hetzner && state.machines.values().any(|m| m.name == name) {
                return answer(
                    409,
                    Some(cloud.error(409, "uniqueness_error", "server name is already used")),
                );
            }
            state.next += 1;
            let n = state.next;
            let id = match cloud {
                Cloud::Vultr => format!("cb676a46-66fd-4dfb-b839-{n:012x}"),
                _ => n.to_string(),
            };
            let ip = (cloud == Cloud::Hetzner).then(|| format!("203.0.113.{}", n % 250 + 1));
            let machine = Machine {
                id: id.clone(),
                name,
                request: body,
                reads: 0,
                ip,
            };
            let rendered = render(cloud, &machine);
            state.machines.insert(id.clone(), machine);
            match cloud {
                Cloud::DigitalOcean => answer(
                    202,
                    Some(
                        json!({singular: rendered, "links": {"actions": [{"id": n, "rel": "create", "href": format!("https://api.digitalocean.com/v2/actions/{n}")}]}}),
                    ),
                ),
                Cloud::Vultr => answer(202, Some(json!({singular: rendered}))),
                Cloud::Hetzner => answer(
                    201,
                    Some(
                        json!({singular: rendered, "action": {"id": n, "command": "create_server", "status": "running"}, "next_actions": [], "root_password": null}),
                    ),
                ),
            }
        }
        ("GET", "") => {
            let mut filter = None;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                let allowed: &[&str] = match cloud {
                    Cloud::DigitalOcean => &["name", "tag_name", "page", "per_page", "type"],
                    Cloud::Vultr => &["label", "per_page", "cursor", "tag", "main_ip", "region"],
                    Cloud::Hetzner => &[
                        "name",
                        "label_selector",
                        "status",
                        "sort",
                        "page",
                        "per_page",
                    ],
                };
                if !allowed.contains(&key) {
                    return answer(
                        400,
                        Some(cloud.error(
                            400,
                            "invalid_input",
                            &format!("unknown query parameter {key:?}"),
                        )),
                    );
                }
                if key == "name" || key == "label" {
                    filter = Some(value.to_owned());
                }
            }
            let list: Vec<Value> = state
                .machines
                .values()
                .filter(|m| filter.as_ref().is_none_or(|f| &m.name == f))
                .map(|m| render(cloud, m))
                .collect();
            let total = list.len();
            let meta = match cloud {
                Cloud::DigitalOcean => json!({"total": total}),
                Cloud::Vultr => json!({"total": total, "links": {"next": "", "prev": ""}}),
                Cloud::Hetzner => {
                    json!({"pagination": {"page": 1, "per_page": 25, "previous_page": null, "next_page": null, "last_page": 1, "total_entries": total}})
                }
            };
            match cloud {
                Cloud::DigitalOcean => {
                    answer(200, Some(json!({plural: list, "links": {}, "meta": meta})))
                }
                _ => answer(200, Some(json!({plural: list, "meta": meta}))),
            }
        }
        (method, id) => {
            let id = id.trim_start_matches('/');
            let valid = match cloud {
                Cloud::Vultr => {
                    !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
                }
                _ => !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()),
            };
            if !valid {
                return not_found();
            }
            match method {
                "GET" => {
                    let Some(m) = state.machines.get_mut(id) else {
                        return not_found();
                    };
                    m.reads += 1;
                    if m.ip.is_none() {
                        let n: u64 = m.id.bytes().map(u64::from).sum();
                        m.ip = Some(format!("198.51.100.{}", n % 250 + 1));
                    }
                    let rendered = render(cloud, m);
                    answer(200, Some(json!({singular: rendered})))
                }
                "DELETE" => {
                    if state.machines.remove(id).is_none() {
                        return not_found();
                    }
                    match cloud {
                        Cloud::Hetzner => answer(
                            200,
                            Some(
                                json!({"action": {"id": 1, "command": "delete_server", "status": "running"}}),
                            ),
                        ),
                        _ => answer(204, None),
                    }
                }
                _ => answer(
                    405,
                    Some(cloud.error(405, "method_not_allowed", "method not allowed")),
                ),
            }
        }
    }
}
