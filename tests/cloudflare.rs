//! A local stand-in for Cloudflare's API v4 (which the tests cannot reach), enforcing the
//! documented request and response shapes of the calls a DNS provider makes:
//!
//! - `GET /zones?name=` (List Zones: `per_page` 5..=50) and, per zone,
//!   `GET /zones/{zone_id}/dns_records` (List DNS Records: `page` >= 1, `per_page` 1..=5000000,
//!   `name.exact`, `type`, ...), `POST /zones/{zone_id}/dns_records` (Create: `name`, `type`
//!   and `ttl` required, `content` valid for the type), `PATCH` and `DELETE
//!   /zones/{zone_id}/dns_records/{dns_record_id}`;
//! - `Authorization: Bearer <token>`: a missing or malformed header is HTTP 400 with code 6003
//!   (`Invalid request headers`, chain 6111), a wrong token HTTP 403 with code 9109
//!   (`Invalid access token`);
//! - the `{success, errors, messages, result, result_info}` envelope (Delete answers
//!   `{"result": {"id": ...}}`), failures with `success: false` and `errors[{code, message}]`;
//! - TTL 1 ("automatic") or between the zone's minimum (60 by default, 30 on Enterprise) and
//!   86400; no identical records (81058); no A/AAAA beside a CNAME and the reverse;
//!   `proxied` only on A, AAAA and CNAME.
//!
//! It is stricter than Cloudflare in one way: query parameters and body fields it does not know
//! are refused, so a typo in a provider fails a test instead of being ignored. Records live in
//! memory; [`CloudflareFake::insert`] and [`CloudflareFake::remove`] are the dashboard (hand
//! edits), [`CloudflareFake::answer`] resolves like Cloudflare's nameservers (wildcards
//! included), and [`CloudflareFake::writes`] counts the changing requests.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

/// The id the fake gives its one zone.
pub const ZONE_ID: &str = "023e105f4ecef8ad9ca31a8372d0c353";

/// One record as the fake holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeRecord {
    /// 32 hex digits.
    pub id: String,
    /// Fully qualified, lower case, no trailing dot.
    pub name: String,
    /// `A`, `AAAA`, `TXT`, `CNAME`.
    pub record_type: String,
    /// As stored (TXT quoted).
    pub content: String,
    /// Seconds (1: automatic).
    pub ttl: u32,
    /// Whether traffic would go through Cloudflare's proxy.
    pub proxied: bool,
}

#[derive(Default)]
struct State {
    records: BTreeMap<String, FakeRecord>,
    next_id: u64,
    writes: usize,
    requests: Vec<String>,
    endless_pages: bool,
}

/// The fake API; dropping it stops the server.
pub struct CloudflareFake {
    /// The base URL, like `https://api.cloudflare.com/client/v4`.
    pub url: String,
    /// The token it accepts.
    pub token: String,
    /// Its one zone.
    pub zone: String,
    min_ttl: u32,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CloudflareFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    token: String,
    zone: String,
    min_ttl: u32,
    state: Arc<Mutex<State>>,
}

impl CloudflareFake {
    /// Serves `zone` (with no records) on a free loopback port, accepting `token`; TTLs below
    /// `min_ttl` are refused as on a zone of that plan.
    pub async fn start(zone: &str, token: &str, min_ttl: u32) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            zone: zone.to_owned(),
            min_ttl,
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
            url: format!("http://{addr}/client/v4"),
            token: token.to_owned(),
            zone: zone.to_owned(),
            min_ttl,
            state,
            task,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every record, by id.
    pub fn records(&self) -> Vec<FakeRecord> {
        self.lock().records.values().cloned().collect()
    }

    /// Adds a record as the dashboard would (no validation beyond the type); returns its id.
    pub fn insert(
        &self,
        name: &str,
        record_type: &str,
        content: &str,
        ttl: u32,
        proxied: bool,
    ) -> String {
        let mut state = self.lock();
        let id = next_id(&mut state);
        state.records.insert(
            id.clone(),
            FakeRecord {
                id: id.clone(),
                name: name.to_ascii_lowercase(),
                record_type: record_type.to_owned(),
                content: content.to_owned(),
                ttl,
                proxied,
            },
        );
        id
    }

