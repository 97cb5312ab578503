//! The OpenAPI 3 document served at `/api/v1/openapi.json`, written by hand from one table of
//! endpoints ([`ENDPOINTS`]) that the API tests walk, so the document and the router cannot
//! drift apart unnoticed.

use axum::Json;
use serde_json::{json, Map, Value};

/// One documented endpoint.
pub struct Endpoint {
    /// HTTP method, lower case.
    pub method: &'static str,
    /// Path below `/api/v1`, with `{param}` placeholders.
    pub path: &'static str,
    /// Grouping tag.
    pub tag: &'static str,
    /// One-line summary.
    pub summary: &'static str,
    /// Request body schema name (in `components.schemas`), if any.
    pub body: Option<&'static str>,
    /// Success status and response schema (`[Name]` for an array, `gzip` for a bundle, `` for
    /// no body).
    pub response: (u16, &'static str),
}

const fn ep(
    method: &'static str,
    path: &'static str,
    tag: &'static str,
    summary: &'static str,
    body: Option<&'static str>,
    response: (u16, &'static str),
) -> Endpoint {
    Endpoint {
        method,
        path,
        tag,
        summary,
        body,
        response,
    }
}

/// Every authenticated endpoint of the API.
pub const ENDPOINTS: &[Endpoint] = &[
    ep("get", "/origins", "origins", "List origins", None, (200, "[Origin]")),
    ep("post", "/origins", "origins", "Create an origin (allocates its /24 and, unless public_key is given, its WireGuard key pair)", Some("NewOrigin"), (201, "Origin")),
    ep("get", "/origins/{origin}", "origins", "Get an origin (id or name)", None, (200, "Origin")),
    ep("patch", "/origins/{origin}", "origins", "Rename an origin", Some("OriginUpdate"), (200, "Origin")),
    ep("delete", "/origins/{origin}", "origins", "Delete an origin (409 while routes use its services)", None, (204, "")),
    ep("post", "/origins/{origin}/rotate-key", "origins", "Replace the origin's WireGuard key (given public key, or a generated pair)", Some("RotateKey"), (200, "Origin")),
    ep("get", "/origins/{origin}/edge-nodes", "origins", "Edges serving the origin", None, (200, "[Edge]")),
    ep("get", "/origins/{origin}/services", "services", "List the origin's services", None, (200, "[Service]")),
    ep("post", "/origins/{origin}/services", "services", "Add a service to the origin", Some("NewService"), (201, "Service")),
    ep("get", "/origins/{origin}/services/{service}", "services", "Get a service (id or name)", None, (200, "Service")),
    ep("patch", "/origins/{origin}/services/{service}", "services", "Change a service", Some("ServiceUpdate"), (200, "Service")),
    ep("delete", "/origins/{origin}/services/{service}", "services", "Delete a service (409 while routes use it)", None, (204, "")),
    ep("get", "/origins/{origin}/tokens", "tokens", "The origin's node tokens (metadata)", None, (200, "[NodeToken]")),
    ep("post", "/origins/{origin}/tokens", "tokens", "Create a one-time enrollment token for the origin", Some("TokenRequest"), (201, "IssuedNodeToken")),
    ep("get", "/origins/{origin}/bundle", "bundles", "tar.gz: origin.toml, control-ca.pem, a fresh enroll.token, kokoa-origin.service, install.sh", None, (200, "gzip")),
    ep("get", "/services", "services", "List all services (?origin= filters)", None, (200, "[Service]")),
    ep("get", "/services/{service}", "services", "Get a service by id", None, (200, "Service")),
    ep("patch", "/services/{service}", "services", "Change a service", Some("ServiceUpdate"), (200, "Service")),
    ep("delete", "/services/{service}", "services", "Delete a service", None, (204, "")),
    ep("get", "/edge-nodes", "edge-nodes", "List edges", None, (200, "[Edge]")),
    ep("post", "/edge-nodes", "edge-nodes", "Create an edge, optionally serving origins (ids or names)", Some("EdgeCreate"), (201, "Edge")),
    ep("get", "/edge-nodes/{edge}", "edge-nodes", "Get an edge (id or name)", None, (200, "Edge")),
    ep("patch", "/edge-nodes/{edge}", "edge-nodes", "Change an edge (null clears a field)", Some("EdgeUpdate"), (200, "Edge")),
    ep("delete", "/edge-nodes/{edge}", "edge-nodes", "Delete an edge", None, (204, "")),
    ep("post", "/edge-nodes/{edge}/rotate-key", "edge-nodes", "Replace the edge's WireGuard key", Some("RotateKey"), (200, "Edge")),
    ep("get", "/edge-nodes/{edge}/origins", "edge-nodes", "Origins the edge serves, with its address toward each", None, (200, "[EdgeOrigin]")),
    ep("put", "/edge-nodes/{edge}/origins/{origin}", "edge-nodes", "Make the edge serve an origin (allocates its address)", None, (201, "EdgeOrigin")),
    ep("delete", "/edge-nodes/{edge}/origins/{origin}", "edge-nodes", "Stop the edge serving an origin", None, (204, "")),
    ep("get", "/edge-nodes/{edge}/status", "status", "The edge's state and why, its last heartbeat's figures, its tunnel peers and latest checks", None, (200, "NodeDetail")),
    ep("get", "/origins/{origin}/status", "status", "The origin's state and why, its last heartbeat's figures, its tunnel peers, services and latest checks", None, (200, "NodeDetail")),
    ep("get", "/edge-nodes/{edge}/health-history", "health", "The edge's health-check results, newest first (?limit=)", None, (200, "[HealthCheck]")),
    ep("get", "/edge-nodes/{edge}/tokens", "tokens", "The edge's node tokens (metadata)", None, (200, "[NodeToken]")),
    ep("post", "/edge-nodes/{edge}/tokens", "tokens", "Create a one-time enrollment token for the edge", Some("TokenRequest"), (201, "IssuedNodeToken")),
    ep("get", "/edge-nodes/{edge}/bundle", "bundles", "tar.gz: edge.toml, control-ca.pem, a fresh enroll.token, kokoa-edge.service, install.sh", None, (200, "gzip")),
    ep("post", "/edge-nodes/{edge}/replace", "provisioning", "Replace an edge: provision a new one serving the same origins, wait until it serves, then drain and destroy the old one (409 without --provisioner, or when the in-flight bound is reached)", None, (202, "Replacement")),
    ep("post", "/edge-nodes/{edge}/destroy", "provisioning", "Destroy the edge's provisioned machine and delete the edge", None, (204, "")),
    ep("get", "/edge-nodes/{edge}/instance", "provisioning", "The machine a provisioner made for the edge (404 when none)", None, (200, "EdgeInstance")),
    ep("post", "/provision/edges", "provisioning", "Create an edge on a new machine made by control's provisioner", Some("ProvisionRequest"), (201, "Edge")),
    ep("get", "/provision/replacements", "provisioning", "Replacements, newest first (?unfinished=true, ?limit=N)", None, (200, "[Replacement]")),
    ep("get", "/provision/instances", "provisioning", "Machines provisioners made, oldest first", None, (200, "[EdgeInstance]")),
    ep("get", "/routes", "routes", "List routes", None, (200, "[Route]")),
    ep("post", "/routes", "routes", "Create a route (409 when a name is taken)", Some("RouteCreate"), (201, "Route")),
    ep("get", "/routes/{route}", "routes", "Get a route (id or host name)", None, (200, "Route")),
    ep("patch", "/routes/{route}", "routes", "Change a route", Some("RoutePatch"), (200, "Route")),
    ep("delete", "/routes/{route}", "routes", "Delete a route", None, (204, "")),
    ep("get", "/tcp-routes", "tcp-routes", "List raw TCP routes", None, (200, "[TcpRoute]")),
    ep("post", "/tcp-routes", "tcp-routes", "Create a raw TCP route: a public port on every edge serving the origin, forwarded to the service (409 when the port is taken or collides with an edge's listener)", Some("TcpRouteCreate"), (201, "TcpRoute")),
    ep("get", "/tcp-routes/{route}", "tcp-routes", "Get a TCP route (id or public port)", None, (200, "TcpRoute")),
    ep("patch", "/tcp-routes/{route}", "tcp-routes", "Change a TCP route", Some("TcpRoutePatch"), (200, "TcpRoute")),
    ep("delete", "/tcp-routes/{route}", "tcp-routes", "Delete a TCP route", None, (204, "")),
    ep("get", "/certificates", "certificates", "List certificates (never keys)", None, (200, "[Certificate]")),
    ep("post", "/certificates", "certificates", "Upload a certificate chain and key (422 when the key does not match, the leaf has no DNS name, it expired, or `names` claims a name it does not cover)", Some("CertificateUpload"), (201, "Certificate")),
    ep("get", "/certificates/{certificate}", "certificates", "Get a certificate (never its key)", None, (200, "Certificate")),
    ep("delete", "/certificates/{certificate}", "certificates", "Delete a certificate", None, (204, "")),
    ep("get", "/node-tokens", "tokens", "All node tokens (metadata), newest first", None, (200, "[NodeToken]")),
    ep("delete", "/node-tokens/{token}", "tokens", "Revoke a node token or credential", None, (200, "NodeToken")),
    ep("get", "/api-tokens", "tokens", "List API tokens (metadata)", None, (200, "[ApiToken]")),
    ep("post", "/api-tokens", "tokens", "Create an API token (the secret is returned once)", Some("ApiTokenRequest"), (201, "IssuedApiToken")),
    ep("delete", "/api-tokens/{token}", "tokens", "Revoke an API token", None, (200, "ApiToken")),
    ep("get", "/users", "users", "List dashboard users", None, (200, "[User]")),
    ep("post", "/users", "users", "Create a dashboard user (password hashed with Argon2id; role viewer unless given)", Some("UserCreate"), (201, "User")),
    ep("get", "/users/{user}", "users", "Get a user (id or name)", None, (200, "User")),
    ep("patch", "/users/{user}", "users", "Change a user's role or password (a new password ends their sessions)", Some("UserPatch"), (200, "User")),
    ep("delete", "/users/{user}", "users", "Delete a user (409 for the last admin)", None, (204, "")),
    ep("get", "/me", "users", "The caller: actor, role, and the account of a logged-in user", None, (200, "Me")),
    ep("post", "/me/password", "users", "Change the logged-in user's password", Some("PasswordChange"), (200, "User")),
    ep("get", "/me/totp", "users", "The TOTP enrolment in progress (404 without one)", None, (200, "TotpEnrolment")),
    ep("post", "/me/totp", "users", "Start TOTP enrolment: a new secret, its otpauth URI and QR code (SVG)", None, (201, "TotpEnrolment")),
    ep("post", "/me/totp/confirm", "users", "Confirm enrolment with a current code; returns the recovery codes once", Some("TotpConfirm"), (200, "RecoveryCodes")),
    ep("post", "/me/totp/disable", "users", "Turn TOTP off (password required)", Some("TotpDisable"), (200, "User")),
    ep("get", "/notification-targets", "notifications", "List notification targets (never their URL path or secret)", None, (200, "[NotificationTarget]")),
    ep("post", "/notification-targets", "notifications", "Create a webhook or Slack target (a webhook's signing secret is returned once)", Some("NewNotificationTarget"), (201, "CreatedNotificationTarget")),
    ep("get", "/notification-targets/{target}", "notifications", "Get a notification target", None, (200, "NotificationTarget")),
    ep("delete", "/notification-targets/{target}", "notifications", "Delete a notification target and its deliveries", None, (204, "")),
    ep("post", "/notification-targets/{target}/test", "notifications", "Queue a test notification for this target", None, (202, "Delivery")),
    ep("get", "/notification-targets/{target}/deliveries", "notifications", "A target's deliveries, newest first (?status=, ?limit=)", None, (200, "[Delivery]")),
    ep("get", "/notification-deliveries", "notifications", "Deliveries, newest first (?target=, ?status=, ?limit=)", None, (200, "[Delivery]")),
    ep("get", "/events", "events", "Audit trail (?after=, ?entity=, ?entity_id=, ?limit=)", None, (200, "[Event]")),
    ep("get", "/health-checks", "health", "Health-check results, newest first (?edge_id=, ?origin_id=, ?service_id=, ?kind=public|admin|service, ?success=, ?limit=)", None, (200, "[HealthCheck]")),
    ep("get", "/nodes", "status", "Every node: state and reason, applied version, last heartbeat, last NACK and the object it names", None, (200, "[NodeStatus]")),
    ep("get", "/status", "status", "Config version and every node's status", None, (200, "StatusSummary")),
];

fn schema_ref(name: &str) -> Value {
    match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(inner) => {
            json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{inner}")}})
        }
        None => json!({"$ref": format!("#/components/schemas/{name}")}),
    }
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn operation(endpoint: &Endpoint) -> Value {
    let params: Vec<Value> = endpoint
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    let (status, schema) = endpoint.response;
    let success = match schema {
        "" => json!({"description": "done"}),
        "gzip" => {
            json!({"description": "the bundle", "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}})
        }
        name => {
            json!({"description": "ok", "content": {"application/json": {"schema": schema_ref(name)}}})
        }
    };
    let mut responses = Map::new();
    responses.insert(status.to_string(), success);
    responses.insert(
        "401".into(),
        error_response("missing, unknown, expired or revoked bearer token or session"),
    );
    if endpoint.method != "get" || endpoint.response.1 == "gzip" {
        responses.insert(
            "403".into(),
            error_response("the caller's role is viewer, or a cookie request lacks its CSRF token"),
        );
    }
    if endpoint.path.contains('{') {
        responses.insert("404".into(), error_response("unknown id or name"));
    }
    if endpoint.body.is_some() {
        responses.insert("400".into(), error_response("malformed JSON"));
        responses.insert(
            "409".into(),
            error_response(
                "conflicts with existing data (duplicate name, host name or port; a port an edge \
                 listens on; still in use); `field` names the colliding field when one does",
            ),
        );
        responses.insert(
            "422".into(),
            error_response(
                "a field is not acceptable, or unknown (a misspelt field is refused, never \
                 ignored); `field` names it as a JSON path such as `limits.allow[0]`",
            ),
        );
    }
    let mut op = json!({
        "tags": [endpoint.tag],
        "summary": endpoint.summary,
        "operationId": format!("{}{}", endpoint.method, endpoint.path.replace(['/', '{', '}', '-'], "_")),
        "parameters": params,
        "responses": responses,
    });
    if let Some(body) = endpoint.body {
        op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema_ref(body)}}});
    }
    op
}

