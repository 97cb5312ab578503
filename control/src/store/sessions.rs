//! [`SessionStore`]: dashboard login sessions. The browser holds a random secret in a cookie;
//! the store keeps only its SHA-256, so a leaked database opens no session.

use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::error::Result;
use super::model::{Actor, Id, Secret};
use super::users::User;

/// How far a session has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStage {
    /// The password was right; the TOTP code (or a recovery code) is still due. Such a session
    /// opens nothing but the second-factor step.
    Totp,
    /// Logged in.
    Active,
}

impl SessionStage {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SessionStage::Totp => "totp",
            SessionStage::Active => "active",
        }
    }
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "totp" => Some(SessionStage::Totp),
            "active" => Some(SessionStage::Active),
            _ => None,
        }
    }
}

/// A login session (no secret).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Id.
    pub id: Id,
    /// Whose.
    pub user_id: Id,
    /// How far the login got.
    pub stage: SessionStage,
    /// The client address at login.
    pub address: Option<String>,
    /// The browser's User-Agent at login.
    pub user_agent: Option<String>,
    /// Login time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last request (updated at most every [`TOUCH_INTERVAL`]).
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
    /// Absolute end, whatever the activity.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// A new session with its secret (goes into the cookie, shown once).
#[derive(Debug)]
pub struct IssuedSession {
    /// The session.
    pub session: Session,
    /// The cookie value.
    pub secret: Secret,
}

/// Input of [`SessionStore::create_session`].
#[derive(Clone, Debug)]
pub struct NewSession {
    /// Whose.
    pub user_id: Id,
    /// Stage.
    pub stage: SessionStage,
    /// Absolute lifetime.
    pub lifetime: Duration,
    /// Client address.
    pub address: Option<IpAddr>,
    /// User-Agent (truncated).
    pub user_agent: Option<String>,
    /// At most this many sessions per user: the oldest go first.
    pub max_per_user: u32,
}

/// `last_seen_at` is written at most this often per session, so browsing is not one database
/// write per request; the idle timeout is therefore accurate to this much.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(30);

/// The sessions part of [`Store`](super::Store).
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Starts a session (and deletes the user's expired ones, and the oldest beyond
    /// `max_per_user`). Writes a `logged_in` event for an active session.
    async fn create_session(&self, actor: &Actor, new: NewSession) -> Result<IssuedSession>;

    /// The session a cookie secret belongs to and its user. `Unauthenticated` when unknown,
    /// past its absolute end, or idle for longer than `idle` (an expired session is deleted).
    async fn authenticate_session(&self, secret: &str, idle: Duration) -> Result<(Session, User)>;

    /// Ends a session (logout, or a finished second-factor step); `logged_out` event when
    /// `event` is set. Idempotent.
    async fn delete_session(&self, actor: &Actor, id: Id, event: bool) -> Result<()>;

    /// A user's sessions, newest first.
    async fn list_sessions(&self, user_id: Id) -> Result<Vec<Session>>;
}
