//! `kokoa-control` in the tests: `serve` on loopback ports over a temporary data directory, a
//! JSON client for its REST API, and edges and origins started from the bundles it hands out
//! (the bundle's bootstrap TOML with the listeners moved to free loopback ports).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::client::{EdgeClient, Proto};
use crate::eventually;
use crate::net::{free_tcp, free_udp, loopback, wait_healthy};
use crate::pki::TestCa;
use crate::process::{binary, Process};
use serde_json::json;
use tempfile::TempDir;

/// A running (or stopped) `kokoa-control serve`.
pub struct Control {
    /// The data directory (database, CA); kept across restarts.
    pub data_dir: PathBuf,
    /// REST API address.
    pub api: SocketAddr,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// An API bearer token.
    pub token: String,
    key_file: PathBuf,
    log_dir: PathBuf,
    extra_args: Vec<String>,
    process: Option<Process>,
    starts: usize,
}

impl Control {
    /// Creates a data directory under `root`, a master key file and an API token (`token
    /// create` on the database, as an operator bootstraps), then starts `serve`.
    pub async fn start(root: &Path) -> anyhow::Result<Self> {
        Self::start_with(root, Vec::new()).await
    }

    /// [`Control::start`] with more `serve` flags (e.g. the `--acme-*` ones), kept for every
    /// [`Control::restart`].
    pub async fn start_with(root: &Path, extra_args: Vec<String>) -> anyhow::Result<Self> {
        let data_dir = root.join("control-data");
        let key_file = root.join("master.key");
        let mut key = [0u8; 32];
        rand::Rng::fill(&mut rand::thread_rng(), &mut key[..]);
        std::fs::write(
            &key_file,
            base64::engine::general_purpose::STANDARD.encode(key),
        )
        .context("writing the master key")?;
        let output = tokio::process::Command::new(binary("kokoa-control")?)
            .args(["token", "create", "--name", "e2e", "--data-dir"])
            .arg(&data_dir)
            .output()
            .await
            .context("running kokoa-control token create")?;
        ensure!(
            output.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let token = String::from_utf8(output.stdout)?.trim().to_owned();
        ensure!(!token.is_empty(), "token create printed no token");
        let mut control = Self {
            data_dir,
            api: free_tcp(loopback(1))?,
            grpc: free_tcp(loopback(1))?,
            token,
            key_file,
            log_dir: root.to_path_buf(),
            extra_args,
            process: None,
            starts: 0,
        };
        control.restart().await?;
        Ok(control)
    }

    /// Starts `serve` again on the same addresses and data (after [`Control::kill`]).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--master-key-file".into(),
            self.key_file.display().to_string(),
            "--api".into(),
            self.api.to_string(),
            "--grpc".into(),
            self.grpc.to_string(),
            "--grpc-name".into(),
            self.grpc.ip().to_string(),
            "--public-url".into(),
            format!("https://{}", self.grpc),
        ];
        args.extend(self.extra_args.iter().cloned());
        let mut process = Process::spawn(
            &format!("kokoa-control-{}", self.starts),
            &binary("kokoa-control")?,
            args,
            &self.log_dir,
            &[],
        )?;
        self.wait_ready(&mut process).await?;
        self.process = Some(process);
        Ok(())
    }

    /// The CA control's API certificate is signed by (`DATA_DIR/ca.crt`, written at start).
    pub fn ca_file(&self) -> PathBuf {
        self.data_dir.join("ca.crt")
    }

    /// The dashboard's URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.api)
    }

    fn tls(&self) -> anyhow::Result<tokio_rustls::TlsConnector> {
        let pem = std::fs::read(self.ca_file()).context("reading control's ca.crt")?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile_certs(&pem)? {
            roots.add(cert)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
            config,
        )))
    }

    /// Polls `GET /healthz` over TLS until control answers 200.
    async fn wait_ready(&self, process: &mut Process) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            process.check_running()?;
            if self.ca_file().exists() {
                if let Ok((200, _)) = self.request("GET", "/healthz", None, &[]).await {
                    return Ok(());
                }
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "kokoa-control never answered /healthz on https://{}\n{}",
                    self.api,
                    process.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One HTTPS request to control (any path, e.g. a dashboard page) with `headers`; the
    /// status and body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Bytes)>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, Bytes)> {
        let attempt = async {
            let tcp = TcpStream::connect(self.api)
                .await
                .with_context(|| format!("connecting to the API at {}", self.api))?;
            let name = rustls::pki_types::ServerName::IpAddress(self.api.ip().into());
            let stream = self.tls()?.connect(name, tcp).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let mut request = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", self.api.to_string());
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let payload = match body {
                Some((kind, bytes)) => {
                    request = request.header("content-type", kind);
                    bytes
                }
                None => Bytes::new(),
            };
            let response = sender
                .send_request(request.body(Full::new(payload))?)
                .await?;
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        };
        tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .with_context(|| format!("{method} {path} timed out"))?
    }

    /// The DER of the certificate control's API presents.
    pub async fn server_certificate(&self) -> anyhow::Result<Vec<u8>> {
        let tcp = TcpStream::connect(self.api).await?;
        let name = rustls::pki_types::ServerName::IpAddress(self.api.ip().into());
        let stream = self.tls()?.connect(name, tcp).await?;
        let (_, connection) = stream.get_ref();
        let chain = connection
            .peer_certificates()
            .context("control presented no certificate")?;
        Ok(chain.first().context("empty chain")?.to_vec())
    }

    /// Creates a dashboard user on control's database (`kokoa-control user add`, as an
    /// operator does for the first one) with `role`; the password.
    pub async fn add_user(&self, name: &str, role: &str) -> anyhow::Result<String> {
        let password = format!("{name}-password-{}", rand::random::<u32>());
        let output = tokio::process::Command::new(binary("kokoa-control")?)
            .args(["user", "add", name, "--role", role, "--data-dir"])
            .arg(&self.data_dir)
            .env("KOKOA_USER_PASSWORD", &password)
            .output()
            .await
            .context("running kokoa-control user add")?;
        ensure!(
            output.status.success(),
            "user add failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(password)
    }

    /// Kills control (SIGKILL: no goodbye to the nodes).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            process.signal("KILL").await?;
            process.wait_exit(Duration::from_secs(10)).await?;
        }
        Ok(())
    }

    /// The running process.
    pub fn process(&mut self) -> anyhow::Result<&mut Process> {
        self.process.as_mut().context("control is not running")
    }

    /// One REST call: status and the parsed JSON body (`Null` when empty).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let (status, bytes) = self.raw(method, path, body).await?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok((status, value))
    }

    /// A REST call that must succeed (2xx); its JSON body.
    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, value) = self.call(method, path, body).await?;
        ensure!(
            (200..300).contains(&status),
            "{method} {path} answered {status}: {value}"
        );
        Ok(value)
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let body = match body {
            Some(value) => Some(("application/json", Bytes::from(serde_json::to_vec(&value)?))),
            None => None,
        };
        let auth = format!("Bearer {}", self.token);
        self.request(
            method,
            &format!("/api/v1{path}"),
            body,
            &[("authorization", auth.as_str())],
        )
        .await
    }

    /// Runs the `kokoa-control` CLI against this control's API (`--api-url`, `--token`) with
    /// `args`; its standard output, or an error with its standard error when it fails.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            // The client flags are the subcommands' (global below them), so they come last.
            tokio::process::Command::new(binary("kokoa-control")?)
                .args(args)
                .arg("--api-url")
                .arg(self.url())
                .arg("--ca-file")
                .arg(self.ca_file())
                .arg("--token")
                .arg(&self.token)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .with_context(|| format!("kokoa-control {} timed out", args.join(" ")))?
        .context("running kokoa-control")?;
        ensure!(
            output.status.success(),
            "kokoa-control {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?)
    }

    /// Downloads a node bundle (`/origins/ID/bundle` or `/edge-nodes/ID/bundle`) and unpacks it
    /// into `dir` with tar(1) (without the bundle's top directory, `kokoa-KIND-NAME/`).
    pub async fn unpack_bundle(&self, path: &str, dir: &Path) -> anyhow::Result<()> {
        let (status, bytes) = self.raw("GET", path, None).await?;
        ensure!(
            status == 200,
            "GET {path} answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        std::fs::create_dir_all(dir)?;
        let archive = dir.join("bundle.tar.gz");
        std::fs::write(&archive, &bytes)?;
        let status = tokio::process::Command::new("tar")
            .arg("--strip-components=1")
            .arg("-xzf")
            .arg(&archive)
            .arg("-C")
            .arg(dir)
            .status()
            .await
            .context("running tar")?;
        ensure!(status.success(), "tar -xzf {} failed", archive.display());
        Ok(())
    }
}

