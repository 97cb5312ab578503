//! Logging in and out: the login page, the TOTP step, logout, the cookies, and [`viewer`], which
//! every page uses to find who is looking.
//!
//! Cookies (all `HttpOnly`, `SameSite=Strict`, `Path=/`, and `Secure` when served over TLS):
//! - `kokoa_session`: the session secret; the session's CSRF token is derived from it;
//! - `kokoa_pending`: the second-factor step's short-lived session (5 minutes by default);
//! - `kokoa_login`: a random token the login forms echo (double-submit), so another site
//!   cannot log a browser in to an account of its choosing;
//! - `kokoa_flash`: a one-shot note ("Route created") shown by the next page.

use std::net::SocketAddr;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;

use super::Web;
use crate::account::{Client, LoginError, LoginStep};
use crate::api::extract::{cookie, csrf_matches, csrf_token, Principal, Via, SESSION_COOKIE};
use crate::store::{SessionStage, User};

/// The pending second-factor cookie.
pub const PENDING_COOKIE: &str = "kokoa_pending";
/// The login forms' double-submit cookie.
pub const LOGIN_COOKIE: &str = "kokoa_login";
/// The one-shot note cookie.
pub const FLASH_COOKIE: &str = "kokoa_flash";

/// The client's address, inserted into every request by the server loop.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// The logged-in user looking at a page.
#[derive(Clone, Debug)]
pub struct Viewer {
    /// As the API sees them.
    pub principal: Principal,
    /// Their account.
    pub user: User,
    /// Their session's CSRF token (forms carry it in `_csrf`).
    pub csrf: String,
    /// A note from the previous request.
    pub flash: Option<String>,
}

impl Viewer {
    /// Whether a submitted CSRF token is this session's.
    pub fn csrf_ok(&self, given: &str) -> bool {
        csrf_matches(&self.csrf, given)
    }

    /// Whether the pages offer changes.
    pub fn admin(&self) -> bool {
        super::can_change(self.user.role)
    }
}

fn set_cookie(web: &Web, response: &mut Response, name: &str, value: &str, max_age: Option<u64>) {
    let mut cookie = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        cookie.push_str(&format!("; Max-Age={age}"));
    }
    if web.secure_cookies {
        cookie.push_str("; Secure");
    }
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

fn clear_cookie(web: &Web, response: &mut Response, name: &str) {
    set_cookie(web, response, name, "", Some(0));
}

/// Sets the one-shot note the next page shows.
pub fn set_flash(web: &Web, response: &mut Response, note: &str) {
    let encoded = URL_SAFE_NO_PAD.encode(note.chars().take(200).collect::<String>());
    set_cookie(web, response, FLASH_COOKIE, &encoded, Some(60));
}

/// Clears the note once a page showed it.
pub fn clear_flash(web: &Web, response: &mut Response) {
    clear_cookie(web, response, FLASH_COOKIE);
}

fn flash(headers: &HeaderMap) -> Option<String> {
    let raw = cookie(headers, FLASH_COOKIE)?;
    let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
    String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
}

fn login_redirect() -> Response {
    Redirect::to("/login").into_response()
}

/// The logged-in user behind `headers`' session cookie, or a redirect to the login page.
pub async fn viewer(web: &Web, headers: &HeaderMap) -> Result<Viewer, Response> {
    let Some(secret) = cookie(headers, SESSION_COOKIE) else {
        return Err(login_redirect());
    };
    let (session, user) = match web.accounts.authenticate(secret).await {
        Ok(found) => found,
        Err(crate::store::StoreError::Unauthenticated { .. }) => {
            let mut response = login_redirect();
            clear_cookie(web, &mut response, SESSION_COOKIE);
            return Err(response);
        }
        Err(error) => {
            let error = crate::api::ApiError::from(error);
            return Err((error.status, error.message).into_response());
        }
    };
    if session.stage != SessionStage::Active {
        return Err(login_redirect());
    }
    let csrf = csrf_token(secret);
    Ok(Viewer {
        principal: Principal {
            actor: crate::store::Actor::User(user.name.clone()),
            role: user.role,
            via: Via::Session {
                session: Box::new(session),
                user: Box::new(user.clone()),
                csrf: csrf.clone(),
            },
        },
        user,
        csrf,
        flash: flash(headers),
    })
}

