//! [`OriginStore`]: origins, the nodes behind NAT that dial out to the edges. Each owns one
//! `/24` of the tunnel pool (`10.100.X.0/24`) and a WireGuard key pair.

use async_trait::async_trait;
use kokoa_tunnel::key::{PrivateKey, PublicKey};

use super::error::Result;
use super::model::{Actor, Id, NewOrigin, Origin, OriginUpdate};

/// The origins part of [`Store`](super::Store).
///
/// Mutating methods take the [`Actor`] recorded in the change's event.
#[async_trait]
pub trait OriginStore: Send + Sync {
    /// Creates an origin: allocates the lowest free `10.100.X.0/24` (X in 1..=254) and, unless a
    /// public key is given, generates its WireGuard key pair. Conflict on a duplicate name or
    /// public key; `PoolExhausted` when all 254 subnets are taken.
    async fn create_origin(&self, actor: &Actor, new: NewOrigin) -> Result<Origin>;

    /// All origins, by name.
    async fn list_origins(&self) -> Result<Vec<Origin>>;

    /// One origin by id.
    async fn get_origin(&self, id: Id) -> Result<Origin>;

    /// One origin by name.
    async fn origin_by_name(&self, name: &str) -> Result<Origin>;

    /// Renames an origin.
    async fn update_origin(&self, actor: &Actor, id: Id, update: OriginUpdate) -> Result<Origin>;

    /// Replaces an origin's WireGuard key: with `public_key` (the operator keeps the private
    /// key) or a newly generated pair.
    async fn rotate_origin_key(
        &self,
        actor: &Actor,
        id: Id,
        public_key: Option<PublicKey>,
    ) -> Result<Origin>;

    /// Deletes an origin with its services, edge assignments and tokens; its subnet becomes free.
    /// Conflict while routes still point at its services.
    async fn delete_origin(&self, actor: &Actor, id: Id) -> Result<()>;

    /// The origin's private key when control generated it (`None` when the operator holds it).
    async fn origin_private_key(&self, id: Id) -> Result<Option<PrivateKey>>;
}
