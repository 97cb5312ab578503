//! What an edge admits: the per-route limits ([`RouteLimits`], a route's `rate`, `burst`,
//! `max_body_bytes`, `allow`, `deny`) and the edge-wide `[limits]` defaults ([`EdgeLimits`]).
//!
//! Both deserialize with unknown keys refused, so `{"alow": [...]}` is an error naming `alow`
//! rather than a route that silently admits everyone.

use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::net::{AccessRules, Network};
use crate::number::{BodyLimit, Bounded, Burst, Rate, RatePolicy};

/// A route's own limits. Each unset key falls back to the edge's `[limits]` default
/// ([`RouteLimits::resolve`]).
///
/// `burst` needs a `rate` next to it (a bucket size without a refill rate means nothing), and
/// `rate = 0` turns rate limiting off for the route (then `burst` may not be set).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RouteLimitsFields", into = "RouteLimitsFields")]
pub struct RouteLimits {
    rate: Option<Rate>,
    burst: Option<Burst>,
    /// This route's request body limit (0: unlimited here); `None`: the edge's default.
    pub max_body_bytes: Option<BodyLimit>,
    /// Who may use the route.
    pub access: AccessRules,
}

/// The keys of a route's limits as written (JSON object, TOML keys of a `[[routes]]` table).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteLimitsFields {
    /// Requests per second per client key (0: no rate limit on this route).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Requests a client may send at once; needs `rate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<Burst>,
    /// Largest request body in bytes (0: unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<BodyLimit>,
    /// Client networks allowed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Network>,
    /// Client networks denied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Network>,
}

/// The rate/burst pair rule shared by a route's limits and the `[limits]` table.
fn rate_pair(rate: Option<Rate>, burst: Option<Burst>) -> Result<(), ModelError> {
    match (rate, burst) {
        (None, Some(_)) => Err(ModelError::new(
            "burst",
            "set without a rate: add `rate` (requests per second) next to it",
        )),
        (Some(rate), Some(_)) if rate.is_off() => Err(ModelError::new(
            "burst",
            "has no effect with `rate = 0` (no rate limit): remove it or set a rate",
        )),
        _ => Ok(()),
    }
}

impl TryFrom<RouteLimitsFields> for RouteLimits {
    type Error = ModelError;

    fn try_from(fields: RouteLimitsFields) -> Result<Self, ModelError> {
        rate_pair(fields.rate, fields.burst)?;
        Ok(Self {
            rate: fields.rate,
            burst: fields.burst,
            max_body_bytes: fields.max_body_bytes,
            access: AccessRules {
                allow: fields.allow,
                deny: fields.deny,
            },
        })
    }
}

impl From<RouteLimits> for RouteLimitsFields {
    fn from(limits: RouteLimits) -> Self {
        Self {
            rate: limits.rate,
            burst: limits.burst,
            max_body_bytes: limits.max_body_bytes,
            allow: limits.access.allow,
            deny: limits.access.deny,
        }
    }
}

impl RouteLimits {
    /// Limits from their parts; `burst` needs `rate` (and a non-zero one).
    pub fn new(
        rate: Option<Rate>,
        burst: Option<Burst>,
        max_body_bytes: Option<BodyLimit>,
        access: AccessRules,
    ) -> Result<Self, ModelError> {
        Self::try_from(RouteLimitsFields {
            rate,
            burst,
            max_body_bytes,
            allow: access.allow,
            deny: access.deny,
        })
    }

    /// The route's own rate (`Some(0)`: none on this route), `None` to use the default.
    pub fn rate(&self) -> Option<Rate> {
        self.rate
    }

