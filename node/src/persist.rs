//! What a node keeps in its state directory: the credential, the last applied snapshot
//! (`snapshot.pb`, so it serves while control is away) and the digest of the last token used.
//! Files are written atomically with mode 0600.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use kokoa_proto::v1::Snapshot;
use prost::Message as _;

/// The node's credential, inside `state_dir`.
pub const CREDENTIAL_FILE: &str = "credential";
/// The last applied snapshot (protobuf `Snapshot`), inside `state_dir`.
pub const SNAPSHOT_FILE: &str = "snapshot.pb";
/// SHA-256 (hex) of the last enrollment token sent to control, inside `state_dir`.
pub const TOKEN_USED_FILE: &str = "token.used";

/// A state file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A state file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The persisted snapshot does not decode (a partial or foreign file).
    #[error("{path} is not a Kokoa snapshot ({reason}); it is ignored and replaced by control's next one")]
    BadSnapshot {
        /// The file.
        path: PathBuf,
        /// What prost said.
        reason: String,
    },
}

/// Reads the persisted snapshot, if any. A file that does not decode is an error (the caller
/// logs it and starts empty).
pub fn load_snapshot(state_dir: &Path) -> Result<Option<Snapshot>, StateError> {
    let path = state_dir.join(SNAPSHOT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Io { path, source }),
    };
    Snapshot::decode(bytes.as_slice())
        .map(Some)
        .map_err(|e| StateError::BadSnapshot {
            path,
            reason: e.to_string(),
        })
}

/// Writes `bytes` to `path` atomically with mode 0600: a temporary file next to it, fsync,
/// rename, fsync of the directory. A crash leaves the old file or the new one, never a mix.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let state = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(state)?;
    // `mode` only applies when the file is created; a leftover tmp file may be wider.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(state)?;
    file.write_all(bytes).map_err(state)?;
    file.sync_all().map_err(state)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(state)?;
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Creates the state directory (mode 0700) if it does not exist.
pub fn ensure_state_dir(dir: &Path) -> Result<(), StateError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StateError::Io {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.pb");
        write_private_file(&path, b"one").unwrap();
        write_private_file(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.path().join("snapshot.pb.tmp").exists());
    }

    #[test]
    fn snapshots_round_trip_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_snapshot(dir.path()).unwrap().is_none());
        let snapshot = Snapshot {
            version: 7,
            heartbeat_interval_seconds: 5,
            node: None,
        };
        write_private_file(&dir.path().join(SNAPSHOT_FILE), &snapshot.encode_to_vec()).unwrap();
        assert_eq!(load_snapshot(dir.path()).unwrap(), Some(snapshot));
        std::fs::write(dir.path().join(SNAPSHOT_FILE), b"\xff\xff\xff").unwrap();
        assert!(matches!(
            load_snapshot(dir.path()),
            Err(StateError::BadSnapshot { .. })
        ));
    }
}
