//! [`TcpRouteStore`]: raw TCP routes, a public port on every edge serving an origin forwarded
//! to one of its services as a byte stream (what `[[tcp_routes]]` is in an edge's file).

use async_trait::async_trait;

use super::error::Result;
use super::model::{Actor, Id, NewTcpRoute, TcpRoute, TcpRouteUpdate};

/// The TCP routes part of [`Store`](super::Store).
///
/// Mutating methods take the [`Actor`] recorded in the change's event.
#[async_trait]
pub trait TcpRouteStore: Send + Sync {
    /// Creates a TCP route. Invalid for an unknown service; Conflict when the port is another
    /// TCP route's, or collides with a listener of an edge that would serve it (field
    /// `listen_port`).
    async fn create_tcp_route(&self, actor: &Actor, new: NewTcpRoute) -> Result<TcpRoute>;

    /// All TCP routes, by port.
    async fn list_tcp_routes(&self) -> Result<Vec<TcpRoute>>;

    /// One TCP route by id.
    async fn get_tcp_route(&self, id: Id) -> Result<TcpRoute>;

    /// The TCP route on public port `port`.
    async fn tcp_route_by_port(&self, port: u16) -> Result<TcpRoute>;

    /// Changes a TCP route (the same checks as creating one).
    async fn update_tcp_route(
        &self,
        actor: &Actor,
        id: Id,
        update: TcpRouteUpdate,
    ) -> Result<TcpRoute>;

    /// Deletes a TCP route.
    async fn delete_tcp_route(&self, actor: &Actor, id: Id) -> Result<()>;
}
