//! The `[control]` table of a node's config file: where control is, which CA to trust, the
//! one-time token and the state directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::persist::{CREDENTIAL_FILE, SNAPSHOT_FILE};

/// The `[control]` table of a node's TOML config, as written.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileControl {
    /// `https://control.example.com:7443`.
    pub url: Option<String>,
    /// Control's CA (PEM), the only trust anchor for the gRPC TLS.
    pub ca_file: Option<PathBuf>,
    /// The one-time enrollment token.
    pub token_file: Option<PathBuf>,
    /// Where the credential and the last applied snapshot are kept.
    pub state_dir: Option<PathBuf>,
}

/// A `[control]` table that cannot be used. `field` is the TOML path to fix.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SettingsError {
    /// The field, such as `control.url`.
    pub field: String,
    /// What is wrong and what to do.
    pub reason: String,
}

fn settings_error(field: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

/// The validated `[control]` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlSettings {
    /// Control's gRPC URL.
    pub url: String,
    /// The host of `url`: the name control's certificate must carry.
    pub host: String,
    /// Control's CA file.
    pub ca_file: PathBuf,
    /// Control's CA certificate(s), PEM, read when the config was loaded.
    pub ca_pem: Vec<u8>,
    /// The enrollment token file (read when the node needs to enroll).
    pub token_file: PathBuf,
    /// The node's state directory (created with mode 0700 if missing).
    pub state_dir: PathBuf,
}

fn anchored(base_dir: Option<&Path>, path: PathBuf) -> PathBuf {
    match base_dir {
        Some(dir) if path.is_relative() && !dir.as_os_str().is_empty() => dir.join(path),
        _ => path,
    }
}

impl ControlSettings {
    /// Validates a `[control]` table. Relative paths are taken relative to `base_dir` (the
    /// config file's directory). Reads `ca_file` now, so a missing CA is a config error.
    pub fn from_file(file: FileControl, base_dir: Option<&Path>) -> Result<Self, SettingsError> {
        let url = file.url.ok_or_else(|| {
            settings_error(
                "control.url",
                "missing: control's gRPC URL, such as https://control.example.com:7443",
            )
        })?;
        let uri: http::Uri = url
            .parse()
            .map_err(|e| settings_error("control.url", format!("`{url}` is not a URL ({e})")))?;
        if uri.scheme_str() != Some("https") {
            return Err(settings_error(
                "control.url",
                format!("`{url}` must start with https:// (control is only reached over TLS)"),
            ));
        }
        let host = uri
            .host()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| settings_error("control.url", format!("`{url}` has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let ca_file = anchored(
            base_dir,
            file.ca_file.ok_or_else(|| {
                settings_error(
                    "control.ca_file",
                    "missing: control's CA certificate (control-ca.pem from the node's bundle)",
                )
            })?,
        );
        let ca_pem = std::fs::read(&ca_file).map_err(|e| {
            settings_error(
                "control.ca_file",
                format!("cannot read {}: {e}", ca_file.display()),
            )
        })?;
        let has_certificate = rustls_pemfile::certs(&mut ca_pem.as_slice())
            .next()
            .is_some_and(|cert| cert.is_ok());
        if !has_certificate {
            return Err(settings_error(
                "control.ca_file",
                format!(
                    "{} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
                    ca_file.display()
                ),
            ));
        }
        let token_file = anchored(
            base_dir,
            file.token_file.ok_or_else(|| {
                settings_error(
                    "control.token_file",
                    "missing: the enrollment token file (enroll.token from the node's bundle)",
                )
            })?,
        );
        let state_dir = anchored(
            base_dir,
            file.state_dir.ok_or_else(|| {
                settings_error(
                    "control.state_dir",
                    "missing: a directory for the credential and the last applied config, such as /var/lib/kokoa-edge",
                )
            })?,
        );
        Ok(Self {
            url,
            host,
            ca_file,
            ca_pem,
            token_file,
            state_dir,
        })
    }

    /// `state_dir/snapshot.pb`.
    pub fn snapshot_path(&self) -> PathBuf {
        self.state_dir.join(SNAPSHOT_FILE)
    }

    /// `state_dir/credential`.
    pub fn credential_path(&self) -> PathBuf {
        self.state_dir.join(CREDENTIAL_FILE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_validate_and_anchor_paths() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["control.test".to_owned()]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
        let file = FileControl {
            url: Some("https://control.test:7443".into()),
            ca_file: Some("ca.pem".into()),
            token_file: Some("enroll.token".into()),
            state_dir: Some("state".into()),
        };
        let settings = ControlSettings::from_file(file.clone(), Some(dir.path())).unwrap();
        assert_eq!(settings.host, "control.test");
        assert_eq!(settings.token_file, dir.path().join("enroll.token"));
        assert_eq!(
            settings.snapshot_path(),
            dir.path().join("state/snapshot.pb")
        );

        let error = |file: FileControl| {
            ControlSettings::from_file(file, Some(dir.path()))
                .unwrap_err()
                .to_string()
        };
        let message = error(FileControl {
            url: Some("http://control.test:7443".into()),
            ..file.clone()
        });
        assert!(message.starts_with("control.url:"), "{message}");
        let message = error(FileControl {
            ca_file: Some("missing.pem".into()),
            ..file.clone()
        });
        assert!(
            message.starts_with("control.ca_file: cannot read"),
            "{message}"
        );
        let message = error(FileControl {
            state_dir: None,
            ..file.clone()
        });
        assert!(
            message.starts_with("control.state_dir: missing"),
            "{message}"
        );
        std::fs::write(dir.path().join("bad.pem"), "nope").unwrap();
        let message = error(FileControl {
            ca_file: Some("bad.pem".into()),
            ..file
        });
        assert!(message.contains("holds no PEM certificate"), "{message}");
    }
}