fn string() -> Value {
    json!({"type": "string"})
}
fn nullable(kind: &str) -> Value {
    json!({"type": [kind, "null"]})
}
fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}
fn uuid() -> Value {
    json!({"type": "string", "format": "uuid"})
}
fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties})
}
fn name() -> Value {
    json!({"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$", "description": "a-z, 0-9, `-` and `_`; at most 63"})
}
fn port() -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": 65535})
}

/// A route's own limits (the model's `RouteLimits`): the keys of a `[[routes]]` table.
fn route_limits() -> Value {
    json!({
        "type": "object", "additionalProperties": false,
        "description": "A route's own limits; unset keys take the edge's [limits] defaults. Unknown keys are refused (422 naming them).",
        "properties": {
            "rate": {"type": "number", "minimum": 0, "description": "requests per second per client; 0: no rate limit on this route"},
            "burst": {"type": "integer", "minimum": 1, "description": "requests a client may send at once; needs rate"},
            "max_body_bytes": {"type": "integer", "minimum": 0, "description": "largest request body; 0: unlimited on this route"},
            "allow": networks("only clients in these networks may use the route"),
            "deny": networks("clients in these networks get 403 (deny wins over allow)"),
        },
    })
}

fn networks(description: &str) -> Value {
    json!({"type": "array", "items": {"type": "string", "description": "CIDR or single address"}, "description": description})
}

