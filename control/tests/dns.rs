//! DNS providers and DNS steering against real servers, started on loopback ports by
//! `kokoa_tests`: BIND `named` and Knot (RFC 2136 + TSIG), the PowerDNS Authoritative Server
//! (HTTP API, SQLite backend), and a local fake of Cloudflare's API v4 that enforces its
//! documented shapes (Cloudflare itself cannot be reached from the tests).
//!
//! Every provider runs the same conformance sequence ([`conformance`]): create, idempotent
//! re-apply (the zone's SOA serial, or the fake's write count, must not move), replace, read
//! back, a hand edit converging back, a TTL change, ACME's TXT add/remove, a wildcard, withdraw,
//! and a name outside the zone that is refused before anything is sent. What the provider did
//! is checked behind its back: `dig` against the server, or the fake's own answer. Each
//! provider also reports bad credentials clearly. The steering rules (fail open, TTL,
//! wildcard, out-of-zone names, convergence of a hand edit by the periodic pass, metrics and
//! events) are tested against the real BIND.
//!
//! Without `named` / `knotd` / `pdns_server` (and `dig`, `nsupdate`, `sqlite3`) the tests print
//! `SKIPPED: ...` and pass, except under `CI=true`.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use async_trait::async_trait;
use kokoa_control::dns::cloudflare::{CloudflareConfig, CloudflareProvider};
use kokoa_control::dns::powerdns::{PowerDnsConfig, PowerDnsProvider};
use kokoa_control::dns::{
    addresses, AddressChange, DesiredState, DnsError, DnsEvent, DnsManager, DnsProvider,
    NameOutcome, RecordData, Rfc2136Config, Rfc2136Provider, SteeringOptions, TsigAlgorithm,
};
use kokoa_tests::acme::{Named, DEADLINE, TSIG_KEY, ZONE};
use kokoa_tests::cloudflare::{CloudflareFake, ZONE_ID};
use kokoa_tests::dns::{
    dig, dig_addresses, nsupdate, soa_serial, tools_or_skip, tsig_secret, Knot, PowerDns,
};
use kokoa_tests::eventually;

const BIND_TOOLS: &[&str] = &["named", "dig", "nsupdate"];
const KNOT_TOOLS: &[&str] = &["knotd", "dig", "nsupdate"];
const PDNS_TOOLS: &[&str] = &["pdns_server", "sqlite3", "dig"];

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

fn name(label: &str) -> String {
    format!("{label}.{ZONE}")
}

/// How a test looks at and edits the zone behind the provider's back.
#[async_trait]
trait Zone: Send + Sync {
    /// `(ttl, data)` of what the zone answers for `name`/`record_type`, sorted.
    async fn answer(&self, name: &str, record_type: &str) -> Result<Vec<(u32, String)>>;
    /// Moves on every write to the zone.
    async fn version(&self) -> Result<u64>;
    /// Adds an A record by hand.
    async fn hand_add(&self, name: &str, ip: IpAddr, ttl: u32) -> Result<()>;
    /// Whether the provider sends single-record adds and removes without reading first (RFC
    /// 2136: the server ignores a duplicate add, section 3.4.2.2, and the key may lack
    /// transfer rights), so [`Zone::version`] moves on a redundant add.
    fn blind_single_records(&self) -> bool {
        false
    }

    /// The A and AAAA addresses answered for `name`.
    async fn addresses(&self, name: &str) -> Result<BTreeSet<IpAddr>> {
        let mut all = BTreeSet::new();
        for record_type in ["A", "AAAA"] {
            for (_, data) in self.answer(name, record_type).await? {
                all.insert(data.parse()?);
            }
        }
        Ok(all)
    }
}

/// A server taking RFC 2136 updates with [`TSIG_KEY`] (BIND or Knot). Its version is the
/// number of update messages it logged: BIND and Knot keep the SOA serial when an update
/// changes nothing, so the serial cannot show a redundant write.
struct Rfc2136Zone<'a> {
    addr: SocketAddr,
    secret: String,
    updates: Box<dyn Fn() -> Result<usize> + Send + Sync + 'a>,
}