fn client(headers: &HeaderMap, peer: Option<Extension<PeerAddr>>) -> Client {
    Client {
        address: peer.map(|Extension(PeerAddr(addr))| addr.ip()),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

/// The login page.
#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    name: String,
    error: Option<String>,
    note: Option<String>,
}

/// The second-factor page.
#[derive(Template)]
#[template(path = "login_totp.html")]
struct TotpPage {
    csrf: String,
    user: String,
    error: Option<String>,
}

fn html(status: StatusCode, page: impl Template) -> Response {
    match page.render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(error) => crate::api::ApiError::internal(error).into_response(),
    }
}

/// The login forms' token: the `kokoa_login` cookie's, or a new one (set on the response).
fn login_token(web: &Web, headers: &HeaderMap, response_cookies: &mut Vec<String>) -> String {
    if let Some(existing) = cookie(headers, LOGIN_COOKIE) {
        return existing.to_string();
    }
    let mut random = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
    let token = URL_SAFE_NO_PAD.encode(random);
    let _ = web;
    response_cookies.push(token.clone());
    token
}

fn with_login_cookie(web: &Web, mut response: Response, new: Vec<String>) -> Response {
    for token in new {
        set_cookie(web, &mut response, LOGIN_COOKIE, &token, Some(3600));
    }
    response
}

/// `?logged_out` and friends on the login page.
#[derive(Debug, Default, Deserialize)]
pub struct LoginQuery {
    #[serde(default)]
    logged_out: Option<String>,
}

/// `GET /login`.
pub async fn login_page(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(query): Query<LoginQuery>,
) -> Response {
    if viewer(&web, &headers).await.is_ok() {
        return Redirect::to("/").into_response();
    }
    let mut new = Vec::new();
    let csrf = login_token(&web, &headers, &mut new);
    let page = LoginPage {
        csrf,
        name: String::new(),
        error: None,
        note: query.logged_out.map(|_| "You are logged out.".to_string()),
    };
    with_login_cookie(&web, html(StatusCode::OK, page), new)
}

/// The login form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default, rename = "_csrf")]
    csrf: String,
}

fn login_csrf_ok(headers: &HeaderMap, given: &str) -> bool {
    cookie(headers, LOGIN_COOKIE).is_some_and(|expected| csrf_matches(expected, given))
}

