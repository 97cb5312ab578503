//! The control plane's source of truth: origins, services, edges, routes, certificates, tokens,
//! the audit trail and the config version, behind one [`Store`] trait with two engines.
//!
//! [`Store`] combines one trait per kind of record ([`OriginStore`], [`ServiceStore`],
//! [`EdgeStore`], [`RouteStore`], [`TcpRouteStore`], [`CertificateStore`], [`AcmeStore`],
//! [`NodeTokenStore`], [`ApiTokenStore`], [`EventStore`], [`HealthStore`], [`NodeStateStore`],
//! [`LeaderStore`], [`NotificationStore`], [`ProvisionStore`], [`UserStore`],
//! [`SessionStore`]), each
//! declared in its own file here and implemented for SQL in the file of the same name under
//! [`sql`]. The record types themselves are in [`model`].
//!
//! [`open`] picks the engine from a URL: `sqlite://PATH` or a bare path (the embedded default: one
//! file, created and migrated on first start, WAL mode, foreign keys on), or `postgres://...`
//! (several control replicas sharing one database). Both run the same SQL and the same migration
//! files (`store/migrations/`); see [`sql`] for the few per-engine differences.
//!
//! Rules every implementation keeps, so the REST, CLI and gRPC layers need not:
//! - every config value arrives as a type of the shared model (`kokoa_model`), so it was
//!   validated by the one validator the nodes use too; the store adds the rules across records
//!   (unique names, host names and ports, references) and, before it commits a change, checks the
//!   config of every node with the model's own cross-object rules ([`StoreError::Invalid`],
//!   [`StoreError::Conflict`]);
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

mod acme;
mod api_tokens;
mod certificates;
mod edges;
mod events;
mod health;
mod leadership;
mod node_state;
mod node_tokens;
pub mod notifications;
mod notify_rules;
mod origins;
pub mod provision;
mod routes;
mod services;
pub mod sessions;
pub mod spec;
mod tcp_routes;
pub mod users;

use std::sync::Arc;

use async_trait::async_trait;

pub use acme::AcmeStore;
pub use api_tokens::ApiTokenStore;
pub use certificates::CertificateStore;
pub use crypto::{CryptoError, MasterKey, MASTER_KEY_ENV};
pub use edges::EdgeStore;
pub use error::{Entity, Result, StoreError};
pub use events::EventStore;
pub use health::HealthStore;
pub use leadership::LeaderStore;
pub use model::*;
pub use node_state::NodeStateStore;
pub use node_tokens::NodeTokenStore;
pub use notifications::{
    event_kind, event_matches, AttemptOutcome, CreatedNotificationTarget, Delivery, DeliveryQuery,
    DeliveryStatus, DueDelivery, FanOut, NewNotificationTarget, NotificationKind,
    NotificationStore, NotificationTarget, QueueLimits,
};
pub use origins::OriginStore;
pub use provision::{
    EdgeInstance, InstanceState, ProvisionStore, ReplaceCause, Replacement, ReplacementStage,
};
pub use routes::RouteStore;
pub use services::ServiceStore;
pub use sessions::{IssuedSession, NewSession, Session, SessionStage, SessionStore};
pub use sql::{Engine, Leadership, SqlStore};
pub use tcp_routes::TcpRouteStore;
pub use users::{
    FailureOutcome, LockoutPolicy, NewUser, Role, User, UserSecrets, UserStore, UserUpdate,
};

/// Opens the store at `url` (`sqlite://PATH`, a bare file path, or `postgres://...`), creating
/// and migrating the database as needed.
pub async fn open(url: &str, master_key: MasterKey) -> Result<Arc<dyn Store>> {
    Ok(Arc::new(SqlStore::open(url, master_key).await?))
}

/// The store interface the REST API, CLI and gRPC layers use (as `Arc<dyn Store>`): one trait
/// per kind of record, plus what spans them all (the config version and the snapshot nodes'
/// config is built from). The per-record traits' methods are callable on `dyn Store` without
/// importing them.
///
/// A new kind of record gets its own trait (in a file of its own, with its SQL in
/// `sql/<record>.rs`) and joins the list of supertraits here.
#[async_trait]
pub trait Store:
    OriginStore
    + ServiceStore
    + EdgeStore
    + NodeStateStore
    + RouteStore
    + TcpRouteStore
    + CertificateStore
    + AcmeStore
    + LeaderStore
    + NodeTokenStore
    + ApiTokenStore
    + EventStore
    + HealthStore
    + NotificationStore
    + ProvisionStore
    + UserStore
    + SessionStore
    + Send
    + Sync
    + std::fmt::Debug
{
    /// Which engine backs this store.
    fn engine(&self) -> Engine;

    /// The current config version (0 before any change).
    async fn config_version(&self) -> Result<u64>;

    /// A receiver that sees every config version this process commits. (Replicas sharing a
    /// PostgreSQL database should also poll [`Store::config_version`].)
    fn subscribe_config_version(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Everything node config is built from, read consistently, with its config version.
    async fn snapshot(&self) -> Result<Snapshot>;
}
