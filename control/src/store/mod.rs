//! The control plane's source of truth: origins, services, edges, routes, certificates, tokens,
//! the audit trail and the config version, behind one [`Store`] trait with two engines.
//!
//! [`open`] picks the engine from a URL: `sqlite://PATH` or a bare path (the embedded default: one
//! file, created and migrated on first start, WAL mode, foreign keys on), or `postgres://...`
//! (several control replicas sharing one database). Both run the same SQL and the same migration
//! files (`store/migrations/`); see [`sql`] for the few per-engine differences.
//!
//! Rules every implementation keeps, so the REST, CLI and gRPC layers need not:
//! - input is validated and normalized here ([`StoreError::Invalid`], [`StoreError::Conflict`]);
//! - every change runs in one transaction that also writes its [`Event`] (with the [`Actor`]) and,
//!   when it alters what some node runs, bumps the config version (reported by
//!   [`Store::config_version`] and pushed to [`Store::subscribe_config_version`]);
//! - private keys control generates are sealed with the [`MasterKey`]; token secrets are stored as
//!   SHA-256 only and returned once.
//!
//! Node telemetry (heartbeats, ACKs, health-check results) is recorded without an event: it is
//! high-frequency observation, not a change; NACKs and health status transitions do write events.

pub mod crypto;
pub mod error;
mod migrate;
pub mod model;
pub mod sql;
mod token;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kokoa_tunnel::key::PrivateKey;
use time::OffsetDateTime;
use zeroize::Zeroizing;

pub use crypto::{CryptoError, MasterKey, MASTER_KEY_ENV};
pub use error::{Entity, Result, StoreError};
pub use model::*;
pub use sql::{Engine, Leadership, SqlStore};

/// Opens the store at `url` (`sqlite://PATH`, a bare file path, or `postgres://...`), creating
/// and migrating the database as needed.
pub async fn open(url: &str, master_key: MasterKey) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(SqlStore::open(url, master_key).await?))
}

/// The store interface the REST API, CLI and gRPC layers use (as `Arc<dyn Store>`).
///
/// Mutating methods take the [`Actor`] recorded in the change's event.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Which engine backs this store.
    fn engine(&self) -> Engine;

    // ---- origins -------------------------------------------------------------------------

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
        public_key: Option<kokoa_tunnel::key::PublicKey>,
    ) -> Result<Origin>;
    /// Deletes an origin with its services, edge assignments and tokens; its subnet becomes free.
    /// Conflict while routes still point at its services.
    async fn delete_origin(&self, actor: &Actor, id: Id) -> Result<()>;
    /// The origin's private key when control generated it (`None` when the operator holds it).
    async fn origin_private_key(&self, id: Id) -> Result<Option<PrivateKey>>;

    // ---- services ------------------------------------------------------------------------

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

    // ---- edges ---------------------------------------------------------------------------

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
        public_key: Option<kokoa_tunnel::key::PublicKey>,
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

    // ---- node status (telemetry: no events except where noted) ----------------------------

    /// Records a heartbeat from a node (its content is kept as the latest).
    async fn record_heartbeat(&self, node: NodeId, detail: serde_json::Value) -> Result<()>;
    /// Records that a node applied config `version`; clears an older NACK.
    async fn record_config_ack(&self, node: NodeId, version: u64) -> Result<()>;
    /// Records that a node rejected config `version` (writes an event, actor the node).
    async fn record_config_nack(&self, node: NodeId, version: u64, error: &str) -> Result<()>;
    /// Sets a node's health status; writes an event when it changes. Returns whether it did.
    async fn set_node_status(
        &self,
        actor: &Actor,
        node: NodeId,
        status: NodeStatus,
    ) -> Result<bool>;

    // ---- routes --------------------------------------------------------------------------

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

    // ---- certificates --------------------------------------------------------------------

    /// Stores a certificate (its key sealed). Invalid for bad names or PEM.
    async fn create_certificate(&self, actor: &Actor, new: NewCertificate) -> Result<Certificate>;
    /// All certificates (without keys).
    async fn list_certificates(&self) -> Result<Vec<Certificate>>;
    /// One certificate.
    async fn get_certificate(&self, id: Id) -> Result<Certificate>;
    /// The certificate's PEM private key, unsealed (`None` until issued).
    async fn certificate_key(&self, id: Id) -> Result<Option<Zeroizing<String>>>;
    /// Installs an issued or renewed certificate and key; clears the last error.
    async fn set_certificate_material(
        &self,
        actor: &Actor,
        id: Id,
        material: CertificateMaterial,
    ) -> Result<Certificate>;
    /// Records an issuance or renewal failure.
    async fn set_certificate_error(&self, actor: &Actor, id: Id, error: &str) -> Result<()>;
    /// Deletes a certificate.
    async fn delete_certificate(&self, actor: &Actor, id: Id) -> Result<()>;

    // ---- ACME ----------------------------------------------------------------------------

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

    // ---- singleton jobs ------------------------------------------------------------------

    /// Tries to become the one control replica running singleton job `job` (ACME, DNS,
    /// health actions). SQLite: always granted (one process owns the file). PostgreSQL: a
    /// session advisory lock on a connection of its own, held until the [`Leadership`] is
    /// dropped or that connection dies; `None` while another replica holds it.
    async fn try_lead(&self, job: &str) -> Result<Option<Leadership>>;

    // ---- node tokens ---------------------------------------------------------------------

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

    // ---- API tokens ----------------------------------------------------------------------

    /// Creates a REST API token; `ttl` `None` never expires.
    async fn create_api_token(
        &self,
        actor: &Actor,
        name: &str,
        ttl: Option<Duration>,
    ) -> Result<IssuedApiToken>;
    /// The API token a bearer secret belongs to. `Unauthenticated` when unknown, expired or
    /// revoked.
    async fn authenticate_api_token(&self, secret: &str) -> Result<ApiToken>;
    /// All API tokens (metadata only), by name.
    async fn list_api_tokens(&self) -> Result<Vec<ApiToken>>;
    /// Revokes an API token (idempotent).
    async fn revoke_api_token(&self, actor: &Actor, id: Id) -> Result<ApiToken>;

    // ---- events, health, config version --------------------------------------------------

    /// Audit-trail events in increasing id order (see [`EventQuery`]).
    async fn list_events(&self, query: EventQuery) -> Result<Vec<Event>>;
    /// Records one active health-check result.
    async fn record_health_check(&self, check: NewHealthCheck) -> Result<HealthCheck>;
    /// Health-check history, newest first.
    async fn health_checks(&self, query: HealthQuery) -> Result<Vec<HealthCheck>>;
    /// Deletes health-check results older than `before`; returns how many.
    async fn prune_health_checks(&self, before: OffsetDateTime) -> Result<u64>;
    /// The current config version (0 before any change).
    async fn config_version(&self) -> Result<u64>;
    /// A receiver that sees every config version this process commits. (Replicas sharing a
    /// PostgreSQL database should also poll [`Store::config_version`].)
    fn subscribe_config_version(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Everything node config is built from, read consistently, with its config version.
    async fn snapshot(&self) -> Result<Snapshot>;
}
