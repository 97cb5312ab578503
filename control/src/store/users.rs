//! [`UserStore`]: dashboard accounts (people who log in to control's web UI), their second factor
//! and recovery codes, and the per-account login lockout.
//!
//! The account types live here rather than in [`model`](super::model), which is near the size
//! limit; they are re-exported from [`store`](super) like every other record type.
//!
//! The store never sees a password or a TOTP code: the account service
//! ([`crate::account`]) hashes passwords (Argon2id) and checks codes, and hands the store the
//! PHC string, the sealed-at-rest TOTP secret and SHA-256 hashes of recovery codes.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::error::Result;
use super::model::{Actor, Id};

/// What a caller may do. Every API token and every user has one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    #[default]
    Admin,
    /// Read only: every `GET`, nothing that changes state (the API answers 403).
    Viewer,
}

impl Role {
    /// The stable name (`admin`, `viewer`) stored in the database and used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }

    /// Parses [`Role::as_str`]'s names.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Role::parse(s).ok_or_else(|| format!("unknown role {s:?} (admin or viewer)"))
    }
}

/// A dashboard account as the API shows it (no secrets).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// Id.
    pub id: Id,
    /// Unique login name.
    pub name: String,
    /// What the user may do.
    pub role: Role,
    /// A TOTP second factor is enrolled (and required at login).
    pub totp_enabled: bool,
    /// Unused recovery codes left.
    pub recovery_codes_left: u32,
    /// Until when password logins are refused after too many failures.
    #[serde(with = "time::serde::rfc3339::option")]
    pub locked_until: Option<OffsetDateTime>,
    /// Last successful login.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_login_at: Option<OffsetDateTime>,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// What only the account service reads: the password hash and the TOTP secrets, unsealed.
pub struct UserSecrets {
    /// Argon2id PHC string.
    pub password_hash: String,
    /// The enrolled TOTP secret.
    pub totp: Option<Zeroizing<Vec<u8>>>,
    /// A TOTP secret being enrolled, not yet confirmed.
    pub totp_pending: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for UserSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSecrets")
            .field("totp", &self.totp.is_some())
            .field("totp_pending", &self.totp_pending.is_some())
            .finish_non_exhaustive()
    }
}

/// Input of [`UserStore::create_user`]: the password already hashed.
#[derive(Clone, Debug)]
pub struct NewUser {
    /// Unique login name (the rules of every other name).
    pub name: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Role.
    pub role: Role,
}

/// Input of [`UserStore::update_user`]; absent fields are unchanged.
#[derive(Clone, Debug, Default)]
pub struct UserUpdate {
    /// New role (refused when it would leave no admin).
    pub role: Option<Role>,
    /// New Argon2id PHC string; ends every session of the user.
    pub password_hash: Option<String>,
}

/// When repeated failures lock an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockoutPolicy {
    /// Failures within `window` that lock the account.
    pub max_failures: u32,
    /// The window failures are counted in.
    pub window: Duration,
    /// How long the account stays locked.
    pub lockout: Duration,
}

/// What [`UserStore::login_failed`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Counted; this many more failures lock the account.
    Counted {
        /// Failures left before the lock.
        left: u32,
    },
    /// This failure locked the account until then.
    Locked(OffsetDateTime),
}

/// The accounts part of [`Store`](super::Store).
///
/// Mutating methods take the [`Actor`] recorded in the change's event. Nothing here changes
/// node config, so no method bumps the config version.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Creates an account. Conflict when the name is taken.
    async fn create_user(&self, actor: &Actor, new: NewUser) -> Result<User>;

    /// All accounts, by name.
    async fn list_users(&self) -> Result<Vec<User>>;

    /// How many accounts exist.
    async fn count_users(&self) -> Result<u64>;

    /// One account.
    async fn get_user(&self, id: Id) -> Result<User>;

    /// One account by name (names are stored lower-case).
    async fn user_by_name(&self, name: &str) -> Result<User>;

    /// The account's password hash and TOTP secrets, unsealed.
    async fn user_secrets(&self, id: Id) -> Result<UserSecrets>;

    /// Changes role or password. A password change ends all the user's sessions. Conflict when
    /// the change would leave no admin.
    async fn update_user(&self, actor: &Actor, id: Id, update: UserUpdate) -> Result<User>;

    /// Deletes an account and its sessions. Conflict for the last admin.
    async fn delete_user(&self, actor: &Actor, id: Id) -> Result<()>;

    /// Stores a TOTP secret being enrolled (sealed), replacing an earlier unconfirmed one.
    async fn begin_totp(&self, actor: &Actor, id: Id, secret: &[u8]) -> Result<()>;

    /// Makes the pending secret the account's second factor, records `step` as used and
    /// replaces the recovery codes with `recovery_hashes` (SHA-256 hex). Invalid without a
    /// pending secret.
    async fn enable_totp(
        &self,
        actor: &Actor,
        id: Id,
        step: u64,
        recovery_hashes: &[String],
    ) -> Result<User>;

    /// Turns TOTP off and drops the recovery codes.
    async fn disable_totp(&self, actor: &Actor, id: Id) -> Result<User>;

    /// Records TOTP time step `step` as used if it is later than the last one used: `false`
    /// means the code was already used (a replay), atomically across replicas.
    async fn accept_totp_step(&self, id: Id, step: u64) -> Result<bool>;

    /// Marks the unused recovery code with this SHA-256 hex as used; `false` when there is no
    /// such unused code.
    async fn use_recovery_code(&self, actor: &Actor, id: Id, code_hash: &str) -> Result<bool>;

    /// Counts a failed login (wrong password or code) and locks the account when `policy` says
    /// so; writes a `login_failed` event, and a `locked` event when it locks.
    async fn login_failed(
        &self,
        actor: &Actor,
        id: Id,
        reason: &str,
        policy: &LockoutPolicy,
    ) -> Result<FailureOutcome>;

    /// Clears the failure count and stamps the login time.
    async fn login_succeeded(&self, id: Id) -> Result<()>;

    /// Writes a login audit event about no account in particular (an address locked after
    /// repeated failures): entity `session`, id the `address` in `detail`.
    async fn audit_login(
        &self,
        actor: &Actor,
        action: &str,
        detail: serde_json::Value,
    ) -> Result<()>;
}
