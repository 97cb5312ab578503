//! RFC 2136 dynamic DNS updates, authenticated with TSIG (RFC 8945), over TCP to the zone's
//! primary server (BIND, Knot, PowerDNS with `dnsupdate=yes`, ...).
//!
//! Messages are built, signed and verified with `hickory-proto`; this module only frames them on
//! TCP (a two-byte length prefix, RFC 1035 section 4.2.2) and maps answers to [`DnsError`]s.
//! TCP rather than UDP: updates are rare, and TCP has no truncation or spoofed-answer concerns.
//!
//! Records are read back with a TSIG-signed zone transfer (AXFR), not with queries: a query
//! for a name that has no records of its own is answered from the zone's wildcard, and the
//! provider must tell "holds these addresses" from "matches `*`". The TSIG key therefore needs
//! transfer rights as well as update rights. One transfer serves a whole reconcile pass
//! ([`DnsProvider::records_of`]).
//!
//! An address-set change is one update message: for each family that changes, "delete the
//! RRset" followed by "add" of every wanted address. The server applies a message atomically,
//! so resolvers never see the name without addresses in between.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use hickory_proto::op::{update_message, Message, OpCode, Query, ResponseCode, UpdateMessage as _};
use hickory_proto::rr::rdata::{self, tsig::TsigAlgorithm as HickoryAlgorithm};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordSet, RecordType, TSigner};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use super::{normalize_name, AddressChange, DnsError, DnsProvider, DnsRecord, RecordData};

/// Allowed clock difference between control and the DNS server, in seconds (RFC 8945
/// recommends 300).
pub const TSIG_FUDGE: u16 = 300;
/// Default time allowed for one exchange (an update, or a whole zone transfer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes a zone transfer may bring (all its messages together); a bigger zone is
/// refused with an error rather than held in memory.
pub const MAX_TRANSFER_BYTES: usize = 64 * 1024 * 1024;

/// The TSIG MAC algorithm (the `algorithm` of a BIND `key` statement).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TsigAlgorithm {
    /// `hmac-sha256` (the usual choice, `tsig-keygen`'s default).
    #[default]
    HmacSha256,
    /// `hmac-sha384`.
    HmacSha384,
    /// `hmac-sha512`.
    HmacSha512,
}

impl FromStr for TsigAlgorithm {
    type Err = DnsError;

    fn from_str(s: &str) -> Result<Self, DnsError> {
        match s.trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha256" => Ok(TsigAlgorithm::HmacSha256),
            "hmac-sha384" => Ok(TsigAlgorithm::HmacSha384),
            "hmac-sha512" => Ok(TsigAlgorithm::HmacSha512),
            other => Err(DnsError::Config(format!(
                "TSIG algorithm {other:?} is not supported; use hmac-sha256, hmac-sha384 or hmac-sha512"
            ))),
        }
    }
}

impl TsigAlgorithm {
    fn hickory(self) -> HickoryAlgorithm {
        match self {
            TsigAlgorithm::HmacSha256 => HickoryAlgorithm::HmacSha256,
            TsigAlgorithm::HmacSha384 => HickoryAlgorithm::HmacSha384,
            TsigAlgorithm::HmacSha512 => HickoryAlgorithm::HmacSha512,
        }
    }
}

/// Where and how to send updates. `Debug` does not print the secret.
#[derive(Clone)]
pub struct Rfc2136Config {
    /// The zone's primary server (`ip:port`, port usually 53).
    pub server: SocketAddr,
    /// The zone to update (e.g. `example.com`); every name must be inside it.
    pub zone: String,
    /// The TSIG key's name (the name of the `key` statement on the server).
    pub key_name: String,
    /// The TSIG algorithm.
    pub algorithm: TsigAlgorithm,
    /// The TSIG secret, base64 (the `secret` of the `key` statement).
    pub secret_base64: Zeroizing<String>,
    /// Time allowed for one exchange (an update, or a whole zone transfer).
    pub timeout: Duration,
}

impl std::fmt::Debug for Rfc2136Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136Config")
            .field("server", &self.server)
            .field("zone", &self.zone)
            .field("key_name", &self.key_name)
            .field("algorithm", &self.algorithm)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A [`DnsProvider`] sending TSIG-signed RFC 2136 updates to one zone's primary server and
/// reading the zone back with TSIG-signed AXFR.
pub struct Rfc2136Provider {
    server: SocketAddr,
    zone: Name,
    zone_name: String,
    signer: TSigner,
    timeout: Duration,
}

impl std::fmt::Debug for Rfc2136Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136Provider")
            .field("server", &self.server)
            .field("zone", &self.zone_name)
            .finish_non_exhaustive()
    }
}