    /// The route's own burst.
    pub fn burst(&self) -> Option<Burst> {
        self.burst
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// The policy this route enforces on an edge whose defaults are `defaults`: its own rate
    /// (with its burst, or one second's worth) or the default rate; its own body limit or the
    /// default; its own allow/deny lists.
    pub fn resolve(&self, defaults: &EdgeLimits) -> RoutePolicy {
        let rate = match self.rate {
            Some(rate) if rate.is_off() => None,
            Some(rate) => Some(RatePolicy {
                per_second: rate.get(),
                burst: self.burst.unwrap_or_else(|| Burst::for_rate(rate)).get(),
            }),
            None => defaults.rate,
        };
        let max_body_bytes = self
            .max_body_bytes
            .unwrap_or(defaults.max_body_bytes)
            .bytes();
        RoutePolicy {
            rate,
            max_body_bytes,
            access: self.access.clone(),
        }
    }
}

/// What one HTTP route admits once its limits are resolved against the edge's defaults.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoutePolicy {
    /// Request rate per client key; `None`: no rate limit.
    pub rate: Option<RatePolicy>,
    /// Largest request body in bytes (413 above); `None`: unlimited.
    pub max_body_bytes: Option<u64>,
    /// Who may use the route (403 otherwise).
    pub access: AccessRules,
}

/// Client key prefix for IPv4 addresses (rate and connection limits): one address.
pub const DEFAULT_IPV4_PREFIX: u64 = 32;
/// Client key prefix for IPv6 addresses: one /64, what a single host usually gets.
pub const DEFAULT_IPV6_PREFIX: u64 = 64;
/// Most client keys the request rate limiters track at once (all routes together).
pub const DEFAULT_MAX_TRACKED_CLIENTS: u64 = 100_000;
/// Concurrent connections per client key, all listeners together.
pub const DEFAULT_CONNECTIONS_PER_CLIENT: u64 = 256;
/// Concurrent client connections, all listeners together.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 16_384;
/// Most header fields in a request (hyper's own default).
pub const DEFAULT_MAX_HEADERS: u64 = 100;
/// How long a keep-alive connection may have no request in flight (seconds).
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
/// HTTP/2 streams a client may have open at once.
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u64 = 100;
/// HTTP/2 streams reset by the client before the edge accepted them, before GOAWAY.
pub const DEFAULT_H2_MAX_PENDING_RESET_STREAMS: u64 = 20;
/// HTTP/2 streams the edge may reset because of client protocol errors, before GOAWAY.
pub const DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS: u64 = 1024;
/// Seconds between HTTP/2 keep-alive PINGs (a client that does not answer is disconnected).
pub const DEFAULT_H2_KEEPALIVE_INTERVAL_SECS: u64 = 30;
/// Seconds a response may wait on a client that takes nothing (Nginx's `send_timeout`).
pub const DEFAULT_SEND_TIMEOUT_SECS: u64 = 60;
/// Bytes per second a client must take over each `send_timeout` of waiting on it.
pub const DEFAULT_SEND_MIN_RATE: u64 = 500;
/// Seconds a request body may wait on a client that sends nothing (Nginx's
/// `client_body_timeout`).
pub const DEFAULT_CLIENT_BODY_TIMEOUT_SECS: u64 = 60;
/// Bytes per second a request body must average over each `client_body_timeout` of waiting
/// (Apache mod_reqtimeout's `MinRate` default).
pub const DEFAULT_CLIENT_BODY_MIN_RATE: u64 = 500;
/// Seconds the edge goes on reading (and discarding) what a client still sends after the edge
/// answered without reading its whole request body, before it closes (Nginx's `lingering_time`).
pub const DEFAULT_LINGERING_TIME_SECS: u64 = 30;
/// Seconds of silence from such a client after which the edge closes at once (Nginx's
/// `lingering_timeout`).
pub const DEFAULT_LINGERING_TIMEOUT_SECS: u64 = 5;

/// An IPv4 client key prefix length.
pub type Ipv4Prefix = Bounded<0, 32>;
/// An IPv6 client key prefix length.
pub type Ipv6Prefix = Bounded<0, 128>;
/// How many client keys the rate limiters may track.
pub type TrackedClients = Bounded<16, 100_000_000>;
/// A connection cap; 0: no cap.
pub type ConnectionCap = Bounded<0, 100_000_000>;
/// Header fields per request.
pub type HeaderCount = Bounded<8, 10_000>;
/// A timeout in whole seconds, at least one, at most a day.
pub type TimeoutSecs = Bounded<1, 86_400>;
/// An interval in seconds, 0 = off, at most a day.
pub type IntervalSecs = Bounded<0, 86_400>;
/// HTTP/2 concurrent streams per connection.
pub type StreamCount = Bounded<1, 1_000_000>;
/// A minimum transfer rate in bytes per second, 0 = none, at most 1 GiB/s.
pub type MinRate = Bounded<0, 1_073_741_824>;

