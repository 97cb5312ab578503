//! The `kokoa-control` binary end to end on loopback: `token create` on a fresh data
//! directory, `serve` (REST + gRPC on ephemeral ports), then the operator commands against it,
//! and SIGTERM.
//!
//! Why this file is longer than ~1,000 lines: one running `serve` harness and every operator
//! command against it, in the order an operator meets them.

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

/// GETs `path` without a token over a plain HTTP/1.1 connection; status and body.
fn get_text(api: &str, path: &str) -> Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let addr = api.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Runs `check` until it returns `Ok(true)`, for at most `within`.
fn until(what: &str, within: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if check()? {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
    tx.send(pb::NodeMessage {
        message: Some(pb::node_message::Message::Heartbeat(pb::Heartbeat {
            applied_version: snapshot.version,
            active_connections: 2,
            requests_per_second: 12.5,
            memory_bytes: 20 << 20,
            uptime_seconds: 90,
            ..Default::default()
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
    // The ACK is recorded asynchronously and the health checker judges once a second: poll,
    // bounded. A node that is connected, in sync and heart-beating is online (the SINCE
    // column, the fourth, says for how long).
    let expected = ["edge", "vps1", "online", "yes", &version.to_string(), "yes"].map(String::from);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = run(&["status"])?;
        let vps1 = status
            .lines()
            .find(|l| l.contains("vps1"))
            .context("vps1 row")?;
        let mut cells: Vec<String> = vps1.split_whitespace().take(7).map(String::from).collect();
        if cells.len() == 7 {
            cells.remove(3);
        }
        if cells == expected {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "status never showed vps1 connected and in sync:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // `edge show` prints the state, its reason and the heartbeat's figures.
    let show = run(&["edge", "show", "vps1"])?;
    assert!(show.contains("state:      online"), "{show}");
    assert!(show.contains("reason:     heartbeat"), "{show}");
    assert!(
        show.contains("12.5 requests/s") && show.contains("2 open connections"),
        "{show}"
    );
    assert!(show.contains("memory 20.0 MiB, up 90 s"), "{show}");
    assert!(
        show.contains(&format!("applied v{version} of v{version} (in sync)")),
        "{show}"
    );
    assert!(show.contains("last NACK:  none"), "{show}");
    // The origin never connected: enrolling, and the status says why.
    let status = run(&["status"])?;
    let home = status
        .lines()
        .find(|l| l.starts_with("origin"))
        .context("origin row")?;
    assert!(
        home.contains("enrolling") && home.contains("has never connected"),
        "{status}"
    );
    // A drain takes the edge out of service (state draining), an undrain brings it back; the
    // metrics say so.
    run(&["edge", "drain", "vps1"])?;
    until("vps1 draining", Duration::from_secs(10), || {
        let show = run(&["edge", "show", "vps1"])?;
        Ok(show.contains("state:      draining") && show.contains("drained by an operator"))
    })?;
    let (code, metrics) = get_text(&api, "/metrics")?;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("kokoa_nodes{kind=\"edge\",state=\"draining\"} 1")
            && metrics
                .contains("kokoa_node_state{kind=\"edge\",name=\"vps1\",state=\"draining\"} 1")
            && metrics
                .contains("kokoa_node_state_transitions_total{kind=\"edge\",state=\"draining\"} 1"),
        "{metrics}"
    );
    run(&["edge", "undrain", "vps1"])?;
    until("vps1 online again", Duration::from_secs(10), || {
        Ok(run(&["edge", "show", "vps1"])?.contains("state:      online"))
    })?;
    // (Loopback: control probes an edge's public address, and tests only send to loopback.)
    run(&["edge", "set", "vps1", "--public-ip", "127.0.0.9"])?;
    assert!(run(&["edge", "show", "vps1"])?.contains("public ip:  127.0.0.9"));
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

/// GETs `/api/v1{path}` with a bearer token over a plain HTTP/1.1 connection; the status and
/// the JSON body (`null` when empty).
fn get_json(api: &str, token: &str, path: &str) -> Result<(u16, serde_json::Value)> {
    use std::io::{Read as _, Write as _};
    let addr = api.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /api/v1{path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no header end in {response:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let body = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(body).with_context(|| format!("not JSON: {body:?}"))?
    };
    Ok((status, body))
}

/// Runs a command that must fail; returns its stderr.
fn refused(api: &str, token: &str, args: &[&str]) -> Result<String> {
    let output = cli(api, token, args)?;
    ensure!(
        !output.status.success(),
        "kokoa-control {args:?} succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    Ok(String::from_utf8_lossy(&output.stderr).into_owned())
}

/// `route set` (rate, burst, body limit, allow/deny), `edge set` (limits, MTU, TCP buffer) and
/// `tcp-route add|list|set|rm` against a running control, checked by what the API then
/// returns; a bad flag value is refused by the API naming the field.
#[test]
fn route_edge_and_tcp_route_settings_through_the_cli() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
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
    let control = serve(&data, &master_key())?;
    let api = control.api.clone();
    let run = |args: &[&str]| ok(&api, &token, args);
    let get = |path: &str| get_json(&api, &token, path);

    run(&["origin", "add", "home"])?;
    run(&["service", "add", "home", "web", "--port", "8001"])?;
    run(&[
        "service",
        "add",
        "home",
        "db",
        "--port",
        "5432",
        "--protocol",
        "tcp",
    ])?;
    run(&[
        "edge",
        "add",
        "vps1",
        "--endpoint",
        "127.0.0.1:51820",
        "--origin",
        "home",
    ])?;
    run(&[
        "route",
        "add",
        "app.example.com",
        "--origin",
        "home",
        "--service",
        "web",
    ])?;

    // route set: per-route limits and access lists.
    run(&[
        "route",
        "set",
        "app.example.com",
        "--rate",
        "10",
        "--burst",
        "20",
        "--max-body-bytes",
        "1048576",
        "--allow",
        "10.0.0.0/8",
        "--deny",
        "10.1.0.0/16",
    ])?;
    let (status, route) = get("/routes/app.example.com")?;
    assert_eq!(status, 200, "{route}");
    assert_eq!(
        route["limits"],
        serde_json::json!({"rate": 10.0, "burst": 20, "max_body_bytes": 1_048_576,
                           "allow": ["10.0.0.0/8"], "deny": ["10.1.0.0/16"]})
    );
    // Flags not given stay; a new rate replaces the old one.
    run(&["route", "set", "app.example.com", "--rate", "5"])?;
    let (_, route) = get("/routes/app.example.com")?;
    assert_eq!(route["limits"]["rate"], serde_json::json!(5.0));
    assert_eq!(route["limits"]["deny"], serde_json::json!(["10.1.0.0/16"]));
    let message = refused(
        &api,
        &token,
        &["route", "set", "app.example.com", "--rate", "fast"],
    )?;
    assert!(message.contains("limits.rate"), "{message}");
    let message = refused(
        &api,
        &token,
        &["route", "set", "app.example.com", "--allow", "nope"],
    )?;
    assert!(message.contains("limits.allow[0]"), "{message}");
    let (_, unchanged) = get("/routes/app.example.com")?;
    assert_eq!(
        unchanged["limits"], route["limits"],
        "refused flags change nothing"
    );

    // edge set: [limits] defaults and tunnel settings.
    run(&[
        "edge",
        "set",
        "vps1",
        "--limit",
        "rate=10",
        "--limit",
        "max_connections=500",
        "--mtu",
        "1280",
        "--tcp-buffer",
        "65536",
    ])?;
    let (status, edge) = get("/edge-nodes/vps1")?;
    assert_eq!(status, 200, "{edge}");
    assert_eq!(edge["limits"]["rate"], serde_json::json!(10.0));
    assert_eq!(edge["limits"]["max_connections"], serde_json::json!(500));
    assert_eq!(
        edge["tunnel"],
        serde_json::json!({"mtu": 1280, "tcp_buffer": 65536})
    );
    let message = refused(&api, &token, &["edge", "set", "vps1", "--mtu", "70000"])?;
    assert!(message.contains("tunnel.mtu"), "{message}");
    let message = refused(
        &api,
        &token,
        &["edge", "set", "vps1", "--limit", "max_conections=5"],
    )?;
    assert!(message.contains("limits.max_conections"), "{message}");
    run(&["edge", "set", "vps1", "--clear-limits"])?;
    let (_, edge) = get("/edge-nodes/vps1")?;
    assert!(edge["limits"].is_null(), "{edge}");
    assert_eq!(edge["tunnel"]["mtu"], serde_json::json!(1280), "untouched");

    // tcp-route add | list | set | rm.
    let added = run(&[
        "tcp-route",
        "add",
        "15432",
        "--origin",
        "home",
        "--service",
        "db",
        "--proxy-protocol",
        "v2",
        "--allow",
        "10.0.0.0/8",
    ])?;
    assert!(added.contains("15432"), "{added}");
    let (status, tcp) = get("/tcp-routes/15432")?;
    assert_eq!(status, 200, "{tcp}");
    assert_eq!(
        (
            &tcp["origin"],
            &tcp["service"],
            &tcp["proxy_protocol"],
            &tcp["allow"]
        ),
        (
            &serde_json::json!("home"),
            &serde_json::json!("db"),
            &serde_json::json!("v2"),
            &serde_json::json!(["10.0.0.0/8"])
        ),
        "{tcp}"
    );
    let list = run(&["tcp-route", "list"])?;
    assert!(
        list.contains("15432") && list.contains("home") && list.contains("db"),
        "{list}"
    );
    run(&[
        "tcp-route",
        "set",
        "15432",
        "--new-port",
        "25432",
        "--proxy-protocol",
        "none",
        "--deny",
        "192.0.2.0/24",
    ])?;
    let (status, _) = get("/tcp-routes/15432")?;
    assert_eq!(status, 404, "moved");
    let (_, tcp) = get("/tcp-routes/25432")?;
    assert_eq!(tcp["proxy_protocol"], serde_json::json!("none"), "{tcp}");
    assert_eq!(tcp["deny"], serde_json::json!(["192.0.2.0/24"]), "{tcp}");
    assert_eq!(tcp["allow"], serde_json::json!(["10.0.0.0/8"]), "untouched");
    run(&["tcp-route", "set", "25432", "--clear-allow"])?;
    let (_, tcp) = get("/tcp-routes/25432")?;
    assert!(
        tcp["allow"].as_array().is_none_or(|a| a.is_empty()),
        "{tcp}"
    );
    let message = refused(
        &api,
        &token,
        &[
            "tcp-route",
            "add",
            "70000",
            "--origin",
            "home",
            "--service",
            "db",
        ],
    )?;
    assert!(message.contains("listen_port"), "{message}");
    let message = refused(
        &api,
        &token,
        &["tcp-route", "set", "25432", "--proxy-protocol", "v1"],
    )?;
    assert!(message.contains("proxy_protocol"), "{message}");
    run(&["tcp-route", "rm", "25432"])?;
    let (status, _) = get("/tcp-routes/25432")?;
    assert_eq!(status, 404);
    let list = run(&["tcp-route", "list"])?;
    assert!(!list.contains("25432"), "{list}");
    Ok(())
}
