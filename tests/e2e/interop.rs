//! Interop with stock WireGuard (wireguard-go + wg) in network namespaces the test creates:
//! (a) a stock "edge" talks to `kokoa-origin`; (b) `kokoa-edge` talks to a stock "origin".
//! Needs root and the tools; skipped with a reason otherwise, except under `CI=true`.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use kokoa_tests::config::{
    write, EdgeOrigin, EdgeRoute, EdgeSpec, EdgeTimeouts, Limits, OriginEdge, OriginService,
    OriginSpec,
};
use kokoa_tests::netns::{prerequisites_or_skip, tool, Pair, StockPeer};
use kokoa_tests::pki::TestCa;
use kokoa_tests::process::{binary, Process};
use kokoa_tunnel::key::PrivateKey;

use crate::run_bounded;

const ORIGIN_IP: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 1);
const EDGE_IP: Ipv4Addr = Ipv4Addr::new(10, 100, 1, 10);
const WG_PORT: u16 = 51820;
const PAGE: &str = "hello from behind a stock WireGuard peer\n";

/// Starts `python3 -m http.server` in a namespace, serving a directory with `index.txt`.
fn http_server(
    pair_ns: &kokoa_tests::netns::Netns,
    dir: &std::path::Path,
    bind: Ipv4Addr,
    port: u16,
) -> anyhow::Result<Process> {
    let site = dir.join("site");
    std::fs::create_dir_all(&site)?;
    std::fs::write(site.join("index.txt"), PAGE)?;
    let site = site.to_string_lossy().into_owned();
    let bind = bind.to_string();
    let port = port.to_string();
    Process::spawn(
        &format!("http-server-{}", pair_ns.name()),
        &tool("python3")?,
        [
            "-m",
            "http.server",
            port.as_str(),
            "--bind",
            bind.as_str(),
            "--directory",
            site.as_str(),
        ],
        dir,
        &pair_ns.wrapper(),
    )
}

/// Starts wireguard-go in the foreground as interface `dev` in `ns`.
fn wireguard_go(
    ns: &kokoa_tests::netns::Netns,
    dev: &str,
    dir: &std::path::Path,
) -> anyhow::Result<Process> {
    let mut wrapper: Vec<&str> = ns.wrapper().to_vec();
    wrapper.extend_from_slice(&["env", "WG_PROCESS_FOREGROUND=1"]);
    Process::spawn(
        &format!("wireguard-go-{dev}"),
        &tool("wireguard-go")?,
        [dev],
        dir,
        &wrapper,
    )
}

/// Waits until every URL answers 200 inside `ns`, failing early if a process exits.
async fn wait_ready(
    ns: &kokoa_tests::netns::Netns,
    processes: &mut [&mut Process],
    urls: &[&str],
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    'wait: loop {
        for process in processes.iter_mut() {
            process.check_running()?;
        }
        for url in urls {
            match ns.curl(&[url]).await {
                Ok((200, _)) => {}
                other => {
                    if std::time::Instant::now() > deadline {
                        let logs: Vec<String> = processes.iter().map(|p| p.logs()).collect();
                        anyhow::bail!("{url} not ready in 20 s: {other:?}\n{}", logs.join("\n"));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'wait;
                }
            }
        }
        return Ok(());
    }
}

