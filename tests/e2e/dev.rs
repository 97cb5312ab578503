//! `kokoa-control dev`, the README's first command, as a newcomer runs it: it serves the sample
//! app through the real edge and origin enrolled through control, the commands it prints work
//! as printed (a new route goes live, a key rotates), a second `dev` on the same directory fails
//! without changing anything, and SIGTERM stops every process it started.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use kokoa_tests::client::{EdgeClient, Proto};
use kokoa_tests::eventually;
use kokoa_tests::net::{free_tcp, free_udp, loopback};
use kokoa_tests::pki::client_config_trusting_pem;
use kokoa_tests::process::{binary, Process};

use crate::run_bounded;

/// The ports of one dev run, all free on 127.0.0.1.
struct Ports {
    api: u16,
    grpc: u16,
    https: u16,
    http: u16,
    tunnel: u16,
    admin: u16,
    app: u16,
}

impl Ports {
    fn pick() -> anyhow::Result<Ports> {
        let tcp = || free_tcp(loopback(1)).map(|a| a.port());
        // The origin's admin listens on admin + 1: find a pair that is free.
        let admin = loop {
            let port = tcp()?;
            if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
                break port;
            }
        };
        Ok(Ports {
            api: tcp()?,
            grpc: tcp()?,
            https: tcp()?,
            http: tcp()?,
            tunnel: free_udp(loopback(1))?.port(),
            admin,
            app: tcp()?,
        })
    }

    fn args(&self, dir: &Path) -> Vec<String> {
        let mut args = vec!["dev".to_string(), "--dir".into(), dir.display().to_string()];
        for (flag, port) in [
            ("--api-port", self.api),
            ("--grpc-port", self.grpc),
            ("--https-port", self.https),
            ("--http-port", self.http),
            ("--tunnel-port", self.tunnel),
            ("--admin-port", self.admin),
            ("--app-port", self.app),
        ] {
            args.push(flag.into());
            args.push(port.to_string());
        }
        args
    }
}

/// The lines of `dev`'s banner that a newcomer copies.
struct Banner {
    app_url: String,
    api_url: String,
    token_file: PathBuf,
    route_add: Vec<String>,
    status: Vec<String>,
    rotate_key: Vec<String>,
}

fn parse_banner(logs: &str) -> anyhow::Result<Banner> {
    let line = |needle: &str| {
        logs.lines()
            .map(str::trim)
            .find(|l| l.contains(needle))
            .with_context(|| format!("no line with {needle:?} in:\n{logs}"))
    };
    let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let app_url = line("app        https://")?
        .trim_start_matches("app")
        .trim()
        .to_owned();
    let export = line("export KOKOA_API_URL=")?;
    let api_url = export
        .split_whitespace()
        .find_map(|w| w.strip_prefix("KOKOA_API_URL="))
        .context("no KOKOA_API_URL")?
        .to_owned();
    let token_file = export
        .split("$(cat ")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(')'))
        .context("no token file")?;
    Ok(Banner {
        app_url,
        api_url,
        token_file: PathBuf::from(token_file),
        route_add: words(line(" route add ")?),
        status: words(line("kokoa-control status")?),
        rotate_key: words(line(" origin rotate-key ")?),
    })
}

/// Runs a printed command line with the printed environment; its stdout.
async fn run_printed(banner: &Banner, command: &[String]) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(&banner.token_file)
        .with_context(|| format!("reading {}", banner.token_file.display()))?;
    let (program, args) = command.split_first().context("empty command")?;
    let output = tokio::process::Command::new(program)
        .args(args)
        .env("KOKOA_API_URL", &banner.api_url)
        .env("KOKOA_API_TOKEN", token.trim())
        .output()
        .await
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Every file under `dir` except logs, control's live database and the nodes' state (which the
/// running dev keeps writing), with its bytes.
fn snapshot(dir: &Path) -> anyhow::Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if ["logs", "state", "control"].contains(&name) {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path)?);
            }
        }
    }
    Ok(files)
}

