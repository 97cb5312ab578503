//! Kokoa wire types: the protobuf messages and gRPC services (`kokoa/v1/control.proto`) that
//! `kokoa-control` uses to enroll edges and origins and stream their config to them. Control
//! serves [`v1::enrollment_server`] and [`v1::config_server`]; nodes use the clients.

/// `kokoa.v1`: enrollment, config watch, snapshots, ACK/NACK and heartbeats.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("kokoa.v1");
}
