//! The PowerDNS Authoritative Server's HTTP API (`api=yes`, `webserver=yes`): records are read
//! with `GET /api/v1/servers/{server_id}/zones/{zone}` and changed with one `PATCH` of the zone
//! carrying whole RRsets (`changetype` `REPLACE` or `DELETE`), which PowerDNS applies in one
//! transaction. Authentication is the `X-API-Key` header (the server's `api-key`).
//!
//! Disabled records count as absent: a hand-disabled address is not served, so steering
//! re-enables it through a `REPLACE` like any other missing address.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use hyper::header::{HeaderName, HeaderValue};
use hyper::Method;
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use super::http::{query_escape, snippet, JsonClient, Response};
use super::{
    normalize_name, quote_txt, unquote_txt, AddressChange, DnsError, DnsProvider, DnsRecord,
    RecordData,
};

/// PowerDNS's name for the one server its API serves.
pub const DEFAULT_SERVER_ID: &str = "localhost";

/// Where the API is and how to authenticate. `Debug` does not print the key.
#[derive(Clone)]
pub struct PowerDnsConfig {
    /// The webserver's base URL, e.g. `http://127.0.0.1:8081` (the `/api/v1` part is added).
    pub api_url: String,
    /// The server id in API paths (`localhost` unless the server is behind a multiplexer).
    pub server_id: String,
    /// The zone (e.g. `example.com`); every name must be inside it.
    pub zone: String,
    /// The API key (`api-key` in `pdns.conf`).
    pub api_key: Zeroizing<String>,
    /// Time allowed for one request, answer included.
    pub timeout: Duration,
}

impl std::fmt::Debug for PowerDnsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerDnsConfig")
            .field("api_url", &self.api_url)
            .field("server_id", &self.server_id)
            .field("zone", &self.zone)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A [`DnsProvider`] over the PowerDNS Authoritative HTTP API.
#[derive(Debug)]
pub struct PowerDnsProvider {
    client: JsonClient,
    zone: String,
    zone_path: String,
    service: String,
}

#[derive(Debug, Deserialize)]
struct Zone {
    #[serde(default)]
    rrsets: Vec<RrSet>,
}

#[derive(Debug, Deserialize)]
struct RrSet {
    name: String,
    #[serde(rename = "type")]
    record_type: String,
    #[serde(default)]
    ttl: u32,
    #[serde(default)]
    records: Vec<PdnsRecord>,
}

#[derive(Debug, Clone, Deserialize)]
struct PdnsRecord {
    content: String,
    #[serde(default)]
    disabled: bool,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: Option<String>,
}

/// `name` with the trailing dot PowerDNS uses for owner names and zone ids.
fn canonical(name: &str) -> String {
    format!("{name}.")
}

/// The provider's view of one PowerDNS record (`None` for types it does not read and for
/// content it cannot parse).
fn parse(name: &str, record_type: &str, ttl: u32, content: &str) -> Option<DnsRecord> {
    let data = match record_type {
        "A" => RecordData::A(content.trim().parse().ok()?),
        "AAAA" => RecordData::Aaaa(content.trim().parse().ok()?),
        "TXT" => RecordData::Txt(unquote_txt(content)),
        "CNAME" => RecordData::Cname(content.trim().trim_end_matches('.').to_ascii_lowercase()),
        _ => return None,
    };
    Some(DnsRecord {
        name: name.to_owned(),
        ttl,
        data,
    })
}

/// The API content of `data`.
fn content(data: &RecordData) -> String {
    match data {
        RecordData::Txt(text) => quote_txt(text),
        RecordData::A(ip) => ip.to_string(),
        RecordData::Aaaa(ip) => ip.to_string(),
        RecordData::Cname(target) => canonical(target.trim_end_matches('.')),
    }
}

impl PowerDnsProvider {
    /// A provider for `config`. Fails on a bad URL, zone or an empty key.
    pub fn new(config: PowerDnsConfig) -> Result<Self, DnsError> {
        let zone = config
            .zone
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        normalize_name(&zone, &zone)?;
        if config.api_key.trim().is_empty() {
            return Err(DnsError::Config("the PowerDNS API key is empty".into()));
        }
        if config.server_id.is_empty() {
            return Err(DnsError::Config("the PowerDNS server id is empty".into()));
        }
        let key = HeaderValue::from_str(config.api_key.trim()).map_err(|_| {
            DnsError::Config("the PowerDNS API key is not a valid header value".into())
        })?;
        let client = JsonClient::new(
            &config.api_url,
            config.timeout,
            vec![(HeaderName::from_static("x-api-key"), key)],
        )?;
        let zone_path = format!(
            "/api/v1/servers/{}/zones/{}",
            query_escape(&config.server_id),
            query_escape(&canonical(&zone))
        );
        let service = format!("PowerDNS API at {}", client.base());
        Ok(Self {
            client,
            zone,
            zone_path,
            service,
        })
    }

