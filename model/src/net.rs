//! Addresses: client networks for allow/deny lists ([`Network`], [`AccessRules`]), endpoints
//! written as `host:port` and resolved only when used ([`Endpoint`]), tunnel addresses
//! ([`TunnelIp`]) and the overlay range they come from ([`Overlay`]), and where a raw TCP route
//! listens ([`TcpListen`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ModelError;
use crate::name::HostName;
use crate::number::Port;
use crate::serde_util::string_serde;

/// A client network in an allow or deny list: a CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a
/// single address (taken as `/32` or `/128`). Host bits are cleared (`10.1.2.3/8` is
/// `10.0.0.0/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Network(IpNet);

impl Network {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        if let Ok(net) = text.parse::<IpNet>() {
            return Ok(Self(net.trunc()));
        }
        match text.parse::<IpAddr>() {
            Ok(ip) => Ok(Self(IpNet::from(ip))),
            Err(_) => Err(ModelError::value(format!(
                "`{text}` is not a network: write a CIDR such as 10.0.0.0/8 or 2001:db8::/32, or a single address"
            ))),
        }
    }

    /// The network.
    pub fn net(self) -> IpNet {
        self.0
    }
}

impl From<IpNet> for Network {
    fn from(net: IpNet) -> Self {
        Self(net.trunc())
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

string_serde!(Network, Network::parse);

/// Who may use a route: with `allow` set only clients in one of its networks, and never a
/// client in a `deny` network (deny wins). Both empty: everyone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AccessRules {
    /// Networks allowed; empty: every client that is not denied.
    pub allow: Vec<Network>,
    /// Networks refused.
    pub deny: Vec<Network>,
}

impl AccessRules {
    /// Parses both lists; errors name the entry (`allow[1]`).
    pub fn parse(allow: &[String], deny: &[String]) -> Result<Self, ModelError> {
        let list = |name: &str, texts: &[String]| {
            texts
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    Network::parse(text).map_err(|e| e.within(&format!("{name}[{i}]")))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            allow: list("allow", allow)?,
            deny: list("deny", deny)?,
        })
    }

    /// Whether everyone may pass.
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// The lists as text, for the wire.
    pub fn to_strings(&self) -> (Vec<String>, Vec<String>) {
        let text = |list: &[Network]| list.iter().map(ToString::to_string).collect();
        (text(&self.allow), text(&self.deny))
    }
}

/// Where something listens, as written: `ip:port`, or `host:port` resolved only when it is
/// used. A service's local address that does not resolve is that service's problem at the
/// moment a stream arrives, never a reason to refuse a whole config, so resolution is not part
/// of validation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// A literal address.
    Addr(SocketAddr),
    /// A host name and a port.
    Host {
        /// The host name.
        host: HostName,
        /// The port.
        port: Port,
    },
}

impl Endpoint {
    /// Parses `ip:port`, `[v6]:port` or `host:port`. The port must not be 0 and an address not
    /// unspecified (`0.0.0.0`), since nothing can connect there.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            if addr.port() == 0 || addr.ip().is_unspecified() {
                return Err(ModelError::value(format!(
                    "{addr} is not connectable: write the address something listens on, such as 127.0.0.1:8001"
                )));
            }
            return Ok(Self::Addr(addr));
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(ModelError::value(format!(
                "`{text}` has no port: write host:port or ip:port"
            )));
        };
        let port = port
            .parse::<i128>()
            .map_err(|_| {
                ModelError::value(format!("`{text}` has an invalid port: write host:port"))
            })
            .and_then(Port::new)
            .map_err(|_| ModelError::value(format!("`{text}` has an invalid port (1-65535)")))?;
        let host = HostName::new(host).map_err(|e| {
            ModelError::value(format!(
                "`{text}` is neither ip:port nor host:port with a valid host name ({})",
                e.message
            ))
        })?;
        Ok(Self::Host { host, port })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            Self::Addr(addr) => addr.port(),
            Self::Host { port, .. } => port.get(),
        }
    }

    /// The literal address, when it is one.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Addr(addr) => Some(*addr),
            Self::Host { .. } => None,
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Self::Addr(addr)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(addr) => addr.fmt(f),
            Self::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        Self::parse(s)
    }
}

string_serde!(Endpoint, Endpoint::parse);

/// An IPv4 address inside the tunnel (a node's netstack address): not unspecified, broadcast,
/// multicast or loopback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunnelIp(Ipv4Addr);

