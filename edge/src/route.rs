//! The HTTP route table: host name -> (origin, service port).
//!
//! A [`RouteTable`] is an immutable snapshot built from the validated config; the proxy loads
//! the current one from an `ArcSwap` per request, so swapping in a new table never blocks or
//! disturbs requests in flight.
//!
//! Each route carries its [`Admission`] policy (allow/deny list, body limit, request rate
//! limiter), so the limiters are part of the same snapshot: a new table starts with fresh
//! limiter state, while requests still holding the old table finish against the old limiters.

use std::collections::HashMap;
use std::sync::Arc;

use kokoa_model::{EdgeLimits, HttpRoute};

use crate::acl::Acl;
use crate::limit::{ClientBudget, KeyMask, LogSampler, RatePolicy, RequestLimiter};

/// What one HTTP route admits: its limits resolved against the `[limits]` defaults
/// ([`kokoa_model::RouteLimits::resolve`]), with the allow/deny lists ready to check.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoutePolicy {
    /// Request rate per client key; `None`: no rate limit.
    pub rate: Option<RatePolicy>,
    /// Largest request body in bytes (413 above); `None`: unlimited.
    pub max_body_bytes: Option<u64>,
    /// Who may use the route (403 otherwise).
    pub acl: Acl,
}

impl From<kokoa_model::RoutePolicy> for RoutePolicy {
    fn from(policy: kokoa_model::RoutePolicy) -> Self {
        Self {
            rate: policy.rate,
            max_body_bytes: policy.max_body_bytes,
            acl: Acl::from(&policy.access),
        }
    }
}

/// Where requests for a host go.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// The route's primary host as configured (`app.example.com` or `*.example.com`).
    pub host: String,
    /// The origin's name.
    pub origin: String,
    /// The service port inside the tunnel.
    pub port: u16,
    /// Who and what the route admits.
    pub admission: Arc<Admission>,
}

/// A route's admission policy with its live rate limiter.
#[derive(Debug)]
pub struct Admission {
    /// The policy, resolved against the edge's `[limits]` defaults.
    pub policy: RoutePolicy,
    /// The request rate limiter, when the policy sets a rate.
    pub limiter: Option<RequestLimiter>,
    /// Rate of log lines about allow/deny refusals.
    pub acl_log: LogSampler,
    /// Rate of log lines about requests answered "service down".
    pub service_down_log: LogSampler,
}

impl PartialEq for Admission {
    fn eq(&self, other: &Self) -> bool {
        self.policy == other.policy
    }
}

impl Admission {
    fn new(policy: RoutePolicy, mask: KeyMask, budget: &Arc<ClientBudget>) -> Self {
        Self {
            limiter: policy
                .rate
                .map(|rate| RequestLimiter::new(rate, mask, budget.clone())),
            acl_log: LogSampler::new(std::time::Duration::from_secs(1)),
            service_down_log: LogSampler::new(std::time::Duration::from_secs(1)),
            policy,
        }
    }
}

/// Exact names (including aliases) first, then `*.domain` wildcards matching exactly one extra
/// label. Case-insensitive.
#[derive(Clone, Debug)]
pub struct RouteTable {
    exact: HashMap<String, Arc<Route>>,
    /// Keyed by the domain under the `*.` (`example.com` for `*.example.com`).
    wildcard: HashMap<String, Arc<Route>>,
    /// Every route's admission, for pruning the rate limiters' key tables.
    admissions: Vec<Arc<Admission>>,
    /// The key slots the rate limiters of this table share.
    budget: Arc<ClientBudget>,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            admissions: Vec::new(),
            budget: ClientBudget::new(EdgeLimits::default().max_tracked_clients.as_usize()),
        }
    }
}

impl RouteTable {
    /// Builds a table from validated routes (hosts unique, as [`kokoa_model::EdgeSpec`]
    /// guarantees), each admitting by its limits resolved against `limits` (the `[limits]`
    /// defaults), with rate limiters keyed and capped as `limits` says.
    pub fn new(routes: &[HttpRoute], limits: &EdgeLimits) -> Self {
        let mut table = Self {
            budget: ClientBudget::new(limits.max_tracked_clients.as_usize()),
            ..Self::default()
        };
        let mask = KeyMask::from_limits(limits);
        for config in routes {
            let policy = RoutePolicy::from(config.limits.resolve(limits));
            let admission = Arc::new(Admission::new(policy, mask, &table.budget));
            table.admissions.push(admission.clone());
            let route = Arc::new(Route {
                host: config.host.to_string(),
                origin: config.origin.to_string(),
                port: config.port.get(),
                admission,
            });
            for name in config.names() {
                match name.wildcard_domain() {
                    Some(domain) => table.wildcard.insert(domain.to_owned(), route.clone()),
                    None => table.exact.insert(name.to_string(), route.clone()),
                };
            }
        }
        table
    }

