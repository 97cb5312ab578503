//! ACME in the tests: a real Pebble (Let's Encrypt's test CA) and a real BIND `named`, both
//! started on loopback ports over a test directory and killed when dropped.
//!
//! `named` serves [`ZONE`] (the apex and every name -> one loopback address) and accepts
//! TSIG-signed RFC 2136 updates and zone transfers with [`TSIG_KEY`]; Pebble resolves names
//! through it (`-dnsserver`), so its validator reaches an edge for HTTP-01 (`httpPort`) and
//! TLS-ALPN-01 (`tlsPort`) and finds the TXT records for DNS-01.
//!
//! Without `pebble` / `named` ([`tools_or_skip`]) the tests print `SKIPPED: reason` and pass,
//! except under `CI=true`, where the missing tool is a failure.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use base64::Engine as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_rustls::TlsConnector;

/// How long Pebble and named get to start, and the management API to answer.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// The zone `named` serves.
pub const ZONE: &str = "kokoa.test";
/// The TSIG key name allowed to update [`ZONE`].
pub const TSIG_KEY: &str = "kokoa-acme";

/// Debian packages that provide the tools of this module.
pub const PACKAGES: &str = "apt-get install pebble bind9 bind9-dnsutils";

/// `true` when `pebble` and `named` are installed; otherwise skips `test` (or fails it under
/// `CI=true`) through [`crate::prereq::require`].
pub fn tools_or_skip(test: &str) -> bool {
    crate::prereq::tools(test, &["pebble", "named"], PACKAGES)
}

/// [`tools_or_skip`] for any list of programs (e.g. `nsupdate` for [`Named::point`]).
pub fn tools_or_skip_of(test: &str, tools: &[&str]) -> bool {
    crate::prereq::tools(test, tools, PACKAGES)
}

/// The path of `tool` in `PATH` (or `/usr/sbin`, `/sbin`, where Debian puts `named`).
pub fn which(tool: &str) -> Option<PathBuf> {
    crate::prereq::which(tool)
}

/// A port free on 127.0.0.1 for both TCP and UDP (named listens on both), not handed out before
/// by this process.
pub fn free_port() -> Result<u16> {
    let addr = crate::net::fresh(|| {
        for _ in 0..50 {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
            let addr = udp.local_addr()?;
            if std::net::TcpListener::bind(addr).is_ok() {
                return Ok(addr);
            }
        }
        bail!("no port free for both TCP and UDP on 127.0.0.1")
    })?;
    Ok(addr.port())
}

/// Waits until `addr` accepts TCP connections, failing early when `child` exits.
pub(crate) async fn wait_listening(addr: SocketAddr, what: &str, child: &mut Child) -> Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited before listening: {status} (see its log in the test directory)");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} within {DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the DNS server at `addr` answers authoritatively for [`ZONE`]'s SOA over TCP:
/// servers listen before their zones are loaded, and answer SERVFAIL in between.
pub(crate) async fn wait_zone_loaded(addr: SocketAddr, what: &str) -> Result<()> {
    let mut query = Vec::new();
    query.extend_from_slice(&rand::random::<u16>().to_be_bytes());
    // No flags (a plain query, no recursion), one question.
    query.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ZONE.split('.') {
        query.push(u8::try_from(label.len())?);
        query.extend_from_slice(label.as_bytes());
    }
    // Root label, QTYPE SOA (6), QCLASS IN (1).
    query.extend_from_slice(&[0, 0, 6, 0, 1]);
    let ask = || async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut framed = u16::try_from(query.len())?.to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        stream.write_all(&framed).await?;
        let mut length = [0u8; 2];
        stream.read_exact(&mut length).await?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(length))];
        stream.read_exact(&mut answer).await?;
        ensure!(answer.len() >= 12, "short answer");
        let rcode = answer[3] & 0x0f;
        let authoritative = answer[2] & 0x04 != 0;
        let answers = u16::from_be_bytes([answer[6], answer[7]]);
        ensure!(
            rcode == 0 && authoritative && answers >= 1,
            "{what} does not serve {ZONE} yet (rcode {rcode})"
        );
        Ok(())
    };
    crate::eventually(&format!("{what} serves {ZONE}"), DEADLINE, ask).await
}