/// The edge's `[limits]`: defaults for every route and the bounds of each client connection.
/// Values are resolved (defaults filled in), so the same limits written in TOML and sent over
/// gRPC compare equal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "EdgeLimitsFields", into = "EdgeLimitsFields")]
pub struct EdgeLimits {
    /// The default request rate policy of every route; `None`: no rate limit.
    pub rate: Option<RatePolicy>,
    /// Client keys: IPv4 addresses masked to this prefix.
    pub ipv4_prefix: Ipv4Prefix,
    /// Client keys: IPv6 addresses masked to this prefix.
    pub ipv6_prefix: Ipv6Prefix,
    /// Most client keys the rate limiters track (new clients beyond share an overflow bucket).
    pub max_tracked_clients: TrackedClients,
    /// Concurrent connections per client key (0: no cap).
    pub connections_per_client: ConnectionCap,
    /// Concurrent connections in total (0: no cap).
    pub max_connections: ConnectionCap,
    /// Most header fields per request (431 above).
    pub max_headers: HeaderCount,
    /// The default request body limit of every route.
    pub max_body_bytes: BodyLimit,
    /// How long a client connection may have no request in flight before it is closed.
    pub idle_timeout: TimeoutSecs,
    /// HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: StreamCount,
    /// HTTP/2 client resets of not-yet-accepted streams tolerated before GOAWAY.
    pub h2_max_pending_reset_streams: StreamCount,
    /// HTTP/2 streams reset for client errors tolerated before GOAWAY.
    pub h2_max_local_error_reset_streams: StreamCount,
    /// Seconds between HTTP/2 keep-alive PINGs (0: off).
    pub h2_keepalive_interval: IntervalSecs,
    /// How long a response may wait on a client that takes nothing before it is reset.
    pub send_timeout: TimeoutSecs,
    /// Bytes per second a client must take over each `send_timeout` of waiting (0: none).
    pub send_min_rate: MinRate,
    /// How long a request body may wait on a client that sends nothing (408).
    pub client_body_timeout: TimeoutSecs,
    /// Bytes per second a request body must average over each `client_body_timeout` of
    /// waiting (0: none).
    pub client_body_min_rate: MinRate,
    /// How long, at most, the edge reads and discards the rest of a request body it answered
    /// without reading, before closing (so the client reads the answer instead of a reset).
    pub lingering_time: TimeoutSecs,
    /// Silence from the client that ends that lingering at once.
    pub lingering_timeout: TimeoutSecs,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            rate: None,
            ipv4_prefix: Bounded::saturating(DEFAULT_IPV4_PREFIX),
            ipv6_prefix: Bounded::saturating(DEFAULT_IPV6_PREFIX),
            max_tracked_clients: Bounded::saturating(DEFAULT_MAX_TRACKED_CLIENTS),
            connections_per_client: Bounded::saturating(DEFAULT_CONNECTIONS_PER_CLIENT),
            max_connections: Bounded::saturating(DEFAULT_MAX_CONNECTIONS),
            max_headers: Bounded::saturating(DEFAULT_MAX_HEADERS),
            max_body_bytes: BodyLimit::UNLIMITED,
            idle_timeout: Bounded::saturating(DEFAULT_IDLE_TIMEOUT_SECS),
            h2_max_concurrent_streams: Bounded::saturating(DEFAULT_H2_MAX_CONCURRENT_STREAMS),
            h2_max_pending_reset_streams: Bounded::saturating(DEFAULT_H2_MAX_PENDING_RESET_STREAMS),
            h2_max_local_error_reset_streams: Bounded::saturating(
                DEFAULT_H2_MAX_LOCAL_ERROR_RESET_STREAMS,
            ),
            h2_keepalive_interval: Bounded::saturating(DEFAULT_H2_KEEPALIVE_INTERVAL_SECS),
            send_timeout: Bounded::saturating(DEFAULT_SEND_TIMEOUT_SECS),
            send_min_rate: Bounded::saturating(DEFAULT_SEND_MIN_RATE),
            client_body_timeout: Bounded::saturating(DEFAULT_CLIENT_BODY_TIMEOUT_SECS),
            client_body_min_rate: Bounded::saturating(DEFAULT_CLIENT_BODY_MIN_RATE),
            lingering_time: Bounded::saturating(DEFAULT_LINGERING_TIME_SECS),
            lingering_timeout: Bounded::saturating(DEFAULT_LINGERING_TIMEOUT_SECS),
        }
    }
}

