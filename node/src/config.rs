//! What the edge's and the origin's config files have in common: the error a load returns,
//! reading the file, the drain bound, and the tunnel key and options a node starts with.

use std::path::{Path, PathBuf};

use kokoa_model::{Bounded, ModelError, TunnelOptions};
use kokoa_proto::v1::snapshot::Node;
use kokoa_tunnel::key::PrivateKey;
use kokoa_tunnel::settings::TunnelSettings;

use crate::settings::ControlSettings;

/// Seconds SIGTERM may wait for open requests or streams (0: close at once).
pub type DrainSecs = Bounded<0, 86_400>;

/// A configuration that could not be loaded. Each message names the file or field to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A field is missing, unknown or has a value the model refuses.
    #[error("{0}")]
    Invalid(#[from] ModelError),
}

impl ConfigError {
    /// The offending field's path, when the error is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid(error) if !error.field.is_empty() => Some(&error.field),
            _ => None,
        }
    }
}

/// The text of the config file at `path`; the error names the file.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The key and tunnel options a node starts with: its file's, or in control mode those of the
/// last snapshot it applied (the key only when the operator gave none, so control assigns it),
/// so a node restarted while control is away keeps the identity and tunnel settings it last
/// had. A persisted snapshot that cannot be read is logged and ignored.
pub fn startup_tunnel(
    tunnel: &TunnelSettings,
    control: Option<&ControlSettings>,
) -> (PrivateKey, TunnelOptions) {
    let mut key = tunnel.private_key.clone();
    let mut options = tunnel.options;
    let Some(control) = control else {
        return (key, options);
    };
    let snapshot = match crate::persist::load_snapshot(&control.state_dir) {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => return (key, options),
        Err(error) => {
            tracing::warn!(%error, "cannot read the persisted config");
            return (key, options);
        }
    };
    let (private_key, persisted) = match &snapshot.node {
        Some(Node::Edge(edge)) => (&edge.private_key, edge.tunnel.as_ref()),
        Some(Node::Origin(origin)) => (&origin.private_key, origin.tunnel.as_ref()),
        None => return (key, options),
    };
    if tunnel.key_from_control {
        if let Ok(persisted) = PrivateKey::from_base64(private_key) {
            key = persisted;
        }
    }
    if let Some(Ok(persisted)) = persisted.map(TunnelOptions::from_proto) {
        options = persisted;
    }
    (key, options)
}