/// The certificates of a PEM file.
fn rustls_pemfile_certs(
    pem: &[u8],
) -> anyhow::Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let text = std::str::from_utf8(pem)?;
    let mut certs = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines().map(str::trim) {
        match (line, body.as_mut()) {
            ("-----BEGIN CERTIFICATE-----", _) => body = Some(String::new()),
            ("-----END CERTIFICATE-----", Some(b64)) => {
                let der = base64::engine::general_purpose::STANDARD.decode(b64.as_bytes())?;
                certs.push(rustls::pki_types::CertificateDer::from(der));
                body = None;
            }
            (line, Some(b64)) => b64.push_str(line),
            _ => {}
        }
    }
    Ok(certs)
}

/// The id in a created object's JSON.
pub fn id(value: &Value) -> anyhow::Result<String> {
    value["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no id in {value}"))
}

/// An edge or origin started from its bundle.
pub struct Node {
    /// The process (`None` while stopped).
    pub process: Option<Process>,
    /// The bootstrap config file.
    pub config: PathBuf,
    /// Admin listener.
    pub admin: SocketAddr,
    /// TLS listener (edges).
    pub https: Option<SocketAddr>,
    /// Plain HTTP listener (edges).
    pub http: Option<SocketAddr>,
    program: &'static str,
    log_dir: PathBuf,
    name: String,
    starts: usize,
}

