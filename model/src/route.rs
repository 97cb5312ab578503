//! Routes on an edge: HTTP routes by host name ([`HttpRoute`]) and raw TCP routes by port
//! ([`TcpRoute`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, ObjectKind, ObjectRef};
use crate::limits::{RouteLimits, RouteLimitsFields};
use crate::name::{HostPattern, Name};
use crate::net::{AccessRules, Network, TcpListen};
use crate::number::{BodyLimit, Burst, Port, Rate};
use crate::serde_util::string_serde;

/// An HTTP route: host names to an origin's service port, with the route's own limits.
///
/// In `edge.toml` the limits are keys of the `[[routes]]` table itself (`rate`, `burst`,
/// `max_body_bytes`, `allow`, `deny`); on the wire and in control's API they are a `limits`
/// object ([`RouteLimits`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "HttpRouteFields", into = "HttpRouteFields")]
pub struct HttpRoute {
    /// The primary host (exact or `*.` wildcard).
    pub host: HostPattern,
    /// Further names served by the same route.
    pub aliases: Vec<HostPattern>,
    /// The origin that owns the service.
    pub origin: Name,
    /// The service port inside the tunnel.
    pub port: Port,
    /// Rate, body limit and allow/deny lists of this route.
    pub limits: RouteLimits,
}

/// A `[[routes]]` table as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct HttpRouteFields {
    pub host: HostPattern,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<HostPattern>,
    pub origin: Name,
    pub port: Port,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<Burst>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<BodyLimit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Network>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Network>,
}

impl TryFrom<HttpRouteFields> for HttpRoute {
    type Error = ModelError;

    fn try_from(f: HttpRouteFields) -> Result<Self, ModelError> {
        let limits = RouteLimits::try_from(RouteLimitsFields {
            rate: f.rate,
            burst: f.burst,
            max_body_bytes: f.max_body_bytes,
            allow: f.allow,
            deny: f.deny,
        })?;
        Ok(Self {
            host: f.host,
            aliases: f.aliases,
            origin: f.origin,
            port: f.port,
            limits,
        })
    }
}

impl From<HttpRoute> for HttpRouteFields {
    fn from(route: HttpRoute) -> Self {
        let limits = RouteLimitsFields::from(route.limits);
        Self {
            host: route.host,
            aliases: route.aliases,
            origin: route.origin,
            port: route.port,
            rate: limits.rate,
            burst: limits.burst,
            max_body_bytes: limits.max_body_bytes,
            allow: limits.allow,
            deny: limits.deny,
        }
    }
}

impl HttpRoute {
    /// The object errors about this route name.
    pub fn object(&self) -> ObjectRef {
        ObjectRef::new(ObjectKind::Route, self.host.as_str())
    }

    /// The primary host and the aliases.
    pub fn names(&self) -> impl Iterator<Item = &HostPattern> {
        std::iter::once(&self.host).chain(&self.aliases)
    }
}

/// Whether a raw TCP route sends a PROXY protocol header to the app first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocol {
    /// Forward the client's bytes unchanged (the default).
    #[default]
    None,
    /// Send a PROXY protocol v2 header (the binary form) with the client's address first.
    V2,
}

impl ProxyProtocol {
    /// Parses `none` or `v2`.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        match text {
            "none" => Ok(Self::None),
            "v2" => Ok(Self::V2),
            other => Err(ModelError::value(format!(
                "`{other}` is not supported: use \"v2\" or \"none\" (version 1, the text form, is not produced)"
            ))),
        }
    }
}

impl fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::V2 => "v2",
        })
    }
}

/// Whether an HTTPS request's host must agree with the server name (SNI) its connection's TLS
/// handshake asked for (`[edge] sni_host_check`); a request that does not is answered `421
/// Misdirected Request`, which tells the client to retry on a connection of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SniHostCheck {
    /// Any routed host may be asked for on any connection (the default).
    #[default]
    Off,
    /// The host must be one the edge serves with the same certificate as the SNI name: HTTP/2
    /// connection coalescing across the names of one certificate keeps working, domain
    /// fronting across certificates does not.
    Certificate,
    /// The host must be the SNI name itself (no coalescing; a client without SNI is refused).
    Exact,
}

impl SniHostCheck {
    /// Parses `off`, `certificate` or `exact`.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        match text {
            "off" => Ok(Self::Off),
            "certificate" => Ok(Self::Certificate),
            "exact" => Ok(Self::Exact),
            other => Err(ModelError::value(format!(
                "`{other}` is not one of \"off\", \"certificate\", \"exact\""
            ))),
        }
    }
}

impl fmt::Display for SniHostCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::Certificate => "certificate",
            Self::Exact => "exact",
        })
    }
}