    /// Removes a record as the dashboard would.
    pub fn remove(&self, id: &str) {
        self.lock().records.remove(id);
    }

    /// How many changing requests (POST, PATCH, DELETE) succeeded.
    pub fn writes(&self) -> usize {
        self.lock().writes
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Hostile mode: listings claim one more page forever.
    pub fn set_endless_pages(&self, on: bool) {
        self.lock().endless_pages = on;
    }

    /// The zone's minimum TTL.
    pub fn min_ttl(&self) -> u32 {
        self.min_ttl
    }

    /// What Cloudflare's nameservers would answer for `name`/`record_type`: `(ttl, content)` of
    /// the unproxied records at the name, or at the wildcard covering it (`*.parent`) when the
    /// name holds no record at all. Sorted.
    pub fn answer(&self, name: &str, record_type: &str) -> Vec<(u32, String)> {
        let state = self.lock();
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let at = |owner: &str| -> Vec<&FakeRecord> {
            state.records.values().filter(|r| r.name == owner).collect()
        };
        let mut records = at(&name);
        if records.is_empty() {
            if let Some((_, parent)) = name.split_once('.') {
                records = at(&format!("*.{parent}"));
            }
        }
        let mut answer: Vec<(u32, String)> = records
            .into_iter()
            .filter(|r| r.record_type == record_type && !r.proxied)
            .map(|r| (if r.ttl == 1 { 300 } else { r.ttl }, r.content.clone()))
            .collect();
        answer.sort();
        answer
    }
}

fn next_id(state: &mut State) -> String {
    state.next_id += 1;
    format!("{:032x}", 0x00c0_ffee_0000_0000_u64 + state.next_id)
}

fn envelope(result: Value) -> Value {
    json!({"success": true, "errors": [], "messages": [], "result": result})
}

fn failure(status: StatusCode, code: u32, message: &str) -> (StatusCode, Value) {
    (
        status,
        json!({
            "success": false,
            "errors": [{"code": code, "message": message}],
            "messages": [],
            "result": Value::Null,
        }),
    )
}

fn respond(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn record_json(zone: &str, record: &FakeRecord) -> Value {
    json!({
        "id": record.id,
        "zone_id": ZONE_ID,
        "zone_name": zone,
        "name": record.name,
        "type": record.record_type,
        "content": record.content,
        "proxiable": matches!(record.record_type.as_str(), "A" | "AAAA" | "CNAME"),
        "proxied": record.proxied,
        "ttl": record.ttl,
        "settings": {},
        "meta": {},
        "comment": Value::Null,
        "tags": [],
        "created_on": "2026-01-01T00:00:00.000000Z",
        "modified_on": "2026-01-01T00:00:00.000000Z",
    })
}

fn query(uri: &hyper::Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (unescape(key), unescape(value))
        })
        .collect()
}

fn unescape(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn number(value: &str, name: &str, min: u64, max: u64) -> Result<u64, (StatusCode, Value)> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            failure(
                StatusCode::BAD_REQUEST,
                1004,
                &format!("{name} must be a number between {min} and {max}"),
            )
        })
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let uri = request.uri().clone();
    {
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.requests.push(format!("{method} {uri}"));
    }
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let auth = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let (status, value) = match route(shared, &method, &uri, auth, content_type, &body) {
        Ok((status, value)) | Err((status, value)) => (status, value),
    };
    if status.is_success() && method != hyper::Method::GET {
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.writes += 1;
    }
    respond(status, &value)
}

type Outcome = Result<(StatusCode, Value), (StatusCode, Value)>;

