//! `kokoa-bench`: Kokoa's benchmarks. It measures the data plane, it is not part of the
//! request path.
//!
//! Criterion micro-benchmarks of the hot paths live in `benches/`, run with
//! `cargo bench -p kokoa-bench`:
//! - `route`: `RouteTable::lookup` (exact, wildcard, miss) in a table of 1,000 routes;
//! - `sni`: certificate selection by SNI (exact, wildcard, default, refused);
//! - `wireguard`: boringtun `Tunn` encapsulate and decapsulate of a 1420-byte packet;
//! - `netstack`: two `kokoa_tunnel` cores back to back in memory moving a bulk transfer
//!   (WireGuard + smoltcp TCP per packet, in bytes/s).
//!
//! The load comparison (`cargo run -p kokoa-bench --release -- compare`, root) runs Kokoa
//! against Nginx + wireguard-go, Nginx alone and Nginx + onetun in two network namespaces
//! joined by a veth pair, with wrk, h2load and curl as load generators, and writes
//! `bench/results/<date>-<build>.md` and `.svg` ([`compare`], names from [`files`], never
//! overwriting an earlier run). It is a benchmark, never a test: only the pure logic (medians,
//! ratios, report, chart and config rendering, file naming, output parsers) is unit tested.

pub mod apps;
pub mod chart;
pub mod compare;
pub mod files;
pub mod load;
pub mod render;
pub mod report;
pub mod sys;

/// The current time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, mo, d, h, mi) = report::civil_from_unix(secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02} UTC")
}

/// The build being measured: `$KOKOA_BUILD` when set (binaries from elsewhere, picked with
/// `KOKOA_BIN_DIR`, e.g. `KOKOA_BUILD=fdac03c`), else `git describe --always --dirty` of this
/// checkout.
pub fn build_name() -> String {
    if let Some(build) = std::env::var("KOKOA_BUILD").ok().filter(|b| !b.is_empty()) {
        return build;
    }
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    sys::load_average()
}

/// `bench/results/<UTC date>-<name>-<build>.md` for a benchmark's results file; an error if it
/// exists (results files are never overwritten).
pub fn results_path(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let date = &utc_now()[..10];
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("results")
        .join(format!("{date}-{name}-{}.md", build_name()));
    anyhow::ensure!(
        !path.exists(),
        "{} exists: results files are never overwritten",
        path.display()
    );
    Ok(path)
}

/// How benchmark `name` was run, for its results file: the `cargo bench` command with the
/// `KOKOA_BIN_DIR` and `KOKOA_BUILD` it ran with.
pub fn bench_command(name: &str) -> String {
    let mut env = String::new();
    for key in ["KOKOA_BIN_DIR", "KOKOA_BUILD"] {
        if let Ok(value) = std::env::var(key) {
            env.push_str(&format!("{key}={value} "));
        }
    }
    format!("{env}cargo bench --profile dev -p kokoa-bench --bench {name}")
}