#[test]
fn stock_wireguard_edge_reaches_kokoa_origin() {
    if !prerequisites_or_skip("stock_wireguard_edge_reaches_kokoa_origin") {
        return;
    }
    run_bounded(Duration::from_secs(90), async {
        let dir = tempfile::tempdir()?;
        let pair = Pair::create().await?;
        // a: the stock edge (wireguard-go, 10.100.1.10); b: kokoa-origin with an app.
        let mut app = http_server(&pair.b, dir.path(), Ipv4Addr::LOCALHOST, 8080)?;
        let edge_key = PrivateKey::generate();
        let origin_key = PrivateKey::generate();
        let key_file = write(dir.path(), "stock-edge.key", &edge_key.to_base64())?;
        let dev = format!("kwe{}", pair.tag);
        let mut wg = wireguard_go(&pair.a, &dev, dir.path())?;
        let stock = StockPeer {
            ns: &pair.a,
            dev: dev.clone(),
        };
        stock
            .wait_created()
            .await
            .map_err(|e| e.context(wg.logs()))?;
        stock
            .configure(
                &key_file,
                WG_PORT,
                &origin_key.public_key().to_base64(),
                &format!("{ORIGIN_IP}/32"),
                None,
                EDGE_IP,
            )
            .await?;
        wg.check_running()?;

        let spec = OriginSpec {
            admin: "127.0.0.1:9091".parse()?,
            address: ORIGIN_IP,
            private_key: origin_key,
            listen: "0.0.0.0:0".parse()?,
            drain_timeout: 2,
            tunnel: Default::default(),
            edges: vec![OriginEdge {
                name: "stock".into(),
                public_key: edge_key.public_key(),
                endpoint: Some((pair.a_ip, WG_PORT).into()),
                address: EDGE_IP,
            }],
            services: vec![OriginService {
                name: "web".into(),
                port: 8001,
                local: "127.0.0.1:8080".parse()?,
                health_path: None,
            }],
            checks: String::new(),
        };
        let config = write(dir.path(), "origin.toml", &spec.to_toml())?;
        let config = config.to_string_lossy().into_owned();
        let mut origin = Process::spawn(
            "kokoa-origin-netns",
            &binary("kokoa-origin")?,
            ["--config", config.as_str(), "run"],
            dir.path(),
            &pair.b.wrapper(),
        )?;
        let urls = [
            "http://127.0.0.1:9091/healthz",
            "http://127.0.0.1:8080/index.txt",
        ];
        wait_ready(&pair.b, &mut [&mut origin, &mut app], &urls).await?;

        // Through the tunnel from the stock side: the page comes back.
        let url = format!("http://{ORIGIN_IP}:8001/index.txt");
        let body = kokoa_tests::eventually(
            "page through the tunnel",
            Duration::from_secs(30),
            || async {
                let (status, body) = pair.a.curl(&[&url]).await?;
                ensure!(status == 200, "status {status}");
                Ok(body)
            },
        )
        .await
        .map_err(|e| e.context(format!("{}\n{}", origin.logs(), wg.logs())))?;
        ensure!(body == PAGE, "got {body:?}");

        // A port that is not a service is refused (curl exit 7), not forwarded anywhere.
        let output = pair
            .a
            .output(&[
                "curl",
                "-sS",
                "--max-time",
                "5",
                &format!("http://{ORIGIN_IP}:8080/"),
            ])
            .await?;
        ensure!(
            output.status.code() == Some(7),
            "non-service port: {output:?}"
        );
        let shown = stock.show().await;
        ensure!(shown.contains("latest handshake"), "wg show: {shown}");
        // The origin counted the stream and sees the stock peer's handshake.
        let (_, metrics) = pair.b.curl(&["http://127.0.0.1:9091/metrics"]).await?;
        let accepted = kokoa_tests::net::sum_metric(
            &metrics,
            "kokoa_origin_streams_accepted_total{service=\"web\"}",
        );
        ensure!(
            accepted.unwrap_or(0.0) >= 1.0,
            "streams accepted: {accepted:?}"
        );
        ensure!(
            metrics.contains("kokoa_tunnel_peer_last_handshake_age_seconds{edge=\"stock\"}"),
            "no handshake age for the stock peer"
        );
        Ok(())
    });
}