#[async_trait]
impl Zone for Rfc2136Zone<'_> {
    async fn answer(&self, name: &str, record_type: &str) -> Result<Vec<(u32, String)>> {
        dig(self.addr, name, record_type).await
    }
    async fn version(&self) -> Result<u64> {
        Ok((self.updates)()? as u64)
    }
    async fn hand_add(&self, name: &str, ip: IpAddr, ttl: u32) -> Result<()> {
        let kind = if ip.is_ipv4() { "A" } else { "AAAA" };
        nsupdate(
            self.addr,
            &self.secret,
            &format!("update add {name}. {ttl} {kind} {ip}"),
        )
        .await
    }
    fn blind_single_records(&self) -> bool {
        true
    }
}

struct PdnsZone<'a>(&'a PowerDns);

#[async_trait]
impl Zone for PdnsZone<'_> {
    async fn answer(&self, name: &str, record_type: &str) -> Result<Vec<(u32, String)>> {
        dig(self.0.dns, name, record_type).await
    }
    async fn version(&self) -> Result<u64> {
        Ok(u64::from(soa_serial(self.0.dns).await?))
    }
    async fn hand_add(&self, name: &str, ip: IpAddr, ttl: u32) -> Result<()> {
        let mut contents: Vec<String> = dig(self.0.dns, name, "A")
            .await?
            .into_iter()
            .map(|(_, data)| data)
            .collect();
        contents.push(ip.to_string());
        let contents: Vec<&str> = contents.iter().map(String::as_str).collect();
        self.0.set_rrset(name, "A", ttl, &contents).await
    }
}

struct FakeZone<'a>(&'a CloudflareFake);

#[async_trait]
impl Zone for FakeZone<'_> {
    async fn answer(&self, name: &str, record_type: &str) -> Result<Vec<(u32, String)>> {
        Ok(self.0.answer(name, record_type))
    }
    async fn version(&self) -> Result<u64> {
        Ok(self.0.writes() as u64)
    }
    async fn hand_add(&self, name: &str, ip: IpAddr, ttl: u32) -> Result<()> {
        self.0.insert(name, "A", &ip.to_string(), ttl, false);
        Ok(())
    }
}

fn rfc2136(addr: SocketAddr, secret: &str) -> Result<Arc<dyn DnsProvider>> {
    Ok(Arc::new(Rfc2136Provider::new(Rfc2136Config {
        server: addr,
        zone: ZONE.into(),
        key_name: TSIG_KEY.into(),
        algorithm: TsigAlgorithm::HmacSha256,
        secret_base64: secret.to_owned().into(),
        timeout: Duration::from_secs(5),
    })?))
}

fn powerdns(pdns: &PowerDns, key: &str) -> Result<Arc<dyn DnsProvider>> {
    Ok(Arc::new(PowerDnsProvider::new(PowerDnsConfig {
        api_url: pdns.api_url.clone(),
        server_id: "localhost".into(),
        zone: ZONE.into(),
        api_key: key.to_owned().into(),
        timeout: Duration::from_secs(5),
    })?))
}

fn cloudflare(
    fake: &CloudflareFake,
    token: &str,
    zone_id: Option<&str>,
) -> Result<CloudflareProvider> {
    Ok(CloudflareProvider::new(CloudflareConfig {
        api_url: fake.url.clone(),
        zone: fake.zone.clone(),
        zone_id: zone_id.map(str::to_owned),
        token: token.to_owned().into(),
        min_ttl: fake.min_ttl(),
        timeout: Duration::from_secs(5),
        max_pages: 3,
    })?)
}