/// The keys of `[limits]` as written; unset keys take their defaults.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct EdgeLimitsFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<Burst>,
    pub ipv4_prefix: Option<Ipv4Prefix>,
    pub ipv6_prefix: Option<Ipv6Prefix>,
    pub max_tracked_clients: Option<TrackedClients>,
    pub connections_per_client: Option<ConnectionCap>,
    pub max_connections: Option<ConnectionCap>,
    pub max_headers: Option<HeaderCount>,
    pub max_body_bytes: Option<BodyLimit>,
    pub idle_timeout: Option<TimeoutSecs>,
    pub h2_max_concurrent_streams: Option<StreamCount>,
    pub h2_max_pending_reset_streams: Option<StreamCount>,
    pub h2_max_local_error_reset_streams: Option<StreamCount>,
    pub h2_keepalive_interval: Option<IntervalSecs>,
    pub send_timeout: Option<TimeoutSecs>,
    pub send_min_rate: Option<MinRate>,
    pub client_body_timeout: Option<TimeoutSecs>,
    pub client_body_min_rate: Option<MinRate>,
    pub lingering_time: Option<TimeoutSecs>,
    pub lingering_timeout: Option<TimeoutSecs>,
}

impl TryFrom<EdgeLimitsFields> for EdgeLimits {
    type Error = ModelError;

    fn try_from(f: EdgeLimitsFields) -> Result<Self, ModelError> {
        rate_pair(f.rate, f.burst)?;
        let d = EdgeLimits::default();
        let rate = f.rate.filter(|rate| !rate.is_off()).map(|rate| RatePolicy {
            per_second: rate.get(),
            burst: f.burst.unwrap_or_else(|| Burst::for_rate(rate)).get(),
        });
        Ok(Self {
            rate,
            ipv4_prefix: f.ipv4_prefix.unwrap_or(d.ipv4_prefix),
            ipv6_prefix: f.ipv6_prefix.unwrap_or(d.ipv6_prefix),
            max_tracked_clients: f.max_tracked_clients.unwrap_or(d.max_tracked_clients),
            connections_per_client: f.connections_per_client.unwrap_or(d.connections_per_client),
            max_connections: f.max_connections.unwrap_or(d.max_connections),
            max_headers: f.max_headers.unwrap_or(d.max_headers),
            max_body_bytes: f.max_body_bytes.unwrap_or(d.max_body_bytes),
            idle_timeout: f.idle_timeout.unwrap_or(d.idle_timeout),
            h2_max_concurrent_streams: f
                .h2_max_concurrent_streams
                .unwrap_or(d.h2_max_concurrent_streams),
            h2_max_pending_reset_streams: f
                .h2_max_pending_reset_streams
                .unwrap_or(d.h2_max_pending_reset_streams),
            h2_max_local_error_reset_streams: f
                .h2_max_local_error_reset_streams
                .unwrap_or(d.h2_max_local_error_reset_streams),
            h2_keepalive_interval: f.h2_keepalive_interval.unwrap_or(d.h2_keepalive_interval),
            send_timeout: f.send_timeout.unwrap_or(d.send_timeout),
            send_min_rate: f.send_min_rate.unwrap_or(d.send_min_rate),
            client_body_timeout: f.client_body_timeout.unwrap_or(d.client_body_timeout),
            client_body_min_rate: f.client_body_min_rate.unwrap_or(d.client_body_min_rate),
            lingering_time: f.lingering_time.unwrap_or(d.lingering_time),
            lingering_timeout: f.lingering_timeout.unwrap_or(d.lingering_timeout),
        })
    }
}

