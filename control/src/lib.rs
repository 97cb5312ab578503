//! Kokoa control plane: the source of truth that will stream configuration to edges and
//! origins. Until the control-plane issue lands, edges and origins run from their TOML files and
//! this crate only carries the program's name and version.

/// The program version, shared with `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