fn route(
    shared: &Shared,
    method: &hyper::Method,
    uri: &hyper::Uri,
    auth: Option<String>,
    content_type: Option<String>,
    body: &[u8],
) -> Outcome {
    match auth.as_deref().and_then(|v| v.strip_prefix("Bearer ")) {
        None => {
            let (status, mut value) =
                failure(StatusCode::BAD_REQUEST, 6003, "Invalid request headers");
            value["errors"][0]["error_chain"] =
                json!([{"code": 6111, "message": "Invalid format for Authorization header"}]);
            return Err((status, value));
        }
        Some(token) if token != shared.token => {
            return Err(failure(StatusCode::FORBIDDEN, 9109, "Invalid access token"))
        }
        Some(_) => {}
    }
    let path = uri
        .path()
        .strip_prefix("/client/v4")
        .ok_or_else(|| failure(StatusCode::NOT_FOUND, 7000, "No route for that URI"))?;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let params = query(uri);
    match (method, segments.as_slice()) {
        (&hyper::Method::GET, ["zones"]) => list_zones(shared, &params),
        (_, ["zones"]) => Err(failure(
            StatusCode::METHOD_NOT_ALLOWED,
            10405,
            "Method not allowed",
        )),
        (_, ["zones", zone_id, "dns_records", rest @ ..]) => {
            if *zone_id != ZONE_ID {
                return Err(failure(
                    StatusCode::BAD_REQUEST,
                    7003,
                    &format!("Could not route to /zones/{zone_id}/dns_records, perhaps your object identifier is invalid?"),
                ));
            }
            let json_body = || -> Result<Map<String, Value>, (StatusCode, Value)> {
                if content_type
                    .as_deref()
                    .map(|c| c.split(';').next().unwrap_or("").trim())
                    != Some("application/json")
                {
                    return Err(failure(
                        StatusCode::BAD_REQUEST,
                        6007,
                        "Malformed request body: Content-Type must be application/json",
                    ));
                }
                match serde_json::from_slice::<Value>(body) {
                    Ok(Value::Object(map)) => Ok(map),
                    _ => Err(failure(
                        StatusCode::BAD_REQUEST,
                        9207,
                        "Request body is invalid: a JSON object is required",
                    )),
                }
            };
            match (method, rest) {
                (&hyper::Method::GET, []) => list_records(shared, &params),
                (&hyper::Method::POST, []) => {
                    refuse_params(&params, &[])?;
                    create_record(shared, json_body()?)
                }
                (&hyper::Method::PATCH, [id]) => {
                    refuse_params(&params, &[])?;
                    edit_record(shared, id, json_body()?)
                }
                (&hyper::Method::DELETE, [id]) => {
                    refuse_params(&params, &[])?;
                    delete_record(shared, id)
                }
                _ => Err(failure(
                    StatusCode::METHOD_NOT_ALLOWED,
                    10405,
                    "Method not allowed for this endpoint",
                )),
            }
        }
        _ => Err(failure(
            StatusCode::NOT_FOUND,
            7000,
            "No route for that URI",
        )),
    }
}

fn refuse_params(params: &[(String, String)], known: &[&str]) -> Result<(), (StatusCode, Value)> {
    match params
        .iter()
        .find(|(key, _)| !known.contains(&key.as_str()))
    {
        Some((key, _)) => Err(failure(
            StatusCode::BAD_REQUEST,
            1004,
            &format!("unknown query parameter {key:?} (this fake refuses what it does not know)"),
        )),
        None => Ok(()),
    }
}

fn paginate(
    items: Vec<Value>,
    params: &[(String, String)],
    default_per_page: u64,
    min: u64,
    max: u64,
    endless: bool,
) -> Outcome {
    let mut page = 1;
    let mut per_page = default_per_page;
    for (key, value) in params {
        match key.as_str() {
            "page" => page = number(value, "page", 1, u64::MAX)?,
            "per_page" => per_page = number(value, "per_page", min, max)?,
            _ => {}
        }
    }
    let total = items.len() as u64;
    let start = ((page - 1).saturating_mul(per_page)).min(total) as usize;
    let end = (start as u64 + per_page).min(total) as usize;
    let slice: Vec<Value> = if endless {
        items.into_iter().take(per_page as usize).collect()
    } else {
        items[start..end].to_vec()
    };
    let total_pages = if endless {
        page + 1
    } else {
        total.div_ceil(per_page)
    };
    let mut body = envelope(Value::Array(slice.clone()));
    body["result_info"] = json!({
        "page": page,
        "per_page": per_page,
        "count": slice.len(),
        "total_count": if endless { (page + 1) * per_page } else { total },
        "total_pages": total_pages,
    });
    Ok((StatusCode::OK, body))
}