impl From<EdgeLimits> for EdgeLimitsFields {
    fn from(l: EdgeLimits) -> Self {
        Self {
            rate: l.rate.and_then(|r| Rate::new(r.per_second).ok()),
            burst: l.rate.and_then(|r| Burst::new(r.burst).ok()),
            ipv4_prefix: Some(l.ipv4_prefix),
            ipv6_prefix: Some(l.ipv6_prefix),
            max_tracked_clients: Some(l.max_tracked_clients),
            connections_per_client: Some(l.connections_per_client),
            max_connections: Some(l.max_connections),
            max_headers: Some(l.max_headers),
            max_body_bytes: Some(l.max_body_bytes),
            idle_timeout: Some(l.idle_timeout),
            h2_max_concurrent_streams: Some(l.h2_max_concurrent_streams),
            h2_max_pending_reset_streams: Some(l.h2_max_pending_reset_streams),
            h2_max_local_error_reset_streams: Some(l.h2_max_local_error_reset_streams),
            h2_keepalive_interval: Some(l.h2_keepalive_interval),
            send_timeout: Some(l.send_timeout),
            send_min_rate: Some(l.send_min_rate),
            client_body_timeout: Some(l.client_body_timeout),
            client_body_min_rate: Some(l.client_body_min_rate),
            lingering_time: Some(l.lingering_time),
            lingering_timeout: Some(l.lingering_timeout),
        }
    }
}