/// What every provider must do, checked behind its back through `zone`. `ttl` and `ttl2` are
/// two TTLs the provider accepts as they are.
async fn conformance(
    provider: &dyn DnsProvider,
    zone: &dyn Zone,
    ttl: u32,
    ttl2: u32,
) -> Result<()> {
    let app = name("app");
    let (a1, a2, a9, v6) = (
        ip("192.0.2.1"),
        ip("192.0.2.2"),
        ip("192.0.2.9"),
        ip("2001:db8::1"),
    );

    // Create.
    let change = provider
        .set_addresses(&app, &ips(&["192.0.2.1", "192.0.2.2"]), ttl)
        .await?;
    ensure!(
        change.added == [a1, a2] && change.removed.is_empty(),
        "create: {change:?}"
    );
    ensure!(
        zone.answer(&app, "A").await? == [(ttl, a1.to_string()), (ttl, a2.to_string())],
        "after create the zone answers {:?}",
        zone.answer(&app, "A").await?
    );

    // Idempotent: nothing differs, nothing is written.
    let before = zone.version().await?;
    let change = provider
        .set_addresses(&app, &ips(&["192.0.2.1", "192.0.2.2"]), ttl)
        .await?;
    ensure!(change.is_empty(), "re-apply changed {change:?}");
    ensure!(
        zone.version().await? == before,
        "re-apply wrote to the zone"
    );

    // Replace, across families.
    let change = provider
        .set_addresses(&app, &ips(&["192.0.2.2", "2001:db8::1"]), ttl)
        .await?;
    ensure!(
        change.added == [v6] && change.removed == [a1],
        "replace: {change:?}"
    );
    ensure!(
        zone.addresses(&app).await? == ips(&["192.0.2.2", "2001:db8::1"]),
        "after replace"
    );

    // Read back.
    let records = provider.records(&app).await?;
    ensure!(
        addresses(&records) == ips(&["192.0.2.2", "2001:db8::1"]),
        "records: {records:?}"
    );
    ensure!(
        records.iter().all(|r| r.ttl == ttl),
        "records' TTL: {records:?}"
    );

    // A hand edit shows in the read and converges back.
    zone.hand_add(&app, a9, ttl).await?;
    ensure!(
        addresses(&provider.records(&app).await?).contains(&a9),
        "hand edit not read"
    );
    let change = provider
        .set_addresses(&app, &ips(&["192.0.2.2", "2001:db8::1"]), ttl)
        .await?;
    ensure!(
        change.removed == [a9] && change.added.is_empty(),
        "converge: {change:?}"
    );
    ensure!(
        zone.addresses(&app).await? == ips(&["192.0.2.2", "2001:db8::1"]),
        "after converge"
    );

    // A TTL change rewrites the kept records.
    let change = provider
        .set_addresses(&app, &ips(&["192.0.2.2", "2001:db8::1"]), ttl2)
        .await?;
    ensure!(change.retimed == [a2, v6], "TTL change: {change:?}");
    ensure!(
        zone.answer(&app, "A").await? == [(ttl2, a2.to_string())],
        "after the TTL change"
    );

    // ACME's TXT records: add twice (one record; the API providers write once), remove twice.
    let challenge = name("_acme-challenge.app");
    let value = RecordData::Txt("kokoa-dns-01-value".into());
    provider.add_record(&challenge, &value, ttl).await?;
    let before = zone.version().await?;
    provider.add_record(&challenge, &value, ttl).await?;
    ensure!(
        zone.blind_single_records() || zone.version().await? == before,
        "adding a present TXT wrote"
    );
    ensure!(
        zone.answer(&challenge, "TXT").await? == [(ttl, "\"kokoa-dns-01-value\"".to_owned())],
        "TXT: {:?}",
        zone.answer(&challenge, "TXT").await?
    );
    provider.remove_record(&challenge, &value).await?;
    provider.remove_record(&challenge, &value).await?;
    ensure!(
        zone.answer(&challenge, "TXT").await?.is_empty(),
        "TXT not removed"
    );

    // A wildcard name answers for the names below it.
    let wildcard = name("*.wild");
    provider
        .set_addresses(&wildcard, &ips(&["192.0.2.3"]), ttl)
        .await?;
    ensure!(
        zone.addresses(&name("anything.wild")).await? == ips(&["192.0.2.3"]),
        "the wildcard does not answer"
    );

    // Withdraw.
    let change = provider.set_addresses(&app, &BTreeSet::new(), ttl).await?;
    ensure!(change.removed == [a2, v6], "withdraw: {change:?}");
    ensure!(zone.addresses(&app).await?.is_empty(), "after withdraw");

    // Outside the zone: refused before anything is sent.
    let before = zone.version().await?;
    let outside = provider
        .set_addresses("app.example.com", &ips(&["192.0.2.1"]), ttl)
        .await;
    ensure!(
        matches!(outside, Err(DnsError::Name { .. })),
        "outside the zone: {outside:?}"
    );
    ensure!(
        zone.version().await? == before,
        "a name outside the zone was written"
    );
    Ok(())
}

