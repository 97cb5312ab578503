//! The dashboard's pages: each module reads what it shows through the API ([`Web::get`]) and
//! renders one askama template (`control/templates/`). Forms post to `/action` (see
//! [`super::form`]); when the API refuses one, [`render_with_error`] shows the page the form
//! came from again, with the error next to the field.

pub mod account;
pub mod bundle;
pub mod certificates;
pub mod edges;
pub mod events;
pub mod origins;
pub mod overview;
pub mod routes;
pub mod tokens;
pub mod users;

use askama::Template;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use time::OffsetDateTime;

use super::form::Submitted;
use super::session::{clear_flash, viewer, Viewer};
use super::Web;
use crate::api::ApiError;
use crate::store::Nack;

/// What every page's frame shows.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Page title.
    pub title: String,
    /// Which navigation entry is current.
    pub nav: &'static str,
    /// Logged-in user.
    pub user: String,
    /// Their role.
    pub role: String,
    /// They may change things.
    pub admin: bool,
    /// Their CSRF token, for forms.
    pub csrf: String,
    /// A note from the previous request.
    pub flash: Option<String>,
    /// Control's version.
    pub version: &'static str,
}

impl Layout {
    /// The frame for `viewer` on page `nav`.
    pub fn new(viewer: &Viewer, title: impl Into<String>, nav: &'static str) -> Self {
        Layout {
            title: title.into(),
            nav,
            user: viewer.user.name.clone(),
            role: viewer.user.role.to_string(),
            admin: viewer.admin(),
            csrf: viewer.csrf.clone(),
            flash: viewer.flash.clone(),
            version: crate::VERSION,
        }
    }

    /// `aria-current="page"` for the current navigation entry.
    pub fn current(&self, nav: &str) -> &'static str {
        if self.nav == nav {
            "page"
        } else {
            "false"
        }
    }
}

/// A rendered page with `status`; clears the one-shot note when one was shown.
pub fn render(web: &Web, status: StatusCode, layout: &Layout, page: &impl Template) -> Response {
    match page.render() {
        Ok(body) => {
            let mut response = (status, Html(body)).into_response();
            if layout.flash.is_some() {
                clear_flash(web, &mut response);
            }
            response
        }
        Err(error) => ApiError::internal(error).into_response(),
    }
}

/// A page saying what went wrong.
#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    layout: Layout,
    status: u16,
    message: String,
}

/// An error page for `viewer`.
pub fn error_page(viewer: &Viewer, status: StatusCode, message: &str) -> Response {
    let page = ErrorPage {
        layout: Layout::new(viewer, "Error", ""),
        status: status.as_u16(),
        message: message.to_string(),
    };
    match page.render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(error) => ApiError::internal(error).into_response(),
    }
}

/// A page that failed to load: the API's error as a page.
pub fn failed(viewer: &Viewer, error: ApiError) -> Response {
    let status = error.status;
    error_page(viewer, status, &error.to_string())
}

/// A `GET` of a page: the viewer of `headers` (or the way to the login page when there is none)
/// and what `page` renders for them, with a failed API read shown as an error page. Every
/// page's handler is this, so a page differs from another only in what it renders.
pub async fn show(
    web: &Web,
    headers: &HeaderMap,
    page: impl AsyncFnOnce(&Viewer) -> Result<Response, ApiError>,
) -> Response {
    let viewer = match viewer(web, headers).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    page(&viewer).await.unwrap_or_else(|e| failed(&viewer, e))
}

/// What a change with a missing or stale CSRF token is told (403; nothing was done).
pub const CSRF_REFUSED: &str =
    "The form's CSRF token is missing or stale; reload the page and try again.";

/// A form's `POST`: like [`show`], once the form's CSRF token (`_csrf` in `fields`) is the
/// session's; otherwise a 403 page and `page` never runs.
pub async fn submit(
    web: &Web,
    headers: &HeaderMap,
    fields: &[(String, String)],
    page: impl AsyncFnOnce(&Viewer) -> Result<Response, ApiError>,
) -> Response {
    let csrf = fields
        .iter()
        .find(|(name, _)| name == "_csrf")
        .map(|(_, value)| value.trim())
        .unwrap_or("");
    show(web, headers, async |viewer| {
        if !viewer.csrf_ok(csrf) {
            return Ok(error_page(viewer, StatusCode::FORBIDDEN, CSRF_REFUSED));
        }
        page(viewer).await
    })
    .await
}

/// Shows the page `submitted` came from again with `error` on its form.
pub async fn render_with_error(
    web: &Web,
    viewer: &Viewer,
    submitted: &Submitted,
    error: ApiError,
) -> Response {
    let status = error.status;
    if status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED {
        // Not a value to correct: the caller may not do this at all.
        return error_page(viewer, status, &error.to_string());
    }
    let forms = submitted.failed(&error);
    let path = submitted
        .return_to
        .split(['?', '#'])
        .next()
        .unwrap_or("/")
        .to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result = match segments.as_slice() {
        ["origins"] => origins::render_list(web, viewer, forms, status).await,
        ["origins", key] => origins::render_detail(web, viewer, key, forms, status).await,
        ["edges"] => edges::render_list(web, viewer, forms, status).await,
        ["edges", key] => edges::render_detail(web, viewer, key, forms, status).await,
        ["routes"] => routes::render_list(web, viewer, forms, status).await,
        ["routes", key] => routes::render_edit(web, viewer, key, forms, status).await,
        ["certificates"] => certificates::render(web, viewer, forms, status).await,
        ["tokens"] => tokens::render(web, viewer, forms, None, status).await,
        ["users"] => users::render(web, viewer, forms, status).await,
        ["account"] => account::render(web, viewer, forms, account::Extra::None, status).await,
        _ => return error_page(viewer, status, &error.to_string()),
    };
    result.unwrap_or_else(|e| failed(viewer, e))
}

/// A node's last NACK: the version, the node's reason and the object it named (`v7: ... in
/// route app.example.com (routes[0].limits.allow[0])`), so the page says what to fix.
pub fn nack(nack: &Nack) -> String {
    match &nack.object {
        Some(object) => format!("v{}: {} in {object}", nack.version, nack.error),
        None => format!("v{}: {}", nack.version, nack.error),
    }
}

/// "3m ago"-style age of `t`.
pub fn ago(t: Option<OffsetDateTime>) -> String {
    let Some(t) = t else {
        return "never".into();
    };
    let secs = (OffsetDateTime::now_utc() - t).whole_seconds().max(0);
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        7200..=172_799 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// `2026-12-06 22:31 UTC`.
pub fn when(t: OffsetDateTime) -> String {
    format!(
        "{}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// A byte count in B / KiB / MiB / GiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Percent-encodes a path segment for a link.
pub fn seg(s: &str) -> String {
    crate::cli::client::segment(s)
}
