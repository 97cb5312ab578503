//! The `[tunnel]` table both nodes' config files share, and what it becomes: the node's key,
//! its UDP address and the model's [`TunnelOptions`] (MTU, TCP buffer, overlay range), each
//! validated by the model's value types.
//!
//! ```toml
//! [tunnel]
//! private_key_file = "/etc/kokoa/edge.key"   # or private_key = "..."
//! listen = "0.0.0.0:51820"
//! mtu = 1420
//! tcp_buffer = 262144
//! overlay = "10.100.0.0/16"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use kokoa_model::tunnel::TunnelOptions;
use kokoa_model::{ModelError, Mtu, Overlay, TcpBuffer};
use serde::Deserialize;

use crate::key::PrivateKey;
use crate::TunnelConfig;

/// The `[tunnel]` table as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TunnelFile {
    /// The node's WireGuard private key (base64), or
    pub private_key: Option<String>,
    /// a file holding it (relative to the config file).
    pub private_key_file: Option<PathBuf>,
    /// UDP address to bind.
    pub listen: Option<SocketAddr>,
    /// Inner MTU.
    pub mtu: Option<Mtu>,
    /// Per-direction TCP buffer per stream.
    pub tcp_buffer: Option<TcpBuffer>,
    /// The range tunnel addresses come from.
    pub overlay: Option<Overlay>,
}

/// A node's validated tunnel settings.
#[derive(Clone, Debug)]
pub struct TunnelSettings {
    /// The node's private key.
    pub private_key: PrivateKey,
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// MTU, TCP buffer and overlay range.
    pub options: TunnelOptions,
    /// Control mode without a local key: `private_key` is a random stand-in until control
    /// sends the node's managed key.
    pub key_from_control: bool,
}

fn anchored(base_dir: Option<&Path>, path: PathBuf) -> PathBuf {
    match base_dir {
        Some(dir) if path.is_relative() && !dir.as_os_str().is_empty() => dir.join(path),
        _ => path,
    }
}

impl TunnelFile {
    /// Validates the table. `program` names the binary in hints (`kokoa-edge genkey`);
    /// `default_listen` is the node's UDP address when none is written; `control` allows a
    /// missing key (control will send it). Relative paths are taken from `base_dir`. Errors
    /// name the field (`tunnel.private_key_file`).
    pub fn settings(
        self,
        program: &str,
        default_listen: SocketAddr,
        base_dir: Option<&Path>,
        control: bool,
    ) -> Result<TunnelSettings, ModelError> {
        let key_from_control =
            control && self.private_key.is_none() && self.private_key_file.is_none();
        let private_key = match (self.private_key, self.private_key_file) {
            (None, None) if key_from_control => PrivateKey::generate(),
            (Some(_), Some(_)) => {
                return Err(ModelError::new(
                    "tunnel.private_key_file",
                    "set either private_key or private_key_file, not both",
                ))
            }
            (None, None) => {
                return Err(ModelError::new(
                    "tunnel.private_key",
                    format!(
                        "missing: set private_key (from `{program} genkey`) or private_key_file"
                    ),
                ))
            }
            (Some(key), None) => PrivateKey::from_base64(key.trim()).map_err(|e| {
                ModelError::new(
                    "tunnel.private_key",
                    format!(
                        "not a WireGuard private key ({e}); generate one with `{program} genkey`"
                    ),
                )
            })?,
            (None, Some(file)) => {
                let path = anchored(base_dir, file);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ModelError::new(
                        "tunnel.private_key_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                PrivateKey::from_base64(text.trim()).map_err(|e| {
                    ModelError::new(
                        "tunnel.private_key_file",
                        format!(
                            "{} does not hold a WireGuard private key ({e})",
                            path.display()
                        ),
                    )
                })?
            }
        };
        Ok(TunnelSettings {
            private_key,
            listen: self.listen.unwrap_or(default_listen),
            options: TunnelOptions {
                mtu: self.mtu.unwrap_or_default(),
                tcp_buffer: self.tcp_buffer.unwrap_or_default(),
                overlay: self.overlay.unwrap_or_default(),
            },
            key_from_control,
        })
    }
}

impl TunnelSettings {
    /// The tunnel's config for `private_key` with these settings' address and `options` (the
    /// node's own, or control's), no peers yet.
    pub fn tunnel_config(&self, private_key: PrivateKey, options: TunnelOptions) -> TunnelConfig {
        let mut config = TunnelConfig::new(private_key, self.listen);
        config.mtu = options.mtu.get();
        config.tcp_buffer = options.tcp_buffer.bytes();
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTEN: &str = "0.0.0.0:51820";

    fn settings(text: &str, control: bool) -> Result<TunnelSettings, ModelError> {
        let file: TunnelFile = kokoa_model::from_toml(text)?;
        file.settings("kokoa-edge", LISTEN.parse().unwrap(), None, control)
    }

    #[test]
    fn defaults_and_values() {
        let key = PrivateKey::generate();
        let s = settings(&format!("private_key = \"{}\"", key.to_base64()), false).unwrap();
        assert_eq!(s.private_key.public_key(), key.public_key());
        assert_eq!(s.listen, LISTEN.parse().unwrap());
        assert_eq!(s.options, TunnelOptions::default());
        assert!(!s.key_from_control);
        let s = settings(
            &format!(
                "private_key = \"{}\"\nmtu = 1280\ntcp_buffer = 65536\noverlay = \"10.50.0.0/16\"",
                key.to_base64()
            ),
            false,
        )
        .unwrap();
        assert_eq!(s.options.mtu.get(), 1280);
        let config = s.tunnel_config(key, s.options);
        assert_eq!((config.mtu, config.tcp_buffer), (1280, 65536));
        assert!(settings("", true).unwrap().key_from_control);
    }

    #[test]
    fn errors_name_the_field() {
        for (text, field) in [
            ("", "tunnel.private_key"),
            ("private_key = \"short\"", "tunnel.private_key"),
            (
                "private_key = \"x\"\nprivate_key_file = \"y\"",
                "tunnel.private_key_file",
            ),
            (
                "private_key_file = \"/nonexistent/key\"",
                "tunnel.private_key_file",
            ),
            ("mtu = 70000", "mtu"),
            ("mtu = 100", "mtu"),
            ("tcp_buffer = 1", "tcp_buffer"),
            ("overlay = \"10.0.0.0/30\"", "overlay"),
            ("bogus = 1", "bogus"),
        ] {
            let error = settings(text, false).unwrap_err();
            assert_eq!(error.field, field, "{text}: {error}");
        }
    }

    #[test]
    fn key_file_is_relative_to_the_config() {
        let dir =
            std::env::temp_dir().join(format!("kokoa-tunnel-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = PrivateKey::generate();
        std::fs::write(dir.join("node.key"), key.to_base64() + "\n").unwrap();
        let file: TunnelFile = kokoa_model::from_toml("private_key_file = \"node.key\"").unwrap();
        let s = file
            .settings("kokoa-origin", LISTEN.parse().unwrap(), Some(&dir), false)
            .unwrap();
        assert_eq!(s.private_key.public_key(), key.public_key());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
