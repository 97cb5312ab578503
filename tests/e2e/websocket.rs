//! A WebSocket echo through the edge (HTTP/1.1 Upgrade passed through both ways).

use std::time::Duration;

use anyhow::{ensure, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use kokoa_tests::apps::WsEchoApp;
use kokoa_tests::client::Proto;
use kokoa_tests::net::loopback;
use kokoa_tests::topology::Builder;
use tokio_tungstenite::tungstenite::Message;

use crate::run_bounded;

#[test]
fn websocket_echo_through_the_edge() {
    run_bounded(Duration::from_secs(60), async {
        let app = WsEchoApp::start(loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("ws", 8002, app.addr)])
            .route("ws.test", "home", 8002)
            .start()
            .await?;
        let tls = topology.client()?.tls("ws.test", Proto::Http1).await?;
        let (mut ws, response) = tokio_tungstenite::client_async("wss://ws.test/socket", tls)
            .await
            .context("WebSocket handshake through the edge")?;
        ensure!(
            response.status() == 101,
            "upgrade answered {}",
            response.status()
        );
        for i in 0..20 {
            let text = format!("hello {i}");
            ws.send(Message::text(text.clone())).await?;
            let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .context("no echo within 10 s")?
                .context("socket closed")??;
            ensure!(echoed == Message::text(text), "echo {i}: {echoed:?}");
        }
        let blob: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        ws.send(Message::binary(blob.clone())).await?;
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no binary echo within 10 s")?
            .context("socket closed")??;
        ensure!(echoed.into_data()[..] == blob[..], "binary echo differs");
        ws.close(None).await?;
        Ok(())
    });
}