impl EdgeLimits {
    /// The policy of a route that sets nothing itself.
    pub fn default_route_policy(&self) -> RoutePolicy {
        RouteLimits::default().resolve(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serde_util::{from_json, from_toml};

    #[test]
    fn route_limits_from_json_refuse_typos_and_bad_values() {
        let limits: RouteLimits =
            from_json(r#"{"rate": 10, "burst": 20, "allow": ["10.0.0.0/8"]}"#).unwrap();
        assert_eq!(limits.rate().map(Rate::get), Some(10.0));
        assert_eq!(limits.access.allow[0].to_string(), "10.0.0.0/8");
        for (json, field, says) in [
            (
                r#"{"alow": ["10.0.0.0/8"]}"#,
                "alow",
                "unknown field `alow`",
            ),
            (r#"{"rate": "fast"}"#, "rate", "requests per second"),
            (r#"{"rate": -1}"#, "rate", "-1 is not a rate"),
            (
                r#"{"allow": ["10.0.0.0/8", "x"]}"#,
                "allow[1]",
                "not a network",
            ),
            (r#"{"max_body_bytes": -5}"#, "max_body_bytes", ""),
            (r#"{"burst": 3}"#, "", "burst: set without a rate"),
            (r#"{"rate": 0, "burst": 3}"#, "", "no effect"),
        ] {
            let error = from_json::<RouteLimits>(json).unwrap_err();
            assert_eq!(error.field, field, "{json}: {error}");
            assert!(error.message.contains(says), "{json}: {error}");
        }
    }

    #[test]
    fn route_limits_resolve_against_defaults() {
        let defaults: EdgeLimits = from_toml("rate = 10.0\nmax_body_bytes = 4096").unwrap();
        let parse = |json: &str| from_json::<RouteLimits>(json).unwrap().resolve(&defaults);
        let inherited = parse("{}");
        assert_eq!(
            inherited.rate,
            Some(RatePolicy {
                per_second: 10.0,
                burst: 10
            })
        );
        assert_eq!(inherited.max_body_bytes, Some(4096));
        let own = parse(r#"{"rate": 2.5, "max_body_bytes": 0}"#);
        assert_eq!(
            own.rate,
            Some(RatePolicy {
                per_second: 2.5,
                burst: 3
            })
        );
        assert_eq!(own.max_body_bytes, None, "0 is unlimited here");
        assert_eq!(parse(r#"{"rate": 0}"#).rate, None, "0 turns it off");
    }

    #[test]
    fn edge_limits_defaults_and_errors() {
        let limits: EdgeLimits = from_toml("").unwrap();
        assert_eq!(limits, EdgeLimits::default());
        assert_eq!(limits.connections_per_client.get(), 256);
        assert_eq!(limits.max_connections.get(), 16_384);
        assert_eq!(limits.max_tracked_clients.get(), 100_000);
        assert_eq!(limits.h2_keepalive_interval.get(), 30);
        assert_eq!(limits.send_timeout.get(), 60);
        assert_eq!(limits.send_min_rate.get(), 500);
        assert_eq!(limits.client_body_timeout.get(), 60);
        assert_eq!(limits.client_body_min_rate.get(), 500);
        assert_eq!(limits.lingering_time.get(), 30);
        assert_eq!(limits.lingering_timeout.get(), 5);
        let limits: EdgeLimits = from_toml("lingering_time = 2\nlingering_timeout = 1").unwrap();
        assert_eq!(limits.lingering_time.get(), 2);
        assert_eq!(limits.lingering_timeout.get(), 1);
        let limits: EdgeLimits = from_toml(
            "send_timeout = 5\nsend_min_rate = 0\nclient_body_timeout = 7\nclient_body_min_rate = 1024",
        )
        .unwrap();
        assert_eq!(
            limits.send_timeout.as_secs(),
            std::time::Duration::from_secs(5)
        );
        assert_eq!(limits.send_min_rate.get(), 0);
        assert_eq!(limits.client_body_timeout.get(), 7);
        assert_eq!(limits.client_body_min_rate.get(), 1024);
        let limits: EdgeLimits = from_toml("rate = 10.0\nburst = 20").unwrap();
        assert_eq!(
            limits.rate,
            Some(RatePolicy {
                per_second: 10.0,
                burst: 20
            })
        );
        for (text, field, says) in [
            ("rate = -1.0", "rate", "not a rate"),
            ("rate = nan", "rate", "not a rate"),
            ("burst = 5", "", "set without a rate"),
            ("rate = 1.0\nburst = 0", "burst", "not a burst"),
            ("ipv4_prefix = 33", "ipv4_prefix", "0..=32"),
            ("ipv6_prefix = 129", "ipv6_prefix", "0..=128"),
            ("max_headers = 1", "max_headers", "8..=10000"),
            ("idle_timeout = 0", "idle_timeout", "1..=86400"),
            ("send_timeout = 0", "send_timeout", "1..=86400"),
            ("lingering_time = 0", "lingering_time", "1..=86400"),
            (
                "lingering_timeout = 86401",
                "lingering_timeout",
                "1..=86400",
            ),
            (
                "client_body_timeout = 100000",
                "client_body_timeout",
                "1..=86400",
            ),
            ("send_min_rate = -1", "send_min_rate", ""),
            (
                "client_body_min_rate = 10000000000",
                "client_body_min_rate",
                "0..=1073741824",
            ),
            (
                "h2_max_concurrent_streams = 0",
                "h2_max_concurrent_streams",
                "",
            ),
            ("bogus = 1", "bogus", "unknown field `bogus`"),
        ] {
            let error = from_toml::<EdgeLimits>(text).unwrap_err();
            assert_eq!(error.field, field, "{text}: {error}");
            assert!(error.message.contains(says), "{text}: {error}");
        }
    }

    #[test]
    fn edge_limits_round_trip_through_serde() {
        let limits: EdgeLimits = from_toml("rate = 2.5\nmax_connections = 0").unwrap();
        let json = serde_json::to_string(&limits).unwrap();
        assert_eq!(from_json::<EdgeLimits>(&json).unwrap(), limits);
    }
}
