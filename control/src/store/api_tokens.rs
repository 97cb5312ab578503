//! [`ApiTokenStore`]: bearer tokens of the REST API.

use async_trait::async_trait;
use std::time::Duration;

use super::error::Result;
use super::model::{Actor, ApiToken, Id, IssuedApiToken};
use super::users::Role;

/// The API tokens part of [`Store`](super::Store).
///
/// Mutating methods take the [`Actor`] recorded in the change's event.
#[async_trait]
pub trait ApiTokenStore: Send + Sync {
    /// Creates an admin REST API token; `ttl` `None` never expires.
    async fn create_api_token(
        &self,
        actor: &Actor,
        name: &str,
        ttl: Option<Duration>,
    ) -> Result<IssuedApiToken> {
        self.create_api_token_with_role(actor, name, ttl, Role::Admin)
            .await
    }

    /// Creates a REST API token with `role`; `ttl` `None` never expires.
    async fn create_api_token_with_role(
        &self,
        actor: &Actor,
        name: &str,
        ttl: Option<Duration>,
        role: Role,
    ) -> Result<IssuedApiToken>;

    /// The API token a bearer secret belongs to. `Unauthenticated` when unknown, expired or
    /// revoked.
    async fn authenticate_api_token(&self, secret: &str) -> Result<ApiToken>;

    /// All API tokens (metadata only), by name.
    async fn list_api_tokens(&self) -> Result<Vec<ApiToken>>;

    /// Revokes an API token (idempotent).
    async fn revoke_api_token(&self, actor: &Actor, id: Id) -> Result<ApiToken>;
}
