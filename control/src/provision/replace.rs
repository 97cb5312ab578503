//! The replacement of edges by newly provisioned ones, and provisioning on request.
//!
//! A replacement goes through the stages of [`ReplacementStage`], each persisted in
//! `edge_replacements` before the next external action, so a control that stops anywhere
//! resumes where it was (the machine a provider was asked for is found again by name):
//!
//! 1. **provisioning**: a new edge record (same origins, limits and tunnel settings as the old
//!    one, named `BASE-rN`) and its machine, made from the edge's bundle with a fresh one-time
//!    enrollment token (events `edge.provisioned`, or `provision.failed`);
//! 2. **waiting**: until the new edge *serves*: the health checker judges it online (connected,
//!    heart-beating, its public listener passing the healthy threshold of probes), it has
//!    ACKed a config and rejected none, and (when this replica holds its stream) it runs the
//!    config control wants. DNS steering publishes it from that judgement (`edge.serving`);
//! 3. **draining**: the old edge is drained (withdrawn from DNS) and, if it was still serving,
//!    given `--replace-drain-grace` for resolvers and clients to move;
//! 4. **destroying**: its machine is destroyed (`edge.destroyed`) and its record deleted, then
//!    `edge.replaced`.
//!
//! The old edge is never touched before the new one serves, so the last edge of a name is
//! never replaced by nothing. A new edge that does not serve within `--replace-timeout` is
//! destroyed and the replacement fails (`provision.failed`, `edge.replace_failed`), keeping
//! the old edge. At most `--replace-max-in-flight` replacements run at once (checked in the
//! store's write transaction), and automatic ones start at most once per `--replace-cooldown`.
//!
//! [`Replacer::run`] is a singleton job (leadership `provision`): it drives the unfinished
//! replacements, starts automatic ones (`--auto-replace`: an edge control provisioned, offline
//! for `--replace-after`), and destroys machines whose edge record is gone.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kokoa_model::Name;
use serde_json::json;
use time::OffsetDateTime;

use super::{Instance, InstanceSpec, InstanceStatus, ProvisionError, Provisioner};
use crate::api::LiveNodes;
use crate::bundle::{self, BundleNode, BundleSettings};
use crate::health::Heartbeat;
use crate::store::{
    Actor, AssignmentFilter, CheckKind, Edge, EdgeInstance, EdgeUpdate, Endpoint, Entity,
    HealthQuery, Id, InstanceState, NewEdge, NodeId, NodeStatus, ReplaceCause, Replacement,
    ReplacementStage, Store, StoreError,
};

/// The singleton job name of the replacer.
pub const LEADERSHIP_JOB: &str = "provision";
/// Default offline time after which an edge is replaced automatically.
pub const DEFAULT_AFTER: Duration = Duration::from_secs(60);
/// Default number of replacements at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1;
/// Default time between two automatic replacements.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(300);
/// Default time a new edge has to serve.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Default time a drained old edge that still served keeps running before it is destroyed.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(30);
/// Passing probes of its public listener in a row a new edge needs to count as serving (the
/// health checker's default healthy threshold).
pub const PROBES_TO_SERVE: u32 = 3;
/// How often the replacer looks.
const TICK: Duration = Duration::from_secs(1);
/// How often machines whose edge is gone are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How often a replica that does not lead tries to take over.
const LEADERSHIP_RETRY: Duration = Duration::from_secs(5);

/// How replacements behave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplaceSettings {
    /// Replace edges that stay offline (`--auto-replace`).
    pub auto: bool,
    /// How long an edge is offline before it is replaced automatically.
    pub after: Duration,
    /// Replacements at once.
    pub max_in_flight: usize,
    /// Time between two automatic replacements.
    pub cooldown: Duration,
    /// Time a new edge has to serve before the replacement fails.
    pub timeout: Duration,
    /// Time a drained old edge that still served keeps running.
    pub drain_grace: Duration,
}

