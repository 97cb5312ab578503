//! `POST /origins/{origin}/bundle` and `POST /edges/{edge}/bundle`: a node bundle through the
//! API's bundle endpoint. A form post rather than a link: each bundle mints an enrollment token,
//! so it is a change and carries the CSRF token.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;

use super::{error_page, seg};
use crate::web::session::viewer;
use crate::web::{api_error, Web};

async fn bundle(
    web: Web,
    headers: HeaderMap,
    fields: Vec<(String, String)>,
    path: String,
) -> Response {
    let viewer = match viewer(&web, &headers).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    let csrf = fields
        .iter()
        .find(|(n, _)| n == "_csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    if !viewer.csrf_ok(csrf) {
        return error_page(
            &viewer,
            StatusCode::FORBIDDEN,
            "Missing or stale CSRF token.",
        );
    }
    match web.send(&viewer.principal, Method::GET, &path, None).await {
        Ok((status, response_headers, bytes)) if status.is_success() => {
            let mut response = (status, bytes).into_response();
            for name in [header::CONTENT_TYPE, header::CONTENT_DISPOSITION] {
                if let Some(value) = response_headers.get(&name) {
                    response.headers_mut().insert(name, value.clone());
                }
            }
            response
        }
        Ok((status, _, bytes)) => {
            let error = api_error(status, &bytes);
            error_page(&viewer, status, &error.to_string())
        }
        Err(error) => error_page(&viewer, error.status, &error.to_string()),
    }
}

/// An origin's bundle.
pub async fn origin(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    bundle(
        web,
        headers,
        fields,
        format!("/origins/{}/bundle", seg(&key)),
    )
    .await
}

/// An edge's bundle.
pub async fn edge(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(key): Path<String>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    bundle(
        web,
        headers,
        fields,
        format!("/edge-nodes/{}/bundle", seg(&key)),
    )
    .await
}