/// `named` serving [`ZONE`] with the apex and `*` pointing at one address, and TSIG-authorized
/// RFC 2136 updates.
pub struct Named {
    /// Where it listens (TCP and UDP).
    pub addr: SocketAddr,
    /// The TSIG secret (base64) of [`TSIG_KEY`], hmac-sha256.
    pub secret: String,
    /// Its log (`named -g` output).
    pub log: PathBuf,
    _child: Child,
}

impl Named {
    /// How many update messages `named` has accepted so far (one `signer ... approved` log
    /// line each, whether or not they changed the zone: the SOA serial only moves on a change).
    pub fn updates(&self) -> Result<usize> {
        let needle = format!("signer \"{TSIG_KEY}\" approved");
        Ok(std::fs::read_to_string(&self.log)?
            .lines()
            .filter(|line| line.contains(&needle))
            .count())
    }

    /// Starts `named` over `dir` (config, zone, journal, `named.log`), with every name in
    /// [`ZONE`] resolving to `address`.
    pub async fn start(dir: &Path, address: Ipv4Addr) -> Result<Self> {
        Self::start_with_records(dir, &format!("@ IN A {address}\n* IN A {address}\n")).await
    }

    /// Starts `named` over `dir` serving [`ZONE`] with its SOA, NS and `records` (zone-file
    /// lines, relative to the zone; empty for a zone with no address at all).
    pub async fn start_with_records(dir: &Path, records: &str) -> Result<Self> {
        let secret = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
        let d = dir.display();
        // As for Pebble: the free port may be taken before named binds it; retry with another.
        let mut attempt = 0;
        let (child, addr) = loop {
            attempt += 1;
            let port = free_port()?;
            std::fs::write(
                dir.join("named.conf"),
                format!(
                    r#"options {{
    directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
key "{TSIG_KEY}" {{ algorithm hmac-sha256; secret "{secret}"; }};
zone "{ZONE}" {{ type primary; file "{d}/{ZONE}.zone"; allow-update {{ key "{TSIG_KEY}"; }}; allow-transfer {{ key "{TSIG_KEY}"; }}; }};
"#
                ),
            )?;
            std::fs::write(
                dir.join(format!("{ZONE}.zone")),
                format!(
                    "$TTL 60\n@ IN SOA ns admin 1 60 60 600 60\n@ IN NS ns\nns IN A 127.0.0.1\n{records}"
                ),
            )?;
            let mut child = Command::new(which("named").context("named is not installed")?)
                .arg("-g")
                .arg("-c")
                .arg(dir.join("named.conf"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("named.log"))?)
                .kill_on_drop(true)
                .spawn()
                .context("starting named")?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            match wait_listening(addr, "named", &mut child).await {
                Ok(()) => {
                    wait_zone_loaded(addr, "named").await?;
                    break (child, addr);
                }
                Err(error) if attempt < 3 && child.try_wait()?.is_some() => {
                    eprintln!("named did not start ({error}), retrying with another port");
                }
                Err(error) => return Err(error),
            }
        };
        Ok(Self {
            addr,
            secret,
            log: dir.join("named.log"),
            _child: child,
        })
    }

    /// Points `name` (in [`ZONE`]) at `address` with an RFC 2136 update sent by `nsupdate`
    /// (an explicit A record, which takes precedence over the zone's wildcard).
    pub async fn point(&self, name: &str, address: Ipv4Addr) -> Result<()> {
        crate::dns::nsupdate(
            self.addr,
            &self.secret,
            &format!("update delete {name}. A\nupdate add {name}. 5 A {address}"),
        )
        .await
    }
}

/// Pebble with its own HTTPS certificate (made here), validating HTTP-01 on `httpPort` and
/// TLS-ALPN-01 on `tlsPort` of whatever address [`Named`] gives for a name.
pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// The management API (`/roots/0`: the root that signs issued certificates).
    pub management: SocketAddr,
    /// The CA of Pebble's own HTTPS listeners (PEM), for `--acme-ca-file`.
    pub ca_file: PathBuf,
    /// The same CA, DER.
    pub ca: CertificateDer<'static>,
    _child: Child,
}

