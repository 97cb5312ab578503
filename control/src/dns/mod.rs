//! DNS for control: the [`DnsProvider`] interface, its three implementations, and the steering
//! reconciler ([`DnsManager`]) that keeps every route name pointing at the healthy edges that
//! serve it.
//!
//! Control changes DNS for two reasons: ACME DNS-01 challenges (a TXT record at
//! `_acme-challenge.<name>`, needed for wildcard certificates) and DNS steering (the A/AAAA set
//! of each route host name). Both go through one provider:
//!
//! - [`rfc2136`]: TSIG-signed dynamic updates to the zone's primary (BIND, Knot, PowerDNS with
//!   `dnsupdate=yes`), reading the zone back with a TSIG-signed AXFR;
//! - [`powerdns`]: the PowerDNS Authoritative HTTP API (`/api/v1/servers/{id}/zones/{zone}`);
//! - [`cloudflare`]: Cloudflare's API v4 (`/zones/{zone_id}/dns_records`).
//!
//! [`args`] holds `kokoa-control serve`'s `--dns-*` flags and turns them into a provider;
//! [`manager`] holds the reconciler and its metrics and events; [`steer`] builds its desired
//! state from the store and edge health and runs it on one control replica.
//!
//! Providers decide nothing: callers say what a name should hold, providers make it so. Every
//! provider applies a change so that a name being re-pointed never has an empty address set in
//! between (one atomic message, one atomic PATCH, or creates before deletes).

pub mod args;
pub mod cloudflare;
pub(crate) mod http;
pub mod manager;
pub mod powerdns;
pub mod rfc2136;
pub mod steer;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use async_trait::async_trait;

pub use args::{DnsArgs, DnsArgsError, DnsSetup};
pub use manager::{
    DesiredState, DnsEvent, DnsManager, DnsMetrics, DnsStatus, NameOutcome, ReconcileReport,
    SteeringOptions,
};
pub use rfc2136::{Rfc2136Config, Rfc2136Provider, TsigAlgorithm};
pub use steer::{EdgeHealth, Steering};

/// The data of one DNS record a provider reads or writes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordData {
    /// A TXT record holding one string (ACME DNS-01 values are 43 characters).
    Txt(String),
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// A CNAME target (read only: a name with a CNAME cannot hold addresses, so steering
    /// reports it instead of writing).
    Cname(String),
}

impl RecordData {
    /// The address of an A or AAAA record.
    pub fn address(&self) -> Option<IpAddr> {
        match self {
            RecordData::A(ip) => Some(IpAddr::V4(*ip)),
            RecordData::Aaaa(ip) => Some(IpAddr::V6(*ip)),
            RecordData::Txt(_) | RecordData::Cname(_) => None,
        }
    }

    /// The A or AAAA record of `ip`.
    pub fn from_address(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(ip) => RecordData::A(ip),
            IpAddr::V6(ip) => RecordData::Aaaa(ip),
        }
    }

    /// The record type's mnemonic (`A`, `AAAA`, `TXT`, `CNAME`).
    pub fn record_type(&self) -> &'static str {
        match self {
            RecordData::Txt(_) => "TXT",
            RecordData::A(_) => "A",
            RecordData::Aaaa(_) => "AAAA",
            RecordData::Cname(_) => "CNAME",
        }
    }
}

impl fmt::Display for RecordData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordData::Txt(text) => write!(f, "TXT {text:?}"),
            RecordData::A(ip) => write!(f, "A {ip}"),
            RecordData::Aaaa(ip) => write!(f, "AAAA {ip}"),
            RecordData::Cname(target) => write!(f, "CNAME {target}"),
        }
    }
}

/// One record as a provider holds it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DnsRecord {
    /// The owner name, lower case, without the trailing dot.
    pub name: String,
    /// Seconds.
    pub ttl: u32,
    /// The data.
    pub data: RecordData,
}

/// What [`DnsProvider::set_addresses`] changed. Empty when the name already held exactly the
/// requested addresses with the requested TTL (and nothing was written).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressChange {
    /// Addresses published that were not there.
    pub added: Vec<IpAddr>,
    /// Addresses withdrawn.
    pub removed: Vec<IpAddr>,
    /// Kept addresses whose TTL was rewritten.
    pub retimed: Vec<IpAddr>,
}