impl Node {
    /// Starts an edge from `/edge-nodes/{id}/bundle`, unpacked in `dir`, with its listeners on
    /// `ip` and its WireGuard port where its control endpoint says (`tunnel`).
    pub async fn edge(
        control: &Control,
        id: &str,
        dir: &Path,
        ip: IpAddr,
        tunnel: SocketAddr,
    ) -> anyhow::Result<Self> {
        control
            .unpack_bundle(&format!("/edge-nodes/{id}/bundle"), dir)
            .await?;
        Self::edge_from_dir(dir, ip, tunnel).await
    }

    /// Starts an edge from a bundle already unpacked in `dir` (see [`Node::edge`]).
    pub async fn edge_from_dir(dir: &Path, ip: IpAddr, tunnel: SocketAddr) -> anyhow::Result<Self> {
        Self::edge_from_dir_at(dir, ip, tunnel, None).await
    }

    /// [`Node::edge_from_dir`] with the plain HTTP listener at `http` when given (a port chosen
    /// before the edge starts, e.g. for an ACME server's HTTP-01 validation port).
    pub async fn edge_from_dir_at(
        dir: &Path,
        ip: IpAddr,
        tunnel: SocketAddr,
        http: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        Self::edge_from_dir_listening(dir, ip, tunnel, http, None).await
    }

    /// [`Node::edge`] with its HTTPS listener at `https` (e.g. one port on several loopback
    /// addresses, as control's health checker probes every edge's public address on one port).
    pub async fn edge_with_https(
        control: &Control,
        id: &str,
        dir: &Path,
        tunnel: SocketAddr,
        https: SocketAddr,
    ) -> anyhow::Result<Self> {
        control
            .unpack_bundle(&format!("/edge-nodes/{id}/bundle"), dir)
            .await?;
        Self::edge_from_dir_listening(dir, https.ip(), tunnel, None, Some(https)).await
    }

    async fn edge_from_dir_listening(
        dir: &Path,
        ip: IpAddr,
        tunnel: SocketAddr,
        http: Option<SocketAddr>,
        https: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        let config = dir.join("edge.toml");
        let mut table: toml::Table = std::fs::read_to_string(&config)
            .context("reading the bundle's edge.toml")?
            .parse()
            .context("parsing the bundle's edge.toml")?;
        let http = match http {
            Some(http) => http,
            None => free_tcp(ip)?,
        };
        let https = match https {
            Some(https) => https,
            None => free_tcp(ip)?,
        };
        let admin = free_tcp(loopback(1))?;
        let edge = section(&mut table, "edge")?;
        edge.insert("https".into(), https.to_string().into());
        edge.insert("http".into(), http.to_string().into());
        edge.insert("admin".into(), admin.to_string().into());
        edge.insert("drain_timeout".into(), 2.into());
        section(&mut table, "tunnel")?.insert("listen".into(), tunnel.to_string().into());
        local_state(&mut table, dir)?;
        std::fs::write(&config, toml::to_string(&table)?)?;
        let mut node = Self {
            process: None,
            config,
            admin,
            https: Some(https),
            http: Some(http),
            program: "kokoa-edge",
            log_dir: dir.to_path_buf(),
            name: format!(
                "edge-{}",
                dir.file_name().and_then(|n| n.to_str()).unwrap_or("edge")
            ),
            starts: 0,
        };
        node.start().await?;
        Ok(node)
    }

