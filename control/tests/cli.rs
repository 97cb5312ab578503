//! The `kokoa-control` binary end to end on loopback: `token create` on a fresh data
//! directory, `serve` (REST + gRPC on ephemeral ports), then the operator commands against it,
//! and SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use kokoa_proto::v1 as pb;
use kokoa_proto::v1::config_client::ConfigClient;
use kokoa_proto::v1::enrollment_client::EnrollmentClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const BIN: &str = env!("CARGO_BIN_EXE_kokoa-control");

fn master_key() -> String {
    kokoa_control::store::MasterKey::generate().to_base64()
}

/// Runs one CLI command against `api` with `token`.
fn cli(api: &str, token: &str, args: &[&str]) -> Result<Output> {
    let output = Command::new(BIN)
        .args(args)
        .env("KOKOA_API_URL", api)
        .env("KOKOA_API_TOKEN", token)
        .env_remove("KOKOA_MASTER_KEY")
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("running kokoa-control {args:?}"))?;
    Ok(output)
}

/// Runs a command that must succeed; returns its stdout.
fn ok(api: &str, token: &str, args: &[&str]) -> Result<String> {
    let output = cli(api, token, args)?;
    ensure!(
        output.status.success(),
        "kokoa-control {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// `serve` running in the background; killed on drop if still running.
struct Control {
    child: Child,
    api: String,
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POSTs JSON to the API with a bearer token over a plain HTTP/1.1 connection; the status.
fn post_json(api: &str, token: &str, path: &str, body: &serde_json::Value) -> Result<u16> {
    use std::io::{Read as _, Write as _};
    let addr = api.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let body = body.to_string();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {response:?}"))
}

fn serve(data_dir: &Path, key: &str) -> Result<Control> {
    serve_with(data_dir, key, &[])
}

fn serve_with(data_dir: &Path, key: &str, extra: &[&str]) -> Result<Control> {
    // Plain HTTP on loopback keeps these workflow tests about the CLI; the TLS default is
    // tested by `cli_speaks_https_trusting_controls_ca`.
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--api-plain",
            "--api",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .env("KOKOA_MASTER_KEY", key)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting kokoa-control serve")?;
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                // Keep draining so the child never blocks on a full pipe.
                continue;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(_) => bail!(
                "serve printed no API address within 60 s:\n{}",
                seen.join("\n")
            ),
        };
        if let Some(rest) = line.split("REST API ").nth(1) {
            let url = rest
                .split_whitespace()
                .next()
                .context("url")?
                .trim_end_matches("/api/v1")
                .to_string();
            return Ok(Control { child, api: url });
        }
        seen.push(line);
    }
}

/// A node's open Watch stream.
struct Watch {
    _tx: tokio::sync::mpsc::Sender<pb::NodeMessage>,
    _rx: tonic::Streaming<pb::ControlMessage>,
}

fn hello(applied_version: u64) -> pb::NodeMessage {
    pb::NodeMessage {
        message: Some(pb::node_message::Message::Hello(pb::Hello {
            applied_version,
            software_version: "test".into(),
            hostname: "test-host".into(),
            listeners: Vec::new(),
        })),
    }
}

/// Does what an edge does with its bundle: reads `[control]` from edge.toml, pins
/// control-ca.pem, enrolls with enroll.token, opens Watch and ACKs the first snapshot.
/// Returns the open stream and the acknowledged version.
async fn join_with_bundle(bundle: &[u8]) -> Result<(Watch, u64)> {
    use std::io::Read as _;
    let mut files = std::collections::BTreeMap::new();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bundle));
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry
            .path()?
            .file_name()
            .context("name")?
            .to_string_lossy()
            .into_owned();
        let mut text = String::new();
        entry.read_to_string(&mut text)?;
        files.insert(name, text);
    }
    let config: toml::Value = toml::from_str(files.get("edge.toml").context("edge.toml")?)?;
    let url = config["control"]["url"].as_str().context("control.url")?;
    let ca = files.get("control-ca.pem").context("control-ca.pem")?;
    let token = files.get("enroll.token").context("enroll.token")?.trim();
    let host = url
        .trim_start_matches("https://")
        .rsplit_once(':')
        .context("host:port")?
        .0;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(host);
    let channel = Endpoint::from_shared(url.to_string())?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connecting to {url} with the bundle's CA"))?;
    let enrolled = EnrollmentClient::new(channel.clone())
        .enroll(pb::EnrollRequest {
            token: token.into(),
            hostname: "test-host".into(),
            software_version: "test".into(),
        })
        .await?
        .into_inner();
    ensure!(enrolled.node_name == "vps1", "enrolled {enrolled:?}");

    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(hello(0)).await?;
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", enrolled.credential).parse()?,
    );
    let mut stream = ConfigClient::new(channel)
        .watch(request)
        .await?
        .into_inner();
    let snapshot = match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
        Ok(Ok(Some(pb::ControlMessage {
            message: Some(pb::control_message::Message::Snapshot(snapshot)),
        }))) => snapshot,
        other => bail!("expected a snapshot, got {other:?}"),
    };
    ensure!(
        matches!(snapshot.node, Some(pb::snapshot::Node::Edge(_))),
        "not an edge snapshot"
    );
    tx.send(pb::NodeMessage {
        message: Some(pb::node_message::Message::Ack(pb::Ack {
            version: snapshot.version,
        })),
    })
    .await?;
    Ok((
        Watch {
            _tx: tx,
            _rx: stream,
        },
        snapshot.version,
    ))
}

