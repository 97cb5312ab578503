//! An origin's services ([`Service`], a `[[services]]` entry): a port inside the tunnel and the
//! local app it reaches.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, ObjectKind, ObjectRef};
use crate::name::Name;
use crate::net::Endpoint;
use crate::number::{Bounded, Port};
use crate::serde_util::string_serde;

/// What a service speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 or HTTP/2: reachable through HTTP routes (the default).
    #[default]
    Http,
    /// Raw TCP: reachable through TCP routes.
    Tcp,
}

impl Protocol {
    /// `http` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }

    /// Parses `http` or `tcp` (an empty string is `http`, the wire's default).
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        match text {
            "http" | "" => Ok(Protocol::Http),
            "tcp" => Ok(Protocol::Tcp),
            other => Err(ModelError::value(format!(
                "`{other}` is not a protocol: use \"http\" or \"tcp\""
            ))),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The HTTP path of a service's health check: starts with `/`, printable ASCII without
/// spaces, 1024 characters at most.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HealthPath(String);

impl HealthPath {
    /// Validates `path`.
    pub fn new(path: &str) -> Result<Self, ModelError> {
        if !path.starts_with('/') {
            return Err(ModelError::value(format!(
                "`{path}` must start with `/`, such as /healthz"
            )));
        }
        if path.len() > 1024 || !path.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ModelError::value(
                "must be at most 1024 printable ASCII characters without spaces",
            ));
        }
        Ok(Self(path.to_owned()))
    }

    /// The path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HealthPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

string_serde!(HealthPath, HealthPath::new);

/// A service an origin publishes into the tunnel. Only the ports of its services accept
/// streams; every other port is refused.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The name, unique per origin.
    pub name: Name,
    /// The port inside the tunnel (on the origin's address), unique per origin.
    pub port: Port,
    /// Where the app listens on the origin host (`127.0.0.1:8001`, `db.internal:5432`). A
    /// host name is resolved when a stream arrives; one that does not resolve makes this
    /// service unhealthy, never the origin's config invalid.
    pub local: Endpoint,
    /// What it speaks (default `http`).
    #[serde(default)]
    pub protocol: Protocol,
    /// The path the origin's probe requests (`GET`, expecting 2xx or 3xx); without one the
    /// probe is a TCP connect. See [`ServiceChecks`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<HealthPath>,
}

impl Service {
    /// The object errors about this service name.
    pub fn object(&self) -> ObjectRef {
        ObjectRef::new(ObjectKind::Service, self.name.as_str())
    }
}

/// Seconds between two probes of a service.
pub type CheckIntervalSecs = Bounded<1, 3600>;
/// Milliseconds a probe may take.
pub type CheckTimeoutMs = Bounded<10, 3_600_000>;
/// Probe results in a row that flip a service's health.
pub type CheckThreshold = Bounded<1, 100>;

/// Default time between two probes of a service (seconds): control probes edges as often.
pub const DEFAULT_CHECK_INTERVAL_SECS: u64 = 5;
/// Default probe timeout (milliseconds), as control's.
pub const DEFAULT_CHECK_TIMEOUT_MS: u64 = 2000;
/// Default failures in a row that make a service down, as control's: a service that dies is
/// down within about 15 s without traffic (sooner with traffic: a stream whose app refuses
/// counts as a failed probe).
pub const DEFAULT_UNHEALTHY_THRESHOLD: u64 = 3;
/// Default passes in a row that make a down service up again: one. Unlike an edge (whose return
/// re-adds DNS records that resolvers cache for a TTL), a service coming back only reopens its
/// tunnel port, which the next failure closes again at no cost; so one answer from the app is
/// enough to serve it again.
pub const DEFAULT_HEALTHY_THRESHOLD: u64 = 1;

/// How an origin probes each of its services (`[checks]` in `origin.toml`): every `interval`
/// an HTTP `GET` of the service's `health_path` (2xx or 3xx passes), or a TCP connect when it
/// has none, bounded by `timeout_ms`; `unhealthy_threshold` failures in a row make the service
/// down (its tunnel port refuses streams at once, which the edges answer with 503), and
/// `healthy_threshold` passes in a row make it up again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "ChecksFile", into = "ChecksFile")]
pub struct ServiceChecks {
    /// Time between two probes of each service.
    pub interval: CheckIntervalSecs,
    /// A probe that takes longer fails; shorter than `interval`.
    pub timeout_ms: CheckTimeoutMs,
    /// Failures in a row that make a service down.
    pub unhealthy_threshold: CheckThreshold,
    /// Passes in a row that make a down service up again.
    pub healthy_threshold: CheckThreshold,
}

impl Default for ServiceChecks {
    fn default() -> Self {
        ServiceChecks {
            interval: CheckIntervalSecs::saturating(DEFAULT_CHECK_INTERVAL_SECS),
            timeout_ms: CheckTimeoutMs::saturating(DEFAULT_CHECK_TIMEOUT_MS),
            unhealthy_threshold: CheckThreshold::saturating(DEFAULT_UNHEALTHY_THRESHOLD),
            healthy_threshold: CheckThreshold::saturating(DEFAULT_HEALTHY_THRESHOLD),
        }
    }
}