fn fqdn(name: &str) -> Result<Name, DnsError> {
    let mut parsed = Name::from_ascii(name).map_err(|e| DnsError::Name {
        name: name.to_owned(),
        reason: format!("not a valid DNS name: {e}"),
    })?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `name` as the provider reports it: lower case, no trailing dot.
fn plain(name: &Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

fn rdata(data: &RecordData) -> Result<RData, DnsError> {
    Ok(match data {
        RecordData::Txt(text) => RData::TXT(rdata::TXT::new(vec![text.clone()])),
        RecordData::A(ip) => RData::A(rdata::A(*ip)),
        RecordData::Aaaa(ip) => RData::AAAA(rdata::AAAA(*ip)),
        RecordData::Cname(target) => RData::CNAME(rdata::CNAME(fqdn(target)?)),
    })
}

/// The provider's view of a transferred record, for the types it reads.
fn record_of(record: &Record) -> Option<DnsRecord> {
    let data = match &record.data {
        RData::A(a) => RecordData::A(a.0),
        RData::AAAA(aaaa) => RecordData::Aaaa(aaaa.0),
        RData::TXT(txt) => RecordData::Txt(
            txt.txt_data
                .iter()
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect(),
        ),
        RData::CNAME(target) => RecordData::Cname(plain(&target.0)),
        _ => return None,
    };
    Some(DnsRecord {
        name: plain(&record.name),
        ttl: record.ttl,
        data,
    })
}

/// A TCP connection to the server speaking length-prefixed DNS messages.
struct Connection {
    stream: TcpStream,
    server: String,
}

impl Connection {
    async fn open(server: SocketAddr) -> Result<Self, DnsError> {
        let stream = TcpStream::connect(server)
            .await
            .map_err(|e| DnsError::Transport {
                server: server.to_string(),
                reason: format!("connect: {e}"),
            })?;
        Ok(Self {
            stream,
            server: server.to_string(),
        })
    }

    fn fail(&self, reason: String) -> DnsError {
        DnsError::Transport {
            server: self.server.clone(),
            reason,
        }
    }

    async fn send(&mut self, message: &Message) -> Result<(), DnsError> {
        let bytes = message
            .to_vec()
            .map_err(|e| self.fail(format!("encoding the message: {e}")))?;
        let length = u16::try_from(bytes.len())
            .map_err(|_| self.fail("the message is larger than 64 KiB".into()))?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(&bytes);
        self.stream
            .write_all(&framed)
            .await
            .map_err(|e| self.fail(format!("send: {e}")))
    }

    async fn receive(&mut self) -> Result<Vec<u8>, DnsError> {
        let mut prefix = [0u8; 2];
        self.stream
            .read_exact(&mut prefix)
            .await
            .map_err(|e| self.fail(format!("receive: {e}")))?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        self.stream
            .read_exact(&mut answer)
            .await
            .map_err(|e| self.fail(format!("receive: {e}")))?;
        Ok(answer)
    }
}

impl Rfc2136Provider {
    /// A provider for `config`. Fails on a bad zone or key name or a secret that is not base64.
    pub fn new(config: Rfc2136Config) -> Result<Self, DnsError> {
        let zone = fqdn(&config.zone)?;
        let key_name = fqdn(&config.key_name)?;
        let secret = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(config.secret_base64.trim())
                .map_err(|e| DnsError::Config(format!("the TSIG secret is not base64: {e}")))?,
        );
        if secret.is_empty() {
            return Err(DnsError::Config("the TSIG secret is empty".into()));
        }
        let signer = TSigner::new(
            secret.to_vec(),
            config.algorithm.hickory(),
            key_name,
            TSIG_FUDGE,
        )
        .map_err(|e| DnsError::Config(format!("TSIG key: {e}")))?;
        Ok(Self {
            server: config.server,
            zone_name: plain(&zone),
            zone,
            signer,
            timeout: config.timeout,
        })
    }

    /// `name` (normalized and checked against the zone) as a hickory name.
    fn owner(&self, name: &str) -> Result<(String, Name), DnsError> {
        let normalized = normalize_name(name, &self.zone_name)?;
        let owner = fqdn(&normalized)?;
        Ok((normalized, owner))
    }

    fn record_set(&self, name: &str, data: &RecordData, ttl: u32) -> Result<RecordSet, DnsError> {
        let (_, owner) = self.owner(name)?;
        Ok(RecordSet::from(Record::from_rdata(
            owner,
            ttl,
            rdata(data)?,
        )))
    }

    /// An empty update message for the zone.
    fn update_message(&self) -> Message {
        let mut zone = Query::new();
        zone.set_name(self.zone.clone())
            .set_query_class(DNSClass::IN)
            .set_query_type(RecordType::SOA);
        let mut message = Message::query();
        message.metadata.op_code = OpCode::Update;
        message.metadata.recursion_desired = false;
        message.add_zone(zone);
        message
    }

    /// Signs `message`, sends it, and checks the signed answer.
    async fn exchange(&self, mut message: Message, name: &str) -> Result<(), DnsError> {
        let server = self.server.to_string();
        let mut verifier = message
            .finalize(&self.signer, unix_now())
            .map_err(|e| DnsError::Config(format!("signing the update: {e}")))?
            .ok_or_else(|| DnsError::Config("TSIG signing produced no verifier".into()))?;
        let answer = tokio::time::timeout(self.timeout, async {
            let mut connection = Connection::open(self.server).await?;
            connection.send(&message).await?;
            connection.receive().await
        })
        .await
        .map_err(|_| DnsError::Transport {
            server: server.clone(),
            reason: format!("no answer within {:?}", self.timeout),
        })??;

        // An unsigned error answer (e.g. NOTAUTH for a key the server does not know) cannot be
        // verified; report its code rather than a signature error.
        let unverified = Message::from_vec(&answer).map_err(|e| DnsError::Transport {
            server: server.clone(),
            reason: format!("undecodable answer: {e}"),
        })?;
        if unverified.metadata.id != message.metadata.id {
            return Err(DnsError::Transport {
                server,
                reason: "the answer's id does not match the update".into(),
            });
        }
        let rcode = unverified.metadata.response_code;
        if rcode == ResponseCode::NotAuth {
            return Err(DnsError::KeyRejected {
                server,
                rcode: rcode.to_string(),
            });
        }
        if unverified.signature().is_none() && rcode != ResponseCode::NoError {
            return Err(DnsError::Refused {
                server,
                name: name.to_owned(),
                rcode: rcode.to_string(),
            });
        }
        let verified = verifier
            .verify(&answer)
            .map_err(|e| DnsError::BadSignature {
                server: server.clone(),
                reason: e.to_string(),
            })?;
        let rcode = verified.metadata.response_code;
        if rcode != ResponseCode::NoError {
            return Err(DnsError::Refused {
                server,
                name: name.to_owned(),
                rcode: rcode.to_string(),
            });
        }
        Ok(())
    }

    /// The whole zone, by a TSIG-signed AXFR: every message's signature is verified (chained,
    /// RFC 8945 section 5.3.1), and the transfer must end with the zone's SOA within the
    /// timeout and [`MAX_TRANSFER_BYTES`].
    pub async fn transfer(&self) -> Result<Vec<DnsRecord>, DnsError> {
        let server = self.server.to_string();
        let mut message = update_message::zone_transfer(self.zone.clone(), None);
        let mut verifier = message
            .finalize(&self.signer, unix_now())
            .map_err(|e| DnsError::Config(format!("signing the transfer request: {e}")))?
            .ok_or_else(|| DnsError::Config("TSIG signing produced no verifier".into()))?;
        let id = message.metadata.id;
        let transfer = async {
            let mut connection = Connection::open(self.server).await?;
            connection.send(&message).await?;
            let mut records = Vec::new();
            let mut soa_seen = 0usize;
            let mut bytes = 0usize;
            let mut first = true;
            while soa_seen < 2 {
                let answer = connection.receive().await?;
                bytes += answer.len();
                if bytes > MAX_TRANSFER_BYTES {
                    return Err(connection.fail(format!(
                        "the zone transfer of {} is larger than {MAX_TRANSFER_BYTES} bytes",
                        self.zone_name
                    )));
                }
                let unverified = Message::from_vec(&answer)
                    .map_err(|e| connection.fail(format!("undecodable transfer message: {e}")))?;
                if unverified.metadata.id != id {
                    return Err(connection.fail("a transfer message's id does not match".into()));
                }
                let rcode = unverified.metadata.response_code;
                if rcode == ResponseCode::NotAuth {
                    return Err(DnsError::KeyRejected {
                        server: server.clone(),
                        rcode: rcode.to_string(),
                    });
                }
                if first && unverified.signature().is_none() && rcode != ResponseCode::NoError {
                    return Err(DnsError::TransferRefused {
                        server: server.clone(),
                        zone: self.zone_name.clone(),
                        rcode: rcode.to_string(),
                    });
                }
                let verified = verifier
                    .verify(&answer)
                    .map_err(|e| DnsError::BadSignature {
                        server: server.clone(),
                        reason: e.to_string(),
                    })?;
                if verified.metadata.response_code != ResponseCode::NoError {
                    return Err(DnsError::TransferRefused {
                        server: server.clone(),
                        zone: self.zone_name.clone(),
                        rcode: verified.metadata.response_code.to_string(),
                    });
                }
                if first && verified.answers.is_empty() {
                    return Err(connection.fail("the zone transfer began with no records".into()));
                }
                for record in &verified.answers {
                    if record.record_type() == RecordType::SOA {
                        soa_seen += 1;
                    } else if let Some(record) = record_of(record) {
                        records.push(record);
                    }
                }
                first = false;
            }
            Ok(records)
        };
        tokio::time::timeout(self.timeout, transfer)
            .await
            .map_err(|_| DnsError::Transport {
                server,
                reason: format!(
                    "the zone transfer of {} did not finish within {:?}",
                    self.zone_name, self.timeout
                ),
            })?
    }
}

#[async_trait]
impl DnsProvider for Rfc2136Provider {
    fn kind(&self) -> &'static str {
        "rfc2136"
    }

    fn zone(&self) -> &str {
        &self.zone_name
    }

    async fn records(&self, name: &str) -> Result<Vec<DnsRecord>, DnsError> {
        let (name, _) = self.owner(name)?;
        let mut records = self.transfer().await?;
        records.retain(|record| record.name == name);
        Ok(records)
    }

    async fn records_of(
        &self,
        names: &[String],
    ) -> Result<BTreeMap<String, Vec<DnsRecord>>, DnsError> {
        let mut all: BTreeMap<String, Vec<DnsRecord>> = BTreeMap::new();
        for name in names {
            all.insert(self.owner(name)?.0, Vec::new());
        }
        if all.is_empty() {
            return Ok(all);
        }
        for record in self.transfer().await? {
            if let Some(records) = all.get_mut(&record.name) {
                records.push(record);
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
        let (name, owner) = self.owner(name)?;
        let current = self.records(&name).await?;
        let change = AddressChange::plan(&current, addresses, ttl);
        if change.is_empty() {
            return Ok(change);
        }
        let mut message = self.update_message();
        for (v4, record_type) in [(true, RecordType::A), (false, RecordType::AAAA)] {
            if !change.touches_family(v4) {
                continue;
            }
            // RFC 2136 section 2.5.2: delete the RRset (class ANY, TTL 0, empty RDATA), then
            // add every wanted address: one atomic replacement.
            let mut delete = Record::from_rdata(owner.clone(), 0, RData::Update0(record_type));
            delete.dns_class = DNSClass::ANY;
            message.add_update(delete);
            for ip in addresses.iter().filter(|ip| ip.is_ipv4() == v4) {
                message.add_update(Record::from_rdata(
                    owner.clone(),
                    ttl,
                    rdata(&RecordData::from_address(*ip))?,
                ));
            }
        }
        self.exchange(message, &name).await?;
        tracing::debug!(
            name,
            zone = %self.zone_name,
            added = ?change.added,
            removed = ?change.removed,
            retimed = ?change.retimed,
            ttl,
            "DNS addresses updated"
        );
        Ok(change)
    }

    async fn add_record(&self, name: &str, data: &RecordData, ttl: u32) -> Result<(), DnsError> {
        let rrset = self.record_set(name, data, ttl)?;
        let message = update_message::append(rrset, self.zone.clone(), false, false);
        self.exchange(message, name).await?;
        tracing::info!(name, record = %data, ttl, zone = %self.zone_name, "DNS record added");
        Ok(())
    }

    async fn remove_record(&self, name: &str, data: &RecordData) -> Result<(), DnsError> {
        let rrset = self.record_set(name, data, 0)?;
        let message = update_message::delete_by_rdata(rrset, self.zone.clone(), false);
        self.exchange(message, name).await?;
        tracing::info!(name, record = %data, zone = %self.zone_name, "DNS record removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(zone: &str, secret: &str) -> Rfc2136Config {
        Rfc2136Config {
            server: "127.0.0.1:53".parse().unwrap(),
            zone: zone.into(),
            key_name: "kokoa-acme".into(),
            algorithm: TsigAlgorithm::HmacSha256,
            secret_base64: Zeroizing::new(secret.into()),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    #[test]
    fn names_outside_the_zone_and_bad_secrets_are_refused() {
        assert!(matches!(
            Rfc2136Provider::new(config("kokoa.test", "not base64!")),
            Err(DnsError::Config(_))
        ));
        let provider = Rfc2136Provider::new(config("kokoa.test", "c2VjcmV0")).unwrap();
        let data = RecordData::Txt("x".into());
        assert!(provider
            .record_set("_acme-challenge.a.kokoa.test", &data, 60)
            .is_ok());
        assert!(matches!(
            provider.record_set("a.example.com", &data, 60),
            Err(DnsError::Name { .. })
        ));
        assert_eq!(
            "HMAC-SHA512.".parse::<TsigAlgorithm>().unwrap(),
            TsigAlgorithm::HmacSha512
        );
        assert!("hmac-md5".parse::<TsigAlgorithm>().is_err());
    }
}
