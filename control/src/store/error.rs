//! The store's error type: precise variants the REST and gRPC layers map to status codes.

use std::borrow::Cow;
use std::fmt;

/// The kind of entity an error or event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    /// An origin (a private host running `kokoa-origin`).
    Origin,
    /// A service published by an origin.
    Service,
    /// An edge node (a public VPS running `kokoa-edge`).
    Edge,
    /// An edge serving an origin (the edge's netstack address toward it).
    Assignment,
    /// An HTTP route.
    Route,
    /// A raw TCP route.
    TcpRoute,
    /// A TLS certificate.
    Certificate,
    /// A node enrollment token or node credential.
    NodeToken,
    /// A REST API bearer token.
    ApiToken,
    /// A health-check result.
    HealthCheck,
    /// A dashboard account.
    User,
    /// A dashboard login session.
    Session,
    /// A notification target (webhook or Slack).
    NotificationTarget,
    /// A DNS name control steers (events of DNS steering: fail open, addresses changed).
    Dns,
    /// A machine a provisioner makes or destroys for an edge (`provision.failed`).
    Provision,
}

impl Entity {
    /// The stable name stored in the `events.entity` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Origin => "origin",
            Entity::Service => "service",
            Entity::Edge => "edge",
            Entity::Assignment => "assignment",
            Entity::Route => "route",
            Entity::TcpRoute => "tcp_route",
            Entity::Certificate => "certificate",
            Entity::NodeToken => "node_token",
            Entity::ApiToken => "api_token",
            Entity::HealthCheck => "health_check",
            Entity::User => "user",
            Entity::Session => "session",
            Entity::NotificationTarget => "notification_target",
            Entity::Dns => "dns",
            Entity::Provision => "provision",
        }
    }

    /// Parses a name produced by [`Entity::as_str`].
    pub fn parse(s: &str) -> Option<Entity> {
        Some(match s {
            "origin" => Entity::Origin,
            "service" => Entity::Service,
            "edge" => Entity::Edge,
            "assignment" => Entity::Assignment,
            "route" => Entity::Route,
            "tcp_route" => Entity::TcpRoute,
            "certificate" => Entity::Certificate,
            "node_token" => Entity::NodeToken,
            "api_token" => Entity::ApiToken,
            "health_check" => Entity::HealthCheck,
            "user" => Entity::User,
            "session" => Entity::Session,
            "notification_target" => Entity::NotificationTarget,
            "dns" => Entity::Dns,
            "provision" => Entity::Provision,
            _ => return None,
        })
    }
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a store operation can fail with.
///
/// `NotFound` -> 404, `Conflict` -> 409, `Invalid` -> 400/422, `PoolExhausted` -> 409/507,
/// `Unauthenticated` -> 401 (tell the caller nothing more), `Database` / `Crypto` /
/// `Corrupt` -> 500 (log them).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The entity does not exist.
    #[error("{entity} {key:?} not found")]
    NotFound {
        /// What was looked up.
        entity: Entity,
        /// The id or name that was looked up.
        key: String,
    },
    /// The change collides with existing data (a duplicate name, host name or port, or an entity
    /// still in use).
    #[error("conflict: {what}")]
    Conflict {
        /// What collides, in words an operator can act on.
        what: String,
        /// The input field whose value collides, when one does (as named in the API).
        field: Option<Cow<'static, str>>,
    },
    /// An input value is not acceptable.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The input field, as named in the API (a path such as `limits.allow[0]`).
        field: Cow<'static, str>,
        /// Why it was refused.
        reason: String,
    },
    /// No address is left in an address pool.
    #[error("address pool exhausted: {pool}; delete an unused entry to free one")]
    PoolExhausted {
        /// Which pool ran out (origin subnets in 10.100.0.0/16, or an origin's edge addresses).
        pool: String,
    },
    /// A token or credential was refused. The reason is for logs, not for the caller.
    #[error("credential refused: {reason}")]
    Unauthenticated {
        /// Why it was refused (unknown, expired, used, revoked, wrong kind).
        reason: &'static str,
    },
    /// The database failed or is unreachable.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Sealing or opening a secret failed (most often: the master key is not the one the data was
    /// sealed with).
    #[error(transparent)]
    Crypto(#[from] super::crypto::CryptoError),
    /// A stored value could not be read back (a bug, or the database was edited by hand).
    #[error("corrupt stored data in {what}: {reason}")]
    Corrupt {
        /// Table and column.
        what: &'static str,
        /// What was wrong with it.
        reason: String,
    },
}

impl StoreError {
    pub(crate) fn not_found(entity: Entity, key: impl ToString) -> Self {
        StoreError::NotFound {
            entity,
            key: key.to_string(),
        }
    }

    pub(crate) fn conflict(what: impl Into<String>) -> Self {
        StoreError::Conflict {
            what: what.into(),
            field: None,
        }
    }

    /// A conflict caused by the value of input `field`.
    pub(crate) fn conflict_on(
        field: impl Into<Cow<'static, str>>,
        what: impl Into<String>,
    ) -> Self {
        StoreError::Conflict {
            what: what.into(),
            field: Some(field.into()),
        }
    }

    pub(crate) fn invalid(field: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        StoreError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A value the shared model refused, as an `Invalid` naming `field` (joined with the
    /// model's own path, so `limits` + `allow[0]` names `limits.allow[0]`).
    pub(crate) fn model(field: &str, error: kokoa_model::ModelError) -> Self {
        StoreError::Invalid {
            field: kokoa_model::error::join(field, &error.field).into(),
            reason: error.message,
        }
    }

    pub(crate) fn corrupt(what: &'static str, reason: impl ToString) -> Self {
        StoreError::Corrupt {
            what,
            reason: reason.to_string(),
        }
    }
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
