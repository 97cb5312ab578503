//! Request extractors whose rejections are [`ApiError`]s (so a malformed body answers with the
//! same JSON error shape as a store refusal), and bearer-token authentication.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::ApiState;
use crate::store::Actor;

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

/// The authenticated caller of a request: the API token's name, recorded as the [`Actor`] of
/// every change the request makes.
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

/// Middleware: requires `Authorization: Bearer <API token>` and stores the [`Caller`]. Answers
/// 401 (with `WWW-Authenticate`) when the header is missing or the token is unknown, expired or
/// revoked.
pub async fn authenticate(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let secret = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            ApiError::unauthenticated(
                "missing bearer token: send `Authorization: Bearer <token>` (create one with \
                 `kokoa-control token create --name NAME`)",
            )
        })?;
    let token = state.store.authenticate_api_token(secret).await?;
    request
        .extensions_mut()
        .insert(Caller(Actor::Api(token.name)));
    Ok(next.run(request).await)
}