#[tokio::test]
async fn rfc2136_provider_against_bind() -> Result<()> {
    if !tools_or_skip("rfc2136_provider_against_bind", BIND_TOOLS) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let named = Named::start_with_records(dir.path(), "").await?;
    let zone = Rfc2136Zone {
        addr: named.addr,
        secret: named.secret.clone(),
        updates: Box::new(|| named.updates()),
    };
    conformance(rfc2136(named.addr, &named.secret)?.as_ref(), &zone, 30, 90).await?;

    // A wrong secret is a clear key error, for reads (AXFR) and updates alike.
    let wrong = rfc2136(named.addr, &tsig_secret())?;
    let error = wrong
        .records(&name("app"))
        .await
        .expect_err("wrong key read");
    ensure!(matches!(error, DnsError::KeyRejected { .. }), "{error}");
    ensure!(
        error.to_string().contains("--dns-tsig-secret-file"),
        "{error}"
    );
    let error = wrong
        .add_record(&name("x"), &RecordData::Txt("v".into()), 60)
        .await
        .expect_err("wrong key update");
    ensure!(matches!(error, DnsError::KeyRejected { .. }), "{error}");
    Ok(())
}

#[tokio::test]
async fn rfc2136_provider_against_knot() -> Result<()> {
    if !tools_or_skip("rfc2136_provider_against_knot", KNOT_TOOLS) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let knot = Knot::start(dir.path(), "").await?;
    let zone = Rfc2136Zone {
        addr: knot.addr,
        secret: knot.secret.clone(),
        updates: Box::new(|| knot.updates()),
    };
    conformance(rfc2136(knot.addr, &knot.secret)?.as_ref(), &zone, 30, 90).await?;
    let error = rfc2136(knot.addr, &tsig_secret())?
        .set_addresses(&name("app"), &ips(&["192.0.2.1"]), 30)
        .await
        .expect_err("wrong key");
    ensure!(matches!(error, DnsError::KeyRejected { .. }), "{error}");
    Ok(())
}

#[tokio::test]
async fn powerdns_provider_against_pdns_server() -> Result<()> {
    if !tools_or_skip("powerdns_provider_against_pdns_server", PDNS_TOOLS) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let pdns = PowerDns::start(dir.path()).await?;
    conformance(
        powerdns(&pdns, &pdns.api_key)?.as_ref(),
        &PdnsZone(&pdns),
        30,
        90,
    )
    .await?;

    // A disabled address is not served, so it counts as missing and is enabled again.
    let app = name("app");
    let provider = powerdns(&pdns, &pdns.api_key)?;
    provider
        .set_addresses(&app, &ips(&["192.0.2.1"]), 30)
        .await?;
    let (status, body) = pdns
        .api(
            "PATCH",
            &format!("/api/v1/servers/localhost/zones/{ZONE}."),
            Some(serde_json::json!({"rrsets": [{
                "name": format!("{app}."), "type": "A", "ttl": 30, "changetype": "REPLACE",
                "records": [{"content": "192.0.2.1", "disabled": true}],
            }]})),
        )
        .await?;
    ensure!(status == 204, "disabling: {status} {body}");
    ensure!(
        dig_addresses(pdns.dns, &app).await?.is_empty(),
        "disabled but served"
    );
    let change = provider
        .set_addresses(&app, &ips(&["192.0.2.1"]), 30)
        .await?;
    ensure!(change.added == [ip("192.0.2.1")], "{change:?}");
    ensure!(
        dig_addresses(pdns.dns, &app).await? == ips(&["192.0.2.1"]),
        "not re-enabled"
    );

    // A wrong key is an authentication error naming the flag; a missing zone is named too.
    let error = powerdns(&pdns, "wrong-key")?
        .records(&app)
        .await
        .expect_err("wrong key");
    ensure!(
        matches!(error, DnsError::Auth { status: 401, .. }),
        "{error}"
    );
    ensure!(
        error.to_string().contains("--dns-powerdns-api-key-file"),
        "{error}"
    );
    let elsewhere = PowerDnsProvider::new(PowerDnsConfig {
        api_url: pdns.api_url.clone(),
        server_id: "localhost".into(),
        zone: "example.org".into(),
        api_key: pdns.api_key.clone().into(),
        timeout: Duration::from_secs(5),
    })?;
    let error = elsewhere
        .records("a.example.org")
        .await
        .expect_err("no such zone");
    ensure!(matches!(error, DnsError::ZoneNotFound { .. }), "{error}");
    Ok(())
}