impl Default for ReplaceSettings {
    fn default() -> Self {
        ReplaceSettings {
            auto: false,
            after: DEFAULT_AFTER,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            cooldown: DEFAULT_COOLDOWN,
            timeout: DEFAULT_TIMEOUT,
            drain_grace: DEFAULT_DRAIN_GRACE,
        }
    }
}

/// Why a provisioning operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The provider failed.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    /// The request cannot be done (e.g. no origins to serve).
    #[error("{0}")]
    Invalid(String),
}

/// Provisions, replaces and destroys edges; see the module doc.
pub struct Replacer {
    store: Arc<dyn Store>,
    provisioner: Arc<dyn Provisioner>,
    bundle: Arc<BundleSettings>,
    settings: ReplaceSettings,
    live: Option<Arc<dyn LiveNodes>>,
    wake: tokio::sync::Notify,
    /// Serializes the driving of replacements with requests from the API.
    drive: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Replacer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replacer")
            .field("provisioner", &self.provisioner)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

fn since(t: OffsetDateTime) -> Duration {
    let elapsed = OffsetDateTime::now_utc() - t;
    elapsed.try_into().unwrap_or(Duration::ZERO)
}

/// `BASE-rN`: the old name without its own `-rN`, with the next N.
fn successor_base(name: &str) -> &str {
    match name.rsplit_once("-r") {
        Some((base, n))
            if !base.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) =>
        {
            base
        }
        _ => name,
    }
}

impl Replacer {
    /// A replacer over `store` making machines with `provisioner`; `live` is this replica's
    /// view of connected nodes (to check a new edge runs the config control wants).
    pub fn new(
        store: Arc<dyn Store>,
        provisioner: Arc<dyn Provisioner>,
        bundle: Arc<BundleSettings>,
        settings: ReplaceSettings,
        live: Option<Arc<dyn LiveNodes>>,
    ) -> Self {
        Replacer {
            store,
            provisioner,
            bundle,
            settings,
            live,
            wake: tokio::sync::Notify::new(),
            drive: tokio::sync::Mutex::new(()),
        }
    }

    /// The provisioner.
    pub fn provisioner(&self) -> &Arc<dyn Provisioner> {
        &self.provisioner
    }

    /// The settings.
    pub fn settings(&self) -> &ReplaceSettings {
        &self.settings
    }

    async fn event(&self, entity: Entity, id: &str, action: &str, detail: serde_json::Value) {
        if let Err(error) = self
            .store
            .record_event(&Actor::System, entity, id, action, detail)
            .await
        {
            tracing::warn!(%error, action, "cannot record a provisioning event");
        }
    }

    // ---- provisioning one edge ----------------------------------------------------------

    /// Creates edge `name` serving `origins` and its machine, and returns the edge once the
    /// machine runs (it then enrolls by itself). On a provider error the edge record is removed
    /// again and `provision.failed` recorded.
    pub async fn provision_edge(
        &self,
        actor: &Actor,
        name: Name,
        origins: Vec<Id>,
    ) -> Result<Edge, ReplaceError> {
        let (region, _, _) = self.provisioner.defaults();
        let edge = self
            .store
            .create_edge(
                actor,
                NewEdge {
                    provider: Some(self.provisioner.kind().to_owned()),
                    region,
                    origins,
                    ..NewEdge::named(name)
                },
            )
            .await?;
        match self.ensure_instance(&edge, true).await {
            Ok(_) => Ok(self.store.get_edge(edge.id).await?),
            Err(error) => {
                if let Err(cleanup) = self.discard_new(&edge).await {
                    tracing::warn!(error = %cleanup, edge = %edge.name, "cannot clean up after a failed provisioning");
                }
                Err(error)
            }
        }
    }

