//! The REST API under `/api/v1`: operators' and the CLI's view of the [`Store`].
//!
//! [`router`] builds the whole API as an axum [`Router`] over an [`ApiState`]; [`serve`] runs it
//! on a listener until shutdown. Every endpoint except `/api/v1/openapi.json` and `/healthz`
//! needs `Authorization: Bearer <API token>` or the dashboard's session cookie (plus its CSRF
//! token for changes); the token's or user's name becomes the [`Actor`] of the change's audit
//! event, and a `viewer` role may only read (403 otherwise; see [`extract::authenticate`]). Input is validated by the store (one place for the rules); errors are
//! JSON `{"error": "...", "field": "..."}` with statuses chosen in [`ApiError`].
//!
//! Path parameters that name an origin or an edge accept its id or its name (names can never
//! look like ids); a route accepts its id or its host name.
//!
//! [`Actor`]: crate::store::Actor

mod certificates;
mod edges;
pub mod error;
mod events;
pub mod extract;
mod notifications;
pub mod openapi;
mod origins;
mod provision;
mod routes;
mod services;
mod status;
mod tcp_routes;
mod tokens;
mod users;

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;
use time::OffsetDateTime;
use uuid::Uuid;

pub use certificates::CertificateUpload;
pub use edges::{EdgeCreate, EdgeOrigin, EdgeView};
pub use error::{ApiError, ErrorBody};
pub use notifications::DeliveryFilter;
pub use origins::{OriginView, RotateKey};
pub use routes::{RouteCreate, RoutePatch, RouteView};
pub use services::ServiceView;
pub use status::{NodeDetail, NodeStatusView, PeerView, StatusSummary};
pub use tcp_routes::{TcpRouteCreate, TcpRoutePatch, TcpRouteView};
pub use tokens::{ApiTokenRequest, TokenRequest};
pub use users::{
    MeView, PasswordChange, RecoveryCodes, TotpConfirm, TotpDisable, UserCreate, UserPatch,
};

use crate::account::{Accounts, SessionPolicy};
use crate::bundle::BundleSettings;
use crate::store::{Edge, Nack, NodeId, Origin, Route, Service, Store};

/// Request bodies above this size are refused with 413 (a certificate chain and key fit many
/// times over).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The API's base path.
pub const BASE: &str = "/api/v1";

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The source of truth.
    pub store: Arc<dyn Store>,
    /// What node bundles need (control's gRPC URL and CA); bundles answer 503 without it.
    pub bundle: Option<Arc<BundleSettings>>,
    /// Live view of connected nodes (the gRPC server's registry); the status endpoints fall
    /// back to what the store recorded without it.
    pub live: Option<Arc<dyn LiveNodes>>,
    /// Dashboard users and sessions (the session cookie is checked here).
    pub accounts: Arc<Accounts>,
    /// The edge provisioner (`edge provision`, `edge replace`, `edge destroy`); those answer
    /// 409 without one.
    pub replacer: Option<Arc<crate::provision::Replacer>>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("store", &self.store)
            .field("bundle", &self.bundle.is_some())
            .field("live", &self.live.is_some())
            .finish()
    }
}

impl ApiState {
    /// State over `store` without bundles or a live node view, with the default session
    /// policy.
    pub fn new(store: Arc<dyn Store>) -> Self {
        ApiState {
            accounts: Arc::new(Accounts::new(store.clone(), SessionPolicy::default())),
            store,
            bundle: None,
            live: None,
            replacer: None,
        }
    }
}

/// A node connected to control right now, as the gRPC server sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveNode {
    /// Which node.
    pub node: NodeId,
    /// The version it last acknowledged on this connection.
    pub applied_version: Option<u64>,
    /// Its last heartbeat on this connection.
    pub last_heartbeat: Option<OffsetDateTime>,
    /// The last snapshot it rejected on this connection.
    pub nack: Option<Nack>,
    /// It runs the config control wants it to run. (A change that does not affect a node is
    /// not sent to it, so this can hold while `applied_version` is older than the store's.)
    pub in_sync: bool,
}

/// The connected-node view the status endpoints overlay on the store's records (implemented
/// over the gRPC server's node registry by `serve`).
pub trait LiveNodes: Send + Sync + 'static {
    /// The nodes connected now.
    fn connected(&self) -> Vec<LiveNode>;
}