#[test]
fn dev_serves_the_app_through_control_and_its_printed_commands_work() {
    run_bounded(Duration::from_secs(240), async {
        let root = tempfile::tempdir()?;
        let dir = root.path().join("dev");
        let ports = Ports::pick()?;
        let mut dev = Process::spawn(
            "kokoa-control-dev",
            &binary("kokoa-control")?,
            ports.args(&dir),
            root.path(),
            &[],
        )?;
        let logs = eventually("dev prints its banner", Duration::from_secs(90), || {
            let running = dev.check_running();
            let logs = dev.logs();
            async move {
                running?;
                ensure!(logs.contains("Kokoa is running"), "not yet");
                Ok(logs)
            }
        })
        .await?;
        let banner = parse_banner(&logs)?;
        ensure!(
            banner.app_url == format!("https://app.kokoa.localhost:{}/", ports.https),
            "app URL {}",
            banner.app_url
        );

        // The app, through edge -> tunnel -> origin, over HTTPS verified against the dev CA.
        let ca = std::fs::read_to_string(dir.join("dev-ca.pem"))?;
        let edge = SocketAddr::from(([127, 0, 0, 1], ports.https));
        let client = EdgeClient::with_configs(
            edge,
            client_config_trusting_pem(&ca, &[b"http/1.1"])?,
            client_config_trusting_pem(&ca, &[b"h2"])?,
        );
        let page = client.get("app.kokoa.localhost", "/", Proto::Http2).await?;
        ensure!(page.status == 200, "app: {:?}", page.status);
        let text = page.text();
        ensure!(
            text.contains("Hello from the Kokoa sample app")
                && text.contains("x-forwarded-proto: https"),
            "{text}"
        );

        // 1. The printed `route add`, with the printed environment...
        let added = run_printed(&banner, &banner.route_add).await?;
        let new_host = banner.route_add[3].clone();
        ensure!(added.contains(&new_host), "{added}");
        // 2. ...goes live at the edge, with a certificate the dev CA signed.
        eventually("the new route is served", Duration::from_secs(15), || {
            let client = client.clone();
            let host = new_host.clone();
            async move {
                let answer = client.get(&host, "/new", Proto::Http1).await?;
                ensure!(answer.status == 200, "{:?}", answer.status);
                ensure!(answer.text().contains("GET /new"), "{}", answer.text());
                Ok(())
            }
        })
        .await?;
        let status = run_printed(&banner, &banner.status).await?;
        ensure!(
            status.contains("dev-edge") && status.contains("home"),
            "{status}"
        );
        // 3. The printed key rotation; the app keeps being served.
        run_printed(&banner, &banner.rotate_key).await?;
        eventually(
            "served after the key rotation",
            Duration::from_secs(15),
            || {
                let client = client.clone();
                async move {
                    let answer = client.get("app.kokoa.localhost", "/", Proto::Http1).await?;
                    ensure!(answer.status == 200, "{:?}", answer.status);
                    Ok(())
                }
            },
        )
        .await?;

        // A second dev on the same directory fails before it changes anything.
        let files_before = snapshot(&dir)?;
        let mut second = Process::spawn(
            "kokoa-control-dev-2",
            &binary("kokoa-control")?,
            ports.args(&dir),
            root.path(),
            &[],
        )?;
        let exit = second.wait_exit(Duration::from_secs(30)).await?;
        ensure!(!exit.success(), "the second dev succeeded");
        let second_logs = second.logs();
        ensure!(
            second_logs.contains("another `kokoa-control dev` is running"),
            "{second_logs}"
        );
        ensure!(
            snapshot(&dir)? == files_before,
            "the second dev changed files"
        );
        dev.check_running()?;

        // SIGTERM stops dev, and with it the edge and the origin.
        dev.signal("TERM").await?;
        let exit = dev.wait_exit(Duration::from_secs(40)).await?;
        ensure!(exit.success(), "dev exited with {exit}");
        for (what, port) in [
            ("edge https", ports.https),
            ("edge admin", ports.admin),
            ("origin admin", ports.admin + 1),
            ("control API", ports.api),
        ] {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                bail!("{what} (port {port}) still accepts connections after dev stopped");
            }
        }
        Ok(())
    });
}

#[test]
fn quickstart_script_serves_a_route_on_loopback_and_leaves_nothing_running() {
    run_bounded(Duration::from_secs(180), async {
        let bin_dir = binary("kokoa-control")?
            .parent()
            .context("binary directory")?
            .to_path_buf();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../control/examples/quickstart.sh");
        let ports = Ports::pick()?;
        let output = tokio::process::Command::new("sh")
            .arg(&script)
            .env("KOKOA_BIN_DIR", &bin_dir)
            .env("QS_API_PORT", ports.api.to_string())
            .env("QS_GRPC_PORT", ports.grpc.to_string())
            .env("QS_HTTPS_PORT", ports.https.to_string())
            .env("QS_HTTP_PORT", ports.http.to_string())
            .env("QS_TUNNEL_PORT", ports.tunnel.to_string())
            .env("QS_ADMIN_PORT", ports.admin.to_string())
            .env("QS_APP_PORT", ports.app.to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        ensure!(output.status.success(), "quickstart.sh failed:\n{text}");
        ensure!(
            text.contains("Hello from the Kokoa sample app")
                && text.contains("quickstart: served https://app.quickstart.localhost"),
            "{text}"
        );
        // Every process it started is gone: none of its ports accepts a connection.
        for port in [
            ports.api,
            ports.https,
            ports.admin,
            ports.admin + 1,
            ports.app,
        ] {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                bail!("port {port} still accepts connections after quickstart.sh exited\n{text}");
            }
        }
        Ok(())
    });
}