    /// The route for a `Host` header or `:authority` value. The port, a trailing dot and
    /// letter case are ignored. `None` if no route matches.
    pub fn lookup(&self, host: &str) -> Option<&Arc<Route>> {
        let name = normalize_host(host)?;
        if let Some(route) = self.exact.get(&name) {
            return Some(route);
        }
        let (label, domain) = name.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(domain)
    }

    /// The key slots shared by this table's rate limiters.
    pub fn client_budget(&self) -> &Arc<ClientBudget> {
        &self.budget
    }

    /// Drops rate limiter keys whose bucket has refilled (they are indistinguishable from new
    /// clients) and frees their slots; returns the keys still tracked. O(keys): run it from a
    /// background task, never on the request path.
    pub fn prune_clients(&self) -> usize {
        let tracked = self
            .admissions
            .iter()
            .filter_map(|admission| admission.limiter.as_ref())
            .map(RequestLimiter::prune)
            .sum();
        self.budget.set_tracked(tracked);
        tracked
    }

    /// Number of names (exact and wildcard) in the table.
    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// Whether the table routes nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Lowercases a `Host` / `:authority` value and strips its port and trailing dot. `None` for
/// an empty value, a value with user info, or an IPv6 literal (never a routed name).
pub fn normalize_host(host: &str) -> Option<String> {
    let host = host.trim();
    if host.starts_with('[') || host.contains('@') {
        return None;
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some(_) => return None,
        None => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: &str, aliases: &[&str], origin: &str, port: u16) -> HttpRoute {
        HttpRoute {
            host: host.parse().unwrap(),
            aliases: aliases.iter().map(|a| a.parse().unwrap()).collect(),
            origin: origin.parse().unwrap(),
            port: kokoa_model::Port::new(port).unwrap(),
            limits: Default::default(),
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(
            &[
                route("app.example.com", &["www.example.com"], "home", 8001),
                route("*.example.com", &["*.example.org"], "lab", 8002),
                route("api.example.org", &[], "home", 8003),
            ],
            &EdgeLimits::default(),
        )
    }

    fn port_of(table: &RouteTable, host: &str) -> Option<u16> {
        table.lookup(host).map(|route| route.port)
    }

    #[test]
    fn exact_and_alias() {
        let table = table();
        assert_eq!(port_of(&table, "app.example.com"), Some(8001));
        assert_eq!(port_of(&table, "www.example.com"), Some(8001));
        assert_eq!(
            table.lookup("www.example.com").unwrap().host,
            "app.example.com"
        );
        assert_eq!(port_of(&table, "api.example.org"), Some(8003));
    }

    #[test]
    fn exact_wins_over_wildcard() {
        let table = table();
        assert_eq!(port_of(&table, "app.example.com"), Some(8001));
        assert_eq!(port_of(&table, "other.example.com"), Some(8002));
        assert_eq!(port_of(&table, "x.example.org"), Some(8002));
    }

    #[test]
    fn wildcard_matches_exactly_one_label() {
        let table = table();
        assert_eq!(port_of(&table, "example.com"), None);
        assert_eq!(port_of(&table, "a.b.example.com"), None);
        assert_eq!(port_of(&table, ".example.com"), None);
        assert_eq!(port_of(&table, "a.example.net"), None);
    }

    #[test]
    fn case_port_and_trailing_dot_are_ignored() {
        let table = table();
        assert_eq!(port_of(&table, "APP.Example.COM"), Some(8001));
        assert_eq!(port_of(&table, "app.example.com:443"), Some(8001));
        assert_eq!(port_of(&table, "app.example.com.:8443"), Some(8001));
        assert_eq!(port_of(&table, "Foo.Example.com."), Some(8002));
    }

    #[test]
    fn garbage_does_not_match() {
        let table = table();
        for host in [
            "",
            ":443",
            "[::1]:443",
            "user@app.example.com",
            "app.example.com:x",
            ".",
        ] {
            assert_eq!(table.lookup(host), None, "{host:?}");
        }
    }
}
