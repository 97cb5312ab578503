//! `/certificates`: source, issuer, expiry and last error of every certificate; upload; delete.

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use time::OffsetDateTime;

use super::{when, Layout};
use crate::api::ApiError;
use crate::store::{Certificate, CertificateSource};
use crate::web::form::FormState;
use crate::web::session::Viewer;
use crate::web::Web;

/// A certificate row.
pub struct Row {
    names: String,
    source: String,
    issuer: String,
    expires: String,
    days: Option<i64>,
    error: Option<String>,
    api: String,
}

#[derive(Template)]
#[template(path = "certificates.html")]
struct Page {
    layout: Layout,
    forms: FormState,
    certificates: Vec<Row>,
}

/// Renders the page with `forms`.
pub async fn render(
    web: &Web,
    viewer: &Viewer,
    forms: FormState,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let certificates: Vec<Certificate> = web.get(&viewer.principal, "/certificates").await?;
    let now = OffsetDateTime::now_utc();
    let rows = certificates
        .iter()
        .map(|c| Row {
            names: c.names.join(", "),
            source: match c.source {
                CertificateSource::Manual => "uploaded".into(),
                CertificateSource::Acme => "ACME".into(),
            },
            issuer: c.issuer.clone().unwrap_or_default(),
            expires: c
                .not_after
                .map(when)
                .unwrap_or_else(|| "not issued yet".into()),
            days: c.not_after.map(|t| (t - now).whole_days()),
            error: c.last_error.clone(),
            api: format!("/certificates/{}", c.id),
        })
        .collect();
    let layout = Layout::new(viewer, "Certificates", "certificates");
    let page = Page {
        layout: layout.clone(),
        forms,
        certificates: rows,
    };
    Ok(super::render(web, status, &layout, &page))
}

/// `GET /certificates`.
pub async fn list(State(web): State<Web>, headers: HeaderMap) -> Response {
    super::show(&web, &headers, async |viewer| {
        render(&web, viewer, FormState::default(), StatusCode::OK).await
    })
    .await
}