#[tokio::test]
async fn cloudflare_provider_against_the_api_fake() -> Result<()> {
    let fake = CloudflareFake::start(ZONE, "good-token", 60).await?;
    // The zone id is looked up by name (GET /zones?name=) once.
    let provider = cloudflare(&fake, "good-token", None)?;
    conformance(&provider, &FakeZone(&fake), 60, 120).await?;
    let lookups = fake
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /client/v4/zones?"))
        .count();
    ensure!(lookups == 1, "zone looked up {lookups} times");
    Ok(())
}

#[tokio::test]
async fn cloudflare_raises_ttls_unproxies_and_never_empties_a_name() -> Result<()> {
    let fake = CloudflareFake::start(ZONE, "good-token", 60).await?;
    let provider = cloudflare(&fake, "good-token", Some(ZONE_ID))?;
    let app = name("app");

    // 30 s is below the zone's minimum: 60 is published, and asking for 30 again is a no-op.
    provider
        .set_addresses(&app, &ips(&["192.0.2.1"]), 30)
        .await?;
    ensure!(
        fake.answer(&app, "A") == [(60, "192.0.2.1".to_owned())],
        "{:?}",
        fake.answer(&app, "A")
    );
    let writes = fake.writes();
    ensure!(
        provider
            .set_addresses(&app, &ips(&["192.0.2.1"]), 30)
            .await?
            .is_empty(),
        "re-apply"
    );
    ensure!(fake.writes() == writes, "re-apply wrote");

    // Someone turns the proxy on in the dashboard: it is switched back off.
    let id = fake
        .records()
        .iter()
        .find(|r| r.name == app)
        .context("record")?
        .id
        .clone();
    fake.remove(&id);
    fake.insert(&app, "A", "192.0.2.1", 1, true);
    ensure!(
        fake.answer(&app, "A").is_empty(),
        "a proxied record is not answered directly"
    );
    let change = provider
        .set_addresses(&app, &ips(&["192.0.2.1"]), 30)
        .await?;
    ensure!(change.retimed == [ip("192.0.2.1")], "{change:?}");
    ensure!(
        fake.answer(&app, "A") == [(60, "192.0.2.1".to_owned())],
        "still proxied"
    );

    // Moving a name to another edge re-points the record (PATCH) instead of deleting it
    // first: the name is never without an address.
    let before = fake.requests().len();
    provider
        .set_addresses(&app, &ips(&["192.0.2.2"]), 30)
        .await?;
    let calls: Vec<String> = fake.requests()[before..]
        .iter()
        .filter(|r| !r.starts_with("GET"))
        .cloned()
        .collect();
    ensure!(
        calls.len() == 1 && calls[0].starts_with("PATCH "),
        "calls: {calls:?}"
    );
    ensure!(
        fake.answer(&app, "A") == [(60, "192.0.2.2".to_owned())],
        "after the move"
    );

    // A CNAME at the name is Cloudflare's error, reported with its code.
    let alias = name("alias");
    fake.insert(&alias, "CNAME", "elsewhere.example.com", 60, false);
    let error = provider
        .set_addresses(&alias, &ips(&["192.0.2.1"]), 60)
        .await
        .expect_err("CNAME conflict");
    ensure!(error.to_string().contains("81053"), "{error}");
    Ok(())
}