    /// The edge's machine: the one on record, one the provider already has under its name (a
    /// control that stopped before recording it), or a new one. A provider error is recorded as
    /// `provision.failed` when `report` (a replacement reports its own failure).
    async fn ensure_instance(
        &self,
        edge: &Edge,
        report: bool,
    ) -> Result<EdgeInstance, ReplaceError> {
        let kind = self.provisioner.kind();
        let existing = self.store.get_instance(edge.id).await?;
        if let Some(instance) = &existing {
            if instance.state == InstanceState::Running && instance.instance_id.is_some() {
                return Ok(instance.clone());
            }
        }
        let (region, size, image) = self.provisioner.defaults();
        let now = OffsetDateTime::now_utc();
        let mut record = EdgeInstance {
            edge_id: edge.id,
            edge_name: edge.name.clone(),
            provider: kind.to_owned(),
            instance_id: None,
            state: InstanceState::Creating,
            public_ip: None,
            region: region.clone(),
            size: size.clone(),
            error: None,
            created_at: existing.as_ref().map_or(now, |i| i.created_at),
            updated_at: now,
        };
        let found = if existing.is_some() {
            self.provisioner.find(&edge.name).await?
        } else {
            None
        };
        let made = match found {
            Some(found) => found,
            None => {
                // Recorded before the provider is asked, so a restart looks for it by name.
                self.store.put_instance(&record).await?;
                let issued = self
                    .store
                    .create_enrollment_token(
                        &Actor::System,
                        NodeId::Edge(edge.id),
                        self.bundle.enrollment_ttl,
                    )
                    .await?;
                let bundle = bundle::build(
                    &self.bundle,
                    &BundleNode::Edge(edge.clone()),
                    issued.secret.expose(),
                )
                .map_err(|e| ReplaceError::Invalid(format!("building the bundle: {e}")))?;
                let spec = InstanceSpec {
                    name: edge.name.clone(),
                    region,
                    size,
                    image,
                    bundle,
                };
                match self.provisioner.create(&spec).await {
                    Ok(made) => made,
                    Err(error) => {
                        record.state = InstanceState::Failed;
                        record.error = Some(error.to_string());
                        self.store.put_instance(&record).await?;
                        if report {
                            self.event(
                                Entity::Provision,
                                &edge.name,
                                "failed",
                                json!({"name": edge.name, "provider": kind, "error": error.to_string()}),
                            )
                            .await;
                        }
                        return Err(error.into());
                    }
                }
            }
        };
        record.instance_id = Some(made.id.clone());
        record.state = InstanceState::Running;
        record.public_ip = made.public_ip;
        self.store.put_instance(&record).await?;
        self.set_addresses(edge, &made).await?;
        self.event(
            Entity::Edge,
            &edge.id.to_string(),
            "provisioned",
            json!({
                "name": edge.name,
                "provider": kind,
                "instance": made.id,
                "public_ip": made.public_ip.map(|ip| ip.to_string()),
            }),
        )
        .await;
        Ok(record)
    }

    /// Stores the address, endpoint and admin listener the provider reports for the edge.
    async fn set_addresses(&self, edge: &Edge, made: &Instance) -> Result<(), ReplaceError> {
        let Some(ip) = made.public_ip else {
            return Ok(());
        };
        if edge.public_ip == Some(ip) && edge.endpoint == made.endpoint {
            return Ok(());
        }
        let endpoint = made
            .endpoint
            .as_deref()
            .map(Endpoint::parse)
            .transpose()
            .map_err(|e| ReplaceError::Invalid(format!("the provider's endpoint: {e}")))?;
        let admin = made
            .admin_address
            .as_deref()
            .map(Endpoint::parse)
            .transpose()
            .map_err(|e| ReplaceError::Invalid(format!("the provider's admin address: {e}")))?;
        self.store
            .update_edge(
                &Actor::System,
                edge.id,
                EdgeUpdate {
                    public_ip: Some(Some(ip)),
                    endpoint: Some(endpoint),
                    admin_address: admin.map(Some),
                    ..EdgeUpdate::default()
                },
            )
            .await?;
        Ok(())
    }