impl Pebble {
    /// Starts Pebble over `dir` (its certificate, config and `pebble.log`), resolving names
    /// through `dns` and validating on `http_port` / `tls_port`. Every order validates afresh
    /// (no authorization reuse), so a renewal exercises the challenges again.
    pub async fn start(dir: &Path, dns: SocketAddr, http_port: u16, tls_port: u16) -> Result<Self> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pebble test listener CA");
        let ca = ca_params.self_signed(&ca_key)?;
        let key = rcgen::KeyPair::generate()?;
        let params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        let ca_file = dir.join("pebble-ca.pem");
        std::fs::write(&ca_file, ca.pem())?;
        std::fs::write(dir.join("pebble-cert.pem"), cert.pem())?;
        std::fs::write(dir.join("pebble-key.pem"), key.serialize_pem())?;
        // Ports are picked free and then bound by pebble: another process or test may take one
        // in between (an outgoing connection's ephemeral port), so a start that fails before
        // listening is retried with fresh ports.
        let mut attempt = 0;
        let (child, acme_port, management_port) = loop {
            attempt += 1;
            let acme_port = free_port()?;
            let management_port = loop {
                let port = free_port()?;
                if port != acme_port {
                    break port;
                }
            };
            std::fs::write(
                dir.join("pebble.json"),
                serde_json::to_string(&serde_json::json!({"pebble": {
                    "listenAddress": format!("127.0.0.1:{acme_port}"),
                    "managementListenAddress": format!("127.0.0.1:{management_port}"),
                    "certificate": dir.join("pebble-cert.pem"),
                    "privateKey": dir.join("pebble-key.pem"),
                    "httpPort": http_port,
                    "tlsPort": tls_port,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": false,
                }}))?,
            )?;
            let log = std::fs::File::create(dir.join("pebble.log"))?;
            let mut child = Command::new(which("pebble").context("pebble is not installed")?)
                .arg("-config")
                .arg(dir.join("pebble.json"))
                .arg("-dnsserver")
                .arg(dns.to_string())
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting pebble")?;
            let addr: SocketAddr = ([127, 0, 0, 1], acme_port).into();
            match wait_listening(addr, "pebble", &mut child).await {
                Ok(()) => break (child, acme_port, management_port),
                Err(error) if attempt < 3 && child.try_wait()?.is_some() => {
                    let log = std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default();
                    eprintln!("pebble did not start ({error}), retrying with other ports: {log}");
                }
                Err(error) => return Err(error),
            }
        };
        Ok(Self {
            directory: format!("https://127.0.0.1:{acme_port}/dir"),
            management: ([127, 0, 0, 1], management_port).into(),
            ca_file,
            ca: ca.der().clone(),
            _child: child,
        })
    }

    /// The root that signs this Pebble run's certificates (management API `/roots/0`).
    pub async fn root(&self) -> Result<CertificateDer<'static>> {
        let connector = TlsConnector::from(client_config(self.ca.clone(), &[])?);
        let stream = TcpStream::connect(self.management).await?;
        let mut tls = connector
            .connect(ServerName::try_from("localhost")?, stream)
            .await?;
        tls.write_all(b"GET /roots/0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        // Pebble may close without a TLS close_notify: what was read is enough.
        let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut response)).await?;
        let text = String::from_utf8_lossy(&response);
        first_pem_certificate(&text).context("no root in the management API's answer")
    }
}

/// The first `CERTIFICATE` block of a PEM text, DER.
pub fn first_pem_certificate(text: &str) -> Result<CertificateDer<'static>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = text.find(BEGIN).context("no BEGIN CERTIFICATE")? + BEGIN.len();
    let end = start + text[start..].find(END).context("no END CERTIFICATE")?;
    let body: String = text[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .context("bad base64 in the PEM certificate")?;
    Ok(CertificateDer::from(der))
}

/// A rustls client config trusting only `root` and offering `alpn`.
pub fn client_config(
    root: CertificateDer<'static>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).context("trusting the root")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