#[tokio::test]
async fn cloudflare_reports_bad_credentials_and_missing_zones() -> Result<()> {
    let fake = CloudflareFake::start(ZONE, "good-token", 60).await?;
    let error = cloudflare(&fake, "stolen-token", Some(ZONE_ID))?
        .records(&name("app"))
        .await
        .expect_err("wrong token");
    ensure!(
        matches!(error, DnsError::Auth { status: 403, .. }),
        "{error}"
    );
    let text = error.to_string();
    ensure!(
        text.contains("9109") && text.contains("--dns-cloudflare-token-file"),
        "{text}"
    );

    // The fake itself refuses a request without the header as Cloudflare does.
    let (status, body) = kokoa_tests::cloudflare::raw_call(&fake, "GET", "/zones", None).await?;
    ensure!(
        status == 400 && body["errors"][0]["code"] == 6003,
        "{status} {body}"
    );

    let other = CloudflareProvider::new(CloudflareConfig {
        api_url: fake.url.clone(),
        zone: "example.org".into(),
        zone_id: None,
        token: "good-token".to_owned().into(),
        min_ttl: 60,
        timeout: Duration::from_secs(5),
        max_pages: 3,
    })?;
    let error = other
        .records("a.example.org")
        .await
        .expect_err("no such zone");
    ensure!(matches!(error, DnsError::ZoneNotFound { .. }), "{error}");
    Ok(())
}

/// A hostile API that never stops paginating costs a bounded number of requests and ends in an
/// error, while the same provider keeps working once the API behaves.
#[tokio::test]
async fn cloudflare_endless_pagination_is_cut_off() -> Result<()> {
    let fake = CloudflareFake::start(ZONE, "good-token", 60).await?;
    let provider = cloudflare(&fake, "good-token", Some(ZONE_ID))?;
    provider
        .set_addresses(&name("app"), &ips(&["192.0.2.1"]), 60)
        .await?;
    fake.set_endless_pages(true);
    let before = fake.requests().len();
    let error = provider.records(&name("app")).await.expect_err("endless");
    ensure!(error.to_string().contains("3 pages"), "{error}");
    ensure!(
        fake.requests().len() - before == 3,
        "{} requests",
        fake.requests().len() - before
    );
    fake.set_endless_pages(false);
    ensure!(
        addresses(&provider.records(&name("app")).await?) == ips(&["192.0.2.1"]),
        "after"
    );
    Ok(())
}