impl TunnelIp {
    /// Validates `ip`.
    pub fn new(ip: Ipv4Addr) -> Result<Self, ModelError> {
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
            return Err(ModelError::value(format!(
                "{ip} cannot be a tunnel address; use one from the overlay range, such as 10.100.1.1"
            )));
        }
        Ok(Self(ip))
    }

    /// Parses dotted-quad text.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let ip = text.parse::<Ipv4Addr>().map_err(|_| {
            ModelError::value(format!(
                "`{text}` is not an IPv4 address (such as 10.100.1.1)"
            ))
        })?;
        Self::new(ip)
    }

    /// The address.
    pub fn ip(self) -> Ipv4Addr {
        self.0
    }

    /// Whether `other` is in the same /24 (the design gives each origin one /24: `.1` is the
    /// origin, `.10`-`.254` its edges).
    pub fn same_subnet(self, other: TunnelIp) -> bool {
        self.0.octets()[..3] == other.0.octets()[..3]
    }
}

impl fmt::Display for TunnelIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

string_serde!(TunnelIp, TunnelIp::parse);

/// The overlay range tunnel addresses are taken from; each origin owns one /24 of it. Default
/// `10.100.0.0/16`; a prefix of /8 to /24.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Overlay(Ipv4Net);

/// The overlay range control allocates from, and nodes assume when none is configured.
pub const DEFAULT_OVERLAY: Overlay =
    Overlay(match Ipv4Net::new(Ipv4Addr::new(10, 100, 0, 0), 16) {
        Ok(net) => net,
        Err(_) => panic!("10.100.0.0/16 is a network"),
    });

impl Default for Overlay {
    fn default() -> Self {
        DEFAULT_OVERLAY
    }
}

impl Overlay {
    /// Parses a CIDR such as `10.100.0.0/16`.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let net = text.parse::<Ipv4Net>().map_err(|_| {
            ModelError::value(format!(
                "`{text}` is not an IPv4 CIDR such as 10.100.0.0/16"
            ))
        })?;
        if !(8..=24).contains(&net.prefix_len()) {
            return Err(ModelError::value(format!(
                "{net}: the overlay needs a prefix from /8 to /24 (each origin owns one /24 of it)"
            )));
        }
        Ok(Self(net.trunc()))
    }

    /// The range.
    pub fn net(self) -> Ipv4Net {
        self.0
    }

    /// Whether `ip` is inside the range.
    pub fn contains(self, ip: TunnelIp) -> bool {
        self.0.contains(&ip.ip())
    }
}

impl fmt::Display for Overlay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

string_serde!(Overlay, Overlay::parse);

/// Where a raw TCP route listens on the edge: a port, on the address given or (without one) on
/// the address of the edge's HTTPS listener. In a config file `listen = "0.0.0.0:4001"` or
/// `listen = 4001`; port 0 (a free port, for tests) only with an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpListen {
    /// The address; `None`: the edge's HTTPS listener address.
    pub ip: Option<IpAddr>,
    /// The port; 0 only with an explicit address.
    pub port: u16,
}

impl TcpListen {
    /// A port on the edge's public address.
    pub fn port(port: Port) -> Self {
        Self {
            ip: None,
            port: port.get(),
        }
    }

    /// The socket address, with `default_ip` (the HTTPS listener's) when none is set.
    pub fn addr(self, default_ip: IpAddr) -> SocketAddr {
        SocketAddr::new(self.ip.unwrap_or(default_ip), self.port)
    }

    /// Parses `ip:port`, or a bare port.
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Self {
                ip: Some(addr.ip()),
                port: addr.port(),
            });
        }
        let port = text.parse::<i128>().map_err(|_| {
            ModelError::value(format!(
                "`{text}` is not ip:port or a port: write such as 0.0.0.0:4001 or 4001"
            ))
        })?;
        Ok(Self::port(Port::new(port)?))
    }
}

impl fmt::Display for TcpListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            Some(ip) => SocketAddr::new(ip, self.port).fmt(f),
            None => self.port.fmt(f),
        }
    }
}

impl Serialize for TcpListen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.ip {
            Some(_) => s.collect_str(self),
            None => s.serialize_u16(self.port),
        }
    }
}

impl<'de> Deserialize<'de> for TcpListen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListenVisitor;
        impl Visitor<'_> for ListenVisitor {
            type Value = TcpListen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"ip:port\" or a port number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TcpListen, E> {
                TcpListen::parse(v).map_err(|e| E::custom(e.message))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TcpListen, E> {
                Port::new(v)
                    .map(TcpListen::port)
                    .map_err(|e| E::custom(e.message))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TcpListen, E> {
                Port::new(v)
                    .map(TcpListen::port)
                    .map_err(|e| E::custom(e.message))
            }
        }
        d.deserialize_any(ListenVisitor)
    }
}