/// The whole REST API: `/api/v1/...`, plus `/healthz` for readiness probes.
pub fn router(state: ApiState) -> Router {
    let authenticated = Router::new()
        .route("/origins", get(origins::list).post(origins::create))
        .route(
            "/origins/{origin}",
            get(origins::get)
                .patch(origins::update)
                .delete(origins::delete),
        )
        .route("/origins/{origin}/rotate-key", post(origins::rotate_key))
        .route("/origins/{origin}/status", get(status::origin_detail))
        .route("/origins/{origin}/edge-nodes", get(origins::edges))
        .route(
            "/origins/{origin}/services",
            get(services::list_of_origin).post(services::create),
        )
        .route(
            "/origins/{origin}/services/{service}",
            get(services::get_in_origin)
                .patch(services::update_in_origin)
                .delete(services::delete_in_origin),
        )
        .route(
            "/origins/{origin}/tokens",
            get(tokens::list_origin).post(tokens::create_origin),
        )
        .route("/origins/{origin}/bundle", get(tokens::origin_bundle))
        .route("/services", get(services::list))
        .route(
            "/services/{service}",
            get(services::get)
                .patch(services::update)
                .delete(services::delete),
        )
        .route("/edge-nodes", get(edges::list).post(edges::create))
        .route(
            "/edge-nodes/{edge}",
            get(edges::get).patch(edges::update).delete(edges::delete),
        )
        .route("/edge-nodes/{edge}/rotate-key", post(edges::rotate_key))
        .route("/edge-nodes/{edge}/status", get(status::edge_detail))
        .route("/edge-nodes/{edge}/origins", get(edges::assignments))
        .route(
            "/edge-nodes/{edge}/origins/{origin}",
            put(edges::assign).delete(edges::unassign),
        )
        .route(
            "/edge-nodes/{edge}/health-history",
            get(events::edge_health_history),
        )
        .route(
            "/edge-nodes/{edge}/tokens",
            get(tokens::list_edge).post(tokens::create_edge),
        )
        .route("/edge-nodes/{edge}/bundle", get(tokens::edge_bundle))
        .route("/edge-nodes/{edge}/replace", post(provision::replace))
        .route("/edge-nodes/{edge}/destroy", post(provision::destroy))
        .route("/edge-nodes/{edge}/instance", get(provision::instance))
        .route("/provision/edges", post(provision::provision))
        .route("/provision/replacements", get(provision::replacements))
        .route("/provision/instances", get(provision::instances))
        .route("/routes", get(routes::list).post(routes::create))
        .route(
            "/routes/{route}",
            get(routes::get)
                .patch(routes::update)
                .delete(routes::delete),
        )
        .route(
            "/tcp-routes",
            get(tcp_routes::list).post(tcp_routes::create),
        )
        .route(
            "/tcp-routes/{route}",
            get(tcp_routes::get)
                .patch(tcp_routes::update)
                .delete(tcp_routes::delete),
        )
        .route(
            "/certificates",
            get(certificates::list).post(certificates::upload),
        )
        .route(
            "/certificates/{certificate}",
            get(certificates::get).delete(certificates::delete),
        )
        .route("/node-tokens", get(tokens::list_all))
        .route(
            "/node-tokens/{token}",
            axum::routing::delete(tokens::revoke),
        )
        .route(
            "/api-tokens",
            get(tokens::list_api).post(tokens::create_api),
        )
        .route(
            "/api-tokens/{token}",
            axum::routing::delete(tokens::revoke_api),
        )
        .route("/users", get(users::list).post(users::create))
        .route(
            "/users/{user}",
            get(users::get).patch(users::update).delete(users::delete),
        )
        .route("/me", get(users::me))
        .route("/me/password", post(users::change_password))
        .route("/me/totp", get(users::pending_totp).post(users::begin_totp))
        .route("/me/totp/confirm", post(users::confirm_totp))
        .route("/me/totp/disable", post(users::disable_totp))
        .route(
            "/notification-targets",
            get(notifications::list).post(notifications::create),
        )
        .route(
            "/notification-targets/{target}",
            get(notifications::get).delete(notifications::delete),
        )
        .route(
            "/notification-targets/{target}/test",
            post(notifications::test),
        )
        .route(
            "/notification-targets/{target}/deliveries",
            get(notifications::target_deliveries),
        )
        .route("/notification-deliveries", get(notifications::deliveries))
        .route("/events", get(events::list))
        .route("/health-checks", get(events::health_checks))
        .route("/nodes", get(status::nodes))
        .route("/status", get(status::summary))
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint; see /api/v1/openapi.json",
            )
        })
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            extract::authenticate,
        ));
    let api = authenticated
        .route("/openapi.json", get(openapi::document))
        .fallback(|| async {
            ApiError::not_found("no such API endpoint; see /api/v1/openapi.json")
        });
    Router::new()
        .nest(BASE, api)
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(log_request))
        .with_state(state)
}

/// Serves [`router`] on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// One debug line per request inside a span naming it, so a failing request is attributable.
async fn log_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    let span = tracing::info_span!("api", method = %request.method(), path = %request.uri().path());
    async move {
        let response = next.run(request).await;
        tracing::debug!(status = response.status().as_u16(), "request");
        response
    }
    .instrument(span)
    .await
}

// ---- lookups shared by the handlers ---------------------------------------------------------

/// An origin by id or name.
pub(crate) async fn find_origin(store: &dyn Store, key: &str) -> Result<Origin, ApiError> {
    Ok(match Uuid::parse_str(key) {
        Ok(id) => store.get_origin(id).await?,
        Err(_) => store.origin_by_name(key).await?,
    })
}

/// An edge by id or name.
pub(crate) async fn find_edge(store: &dyn Store, key: &str) -> Result<Edge, ApiError> {
    Ok(match Uuid::parse_str(key) {
        Ok(id) => store.get_edge(id).await?,
        Err(_) => store.edge_by_name(key).await?,
    })
}

/// A service of `origin` by id or name.
pub(crate) async fn find_service_in(
    store: &dyn Store,
    origin: &Origin,
    key: &str,
) -> Result<Service, ApiError> {
    match Uuid::parse_str(key) {
        Ok(id) => {
            let service = store.get_service(id).await?;
            if service.origin_id != origin.id {
                return Err(ApiError::not_found(format!(
                    "service {key:?} does not belong to origin {:?}",
                    origin.name
                )));
            }
            Ok(service)
        }
        Err(_) => Ok(store.service_by_name(origin.id, key).await?),
    }
}

/// A route by id or host name.
pub(crate) async fn find_route(store: &dyn Store, key: &str) -> Result<Route, ApiError> {
    Ok(match Uuid::parse_str(key) {
        Ok(id) => store.get_route(id).await?,
        Err(_) => store.route_by_hostname(&key.to_ascii_lowercase()).await?,
    })
}

/// An id path parameter.
pub(crate) fn parse_id(what: &str, key: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(key).map_err(|_| ApiError::not_found(format!("{what} {key:?} not found")))
}
