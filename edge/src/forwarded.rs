//! The headers that tell an app who its client is: `Forwarded` (RFC 7239), `X-Forwarded-For`,
//! `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Real-IP`.
//!
//! A client can write these headers itself, so what it sends is never passed on as is:
//!
//! - **From any client** (the default): all five are removed and the edge writes its own:
//!   `X-Forwarded-For: <client>`, `X-Real-IP: <client>`, `X-Forwarded-Proto: https`,
//!   `X-Forwarded-Host: <host>` and `Forwarded: for=<client>;host=<host>;proto=https`.
//! - **From a trusted proxy** (the client's address is in `[edge] trusted_proxies`, e.g. a load
//!   balancer in front of the edge), as Nginx's `real_ip` module with `real_ip_recursive on`
//!   and `proxy_add_x_forwarded_for` do: the edge appends the proxy's address to the
//!   `X-Forwarded-For` it received and its own element to `Forwarded`, keeps the proxy's
//!   `X-Forwarded-Proto` and `X-Forwarded-Host` (setting them when absent), and writes as
//!   `X-Real-IP` the client the chain names: walking `X-Forwarded-For` from the right, the first
//!   address that is not itself a trusted proxy (the leftmost if all are; the last trusted one
//!   if an entry is not an address). That address is also the one the route's allow/deny list,
//!   its rate limit and the access log see.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