#[test]
fn kokoa_edge_reaches_stock_wireguard_origin() {
    if !prerequisites_or_skip("kokoa_edge_reaches_stock_wireguard_origin") {
        return;
    }
    run_bounded(Duration::from_secs(90), async {
        let dir = tempfile::tempdir()?;
        let pair = Pair::create().await?;
        // b: the stock origin (wireguard-go, 10.100.1.1) with an app on 10.100.1.1:8001;
        // a: kokoa-edge and the client.
        let edge_key = PrivateKey::generate();
        let origin_key = PrivateKey::generate();
        let key_file = write(dir.path(), "stock-origin.key", &origin_key.to_base64())?;
        let dev = format!("kwo{}", pair.tag);
        let mut wg = wireguard_go(&pair.b, &dev, dir.path())?;
        let stock = StockPeer {
            ns: &pair.b,
            dev: dev.clone(),
        };
        stock
            .wait_created()
            .await
            .map_err(|e| e.context(wg.logs()))?;
        stock
            .configure(
                &key_file,
                WG_PORT,
                &edge_key.public_key().to_base64(),
                &format!("{EDGE_IP}/32"),
                None,
                ORIGIN_IP,
            )
            .await?;
        wg.check_running()?;
        let mut app = http_server(&pair.b, dir.path(), ORIGIN_IP, 8001)?;

        let ca = TestCa::new()?;
        let issued = ca.issue(&["stock.test"])?;
        let cert = write(dir.path(), "edge.crt", &issued.chain_pem)?;
        let key = write(dir.path(), "edge.key", &issued.key_pem)?;
        let ca_file = write(dir.path(), "ca.pem", &ca.pem())?;
        let spec = EdgeSpec {
            https: "127.0.0.1:8443".parse()?,
            http: "127.0.0.1:8080".parse()?,
            admin: "127.0.0.1:9090".parse()?,
            drain_timeout: 2,
            private_key: edge_key,
            listen: "0.0.0.0:0".parse()?,
            tunnel: Default::default(),
            state_dir: dir.path().join("edge-state"),
            origins: vec![EdgeOrigin {
                name: "stock".into(),
                public_key: origin_key.public_key(),
                endpoint: Some((pair.b_ip, WG_PORT).into()),
                address: EDGE_IP,
                origin_address: ORIGIN_IP,
            }],
            routes: vec![EdgeRoute {
                host: "stock.test".into(),
                origin: "stock".into(),
                port: 8001,
                limits: Limits::default(),
            }],
            tcp_routes: Vec::new(),
            certificates: vec![(cert, key)],
            timeouts: EdgeTimeouts::default(),
            limits: Limits::default(),
        };
        let config = write(dir.path(), "edge.toml", &spec.to_toml())?;
        let config = config.to_string_lossy().into_owned();
        let mut edge = Process::spawn(
            "kokoa-edge-netns",
            &binary("kokoa-edge")?,
            ["--config", config.as_str(), "run"],
            dir.path(),
            &pair.a.wrapper(),
        )?;
        wait_ready(
            &pair.a,
            &mut [&mut edge, &mut app],
            &["http://127.0.0.1:9090/healthz"],
        )
        .await?;

        let ca_file = ca_file.to_string_lossy().into_owned();
        let body = kokoa_tests::eventually(
            "HTTPS through kokoa-edge to the stock origin",
            Duration::from_secs(30),
            || async {
                let (status, body) = pair
                    .a
                    .curl(&[
                        "--cacert",
                        &ca_file,
                        "--resolve",
                        "stock.test:8443:127.0.0.1",
                        "https://stock.test:8443/index.txt",
                    ])
                    .await?;
                ensure!(status == 200, "status {status}: {body}");
                Ok(body)
            },
        )
        .await
        .map_err(|e| e.context(format!("{}\n{}\n{}", edge.logs(), wg.logs(), app.logs())))?;
        ensure!(body == PAGE, "got {body:?}");
        let shown = stock.show().await;
        ensure!(shown.contains("latest handshake"), "wg show: {shown}");
        wg.check_running().context("wireguard-go stayed up")?;
        Ok(())
    });
}