/// An edge's `[limits]` (the model's `EdgeLimits`): the keys of the file's `[limits]` table.
fn edge_limits() -> Value {
    let integer =
        |description: &str| json!({"type": "integer", "minimum": 0, "description": description});
    json!({
        "type": ["object", "null"], "additionalProperties": false,
        "description": "The edge's [limits] defaults, sent instead of its file's; null: the edge keeps its file's. Unset keys take the model's defaults; unknown keys are refused.",
        "properties": {
            "rate": {"type": "number", "minimum": 0, "description": "default requests per second per client (0: none)"},
            "burst": {"type": "integer", "minimum": 1},
            "ipv4_prefix": integer("client keys: IPv4 addresses masked to this prefix (default 32)"),
            "ipv6_prefix": integer("client keys: IPv6 addresses masked to this prefix (default 64)"),
            "max_tracked_clients": integer("client keys the rate limiters track (default 100000)"),
            "connections_per_client": integer("concurrent connections per client key, 0: no cap (default 256)"),
            "max_connections": integer("concurrent connections in total, 0: no cap (default 16384)"),
            "max_headers": integer("header fields per request (default 100)"),
            "max_body_bytes": integer("default request body limit, 0: unlimited"),
            "idle_timeout": integer("seconds a connection may idle between requests (default 60)"),
            "h2_max_concurrent_streams": integer("HTTP/2 streams per connection (default 100)"),
            "h2_max_pending_reset_streams": integer("default 20"),
            "h2_max_local_error_reset_streams": integer("default 1024"),
            "h2_keepalive_interval": integer("seconds between HTTP/2 PINGs, 0: off (default 30)"),
            "send_timeout": integer("seconds a response may wait on a client that takes nothing before it is reset"),
            "send_min_rate": integer("bytes per second a client must take over each send_timeout of waiting, 0: none"),
            "client_body_timeout": integer("seconds a request body may wait on a client that sends nothing (408)"),
            "client_body_min_rate": integer("bytes per second a request body must average over each client_body_timeout, 0: none"),
            "lingering_time": integer("seconds the edge reads and discards the rest of a request body it answered early (a 413), before closing"),
            "lingering_timeout": integer("seconds of client silence that end that lingering at once"),
        },
    })
}