fn login_error_status(error: &LoginError) -> StatusCode {
    match error {
        LoginError::Refused | LoginError::Expired => StatusCode::UNAUTHORIZED,
        LoginError::AccountLocked { .. } | LoginError::AddressLocked { .. } => {
            StatusCode::TOO_MANY_REQUESTS
        }
        LoginError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `POST /login`: the password step.
pub async fn login_submit(
    State(web): State<Web>,
    headers: HeaderMap,
    peer: Option<Extension<PeerAddr>>,
    Form(form): Form<LoginForm>,
) -> Response {
    let mut new = Vec::new();
    let csrf = login_token(&web, &headers, &mut new);
    if !login_csrf_ok(&headers, &form.csrf) {
        let page = LoginPage {
            csrf,
            name: form.name,
            error: Some("The login form expired; please try again.".into()),
            note: None,
        };
        return with_login_cookie(&web, html(StatusCode::FORBIDDEN, page), new);
    }
    let client = client(&headers, peer);
    match web
        .accounts
        .login(&form.name, &form.password, &client)
        .await
    {
        Ok(LoginStep::Done(issued)) => {
            let mut response = Redirect::to("/").into_response();
            let max_age = web.accounts.policy().absolute.as_secs();
            set_cookie(
                &web,
                &mut response,
                SESSION_COOKIE,
                issued.secret.expose(),
                Some(max_age),
            );
            response
        }
        Ok(LoginStep::SecondFactor(pending)) => {
            let mut response = Redirect::to("/login/totp").into_response();
            let max_age = web.accounts.policy().second_factor.as_secs();
            set_cookie(
                &web,
                &mut response,
                PENDING_COOKIE,
                pending.secret.expose(),
                Some(max_age),
            );
            response
        }
        Err(error) => {
            if let LoginError::Store(e) = &error {
                tracing::error!(error = %e, "login failed in the store");
            }
            let page = LoginPage {
                csrf,
                name: form.name,
                error: Some(error.to_string()),
                note: None,
            };
            with_login_cookie(&web, html(login_error_status(&error), page), new)
        }
    }
}

/// `GET /login/totp`.
pub async fn totp_page(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some(pending) = cookie(&headers, PENDING_COOKIE) else {
        return login_redirect();
    };
    let Ok((_, user)) = web.accounts.pending(pending).await else {
        let mut response = login_redirect();
        clear_cookie(&web, &mut response, PENDING_COOKIE);
        return response;
    };
    let mut new = Vec::new();
    let csrf = login_token(&web, &headers, &mut new);
    let page = TotpPage {
        csrf,
        user: user.name,
        error: None,
    };
    with_login_cookie(&web, html(StatusCode::OK, page), new)
}

/// The code form.
#[derive(Debug, Deserialize)]
pub struct TotpForm {
    #[serde(default)]
    code: String,
    #[serde(default, rename = "_csrf")]
    csrf: String,
}

/// `POST /login/totp`: the second-factor step.
pub async fn totp_submit(
    State(web): State<Web>,
    headers: HeaderMap,
    peer: Option<Extension<PeerAddr>>,
    Form(form): Form<TotpForm>,
) -> Response {
    let Some(pending) = cookie(&headers, PENDING_COOKIE) else {
        return login_redirect();
    };
    let mut new = Vec::new();
    let csrf = login_token(&web, &headers, &mut new);
    let user = match web.accounts.pending(pending).await {
        Ok((_, user)) => user.name,
        Err(_) => {
            let mut response = login_redirect();
            clear_cookie(&web, &mut response, PENDING_COOKIE);
            return response;
        }
    };
    if !login_csrf_ok(&headers, &form.csrf) {
        let page = TotpPage {
            csrf,
            user,
            error: Some("The form expired; please try again.".into()),
        };
        return with_login_cookie(&web, html(StatusCode::FORBIDDEN, page), new);
    }
    let client = client(&headers, peer);
    match web
        .accounts
        .second_factor(pending, &form.code, &client)
        .await
    {
        Ok(issued) => {
            let mut response = Redirect::to("/").into_response();
            clear_cookie(&web, &mut response, PENDING_COOKIE);
            let max_age = web.accounts.policy().absolute.as_secs();
            set_cookie(
                &web,
                &mut response,
                SESSION_COOKIE,
                issued.secret.expose(),
                Some(max_age),
            );
            response
        }
        Err(LoginError::Expired) => {
            let mut response = Redirect::to("/login").into_response();
            clear_cookie(&web, &mut response, PENDING_COOKIE);
            response
        }
        Err(error @ LoginError::AccountLocked { .. }) => {
            let page = LoginPage {
                csrf,
                name: user,
                error: Some(error.to_string()),
                note: None,
            };
            let mut response =
                with_login_cookie(&web, html(StatusCode::TOO_MANY_REQUESTS, page), new);
            clear_cookie(&web, &mut response, PENDING_COOKIE);
            response
        }
        Err(error) => {
            let page = TotpPage {
                csrf,
                user,
                error: Some(error.to_string()),
            };
            with_login_cookie(&web, html(login_error_status(&error), page), new)
        }
    }
}

/// The logout form.
#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    #[serde(default, rename = "_csrf")]
    csrf: String,
}

/// `POST /logout`.
pub async fn logout(
    State(web): State<Web>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    let viewer = match viewer(&web, &headers).await {
        Ok(viewer) => viewer,
        Err(response) => return response,
    };
    if !viewer.csrf_ok(&form.csrf) {
        return super::pages::error_page(
            &viewer,
            StatusCode::FORBIDDEN,
            "The logout form's CSRF token is missing or stale; reload the page and try again.",
        );
    }
    if let Via::Session { session, .. } = &viewer.principal.via {
        if let Err(error) = web.accounts.end(session, true).await {
            tracing::error!(%error, "cannot end a session");
        }
    }
    let mut response = Redirect::to("/login?logged_out=1").into_response();
    clear_cookie(&web, &mut response, SESSION_COOKIE);
    response
}
