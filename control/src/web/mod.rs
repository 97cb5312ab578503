//! The dashboard: server-rendered pages (askama templates compiled into the binary) over the
//! REST API, served by `kokoa-control serve` next to `/api/v1`.
//!
//! A page never reaches the store on its own. Reading, it calls the API's GET endpoints
//! in-process ([`Web::get`]); changing, a form posts to [`action`], which turns the form into
//! the API's JSON body ([`form`]) and runs the API request through the same router, handlers and
//! validation as `curl` or the CLI would, as the logged-in user and with that user's role. An
//! API error comes back as `{"error", "field"}` and the page is shown again with the message
//! next to the field it names and the values as typed.
//!
//! - [`session`]: the login, second-factor and logout pages, the session cookie and CSRF;
//! - [`pages`]: overview, origins and services, edges, routes, certificates, tokens, users,
//!   account (TOTP enrolment), events;
//! - [`feed`]: the live event feed (server-sent events) with a bounded number of streams;
//! - [`chart`]: the health-history chart, an SVG drawn on the server;
//! - [`assets`]: the stylesheet and the one small script, compiled in.

pub mod assets;
pub mod chart;
pub mod feed;
pub mod form;
pub mod pages;
pub mod session;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower::ServiceExt as _;

use crate::account::Accounts;
use crate::api::extract::{Dispatched, Principal};
use crate::api::{ApiError, ErrorBody, BASE};
use crate::store::{Role, Store};

/// What the dashboard's handlers share.
#[derive(Clone)]
pub struct Web {
    /// The REST API router (state applied): every page read and change goes through it.
    api: Router,
    /// Logins and sessions.
    pub accounts: Arc<Accounts>,
    /// Set `Secure` on cookies (the dashboard is served over TLS).
    pub secure_cookies: bool,
    /// The live event feed.
    pub feed: feed::Feed,
}

impl std::fmt::Debug for Web {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Web")
            .field("secure_cookies", &self.secure_cookies)
            .finish_non_exhaustive()
    }
}

/// Dashboard settings (the `serve --ui-*` flags).
#[derive(Clone, Copy, Debug)]
pub struct WebOptions {
    /// Cookies get `Secure` (set when serving over TLS).
    pub secure_cookies: bool,
    /// Live event streams open at once; more answer 503.
    pub max_streams: usize,
}

impl Default for WebOptions {
    fn default() -> Self {
        WebOptions {
            secure_cookies: true,
            max_streams: feed::DEFAULT_MAX_STREAMS,
        }
    }
}

impl Web {
    /// The dashboard over `api` (the REST router with its state).
    pub fn new(
        api: Router,
        store: Arc<dyn Store>,
        accounts: Arc<Accounts>,
        options: WebOptions,
    ) -> Self {
        Web {
            api,
            accounts,
            feed: feed::Feed::new(store, options.max_streams),
            secure_cookies: options.secure_cookies,
        }
    }

    /// Runs one API request in-process as `principal`: status and body.
    pub async fn send(
        &self,
        principal: &Principal,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), ApiError> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{BASE}{path}"))
            .header(header::HOST, "dashboard");
        let body = match body {
            Some(value) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(value).map_err(ApiError::internal)?)
            }
            None => Body::empty(),
        };
        let mut request = request.body(body).map_err(ApiError::internal)?;
        request.extensions_mut().insert(principal.clone());
        request.extensions_mut().insert(Dispatched);
        let response = self
            .api
            .clone()
            .oneshot(request)
            .await
            .map_err(ApiError::internal)?;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.map_err(ApiError::internal)?.to_bytes();
        Ok((parts.status, parts.headers, bytes))
    }

    /// Like [`Web::send`]; a non-2xx answer becomes the API's error, a 2xx one is decoded
    /// (an empty body as JSON `null`).
    pub async fn call<T: DeserializeOwned>(
        &self,
        principal: &Principal,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ApiError> {
        let (status, _, bytes) = self.send(principal, method, path, body).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(bytes).map_err(ApiError::internal)
    }

    /// `GET` through the API.
    pub async fn get<T: DeserializeOwned>(
        &self,
        principal: &Principal,
        path: &str,
    ) -> Result<T, ApiError> {
        self.call(principal, Method::GET, path, None).await
    }
}

