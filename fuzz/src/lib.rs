//! Shared set-up for Kokoa's fuzz targets: each target in `fuzz_targets/` is a few lines that
//! hand the fuzzer's bytes to one of the harnesses here, which call the real library entry
//! points (`kokoa_tunnel::core::Core`, the edge and origin config parsers, ...).
//!
//! Fixed keys and addresses keep every run reproducible and let `examples/seeds.rs` build seed
//! inputs (a real boringtun handshake initiation, real TCP segments) that the harness accepts.

pub mod config;
pub mod route;
pub mod sni;
pub mod tunnel;
