//! An origin's services ([`Service`], a `[[services]]` entry): a port inside the tunnel and the
//! local app it reaches.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, ObjectKind, ObjectRef};
use crate::name::Name;
use crate::net::Endpoint;
use crate::number::Port;
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
    /// The path control's end-to-end health check requests through an edge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_path: Option<HealthPath>,
}

impl Service {
    /// The object errors about this service name.
    pub fn object(&self) -> ObjectRef {
        ObjectRef::new(ObjectKind::Service, self.name.as_str())
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
}
