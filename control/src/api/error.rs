//! [`ApiError`]: every REST failure as one JSON shape, `{"error": "...", "field": "..."}`, with
//! the status code chosen in one place from the store's error variants.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

/// A REST API error: a status code, a message an operator can act on and, for validation
/// errors, the request field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, in words.
    pub message: String,
    /// The request field (JSON path or query parameter) at fault, when one is.
    pub field: Option<String>,
}

/// The JSON body of an error response.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
    /// The field at fault.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub field: Option<String>,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }

    /// 422: the value of `field` is not acceptable.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: message.into(),
            field: Some(field.into()),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404: `what` does not exist.
    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, what)
    }

    /// 401 without detail: a missing, unknown, expired or revoked bearer token look the same to
    /// the caller (the reason goes to the log).
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 500: logs `error` and tells the caller only that control failed.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "REST request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error in kokoa-control; see its log",
        )
    }

    /// Sets the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} ({field})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ApiError {}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound { .. } => ApiError::not_found(error.to_string()),
            StoreError::Conflict { ref field, .. } => {
                let field = field.as_ref().map(|f| f.to_string());
                let mut api = ApiError::new(StatusCode::CONFLICT, error.to_string());
                api.field = field;
                api
            }
            StoreError::PoolExhausted { .. } => {
                ApiError::new(StatusCode::CONFLICT, error.to_string())
            }
            StoreError::Invalid { field, reason } if field.is_empty() => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, reason)
            }
            StoreError::Invalid { field, reason } => ApiError::invalid(field, reason),
            StoreError::Unauthenticated { reason } => {
                tracing::info!(reason, "credential refused");
                ApiError::unauthenticated("invalid or expired credential")
            }
            StoreError::Database(_) | StoreError::Crypto(_) | StoreError::Corrupt { .. } => {
                ApiError::internal(error)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            field: self.field,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"kokoa-control\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_statuses() {
        let invalid: ApiError = StoreError::Invalid {
            field: "hostname".into(),
            reason: "bad".into(),
        }
        .into();
        assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(invalid.field.as_deref(), Some("hostname"));
        let conflict: ApiError = StoreError::Conflict {
            what: "dup".into(),
            field: Some("listen_port".into()),
        }
        .into();
        assert_eq!(conflict.field.as_deref(), Some("listen_port"));
        assert_eq!(conflict.status, StatusCode::CONFLICT);
        let unauth: ApiError = StoreError::Unauthenticated { reason: "revoked" }.into();
        assert_eq!(unauth.status, StatusCode::UNAUTHORIZED);
        assert!(!unauth.message.contains("revoked"));
    }
}
