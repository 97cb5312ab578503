//! [`NodeTokenStore`]: one-time enrollment tokens and the node credentials they become.

use async_trait::async_trait;
use std::time::Duration;

use super::error::Result;
use super::model::{Actor, Enrollment, Id, IssuedNodeToken, NodeId, NodeToken};

/// The node tokens part of [`Store`](super::Store).
///
/// Mutating methods take the [`Actor`] recorded in the change's event.
#[async_trait]
pub trait NodeTokenStore: Send + Sync {
    /// Creates a one-time enrollment token for a node, valid for `ttl`.
    async fn create_enrollment_token(
        &self,
        actor: &Actor,
        node: NodeId,
        ttl: Duration,
    ) -> Result<IssuedNodeToken>;

    /// Exchanges an enrollment secret for a long-lived node credential (revoking the node's
    /// earlier credentials). `Unauthenticated` for an unknown, used, expired or revoked token.
    async fn enroll(&self, enrollment_secret: &str) -> Result<Enrollment>;

    /// The node a credential secret belongs to. `Unauthenticated` when unknown, expired,
    /// revoked, or not a credential.
    async fn authenticate_node(&self, credential_secret: &str) -> Result<NodeId>;

    /// Node tokens (metadata only), of one node or all, newest first.
    async fn list_node_tokens(&self, node: Option<NodeId>) -> Result<Vec<NodeToken>>;

    /// Revokes a node token (idempotent).
    async fn revoke_node_token(&self, actor: &Actor, id: Id) -> Result<NodeToken>;
}