impl AddressChange {
    /// Whether nothing had to change.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.retimed.is_empty()
    }

    /// The change that turns `current` (the records at one name) into exactly `desired` with
    /// `ttl`. Only A and AAAA records count.
    pub fn plan(current: &[DnsRecord], desired: &BTreeSet<IpAddr>, ttl: u32) -> Self {
        let mut held: BTreeMap<IpAddr, u32> = BTreeMap::new();
        for record in current {
            if let Some(ip) = record.data.address() {
                // Duplicates cannot exist in DNS; keep the smallest TTL if a provider shows two.
                let entry = held.entry(ip).or_insert(record.ttl);
                *entry = (*entry).min(record.ttl);
            }
        }
        AddressChange {
            added: desired
                .iter()
                .filter(|ip| !held.contains_key(ip))
                .copied()
                .collect(),
            removed: held
                .keys()
                .filter(|ip| !desired.contains(ip))
                .copied()
                .collect(),
            retimed: held
                .iter()
                .filter(|(ip, held_ttl)| desired.contains(ip) && **held_ttl != ttl)
                .map(|(ip, _)| *ip)
                .collect(),
        }
    }

    /// Whether the A records (`v4`) or AAAA records (`!v4`) change.
    pub fn touches_family(&self, v4: bool) -> bool {
        self.added
            .iter()
            .chain(&self.removed)
            .chain(&self.retimed)
            .any(|ip| ip.is_ipv4() == v4)
    }
}

/// The addresses (A and AAAA) among `records`.
pub fn addresses(records: &[DnsRecord]) -> BTreeSet<IpAddr> {
    records.iter().filter_map(|r| r.data.address()).collect()
}

/// Why a DNS operation failed. Messages say what to check.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The name is not a valid DNS name or not inside the provider's zone.
    #[error("{name}: {reason}")]
    Name {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The provider's configuration is unusable (bad key, bad zone, bad URL).
    #[error("DNS provider configuration: {0}")]
    Config(String),
    /// The server could not be reached or the exchange failed.
    #[error("DNS server {server}: {reason}; check that it is reachable")]
    Transport {
        /// The server.
        server: String,
        /// What happened.
        reason: String,
    },
    /// The server refused the update (e.g. REFUSED when the key is not allowed, NOTAUTH for a
    /// bad TSIG signature).
    #[error("DNS server {server} answered {rcode} to the update of {name}; check the TSIG key and the zone's update policy")]
    Refused {
        /// The server.
        server: String,
        /// The record's name.
        name: String,
        /// The response code.
        rcode: String,
    },
    /// The server did not accept the TSIG key (NOTAUTH: unknown key, wrong secret or
    /// algorithm, or clocks more than the fudge apart).
    #[error("DNS server {server} rejected the TSIG key ({rcode}); check the key name, algorithm and secret (--dns-tsig-key-name, --dns-tsig-algorithm, --dns-tsig-secret-file) and that both clocks are right")]
    KeyRejected {
        /// The server.
        server: String,
        /// The response code.
        rcode: String,
    },
    /// The answer's TSIG signature did not verify.
    #[error("DNS server {server}: the answer's TSIG signature is invalid ({reason})")]
    BadSignature {
        /// The server.
        server: String,
        /// Why.
        reason: String,
    },
    /// The server refused to send the zone (AXFR), which the RFC 2136 provider reads records
    /// with.
    #[error("DNS server {server} answered {rcode} to the zone transfer (AXFR) of {zone}; allow transfers for the TSIG key (BIND: `allow-transfer {{ key NAME; }};`, Knot: an ACL with `action: [update, transfer]`)")]
    TransferRefused {
        /// The server.
        server: String,
        /// The zone.
        zone: String,
        /// The response code.
        rcode: String,
    },
    /// An HTTP API refused the credentials (HTTP 401/403).
    #[error("{service} refused the credentials (HTTP {status}: {detail}); check {hint}")]
    Auth {
        /// `PowerDNS API at URL`, `Cloudflare API`.
        service: String,
        /// The HTTP status.
        status: u16,
        /// What the API said.
        detail: String,
        /// Which flag or permission to check.
        hint: &'static str,
    },
    /// An HTTP API rejected a request.
    #[error("{service} answered HTTP {status} to {request}: {detail}")]
    Api {
        /// `PowerDNS API at URL`, `Cloudflare API`.
        service: String,
        /// `GET /zones/...`.
        request: String,
        /// The HTTP status.
        status: u16,
        /// What the API said.
        detail: String,
    },
    /// The zone does not exist at the provider (or the credentials cannot see it).
    #[error("{service} has no zone {zone}; create it there, or fix the zone flag")]
    ZoneNotFound {
        /// The provider.
        service: String,
        /// The zone.
        zone: String,
    },
}

