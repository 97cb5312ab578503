//! The control plane end to end: the real `kokoa-control serve`, edges and origins started from
//! the bundles it hands out, configured only through its REST API and gRPC stream.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use kokoa_tests::apps::{fill_pattern, hex, pattern_sha256, HttpApp, TcpEchoApp, WsEchoApp};
use kokoa_tests::client::{request, EdgeClient, Proto};
use kokoa_tests::control::{id, Fleet, Node};
use kokoa_tests::eventually;
use kokoa_tests::net::{free_tcp, free_udp, loopback, metric};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::run_bounded;

#[test]
fn routes_from_the_api_go_live_and_changes_interrupt_nothing() {
    run_bounded(Duration::from_secs(150), async {
        let web = HttpApp::start("web", loopback(1)).await?;
        let files = HttpApp::start("files", loopback(1)).await?;
        let ws = WsEchoApp::start(loopback(1)).await?;
        let fleet = Fleet::start(
            &["home", "lab"],
            &[
                ("home", "web", 8001, web.addr),
                ("lab", "files", 8002, files.addr),
                ("lab", "ws", 8003, ws.addr),
            ],
            &[
                ("web.ctl.test", "home", "web"),
                ("files.ctl.test", "lab", "files"),
                ("ws.ctl.test", "lab", "ws"),
            ],
        )
        .await?;
        fleet
            .serves("web.ctl.test", "web", Duration::from_secs(20))
            .await?;
        fleet.converged(Duration::from_secs(10)).await?;

        // A route added through the API: time to the first successful request.
        let started = Instant::now();
        let new_route = fleet.add_route("new.ctl.test", "home", "web").await?;
        fleet
            .serves("new.ctl.test", "web", Duration::from_secs(10))
            .await?;
        eprintln!(
            "route added through the API served after {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );

        // A long download and a WebSocket on the lab origin's routes...
        let client = fleet.client()?;
        let size: u64 = 32 * 1024 * 1024;
        let mut download = client.connect("files.ctl.test", Proto::Http1).await?;
        let response = download
            .send(request(
                "files.ctl.test",
                &format!("/bytes/{size}"),
                "GET",
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed(),
            )?)
            .await?;
        ensure!(response.status() == 200, "download: {}", response.status());
        let reader = tokio::spawn(async move {
            // Read slowly so the download spans every change below.
            let mut body = response.into_body();
            let (mut hasher, mut received) = (Sha256::new(), 0u64);
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    hasher.update(&data);
                    received += data.len() as u64;
                    if received < size / 2 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
            anyhow::Ok((received, hex(&hasher.finalize())))
        });
        let tls = client.tls("ws.ctl.test", Proto::Http1).await?;
        let (mut socket, _) = tokio_tungstenite::client_async("wss://ws.ctl.test/echo", tls)
            .await
            .context("WebSocket handshake")?;
        echo(&mut socket, "before").await?;

        // ...while routes change and both origins' WireGuard keys are rotated.
        fleet
            .control
            .ok("DELETE", &format!("/routes/{new_route}"), None)
            .await?;
        fleet.add_route("other.ctl.test", "home", "web").await?;
        echo(&mut socket, "after route changes").await?;
        for (origin_id, _) in &fleet.origins {
            fleet
                .control
                .ok(
                    "POST",
                    &format!("/origins/{origin_id}/rotate-key"),
                    Some(json!({})),
                )
                .await?;
        }
        fleet.converged(Duration::from_secs(20)).await?;
        fleet
            .serves("other.ctl.test", "web", Duration::from_secs(20))
            .await?;
        let gone = fleet
            .client()?
            .get("new.ctl.test", "/", Proto::Http1)
            .await?;
        ensure!(
            gone.status == 404,
            "a removed route answers {}",
            gone.status
        );
        echo(&mut socket, "after key rotation").await?;
        let (received, digest) = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .context("the download did not finish")???;
        ensure!(
            received == size,
            "download cut at {received} of {size} bytes"
        );
        ensure!(digest == pattern_sha256(size), "download corrupted");
        socket.close(None).await?;
        Ok(())
    });
}

/// Sends `text` on the WebSocket and expects it back within 10 s.
async fn echo<S>(
    socket: &mut tokio_tungstenite::WebSocketStream<S>,
    text: &str,
) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    socket.send(Message::text(text.to_owned())).await?;
    let echoed = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .context("no echo within 10 s")?
        .context("WebSocket closed")??;
    ensure!(echoed == Message::text(text.to_owned()), "echo: {echoed:?}");
    Ok(())
}