    /// Destroys the machine of a new edge that failed, and forgets the edge.
    async fn discard_new(&self, edge: &Edge) -> Result<(), ReplaceError> {
        self.destroy_instance(edge.id, &edge.name, false).await?;
        match self.store.delete_edge(&Actor::System, edge.id).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Destroys an edge's machine if a provisioner made one (looking it up by name when its id
    /// was never recorded) and forgets it; `edge.destroyed` when `announce`.
    async fn destroy_instance(
        &self,
        edge_id: Id,
        name: &str,
        announce: bool,
    ) -> Result<Option<EdgeInstance>, ReplaceError> {
        let Some(mut instance) = self.store.get_instance(edge_id).await? else {
            return Ok(None);
        };
        if instance.provider != self.provisioner.kind() {
            return Err(ReplaceError::Invalid(format!(
                "edge {name:?} runs on a {} machine, but this control's provisioner is {}",
                instance.provider,
                self.provisioner.kind()
            )));
        }
        let id = match &instance.instance_id {
            Some(id) => Some(id.clone()),
            None => self.provisioner.find(name).await?.map(|i| i.id),
        };
        if let Some(id) = &id {
            instance.state = InstanceState::Destroying;
            self.store.put_instance(&instance).await?;
            self.provisioner.destroy(id).await?;
        }
        self.store.delete_instance(edge_id).await?;
        if announce && id.is_some() {
            self.event(
                Entity::Edge,
                &edge_id.to_string(),
                "destroyed",
                json!({"name": name, "provider": instance.provider, "instance": id}),
            )
            .await;
        }
        instance.state = InstanceState::Destroyed;
        Ok(Some(instance))
    }

    /// Destroys an edge's machine (when a provisioner made it) and deletes the edge.
    pub async fn destroy_edge(&self, actor: &Actor, edge: &Edge) -> Result<(), ReplaceError> {
        let _drive = self.drive.lock().await;
        let busy = self.store.list_replacements(true, 1000).await?;
        if busy
            .iter()
            .any(|r| r.old_edge_id == edge.id || r.new_edge_id == Some(edge.id))
        {
            return Err(StoreError::conflict(format!(
                "edge {:?} is part of a replacement in flight",
                edge.name
            ))
            .into());
        }
        self.destroy_instance(edge.id, &edge.name, true).await?;
        match self.store.delete_edge(actor, edge.id).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    // ---- replacements -------------------------------------------------------------------

    /// Starts replacing `edge` (`Conflict` when it is already being replaced or the in-flight
    /// bound is reached); the job drives it from there.
    pub async fn replace(
        &self,
        actor: &Actor,
        edge: &Edge,
        cause: ReplaceCause,
        reason: String,
    ) -> Result<Replacement, ReplaceError> {
        let now = OffsetDateTime::now_utc();
        let replacement = Replacement {
            id: uuid::Uuid::new_v4(),
            old_edge_id: edge.id,
            old_edge_name: edge.name.clone(),
            new_edge_id: None,
            new_edge_name: None,
            stage: ReplacementStage::Provisioning,
            cause,
            reason,
            error: None,
            started_at: now,
            updated_at: now,
            finished_at: None,
        };
        self.store
            .start_replacement(actor, &replacement, self.settings.max_in_flight)
            .await?;
        tracing::info!(edge = %edge.name, cause = cause.as_str(), reason = %replacement.reason, "edge replacement started");
        self.wake.notify_one();
        Ok(replacement)
    }

    async fn save(&self, r: &mut Replacement, stage: ReplacementStage) -> Result<(), ReplaceError> {
        r.stage = stage;
        r.updated_at = OffsetDateTime::now_utc();
        self.store.update_replacement(r).await?;
        Ok(())
    }

    /// A free name for the successor of `old`.
    async fn successor_name(&self, old: &str) -> Result<Name, ReplaceError> {
        let base = successor_base(old);
        let base = &base[..base.len().min(56)];
        for n in 2..1000u32 {
            let candidate = format!("{base}-r{n}");
            match self.store.edge_by_name(&candidate).await {
                Err(StoreError::NotFound { .. }) => {
                    return Name::new(&candidate)
                        .map_err(|e| ReplaceError::Invalid(format!("{candidate:?}: {e}")));
                }
                Ok(_) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(ReplaceError::Invalid(format!(
            "no free successor name for {old:?}"
        )))
    }

    /// Whether `edge` serves: see the module doc.
    fn serves(&self, edge: &Edge) -> bool {
        let state = &edge.state;
        let live = self.live.as_ref().and_then(|live| {
            live.connected()
                .into_iter()
                .find(|n| n.node == NodeId::Edge(edge.id))
        });
        let in_sync = live.as_ref().is_none_or(|n| n.in_sync);
        // What the node told this replica counts as the health checker counts it: the store's
        // copy misses an ACK that a killed control replica had not written yet, and nothing
        // sends the node a new config to ACK again.
        let applied = state
            .applied_version
            .max(live.and_then(|n| n.applied_version));
        state.status == NodeStatus::Online && applied.is_some() && state.nack.is_none() && in_sync
    }

    /// Whether the new edge has shown it serves: its last [`PROBES_TO_SERVE`] probes of its
    /// public listener passed (the health checker judges an edge it has not probed yet by its
    /// stream alone), and its latest heartbeat has a WireGuard peer up for every origin it is
    /// assigned (so requests reach the apps through the tunnel, not only its TLS).
    async fn proven(&self, edge: &Edge) -> Result<bool, ReplaceError> {
        let probes = self
            .store
            .health_checks(HealthQuery {
                edge_id: Some(edge.id),
                kind: Some(CheckKind::Public),
                limit: Some(PROBES_TO_SERVE),
                ..HealthQuery::default()
            })
            .await?;
        if probes.len() < PROBES_TO_SERVE as usize || probes.iter().any(|p| !p.success) {
            return Ok(false);
        }
        let assigned = self
            .store
            .list_assignments(AssignmentFilter {
                edge_id: Some(edge.id),
                origin_id: None,
            })
            .await?
            .len();
        let Some(heartbeat) = edge
            .state
            .heartbeat
            .as_ref()
            .and_then(Heartbeat::from_value)
        else {
            return Ok(false);
        };
        let up = heartbeat.peers.iter().filter(|p| p.up).count();
        Ok(up >= assigned)
    }

    /// Advances one replacement as far as it can go now. Errors are retried on the next pass
    /// (a provider that refuses fails the replacement at once).
    async fn advance(&self, r: &mut Replacement) -> Result<(), ReplaceError> {
        loop {
            let before = r.stage;
            match r.stage {
                ReplacementStage::Provisioning => self.provisioning(r).await?,
                ReplacementStage::Waiting => self.waiting(r).await?,
                ReplacementStage::Draining => self.draining(r).await?,
                ReplacementStage::Destroying => self.destroying(r).await?,
                ReplacementStage::Done | ReplacementStage::Failed => return Ok(()),
            }
            if r.stage == before {
                return Ok(());
            }
        }
    }

    async fn provisioning(&self, r: &mut Replacement) -> Result<(), ReplaceError> {
        let new = match r.new_edge_id {
            Some(id) => match self.store.get_edge(id).await {
                Ok(edge) => edge,
                Err(StoreError::NotFound { .. }) => {
                    return self.fail(r, "the new edge's record was deleted").await;
                }
                Err(error) => return Err(error.into()),
            },
            None => {
                let old = match self.store.get_edge(r.old_edge_id).await {
                    Ok(old) => old,
                    Err(StoreError::NotFound { .. }) => {
                        return self
                            .fail(r, "the edge was deleted before a replacement was made")
                            .await;
                    }
                    Err(error) => return Err(error.into()),
                };
                let origins = self
                    .store
                    .list_assignments(AssignmentFilter {
                        edge_id: Some(old.id),
                        origin_id: None,
                    })
                    .await?
                    .into_iter()
                    .map(|a| a.origin_id)
                    .collect();
                let name = self.successor_name(&old.name).await?;
                let (region, _, _) = self.provisioner.defaults();
                let new = self
                    .store
                    .create_edge(
                        &Actor::System,
                        NewEdge {
                            provider: Some(self.provisioner.kind().to_owned()),
                            region,
                            origins,
                            limits: old.limits.clone(),
                            tunnel: old.tunnel,
                            ..NewEdge::named(name)
                        },
                    )
                    .await?;
                r.new_edge_id = Some(new.id);
                r.new_edge_name = Some(new.name.clone());
                self.save(r, ReplacementStage::Provisioning).await?;
                new
            }
        };
        match self.ensure_instance(&new, false).await {
            Ok(_) => self.save(r, ReplacementStage::Waiting).await,
            Err(ReplaceError::Provision(error)) if !retryable(&error) => {
                self.fail(r, &error.to_string()).await
            }
            Err(error) => self.give_up_after_timeout(r, error).await,
        }
    }

    async fn waiting(&self, r: &mut Replacement) -> Result<(), ReplaceError> {
        let Some(new_id) = r.new_edge_id else {
            return self.save(r, ReplacementStage::Provisioning).await;
        };
        let new = match self.store.get_edge(new_id).await {
            Ok(edge) => edge,
            Err(StoreError::NotFound { .. }) => {
                return self.fail(r, "the new edge's record was deleted").await;
            }
            Err(error) => return Err(error.into()),
        };
        if self.serves(&new) && self.proven(&new).await? {
            self.event(
                Entity::Edge,
                &new.id.to_string(),
                "serving",
                json!({
                    "name": new.name,
                    "replaces": r.old_edge_name,
                    "public_ip": new.public_ip.map(|ip| ip.to_string()),
                    "seconds": since(r.started_at).as_secs(),
                }),
            )
            .await;
            return self.save(r, ReplacementStage::Draining).await;
        }
        if since(r.started_at) > self.settings.timeout {
            return self
                .fail(
                    r,
                    &format!(
                        "the new edge {:?} did not serve within {} s (it is {}: {})",
                        new.name,
                        secs(self.settings.timeout),
                        new.state.status,
                        new.state.reason.as_deref().unwrap_or("no reason yet")
                    ),
                )
                .await;
        }
        // A cloud machine gets its address while it boots.
        if new.public_ip.is_none() {
            if let Some(instance) = self.store.get_instance(new.id).await? {
                if let Some(id) = &instance.instance_id {
                    let status = self.provisioner.status(id).await?;
                    if status.status == InstanceStatus::Gone {
                        return self.fail(r, &format!("the new machine {id} is gone")).await;
                    }
                    if status.public_ip.is_some() {
                        let mut instance = instance.clone();
                        instance.public_ip = status.public_ip;
                        self.store.put_instance(&instance).await?;
                        self.set_addresses(&new, &status).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn draining(&self, r: &mut Replacement) -> Result<(), ReplaceError> {
        let old = match self.store.get_edge(r.old_edge_id).await {
            Ok(old) => old,
            Err(StoreError::NotFound { .. }) => {
                return self.save(r, ReplacementStage::Destroying).await;
            }
            Err(error) => return Err(error.into()),
        };
        if !old.draining {
            let served = old.state.status.serves();
            self.store
                .update_edge(
                    &Actor::System,
                    old.id,
                    EdgeUpdate {
                        draining: Some(true),
                        ..EdgeUpdate::default()
                    },
                )
                .await?;
            if served {
                // Still taking traffic: the grace period counts from now.
                return self.save(r, ReplacementStage::Draining).await;
            }
            return self.save(r, ReplacementStage::Destroying).await;
        }
        if since(r.updated_at) < self.settings.drain_grace {
            return Ok(());
        }
        self.save(r, ReplacementStage::Destroying).await
    }

    async fn destroying(&self, r: &mut Replacement) -> Result<(), ReplaceError> {
        self.destroy_instance(r.old_edge_id, &r.old_edge_name, true)
            .await?;
        match self.store.delete_edge(&Actor::System, r.old_edge_id).await {
            Ok(()) | Err(StoreError::NotFound { .. }) => {}
            Err(error) => return Err(error.into()),
        }
        self.save(r, ReplacementStage::Done).await?;
        self.event(
            Entity::Edge,
            &r.old_edge_id.to_string(),
            "replaced",
            json!({
                "name": r.old_edge_name,
                "by": r.new_edge_name,
                "by_id": r.new_edge_id.map(|id| id.to_string()),
                "cause": r.cause.as_str(),
                "seconds": since(r.started_at).as_secs(),
            }),
        )
        .await;
        tracing::info!(old = %r.old_edge_name, new = ?r.new_edge_name, "edge replaced");
        Ok(())
    }

    async fn give_up_after_timeout(
        &self,
        r: &mut Replacement,
        error: ReplaceError,
    ) -> Result<(), ReplaceError> {
        if since(r.started_at) > self.settings.timeout {
            return self.fail(r, &error.to_string()).await;
        }
        Err(error)
    }

    /// Ends a replacement without replacing: the new machine destroyed, the new edge deleted,
    /// the old edge kept.
    async fn fail(&self, r: &mut Replacement, why: &str) -> Result<(), ReplaceError> {
        tracing::warn!(edge = %r.old_edge_name, error = why, "edge replacement failed");
        if let Some(new_id) = r.new_edge_id {
            let name = r.new_edge_name.clone().unwrap_or_default();
            self.destroy_instance(new_id, &name, true).await?;
            match self.store.delete_edge(&Actor::System, new_id).await {
                Ok(()) | Err(StoreError::NotFound { .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        r.error = Some(why.to_owned());
        self.save(r, ReplacementStage::Failed).await?;
        self.event(
            Entity::Provision,
            r.new_edge_name.as_deref().unwrap_or(&r.old_edge_name),
            "failed",
            json!({
                "name": r.new_edge_name,
                "replaces": r.old_edge_name,
                "provider": self.provisioner.kind(),
                "error": why,
            }),
        )
        .await;
        self.event(
            Entity::Edge,
            &r.old_edge_id.to_string(),
            "replace_failed",
            json!({"name": r.old_edge_name, "error": why}),
        )
        .await;
        Ok(())
    }

    // ---- the job --------------------------------------------------------------------------

    /// One pass: start an automatic replacement if one is due, then drive every unfinished
    /// replacement as far as it goes now. Returns how many are unfinished afterwards.
    pub async fn pass(&self) -> Result<usize, ReplaceError> {
        if self.settings.auto {
            self.start_automatic().await?;
        }
        let _drive = self.drive.lock().await;
        let mut unfinished = self.store.list_replacements(true, 1000).await?;
        for r in &mut unfinished {
            if let Err(error) = self.advance(r).await {
                tracing::warn!(edge = %r.old_edge_name, stage = r.stage.as_str(), %error, "edge replacement step failed; retrying");
            }
        }
        Ok(unfinished.iter().filter(|r| !r.stage.finished()).count())
    }

    /// Starts the replacement of the first edge control provisioned that has been offline for
    /// `after`, unless one started within the cool-down.
    async fn start_automatic(&self) -> Result<(), ReplaceError> {
        let busy = self.store.list_replacements(true, 1000).await?;
        if busy.len() >= self.settings.max_in_flight {
            return Ok(());
        }
        if let Some(last) = self.store.list_replacements(false, 1).await?.first() {
            if last.cause == ReplaceCause::Auto && since(last.started_at) < self.settings.cooldown {
                return Ok(());
            }
        }
        for edge in self.store.list_edges().await? {
            let state = &edge.state;
            if state.status != NodeStatus::Offline || edge.draining {
                continue;
            }
            let Some(offline) = state.since.map(since) else {
                continue;
            };
            if offline < self.settings.after {
                continue;
            }
            if busy
                .iter()
                .any(|r| r.old_edge_id == edge.id || r.new_edge_id == Some(edge.id))
            {
                continue;
            }
            let ours = self.store.get_instance(edge.id).await?.is_some_and(|i| {
                i.provider == self.provisioner.kind() && i.state == InstanceState::Running
            });
            if !ours {
                continue;
            }
            let reason = format!(
                "offline for {} s (--replace-after {} s): {}",
                offline.as_secs(),
                secs(self.settings.after),
                state.reason.as_deref().unwrap_or("no reason recorded")
            );
            match self
                .replace(&Actor::System, &edge, ReplaceCause::Auto, reason)
                .await
            {
                Ok(_) | Err(ReplaceError::Store(StoreError::Conflict { .. })) => return Ok(()),
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Destroys machines whose edge record is gone (deleted by an operator, or a control that
    /// stopped between deleting an edge and destroying its machine), except those of
    /// replacements in flight.
    pub async fn sweep(&self) -> Result<usize, ReplaceError> {
        let _drive = self.drive.lock().await;
        let busy = self.store.list_replacements(true, 1000).await?;
        let mut destroyed = 0;
        for instance in self.store.list_instances().await? {
            if instance.provider != self.provisioner.kind()
                || busy.iter().any(|r| {
                    r.old_edge_id == instance.edge_id || r.new_edge_id == Some(instance.edge_id)
                })
            {
                continue;
            }
            let edge_gone = matches!(
                self.store.get_edge(instance.edge_id).await,
                Err(StoreError::NotFound { .. })
            );
            if !edge_gone && instance.state != InstanceState::Destroying {
                continue;
            }
            tracing::info!(edge = %instance.edge_name, "destroying a machine whose edge is gone");
            self.destroy_instance(instance.edge_id, &instance.edge_name, true)
                .await?;
            if !edge_gone {
                match self
                    .store
                    .delete_edge(&Actor::System, instance.edge_id)
                    .await
                {
                    Ok(()) | Err(StoreError::NotFound { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            destroyed += 1;
        }
        Ok(destroyed)
    }

    /// Runs the job until `shutdown`, on the replica that holds the `provision` leadership.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut leadership = None;
        let mut last_sweep: Option<Instant> = None;
        loop {
            if leadership.is_none() {
                match self.store.try_lead(LEADERSHIP_JOB).await {
                    Ok(Some(lead)) => leadership = Some(lead),
                    Ok(None) => {}
                    Err(error) => tracing::warn!(%error, "provisioner: cannot take leadership"),
                }
            }
            let wait = if leadership.is_some() {
                if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
                    last_sweep = Some(Instant::now());
                    if let Err(error) = self.sweep().await {
                        tracing::warn!(%error, "provisioner: sweeping orphaned machines failed");
                    }
                }
                if let Err(error) = self.pass().await {
                    tracing::warn!(%error, "provisioner: pass failed");
                }
                TICK
            } else {
                LEADERSHIP_RETRY
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Whether a provider error may go away by itself (rate limits, 5xx, transport).
fn retryable(error: &ProvisionError) -> bool {
    matches!(
        error,
        ProvisionError::RateLimited { .. }
            | ProvisionError::Provider { .. }
            | ProvisionError::Transport { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successors_keep_the_base_name() {
        assert_eq!(successor_base("edge1"), "edge1");
        assert_eq!(successor_base("edge1-r2"), "edge1");
        assert_eq!(successor_base("edge1-r12"), "edge1");
        assert_eq!(successor_base("edge-red"), "edge-red");
        assert_eq!(successor_base("-r2"), "-r2");
    }
}