    /// Starts an origin from `/origins/{id}/bundle`, unpacked in `dir`.
    pub async fn origin(control: &Control, id: &str, dir: &Path) -> anyhow::Result<Self> {
        Self::origin_with_checks(control, id, dir, "").await
    }

    /// [`Node::origin`] with `checks` as the `[checks]` table's lines (empty: the defaults).
    pub async fn origin_with_checks(
        control: &Control,
        id: &str,
        dir: &Path,
        checks: &str,
    ) -> anyhow::Result<Self> {
        control
            .unpack_bundle(&format!("/origins/{id}/bundle"), dir)
            .await?;
        let config = dir.join("origin.toml");
        let mut table: toml::Table = std::fs::read_to_string(&config)
            .context("reading the bundle's origin.toml")?
            .parse()
            .context("parsing the bundle's origin.toml")?;
        let admin = free_tcp(loopback(1))?;
        let origin = section(&mut table, "origin")?;
        origin.insert("admin".into(), admin.to_string().into());
        origin.insert("drain_timeout".into(), 2.into());
        section(&mut table, "tunnel")?.insert("listen".into(), "127.0.0.1:0".into());
        local_state(&mut table, dir)?;
        if !checks.is_empty() {
            let checks: toml::Table = checks.parse().context("parsing the [checks] lines")?;
            table.insert("checks".into(), checks.into());
        }
        std::fs::write(&config, toml::to_string(&table)?)?;
        let mut node = Self {
            process: None,
            config,
            admin,
            https: None,
            http: None,
            program: "kokoa-origin",
            log_dir: dir.to_path_buf(),
            name: format!("origin-{id}"),
            starts: 0,
        };
        node.start().await?;
        Ok(node)
    }

    /// Starts the node (again) from its config and state directory.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let mut process = Process::spawn(
            &format!("{}-{}", self.name, self.starts),
            &binary(self.program)?,
            ["--config".to_string(), self.config.display().to_string()],
            &self.log_dir,
            &[],
        )?;
        wait_healthy(&mut process, self.admin).await?;
        self.process = Some(process);
        Ok(())
    }

    /// Kills the node (SIGKILL).
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            process.signal("KILL").await?;
            process.wait_exit(Duration::from_secs(10)).await?;
        }
        Ok(())
    }

    /// Everything the running node logged so far.
    pub fn logs(&self) -> String {
        self.process.as_ref().map(Process::logs).unwrap_or_default()
    }

    /// Fails if the node exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.process.as_mut() {
            Some(process) => process.check_running(),
            None => bail!("{} is stopped", self.name),
        }
    }
}

fn section<'a>(table: &'a mut toml::Table, name: &str) -> anyhow::Result<&'a mut toml::Table> {
    table
        .entry(name.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .with_context(|| format!("[{name}] is not a table"))
}

/// Points `[control] state_dir` into the test's directory (the bundle names /var/lib/...).
fn local_state(table: &mut toml::Table, dir: &Path) -> anyhow::Result<()> {
    section(table, "control")?.insert(
        "state_dir".into(),
        dir.join("state").display().to_string().into(),
    );
    Ok(())
}

/// How [`Fleet::start_with`] deviates from the defaults.
#[derive(Clone, Debug, Default)]
pub struct FleetOptions {
    /// More `kokoa-control serve` flags (see [`Control::start_with`]).
    pub control_args: Vec<String>,
    /// The edge's plain HTTP listener (on [`Fleet::EDGE_IP`]); default: a free port.
    pub edge_http: Option<SocketAddr>,
    /// The origins' `[checks]` lines (empty: the defaults).
    pub origin_checks: String,
}

/// Control with one edge serving the given origins, a certificate for `*.ctl.test` uploaded
/// through the API, and every node started from its bundle.
pub struct Fleet {
    /// Control.
    pub control: Control,
    /// The CA of the uploaded certificate.
    pub ca: TestCa,
    /// The edge.
    pub edge: Node,
    /// The edge's id in control.
    pub edge_id: String,
    /// Origins: id and node.
    pub origins: Vec<(String, Node)>,
    /// Holds every node's files, logs and control's data. Last, so that it is removed after
    /// the processes above are dropped and their logs read.
    pub dir: TempDir,
}

impl Fleet {
    /// Starts control, creates the origins, services and one edge serving them all through the
    /// API, uploads a certificate, starts every node from its bundle, then adds `routes`.
    /// `services`: (origin, service, port, app address); `routes`: (host, origin, service).
    pub async fn start(
        origins: &[&str],
        services: &[(&str, &str, u16, SocketAddr)],
        routes: &[(&str, &str, &str)],
    ) -> anyhow::Result<Self> {
        Self::start_with(origins, services, routes, FleetOptions::default()).await
    }