/// The API's error from a non-2xx answer.
pub fn api_error(status: StatusCode, bytes: &[u8]) -> ApiError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => ApiError {
            status,
            message: body.error,
            field: body.field,
        },
        Err(_) => ApiError::new(status, String::from_utf8_lossy(bytes).trim().to_string()),
    }
}

/// The dashboard's routes (state applied): pages at `/`, `/origins`, ..., assets under
/// `/assets/`. Merge it with the API router.
pub fn router(web: Web) -> Router {
    Router::new()
        .route("/", get(pages::overview::page))
        .route("/overview/live", get(pages::overview::live))
        .route(
            "/login",
            get(session::login_page).post(session::login_submit),
        )
        .route(
            "/login/totp",
            get(session::totp_page).post(session::totp_submit),
        )
        .route("/logout", post(session::logout))
        .route("/origins", get(pages::origins::list))
        .route("/origins/{origin}", get(pages::origins::detail))
        .route("/origins/{origin}/bundle", post(pages::bundle::origin))
        .route("/edges", get(pages::edges::list))
        .route("/edges/{edge}", get(pages::edges::detail))
        .route("/edges/{edge}/bundle", post(pages::bundle::edge))
        .route("/routes", get(pages::routes::list))
        .route("/routes/{route}", get(pages::routes::edit))
        .route("/certificates", get(pages::certificates::list))
        .route(
            "/tokens",
            get(pages::tokens::list).post(pages::tokens::create),
        )
        .route("/users", get(pages::users::list))
        .route("/account", get(pages::account::page))
        .route("/account/totp", post(pages::account::begin_totp))
        .route("/account/totp/confirm", post(pages::account::confirm_totp))
        .route("/events", get(pages::events::page))
        .route("/events/stream", get(feed::stream))
        .route("/action", post(action))
        .route("/assets/{file}", get(assets::serve))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(web)
}

/// Headers on every dashboard response: a strict Content-Security-Policy (own scripts and
/// styles only, no inline script), no framing, no MIME sniffing, no referrer leaks.
async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// `POST /action`: one API request from a form (see [`form`]). On success, back to the form's
/// `_return` page with a note; on an API error, the `_return` page again with the error next to
/// the field it names and the values as typed (status of the API's answer).
async fn action(
    axum::extract::State(web): axum::extract::State<Web>,
    headers: HeaderMap,
    axum::Form(fields): axum::Form<Vec<(String, String)>>,
) -> Response {
    let viewer = match session::viewer(&web, &headers).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    let submitted = match form::Submitted::parse(fields) {
        Ok(submitted) => submitted,
        Err(message) => return pages::error_page(&viewer, StatusCode::BAD_REQUEST, &message),
    };
    if !viewer.csrf_ok(&submitted.csrf) {
        return pages::error_page(&viewer, StatusCode::FORBIDDEN, pages::CSRF_REFUSED);
    }
    let body = submitted.body();
    let result = web
        .send(
            &viewer.principal,
            submitted.method.clone(),
            &submitted.path,
            body.as_ref(),
        )
        .await;
    match result {
        Ok((status, _, _)) if status.is_success() => {
            let mut response = Redirect::to(&submitted.return_to).into_response();
            if let Some(done) = &submitted.done {
                session::set_flash(&web, &mut response, done);
            }
            response
        }
        Ok((status, _, bytes)) => {
            let error = api_error(status, &bytes);
            pages::render_with_error(&web, &viewer, &submitted, error).await
        }
        Err(error) => pages::render_with_error(&web, &viewer, &submitted, error).await,
    }
}

/// Whether `role` may change things (the pages hide every change control otherwise; the API
/// refuses them anyway).
pub fn can_change(role: Role) -> bool {
    role == Role::Admin
}