#[test]
fn serve_refuses_to_start_without_a_master_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let output = Command::new(BIN)
        .args([
            "serve",
            "--api",
            "127.0.0.1:0",
            "--grpc",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("KOKOA_MASTER_KEY")
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no master key configured"), "{stderr}");
    assert!(
        stderr.contains("--master-key-file") && stderr.contains("KOKOA_MASTER_KEY"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn serve_names_a_bad_acme_flag_before_binding() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let output = Command::new(BIN)
        .args(["serve", "--api", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .args(["--acme-directory", "not-a-url", "--data-dir"])
        .arg(dir.path())
        .env("KOKOA_MASTER_KEY", master_key())
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--acme-directory"), "{stderr}");
    assert!(
        !stderr.contains("REST API http"),
        "bound before failing: {stderr}"
    );
    Ok(())
}

#[test]
fn operator_workflow_against_a_running_control() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let key = master_key();

    // Bootstrap: the first API token straight from the database.
    let output = Command::new(BIN)
        .args(["token", "create", "--name", "ops", "--data-dir"])
        .arg(&data)
        .env_remove("KOKOA_MASTER_KEY")
        .output()?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout)?.trim().to_string();
    ensure!(token.starts_with("kokoa_"), "token {token:?}");

    let mut control = serve(&data, &key)?;
    let api = control.api.clone();
    let run = |args: &[&str]| ok(&api, &token, args);

    let origin = run(&["origin", "add", "home"])?;
    assert!(origin.contains("10.100.1.1"), "{origin}");
    run(&[
        "service",
        "add",
        "home",
        "web",
        "--port",
        "8001",
        "--local",
        "127.0.0.1:8001",
        "--health-path",
        "/",
    ])?;
    let edge = run(&[
        "edge",
        "add",
        "vps1",
        "--endpoint",
        "127.0.0.1:51820",
        "--origin",
        "home",
    ])?;
    assert!(edge.contains("home=10.100.1.10"), "{edge}");
    run(&[
        "route",
        "add",
        "app.example.com",
        "--origin",
        "home",
        "--service",
        "web",
        "--alias",
        "www.example.com",
    ])?;

    let routes = run(&["route", "list"])?;
    let mut lines = routes.lines();
    let header = lines.next().context("header")?;
    assert!(
        header.starts_with("HOST") && header.contains("ORIGIN"),
        "{routes}"
    );
    let row: Vec<&str> = lines.next().context("row")?.split_whitespace().collect();
    assert_eq!(
        row,
        // No limits of its own: `-` in the LIMITS column.
        [
            "app.example.com",
            "www.example.com",
            "home",
            "web",
            "8001",
            "-"
        ],
        "{routes}"
    );

    let json: serde_json::Value = serde_json::from_str(&run(&["route", "list", "--json"])?)?;
    assert_eq!(json[0]["hostname"], "app.example.com");
    // Client flags belong to the client commands: also accepted on the command group...
    let json: serde_json::Value = serde_json::from_str(&run(&["route", "--json", "list"])?)?;
    assert_eq!(json[0]["hostname"], "app.example.com");

    // An uploaded certificate is listed with its names, source, issuer and expiry.
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["app.example.com".to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kokoa cli test");
    let cert = params.self_signed(&key)?;
    let body = serde_json::json!({"chain_pem": cert.pem(), "key_pem": key.serialize_pem()});
    let status = post_json(&api, &token, "/api/v1/certificates", &body)?;
    assert_eq!(status, 201, "certificate upload");
    let certificates = run(&["certificate", "list"])?;
    let mut lines = certificates.lines();
    let header = lines.next().context("header")?;
    assert!(
        header.starts_with("NAMES") && header.contains("NOT AFTER"),
        "{certificates}"
    );
    let row = lines.next().context("certificate row")?;
    assert!(
        row.starts_with("app.example.com")
            && row.contains("manual")
            && row.contains("kokoa cli test"),
        "{certificates}"
    );

    let origins = run(&["origin", "list"])?;
    assert!(
        origins.contains("home") && origins.contains("10.100.1.0/24"),
        "{origins}"
    );
    let edges = run(&["edge", "list"])?;
    assert!(
        edges.contains("vps1") && edges.contains("127.0.0.1:51820"),
        "{edges}"
    );
    let services = run(&["service", "list", "home"])?;
    assert!(services.contains("127.0.0.1:8001"), "{services}");

    let status = run(&["status"])?;
    assert!(status.starts_with("config version "), "{status}");
    assert!(
        status.contains("edge") && status.contains("vps1"),
        "{status}"
    );
    assert!(
        status.contains("origin") && status.contains("home"),
        "{status}"
    );
    assert!(status.contains("CONNECTED"), "{status}");

    let enrollment = run(&["node-token", "create", "origin", "home"])?;
    assert!(enrollment.trim().starts_with("kokoa_"), "{enrollment}");
    let bundle = dir.path().join("vps1.tar.gz");
    run(&[
        "bundle",
        "edge",
        "vps1",
        "-o",
        bundle.to_str().context("path")?,
    ])?;
    let bytes = std::fs::read(&bundle)?;
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");

    // The bundle is enough to join: its URL, pinned CA and token enroll over gRPC; the node
    // watches, ACKs, and `status` shows it connected and in sync.
    let runtime = tokio::runtime::Runtime::new()?;
    let (watch, version) = runtime.block_on(join_with_bundle(&bytes))?;
    // The ACK is recorded asynchronously: poll, bounded.
    let expected = [
        "edge",
        "vps1",
        "pending",
        "yes",
        &version.to_string(),
        "yes",
    ]
    .map(String::from);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = run(&["status"])?;
        let vps1 = status
            .lines()
            .find(|l| l.contains("vps1"))
            .context("vps1 row")?;
        let cells: Vec<String> = vps1.split_whitespace().take(6).map(String::from).collect();
        if cells == expected {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "status never showed vps1 connected and in sync:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(watch);

    // Errors reach the operator with the field and a failing exit code.
    let bad = cli(
        &api,
        &token,
        &[
            "route",
            "add",
            "bad host",
            "--origin",
            "home",
            "--service",
            "web",
        ],
    )?;
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("422") && stderr.contains("hostname"),
        "{stderr}"
    );
    let dup = cli(
        &api,
        &token,
        &[
            "route",
            "add",
            "app.example.com",
            "--origin",
            "home",
            "--service",
            "web",
        ],
    )?;
    assert!(String::from_utf8_lossy(&dup.stderr).contains("409"));
    let unauth = cli(&api, "kokoa_api_nope", &["route", "list"])?;
    assert!(String::from_utf8_lossy(&unauth.stderr).contains("401"));

    // A second token, listed, then revoked: it stops working at once.
    let output = Command::new(BIN)
        .args(["token", "create", "--name", "ci", "--data-dir"])
        .arg(&data)
        .output()?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let second = String::from_utf8(output.stdout)?.trim().to_string();
    let tokens = ok(&api, &second, &["token", "list"])?;
    assert!(tokens.contains("ci") && tokens.contains("ops"), "{tokens}");
    run(&["token", "revoke", "ci"])?;
    let revoked = cli(&api, &second, &["route", "list"])?;
    assert!(String::from_utf8_lossy(&revoked.stderr).contains("401"));

    run(&["route", "rm", "app.example.com"])?;
    assert_eq!(
        run(&["route", "list"])?.lines().count(),
        1,
        "only the header"
    );
    run(&["edge", "rm", "vps1"])?;
    run(&["origin", "rm", "home"])?;

    // SIGTERM (the shell's kill builtin: no procps needed): a clean, prompt exit.
    let pid = control.child.id().to_string();
    let killed = Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()?;
    ensure!(killed.success(), "kill -TERM failed");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = control.child.try_wait()? {
            ensure!(status.success(), "serve exited with {status} on SIGTERM");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "serve did not exit within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The same control on PostgreSQL (`--database`), when `KOKOA_TEST_POSTGRES` names a server
/// this test may create a database on; skipped otherwise, and a failure under `CI=true`.
#[test]
fn serve_and_token_create_on_postgresql() -> Result<()> {
    let Some(base) = kokoa_tests::prereq::postgres("serve_and_token_create_on_postgresql") else {
        return Ok(());
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let name = format!("kokoa_cli_{}", uuid::Uuid::new_v4().simple());
    let admin = |sql: String| -> Result<()> {
        use sqlx::Connection as _;
        runtime.block_on(async {
            let mut conn = sqlx::PgConnection::connect(&base).await?;
            sqlx::query(&sql).execute(&mut conn).await?;
            conn.close().await?;
            Ok::<_, anyhow::Error>(())
        })
    };
    admin(format!("CREATE DATABASE {name}"))?;
    let url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => bail!("KOKOA_TEST_POSTGRES has no database part: {base}"),
    };
    let result = (|| -> Result<()> {
        let dir = tempfile::tempdir()?;
        let output = Command::new(BIN)
            .args([
                "token",
                "create",
                "--name",
                "ops",
                "--database",
                &url,
                "--data-dir",
            ])
            .arg(dir.path())
            .output()?;
        ensure!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let token = String::from_utf8(output.stdout)?.trim().to_string();
        let control = serve_with(dir.path(), &master_key(), &["--database", &url])?;
        ok(&control.api, &token, &["origin", "add", "home"])?;
        let list = ok(&control.api, &token, &["origin", "list"])?;
        ensure!(
            list.contains("home") && list.contains("10.100.1.1"),
            "{list}"
        );
        Ok(())
    })();
    // Connections are closed once serve has exited (Control's drop); then drop the database.
    let dropped = admin(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    result?;
    dropped
}

/// Requests a [`HookReceiver`] got: (lower-cased head, body).
type Requests = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A webhook receiver on 127.0.0.1 (a thread answering `200 ok`); the requests it got, as
/// (head, body).
struct HookReceiver {
    url: String,
    got: Requests,
}

impl HookReceiver {
    fn start() -> Result<HookReceiver> {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}/hooks/kokoa-path-secret", listener.local_addr()?);
        let got: Requests = Default::default();
        let recorded = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                // Read the head, then Content-Length bytes of body.
                let (head, body) = loop {
                    let Ok(n) = stream.read(&mut buf) else {
                        break (String::new(), Vec::new());
                    };
                    if n == 0 {
                        break (String::new(), Vec::new());
                    }
                    data.extend_from_slice(&buf[..n]);
                    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while data.len() < end + 4 + length {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => data.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = data[end + 4..].to_vec();
                    break (head, body);
                };
                if head.is_empty() {
                    continue;
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
                if let Ok(mut got) = recorded.lock() {
                    got.push((head, body));
                }
            }
        });
        Ok(HookReceiver { url, got })
    }

    /// Waits (at most 30 s) for a request whose `kokoa-event` header is `kind`.
    fn wait_for(&self, kind: &str) -> Result<(String, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let wanted = format!("kokoa-event: {kind}");
        loop {
            if let Some(found) = self
                .got
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .iter()
                .find(|(head, _)| head.lines().any(|l| l == wanted))
            {
                return Ok(found.clone());
            }
            ensure!(Instant::now() < deadline, "no {kind} notification in 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn notify_commands_against_a_running_control() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let key = master_key();
    let output = Command::new(BIN)
        .args(["token", "create", "--name", "ops", "--data-dir"])
        .arg(&data)
        .env_remove("KOKOA_MASTER_KEY")
        .output()?;
    ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout)?.trim().to_string();
    let control = serve_with(&data, &key, &["--notify-retry-base-ms", "100"])?;
    let api = control.api.clone();
    let run = |args: &[&str]| ok(&api, &token, args);
    let hook = HookReceiver::start()?;

    let secret = "cli-test-secret-0123456789abcdef";
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{secret}\n"))?;
    let secret_path = secret_file.to_string_lossy().to_string();
    let added = run(&[
        "notify",
        "add",
        "hook",
        "--kind",
        "webhook",
        "--url",
        &hook.url,
        "--secret-file",
        &secret_path,
        "--event",
        "edge.*,notification_target.test",
    ])?;
    ensure!(
        added.contains("hook") && added.contains("webhook"),
        "{added}"
    );
    // Neither the given secret nor the URL's path is echoed back.
    let listed = run(&["notify", "list"])?;
    for text in [&added, &listed] {
        ensure!(
            !text.contains(secret) && !text.contains("kokoa-path-secret"),
            "{text}"
        );
    }
    ensure!(
        listed.contains("edge.*,notification_target.test"),
        "{listed}"
    );
    let listed_json = run(&["notify", "--json", "list"])?;
    ensure!(!listed_json.contains(secret) && !listed_json.contains("kokoa-path-secret"));
    // A generated secret is shown once.
    let generated = run(&[
        "notify", "add", "other", "--kind", "webhook", "--url", &hook.url, "--event", "route.*",
    ])?;
    ensure!(generated.contains("kokoa_whsec_"), "{generated}");
    // Bad input names the field and adds nothing.
    let bad = cli(
        &api,
        &token,
        &[
            "notify", "add", "bad", "--kind", "slack", "--url", "ftp://x",
        ],
    )?;
    ensure!(!bad.status.success());
    ensure!(String::from_utf8_lossy(&bad.stderr).contains("url"));

    run(&["edge", "add", "vps1", "--endpoint", "127.0.0.1:51820"])?;
    let (head, body) = hook.wait_for("edge.created")?;
    let signature = head
        .lines()
        .find_map(|l| l.strip_prefix("kokoa-signature: "))
        .context("signature header")?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    ensure!(kokoa_control::notify::message::verify(
        secret, signature, &body, now, 300
    ));
    let event: serde_json::Value = serde_json::from_slice(&body)?;
    ensure!(event["event"]["detail"]["name"] == "vps1", "{event}");

    let tested = run(&["notify", "test", "hook"])?;
    ensure!(tested.contains("queued"), "{tested}");
    hook.wait_for("notification_target.test")?;

    // Deliveries with attempts and status, in the table and as JSON.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let json: serde_json::Value = serde_json::from_str(&run(&[
            "notify",
            "--json",
            "deliveries",
            "--target",
            "hook",
        ])?)?;
        let rows = json.as_array().context("array")?;
        if rows.len() == 2 && rows.iter().all(|d| d["status"] == "delivered") {
            ensure!(rows
                .iter()
                .all(|d| d["attempts"] == 1 && d["last_status"] == 200));
            break;
        }
        ensure!(Instant::now() < deadline, "deliveries: {json}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let table = run(&["notify", "deliveries"])?;
    ensure!(
        table.contains("ATTEMPTS") && table.contains("delivered"),
        "{table}"
    );
    ensure!(
        table.contains("edge.created") && table.contains("hook"),
        "{table}"
    );
    run(&["notify", "rm", "hook"])?;
    let left = run(&["notify", "list"])?;
    ensure!(left.lines().any(|l| l.starts_with("other ")), "{left}");
    ensure!(!left.lines().any(|l| l.starts_with("hook ")), "{left}");
    drop(control);
    Ok(())
}