    fn check(&self, request: &str, response: &Response) -> Result<(), DnsError> {
        if (200..300).contains(&response.status) {
            return Ok(());
        }
        let detail = serde_json::from_slice::<ErrorBody>(&response.body)
            .ok()
            .and_then(|body| body.error)
            .unwrap_or_else(|| snippet(&response.body));
        Err(match response.status {
            401 | 403 => DnsError::Auth {
                service: self.service.clone(),
                status: response.status,
                detail,
                hint: "--dns-powerdns-api-key-file (the server's api-key)",
            },
            404 => DnsError::ZoneNotFound {
                service: format!("{} ({detail})", self.service),
                zone: self.zone.clone(),
            },
            status => DnsError::Api {
                service: self.service.clone(),
                request: request.to_owned(),
                status,
                detail,
            },
        })
    }

    /// Every RRset of the zone.
    async fn rrsets(&self) -> Result<Vec<RrSet>, DnsError> {
        let response = self.client.send(Method::GET, &self.zone_path, None).await?;
        self.check("GET zone", &response)?;
        let zone: Zone = serde_json::from_slice(&response.body).map_err(|e| DnsError::Api {
            service: self.service.clone(),
            request: "GET zone".into(),
            status: response.status,
            detail: format!("undecodable zone: {e}"),
        })?;
        Ok(zone.rrsets)
    }

    /// The RRsets at one (normalized) name.
    async fn rrsets_at(&self, name: &str) -> Result<Vec<RrSet>, DnsError> {
        let owner = canonical(name);
        let mut rrsets = self.rrsets().await?;
        rrsets.retain(|rrset| rrset.name.eq_ignore_ascii_case(&owner));
        Ok(rrsets)
    }

    async fn patch(&self, rrsets: Vec<serde_json::Value>) -> Result<(), DnsError> {
        let response = self
            .client
            .send(
                Method::PATCH,
                &self.zone_path,
                Some(&json!({ "rrsets": rrsets })),
            )
            .await?;
        self.check("PATCH zone", &response)
    }

    /// The served records of `rrsets`.
    fn served(name: &str, rrsets: &[RrSet]) -> Vec<DnsRecord> {
        rrsets
            .iter()
            .flat_map(|rrset| {
                rrset
                    .records
                    .iter()
                    .filter(|record| !record.disabled)
                    .filter_map(|record| {
                        parse(name, &rrset.record_type, rrset.ttl, &record.content)
                    })
            })
            .collect()
    }

    fn replace(
        name: &str,
        record_type: &str,
        ttl: u32,
        records: &[PdnsRecord],
    ) -> serde_json::Value {
        json!({
            "name": canonical(name),
            "type": record_type,
            "ttl": ttl,
            "changetype": "REPLACE",
            "records": records
                .iter()
                .map(|r| json!({ "content": r.content, "disabled": r.disabled }))
                .collect::<Vec<_>>(),
        })
    }

    fn delete(name: &str, record_type: &str) -> serde_json::Value {
        json!({ "name": canonical(name), "type": record_type, "changetype": "DELETE" })
    }
}

