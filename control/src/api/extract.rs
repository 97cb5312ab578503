//! Request extractors whose rejections are [`ApiError`]s (so a malformed body answers with the
//! same JSON error shape as a store refusal), and authentication: API bearer tokens and the
//! dashboard's session cookie, roles and CSRF.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::ApiState;
use crate::store::{Actor, Role, Session, SessionStage, User};

/// A JSON request body. An empty body reads as `{}` (for endpoints whose fields are all
/// optional). Syntax errors answer 400; a value of the wrong type, or a missing field, 422 with
/// the field's JSON path; a body over the size limit 413.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        parse_json(text).map(ApiJson)
    }
}

/// Deserializes `bytes`, naming the JSON path of the first bad value.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => Ok(value),
        Err(error) => {
            let path = error.path().to_string();
            let inner = error.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                Err(ApiError::bad_request(format!(
                    "malformed JSON body: {inner}"
                )))
            } else {
                let field = if path == "." { None } else { Some(path) };
                Err(ApiError {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    message: inner.to_string(),
                    field,
                })
            }
        }
    }
}

/// Query parameters; a bad one answers 400 naming it.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|query| ApiQuery(query.0))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// The authenticated caller of a request: the API token's or user's name, recorded as the
/// [`Actor`] of every change the request makes.
#[derive(Clone, Debug)]
pub struct Caller(pub Actor);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::unauthenticated("missing bearer token"))
    }
}

/// Who is calling, with what rights and through what credential (inserted by [`authenticate`]
/// next to [`Caller`]).
#[derive(Clone, Debug)]
pub struct Principal {
    /// Recorded on changes.
    pub actor: Actor,
    /// What the caller may do.
    pub role: Role,
    /// The credential.
    pub via: Via,
}

/// The credential a request came with.
#[derive(Clone, Debug)]
pub enum Via {
    /// `Authorization: Bearer` with an API token.
    Token,
    /// The dashboard's session cookie.
    Session {
        /// The session.
        session: Box<Session>,
        /// Its user.
        user: Box<User>,
        /// The session's CSRF token (what state-changing requests must echo).
        csrf: String,
    },
}

impl Principal {
    /// The logged-in user, for session callers.
    pub fn user(&self) -> Option<&User> {
        match &self.via {
            Via::Session { user, .. } => Some(user),
            Via::Token => None,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::unauthenticated("not authenticated"))
    }
}

/// Marks a request the dashboard made on behalf of a [`Principal`] it authenticated itself
/// (cookie and CSRF token checked by the page handler). Only code can set an extension, so a
/// client cannot forge it.
#[derive(Clone, Copy, Debug)]
pub struct Dispatched;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "kokoa_session";
/// The header a cookie-authenticated state-changing API request carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The CSRF token of a session: derived from the cookie secret (which a cross-site page can
/// neither read nor guess), so it needs no storage and dies with the session.
pub fn csrf_token(session_secret: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("kokoa-csrf:{session_secret}").as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

/// Whether `given` is `expected`, compared through digests so timing tells nothing.
pub fn csrf_matches(expected: &str, given: &str) -> bool {
    use sha2::Digest as _;
    !given.is_empty() && sha2::Sha256::digest(expected) == sha2::Sha256::digest(given)
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
}

/// Whether a request changes state: every method but GET/HEAD/OPTIONS, and bundle downloads
/// (each mints an enrollment token).
pub fn changes_state(method: &Method, path: &str) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) || path.ends_with("/bundle")
}

/// Whether `path` (under `/api/v1`) is the caller's own account (`/me...`), which a viewer may
/// change too (their password and second factor).
fn self_service(path: &str) -> bool {
    let path = path.strip_prefix(super::BASE).unwrap_or(path);
    path == "/me" || path.starts_with("/me/")
}

/// Middleware: authenticates the request with `Authorization: Bearer <API token>` or the
/// dashboard's session cookie, and stores the [`Caller`] and [`Principal`].
///
/// - no credential, or an unknown, expired or revoked one: 401 (with `WWW-Authenticate`);
/// - a cookie-authenticated request that changes state without the session's CSRF token in
///   `X-CSRF-Token`: 403;
/// - a viewer (token or user) changing anything but their own account: 403.
pub async fn authenticate(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let path = request.uri().path().to_string();
    let mutating = changes_state(request.method(), &path);
    let principal = if request.extensions().get::<Dispatched>().is_some() {
        request
            .extensions()
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::unauthenticated("dispatched without a principal"))?
    } else if let Some(secret) = bearer(request.headers()) {
        let token = state.store.authenticate_api_token(secret).await?;
        Principal {
            actor: Actor::Api(token.name),
            role: token.role,
            via: Via::Token,
        }
    } else if let Some(secret) = cookie(request.headers(), SESSION_COOKIE) {
        let (session, user) = state.accounts.authenticate(secret).await?;
        if session.stage != SessionStage::Active {
            return Err(ApiError::unauthenticated(
                "the login is not finished (second factor due)",
            ));
        }
        let csrf = csrf_token(secret);
        if mutating {
            let given = request
                .headers()
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !csrf_matches(&csrf, given) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "missing or wrong CSRF token: a cookie-authenticated request that changes \
                     state must send the session's token in X-CSRF-Token",
                ));
            }
        }
        Principal {
            actor: Actor::User(user.name.clone()),
            role: user.role,
            via: Via::Session {
                session: Box::new(session),
                user: Box::new(user),
                csrf,
            },
        }
    } else {
        return Err(ApiError::unauthenticated(
            "missing bearer token: send `Authorization: Bearer <token>` (create one with \
             `kokoa-control token create --name NAME`)",
        ));
    };
    if mutating && principal.role != Role::Admin && !self_service(&path) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} has the {} role, which may only read; ask an admin",
                principal.actor, principal.role
            ),
        ));
    }
    request
        .extensions_mut()
        .insert(Caller(principal.actor.clone()));
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_csrf() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; kokoa_session=abc; b=2".parse().expect("header"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "c"), None);
        let token = csrf_token("abc");
        assert_ne!(token, csrf_token("abd"));
        assert!(csrf_matches(&token, &csrf_token("abc")));
        assert!(!csrf_matches(&token, ""));
        assert!(changes_state(&Method::POST, "/origins"));
        assert!(changes_state(&Method::GET, "/origins/o/bundle"));
        assert!(!changes_state(&Method::GET, "/origins"));
        assert!(self_service("/api/v1/me/totp"));
        assert!(self_service("/me"));
        assert!(!self_service("/members"));
    }
}