/// The reconciler's rules against the real BIND: TTL, wildcard, idempotence (the SOA serial
/// does not move), a healthy edge withdrawn, fail open when none is left (even against a hand
/// deletion), recovery, names outside the zone, metrics and events.
#[tokio::test]
async fn steering_rules_against_bind() -> Result<()> {
    if !tools_or_skip("steering_rules_against_bind", BIND_TOOLS) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let named = Named::start_with_records(dir.path(), "").await?;
    let provider = rfc2136(named.addr, &named.secret)?;
    let manager = DnsManager::new(
        vec![provider],
        SteeringOptions {
            ttl: 45,
            interval: Duration::from_secs(3600),
        },
    );
    let mut registry = prometheus_client::registry::Registry::default();
    manager.metrics().register(&mut registry);
    let mut events = manager.subscribe();
    let (app, wild) = (name("app"), name("*.wild"));

    let desired = DesiredState::from_iter([
        (app.as_str(), ips(&["192.0.2.1", "192.0.2.2"])),
        (wild.as_str(), ips(&["192.0.2.1"])),
        ("app.example.com", ips(&["192.0.2.1"])),
    ]);
    let report = manager.reconcile(&desired).await;
    ensure!(report.provider_errors.is_empty(), "{report:?}");
    ensure!(
        dig(named.addr, &app, "A").await?
            == [(45, "192.0.2.1".to_owned()), (45, "192.0.2.2".to_owned())],
        "TTL or addresses: {:?}",
        dig(named.addr, &app, "A").await?
    );
    ensure!(
        dig_addresses(named.addr, &name("x.wild")).await? == ips(&["192.0.2.1"]),
        "wildcard"
    );
    ensure!(
        report.outcome("app.example.com") == Some(&NameOutcome::OutsideZone),
        "{report:?}"
    );
    ensure!(
        manager.status().outside_zone == ["app.example.com"],
        "status"
    );

    // Nothing differs: nothing is written.
    let serial = soa_serial(named.addr).await?;
    let report = manager.reconcile(&desired).await;
    ensure!(report.writes() == 0, "{report:?}");
    ensure!(
        soa_serial(named.addr).await? == serial,
        "an idle pass wrote"
    );

    // One edge becomes unhealthy: withdrawn.
    let desired = DesiredState::from_iter([(app.as_str(), ips(&["192.0.2.1"]))]);
    manager.reconcile(&desired).await;
    ensure!(
        dig_addresses(named.addr, &app).await? == ips(&["192.0.2.1"]),
        "withdrawal"
    );

    // The last one too: fail open, the last address stays, even after a hand deletion.
    let none = DesiredState::from_iter([(app.as_str(), ips(&[]))]);
    let report = manager.reconcile(&none).await;
    ensure!(
        report.outcome(&app)
            == Some(&NameOutcome::FailOpen {
                kept: ips(&["192.0.2.1"]),
                change: AddressChange::default()
            }),
        "{report:?}"
    );
    ensure!(
        dig_addresses(named.addr, &app).await? == ips(&["192.0.2.1"]),
        "fail open"
    );
    nsupdate(
        named.addr,
        &named.secret,
        &format!("update delete {app}. A"),
    )
    .await?;
    ensure!(
        dig_addresses(named.addr, &app).await?.is_empty(),
        "hand deletion"
    );
    let report = manager.reconcile(&none).await;
    ensure!(
        matches!(report.outcome(&app), Some(NameOutcome::FailOpen { change, .. }) if change.added == [ip("192.0.2.1")]),
        "{report:?}"
    );
    ensure!(
        dig_addresses(named.addr, &app).await? == ips(&["192.0.2.1"]),
        "not restored"
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    ensure!(text.contains("kokoa_dns_fail_open_names 1"), "{text}");

    // A healthy edge is back.
    let back = DesiredState::from_iter([(app.as_str(), ips(&["192.0.2.2"]))]);
    manager.reconcile(&back).await;
    ensure!(
        dig_addresses(named.addr, &app).await? == ips(&["192.0.2.2"]),
        "recovery"
    );
    ensure!(manager.status().fail_open.is_empty(), "still held open");

    // The route is deleted: its name is withdrawn (the wildcard went with the earlier state).
    manager.reconcile(&DesiredState::new()).await;
    ensure!(
        dig_addresses(named.addr, &app).await?.is_empty(),
        "retired name kept"
    );
    ensure!(
        dig_addresses(named.addr, &name("x.wild")).await?.is_empty(),
        "retired wildcard kept"
    );

    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    ensure!(
        seen.contains(&DnsEvent::FailOpen {
            name: app.clone(),
            kept: vec![ip("192.0.2.1")]
        }),
        "{seen:?}"
    );
    ensure!(
        seen.contains(&DnsEvent::OutsideZone {
            name: "app.example.com".into()
        }),
        "{seen:?}"
    );
    ensure!(
        seen.iter()
            .any(|e| matches!(e, DnsEvent::FailOpenEnded { name, .. } if *name == app)),
        "{seen:?}"
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    for line in [
        "kokoa_dns_record_changes_total{provider=\"rfc2136\",zone=\"kokoa.test\",change=\"added\"} 5",
        "kokoa_dns_record_changes_total{provider=\"rfc2136\",zone=\"kokoa.test\",change=\"removed\"} 4",
        "kokoa_dns_fail_open_names 0",
        "kokoa_dns_outside_zone_names 0",
    ] {
        ensure!(text.contains(line), "missing {line:?} in\n{text}");
    }
    ensure!(
        !text.contains("kokoa_dns_errors_total{"),
        "errors counted:\n{text}"
    );
    ensure!(
        text.lines().any(
            |l| l.starts_with("kokoa_dns_last_reconcile_timestamp_seconds{") && !l.ends_with(" 0")
        ),
        "{text}"
    );
    Ok(())
}

/// `run`: a new desired state is applied at once, and a hand edit converges back by the
/// periodic pass alone.
#[tokio::test]
async fn steering_loop_converges_hand_edits_and_follows_changes() -> Result<()> {
    if !tools_or_skip(
        "steering_loop_converges_hand_edits_and_follows_changes",
        BIND_TOOLS,
    ) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let named = Named::start_with_records(dir.path(), "").await?;
    let manager = DnsManager::new(
        vec![rfc2136(named.addr, &named.secret)?],
        SteeringOptions {
            ttl: 30,
            interval: Duration::from_millis(300),
        },
    );
    let app = name("app");
    let (desired_tx, desired_rx) = tokio::sync::watch::channel(DesiredState::from_iter([(
        app.as_str(),
        ips(&["192.0.2.1"]),
    )]));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(manager.clone().run(desired_rx, async {
        let _ = stop_rx.await;
    }));

    let wait_for = |want: BTreeSet<IpAddr>, what: &'static str| {
        let app = app.clone();
        async move {
            eventually(what, DEADLINE, || {
                let (app, want) = (app.clone(), want.clone());
                async move {
                    let got = dig_addresses(named.addr, &app).await?;
                    ensure!(got == want, "{got:?}");
                    Ok(())
                }
            })
            .await
        }
    };
    wait_for(ips(&["192.0.2.1"]), "first pass").await?;
    nsupdate(
        named.addr,
        &named.secret,
        &format!("update add {app}. 30 A 192.0.2.66"),
    )
    .await?;
    wait_for(ips(&["192.0.2.1"]), "a hand edit converges back").await?;
    desired_tx.send(DesiredState::from_iter([(
        app.as_str(),
        ips(&["192.0.2.1", "192.0.2.2"]),
    )]))?;
    wait_for(ips(&["192.0.2.1", "192.0.2.2"]), "a new desired state").await?;

    let _ = stop_tx.send(());
    tokio::time::timeout(DEADLINE, task)
        .await
        .context("the loop did not stop")??;
    Ok(())
}

/// A provider that cannot be read (wrong key) is reported per pass, counted, and sent as one
/// event, not one per pass; nothing is written.
#[tokio::test]
async fn steering_reports_a_broken_provider_once() -> Result<()> {
    if !tools_or_skip("steering_reports_a_broken_provider_once", BIND_TOOLS) {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let named = Named::start_with_records(dir.path(), "").await?;
    let manager = DnsManager::new(
        vec![rfc2136(named.addr, &tsig_secret())?],
        SteeringOptions::default(),
    );
    let mut events = manager.subscribe();
    let desired = DesiredState::from_iter([(name("app").as_str(), ips(&["192.0.2.1"]))]);
    for _ in 0..3 {
        let report = manager.reconcile(&desired).await;
        ensure!(report.provider_errors.len() == 1, "{report:?}");
        ensure!(
            matches!(report.outcome(&name("app")), Some(NameOutcome::Failed(_))),
            "{report:?}"
        );
    }
    ensure!(
        dig_addresses(named.addr, &name("app")).await?.is_empty(),
        "written anyway"
    );
    let status = manager.status();
    ensure!(status.providers[0].errors == 3, "{status:?}");
    ensure!(
        status.providers[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("TSIG key")),
        "{status:?}"
    );
    let mut failures = 0;
    while let Ok(event) = events.try_recv() {
        if matches!(event, DnsEvent::ReconcileFailed { .. }) {
            failures += 1;
        }
    }
    ensure!(failures == 1, "{failures} failure events");
    Ok(())
}