/// Whether two listening addresses collide: the same port (not 0) on the same address, or on
/// addresses one of which is the unspecified address of the same family (`0.0.0.0:443` takes
/// port 443 on every IPv4 address; `[::]:443` on every address, dual-stack).
pub fn listeners_overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || b.port() == 0 || a.port() != b.port() {
        return false;
    }
    let (x, y) = (a.ip().to_canonical(), b.ip().to_canonical());
    if x == y {
        return true;
    }
    let wide = |ip: IpAddr, other: IpAddr| {
        ip.is_unspecified() && (ip.is_ipv6() || ip.is_ipv4() == other.is_ipv4())
    };
    wide(a.ip(), y) || wide(b.ip(), x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        assert_eq!(
            Network::parse("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            Network::parse("10.1.2.3").unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(Network::parse("::1").unwrap().to_string(), "::1/128");
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("example.com").is_err());
        assert!(Network::parse(" 10.0.0.1").is_err(), "no silent trimming");
        let rules = AccessRules::parse(&["10.0.0.0/8".into()], &["x".into()]).unwrap_err();
        assert_eq!(rules.field, "deny[0]");
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("[::1]:80").unwrap(),
            Endpoint::Addr("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            Endpoint::parse("DB.internal:5432").unwrap().to_string(),
            "db.internal:5432"
        );
        for (bad, says) in [
            ("host:99999", "invalid port"),
            ("host:0", "invalid port"),
            (":80", "valid host name"),
            ("a b:80", "valid host name"),
            ("a_b:80", "valid host name"),
            ("8001", "no port"),
            ("0.0.0.0:80", "not connectable"),
            ("127.0.0.1:0", "not connectable"),
        ] {
            let message = Endpoint::parse(bad).unwrap_err().message;
            assert!(message.contains(says), "{bad}: {message}");
        }
    }

    #[test]
    fn tunnel_addresses_and_overlay() {
        let a = TunnelIp::parse("10.100.1.1").unwrap();
        let b = TunnelIp::parse("10.100.1.10").unwrap();
        let c = TunnelIp::parse("10.100.2.10").unwrap();
        assert!(a.same_subnet(b) && !a.same_subnet(c));
        for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "127.0.0.1", "x"] {
            assert!(TunnelIp::parse(bad).is_err(), "{bad}");
        }
        assert!(DEFAULT_OVERLAY.contains(a));
        assert!(!DEFAULT_OVERLAY.contains(TunnelIp::parse("10.101.0.1").unwrap()));
        assert_eq!(
            Overlay::parse("10.200.7.0/16").unwrap().to_string(),
            "10.200.0.0/16"
        );
        assert!(Overlay::parse("10.0.0.0/25").is_err());
        assert!(Overlay::parse("10.0.0.0/4").is_err());
    }

    #[test]
    fn tcp_listen_forms() {
        #[derive(Debug, Deserialize)]
        struct Doc {
            listen: TcpListen,
        }
        let doc: Doc = toml::from_str("listen = \"127.0.0.1:0\"").unwrap();
        assert_eq!(doc.listen.ip, Some("127.0.0.1".parse().unwrap()));
        let doc: Doc = toml::from_str("listen = 4001").unwrap();
        assert_eq!(
            doc.listen,
            TcpListen {
                ip: None,
                port: 4001
            }
        );
        assert_eq!(
            doc.listen.addr("192.0.2.1".parse().unwrap()),
            "192.0.2.1:4001".parse().unwrap()
        );
        assert!(toml::from_str::<Doc>("listen = 0").is_err());
        assert!(toml::from_str::<Doc>("listen = \"nope\"").is_err());
    }

    #[test]
    fn overlapping_listeners() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(listeners_overlap(a("0.0.0.0:443"), a("127.0.0.1:443")));
        assert!(listeners_overlap(a("127.0.0.1:443"), a("0.0.0.0:443")));
        assert!(listeners_overlap(a("[::]:443"), a("127.0.0.1:443")));
        assert!(listeners_overlap(a("10.0.0.1:80"), a("10.0.0.1:80")));
        assert!(!listeners_overlap(a("10.0.0.1:80"), a("10.0.0.2:80")));
        assert!(!listeners_overlap(a("0.0.0.0:80"), a("0.0.0.0:81")));
        assert!(!listeners_overlap(a("127.0.0.1:0"), a("127.0.0.1:0")));
        assert!(!listeners_overlap(a("0.0.0.0:80"), a("[::1]:80")));
    }
}
