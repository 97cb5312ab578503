//! Cloudflare's API v4: `GET /zones?name=` finds the zone id (unless configured),
//! `GET /zones/{zone_id}/dns_records` lists records page by page (`page`, `per_page`,
//! `name.exact`), and single records are created (`POST`), edited (`PATCH`) and deleted
//! (`DELETE /zones/{zone_id}/dns_records/{id}`). Authentication is an API token
//! (`Authorization: Bearer`) with the zone's DNS Edit permission (plus Zone Read to find the
//! zone by name). Answers use the `{success, errors, messages, result, result_info}` envelope.
//!
//! Cloudflare records are single records, not RRsets, so an address-set change is a series of
//! calls ordered so that the name never loses its last address: an address that goes away is
//! re-pointed to one that comes (`PATCH`), new ones are created, and only then are the rest
//! deleted. Records are published unproxied (`proxied: false`): the edges terminate TLS
//! themselves, and a record someone switched to proxied is switched back. TTLs below the zone's
//! minimum (60 s, 30 s on Enterprise plans: `--dns-cloudflare-min-ttl`) are raised to it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use super::http::{query_escape, snippet, JsonClient, Response};
use super::{
    normalize_name, quote_txt, unquote_txt, AddressChange, DnsError, DnsProvider, DnsRecord,
    RecordData,
};

/// Cloudflare's API base URL.
pub const DEFAULT_API_URL: &str = "https://api.cloudflare.com/client/v4";
/// The lowest TTL Cloudflare accepts on non-Enterprise zones (besides 1, "automatic").
pub const DEFAULT_MIN_TTL: u32 = 60;
/// The highest TTL Cloudflare accepts.
pub const MAX_TTL: u32 = 86_400;
/// Records per listed page.
pub const PER_PAGE: usize = 500;
/// The most pages one listing may take (500 records each): a zone larger than that, or an API
/// that never stops paginating, is an error rather than an endless loop.
pub const DEFAULT_MAX_PAGES: usize = 200;

/// How to reach and authenticate to the API. `Debug` does not print the token.
#[derive(Clone)]
pub struct CloudflareConfig {
    /// The API base URL ([`DEFAULT_API_URL`]; another only for a proxy or a test double).
    pub api_url: String,
    /// The zone's name (e.g. `example.com`); every name must be inside it.
    pub zone: String,
    /// The zone's id (32 hex digits, on the zone's overview page); when `None` it is looked
    /// up by name once, which needs the token's Zone Read permission.
    pub zone_id: Option<String>,
    /// The API token.
    pub token: Zeroizing<String>,
    /// The zone's minimum TTL ([`DEFAULT_MIN_TTL`], 30 on Enterprise plans).
    pub min_ttl: u32,
    /// Time allowed for one request, answer included.
    pub timeout: Duration,
    /// The most pages one listing may take.
    pub max_pages: usize,
}

impl std::fmt::Debug for CloudflareConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudflareConfig")
            .field("api_url", &self.api_url)
            .field("zone", &self.zone)
            .field("zone_id", &self.zone_id)
            .field("min_ttl", &self.min_ttl)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A [`DnsProvider`] over Cloudflare's API v4.
#[derive(Debug)]
pub struct CloudflareProvider {
    client: JsonClient,
    zone: String,
    zone_id: OnceCell<String>,
    min_ttl: u32,
    max_pages: usize,
}

#[derive(Debug, Deserialize)]
struct Envelope<T> {
    success: Option<bool>,
    #[serde(default)]
    errors: Vec<ApiMessage>,
    result: Option<T>,
    result_info: Option<ResultInfo>,
}