/// Issue 15's parity: a raw TCP route made with the CLI (no file edited on the edge) carries
/// bytes through the running edge and origin, with its allow list enforced.
#[test]
fn tcp_route_created_with_the_cli_carries_bytes() {
    run_bounded(Duration::from_secs(120), async {
        let echo_app = TcpEchoApp::start(loopback(1)).await?;
        let fleet = Fleet::start(&["home"], &[("home", "echo", 4001, echo_app.addr)], &[]).await?;
        fleet.converged(Duration::from_secs(20)).await?;
        let listen = free_tcp(IpAddr::V4(Fleet::EDGE_IP))?;
        let port = listen.port().to_string();
        let denied_client = loopback(9);
        let added = fleet
            .control
            .cli(&[
                "tcp-route",
                "add",
                &port,
                "--origin",
                "home",
                "--service",
                "echo",
                "--allow",
                "127.0.0.0/8",
                "--deny",
                &format!("{denied_client}/32"),
            ])
            .await?;
        ensure!(added.contains(&port), "tcp-route add printed {added:?}");
        let listed = fleet.control.cli(&["tcp-route", "list"]).await?;
        ensure!(
            listed.contains(&port) && listed.contains("echo") && listed.contains("127.0.0.0/8"),
            "tcp-route list: {listed:?}"
        );

        let stream = eventually("the TCP route accepts", Duration::from_secs(20), || async {
            Ok(tokio::net::TcpStream::connect(listen).await?)
        })
        .await?;
        let (mut read, mut write) = stream.into_split();
        let mut payload = vec![0u8; 256 * 1024 + 3];
        fill_pattern(11, &mut payload);
        write.write_all(&payload).await?;
        write.shutdown().await?;
        let mut echoed = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut echoed))
            .await
            .context("echo did not end within 30 s")??;
        ensure!(
            echoed == payload,
            "echoed {} of {} bytes (or different bytes)",
            echoed.len(),
            payload.len()
        );

        // A client the deny list names is closed without reaching the app.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(denied_client, 0))?;
        let mut denied = socket.connect(listen).await?;
        let _ = denied.write_all(b"should not echo").await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), denied.read_to_end(&mut answer))
            .await
            .context("a denied connection was not closed within 10 s")?;
        ensure!(
            answer.is_empty(),
            "a denied client got {} bytes back ({read:?})",
            answer.len()
        );

        // Removed with the CLI: the edge stops listening.
        fleet.control.cli(&["tcp-route", "rm", &port]).await?;
        eventually("the TCP route is gone", Duration::from_secs(20), || async {
            ensure!(
                tokio::net::TcpStream::connect(listen).await.is_err(),
                "{listen} still accepts"
            );
            Ok(())
        })
        .await?;
        Ok(())
    });
}

#[test]
fn nodes_run_without_control_and_converge_when_it_returns() {
    run_bounded(Duration::from_secs(200), async {
        let web = HttpApp::start("web", loopback(1)).await?;
        let mut fleet = Fleet::start(
            &["home"],
            &[("home", "web", 8001, web.addr)],
            &[("web.ctl.test", "home", "web")],
        )
        .await?;
        fleet
            .serves("web.ctl.test", "web", Duration::from_secs(20))
            .await?;
        fleet.converged(Duration::from_secs(10)).await?;

        // Control dies: traffic keeps flowing.
        fleet.control.kill().await?;
        fleet
            .serves("web.ctl.test", "web", Duration::from_secs(2))
            .await?;

        // The edge restarts while control is down: it serves from its persisted config (the
        // origin notices the edge's new session within its keepalive-based dead-peer window).
        fleet.edge.kill().await?;
        fleet.edge.start().await?;
        fleet
            .serves("web.ctl.test", "web", Duration::from_secs(90))
            .await?;

        // Control returns: nodes reconnect and converge on a change made after its return.
        fleet.control.restart().await?;
        fleet.add_route("back.ctl.test", "home", "web").await?;
        fleet
            .serves("back.ctl.test", "web", Duration::from_secs(40))
            .await?;
        fleet.converged(Duration::from_secs(40)).await?;
        Ok(())
    });
}