#[async_trait]
impl DnsProvider for PowerDnsProvider {
    fn kind(&self) -> &'static str {
        "powerdns"
    }

    fn zone(&self) -> &str {
        &self.zone
    }

    async fn records(&self, name: &str) -> Result<Vec<DnsRecord>, DnsError> {
        let name = normalize_name(name, &self.zone)?;
        let rrsets = self.rrsets_at(&name).await?;
        Ok(Self::served(&name, &rrsets))
    }

    async fn records_of(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, Vec<DnsRecord>>, DnsError> {
        let mut all: BTreeMap<String, Vec<DnsRecord>> = BTreeMap::new();
        for name in names {
            all.insert(normalize_name(name, &self.zone)?, Vec::new());
        }
        if all.is_empty() {
            return Ok(all);
        }
        for rrset in self.rrsets().await? {
            let name = rrset.name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(records) = all.get_mut(&name) {
                records.extend(Self::served(&name, std::slice::from_ref(&rrset)));
            }
        }
        Ok(all)
    }

    async fn set_addresses(
        &self,
        name: &str,
        addresses: &BTreeSet<IpAddr>,
        ttl: u32,
    ) -> Result<AddressChange, DnsError> {
        let name = normalize_name(name, &self.zone)?;
        let rrsets = self.rrsets_at(&name).await?;
        let change = AddressChange::plan(&Self::served(&name, &rrsets), addresses, ttl);
        if change.is_empty() {
            return Ok(change);
        }
        let mut patch = Vec::new();
        for (v4, record_type) in [(true, "A"), (false, "AAAA")] {
            if !change.touches_family(v4) {
                continue;
            }
            let wanted: Vec<PdnsRecord> = addresses
                .iter()
                .filter(|ip| ip.is_ipv4() == v4)
                .map(|ip| PdnsRecord {
                    content: ip.to_string(),
                    disabled: false,
                })
                .collect();
            patch.push(if wanted.is_empty() {
                Self::delete(&name, record_type)
            } else {
                Self::replace(&name, record_type, ttl, &wanted)
            });
        }
        self.patch(patch).await?;
        tracing::debug!(
            name,
            zone = %self.zone,
            added = ?change.added,
            removed = ?change.removed,
            retimed = ?change.retimed,
            ttl,
            "DNS addresses updated"
        );
        Ok(change)
    }

    async fn add_record(&self, name: &str, data: &RecordData, ttl: u32) -> Result<(), DnsError> {
        let name = normalize_name(name, &self.zone)?;
        let record_type = data.record_type();
        let rrsets = self.rrsets_at(&name).await?;
        let mut records: Vec<PdnsRecord> = rrsets
            .iter()
            .filter(|rrset| rrset.record_type == record_type)
            .flat_map(|rrset| rrset.records.iter().cloned())
            .collect();
        let present = records.iter().any(|record| {
            !record.disabled
                && parse(&name, record_type, ttl, &record.content).is_some_and(|r| r.data == *data)
        });
        if present {
            return Ok(());
        }
        // A disabled copy of the same record is replaced by an enabled one.
        records.retain(|record| {
            parse(&name, record_type, ttl, &record.content).is_none_or(|r| r.data != *data)
        });
        records.push(PdnsRecord {
            content: content(data),
            disabled: false,
        });
        self.patch(vec![Self::replace(&name, record_type, ttl, &records)])
            .await?;
        tracing::info!(name, record = %data, ttl, zone = %self.zone, "DNS record added");
        Ok(())
    }

    async fn remove_record(&self, name: &str, data: &RecordData) -> Result<(), DnsError> {
        let name = normalize_name(name, &self.zone)?;
        let record_type = data.record_type();
        let rrsets = self.rrsets_at(&name).await?;
        let Some(rrset) = rrsets.iter().find(|rrset| rrset.record_type == record_type) else {
            return Ok(());
        };
        let matches = |record: &PdnsRecord| {
            parse(&name, record_type, rrset.ttl, &record.content).is_some_and(|r| r.data == *data)
        };
        if !rrset.records.iter().any(matches) {
            return Ok(());
        }
        let rest: Vec<PdnsRecord> = rrset
            .records
            .iter()
            .filter(|record| !matches(record))
            .cloned()
            .collect();
        let change = if rest.is_empty() {
            Self::delete(&name, record_type)
        } else {
            Self::replace(&name, record_type, rrset.ttl, &rest)
        };
        self.patch(vec![change]).await?;
        tracing::info!(name, record = %data, zone = %self.zone, "DNS record removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_from_api_content() {
        let txt = parse("a.t", "TXT", 60, "\"abc\\\"d\"").unwrap();
        assert_eq!(txt.data, RecordData::Txt("abc\"d".into()));
        assert_eq!(content(&txt.data), "\"abc\\\"d\"");
        let cname = parse("a.t", "CNAME", 60, "Target.Example.").unwrap();
        assert_eq!(cname.data, RecordData::Cname("target.example".into()));
        assert!(parse("a.t", "MX", 60, "10 mail.t.").is_none());
        assert!(parse("a.t", "A", 60, "not an address").is_none());
    }

    #[test]
    fn configuration_is_checked() {
        let config = |url: &str, key: &str| PowerDnsConfig {
            api_url: url.into(),
            server_id: DEFAULT_SERVER_ID.into(),
            zone: "kokoa.test".into(),
            api_key: Zeroizing::new(key.into()),
            timeout: Duration::from_secs(1),
        };
        assert!(PowerDnsProvider::new(config("http://127.0.0.1:8081", "k")).is_ok());
        assert!(PowerDnsProvider::new(config("http://127.0.0.1:8081", " ")).is_err());
        assert!(PowerDnsProvider::new(config("127.0.0.1:8081", "k")).is_err());
        let provider = PowerDnsProvider::new(config("http://127.0.0.1:8081/", "k")).unwrap();
        assert_eq!(
            provider.zone_path,
            "/api/v1/servers/localhost/zones/kokoa.test."
        );
        assert!(!format!("{provider:?}").contains("\"k\""));
    }
}