impl ServiceChecks {
    /// Checks the rule across fields: the timeout is shorter than the interval (so probes of
    /// one service never overlap).
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.timeout_ms.get() >= self.interval.get() * 1000 {
            return Err(ModelError::new(
                "timeout_ms",
                format!(
                    "{} ms is not shorter than the interval ({} s): probes of a service must not overlap",
                    self.timeout_ms,
                    self.interval
                ),
            ));
        }
        Ok(())
    }

    /// The interval as a duration.
    pub fn interval(&self) -> std::time::Duration {
        self.interval.as_secs()
    }

    /// The timeout as a duration.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms.get())
    }
}

/// The file form of [`ServiceChecks`]: every field optional (the default), unknown ones refused.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChecksFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval: Option<CheckIntervalSecs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<CheckTimeoutMs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unhealthy_threshold: Option<CheckThreshold>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    healthy_threshold: Option<CheckThreshold>,
}

impl TryFrom<ChecksFile> for ServiceChecks {
    type Error = String;

    fn try_from(file: ChecksFile) -> Result<Self, String> {
        let defaults = ServiceChecks::default();
        let checks = ServiceChecks {
            interval: file.interval.unwrap_or(defaults.interval),
            timeout_ms: file.timeout_ms.unwrap_or(defaults.timeout_ms),
            unhealthy_threshold: file
                .unhealthy_threshold
                .unwrap_or(defaults.unhealthy_threshold),
            healthy_threshold: file.healthy_threshold.unwrap_or(defaults.healthy_threshold),
        };
        checks.validate().map_err(|e| e.to_string())?;
        Ok(checks)
    }
}

impl From<ServiceChecks> for ChecksFile {
    fn from(checks: ServiceChecks) -> Self {
        ChecksFile {
            interval: Some(checks.interval),
            timeout_ms: Some(checks.timeout_ms),
            unhealthy_threshold: Some(checks.unhealthy_threshold),
            healthy_threshold: Some(checks.healthy_threshold),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serde_util::from_toml;

    #[test]
    fn services_parse_and_refuse() {
        let service: Service =
            from_toml("name = \"db\"\nport = 5432\nlocal = \"db.internal:5432\"").unwrap();
        assert_eq!(service.protocol, Protocol::Http);
        assert_eq!(service.local.to_string(), "db.internal:5432");
        for (text, field) in [
            ("name = \"db\"\nport = 0\nlocal = \"127.0.0.1:1\"", "port"),
            ("name = \"db\"\nport = 1\nlocal = \"8001\"", "local"),
            ("name = \"db\"\nport = 1\nlocal = \"0.0.0.0:80\"", "local"),
            (
                "name = \"db\"\nport = 1\nlocal_address = \"127.0.0.1:1\"",
                "local_address",
            ),
            ("name = \"d b\"\nport = 1\nlocal = \"127.0.0.1:1\"", "name"),
            (
                "name = \"db\"\nport = 1\nlocal = \"a:1\"\nprotocol = \"udp\"",
                "protocol",
            ),
            (
                "name = \"db\"\nport = 1\nlocal = \"a:1\"\nhealth_path = \"x\"",
                "health_path",
            ),
        ] {
            let error = from_toml::<Service>(text).unwrap_err();
            assert_eq!(error.field, field, "{text}: {error}");
        }
        assert!(HealthPath::new("/a b").is_err());
        assert!(HealthPath::new("/healthz").is_ok());
        assert_eq!(Protocol::parse("").unwrap(), Protocol::Http);
        assert!(Protocol::parse("udp").is_err());
    }

    #[test]
    fn checks_default_and_refuse() {
        let checks: ServiceChecks = from_toml("").unwrap();
        assert_eq!(checks, ServiceChecks::default());
        assert_eq!(checks.interval(), std::time::Duration::from_secs(5));
        assert_eq!(checks.timeout(), std::time::Duration::from_secs(2));
        assert_eq!(checks.unhealthy_threshold.get(), 3);
        let checks: ServiceChecks =
            from_toml("interval = 1\ntimeout_ms = 300\nhealthy_threshold = 2").unwrap();
        assert_eq!(checks.interval.get(), 1);
        assert_eq!(checks.healthy_threshold.get(), 2);
        for (text, field) in [
            ("interval = 0", "interval"),
            ("timeout_ms = 5", "timeout_ms"),
            ("unhealthy_threshold = 0", "unhealthy_threshold"),
            ("healthy_threshold = 101", "healthy_threshold"),
            ("intervall = 3", "intervall"),
        ] {
            let error = from_toml::<ServiceChecks>(text).unwrap_err();
            assert_eq!(error.field, field, "{text}: {error}");
        }
        // Across fields: the timeout must be shorter than the interval.
        let error = from_toml::<ServiceChecks>("interval = 1\ntimeout_ms = 1000").unwrap_err();
        assert!(
            error.to_string().contains("not shorter than the interval"),
            "{error}"
        );
    }
}
