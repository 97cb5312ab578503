//! [`RouteStore`]: HTTP routes, a host name (with aliases) to an origin's http service, with
//! per-route limits.

use async_trait::async_trait;

use super::error::Result;
use super::model::{Actor, Id, NewRoute, Route, RouteUpdate};

/// The routes part of [`Store`](super::Store).
///
/// Mutating methods take the [`Actor`] recorded in the change's event.
#[async_trait]
pub trait RouteStore: Send + Sync {
    /// Creates a route to an HTTP service. Invalid for a bad host name, an unknown or non-HTTP
    /// service, or limits that are not a JSON object; Conflict when any of its names is already
    /// some route's name or alias.
    async fn create_route(&self, actor: &Actor, new: NewRoute) -> Result<Route>;

    /// All routes, by host name.
    async fn list_routes(&self) -> Result<Vec<Route>>;

    /// One route by id.
    async fn get_route(&self, id: Id) -> Result<Route>;

    /// The route whose host name or alias is exactly `hostname` (no wildcard matching).
    async fn route_by_hostname(&self, hostname: &str) -> Result<Route>;

    /// Changes a route.
    async fn update_route(&self, actor: &Actor, id: Id, update: RouteUpdate) -> Result<Route>;

    /// Deletes a route.
    async fn delete_route(&self, actor: &Actor, id: Id) -> Result<()>;
}