#[derive(Debug, Deserialize)]
struct ApiMessage {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Default, Deserialize)]
struct ResultInfo {
    total_pages: Option<u64>,
    total_count: Option<u64>,
    per_page: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ZoneInfo {
    id: String,
    name: String,
}

#[derive(Debug, Clone, Deserialize)]
struct CfRecord {
    id: String,
    name: String,
    #[serde(rename = "type")]
    record_type: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    ttl: u32,
    #[serde(default)]
    proxied: bool,
}

impl CfRecord {
    fn record(&self) -> Option<DnsRecord> {
        let data = match self.record_type.as_str() {
            "A" => RecordData::A(self.content.trim().parse().ok()?),
            "AAAA" => RecordData::Aaaa(self.content.trim().parse().ok()?),
            "TXT" => RecordData::Txt(unquote_txt(&self.content)),
            "CNAME" => RecordData::Cname(
                self.content
                    .trim()
                    .trim_end_matches('.')
                    .to_ascii_lowercase(),
            ),
            _ => return None,
        };
        Some(DnsRecord {
            name: self.name.trim_end_matches('.').to_ascii_lowercase(),
            ttl: self.ttl,
            data,
        })
    }
}

fn content(data: &RecordData) -> String {
    match data {
        RecordData::Txt(text) => quote_txt(text),
        RecordData::A(ip) => ip.to_string(),
        RecordData::Aaaa(ip) => ip.to_string(),
        RecordData::Cname(target) => target.trim_end_matches('.').to_owned(),
    }
}

impl CloudflareProvider {
    /// A provider for `config`. Fails on a bad URL, zone, zone id or an empty token.
    pub fn new(config: CloudflareConfig) -> Result<Self, DnsError> {
        let zone = config
            .zone
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        normalize_name(&zone, &zone)?;
        let token = config.token.trim();
        if token.is_empty() {
            return Err(DnsError::Config("the Cloudflare API token is empty".into()));
        }
        let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            DnsError::Config("the Cloudflare API token is not a valid header value".into())
        })?;
        if !(1..=MAX_TTL).contains(&config.min_ttl) {
            return Err(DnsError::Config(format!(
                "the Cloudflare minimum TTL must be between 1 and {MAX_TTL}"
            )));
        }
        let zone_id = OnceCell::new();
        if let Some(id) = config.zone_id {
            let id = id.trim().to_owned();
            if id.is_empty() || id.len() > 32 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(DnsError::Config(format!(
                    "{id:?} is not a Cloudflare zone id (up to 32 letters and digits)"
                )));
            }
            let _ = zone_id.set(id);
        }
        let client = JsonClient::new(
            &config.api_url,
            config.timeout,
            vec![(AUTHORIZATION, bearer)],
        )?;
        Ok(Self {
            client,
            zone,
            zone_id,
            min_ttl: config.min_ttl,
            max_pages: config.max_pages.max(1),
        })
    }

    /// Decodes an answer, turning a failure (non-2xx status or `success: false`) into an
    /// error naming the request and Cloudflare's codes.
    fn decode<T: DeserializeOwned>(
        &self,
        request: &str,
        response: &Response,
    ) -> Result<Envelope<T>, DnsError> {
        let envelope: Result<Envelope<T>, _> = serde_json::from_slice(&response.body);
        let ok = (200..300).contains(&response.status);
        match envelope {
            Ok(envelope) if ok && envelope.success != Some(false) => Ok(envelope),
            Ok(envelope) => {
                let detail = if envelope.errors.is_empty() {
                    snippet(&response.body)
                } else {
                    envelope
                        .errors
                        .iter()
                        .map(|e| format!("{} {}", e.code, e.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                let auth_code = envelope
                    .errors
                    .iter()
                    .any(|e| matches!(e.code, 9103 | 9106 | 9109 | 10000 | 6003 | 6111));
                Err(self.failure(request, response.status, detail, auth_code))
            }
            Err(error) if ok => Err(DnsError::Api {
                service: "Cloudflare API".into(),
                request: request.to_owned(),
                status: response.status,
                detail: format!("undecodable answer ({error}): {}", snippet(&response.body)),
            }),
            Err(_) => Err(self.failure(request, response.status, snippet(&response.body), false)),
        }
    }

    fn failure(&self, request: &str, status: u16, detail: String, auth_code: bool) -> DnsError {
        if matches!(status, 401 | 403) || auth_code {
            DnsError::Auth {
                service: "Cloudflare API".into(),
                status,
                detail,
                hint: "--dns-cloudflare-token-file: an API token with the zone's DNS Edit permission (and Zone Read without --dns-cloudflare-zone-id)",
            }
        } else {
            DnsError::Api {
                service: "Cloudflare API".into(),
                request: request.to_owned(),
                status,
                detail,
            }
        }
    }

    /// The zone id: configured, or looked up by name once.
    async fn zone_id(&self) -> Result<&str, DnsError> {
        self.zone_id
            .get_or_try_init(|| async {
                let path = format!("/zones?name={}&per_page=50", query_escape(&self.zone));
                let response = self.client.send(Method::GET, &path, None).await?;
                let envelope: Envelope<Vec<ZoneInfo>> = self.decode("GET /zones", &response)?;
                envelope
                    .result
                    .unwrap_or_default()
                    .into_iter()
                    .find(|zone| zone.name.eq_ignore_ascii_case(&self.zone))
                    .map(|zone| zone.id)
                    .ok_or_else(|| DnsError::ZoneNotFound {
                        service: "Cloudflare API".into(),
                        zone: self.zone.clone(),
                    })
            })
            .await
            .map(String::as_str)
    }

    /// Every record of the zone, or of one (normalized) name, following the pagination.
    async fn list(&self, name: Option<&str>) -> Result<Vec<CfRecord>, DnsError> {
        let zone_id = self.zone_id().await?.to_owned();
        let filter = name.map_or(String::new(), |name| {
            format!("&name.exact={}", query_escape(name))
        });
        let mut records = Vec::new();
        for page in 1..=self.max_pages {
            let path =
                format!("/zones/{zone_id}/dns_records?per_page={PER_PAGE}&page={page}{filter}");
            let response = self.client.send(Method::GET, &path, None).await?;
            let envelope: Envelope<Vec<CfRecord>> =
                self.decode("GET /zones/{zone_id}/dns_records", &response)?;
            let batch = envelope.result.unwrap_or_default();
            let got = batch.len();
            records.extend(batch);
            let info = envelope.result_info.unwrap_or_default();
            let last = match (info.total_pages, info.total_count) {
                (Some(total_pages), _) => page as u64 >= total_pages,
                (None, Some(total)) => {
                    let per_page = info.per_page.unwrap_or(PER_PAGE as u64).max(1);
                    page as u64 * per_page >= total
                }
                (None, None) => got < PER_PAGE,
            };
            if last || got == 0 {
                return Ok(records);
            }
        }
        Err(DnsError::Api {
            service: "Cloudflare API".into(),
            request: "GET /zones/{zone_id}/dns_records".into(),
            status: 200,
            detail: format!(
                "the listing did not end within {} pages of {PER_PAGE} records; \
                 the zone is too large for this provider or the API keeps paginating",
                self.max_pages
            ),
        })
    }

    async fn create(&self, name: &str, data: &RecordData, ttl: u32) -> Result<(), DnsError> {
        let zone_id = self.zone_id().await?;
        let mut body = json!({
            "type": data.record_type(),
            "name": name,
            "content": content(data),
            "ttl": ttl,
        });
        if data.address().is_some() {
            body["proxied"] = json!(false);
        }
        let path = format!("/zones/{zone_id}/dns_records");
        let response = self.client.send(Method::POST, &path, Some(&body)).await?;
        self.decode::<serde_json::Value>("POST /zones/{zone_id}/dns_records", &response)?;
        Ok(())
    }

    async fn edit(&self, id: &str, body: serde_json::Value) -> Result<(), DnsError> {
        let zone_id = self.zone_id().await?;
        let path = format!("/zones/{zone_id}/dns_records/{}", query_escape(id));
        let response = self.client.send(Method::PATCH, &path, Some(&body)).await?;
        self.decode::<serde_json::Value>("PATCH /zones/{zone_id}/dns_records/{id}", &response)?;
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<(), DnsError> {
        let zone_id = self.zone_id().await?;
        let path = format!("/zones/{zone_id}/dns_records/{}", query_escape(id));
        let response = self.client.send(Method::DELETE, &path, None).await?;
        self.decode::<serde_json::Value>("DELETE /zones/{zone_id}/dns_records/{id}", &response)?;
        Ok(())
    }
}

#[async_trait]
impl DnsProvider for CloudflareProvider {
    fn kind(&self) -> &'static str {
        "cloudflare"
    }

    fn zone(&self) -> &str {
        &self.zone
    }

    fn effective_ttl(&self, requested: u32) -> u32 {
        requested.clamp(self.min_ttl, MAX_TTL)
    }

    async fn records(&self, name: &str) -> Result<Vec<DnsRecord>, DnsError> {
        let name = normalize_name(name, &self.zone)?;
        Ok(self
            .list(Some(&name))
            .await?
            .iter()
            .filter_map(CfRecord::record)
            .filter(|record| record.name == name)
            .collect())
    }

    async fn records_of(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, Vec<DnsRecord>>, DnsError> {
        let mut all: BTreeMap<String, Vec<DnsRecord>> = BTreeMap::new();
        for name in names {
            all.insert(normalize_name(name, &self.zone)?, Vec::new());
        }
        match all.len() {
            0 => {}
            // One name: its own filtered listing is smaller than the zone's.
            1 => {
                if let Some((name, records)) = all.iter_mut().next() {
                    *records = self.records(name).await?;
                }
            }
            _ => {
                for record in self.list(None).await?.iter().filter_map(CfRecord::record) {
                    if let Some(records) = all.get_mut(&record.name) {
                        records.push(record);
                    }
                }
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
        let ttl = self.effective_ttl(ttl);
        let listed: Vec<(CfRecord, IpAddr)> = self
            .list(Some(&name))
            .await?
            .into_iter()
            .filter(|record| {
                record
                    .name
                    .trim_end_matches('.')
                    .eq_ignore_ascii_case(&name)
            })
            .filter_map(|record| {
                let ip = record.record()?.data.address()?;
                Some((record, ip))
            })
            .collect();

        // Kept: the first record of each wanted address; everything else at the name is stale.
        let mut kept: BTreeMap<IpAddr, &CfRecord> = BTreeMap::new();
        let mut stale: Vec<(&CfRecord, IpAddr)> = Vec::new();
        for (record, ip) in &listed {
            if addresses.contains(ip) && !kept.contains_key(ip) {
                kept.insert(*ip, record);
            } else {
                stale.push((record, *ip));
            }
        }
        let missing: Vec<IpAddr> = addresses
            .iter()
            .filter(|ip| !kept.contains_key(ip))
            .copied()
            .collect();
        let retimed: Vec<(&CfRecord, IpAddr)> = kept
            .iter()
            .filter(|(_, record)| record.ttl != ttl || record.proxied)
            .map(|(ip, record)| (*record, *ip))
            .collect();
        let change = AddressChange {
            added: missing.clone(),
            removed: stale
                .iter()
                .map(|(_, ip)| *ip)
                .filter(|ip| !addresses.contains(ip))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            retimed: retimed.iter().map(|(_, ip)| *ip).collect(),
        };
        if missing.is_empty() && stale.is_empty() && retimed.is_empty() {
            return Ok(AddressChange::default());
        }

        // 1. Re-point stale records of the same family at missing addresses, or create.
        let mut stale_left = stale;
        for ip in &missing {
            let data = RecordData::from_address(*ip);
            let reuse = stale_left
                .iter()
                .position(|(record, _)| record.record_type == data.record_type());
            match reuse {
                Some(index) => {
                    let (record, _) = stale_left.remove(index);
                    self.edit(
                        &record.id,
                        json!({ "content": ip.to_string(), "ttl": ttl, "proxied": false }),
                    )
                    .await?;
                }
                None => self.create(&name, &data, ttl).await?,
            }
        }
        // 2. Fix the TTL (or proxying) of kept records.
        for (record, _) in &retimed {
            self.edit(&record.id, json!({ "ttl": ttl, "proxied": false }))
                .await?;
        }
        // 3. Only now remove what is left over.
        for (record, _) in stale_left {
            self.delete(&record.id).await?;
        }
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
        let present = self
            .list(Some(&name))
            .await?
            .iter()
            .filter_map(CfRecord::record)
            .any(|record| record.data == *data);
        if !present {
            self.create(&name, data, self.effective_ttl(ttl)).await?;
            tracing::info!(name, record = %data, ttl, zone = %self.zone, "DNS record added");
        }
        Ok(())
    }

    async fn remove_record(&self, name: &str, data: &RecordData) -> Result<(), DnsError> {
        let name = normalize_name(name, &self.zone)?;
        for record in self.list(Some(&name)).await? {
            if record.record().is_some_and(|r| r.data == *data) {
                self.delete(&record.id).await?;
                tracing::info!(name, record = %data, zone = %self.zone, "DNS record removed");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CloudflareConfig {
        CloudflareConfig {
            api_url: DEFAULT_API_URL.into(),
            zone: "Example.com.".into(),
            zone_id: None,
            token: Zeroizing::new("token".into()),
            min_ttl: DEFAULT_MIN_TTL,
            timeout: Duration::from_secs(1),
            max_pages: DEFAULT_MAX_PAGES,
        }
    }

    #[test]
    fn ttls_are_raised_to_the_zone_minimum() {
        let provider = CloudflareProvider::new(config()).unwrap();
        assert_eq!(provider.zone(), "example.com");
        assert_eq!(provider.effective_ttl(30), 60);
        assert_eq!(provider.effective_ttl(300), 300);
        assert_eq!(provider.effective_ttl(1_000_000), MAX_TTL);
        let enterprise = CloudflareProvider::new(CloudflareConfig {
            min_ttl: 30,
            ..config()
        })
        .unwrap();
        assert_eq!(enterprise.effective_ttl(30), 30);
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = |config: CloudflareConfig| CloudflareProvider::new(config).is_err();
        assert!(bad(CloudflareConfig {
            token: Zeroizing::new(" ".into()),
            ..config()
        }));
        assert!(bad(CloudflareConfig {
            zone_id: Some("not/an/id".into()),
            ..config()
        }));
        assert!(bad(CloudflareConfig {
            min_ttl: 0,
            ..config()
        }));
        assert!(bad(CloudflareConfig {
            api_url: "api.cloudflare.com".into(),
            ..config()
        }));
    }

    #[test]
    fn listed_records_become_provider_records() {
        let record = |t: &str, content: &str| CfRecord {
            id: "1".into(),
            name: "A.Example.com".into(),
            record_type: t.into(),
            content: content.into(),
            ttl: 60,
            proxied: false,
        };
        assert_eq!(
            record("A", "192.0.2.1").record().unwrap().data,
            RecordData::A("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            record("A", "192.0.2.1").record().unwrap().name,
            "a.example.com"
        );
        assert_eq!(
            record("TXT", "\"v\"").record().unwrap().data,
            RecordData::Txt("v".into())
        );
        assert!(record("MX", "mail.example.com").record().is_none());
    }
}
