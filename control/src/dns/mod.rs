//! DNS record management for control: the [`DnsProvider`] interface and its RFC 2136 dynamic
//! update implementation ([`rfc2136`]).
//!
//! Control changes DNS for two reasons: ACME DNS-01 challenges (a TXT record at
//! `_acme-challenge.<name>`, needed for wildcard certificates) and, in the fleet manager, keeping
//! the public names pointing at healthy edges (A/AAAA). Providers only add and remove single
//! records; what to publish is decided by their callers.

pub mod rfc2136;

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use async_trait::async_trait;

pub use rfc2136::{Rfc2136Config, Rfc2136Provider, TsigAlgorithm};

/// The data of one DNS record a provider manages.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RecordData {
    /// A TXT record holding one string (ACME DNS-01 values are 43 characters).
    Txt(String),
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
}

impl fmt::Display for RecordData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordData::Txt(text) => write!(f, "TXT {text:?}"),
            RecordData::A(ip) => write!(f, "A {ip}"),
            RecordData::Aaaa(ip) => write!(f, "AAAA {ip}"),
        }
    }
}

/// Why a DNS change failed. Messages say what to check.
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
    /// The provider's configuration is unusable (bad key, bad zone).
    #[error("DNS provider configuration: {0}")]
    Config(String),
    /// The server could not be reached or the exchange failed.
    #[error(
        "DNS server {server}: {reason}; check that it is reachable and accepts updates over TCP"
    )]
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
    /// The answer's TSIG signature did not verify.
    #[error("DNS server {server}: the answer's TSIG signature is invalid ({reason})")]
    BadSignature {
        /// The server.
        server: String,
        /// Why.
        reason: String,
    },
}

/// Adds and removes single DNS records in zones control may change.
///
/// Both operations are idempotent: adding a record that exists or removing one that does not
/// succeeds. They return once the zone's primary server has accepted the change; secondaries may
/// lag (callers wait before relying on public resolution).
#[async_trait]
pub trait DnsProvider: Send + Sync + fmt::Debug {
    /// Adds `data` at `name` (a fully qualified name, trailing dot optional) with `ttl` seconds,
    /// keeping other records of the same name and type.
    async fn add_record(&self, name: &str, data: &RecordData, ttl: u32) -> Result<(), DnsError>;
    /// Removes exactly `data` at `name`, keeping other records of the same name and type.
    async fn remove_record(&self, name: &str, data: &RecordData) -> Result<(), DnsError>;
}