/// A node's tunnel settings as control sends them.
fn tunnel() -> Value {
    json!({
        "type": ["object", "null"], "additionalProperties": false,
        "description": "Tunnel settings sent instead of the node file's [tunnel] mtu and tcp_buffer (unset keys take the defaults); null: the node keeps its file's.",
        "properties": {
            "mtu": {"type": "integer", "minimum": 576, "maximum": 65475, "description": "inner MTU (default 1420)"},
            "tcp_buffer": {"type": "integer", "minimum": 4096, "maximum": 67108864, "description": "per-direction TCP buffer of each tunnel stream in bytes (default 262144)"},
        },
    })
}

fn schemas() -> Value {
    let node_state = object(
        &["status"],
        json!({
            "status": {"type": "string", "enum": ["enrolling", "online", "degraded", "offline", "draining"]},
            "reason": nullable("string"), "since": nullable("string"),
            "last_heartbeat": nullable("string"),
            "heartbeat": {"type": ["object", "null"]},
            "applied_version": nullable("integer"),
            "nack": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Nack"}]},
        }),
    );
    let service_props = json!({
        "name": name(), "port": port(),
        "protocol": {"type": "string", "enum": ["http", "tcp"]},
        "local_address": {"type": "string", "description": "ip:port or host:port where the app listens on the origin host (a host name is resolved by the origin when a stream arrives); default 127.0.0.1:<port>"},
        "health_path": nullable("string"),
    });
    json!({
        "Error": object(&["error"], json!({"error": string(), "field": string()})),
        "Nack": object(&["version", "error"], json!({
            "version": {"type": "integer"}, "error": string(),
            "object": {"type": "object", "description": "the config object the node named: fix or remove it and the next change reaches the node",
                "properties": {"kind": {"type": "string", "enum": ["route", "tcp_route", "origin", "edge", "service", "certificate", "limits", "tunnel", "node", ""]},
                               "key": string(), "field": {"type": "string", "description": "path in the node's snapshot, such as routes[2].limits.allow[0]"}}},
        })),
        "NodeState": node_state,
        "Origin": object(&["id", "name", "subnet", "public_key", "managed_key", "state", "address", "network"], json!({
            "id": uuid(), "name": string(), "subnet": {"type": "integer", "minimum": 1, "maximum": 254},
            "public_key": {"type": "string", "description": "WireGuard public key, base64"},
            "managed_key": {"type": "boolean"}, "state": {"$ref": "#/components/schemas/NodeState"},
            "tunnel": tunnel(),
            "address": string(), "network": string(), "created_at": time(), "updated_at": time(),
        })),
        "NewOrigin": object(&["name"], json!({"name": name(), "public_key": string(), "tunnel": tunnel()})),
        "OriginUpdate": object(&[], json!({"name": name(), "tunnel": tunnel()})),
        "RotateKey": object(&[], json!({"public_key": {"type": "string", "description": "absent: control generates a new pair"}})),
        "Service": object(&["id", "origin_id", "origin", "name", "port", "protocol", "local_address"], {
            let mut p = service_props.clone();
            p["id"] = uuid(); p["origin_id"] = uuid(); p["origin"] = string();
            p["created_at"] = time(); p["updated_at"] = time();
            p
        }),
        "NewService": object(&["name", "port"], service_props.clone()),
        "ServiceUpdate": object(&[], service_props),
        "EdgeOrigin": object(&["origin_id", "origin", "address", "origin_address"], json!({
            "origin_id": uuid(), "origin": string(), "address": string(), "origin_address": string(),
        })),
        "Edge": object(&["id", "name", "public_key", "managed_key", "state", "origins"], json!({
            "id": uuid(), "name": string(), "public_ip": nullable("string"), "endpoint": nullable("string"),
            "provider": nullable("string"), "region": nullable("string"), "public_key": string(),
            "admin_address": nullable("string"), "draining": {"type": "boolean"},
            "managed_key": {"type": "boolean"}, "state": {"$ref": "#/components/schemas/NodeState"},
            "limits": edge_limits(), "tunnel": tunnel(),
            "listeners": {"type": "array", "description": "the edge's own TCP listeners, as it reported them when it connected",
                "items": object(&["name", "address"], json!({"name": string(), "address": string()}))},
            "origins": {"type": "array", "items": {"$ref": "#/components/schemas/EdgeOrigin"}},
            "created_at": time(), "updated_at": time(),
        })),
        "EdgeCreate": object(&["name"], json!({
            "name": name(), "public_ip": string(), "endpoint": {"type": "string", "description": "WireGuard host:port origins dial"},
            "provider": string(), "region": string(), "public_key": string(),
            "admin_address": {"type": "string", "description": "host:port of the admin listener control probes /healthz on"},
            "origins": {"type": "array", "items": string(), "description": "origin ids or names"},
            "limits": edge_limits(), "tunnel": tunnel(),
        })),
        "EdgeUpdate": object(&[], json!({
            "name": name(), "public_ip": nullable("string"), "endpoint": nullable("string"),
            "provider": nullable("string"), "region": nullable("string"),
            "admin_address": nullable("string"),
            "draining": {"type": "boolean", "description": "true: withdrawn from DNS (state draining) while it keeps running"},
            "limits": edge_limits(), "tunnel": tunnel(),
        })),
        "Route": object(&["id", "hostname", "aliases", "service_id", "origin_id", "origin", "service", "port", "limits"], json!({
            "id": uuid(), "hostname": string(), "aliases": {"type": "array", "items": string()},
            "service_id": uuid(), "origin_id": uuid(), "origin": string(), "service": string(),
            "port": {"type": "integer"}, "limits": route_limits(),
            "problem": {"type": "string", "description": "set when stored limits (from an older control) do not fit the model: the route is not sent to edges until its limits are replaced"},
            "created_at": time(), "updated_at": time(),
        })),
        "RouteCreate": object(&["hostname"], json!({
            "hostname": {"type": "string", "description": "exact or *.wildcard"},
            "aliases": {"type": "array", "items": string()},
            "service_id": uuid(), "origin": {"type": "string", "description": "with service: origin id or name"},
            "service": {"type": "string", "description": "service id or name within origin"},
            "limits": route_limits(),
        })),
        "RoutePatch": object(&[], json!({
            "hostname": string(), "aliases": {"type": "array", "items": string()},
            "service_id": uuid(), "origin": string(), "service": string(),
            "limits": {"allOf": [route_limits()], "description": "replaces the whole limits object"},
        })),
        "TcpRoute": object(&["id", "listen_port", "service_id", "origin_id", "origin", "service", "port", "proxy_protocol", "allow", "deny"], json!({
            "id": uuid(), "listen_port": port(), "listen_ip": {"type": ["string", "null"], "description": "null: each edge's HTTPS listener address"},
            "service_id": uuid(), "origin_id": uuid(), "origin": string(), "service": string(),
            "port": {"type": "integer", "description": "the service's tunnel port"},
            "proxy_protocol": {"type": "string", "enum": ["none", "v2"]},
            "allow": networks("only clients in these networks may connect"),
            "deny": networks("clients in these networks are refused (deny wins)"),
            "created_at": time(), "updated_at": time(),
        })),
        "TcpRouteCreate": object(&["listen_port"], json!({
            "listen_port": port(), "listen_ip": {"type": "string", "description": "absent: each edge's HTTPS listener address"},
            "service_id": uuid(), "origin": {"type": "string", "description": "with service: origin id or name"},
            "service": {"type": "string", "description": "service id or name within origin"},
            "proxy_protocol": {"type": "string", "enum": ["none", "v2"], "description": "v2: the app first gets a PROXY protocol v2 header with the client's address"},
            "allow": networks("only clients in these networks may connect"),
            "deny": networks("clients in these networks are refused (deny wins)"),
        })),
        "TcpRoutePatch": object(&[], json!({
            "listen_port": port(), "listen_ip": nullable("string"), "service_id": uuid(),
            "origin": string(), "service": string(),
            "proxy_protocol": {"type": "string", "enum": ["none", "v2"]},
            "allow": networks("replaces the allowed networks"), "deny": networks("replaces the refused networks"),
        })),
        "Certificate": object(&["id", "names", "source"], json!({
            "id": uuid(), "names": {"type": "array", "items": string()},
            "source": {"type": "string", "enum": ["manual", "acme"]}, "chain_pem": nullable("string"),
            "issuer": nullable("string"), "not_after": nullable("string"), "last_error": nullable("string"),
            "created_at": time(), "updated_at": time(),
        })),
        "CertificateUpload": object(&["chain_pem", "key_pem"], json!({
            "chain_pem": string(), "key_pem": {"type": "string", "description": "the private key of the leaf (PKCS#8, PKCS#1 or SEC1)"},
            "names": {"type": "array", "items": string(), "description": "names it is expected to serve: each must be covered by the leaf's DNS subjectAltNames; the certificate is listed by its own names either way"},
        })),
        "NodeToken": object(&["id", "kind", "node", "created_at"], json!({
            "id": uuid(), "kind": {"type": "string", "enum": ["enrollment", "credential"]},
            "node": object(&["kind", "id"], json!({"kind": {"type": "string", "enum": ["edge", "origin"]}, "id": uuid()})),
            "created_at": time(), "expires_at": nullable("string"), "used_at": nullable("string"), "revoked_at": nullable("string"),
        })),
        "IssuedNodeToken": object(&["token", "secret"], json!({"token": {"$ref": "#/components/schemas/NodeToken"}, "secret": string()})),
        "TokenRequest": object(&[], json!({"ttl_seconds": {"type": "integer", "minimum": 1}})),
        "ApiToken": object(&["id", "name", "role", "created_at"], json!({
            "id": uuid(), "name": string(), "role": {"$ref": "#/components/schemas/Role"}, "created_at": time(), "expires_at": nullable("string"), "revoked_at": nullable("string"),
        })),
        "Role": {"type": "string", "enum": ["admin", "viewer"], "description": "viewer: read only"},
        "User": object(&["id", "name", "role", "totp_enabled", "recovery_codes_left"], json!({
            "id": uuid(), "name": string(), "role": {"$ref": "#/components/schemas/Role"},
            "totp_enabled": {"type": "boolean"}, "recovery_codes_left": {"type": "integer"},
            "locked_until": nullable("string"), "last_login_at": nullable("string"),
            "created_at": time(), "updated_at": time(),
        })),
        "UserCreate": object(&["name", "password"], json!({
            "name": string(), "password": {"type": "string", "minLength": 10},
            "role": {"$ref": "#/components/schemas/Role"},
        })),
        "UserPatch": object(&[], json!({
            "role": {"$ref": "#/components/schemas/Role"}, "password": {"type": "string", "minLength": 10},
        })),
        "Me": object(&["actor", "role", "via"], json!({
            "actor": string(), "role": {"$ref": "#/components/schemas/Role"},
            "via": {"type": "string", "enum": ["session", "token"]},
            "user": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/User"}]},
        })),
        "PasswordChange": object(&["current_password", "new_password"], json!({"current_password": string(), "new_password": string()})),
        "TotpEnrolment": object(&["secret", "otpauth_url", "qr_svg"], json!({"secret": string(), "otpauth_url": string(), "qr_svg": string()})),
        "TotpConfirm": object(&["code"], json!({"code": string()})),
        "TotpDisable": object(&["password"], json!({"password": string()})),
        "RecoveryCodes": object(&["recovery_codes"], json!({"recovery_codes": {"type": "array", "items": string()}})),
        "IssuedApiToken": object(&["token", "secret"], json!({"token": {"$ref": "#/components/schemas/ApiToken"}, "secret": string()})),
        "ApiTokenRequest": object(&["name"], json!({"name": string(), "ttl_seconds": {"type": "integer", "minimum": 1}, "role": {"$ref": "#/components/schemas/Role"}})),
        "Event": object(&["id", "at", "actor", "entity", "entity_id", "action", "detail"], json!({
            "id": {"type": "integer"}, "at": time(), "actor": string(), "entity": string(), "entity_id": string(),
            "action": string(), "detail": {}, "config_version": nullable("integer"),
        })),
        "ProvisionRequest": object(&["name"], json!({"name": name(), "origins": {"type": "array", "items": string(), "description": "origin ids or names"}})),
        "Replacement": object(&["id", "old_edge_id", "old_edge_name", "stage", "cause", "reason", "started_at", "updated_at"], json!({
            "id": uuid(), "old_edge_id": uuid(), "old_edge_name": string(),
            "new_edge_id": nullable("string"), "new_edge_name": nullable("string"),
            "stage": {"type": "string", "enum": ["provisioning", "waiting", "draining", "destroying", "done", "failed"]},
            "cause": {"type": "string", "enum": ["auto", "manual"]}, "reason": string(),
            "error": nullable("string"), "started_at": time(), "updated_at": time(), "finished_at": nullable("string"),
        })),
        "EdgeInstance": object(&["edge_id", "edge_name", "provider", "state", "created_at", "updated_at"], json!({
            "edge_id": uuid(), "edge_name": string(), "provider": {"type": "string", "enum": ["local", "digitalocean", "vultr", "hetzner"]},
            "instance_id": nullable("string"),
            "state": {"type": "string", "enum": ["creating", "running", "destroying", "destroyed", "failed"]},
            "public_ip": nullable("string"), "region": nullable("string"), "size": nullable("string"),
            "error": nullable("string"), "created_at": time(), "updated_at": time(),
        })),
        "NotificationTarget": object(&["id", "name", "kind", "url", "events", "signed", "created_at"], json!({
            "id": uuid(), "name": string(), "kind": {"type": "string", "enum": ["webhook", "slack"]},
            "url": string(), "events": {"type": "array", "items": string()}, "signed": {"type": "boolean"}, "created_at": time(),
        })),
        "NewNotificationTarget": object(&["name", "kind", "url"], json!({
            "name": string(), "kind": {"type": "string", "enum": ["webhook", "slack"]}, "url": string(),
            "secret": nullable("string"), "events": {"type": "array", "items": string()},
        })),
        "CreatedNotificationTarget": object(&["target"], json!({
            "target": {"$ref": "#/components/schemas/NotificationTarget"}, "secret": nullable("string"),
        })),
        "Delivery": object(&["id", "target_id", "event_id", "kind", "status", "attempts", "created_at", "updated_at"], json!({
            "id": uuid(), "target_id": uuid(), "event_id": {"type": "integer"}, "kind": string(),
            "status": {"type": "string", "enum": ["pending", "delivered", "failed", "dropped"]},
            "attempts": {"type": "integer"}, "last_status": nullable("integer"), "last_error": nullable("string"),
            "next_attempt_at": nullable("string"), "created_at": time(), "updated_at": time(),
        })),
        "HealthCheck": object(&["id", "success", "checked_at"], json!({
            "id": uuid(), "kind": {"type": ["string", "null"], "enum": ["public", "admin", "service", null]},
            "target": nullable("string"), "edge_id": nullable("string"), "origin_id": nullable("string"),
            "service_id": nullable("string"), "success": {"type": "boolean"},
            "response_time_ms": nullable("integer"), "error": nullable("string"), "checked_at": time(),
        })),
        "NodeStatus": object(&["kind", "id", "name", "status", "in_sync"], json!({
            "kind": {"type": "string", "enum": ["edge", "origin"]}, "id": uuid(), "name": string(),
            "status": {"type": "string", "enum": ["enrolling", "online", "degraded", "offline", "draining"]},
            "reason": nullable("string"), "since": nullable("string"),
            "connected": nullable("boolean"), "applied_version": nullable("integer"), "in_sync": {"type": "boolean"},
            "last_heartbeat": nullable("string"),
            "nack": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Nack"}]},
        })),
        "NodeDetail": object(&["kind", "id", "name", "status", "in_sync", "config_version", "peers", "checks"], json!({
            "kind": {"type": "string", "enum": ["edge", "origin"]}, "id": uuid(), "name": string(),
            "status": {"type": "string", "enum": ["enrolling", "online", "degraded", "offline", "draining"]},
            "reason": nullable("string"), "since": nullable("string"),
            "connected": nullable("boolean"), "applied_version": nullable("integer"), "in_sync": {"type": "boolean"},
            "last_heartbeat": nullable("string"),
            "nack": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Nack"}]},
            "config_version": {"type": "integer"}, "public_ip": nullable("string"), "draining": {"type": "boolean"},
            "heartbeat": {"type": ["object", "null"], "description": "rates, CPU, memory, uptime, peers, an origin's services, draining"},
            "peers": {"type": "array", "items": {"type": "object"}},
            "checks": {"type": "array", "items": {"$ref": "#/components/schemas/HealthCheck"}},
        })),
        "StatusSummary": object(&["config_version", "nodes"], json!({
            "config_version": {"type": "integer"},
            "nodes": {"type": "array", "items": {"$ref": "#/components/schemas/NodeStatus"}},
        })),
    })
}

