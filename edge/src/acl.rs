//! IP allow/deny lists per route: who may use a route at all, checked before rate limits and
//! before anything is sent upstream (HTTP routes answer 403; raw TCP routes close the
//! connection right after `accept()`).
//!
//! Rules: a client matching any `deny` network is refused (deny wins); otherwise, if an `allow`
//! list is set, only clients matching one of its networks pass; with neither list, everyone
//! passes. IPv4-mapped IPv6 client addresses (`::ffff:192.0.2.1`, what a dual-stack listener
//! reports) are matched as the IPv4 address they carry.

use std::net::IpAddr;

use ipnet::IpNet;

/// An allow/deny list. The default allows everyone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acl {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl Acl {
    /// A list from `allow` (empty: everyone not denied) and `deny` networks.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        Self {
            allow: allow.into_iter().map(|net| net.trunc()).collect(),
            deny: deny.into_iter().map(|net| net.trunc()).collect(),
        }
    }

    /// Whether the list lets everyone through (nothing to check on the request path).
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// The networks allowed (empty: all that are not denied).
    pub fn allow(&self) -> &[IpNet] {
        &self.allow
    }

    /// The networks denied.
    pub fn deny(&self) -> &[IpNet] {
        &self.deny
    }

    /// Whether `client` may use the route: not in any denied network and, when an allow list
    /// is set, in one of the allowed networks.
    pub fn permits(&self, client: IpAddr) -> bool {
        if self.is_open() {
            return true;
        }
        let client = client.to_canonical();
        if self.deny.iter().any(|net| net.contains(&client)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&client))
    }
}

impl From<&kokoa_model::AccessRules> for Acl {
    fn from(rules: &kokoa_model::AccessRules) -> Self {
        let nets = |list: &[kokoa_model::Network]| list.iter().map(|n| n.net()).collect();
        Self::new(nets(&rules.allow), nets(&rules.deny))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter()
            .map(|n| kokoa_model::Network::parse(n).unwrap().net())
            .collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn empty_list_allows_everyone() {
        let acl = Acl::default();
        assert!(acl.is_open());
        assert!(acl.permits(ip("203.0.113.9")));
        assert!(acl.permits(ip("2001:db8::1")));
    }

    #[test]
    fn deny_wins_over_allow() {
        let acl = Acl::new(
            nets(&["10.0.0.0/8", "127.0.0.0/8"]),
            nets(&["127.0.0.3", "10.1.0.0/16"]),
        );
        assert!(acl.permits(ip("127.0.0.2")));
        assert!(acl.permits(ip("10.2.3.4")));
        assert!(!acl.permits(ip("127.0.0.3")));
        assert!(!acl.permits(ip("10.1.2.3")));
        assert!(!acl.permits(ip("192.0.2.1")), "not in the allow list");
        assert!(
            !acl.permits(ip("2001:db8::1")),
            "IPv6 not in the allow list"
        );
    }

    #[test]
    fn deny_only_lets_the_rest_through() {
        let acl = Acl::new(vec![], nets(&["2001:db8::/32", "198.51.100.0/24"]));
        assert!(!acl.permits(ip("2001:db8:1::5")));
        assert!(!acl.permits(ip("198.51.100.77")));
        assert!(acl.permits(ip("2001:db9::1")));
        assert!(acl.permits(ip("198.51.101.1")));
    }

    #[test]
    fn mapped_ipv4_matches_ipv4_networks() {
        let acl = Acl::new(nets(&["192.0.2.0/24"]), vec![]);
        assert!(acl.permits(ip("::ffff:192.0.2.10")));
        assert!(!acl.permits(ip("::ffff:192.0.3.10")));
    }

    #[test]
    fn built_from_the_models_rules() {
        let rules =
            kokoa_model::AccessRules::parse(&["10.1.2.3/8".into()], &["10.9.0.0/16".into()])
                .unwrap();
        let acl = Acl::from(&rules);
        assert_eq!(acl.allow()[0].to_string(), "10.0.0.0/8");
        assert!(acl.permits(ip("10.1.1.1")));
        assert!(!acl.permits(ip("10.9.1.1")));
    }
}