static FORWARDED: HeaderName = http::header::FORWARDED;
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The proxies whose forwarding headers the edge believes (`[edge] trusted_proxies`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

impl TrustedProxies {
    /// The proxies in `networks` (the model's validated `[edge] trusted_proxies`).
    pub fn new(networks: &[kokoa_model::Network]) -> Self {
        Self {
            networks: networks.iter().map(|network| network.net()).collect(),
        }
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    /// Whether `ip` is a trusted proxy (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|net| net.contains(&ip))
    }

    /// The client a request from `peer` is for: `peer` itself unless it is trusted, else the
    /// address the `X-Forwarded-For` chain names (see the module docs).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.is_empty() || !self.contains(peer) {
            return peer;
        }
        let mut client = peer;
        let mut entries: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .collect();
        while let Some(entry) = entries.pop() {
            match parse_forwarded_address(entry) {
                Some(ip) => {
                    client = ip;
                    if !self.contains(ip) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, optionally with a port (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`).
fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip.parse().ok();
    }
    let (ip, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// Who the request came from, as [`rewrite`] needs it.
#[derive(Clone, Copy, Debug)]
pub struct Origin {
    /// The connection's peer address.
    pub peer: IpAddr,
    /// Whether the peer is a trusted proxy.
    pub trusted: bool,
    /// The client the request is for (`peer` unless trusted; see [`TrustedProxies::client`]).
    pub client: IpAddr,
}

/// Rewrites the forwarding headers of a request to `host` (see the module docs).
pub fn rewrite(headers: &mut HeaderMap, origin: Origin, host: &HeaderValue) {
    let peer = origin.peer.to_canonical();
    let peer_text = peer.to_string();
    let element = forwarded_element(peer, host);
    if origin.trusted {
        let forwarded_for = joined(headers, &X_FORWARDED_FOR, &peer_text);
        let forwarded = joined(headers, &FORWARDED, &element);
        headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
        headers.insert(FORWARDED.clone(), forwarded);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
        }
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        headers.insert(
            X_REAL_IP.clone(),
            address_value(origin.client.to_canonical()),
        );
    } else {
        let peer_value = address_value(peer);
        headers.insert(X_FORWARDED_FOR.clone(), peer_value.clone());
        headers.insert(X_REAL_IP.clone(), peer_value);
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        headers.insert(
            FORWARDED.clone(),
            HeaderValue::from_str(&element).unwrap_or(HeaderValue::from_static("proto=https")),
        );
    }
}

fn address_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Every value of `name` joined with ", ", then `last`.
fn joined(headers: &HeaderMap, name: &HeaderName, last: &str) -> HeaderValue {
    let mut text = String::new();
    for value in headers.get_all(name) {
        let Ok(value) = value.to_str() else { continue };
        let value = value.trim();
        if !value.is_empty() {
            text.push_str(value);
            text.push_str(", ");
        }
    }
    text.push_str(last);
    HeaderValue::from_str(&text).unwrap_or_else(|_| {
        HeaderValue::from_str(last).unwrap_or(HeaderValue::from_static("unknown"))
    })
}

/// `for=<peer>;host=<host>;proto=https`: IPv6 addresses and hosts with a port are quoted
/// (RFC 7239 section 6).
fn forwarded_element(peer: IpAddr, host: &HeaderValue) -> String {
    let mut element = String::with_capacity(64);
    match peer {
        IpAddr::V4(v4) => {
            let _ = write!(element, "for={v4}");
        }
        IpAddr::V6(v6) => {
            let _ = write!(element, "for=\"[{v6}]\"");
        }
    }
    if let Ok(host) = host.to_str() {
        let token = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        if token {
            let _ = write!(element, ";host={host}");
        } else if !host.bytes().any(|b| b == b'"' || b == b'\\') {
            let _ = write!(element, ";host=\"{host}\"");
        }
    }
    element.push_str(";proto=https");
    element
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in list {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        headers
    }

    fn trusted(list: &[&str]) -> TrustedProxies {
        let networks: Vec<kokoa_model::Network> = list
            .iter()
            .map(|entry| kokoa_model::Network::parse(entry).unwrap())
            .collect();
        TrustedProxies::new(&networks)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_client_s_headers_are_replaced() {
        let mut headers = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.test"),
            ("x-real-ip", "10.0.0.1"),
            ("forwarded", "for=10.0.0.1"),
        ]);
        let peer = ip("203.0.113.9");
        let proxies = trusted(&["10.0.0.0/8"]);
        let origin = Origin {
            peer,
            trusted: proxies.contains(peer),
            client: proxies.client(peer, &headers),
        };
        assert_eq!(origin.client, peer);
        rewrite(
            &mut headers,
            origin,
            &HeaderValue::from_static("app.example.com"),
        );
        assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(headers["x-forwarded-for"], "203.0.113.9");
        assert_eq!(headers["x-real-ip"], "203.0.113.9");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "app.example.com");
        assert_eq!(headers.get_all("forwarded").iter().count(), 1);
        assert_eq!(
            headers["forwarded"],
            "for=203.0.113.9;host=app.example.com;proto=https"
        );
    }

    #[test]
    fn a_trusted_proxy_s_chain_is_extended() {
        let proxies = trusted(&["10.0.0.0/8", "192.0.2.7"]);
        let mut headers = headers(&[
            ("x-forwarded-for", "198.51.100.1, 203.0.113.5"),
            ("x-forwarded-for", "192.0.2.7"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "for=198.51.100.1"),
        ]);
        let peer = ip("10.1.2.3");
        let client = proxies.client(peer, &headers);
        // 192.0.2.7 is trusted, 203.0.113.5 is not: that is the client.
        assert_eq!(client, ip("203.0.113.5"));
        rewrite(
            &mut headers,
            Origin {
                peer,
                trusted: true,
                client,
            },
            &HeaderValue::from_static("app.example.com:8443"),
        );
        assert_eq!(
            headers["x-forwarded-for"],
            "198.51.100.1, 203.0.113.5, 192.0.2.7, 10.1.2.3"
        );
        assert_eq!(headers["x-real-ip"], "203.0.113.5");
        assert_eq!(headers["x-forwarded-proto"], "http", "the proxy's is kept");
        assert_eq!(headers["x-forwarded-host"], "app.example.com:8443");
        assert_eq!(
            headers["forwarded"],
            "for=198.51.100.1, for=10.1.2.3;host=\"app.example.com:8443\";proto=https"
        );
    }

    #[test]
    fn the_real_client_walks_the_chain_from_the_right() {
        let proxies = trusted(&["10.0.0.0/8", "2001:db8::/32"]);
        let peer = ip("10.0.0.1");
        let client = |list: &[(&'static str, &'static str)]| proxies.client(peer, &headers(list));
        assert_eq!(client(&[]), peer, "no header: the proxy itself");
        assert_eq!(
            client(&[("x-forwarded-for", "10.9.9.9, 10.8.8.8")]),
            ip("10.9.9.9"),
            "all trusted: the leftmost"
        );
        assert_eq!(
            client(&[("x-forwarded-for", "198.51.100.4, garbage, 10.8.8.8")]),
            ip("10.8.8.8"),
            "stops at an entry that is not an address"
        );
        assert_eq!(
            client(&[("x-forwarded-for", "[2001:db9::5]:443, 2001:db8::1")]),
            ip("2001:db9::5")
        );
        assert_eq!(
            client(&[("x-forwarded-for", "198.51.100.4:5555")]),
            ip("198.51.100.4")
        );
        // An untrusted peer's chain is ignored.
        assert_eq!(
            proxies.client(
                ip("198.51.100.9"),
                &headers(&[("x-forwarded-for", "10.0.0.5")])
            ),
            ip("198.51.100.9")
        );
    }

    #[test]
    fn ipv6_peers_are_quoted_in_forwarded() {
        let mut headers = HeaderMap::new();
        let peer = ip("2001:db8::7");
        rewrite(
            &mut headers,
            Origin {
                peer,
                trusted: false,
                client: peer,
            },
            &HeaderValue::from_static("a.test"),
        );
        assert_eq!(
            headers["forwarded"],
            "for=\"[2001:db8::7]\";host=a.test;proto=https"
        );
        assert_eq!(headers["x-forwarded-for"], "2001:db8::7");
        // IPv4-mapped peers are written as IPv4.
        let mut headers = HeaderMap::new();
        let mapped = ip("::ffff:192.0.2.1");
        rewrite(
            &mut headers,
            Origin {
                peer: mapped,
                trusted: false,
                client: mapped,
            },
            &HeaderValue::from_static("a.test"),
        );
        assert_eq!(headers["x-real-ip"], "192.0.2.1");
    }
}
