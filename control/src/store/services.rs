//! [`ServiceStore`]: the local apps an origin exposes, each on a tunnel port of its own.

use async_trait::async_trait;

use super::error::Result;
use super::model::{Actor, Id, NewService, Service, ServiceUpdate};

/// The services part of [`Store`](super::Store).
///
/// Mutating methods take the [`Actor`] recorded in the change's event.
#[async_trait]
pub trait ServiceStore: Send + Sync {
    /// Adds a service to an origin. Invalid for an unknown origin or a bad port/address/path;
    /// Conflict on a duplicate name or port within the origin.
    async fn create_service(
        &self,
        actor: &Actor,
        origin_id: Id,
        new: NewService,
    ) -> Result<Service>;

    /// Services of one origin, or all (by origin, then port).
    async fn list_services(&self, origin_id: Option<Id>) -> Result<Vec<Service>>;

    /// One service.
    async fn get_service(&self, id: Id) -> Result<Service>;

    /// One service by origin and name.
    async fn service_by_name(&self, origin_id: Id, name: &str) -> Result<Service>;

    /// Changes a service.
    async fn update_service(&self, actor: &Actor, id: Id, update: ServiceUpdate)
        -> Result<Service>;

    /// Deletes a service. Conflict while routes point at it.
    async fn delete_service(&self, actor: &Actor, id: Id) -> Result<()>;
}
