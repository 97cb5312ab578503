//! RFC 2136 dynamic DNS updates, authenticated with TSIG (RFC 8945), over TCP to the zone's
//! primary server (BIND, Knot, PowerDNS, ...).
//!
//! Messages are built, signed and verified with `hickory-proto`; this module only frames them on
//! TCP (a two-byte length prefix, RFC 1035 section 4.2.2) and maps answers to [`DnsError`]s.
//! TCP rather than UDP: updates are rare, and TCP has no truncation or spoofed-answer concerns.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use hickory_proto::op::{update_message, Message, ResponseCode};
use hickory_proto::rr::rdata::{self, tsig::TsigAlgorithm as HickoryAlgorithm};
use hickory_proto::rr::{Name, RData, Record, RecordSet, TSigner};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use super::{DnsError, DnsProvider, RecordData};

/// Allowed clock difference between control and the DNS server, in seconds (RFC 8945
/// recommends 300).
pub const TSIG_FUDGE: u16 = 300;
/// Default time allowed for one update exchange.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Time allowed for one update exchange.
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

/// A [`DnsProvider`] sending TSIG-signed RFC 2136 updates to one zone's primary server.
pub struct Rfc2136Provider {
    server: SocketAddr,
    zone: Name,
    signer: TSigner,
    timeout: Duration,
}

impl std::fmt::Debug for Rfc2136Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rfc2136Provider")
            .field("server", &self.server)
            .field("zone", &self.zone.to_string())
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
            zone,
            signer,
            timeout: config.timeout,
        })
    }

    fn record_set(&self, name: &str, data: &RecordData, ttl: u32) -> Result<RecordSet, DnsError> {
        let owner = fqdn(name)?;
        if !self.zone.zone_of(&owner) {
            return Err(DnsError::Name {
                name: name.to_owned(),
                reason: format!("not inside the zone {} this provider updates", self.zone),
            });
        }
        let rdata = match data {
            RecordData::Txt(text) => RData::TXT(rdata::TXT::new(vec![text.clone()])),
            RecordData::A(ip) => RData::A(rdata::A(*ip)),
            RecordData::Aaaa(ip) => RData::AAAA(rdata::AAAA(*ip)),
        };
        Ok(RecordSet::from(Record::from_rdata(owner, ttl, rdata)))
    }

    /// Signs `message`, sends it, and checks the signed answer.
    async fn exchange(&self, mut message: Message, name: &str) -> Result<(), DnsError> {
        let server = self.server.to_string();
        let transport = |reason: String| DnsError::Transport {
            server: server.clone(),
            reason,
        };
        let mut verifier = message
            .finalize(&self.signer, unix_now())
            .map_err(|e| DnsError::Config(format!("signing the update: {e}")))?
            .ok_or_else(|| DnsError::Config("TSIG signing produced no verifier".into()))?;
        let bytes = message
            .to_vec()
            .map_err(|e| transport(format!("encoding the update: {e}")))?;
        let length = u16::try_from(bytes.len())
            .map_err(|_| transport("the update is larger than 64 KiB".into()))?;
        let answer = tokio::time::timeout(self.timeout, async {
            let mut stream = TcpStream::connect(self.server)
                .await
                .map_err(|e| transport(format!("connect: {e}")))?;
            let mut framed = Vec::with_capacity(bytes.len() + 2);
            framed.extend_from_slice(&length.to_be_bytes());
            framed.extend_from_slice(&bytes);
            stream
                .write_all(&framed)
                .await
                .map_err(|e| transport(format!("send: {e}")))?;
            let mut prefix = [0u8; 2];
            stream
                .read_exact(&mut prefix)
                .await
                .map_err(|e| transport(format!("receive: {e}")))?;
            let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
            stream
                .read_exact(&mut answer)
                .await
                .map_err(|e| transport(format!("receive: {e}")))?;
            Ok::<_, DnsError>(answer)
        })
        .await
        .map_err(|_| transport(format!("no answer within {:?}", self.timeout)))??;

        // An unsigned error answer (e.g. NOTAUTH for a key the server does not know) cannot be
        // verified; report its code rather than a signature error.
        let unverified = Message::from_vec(&answer)
            .map_err(|e| transport(format!("undecodable answer: {e}")))?;
        if unverified.metadata.id != message.metadata.id {
            return Err(transport(
                "the answer's id does not match the update".into(),
            ));
        }
        let rcode = unverified.metadata.response_code;
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
}

#[async_trait]
impl DnsProvider for Rfc2136Provider {
    async fn add_record(&self, name: &str, data: &RecordData, ttl: u32) -> Result<(), DnsError> {
        let rrset = self.record_set(name, data, ttl)?;
        let message = update_message::append(rrset, self.zone.clone(), false, false);
        self.exchange(message, name).await?;
        tracing::info!(name, record = %data, ttl, zone = %self.zone, "DNS record added");
        Ok(())
    }

    async fn remove_record(&self, name: &str, data: &RecordData) -> Result<(), DnsError> {
        let rrset = self.record_set(name, data, 0)?;
        let message = update_message::delete_by_rdata(rrset, self.zone.clone(), false);
        self.exchange(message, name).await?;
        tracing::info!(name, record = %data, zone = %self.zone, "DNS record removed");
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
