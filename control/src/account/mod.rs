//! Dashboard accounts and sessions: the one service that creates users, checks passwords and
//! TOTP codes, throttles logins and opens, reads and ends sessions. The REST API, the web pages
//! and the CLI (`user add`) all call it; it keeps its rules in one place and the store keeps the
//! data.
//!
//! - [`password`]: Argon2id hashes and the length rule;
//! - [`totp`]: RFC 6238 codes, the enrolment QR code (SVG) and recovery codes;
//! - [`throttle`]: failed logins per client address, bounded in memory.
//!
//! A login is: address not locked -> account not locked -> password (Argon2id, at most
//! [`SessionPolicy::max_concurrent_hashes`] at a time) -> with TOTP on, a short `totp`-stage
//! session that opens only the code step -> the code (or a single-use recovery code) -> a fresh
//! `active` session (a new secret, so a pending cookie never becomes a logged-in one). Every
//! failure counts against the address and, for an existing account, the account; reaching either
//! limit locks it and writes a `locked` audit event.

pub mod password;
pub mod throttle;
pub mod totp;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use crate::store::{
    Actor, FailureOutcome, IssuedSession, LockoutPolicy, NewSession, NewUser, Role, Session,
    SessionStage, Store, StoreError, User, UserUpdate,
};
use throttle::{AddressPolicy, AddressThrottle};

/// Session and login limits (the `serve --session-*` and `--login-*` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionPolicy {
    /// A session unused this long ends.
    pub idle: Duration,
    /// A session ends this long after login, whatever the activity.
    pub absolute: Duration,
    /// Time to enter the TOTP code after the password.
    pub second_factor: Duration,
    /// Sessions per user; a new login ends the oldest beyond it.
    pub max_per_user: u32,
    /// Per-account lockout.
    pub account: LockoutPolicy,
    /// Per-address lockout.
    pub address: AddressPolicy,
    /// Argon2id computations at once (each takes ~20 MiB and tens of ms of a core); logins
    /// beyond it wait, so a login flood cannot starve the API.
    pub max_concurrent_hashes: usize,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(12 * 3600),
            second_factor: Duration::from_secs(5 * 60),
            max_per_user: 20,
            account: LockoutPolicy {
                max_failures: 5,
                window: Duration::from_secs(15 * 60),
                lockout: Duration::from_secs(15 * 60),
            },
            address: AddressPolicy::default(),
            max_concurrent_hashes: 2,
        }
    }
}

/// Why a login step failed. The messages are what the login page shows.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Wrong name, password or code (which one is not said).
    #[error("wrong user name, password or code")]
    Refused,
    /// The account is locked after too many failures.
    #[error("too many failed logins for this account; try again after {until}")]
    AccountLocked {
        /// Until when (RFC 3339).
        until: String,
    },
    /// This address is locked after too many failures.
    #[error("too many failed logins from this address; try again in {} minutes", .retry_after.as_secs().div_ceil(60))]
    AddressLocked {
        /// How long to wait.
        retry_after: Duration,
    },
    /// The second-factor step expired or the pending session is unknown.
    #[error("the login took too long; start again")]
    Expired,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a correct password leads to.
#[derive(Debug)]
pub enum LoginStep {
    /// Logged in.
    Done(IssuedSession),
    /// TOTP is on: this pending session only opens the code step.
    SecondFactor(IssuedSession),
}

/// A TOTP enrolment in progress: what the page shows to set up an authenticator app.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TotpEnrolment {
    /// The secret in base32, for typing in.
    pub secret: String,
    /// The `otpauth://` URI the QR code holds.
    pub otpauth_url: String,
    /// The QR code, an inline SVG element.
    pub qr_svg: String,
}

/// Where a login comes from.
#[derive(Clone, Debug, Default)]
pub struct Client {
    /// The peer address.
    pub address: Option<IpAddr>,
    /// Its User-Agent.
    pub user_agent: Option<String>,
}

/// The accounts service.
#[derive(Debug)]
pub struct Accounts {
    store: Arc<dyn Store>,
    policy: SessionPolicy,
    addresses: AddressThrottle,
    hashing: Semaphore,
}

