//! Authoritative DNS servers for the DNS provider and steering tests, each started on free
//! loopback ports over a test directory and killed when dropped: BIND `named` is
//! [`crate::acme::Named`]; here are Knot ([`Knot`]) and the PowerDNS Authoritative Server with
//! its HTTP API and an SQLite backend ([`PowerDns`]). [`dig`] and [`nsupdate`] look at and
//! change a zone behind a provider's back, the way an operator would.
//!
//! Every server serves [`crate::acme::ZONE`]; Knot accepts TSIG-signed updates and transfers
//! with [`crate::acme::TSIG_KEY`] (hmac-sha256), like `named`.
//!
//! Without the programs ([`tools_or_skip`]) the tests print `SKIPPED: reason` and pass, except
//! under `CI=true`, where the missing tool is a failure.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::acme::{free_port, wait_listening, wait_zone_loaded, which, DEADLINE, TSIG_KEY, ZONE};

/// Debian packages that provide the tools of this module.
pub const PACKAGES: &str =
    "apt-get install bind9 bind9-dnsutils knot pdns-server pdns-backend-sqlite3 sqlite3";

/// Where Debian's `pdns-backend-sqlite3` puts the schema of a new database.
const PDNS_SCHEMAS: [&str; 2] = [
    "/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql",
    "/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql",
];

/// `true` when every program of `tools` is installed; otherwise skips `test` (or fails it under
/// `CI=true`) through [`crate::prereq::require`].
pub fn tools_or_skip(test: &str, tools: &[&str]) -> bool {
    crate::prereq::tools(test, tools, PACKAGES)
}

/// A fresh base64 TSIG secret (32 random bytes).
pub fn tsig_secret() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
}

/// The SOA, NS and glue every test zone starts with, then `records` (zone-file lines relative to
/// the zone).
pub fn zone_file(records: &str) -> String {
    format!(
        "$ORIGIN {ZONE}.\n$TTL 60\n@ IN SOA ns admin 1 60 60 600 60\n@ IN NS ns\n\
         ns IN A 127.0.0.1\n{records}"
    )
}

