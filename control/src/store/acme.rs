//! [`AcmeStore`]: ACME account credentials and the challenges of orders in progress, which the
//! edges serve.

use async_trait::async_trait;
use zeroize::Zeroizing;

use super::error::Result;
use super::model::{AcmeChallenge, Actor, Id, NewAcmeChallenge};

/// The ACME part of [`Store`](super::Store).
///
/// Mutating methods take the [`Actor`] recorded in the change's event.
#[async_trait]
pub trait AcmeStore: Send + Sync {
    /// The ACME account credentials (instant-acme's `AccountCredentials` JSON) for a
    /// directory URL, unsealed; `None` before the account was created.
    async fn acme_account(&self, directory_url: &str) -> Result<Option<Zeroizing<String>>>;

    /// Stores (or replaces) the sealed credentials of the account at `directory_url`.
    async fn save_acme_account(
        &self,
        actor: &Actor,
        directory_url: &str,
        contact: &[String],
        credentials: &str,
    ) -> Result<()>;

    /// Adds challenges of an order in progress (keys sealed) in one transaction that bumps the
    /// config version, so edges receive them. Invalid for an unknown certificate or a bad name;
    /// Conflict for a token already pending.
    async fn add_acme_challenges(
        &self,
        actor: &Actor,
        challenges: Vec<NewAcmeChallenge>,
    ) -> Result<Vec<AcmeChallenge>>;

    /// Removes the pending challenges of one certificate's order, or all of them (`None`);
    /// bumps the config version when any existed. Returns how many were removed.
    async fn remove_acme_challenges(
        &self,
        actor: &Actor,
        certificate_id: Option<Id>,
    ) -> Result<u64>;

    /// Pending challenges that have not expired, oldest first (without keys).
    async fn list_acme_challenges(&self) -> Result<Vec<AcmeChallenge>>;

    /// A TLS-ALPN-01 challenge's validation key, unsealed (`None` for HTTP-01).
    async fn acme_challenge_key(&self, id: Id) -> Result<Option<Zeroizing<String>>>;
}
