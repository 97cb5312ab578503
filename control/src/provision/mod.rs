//! Edge provisioners and the replacement of dead edges.
//!
//! A [`Provisioner`] makes and destroys the machine an edge runs on, from an [`InstanceSpec`]
//! (name, region, size, image and the edge's install bundle: bootstrap config, control's CA,
//! a one-time enrollment token). Providers:
//!
//! - [`local::LocalProvisioner`] (`--provisioner local`): a real `kokoa-edge` process on this
//!   machine, with its own loopback address from a range (`127.0.10.0/24` by default) as its
//!   public address, detached from control so a control restart leaves it running;
//! - [`digitalocean`], [`vultr`], [`hetzner`]: a VPS through the provider's REST API (Bearer
//!   token), booted with [`cloud_init::user_data`] that downloads `kokoa-edge` from a configured
//!   release URL, checks its SHA-256, and installs and enrolls the bundle.
//!
//! [`replace::Replacer`] drives replacements (`--auto-replace`, `edge replace NAME`, `POST
//! /api/v1/edge-nodes/{id}/replace`): provision, wait until the new edge serves, drain and
//! destroy the old one; every step is persisted (`edge_replacements`, `edge_instances`) and is
//! an event in the audit trail.

pub mod args;
pub mod cloud;
pub mod cloud_init;
pub mod digitalocean;
pub mod hetzner;
pub mod local;
pub mod replace;
pub mod vultr;

use std::net::IpAddr;

use async_trait::async_trait;

pub use args::ProvisionArgs;
pub use replace::{ReplaceSettings, Replacer};

/// What a provisioner is asked to make.
#[derive(Clone)]
pub struct InstanceSpec {
    /// The edge's name (the machine's name / label at the provider).
    pub name: String,
    /// Provider region (`fra1`, `ewr`, `nbg1`; ignored by `local`).
    pub region: Option<String>,
    /// Provider size / plan / server type.
    pub size: Option<String>,
    /// Provider image (an OS image with systemd; the bundle installs kokoa-edge on it).
    pub image: Option<String>,
    /// The edge's install bundle (tar.gz from [`crate::bundle::build`]): bootstrap config,
    /// control's CA and a one-time enrollment token.
    pub bundle: Vec<u8>,
}

impl std::fmt::Debug for InstanceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bundle holds an enrollment token: never printed.
        f.debug_struct("InstanceSpec")
            .field("name", &self.name)
            .field("region", &self.region)
            .field("size", &self.size)
            .field("image", &self.image)
            .field("bundle_bytes", &self.bundle.len())
            .finish()
    }
}

/// A machine as the provider reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The provider's id.
    pub id: String,
    /// Its public address, once assigned.
    pub public_ip: Option<IpAddr>,
    /// The WireGuard endpoint origins dial (`host:port`), once the address is known.
    pub endpoint: Option<String>,
    /// The edge's admin listener when control can reach it (`local`), else `None`.
    pub admin_address: Option<String>,
    /// Where it is.
    pub status: InstanceStatus,
}

/// A machine's state at the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstanceStatus {
    /// Being created or booting.
    Starting,
    /// Running.
    Running,
    /// Stopped, being destroyed or gone.
    Gone,
}

/// Why a provider call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// Bad settings (a flag, a credential file).
    #[error("provisioner settings: {0}")]
    Config(String),
    /// The provider refused the credentials (401/403).
    #[error("{provider} refused the API token ({status}): {message}")]
    Unauthorized {
        /// Which provider.
        provider: &'static str,
        /// The HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The provider rate-limited us (429) and retries ran out.
    #[error("{provider} rate-limited the request (429): {message}")]
    RateLimited {
        /// Which provider.
        provider: &'static str,
        /// The provider's message.
        message: String,
    },
    /// The provider refused the request (another 4xx: a bad region, size or image, a quota).
    #[error("{provider} refused the request ({status}): {message}")]
    Refused {
        /// Which provider.
        provider: &'static str,
        /// The HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The provider failed (5xx), or answered something that does not follow its API.
    #[error("{provider} failed: {message}")]
    Provider {
        /// Which provider.
        provider: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The provider could not be reached.
    #[error("cannot reach {provider}: {message}")]
    Transport {
        /// Which provider.
        provider: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A local machine could not be made or destroyed.
    #[error("local provisioner: {0}")]
    Local(String),
}

/// Makes and destroys the machines edges run on. Every method is bounded in time (each API
/// request has a timeout) and safe to repeat: [`Provisioner::destroy`] of a machine that is
/// already gone succeeds, and [`Provisioner::find`] lets a restarted control find a machine it
/// asked for before it could record the id.
#[async_trait]
pub trait Provisioner: Send + Sync + std::fmt::Debug {
    /// `local`, `digitalocean`, `vultr`, `hetzner`.
    fn kind(&self) -> &'static str;

    /// The region, size and image used when a request names none.
    fn defaults(&self) -> (Option<String>, Option<String>, Option<String>);

    /// Creates a machine for `spec` that installs and starts the bundle's edge.
    async fn create(&self, spec: &InstanceSpec) -> Result<Instance, ProvisionError>;

    /// The machine's current state (its address once assigned). A machine the provider no
    /// longer knows is [`InstanceStatus::Gone`].
    async fn status(&self, id: &str) -> Result<Instance, ProvisionError>;

    /// Destroys the machine; succeeds when it is already gone.
    async fn destroy(&self, id: &str) -> Result<(), ProvisionError>;

    /// The machine named `name`, if the provider has one.
    async fn find(&self, name: &str) -> Result<Option<Instance>, ProvisionError>;
}

/// The name a machine gets at a cloud provider: the edge name with `_` (not allowed in host
/// names) as `-`.
pub fn host_name(name: &str) -> String {
    name.replace('_', "-")
}
