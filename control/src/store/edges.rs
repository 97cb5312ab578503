//! [`EdgeStore`]: edges (the public nodes) and their assignments, which edge serves which origin
//! at which address of the origin's subnet.

use async_trait::async_trait;
use kokoa_tunnel::key::{PrivateKey, PublicKey};

use super::error::Result;
use super::model::{Actor, Assignment, AssignmentFilter, Edge, EdgeUpdate, Id, NewEdge};

/// The edges and assignments part of [`Store`](super::Store).
///
/// Mutating methods take the [`Actor`] recorded in the change's event.
#[async_trait]
pub trait EdgeStore: Send + Sync {
    /// Creates an edge (generating its WireGuard key pair unless a public key is given) and
    /// assigns it to `new.origins`.
    async fn create_edge(&self, actor: &Actor, new: NewEdge) -> Result<Edge>;

    /// All edges, by name.
    async fn list_edges(&self) -> Result<Vec<Edge>>;

    /// One edge by id.
    async fn get_edge(&self, id: Id) -> Result<Edge>;

    /// One edge by name.
    async fn edge_by_name(&self, name: &str) -> Result<Edge>;

    /// Changes an edge's name, addresses or provider data.
    async fn update_edge(&self, actor: &Actor, id: Id, update: EdgeUpdate) -> Result<Edge>;

    /// Replaces an edge's WireGuard key (given public key, or a generated pair).
    async fn rotate_edge_key(
        &self,
        actor: &Actor,
        id: Id,
        public_key: Option<PublicKey>,
    ) -> Result<Edge>;

    /// Deletes an edge with its assignments, tokens and health history.
    async fn delete_edge(&self, actor: &Actor, id: Id) -> Result<()>;

    /// The edge's private key when control generated it.
    async fn edge_private_key(&self, id: Id) -> Result<Option<PrivateKey>>;

    /// Makes an edge serve an origin: allocates the edge's lowest free address `10.100.X.H`
    /// (H in 10..=254) in the origin's subnet. Conflict when already assigned; `PoolExhausted`
    /// when the origin has 245 edges.
    async fn assign_edge(&self, actor: &Actor, edge_id: Id, origin_id: Id) -> Result<Assignment>;

    /// Stops an edge serving an origin; its address becomes free.
    async fn unassign_edge(&self, actor: &Actor, edge_id: Id, origin_id: Id) -> Result<()>;

    /// Assignments, filtered.
    async fn list_assignments(&self, filter: AssignmentFilter) -> Result<Vec<Assignment>>;
}