fn list_zones(shared: &Shared, params: &[(String, String)]) -> Outcome {
    refuse_params(
        params,
        &[
            "name",
            "status",
            "page",
            "per_page",
            "order",
            "direction",
            "match",
            "account.id",
            "account.name",
            "type",
        ],
    )?;
    let name = params
        .iter()
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.as_str());
    let zones: Vec<Value> = if name.is_none_or(|name| name.eq_ignore_ascii_case(&shared.zone)) {
        vec![
            json!({"id": ZONE_ID, "name": shared.zone, "status": "active", "paused": false, "type": "full"}),
        ]
    } else {
        Vec::new()
    };
    paginate(zones, params, 20, 5, 50, false)
}

fn list_records(shared: &Shared, params: &[(String, String)]) -> Outcome {
    refuse_params(
        params,
        &[
            "name",
            "name.exact",
            "type",
            "content",
            "content.exact",
            "proxied",
            "page",
            "per_page",
            "order",
            "direction",
            "match",
        ],
    )?;
    let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    let mut items = Vec::new();
    for record in state.records.values() {
        let keep = params.iter().all(|(key, value)| match key.as_str() {
            "name" | "name.exact" => record
                .name
                .eq_ignore_ascii_case(value.trim_end_matches('.')),
            "type" => record.record_type == *value,
            "content" | "content.exact" => record.content.eq_ignore_ascii_case(value),
            "proxied" => record.proxied.to_string() == *value,
            _ => true,
        });
        if keep {
            items.push(record_json(&shared.zone, record));
        }
    }
    paginate(items, params, 100, 1, 5_000_000, state.endless_pages)
}

const FIELDS: [&str; 10] = [
    "name", "type", "content", "ttl", "proxied", "comment", "tags", "settings", "priority", "data",
];

/// Checks `record` (after a create or an edit) against the documented rules and the zone.
fn validate(
    shared: &Shared,
    state: &State,
    record: &FakeRecord,
) -> Result<(), (StatusCode, Value)> {
    let bad = |code, message: &str| Err(failure(StatusCode::BAD_REQUEST, code, message));
    let zone = shared.zone.as_str();
    if !(record.name == zone || record.name.ends_with(&format!(".{zone}"))) {
        return bad(9007, "DNS record name must be inside the zone");
    }
    let content_ok = match record.record_type.as_str() {
        "A" => record.content.parse::<Ipv4Addr>().is_ok(),
        "AAAA" => record.content.parse::<Ipv6Addr>().is_ok(),
        "TXT" => !record.content.is_empty(),
        "CNAME" => !record.content.is_empty() && record.content != record.name,
        _ => {
            return bad(
                1004,
                "DNS Validation Error: this fake knows A, AAAA, TXT and CNAME",
            )
        }
    };
    if !content_ok {
        return bad(
            9005,
            &format!("Content for {} record is invalid.", record.record_type),
        );
    }
    if record.ttl != 1 && !(shared.min_ttl..=86_400).contains(&record.ttl) {
        return bad(
            9021,
            &format!(
                "Invalid TTL. Must be between {} and 86400 seconds, or 1 for automatic.",
                shared.min_ttl
            ),
        );
    }
    if record.proxied && !matches!(record.record_type.as_str(), "A" | "AAAA" | "CNAME") {
        return bad(9004, "This record type cannot be proxied.");
    }
    for other in state.records.values() {
        if other.id == record.id || other.name != record.name {
            continue;
        }
        if other.record_type == record.record_type && other.content == record.content {
            return bad(81058, "An identical record already exists.");
        }
        let address = |t: &str| matches!(t, "A" | "AAAA");
        if (record.record_type == "CNAME" && other.record_type != "CNAME")
            || (address(&record.record_type) && other.record_type == "CNAME")
        {
            return bad(
                81053,
                "A/AAAA records cannot exist on the same name as CNAME records.",
            );
        }
    }
    Ok(())
}