string_serde!(SniHostCheck, SniHostCheck::parse);

/// A raw TCP route: a public port on the edge forwarded to an origin's service port as a byte
/// stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "TcpRouteFields", into = "TcpRouteFields")]
pub struct TcpRoute {
    /// Where the edge listens.
    pub listen: TcpListen,
    /// The origin that owns the service.
    pub origin: Name,
    /// The service port inside the tunnel.
    pub port: Port,
    /// Whether the app first gets a PROXY protocol header.
    pub proxy_protocol: ProxyProtocol,
    /// Who may connect (others are closed right after accept).
    pub access: AccessRules,
}

/// A `[[tcp_routes]]` table as written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct TcpRouteFields {
    pub listen: TcpListen,
    pub origin: Name,
    pub port: Port,
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<Network>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Network>,
}

impl TryFrom<TcpRouteFields> for TcpRoute {
    type Error = ModelError;

    fn try_from(f: TcpRouteFields) -> Result<Self, ModelError> {
        Ok(Self {
            listen: f.listen,
            origin: f.origin,
            port: f.port,
            proxy_protocol: f.proxy_protocol,
            access: AccessRules {
                allow: f.allow,
                deny: f.deny,
            },
        })
    }
}

impl From<TcpRoute> for TcpRouteFields {
    fn from(route: TcpRoute) -> Self {
        Self {
            listen: route.listen,
            origin: route.origin,
            port: route.port,
            proxy_protocol: route.proxy_protocol,
            allow: route.access.allow,
            deny: route.access.deny,
        }
    }
}

impl TcpRoute {
    /// The object errors about this route name (its listen port).
    pub fn object(&self) -> ObjectRef {
        ObjectRef::new(ObjectKind::TcpRoute, self.listen.port.to_string())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sni_host_check_parses_its_three_modes() {
        use super::SniHostCheck;
        for mode in [
            SniHostCheck::Off,
            SniHostCheck::Certificate,
            SniHostCheck::Exact,
        ] {
            assert_eq!(SniHostCheck::parse(&mode.to_string()).unwrap(), mode);
        }
        let error = crate::from_json::<SniHostCheck>("\"on\"").unwrap_err();
        assert!(error.message.contains("\"exact\""), "{error}");
    }

    use super::*;
    use crate::serde_util::from_toml;

    #[test]
    fn http_routes_in_file_form() {
        let route: HttpRoute = from_toml(
            "host = \"App.Example.com\"\naliases = [\"*.example.org\"]\norigin = \"home\"\nport = 8001\nrate = 5\nallow = [\"10.0.0.0/8\"]",
        )
        .unwrap();
        assert_eq!(route.host.as_str(), "app.example.com");
        assert_eq!(route.limits.rate().map(Rate::get), Some(5.0));
        assert_eq!(route.limits.access.allow.len(), 1);
        let back: HttpRoute = from_toml(&toml::to_string(&route).unwrap()).unwrap();
        assert_eq!(back, route);
        for (text, field) in [
            ("host = \"a_b.example\"\norigin = \"o\"\nport = 1", "host"),
            ("host = \"a.example\"\naliases = [\"ok.example\", \"*x\"]\norigin = \"o\"\nport = 1", "aliases[1]"),
            ("host = \"a.example\"\norigin = \"o\"\nport = 0", "port"),
            ("host = \"a.example\"\norigin = \"o\"\nport = 1\ndeny = [\"nope\"]", "deny[0]"),
            ("host = \"a.example\"\norigin = \"o\"\nport = 1\nalow = []", "alow"),
        ] {
            let error = from_toml::<HttpRoute>(text).unwrap_err();
            assert_eq!(error.field, field, "{text}: {error}");
        }
        let error =
            from_toml::<HttpRoute>("host = \"a.example\"\norigin = \"o\"\nport = 1\nburst = 3")
                .unwrap_err();
        assert!(
            error.message.contains("burst: set without a rate"),
            "{error}"
        );
    }

    #[test]
    fn tcp_routes_in_file_form() {
        let route: TcpRoute = from_toml(
            "listen = \"0.0.0.0:4001\"\norigin = \"home\"\nport = 4001\nproxy_protocol = \"v2\"\ndeny = [\"2001:db8::/32\"]",
        )
        .unwrap();
        assert_eq!(route.proxy_protocol, ProxyProtocol::V2);
        assert_eq!(route.object().key, "4001");
        let error = from_toml::<TcpRoute>(
            "listen = 4001\norigin = \"home\"\nport = 1\nproxy_protocol = \"v1\"",
        )
        .unwrap_err();
        assert_eq!(error.field, "proxy_protocol");
        assert!(ProxyProtocol::parse("v1").is_err());
    }
}