    /// The address the edge listens on (HTTPS and plain HTTP).
    pub const EDGE_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 2);

    /// [`Fleet::start`] with `options`.
    pub async fn start_with(
        origins: &[&str],
        services: &[(&str, &str, u16, SocketAddr)],
        routes: &[(&str, &str, &str)],
        options: FleetOptions,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let control = Control::start_with(dir.path(), options.control_args).await?;
        let mut origin_ids = Vec::new();
        for name in origins {
            let origin = control
                .ok("POST", "/origins", Some(json!({ "name": name })))
                .await?;
            origin_ids.push((name.to_string(), id(&origin)?));
        }
        for (origin, name, port, local) in services {
            control
                .ok(
                    "POST",
                    &format!("/origins/{origin}/services"),
                    Some(json!({ "name": name, "port": port, "local_address": local.to_string() })),
                )
                .await?;
        }
        let tunnel = free_udp(loopback(2))?;
        let edge = control
            .ok(
                "POST",
                "/edge-nodes",
                Some(json!({
                    "name": "edge1",
                    "endpoint": tunnel.to_string(),
                    "origins": origin_ids.iter().map(|(_, id)| id.clone()).collect::<Vec<_>>(),
                })),
            )
            .await?;
        let edge_id = id(&edge)?;
        let ca = TestCa::new()?;
        let issued = ca.issue(&["ctl.test", "*.ctl.test"])?;
        control
            .ok(
                "POST",
                "/certificates",
                Some(json!({ "chain_pem": issued.chain_pem, "key_pem": issued.key_pem })),
            )
            .await?;
        let mut fleet_origins = Vec::new();
        for (name, origin_id) in &origin_ids {
            let node = Node::origin_with_checks(
                &control,
                origin_id,
                &dir.path().join(name),
                &options.origin_checks,
            )
            .await?;
            fleet_origins.push((origin_id.clone(), node));
        }
        let edge_dir = dir.path().join("edge1");
        control
            .unpack_bundle(&format!("/edge-nodes/{edge_id}/bundle"), &edge_dir)
            .await?;
        let edge = Node::edge_from_dir_at(
            &edge_dir,
            IpAddr::V4(Self::EDGE_IP),
            tunnel,
            options.edge_http,
        )
        .await?;
        let fleet = Self {
            dir,
            control,
            ca,
            edge,
            edge_id,
            origins: fleet_origins,
        };
        for (host, origin, service) in routes {
            fleet.add_route(host, origin, service).await?;
        }
        Ok(fleet)
    }

    /// Adds a route `host` -> `origin`/`service` through the API; its id.
    pub async fn add_route(
        &self,
        host: &str,
        origin: &str,
        service: &str,
    ) -> anyhow::Result<String> {
        let service = self
            .control
            .ok(
                "GET",
                &format!("/origins/{origin}/services/{service}"),
                None,
            )
            .await?;
        let route = self
            .control
            .ok(
                "POST",
                "/routes",
                Some(json!({ "hostname": host, "service_id": id(&service)? })),
            )
            .await?;
        id(&route)
    }

    /// An HTTPS client for the edge, trusting the uploaded certificate's CA.
    pub fn client(&self) -> anyhow::Result<EdgeClient> {
        let https = self.edge.https.context("the edge has no https listener")?;
        EdgeClient::new(https, &self.ca)
    }

    /// Waits until `host` answers 200 through the edge with `app`'s name in the body.
    pub async fn serves(&self, host: &str, app: &str, within: Duration) -> anyhow::Result<()> {
        let client = self.client()?;
        eventually(&format!("{host} served by {app}"), within, || async {
            let answer = client.get(host, "/", Proto::Http1).await?;
            ensure!(
                answer.status == 200 && answer.text().contains(app),
                "{host}: {} {}",
                answer.status,
                answer.text()
            );
            Ok(())
        })
        .await
    }

    /// Waits until every node runs control's current config version.
    pub async fn converged(&self, within: Duration) -> anyhow::Result<u64> {
        eventually("every node on the newest config", within, || async {
            let status = self.control.ok("GET", "/status", None).await?;
            let version = status["config_version"]
                .as_u64()
                .context("config_version")?;
            let nodes = status["nodes"].as_array().context("nodes")?;
            ensure!(nodes.len() == 1 + self.origins.len(), "nodes: {status}");
            for node in nodes {
                ensure!(
                    node["applied_version"].as_u64() == Some(version),
                    "not converged on {version}: {node}"
                );
            }
            Ok(version)
        })
        .await
    }
}
