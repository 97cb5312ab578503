//! Arbitrary bytes as edge and origin TOML config: parsing and validation must return `Ok` or
//! `Err`, never panic.
//!
//! Validation may read files the config names (`private_key_file`, certificates). An input that
//! names a path outside the harness's own scratch directory is skipped, so the fuzzer cannot
//! make the harness read `/dev/zero` or the host's secrets.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A scratch directory holding a valid key file (`edge.key`) for relative `*_file` paths.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("kokoa-fuzz-config");
        std::fs::create_dir_all(&dir).expect("create the scratch dir");
        std::fs::write(
            dir.join("edge.key"),
            "GDhuYHoKuZdyEgmjJWu7D+cZAkhQdEHN6MGawzZDp2I=\n",
        )
        .expect("write the scratch key");
        dir
    })
}

/// True when every string value in the TOML document is safe to use as a path relative to the
/// scratch directory (no absolute paths, no `..`, no NUL). Non-TOML input is "safe": the parser
/// rejects it before any file is read.
pub fn paths_are_confined(text: &str) -> bool {
    fn ok(v: &toml::Value) -> bool {
        match v {
            toml::Value::String(s) => {
                let p = Path::new(s);
                !p.is_absolute()
                    && !s.contains('\0')
                    && !p
                        .components()
                        .any(|c| matches!(c, std::path::Component::ParentDir))
            }
            toml::Value::Array(a) => a.iter().all(ok),
            toml::Value::Table(t) => t.values().all(ok),
            _ => true,
        }
    }
    match text.parse::<toml::Table>() {
        Ok(t) => t.values().all(ok),
        Err(_) => true,
    }
}

/// Parses `data` as an edge config and as an origin config.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if !paths_are_confined(text) {
        return;
    }
    let dir = Some(scratch_dir());
    let _ = kokoa_edge::config::EdgeConfig::from_toml(text, dir);
    let _ = kokoa_origin::config::OriginConfig::from_toml(text, dir);
}
