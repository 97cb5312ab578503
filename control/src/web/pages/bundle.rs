//! `POST /origins/{origin}/bundle` and `POST /edges/{edge}/bundle`: a node bundle through the
//! API's bundle endpoint. A form post rather than a link: each bundle mints an enrollment token,
//! so it is a change and carries the CSRF token.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use axum::Form;

use super::seg;
use crate::web::{api_error, Web};

async fn bundle(
    web: Web,
    headers: HeaderMap,
    fields: Vec<(String, String)>,
    path: String,
) -> Response {
    super::submit(&web, &headers, &fields, async |viewer| {
        let (status, response_headers, bytes) = web
            .send(&viewer.principal, Method::GET, &path, None)
            .await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let mut response = (status, bytes).into_response();
        for name in [header::CONTENT_TYPE, header::CONTENT_DISPOSITION] {
            if let Some(value) = response_headers.get(&name) {
                response.headers_mut().insert(name, value.clone());
            }
        }
        Ok(response)
    })
    .await
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
