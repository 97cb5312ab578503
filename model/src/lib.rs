//! `kokoa-model`: Kokoa's one config model.
//!
//! Every config value an operator or control can set has one typed definition here, and one
//! validator: its constructor, which its `Deserialize` impl (so TOML and JSON parse through the
//! same check) and its `from_proto` call. Control's REST API validates with it before anything
//! is stored, control's gRPC snapshots carry it as typed protobuf messages, the nodes' TOML
//! files parse into it and the nodes convert snapshots straight into it before applying them.
//! So a change control accepts is a change every node accepts.
//!
//! It sits beside the request path, not on it: the nodes turn these values into their runtime
//! types (route tables, limiters, tunnel peers) when a config is applied.
//!
//! - values: [`name`] (node, service and host names), [`number`] (ports, rates, bursts, body
//!   limits, bounded counts), [`net`] (networks, endpoints, tunnel addresses, listeners),
//!   [`key`] (WireGuard keys), [`tunnel`] (MTU, TCP buffer), [`cert`] (certificates);
//! - objects: [`limits`] (a route's limits, an edge's `[limits]`), [`route`] (HTTP and TCP
//!   routes), [`peer`] (an origin as an edge's peer, an edge as an origin's), [`service`];
//! - wholes: [`spec`] ([`EdgeSpec`], [`OriginSpec`]) with the rules across objects;
//! - conversions: [`proto`] (`from_proto` / `to_proto`), [`from_toml`], [`from_json`].
//!
//! Errors are [`ModelError`]s: the field as a path (`routes[2].limits.allow[0]`), a message
//! that says what to do, and the object (`route app.example.com`) when known.
//!
//! This crate depends on no data-plane or control-plane crate (only `kokoa-proto`, for the
//! conversions), so control, the nodes and the tests can all use it.

pub mod cert;
pub mod error;
pub mod key;
pub mod limits;
pub mod name;
pub mod net;
pub mod number;
pub mod peer;
pub mod proto;
pub mod route;
mod serde_util;
pub mod service;
pub mod spec;
#[cfg(any(test, feature = "proptest"))]
pub mod strategy;
pub mod tunnel;

pub use crate::cert::Certificate;
pub use crate::error::{ModelError, ObjectKind, ObjectRef};
pub use crate::key::{KeyError, PrivateKey, PublicKey};
pub use crate::limits::{EdgeLimits, RouteLimits, RoutePolicy};
pub use crate::name::{HostName, HostPattern, Name};
pub use crate::net::{AccessRules, Endpoint, Network, Overlay, TcpListen, TunnelIp};
pub use crate::number::{BodyLimit, Bounded, Burst, Port, Rate, RatePolicy};
pub use crate::peer::{EdgePeer, Keepalive, OriginPeer};
pub use crate::route::{HttpRoute, ProxyProtocol, SniHostCheck, TcpRoute};
pub use crate::serde_util::{from_json, from_json_value, from_toml};
pub use crate::service::{HealthPath, Protocol, Service, ServiceChecks};
pub use crate::spec::{EdgeSpec, OriginSpec};
pub use crate::tunnel::{Mtu, TcpBuffer, TunnelOptions, WindowLimits};