fn unix_now() -> u64 {
    u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

impl Accounts {
    /// The service over `store` with `policy`.
    pub fn new(store: Arc<dyn Store>, policy: SessionPolicy) -> Self {
        Accounts {
            store,
            addresses: AddressThrottle::new(policy.address),
            hashing: Semaphore::new(policy.max_concurrent_hashes.max(1)),
            policy,
        }
    }

    /// The limits in force.
    pub fn policy(&self) -> &SessionPolicy {
        &self.policy
    }

    async fn hash(&self, password: &str) -> Result<String, StoreError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| StoreError::invalid("password", "control is shutting down"))?;
        let password = zeroize::Zeroizing::new(password.to_string());
        tokio::task::spawn_blocking(move || password::hash(&password))
            .await
            .map_err(|e| StoreError::invalid("password", format!("hashing failed: {e}")))?
    }

    async fn verify(&self, phc: String, candidate: &str) -> bool {
        let Ok(_permit) = self.hashing.acquire().await else {
            return false;
        };
        let candidate = zeroize::Zeroizing::new(candidate.to_string());
        tokio::task::spawn_blocking(move || password::verify(&phc, &candidate))
            .await
            .unwrap_or(false)
    }

    /// Creates a user (the password checked and hashed here).
    pub async fn create_user(
        &self,
        actor: &Actor,
        name: &str,
        password: &str,
        role: Role,
    ) -> Result<User, StoreError> {
        password::check("password", password)?;
        let password_hash = self.hash(password).await?;
        self.store
            .create_user(
                actor,
                NewUser {
                    name: name.to_string(),
                    password_hash,
                    role,
                },
            )
            .await
    }

    /// Changes a user's role and/or password (by an admin; no current password needed).
    pub async fn update_user(
        &self,
        actor: &Actor,
        id: crate::store::Id,
        role: Option<Role>,
        password: Option<&str>,
    ) -> Result<User, StoreError> {
        let password_hash = match password {
            Some(p) => {
                password::check("password", p)?;
                Some(self.hash(p).await?)
            }
            None => None,
        };
        self.store
            .update_user(
                actor,
                id,
                UserUpdate {
                    role,
                    password_hash,
                },
            )
            .await
    }

    /// A user changing their own password: the current one must be right.
    pub async fn change_password(
        &self,
        user: &User,
        current: &str,
        new: &str,
    ) -> Result<User, StoreError> {
        let secrets = self.store.user_secrets(user.id).await?;
        if !self.verify(secrets.password_hash, current).await {
            return Err(StoreError::invalid("current_password", "is not right"));
        }
        password::check("new_password", new)?;
        let hash = self.hash(new).await?;
        self.store
            .update_user(
                &Actor::User(user.name.clone()),
                user.id,
                UserUpdate {
                    role: None,
                    password_hash: Some(hash),
                },
            )
            .await
    }

    /// Counts a failure against the address (and writes the audit event when that locks it).
    async fn address_failed(&self, client: &Client) {
        let Some(address) = client.address else {
            return;
        };
        if let Some(lockout) = self.addresses.failed(address, Instant::now()) {
            tracing::warn!(%address, ?lockout, "login address locked after repeated failures");
            let detail = json!({"address": address.to_string(), "seconds": lockout.as_secs()});
            if let Err(error) = self
                .store
                .audit_login(&Actor::System, "address_locked", detail)
                .await
            {
                tracing::error!(%error, "cannot record the address lockout");
            }
        }
    }

    async fn account_failed(&self, user: &User, client: &Client, reason: &str) -> LoginError {
        let address = client.address.map(|a| a.to_string()).unwrap_or_default();
        let reason = format!("{reason} from {address}");
        match self
            .store
            .login_failed(&Actor::System, user.id, &reason, &self.policy.account)
            .await
        {
            Ok(FailureOutcome::Locked(until)) => {
                tracing::warn!(user = %user.name, %address, "account locked after repeated failed logins");
                LoginError::AccountLocked {
                    until: rfc3339(until),
                }
            }
            Ok(FailureOutcome::Counted { .. }) => LoginError::Refused,
            Err(error) => LoginError::Store(error),
        }
    }

    fn check_address(&self, client: &Client) -> Result<(), LoginError> {
        if let Some(address) = client.address {
            if let Some(retry_after) = self.addresses.locked(address, Instant::now()) {
                return Err(LoginError::AddressLocked { retry_after });
            }
        }
        Ok(())
    }

    async fn open_session(
        &self,
        user: &User,
        stage: SessionStage,
        client: &Client,
    ) -> Result<IssuedSession, StoreError> {
        let lifetime = match stage {
            SessionStage::Totp => self.policy.second_factor,
            SessionStage::Active => self.policy.absolute,
        };
        self.store
            .create_session(
                &Actor::User(user.name.clone()),
                NewSession {
                    user_id: user.id,
                    stage,
                    lifetime,
                    address: client.address,
                    user_agent: client.user_agent.clone(),
                    max_per_user: self.policy.max_per_user,
                },
            )
            .await
    }

    /// The password step.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        client: &Client,
    ) -> Result<LoginStep, LoginError> {
        self.check_address(client)?;
        let user = match self.store.user_by_name(name).await {
            Ok(user) => Some(user),
            Err(StoreError::NotFound { .. }) => None,
            Err(error) => return Err(error.into()),
        };
        let Some(user) = user else {
            // Same work as a wrong password, so timing does not tell which names exist.
            self.verify(password::decoy().to_string(), password).await;
            self.address_failed(client).await;
            return Err(LoginError::Refused);
        };
        if let Some(until) = user.locked_until {
            self.address_failed(client).await;
            return Err(LoginError::AccountLocked {
                until: rfc3339(until),
            });
        }
        let secrets = self.store.user_secrets(user.id).await?;
        if !self.verify(secrets.password_hash, password).await {
            self.address_failed(client).await;
            return Err(self.account_failed(&user, client, "wrong password").await);
        }
        if user.totp_enabled {
            return Ok(LoginStep::SecondFactor(
                self.open_session(&user, SessionStage::Totp, client).await?,
            ));
        }
        self.finish(&user, client).await.map(LoginStep::Done)
    }

    async fn finish(&self, user: &User, client: &Client) -> Result<IssuedSession, LoginError> {
        self.store.login_succeeded(user.id).await?;
        if let Some(address) = client.address {
            self.addresses.succeeded(address);
        }
        Ok(self
            .open_session(user, SessionStage::Active, client)
            .await?)
    }

    /// The second-factor step: `pending` is the cookie of the `totp`-stage session, `code` a
    /// TOTP code or a recovery code. Ends the pending session; on success opens an active one.
    pub async fn second_factor(
        &self,
        pending: &str,
        code: &str,
        client: &Client,
    ) -> Result<IssuedSession, LoginError> {
        self.check_address(client)?;
        let (session, user) = match self
            .store
            .authenticate_session(pending, self.policy.second_factor)
            .await
        {
            Ok(found) => found,
            Err(StoreError::Unauthenticated { .. }) => return Err(LoginError::Expired),
            Err(error) => return Err(error.into()),
        };
        if session.stage != SessionStage::Totp {
            return Err(LoginError::Expired);
        }
        if let Some(until) = user.locked_until {
            self.end(&session, false).await?;
            return Err(LoginError::AccountLocked {
                until: rfc3339(until),
            });
        }
        let accepted = if totp::is_recovery_code(code) {
            self.store
                .use_recovery_code(
                    &Actor::User(user.name.clone()),
                    user.id,
                    &totp::recovery_hash(code),
                )
                .await?
        } else {
            let secrets = self.store.user_secrets(user.id).await?;
            match secrets
                .totp
                .as_deref()
                .and_then(|secret| totp::matching_step(secret, code, unix_now()))
            {
                Some(step) => self.store.accept_totp_step(user.id, step).await?,
                None => false,
            }
        };
        if !accepted {
            self.address_failed(client).await;
            let error = self.account_failed(&user, client, "wrong TOTP code").await;
            if matches!(error, LoginError::AccountLocked { .. }) {
                self.end(&session, false).await?;
            }
            return Err(error);
        }
        self.end(&session, false).await?;
        self.finish(&user, client).await
    }

    /// The session and user a cookie secret belongs to (idle and absolute timeouts applied).
    pub async fn authenticate(&self, secret: &str) -> Result<(Session, User), StoreError> {
        self.store
            .authenticate_session(secret, self.policy.idle)
            .await
    }

    /// A user's pending second-factor session, for the code page (without ending it).
    pub async fn pending(&self, secret: &str) -> Result<(Session, User), StoreError> {
        let (session, user) = self
            .store
            .authenticate_session(secret, self.policy.second_factor)
            .await?;
        if session.stage != SessionStage::Totp {
            return Err(StoreError::Unauthenticated {
                reason: "not a second-factor session",
            });
        }
        Ok((session, user))
    }

    /// Ends a session; `logout` writes the `logged_out` event.
    pub async fn end(&self, session: &Session, logout: bool) -> Result<(), StoreError> {
        let user = self.store.get_user(session.user_id).await;
        let actor = match user {
            Ok(user) => Actor::User(user.name),
            Err(_) => Actor::System,
        };
        self.store.delete_session(&actor, session.id, logout).await
    }

    /// Starts TOTP enrolment: a new pending secret, its QR code and URI.
    pub async fn begin_totp(&self, user: &User) -> Result<TotpEnrolment, StoreError> {
        let secret = totp::new_secret();
        self.store
            .begin_totp(&Actor::User(user.name.clone()), user.id, &secret)
            .await?;
        let otpauth_url = totp::otpauth_url(&secret, &user.name);
        Ok(TotpEnrolment {
            secret: totp::secret_base32(&secret),
            qr_svg: totp::qr_svg(&otpauth_url).unwrap_or_default(),
            otpauth_url,
        })
    }

    /// The enrolment in progress, shown again (e.g. after a wrong confirmation code).
    pub async fn pending_totp(&self, user: &User) -> Result<Option<TotpEnrolment>, StoreError> {
        let secrets = self.store.user_secrets(user.id).await?;
        Ok(secrets.totp_pending.map(|secret| {
            let otpauth_url = totp::otpauth_url(&secret, &user.name);
            TotpEnrolment {
                secret: totp::secret_base32(&secret),
                qr_svg: totp::qr_svg(&otpauth_url).unwrap_or_default(),
                otpauth_url,
            }
        }))
    }

    /// Confirms enrolment with a code from the new secret; returns the recovery codes (shown
    /// once, stored hashed).
    pub async fn confirm_totp(&self, user: &User, code: &str) -> Result<Vec<String>, StoreError> {
        let secrets = self.store.user_secrets(user.id).await?;
        let Some(pending) = secrets.totp_pending else {
            return Err(StoreError::invalid(
                "code",
                "no TOTP enrolment in progress; start one first",
            ));
        };
        let Some(step) = totp::matching_step(&pending, code, unix_now()) else {
            return Err(StoreError::invalid(
                "code",
                "not the current code of the new secret; check the app and the clock",
            ));
        };
        let codes = totp::new_recovery_codes();
        let hashes: Vec<String> = codes.iter().map(|c| totp::recovery_hash(c)).collect();
        self.store
            .enable_totp(&Actor::User(user.name.clone()), user.id, step, &hashes)
            .await?;
        Ok(codes)
    }

    /// Turns TOTP off (the password confirms it is the user).
    pub async fn disable_totp(&self, user: &User, password: &str) -> Result<User, StoreError> {
        let secrets = self.store.user_secrets(user.id).await?;
        if !self.verify(secrets.password_hash, password).await {
            return Err(StoreError::invalid("password", "is not right"));
        }
        self.store
            .disable_totp(&Actor::User(user.name.clone()), user.id)
            .await
    }
}
