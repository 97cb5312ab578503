//! Hostile clients for the resource-bound tests and benchmarks, and the memory probe they are
//! judged by.
//!
//! - [`StalledWindows`]: HTTP/2 connections that announce `SETTINGS_INITIAL_WINDOW_SIZE = 0`,
//!   open many streams of a large response and never send WINDOW_UPDATE, so every response
//!   stays queued somewhere between the app and the client (issue 16's attack).
//! - [`slow_body`] and [`stalled_body`]: request bodies that trickle (one byte a second) or stop
//!   after a few bytes of a declared length.
//! - [`rss_kib`]: a process's resident memory from `/proc/PID/status`.

use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::AsyncWriteExt as _;
use tokio::task::JoinSet;

use crate::client::{EdgeClient, Proto};

/// Resident memory (`VmRSS`) of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))?;
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unreadable VmRSS line {line:?}"))
}

/// HTTP/2 connections whose streams never open their receive window.
///
/// Each connection sends `SETTINGS_INITIAL_WINDOW_SIZE = 0`, so the edge may send response
/// headers but no DATA, and opens `streams_per_connection` requests for `path` (a large
/// response). Nothing is ever read. Dropping the value (or [`StalledWindows::leave`]) closes
/// every connection, as a client that goes away does.
pub struct StalledWindows {
    /// The h2 connection drivers and the streams held open.
    tasks: JoinSet<()>,
    /// Streams whose response head arrived (the edge forwarded them and the origin answered).
    answered: usize,
    /// Streams answered with an error status or reset (e.g. the app was slow to accept).
    failed: Vec<String>,
    /// Streams asked for.
    requested: usize,
}

impl StalledWindows {
    /// Opens `connections` connections to `host` through `client` with
    /// `streams_per_connection` stalled streams each, and waits (up to `wait`) until every
    /// stream's response head has arrived: from then on the whole path holds as much of each
    /// response as it lets itself hold.
    pub async fn open(
        client: &EdgeClient,
        host: &str,
        path: &str,
        connections: usize,
        streams_per_connection: usize,
        wait: Duration,
    ) -> anyhow::Result<Self> {
        let mut tasks = JoinSet::new();
        let (heads_tx, mut heads_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
        for _ in 0..connections {
            let tls = client.tls(host, Proto::Http2).await?;
            let (sender, connection) = h2::client::Builder::new()
                .initial_window_size(0)
                .max_concurrent_streams(streams_per_connection as u32)
                .handshake::<_, bytes::Bytes>(tls)
                .await
                .context("HTTP/2 handshake of the stalled-window client")?;
            tasks.spawn(async move {
                let _ = connection.await;
            });
            let mut sender = sender;
            let mut responses = Vec::with_capacity(streams_per_connection);
            for _ in 0..streams_per_connection {
                sender = sender.ready().await.context("no HTTP/2 stream capacity")?;
                let request = hyper::Request::get(format!("https://{host}{path}")).body(())?;
                let (response, _stream) = sender
                    .send_request(request, true)
                    .context("sending a stalled request")?;
                responses.push(response);
            }
            let heads = heads_tx.clone();
            tasks.spawn(async move {
                let mut bodies = Vec::with_capacity(responses.len());
                for response in responses {
                    let outcome = match response.await {
                        Ok(response) if response.status() == 200 => {
                            // Kept, never read: the stream's window stays 0.
                            bodies.push(response.into_body());
                            Ok(())
                        }
                        Ok(response) => Err(format!("answered {}", response.status())),
                        Err(error) => Err(format!("failed: {error}")),
                    };
                    let _ = heads.send(outcome);
                }
                // Hold the connection (and its streams) until the set is dropped.
                let _keep = (sender, bodies);
                std::future::pending::<()>().await;
            });
        }
        drop(heads_tx);
        let requested = connections * streams_per_connection;
        let (mut answered, mut failed) = (0, Vec::new());
        let deadline = tokio::time::Instant::now() + wait;
        while answered + failed.len() < requested {
            match tokio::time::timeout_at(deadline, heads_rx.recv()).await {
                Ok(Some(Ok(()))) => answered += 1,
                Ok(Some(Err(error))) => failed.push(error),
                Ok(None) | Err(_) => break,
            }
        }
        Ok(Self {
            tasks,
            answered,
            failed,
            requested,
        })
    }

    /// Streams whose response head arrived.
    pub fn answered(&self) -> usize {
        self.answered
    }

    /// How the streams that were not answered 200 ended.
    pub fn failed(&self) -> &[String] {
        &self.failed
    }

    /// Streams asked for.
    pub fn requested(&self) -> usize {
        self.requested
    }

    /// Closes every connection at once.
    pub async fn leave(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Sends a request whose body trickles: `Content-Length: declared`, then one byte every
/// `every`, `sent` bytes in all, over HTTP/1.1 on a fresh connection. Returns when the edge
/// closes the connection, answers, or a write fails (the status line if one came), or after
/// `limit` (then `Ok(None)` with the connection still open).
pub async fn slow_body(
    client: &EdgeClient,
    host: &str,
    path: &str,
    declared: usize,
    sent: usize,
    every: Duration,
    limit: Duration,
) -> anyhow::Result<Option<String>> {
    use tokio::io::AsyncReadExt as _;

    let tls = client.tls(host, Proto::Http1).await?;
    let (mut read, mut write) = tokio::io::split(tls);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {declared}\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    write.write_all(head.as_bytes()).await?;
    write.flush().await?;
    let trickle = async {
        for _ in 0..sent {
            if write.write_all(b"x").await.is_err() || write.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
        // Then silence, with the connection open.
        std::future::pending::<()>().await;
    };
    let answer = async {
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
        let text = String::from_utf8_lossy(&got).into_owned();
        text.lines().next().unwrap_or("closed").to_owned()
    };
    tokio::select! {
        line = answer => Ok(Some(line)),
        _ = trickle => bail!("unreachable: the trickle never ends"),
        _ = tokio::time::sleep(limit) => Ok(None),
    }
}