/// Lower-cases `name`, strips a trailing dot and checks that it is a valid DNS name inside
/// `zone` (the zone apex itself counts; `*` only as a whole first label).
pub fn normalize_name(name: &str, zone: &str) -> Result<String, DnsError> {
    let bad = |reason: String| DnsError::Name {
        name: name.to_owned(),
        reason,
    };
    let lower = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if lower.is_empty() {
        return Err(bad("empty name".into()));
    }
    if lower.len() > 253 {
        return Err(bad("longer than 253 characters".into()));
    }
    for (index, label) in lower.split('.').enumerate() {
        if label.is_empty() {
            return Err(bad("empty label".into()));
        }
        if label.len() > 63 {
            return Err(bad(format!("label {label:?} is longer than 63 characters")));
        }
        if label.contains('*') && (label != "*" || index > 0) {
            return Err(bad(
                "`*` is only allowed as the whole first label (`*.example.com`)".into(),
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*')))
        {
            return Err(bad(format!("character {c:?} is not allowed in a DNS name")));
        }
    }
    let zone = zone.trim().trim_end_matches('.').to_ascii_lowercase();
    if !in_zone(&lower, &zone) {
        return Err(bad(format!(
            "not inside the zone {zone} this provider manages"
        )));
    }
    Ok(lower)
}

/// Whether `name` (normalized) is `zone` or below it.
pub fn in_zone(name: &str, zone: &str) -> bool {
    name == zone
        || name
            .strip_suffix(zone)
            .is_some_and(|head| head.ends_with('.'))
}

/// A zone whose records control changes: reads a name's records and makes a name's address
/// set (A + AAAA) equal to a given set; adds and removes single records (ACME's TXT).
///
/// Every operation is idempotent and returns once the provider has accepted the change (a
/// zone's secondaries may lag). Names are fully qualified (trailing dot optional) and must be
/// inside [`zone`](Self::zone); a name outside is refused with [`DnsError::Name`] before
/// anything is sent.
#[async_trait]
pub trait DnsProvider: Send + Sync + fmt::Debug {
    /// The provider's kind, for logs and metric labels: `rfc2136`, `powerdns`, `cloudflare`.
    fn kind(&self) -> &'static str;

    /// The zone this provider changes, lower case, without the trailing dot.
    fn zone(&self) -> &str;

    /// The TTL the provider really publishes when asked for `requested` (Cloudflare raises
    /// TTLs below the zone's minimum). Comparisons of current and wanted records use it, so a
    /// raised TTL is not rewritten on every pass.
    fn effective_ttl(&self, requested: u32) -> u32 {
        requested
    }

    /// The A, AAAA, TXT and CNAME records at `name`.
    async fn records(&self, name: &str) -> Result<Vec<DnsRecord>, DnsError>;

    /// The records of each of `names` (every name gets an entry, empty when it holds nothing),
    /// read with as few requests as the provider allows (one AXFR, one zone GET, one
    /// listing). The default reads them one by one.
    async fn records_of(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, Vec<DnsRecord>>, DnsError> {
        let mut all = BTreeMap::new();
        for name in names {
            let key = normalize_name(name, self.zone())?;
            let records = self.records(&key).await?;
            all.insert(key, records);
        }
        Ok(all)
    }

    /// Makes the A and AAAA records at `name` exactly `addresses`, each with `ttl`; an empty
    /// set removes them all. Reads first and writes nothing when nothing differs. Other record
    /// types at the name are left alone.
    async fn set_addresses(
        &self,
        name: &str,
        addresses: &BTreeSet<IpAddr>,
        ttl: u32,
    ) -> Result<AddressChange, DnsError>;

    /// Adds `data` at `name` with `ttl` seconds, keeping the other records of the same name
    /// and type (present already: nothing changes). The API providers read first and send
    /// nothing then; RFC 2136 sends the add, which the server ignores for a present record
    /// (RFC 2136 section 3.4.2.2), so ACME DNS-01 works with a key that may only update.
    async fn add_record(&self, name: &str, data: &RecordData, ttl: u32) -> Result<(), DnsError>;

    /// Removes exactly `data` at `name`, keeping the other records of the same name and type
    /// (absent already: nothing changes; RFC 2136 sends it blind, as for
    /// [`add_record`](Self::add_record)).
    async fn remove_record(&self, name: &str, data: &RecordData) -> Result<(), DnsError>;
}

/// TXT content in zone-file presentation: one quoted string, `"` and `\` escaped (what the
/// PowerDNS and Cloudflare APIs take and return).
pub(crate) fn quote_txt(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// The text of TXT content in presentation form: quoted strings are unescaped and joined
/// (a long value is split into several 255-byte strings); unquoted content is taken as is.
pub(crate) fn unquote_txt(content: &str) -> String {
    let content = content.trim();
    if !content.starts_with('"') {
        return content.to_owned();
    }
    let mut text = String::with_capacity(content.len());
    let mut inside = false;
    let mut chars = content.chars();
    while let Some(c) = chars.next() {
        match (inside, c) {
            (false, '"') => inside = true,
            (true, '"') => inside = false,
            (true, '\\') => {
                if let Some(next) = chars.next() {
                    text.push(next);
                }
            }
            (true, c) => text.push(c),
            (false, _) => {}
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, ttl: u32, ip: &str) -> DnsRecord {
        DnsRecord {
            name: name.into(),
            ttl,
            data: RecordData::from_address(ip.parse().unwrap()),
        }
    }

    #[test]
    fn names_are_normalized_and_checked_against_the_zone() {
        assert_eq!(
            normalize_name("App.Kokoa.Test.", "kokoa.test").unwrap(),
            "app.kokoa.test"
        );
        assert_eq!(
            normalize_name("kokoa.test", "kokoa.test.").unwrap(),
            "kokoa.test"
        );
        assert_eq!(
            normalize_name("*.kokoa.test", "kokoa.test").unwrap(),
            "*.kokoa.test"
        );
        assert_eq!(
            normalize_name("_acme-challenge.a.kokoa.test", "kokoa.test").unwrap(),
            "_acme-challenge.a.kokoa.test"
        );
        for bad in [
            "app.example.com",
            "notkokoa.test",
            "a.*.kokoa.test",
            "a*.kokoa.test",
            "a..kokoa.test",
            "a b.kokoa.test",
            "",
        ] {
            assert!(
                matches!(
                    normalize_name(bad, "kokoa.test"),
                    Err(DnsError::Name { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn a_plan_lists_added_removed_and_retimed_addresses() {
        let current = vec![
            record("a.t", 30, "192.0.2.1"),
            record("a.t", 60, "192.0.2.2"),
            record("a.t", 30, "2001:db8::1"),
            DnsRecord {
                name: "a.t".into(),
                ttl: 30,
                data: RecordData::Txt("x".into()),
            },
        ];
        let desired: BTreeSet<IpAddr> = ["192.0.2.2", "192.0.2.3", "2001:db8::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let plan = AddressChange::plan(&current, &desired, 30);
        assert_eq!(plan.added, ["192.0.2.3".parse::<IpAddr>().unwrap()]);
        assert_eq!(plan.removed, ["192.0.2.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(plan.retimed, ["192.0.2.2".parse::<IpAddr>().unwrap()]);
        assert!(plan.touches_family(true));
        assert!(!plan.touches_family(false));
        let same = AddressChange::plan(&current[..1], &["192.0.2.1".parse().unwrap()].into(), 30);
        assert!(same.is_empty());
    }

    #[test]
    fn txt_content_round_trips_through_presentation_form() {
        for text in ["plain", "with \"quotes\" and \\", ""] {
            assert_eq!(unquote_txt(&quote_txt(text)), text);
        }
        assert_eq!(unquote_txt("\"abc\" \"def\""), "abcdef");
        assert_eq!(unquote_txt("bare"), "bare");
    }
}
