//! [`ProvisionStore`]: the machines provisioners made for edges ([`EdgeInstance`]) and the
//! replacements of edges by new ones ([`Replacement`]), persisted at every step so that a
//! control restart in the middle resumes or cleans up instead of leaking a machine (see
//! `crate::provision`).

use std::net::IpAddr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::error::Result;
use super::model::{Actor, Id};

/// Where an edge's machine is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// The provider was (or is about to be) asked for it; its id may not be known yet.
    Creating,
    /// The provider made it.
    Running,
    /// The provider was asked to destroy it.
    Destroying,
    /// Gone.
    Destroyed,
    /// Creating it failed.
    Failed,
}

impl InstanceState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Creating => "creating",
            InstanceState::Running => "running",
            InstanceState::Destroying => "destroying",
            InstanceState::Destroyed => "destroyed",
            InstanceState::Failed => "failed",
        }
    }

    /// Parses [`InstanceState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "creating" => InstanceState::Creating,
            "running" => InstanceState::Running,
            "destroying" => InstanceState::Destroying,
            "destroyed" => InstanceState::Destroyed,
            "failed" => InstanceState::Failed,
            _ => return None,
        })
    }
}

/// The machine a provisioner made (or is making) for an edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeInstance {
    /// The edge (the row outlives the edge's record until the machine is destroyed).
    pub edge_id: Id,
    /// The edge's name, which is also the machine's name at the provider.
    pub edge_name: String,
    /// Which provisioner: `local`, `digitalocean`, `vultr`, `hetzner`.
    pub provider: String,
    /// The provider's id of the machine (unknown while it is being created).
    pub instance_id: Option<String>,
    /// Where it is in its life.
    pub state: InstanceState,
    /// Its public address, once the provider assigned one.
    pub public_ip: Option<IpAddr>,
    /// Provider region.
    pub region: Option<String>,
    /// Provider size / plan / server type.
    pub size: Option<String>,
    /// The last error (creating or destroying).
    pub error: Option<String>,
    /// When it was first requested.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Where a replacement is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplacementStage {
    /// The new edge is in the store and its machine requested.
    Provisioning,
    /// The machine runs; waiting until the new edge serves.
    Waiting,
    /// The new edge serves; the old one is drained.
    Draining,
    /// The old edge's machine is destroyed and its record removed.
    Destroying,
    /// Finished: the new edge replaced the old one.
    Done,
    /// Finished without replacing: the new machine was destroyed, the old edge kept.
    Failed,
}

impl ReplacementStage {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplacementStage::Provisioning => "provisioning",
            ReplacementStage::Waiting => "waiting",
            ReplacementStage::Draining => "draining",
            ReplacementStage::Destroying => "destroying",
            ReplacementStage::Done => "done",
            ReplacementStage::Failed => "failed",
        }
    }

    /// Parses [`ReplacementStage::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "provisioning" => ReplacementStage::Provisioning,
            "waiting" => ReplacementStage::Waiting,
            "draining" => ReplacementStage::Draining,
            "destroying" => ReplacementStage::Destroying,
            "done" => ReplacementStage::Done,
            "failed" => ReplacementStage::Failed,
            _ => return None,
        })
    }

    /// Done or failed.
    pub fn finished(self) -> bool {
        matches!(self, ReplacementStage::Done | ReplacementStage::Failed)
    }
}

/// Why a replacement started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplaceCause {
    /// The edge was offline for longer than `--replace-after` and `--auto-replace` is on.
    Auto,
    /// An operator asked (`edge replace`, the API, the dashboard).
    Manual,
}

impl ReplaceCause {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplaceCause::Auto => "auto",
            ReplaceCause::Manual => "manual",
        }
    }
}

/// One replacement of an edge by a newly provisioned one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replacement {
    /// Id.
    pub id: Id,
    /// The edge being replaced.
    pub old_edge_id: Id,
    /// Its name.
    pub old_edge_name: String,
    /// The new edge, once created.
    pub new_edge_id: Option<Id>,
    /// Its name.
    pub new_edge_name: Option<String>,
    /// Where it is.
    pub stage: ReplacementStage,
    /// Why it started.
    pub cause: ReplaceCause,
    /// In words ("offline for 61 s: 3 failed probes of ...", "requested by api:ops").
    pub reason: String,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Last change.
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// When it finished.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

/// The provisioning part of [`Store`](super::Store).
#[async_trait]
pub trait ProvisionStore: Send + Sync {
    /// Stores an edge's machine (insert or replace by edge id). Observation, no event: the
    /// provisioner writes the events (`edge.provisioned`, `edge.destroyed`, ...).
    async fn put_instance(&self, instance: &EdgeInstance) -> Result<()>;

    /// The machine of an edge, if a provisioner made one.
    async fn get_instance(&self, edge_id: Id) -> Result<Option<EdgeInstance>>;

    /// Every machine on record, oldest first.
    async fn list_instances(&self) -> Result<Vec<EdgeInstance>>;

    /// Forgets a machine (after it was destroyed).
    async fn delete_instance(&self, edge_id: Id) -> Result<()>;

    /// Records a new replacement and its `edge.replace_started` event in one transaction.
    /// `Conflict` when the edge is already being replaced, or when `max_in_flight`
    /// replacements are unfinished (checked under the write lock, so replicas agree).
    async fn start_replacement(
        &self,
        actor: &Actor,
        replacement: &Replacement,
        max_in_flight: usize,
    ) -> Result<()>;

    /// Stores a replacement's new stage, new edge and error (no event: the provisioner writes
    /// one per step).
    async fn update_replacement(&self, replacement: &Replacement) -> Result<()>;

    /// Replacements, newest first; only unfinished ones with `unfinished`.
    async fn list_replacements(&self, unfinished: bool, limit: u32) -> Result<Vec<Replacement>>;
}
