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