fn apply(
    record: &mut FakeRecord,
    body: &Map<String, Value>,
    creating: bool,
) -> Result<(), (StatusCode, Value)> {
    let bad = |message: String| Err(failure(StatusCode::BAD_REQUEST, 9000, &message));
    if let Some(key) = body.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return bad(format!(
            "unknown field {key:?} (this fake refuses what it does not know)"
        ));
    }
    if creating {
        for required in ["name", "type", "ttl"] {
            if !body.contains_key(required) {
                return bad(format!("{required} is required"));
            }
        }
    }
    if let Some(name) = body.get("name") {
        let Some(name) = name.as_str() else {
            return bad("name must be a string".into());
        };
        record.name = name.trim_end_matches('.').to_ascii_lowercase();
    }
    if let Some(kind) = body.get("type") {
        let Some(kind) = kind.as_str() else {
            return bad("type must be a string".into());
        };
        record.record_type = kind.to_owned();
    }
    if let Some(content) = body.get("content") {
        let Some(content) = content.as_str() else {
            return bad("content must be a string".into());
        };
        record.content = match record.record_type.as_str() {
            // Cloudflare stores addresses in canonical form.
            "A" | "AAAA" => content
                .parse::<IpAddr>()
                .map_or_else(|_| content.to_owned(), |ip| ip.to_string()),
            _ => content.to_owned(),
        };
    }
    if let Some(ttl) = body.get("ttl") {
        let Some(ttl) = ttl.as_u64().and_then(|t| u32::try_from(t).ok()) else {
            return bad("ttl must be a number".into());
        };
        record.ttl = ttl;
    }
    if let Some(proxied) = body.get("proxied") {
        let Some(proxied) = proxied.as_bool() else {
            return bad("proxied must be a boolean".into());
        };
        record.proxied = proxied;
    }
    Ok(())
}

fn create_record(shared: &Shared, body: Map<String, Value>) -> Outcome {
    let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    let mut record = FakeRecord {
        id: String::new(),
        name: String::new(),
        record_type: String::new(),
        content: String::new(),
        ttl: 1,
        proxied: false,
    };
    apply(&mut record, &body, true)?;
    validate(shared, &state, &record)?;
    record.id = next_id(&mut state);
    let value = record_json(&shared.zone, &record);
    state.records.insert(record.id.clone(), record);
    Ok((StatusCode::OK, envelope(value)))
}

fn edit_record(shared: &Shared, id: &str, body: Map<String, Value>) -> Outcome {
    let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    let Some(mut record) = state.records.get(id).cloned() else {
        return Err(failure(
            StatusCode::NOT_FOUND,
            81044,
            "Record does not exist.",
        ));
    };
    apply(&mut record, &body, false)?;
    validate(shared, &state, &record)?;
    let value = record_json(&shared.zone, &record);
    state.records.insert(id.to_owned(), record);
    Ok((StatusCode::OK, envelope(value)))
}

fn delete_record(shared: &Shared, id: &str) -> Outcome {
    let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    if state.records.remove(id).is_none() {
        return Err(failure(
            StatusCode::NOT_FOUND,
            81044,
            "Record does not exist.",
        ));
    }
    Ok((StatusCode::OK, json!({"result": {"id": id}})))
}

/// Asks the fake something with a given `Authorization` header (for auth tests of the fake
/// itself): status and JSON body.
pub async fn raw_call(
    fake: &CloudflareFake,
    method: &str,
    path: &str,
    auth: Option<&str>,
) -> Result<(u16, Value)> {
    let addr: SocketAddr = fake
        .url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .context("fake URL")?
        .parse()?;
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    crate::dns::http_json(addr, method, &format!("/client/v4{path}"), &headers, None).await
}