#[test]
fn wrong_or_revoked_credentials_learn_nothing() {
    run_bounded(Duration::from_secs(120), async {
        let web = HttpApp::start("web", loopback(1)).await?;
        let fleet = Fleet::start(
            &["home"],
            &[("home", "web", 8001, web.addr)],
            &[("web.ctl.test", "home", "web")],
        )
        .await?;
        fleet
            .serves("web.ctl.test", "web", Duration::from_secs(20))
            .await?;

        // A second edge whose bundle token was replaced by a wrong one.
        let tunnel = free_udp(loopback(3))?;
        let other = fleet
            .control
            .ok(
                "POST",
                "/edge-nodes",
                Some(json!({ "name": "edge2", "endpoint": tunnel.to_string(), "origins": [fleet.origins[0].0.clone()] })),
            )
            .await?;
        let dir = fleet.dir.path().join("edge2");
        fleet
            .control
            .unpack_bundle(&format!("/edge-nodes/{}/bundle", id(&other)?), &dir)
            .await?;
        let token = std::fs::read_to_string(dir.join("enroll.token"))?;
        let forged: String = token
            .trim()
            .chars()
            .rev()
            .collect::<String>()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "x");
        std::fs::write(dir.join("enroll.token"), forged)?;
        let mut edge2 = Node::edge_from_dir(&dir, loopback(3), tunnel).await?;
        eventually("edge2 logs the refusal", Duration::from_secs(20), || {
            let logs = edge2.logs();
            async move {
                ensure!(logs.contains("refused"), "no refusal logged yet");
                Ok(())
            }
        })
        .await?;
        edge2.check_running()?;
        // It says so in its status: only the self-signed placeholder, while the enrolled edge
        // has control's certificate.
        ensure!(
            metric(edge2.admin, "kokoa_edge_certificate_placeholder").await? == Some(1.0),
            "the refused edge does not report its placeholder certificate"
        );
        ensure!(
            metric(fleet.edge.admin, "kokoa_edge_certificate_placeholder").await? == Some(0.0),
            "the enrolled edge reports a placeholder"
        );
        ensure!(
            !dir.join("state").join("snapshot.pb").exists(),
            "a refused edge persisted a snapshot"
        );
        let https = edge2.https.context("https")?;
        let refused = EdgeClient::new(https, &fleet.ca)?
            .get("web.ctl.test", "/", Proto::Http1)
            .await;
        ensure!(
            refused.is_err() || refused.as_ref().is_ok_and(|a| a.status == 404),
            "an edge with a wrong token served the route: {:?}",
            refused.map(|a| a.status)
        );

        // Revoking the first edge's credential: control closes its stream and refuses it,
        // while it keeps serving its last config.
        let tokens = fleet
            .control
            .ok(
                "GET",
                &format!("/edge-nodes/{}/tokens", fleet.edge_id),
                None,
            )
            .await?;
        let mut revoked = 0;
        for token in tokens.as_array().context("token list")? {
            if token["kind"] == "credential" && token["revoked_at"].is_null() {
                fleet
                    .control
                    .ok("DELETE", &format!("/node-tokens/{}", id(token)?), None)
                    .await?;
                revoked += 1;
            }
        }
        ensure!(
            revoked == 1,
            "expected one credential, revoked {revoked}: {tokens}"
        );
        eventually("edge1 logs the refusal", Duration::from_secs(40), || {
            let logs = fleet.edge.logs();
            async move {
                ensure!(
                    logs.contains("refused this node's credential"),
                    "no refusal logged yet"
                );
                Ok(())
            }
        })
        .await?;
        fleet.add_route("late.ctl.test", "home", "web").await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let late = fleet
            .client()?
            .get("late.ctl.test", "/", Proto::Http1)
            .await?;
        ensure!(late.status == 404, "a revoked edge learned a new route");
        fleet
            .serves("web.ctl.test", "web", Duration::from_secs(2))
            .await?;
        Ok(())
    });
}