/// Marks every request body schema `additionalProperties: false`: the API refuses an unknown
/// field (422 naming it) rather than ignoring it.
fn request_bodies_strict(mut schemas: Value) -> Value {
    for body in ENDPOINTS.iter().filter_map(|e| e.body) {
        if let Some(schema) = schemas.get_mut(body) {
            schema["additionalProperties"] = Value::Bool(false);
        }
    }
    schemas
}

/// The OpenAPI 3.1 document.
pub fn document_value() -> Value {
    let mut paths = Map::new();
    for endpoint in ENDPOINTS {
        let item = paths
            .entry(format!("/api/v1{}", endpoint.path))
            .or_insert_with(|| json!({}));
        item[endpoint.method] = operation(endpoint);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Kokoa control API",
            "version": crate::VERSION,
            "description": "Origins, services, edges, routes, certificates and tokens of a Kokoa deployment. Every endpoint needs `Authorization: Bearer <API token>` (create the first with `kokoa-control token create --name NAME`) or the dashboard's session cookie, whose state-changing requests must also send the session's CSRF token in `X-CSRF-Token`. Tokens and users have a role: `viewer` may only read (403). Errors are JSON `{\"error\": \"...\", \"field\": \"...\"}`. Origins and edges are addressed by id or name, routes by id or host name.",
        },
        "paths": paths,
        "components": {
            "schemas": request_bodies_strict(schemas()),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    })
}

pub(super) async fn document() -> Json<Value> {
    Json(document_value())
}
