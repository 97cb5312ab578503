//! `/tokens`: API tokens (create with a role, shown once; revoke) and node tokens (revoke).

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::Form;
use serde_json::json;

use super::{when, Layout};
use crate::api::{ApiError, EdgeView, OriginView};
use crate::store::{ApiToken, IssuedApiToken, NodeId, NodeToken, NodeTokenKind};
use crate::web::form::FormState;
use crate::web::session::Viewer;
use crate::web::Web;

/// An API token row.
pub struct ApiRow {
    name: String,
    role: String,
    created: String,
    expires: String,
    revoked: bool,
    api: String,
}

/// A node token row.
pub struct NodeRow {
    node: String,
    kind: String,
    created: String,
    state: String,
    api: String,
    active: bool,
}

#[derive(Template)]
#[template(path = "tokens.html")]
struct Page {
    layout: Layout,
    forms: FormState,
    api: Vec<ApiRow>,
    nodes: Vec<NodeRow>,
    issued: Option<(String, String)>,
}

/// Renders the page with `forms` and, after creating one, the new token's name and secret.
pub async fn render(
    web: &Web,
    viewer: &Viewer,
    forms: FormState,
    issued: Option<(String, String)>,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let p = &viewer.principal;
    let tokens: Vec<ApiToken> = web.get(p, "/api-tokens").await?;
    let node_tokens: Vec<NodeToken> = web.get(p, "/node-tokens").await?;
    let origins: Vec<OriginView> = web.get(p, "/origins").await?;
    let edges: Vec<EdgeView> = web.get(p, "/edge-nodes").await?;
    let node_name = |node: NodeId| {
        match node {
            NodeId::Edge(id) => edges
                .iter()
                .find(|e| e.edge.id == id)
                .map(|e| format!("edge {}", e.edge.name)),
            NodeId::Origin(id) => origins
                .iter()
                .find(|o| o.origin.id == id)
                .map(|o| format!("origin {}", o.origin.name)),
        }
        .unwrap_or_else(|| node.id().to_string())
    };
    let api = tokens
        .iter()
        .map(|t| ApiRow {
            name: t.name.clone(),
            role: t.role.to_string(),
            created: when(t.created_at),
            expires: t.expires_at.map(when).unwrap_or_else(|| "never".into()),
            revoked: t.revoked_at.is_some(),
            api: format!("/api-tokens/{}", t.id),
        })
        .collect();
    let now = time::OffsetDateTime::now_utc();
    let nodes = node_tokens
        .iter()
        .map(|t| {
            let state = if t.revoked_at.is_some() {
                "revoked"
            } else if t.used_at.is_some() {
                "used"
            } else if t.expires_at.is_some_and(|e| e <= now) {
                "expired"
            } else {
                "active"
            };
            NodeRow {
                node: node_name(t.node),
                kind: match t.kind {
                    NodeTokenKind::Enrollment => "enrollment".into(),
                    NodeTokenKind::Credential => "credential".into(),
                },
                created: when(t.created_at),
                active: state == "active",
                state: state.into(),
                api: format!("/node-tokens/{}", t.id),
            }
        })
        .collect();
    let layout = Layout::new(viewer, "Tokens", "tokens");
    let page = Page {
        layout: layout.clone(),
        forms,
        api,
        nodes,
        issued,
    };
    Ok(super::render(web, status, &layout, &page))
}

/// `GET /tokens`.
pub async fn list(State(web): State<Web>, headers: HeaderMap) -> Response {
    super::show(&web, &headers, async |viewer| {
        render(&web, viewer, FormState::default(), None, StatusCode::OK).await
    })
    .await
}

/// `POST /tokens`: creates an API token through the API and shows its secret once.
pub async fn create(
    State(web): State<Web>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    super::submit(&web, &headers, &fields, async |viewer| {
        let mut body = json!({"name": field("name"), "role": field("role")});
        let days = field("ttl_days");
        if !days.is_empty() {
            body["ttl_seconds"] = match days.parse::<u64>() {
                Ok(d) => json!(d.saturating_mul(86_400)),
                Err(_) => json!(days),
            };
        }
        let result: Result<IssuedApiToken, ApiError> = web
            .call(&viewer.principal, Method::POST, "/api-tokens", Some(&body))
            .await;
        let (forms, issued, status) = match result {
            Ok(issued) => (
                FormState::default(),
                Some((issued.token.name, issued.secret.expose().to_string())),
                StatusCode::CREATED,
            ),
            Err(error) => {
                let mut forms = FormState::refused("token-create", &error);
                // The form asks for days; the API's field is seconds.
                if forms.field.as_deref() == Some("ttl_seconds") {
                    forms.field = Some("ttl_days".into());
                }
                forms.values = fields
                    .iter()
                    .filter(|(n, _)| !n.starts_with('_'))
                    .cloned()
                    .collect();
                (forms, None, error.status)
            }
        };
        render(&web, viewer, forms, issued, status).await
    })
    .await
}