/// The answer section of `dig` for `name`/`record_type` asked of `server` without recursion:
/// `(ttl, data)` per record, sorted. Data is in presentation form (`192.0.2.1`, `"text"`).
pub async fn dig(server: SocketAddr, name: &str, record_type: &str) -> Result<Vec<(u32, String)>> {
    let output = tokio::time::timeout(
        DEADLINE,
        Command::new(which("dig").context("dig is not installed")?)
            .arg(format!("@{}", server.ip()))
            .arg("-p")
            .arg(server.port().to_string())
            .args(["+norec", "+noall", "+answer", "+time=2", "+tries=2"])
            .arg(name)
            .arg(record_type)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("dig did not finish")??;
    ensure!(
        output.status.success(),
        "dig {name} {record_type} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut answers = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // owner TTL class type data...
        if fields.len() >= 5 && fields[3].eq_ignore_ascii_case(record_type) {
            let ttl: u32 = fields[1].parse().context("dig printed a bad TTL")?;
            answers.push((ttl, fields[4..].join(" ")));
        }
    }
    answers.sort();
    Ok(answers)
}

/// The A and AAAA addresses `server` answers for `name`.
pub async fn dig_addresses(server: SocketAddr, name: &str) -> Result<BTreeSet<IpAddr>> {
    let mut all = BTreeSet::new();
    for record_type in ["A", "AAAA"] {
        for (_, data) in dig(server, name, record_type).await? {
            all.insert(data.parse().context("dig printed a bad address")?);
        }
    }
    Ok(all)
}

/// The serial of the zone's SOA at `server`: it moves on every change of the zone, so an
/// unchanged serial proves that nothing was written.
pub async fn soa_serial(server: SocketAddr) -> Result<u32> {
    let answers = dig(server, ZONE, "SOA").await?;
    let (_, soa) = answers.first().context("no SOA in the answer")?;
    soa.split_whitespace()
        .nth(2)
        .context("short SOA")?
        .parse()
        .context("bad SOA serial")
}

/// Sends `commands` (nsupdate lines such as `update add app.kokoa.test. 60 A 192.0.2.9`) to
/// `server` for [`ZONE`], signed with [`TSIG_KEY`] and `secret`.
pub async fn nsupdate(server: SocketAddr, secret: &str, commands: &str) -> Result<()> {
    let script = format!(
        "server {} {}\nzone {ZONE}\n{commands}\nsend\n",
        server.ip(),
        server.port()
    );
    let mut child = Command::new(which("nsupdate").context("nsupdate is not installed")?)
        .arg("-y")
        .arg(format!("hmac-sha256:{TSIG_KEY}:{secret}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting nsupdate")?;
    child
        .stdin
        .take()
        .context("nsupdate stdin")?
        .write_all(script.as_bytes())
        .await?;
    let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .context("nsupdate did not finish")??;
    ensure!(
        output.status.success(),
        "nsupdate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Knot DNS serving [`ZONE`], taking TSIG-signed updates and transfers with [`TSIG_KEY`].
pub struct Knot {
    /// Where it listens (TCP and UDP).
    pub addr: SocketAddr,
    /// The TSIG secret (base64) of [`TSIG_KEY`], hmac-sha256.
    pub secret: String,
    /// Its log.
    pub log: PathBuf,
    _child: Child,
}

impl Knot {
    /// How many update messages `knotd` has processed so far (one `DDNS, processing` log line
    /// each, whether or not they changed the zone).
    pub fn updates(&self) -> Result<usize> {
        Ok(std::fs::read_to_string(&self.log)?
            .lines()
            .filter(|line| line.contains("DDNS, processing"))
            .count())
    }

    /// Starts `knotd` over `dir/knot` (config, zone, databases, `knotd.log`) with the zone's
    /// SOA, NS and `records`.
    pub async fn start(dir: &Path, records: &str) -> Result<Self> {
        let dir = dir.join("knot");
        // knotd does not create its database directory; without it updates fail (SERVFAIL).
        std::fs::create_dir_all(dir.join("db"))?;
        let secret = tsig_secret();
        std::fs::write(dir.join(format!("{ZONE}.zone")), zone_file(records))?;
        let d = dir.display();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            std::fs::write(
                dir.join("knot.conf"),
                format!(
                    r#"server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}
log:
  - target: stderr
    any: info
database:
    storage: "{d}/db"
key:
  - id: {TSIG_KEY}
    algorithm: hmac-sha256
    secret: {secret}
acl:
  - id: kokoa
    key: {TSIG_KEY}
    action: [update, transfer]
zone:
  - domain: {ZONE}
    storage: "{d}"
    file: "{ZONE}.zone"
    zonefile-sync: -1
    acl: kokoa
"#
                ),
            )?;
            let mut child = Command::new(which("knotd").context("knotd is not installed")?)
                .arg("-c")
                .arg(dir.join("knot.conf"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("knotd.log"))?)
                .kill_on_drop(true)
                .spawn()
                .context("starting knotd")?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            match wait_listening(addr, "knotd", &mut child).await {
                Ok(()) => {
                    wait_zone_loaded(addr, "knotd").await?;
                    return Ok(Self {
                        addr,
                        secret,
                        log: dir.join("knotd.log"),
                        _child: child,
                    });
                }
                Err(error) if attempt < 3 && child.try_wait()?.is_some() => {
                    eprintln!("knotd did not start ({error}), retrying with another port");
                }
                Err(error) => {
                    let log = std::fs::read_to_string(dir.join("knotd.log")).unwrap_or_default();
                    return Err(error.context(log));
                }
            }
        }
    }
}

/// The PowerDNS Authoritative Server with its HTTP API on, serving [`ZONE`] (created through
/// the API) from an SQLite database.
pub struct PowerDns {
    /// Where it answers DNS (TCP and UDP).
    pub dns: SocketAddr,
    /// The API's base URL (`http://127.0.0.1:PORT`).
    pub api_url: String,
    /// The API key.
    pub api_key: String,
    web: SocketAddr,
    _child: Child,
}

impl PowerDns {
    /// Starts `pdns_server` over `dir/pdns` (config, database, `pdns.log`) and creates
    /// [`ZONE`] with its NS through the API.
    pub async fn start(dir: &Path) -> Result<Self> {
        let dir = dir.join("pdns");
        std::fs::create_dir_all(&dir)?;
        let database = dir.join("pdns.sqlite3");
        let schema = PDNS_SCHEMAS
            .iter()
            .map(PathBuf::from)
            .find(|path| path.is_file())
            .context(
                "the PowerDNS SQLite schema is missing (apt-get install pdns-backend-sqlite3)",
            )?;
        let output = Command::new(which("sqlite3").context("sqlite3 is not installed")?)
            .arg(&database)
            .arg(format!(".read {}", schema.display()))
            .output()
            .await
            .context("running sqlite3")?;
        ensure!(
            output.status.success(),
            "creating the PowerDNS database failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let api_key = tsig_secret();
        let d = dir.display();
        let mut attempt = 0;
        let (child, dns, web) = loop {
            attempt += 1;
            let port = free_port()?;
            let web_port = free_port()?;
            std::fs::write(
                dir.join("pdns.conf"),
                format!(
                    "launch=gsqlite3\ngsqlite3-database={}\nlocal-address=127.0.0.1\n\
                     local-port={port}\nsocket-dir={d}\napi=yes\napi-key={api_key}\n\
                     webserver=yes\nwebserver-address=127.0.0.1\nwebserver-port={web_port}\n\
                     webserver-allow-from=127.0.0.1/32\ndaemon=no\nguardian=no\n\
                     disable-syslog=yes\nloglevel=5\n",
                    database.display()
                ),
            )?;
            let mut child =
                Command::new(which("pdns_server").context("pdns_server is not installed")?)
                    .arg(format!("--config-dir={d}"))
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(dir.join("pdns.log"))?)
                    .kill_on_drop(true)
                    .spawn()
                    .context("starting pdns_server")?;
            let dns: SocketAddr = ([127, 0, 0, 1], port).into();
            let web: SocketAddr = ([127, 0, 0, 1], web_port).into();
            let started = async {
                wait_listening(web, "pdns_server (webserver)", &mut child).await?;
                wait_listening(dns, "pdns_server (DNS)", &mut child).await
            };
            match started.await {
                Ok(()) => break (child, dns, web),
                Err(error) if attempt < 3 && child.try_wait()?.is_some() => {
                    eprintln!("pdns_server did not start ({error}), retrying with other ports");
                }
                Err(error) => {
                    let log = std::fs::read_to_string(dir.join("pdns.log")).unwrap_or_default();
                    return Err(error.context(log));
                }
            }
        };
        let pdns = Self {
            dns,
            api_url: format!("http://{web}"),
            api_key,
            web,
            _child: child,
        };
        let (status, body) = pdns
            .api(
                "POST",
                "/api/v1/servers/localhost/zones",
                Some(serde_json::json!({
                    "name": format!("{ZONE}."),
                    "kind": "Native",
                    "nameservers": [format!("ns.{ZONE}.")],
                })),
            )
            .await?;
        ensure!(status == 201, "creating the zone answered {status}: {body}");
        Ok(pdns)
    }

    /// One call to the API with the right key: status and JSON body (`Null` when empty).
    pub async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        http_json(
            self.web,
            method,
            path,
            &[("x-api-key", &self.api_key)],
            body,
        )
        .await
    }

    /// Replaces the RRset `name`/`record_type` with `contents` (empty: deletes it), as an
    /// operator would through the API.
    pub async fn set_rrset(
        &self,
        name: &str,
        record_type: &str,
        ttl: u32,
        contents: &[&str],
    ) -> Result<()> {
        let rrset = if contents.is_empty() {
            serde_json::json!({"name": format!("{name}."), "type": record_type, "changetype": "DELETE"})
        } else {
            serde_json::json!({
                "name": format!("{name}."),
                "type": record_type,
                "ttl": ttl,
                "changetype": "REPLACE",
                "records": contents.iter().map(|c| serde_json::json!({"content": c, "disabled": false})).collect::<Vec<_>>(),
            })
        };
        let (status, body) = self
            .api(
                "PATCH",
                &format!("/api/v1/servers/localhost/zones/{ZONE}."),
                Some(serde_json::json!({ "rrsets": [rrset] })),
            )
            .await?;
        ensure!(status == 204, "PATCH answered {status}: {body}");
        Ok(())
    }
}

/// One HTTP/1.1 request to `addr` with a JSON body: status and JSON answer (`Null` when empty,
/// a string when not JSON).
pub async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Result<(u16, Value)> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let payload = match body {
            Some(value) => {
                request = request.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(&value)?)
            }
            None => Bytes::new(),
        };
        let response = sender
            .send_request(request.body(Full::new(payload))?)
            .await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        anyhow::Ok((status, value))
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(result) => result,
        Err(_) => bail!("{method} {path} to {addr} timed out"),
    }
}
