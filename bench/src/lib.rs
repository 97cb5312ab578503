//! `kokoa-bench`: Kokoa's benchmarks. It measures the data plane, it is not part of the
//! request path.
//!
//! For now it holds the criterion micro-benchmarks of the hot paths in `benches/`, run with
//! `cargo bench -p kokoa-bench`:
//! - `route`: `RouteTable::lookup` (exact, wildcard, miss) in a table of 1,000 routes;
//! - `sni`: certificate selection by SNI (exact, wildcard, default, refused);
//! - `wireguard`: boringtun `Tunn` encapsulate and decapsulate of a 1420-byte packet;
//! - `netstack`: two `kokoa_tunnel` cores back to back in memory moving a bulk transfer
//!   (WireGuard + smoltcp TCP per packet, in bytes/s).
//!
//! The load-comparison harness (Kokoa against Nginx + WireGuard and the other tunnels, in
//! network namespaces) comes with a later issue as this crate's binary.
