//! A raw TCP route: a public port on the edge forwarded to an origin service as bytes.

use std::time::Duration;

use anyhow::{ensure, Context as _};
use kokoa_tests::apps::{fill_pattern, TcpEchoApp};
use kokoa_tests::net::loopback;
use kokoa_tests::topology::Builder;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::run_bounded;

#[test]
fn raw_tcp_route_round_trips_bytes_with_half_close() {
    run_bounded(Duration::from_secs(60), async {
        let app = TcpEchoApp::start(loopback(1)).await?;
        let topology = Builder::new()
            .origin("home", &[("p2p", 4001, app.addr)])
            .tcp_route("home", 4001)
            .start()
            .await?;
        let listen = topology.tcp_listens[0];
        let mut payload = vec![0u8; 3 * 1024 * 1024 + 17];
        fill_pattern(7, &mut payload);
        let stream =
            kokoa_tests::eventually("TCP route accepts", Duration::from_secs(10), || async {
                Ok(tokio::net::TcpStream::connect(listen).await?)
            })
            .await?;
        let (mut read, mut write) = stream.into_split();
        let writer = {
            let payload = payload.clone();
            tokio::spawn(async move {
                write.write_all(&payload).await?;
                // Half-close: the echo must still come back in full after our FIN.
                write.shutdown().await?;
                anyhow::Ok(write)
            })
        };
        let mut echoed = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut echoed))
            .await
            .context("echo did not end within 30 s")??;
        let _write = writer.await??;
        ensure!(
            echoed.len() == payload.len(),
            "echoed {} of {} bytes",
            echoed.len(),
            payload.len()
        );
        ensure!(echoed == payload, "echoed bytes differ");
        Ok(())
    });
}
