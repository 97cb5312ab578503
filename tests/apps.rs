//! The sample apps that stand behind the origins, run in the test process.
//!
//! - [`HttpApp`]: HTTP/1.1 (and h2c) with `/echo` (method, path and headers as JSON),
//!   `/bytes/N` (N deterministic bytes, streamed), `/zeros/N` (N zero bytes from one shared
//!   chunk: a large response that costs the app nothing to produce, for the hostile-client
//!   tests), `/upload` (SHA-256 and length of the request body) and `/stream` (chunks spaced in
//!   time). Every response carries `x-app: NAME`. Its [`AppStats`] count the uploads and
//!   downloads in progress and those cut off (the connection went away before their end).
//! - [`WsEchoApp`]: a WebSocket server that echoes every message.
//! - [`TcpEchoApp`]: echoes raw bytes and half-closes after the client does.
//! - [`ProxyProtocolApp`]: reads the PROXY protocol v2 header the edge puts in front of a raw
//!   TCP connection, reports it, then echoes like [`TcpEchoApp`].

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{combinators::BoxBody, BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

type Body = BoxBody<Bytes, Infallible>;

/// The byte at offset `i` of every deterministic payload (`/bytes/N`, uploads made by tests).
pub fn pattern_byte(i: u64) -> u8 {
    // A prime modulus so that the pattern does not line up with power-of-two buffer sizes.
    (i % 251) as u8
}

/// Fills `buf` with the pattern starting at `offset`.
pub fn fill_pattern(offset: u64, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(offset + i as u64);
    }
}

/// SHA-256 (hex) of the first `len` bytes of the pattern.
pub fn pattern_sha256(len: u64) -> String {
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut offset = 0;
    while offset < len {
        let n = (len - offset).min(chunk.len() as u64) as usize;
        fill_pattern(offset, &mut chunk[..n]);
        hasher.update(&chunk[..n]);
        offset += n as u64;
    }
    hex(&hasher.finalize())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn full(status: StatusCode, name: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    if let Ok(value) = name.parse() {
        response.headers_mut().insert("x-app", value);
    }
    response
}

/// What an [`HttpApp`] is doing and what was cut off under it.
#[derive(Debug, Default)]
pub struct AppStats {
    /// `/upload` bodies being read.
    pub uploads_active: AtomicUsize,
    /// `/upload` bodies that ended in an error (the connection went away mid-body).
    pub uploads_cut: AtomicUsize,
    /// `/bytes/N` responses being sent.
    pub downloads_active: AtomicUsize,
    /// `/bytes/N` responses dropped before their end (the connection went away).
    pub downloads_cut: AtomicUsize,
}

impl AppStats {
    /// `(uploads_active, uploads_cut, downloads_active, downloads_cut)`.
    pub fn snapshot(&self) -> (usize, usize, usize, usize) {
        (
            self.uploads_active.load(Ordering::SeqCst),
            self.uploads_cut.load(Ordering::SeqCst),
            self.downloads_active.load(Ordering::SeqCst),
            self.downloads_cut.load(Ordering::SeqCst),
        )
    }
}

/// Keeps an upload or download counted as active while it lives; dropped before `done`, it
/// counts as cut.
struct InProgress {
    stats: Arc<AppStats>,
    upload: bool,
    done: bool,
}

impl InProgress {
    fn new(stats: &Arc<AppStats>, upload: bool) -> Self {
        let active = if upload {
            &stats.uploads_active
        } else {
            &stats.downloads_active
        };
        active.fetch_add(1, Ordering::SeqCst);
        Self {
            stats: stats.clone(),
            upload,
            done: false,
        }
    }
}

impl InProgress {
    /// Ends it as complete.
    fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let (active, cut) = if self.upload {
            (&self.stats.uploads_active, &self.stats.uploads_cut)
        } else {
            (&self.stats.downloads_active, &self.stats.downloads_cut)
        };
        active.fetch_sub(1, Ordering::SeqCst);
        if !self.done {
            cut.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn handle(name: String, stats: Arc<AppStats>, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    if let Some(n) = path.strip_prefix("/bytes/") {
        let Ok(len) = n.parse::<u64>() else {
            return full(StatusCode::BAD_REQUEST, &name, "bad length\n");
        };
        const CHUNK: u64 = 64 * 1024;
        let progress = InProgress::new(&stats, false);
        let stream =
            futures_util::stream::unfold((0u64, progress), move |(offset, progress)| async move {
                if offset >= len {
                    progress.finish();
                    return None;
                }
                let n = (len - offset).min(CHUNK) as usize;
                let mut buf = vec![0u8; n];
                fill_pattern(offset, &mut buf);
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(buf))),
                    (offset + n as u64, progress),
                ))
            });
        let mut response = Response::new(http_body_util::BodyExt::boxed(StreamBody::new(stream)));
        if let Ok(value) = name.parse() {
            response.headers_mut().insert("x-app", value);
        }
        if let Ok(value) = len.to_string().parse() {
            response.headers_mut().insert("content-length", value);
        }
        return response;
    }
    if let Some(n) = path.strip_prefix("/zeros/") {
        let Ok(len) = n.parse::<u64>() else {
            return full(StatusCode::BAD_REQUEST, &name, "bad length\n");
        };
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let stream = futures_util::stream::unfold(0u64, move |offset| async move {
            if offset >= len {
                return None;
            }
            let n = (len - offset).min(ZEROS.len() as u64) as usize;
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(&ZEROS[..n]))),
                offset + n as u64,
            ))
        });
        let mut response = Response::new(http_body_util::BodyExt::boxed(StreamBody::new(stream)));
        if let Ok(value) = len.to_string().parse() {
            response.headers_mut().insert("content-length", value);
        }
        return response;
    }
    match path.as_str() {
        "/upload" => {
            let progress = InProgress::new(&stats, true);
            let mut body = request.into_body();
            let mut hasher = Sha256::new();
            let mut len = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(frame) => {
                        if let Some(data) = frame.data_ref() {
                            hasher.update(data);
                            len += data.len() as u64;
                        }
                    }
                    Err(error) => {
                        return full(
                            StatusCode::BAD_REQUEST,
                            &name,
                            format!("upload failed after {len} bytes: {error}\n"),
                        )
                    }
                }
            }
            progress.finish();
            full(
                StatusCode::OK,
                &name,
                format!("{} {len}\n", hex(&hasher.finalize())),
            )
        }
        "/stream" => {
            let stream = futures_util::stream::unfold(0u32, |i| async move {
                if i >= 5 {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(format!("chunk {i}\n")))),
                    i + 1,
                ))
            });
            let mut response =
                Response::new(http_body_util::BodyExt::boxed(StreamBody::new(stream)));
            if let Ok(value) = name.parse() {
                response.headers_mut().insert("x-app", value);
            }
            response
        }
        _ => {
            let mut json = format!(
                "{{\"app\":\"{}\",\"method\":\"{}\",\"path\":\"{}\",\"version\":\"{:?}\",\"headers\":{{",
                json_escape(&name),
                request.method(),
                json_escape(
                    request
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str())
                        .unwrap_or("/")
                ),
                request.version()
            );
            let mut first = true;
            for (key, value) in request.headers() {
                if !first {
                    json.push(',');
                }
                first = false;
                json.push_str(&format!(
                    "\"{}\":\"{}\"",
                    json_escape(key.as_str()),
                    json_escape(&String::from_utf8_lossy(value.as_bytes()))
                ));
            }
            json.push_str("}}\n");
            full(StatusCode::OK, &name, json)
        }
    }
}

/// An HTTP app; stops (port closed, connections cut) on [`HttpApp::stop`] or drop.
pub struct HttpApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Uploads and downloads in progress and cut off.
    pub stats: Arc<AppStats>,
    task: Option<JoinHandle<()>>,
}

impl HttpApp {
    /// Starts the app on `ip`, port chosen by the system.
    pub async fn start(name: &str, ip: IpAddr) -> anyhow::Result<Self> {
        Self::start_with_send_buffer(name, ip, None).await
    }

    /// [`HttpApp::start`] with the kernel send buffer of every connection fixed at
    /// `send_buffer` bytes (no autotuning). With a thousand stalled responses the kernel would
    /// otherwise buffer megabytes per connection, and the test process would spend seconds
    /// filling those buffers instead of accepting connections.
    pub async fn start_with_send_buffer(
        name: &str,
        ip: IpAddr,
        send_buffer: Option<usize>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((ip, 0))
            .await
            .context("binding the HTTP app")?;
        Self::serve(name, listener, send_buffer)
    }

    /// [`HttpApp::start`] on exactly `addr` (an app restarted where it ran before).
    pub async fn start_on(name: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the HTTP app on {addr}"))?;
        Self::serve(name, listener, None)
    }

    fn serve(
        name: &str,
        listener: TcpListener,
        send_buffer: Option<usize>,
    ) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let name = name.to_owned();
        let stats = Arc::new(AppStats::default());
        let app_stats = stats.clone();
        let task = tokio::spawn(async move {
            // Owning the connections here means aborting this task cuts every one of them.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        if let Some(size) = send_buffer {
                            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(size);
                        }
                        let name = name.clone();
                        let stats = app_stats.clone();
                        connections.spawn(async move {
                            let service = hyper::service::service_fn(move |request| {
                                let name = name.clone();
                                let stats = stats.clone();
                                async move { Ok::<_, Infallible>(handle(name, stats, request).await) }
                            });
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Ok(Self {
            addr,
            stats,
            task: Some(task),
        })
    }

    /// Stops listening and cuts every open connection.
    pub async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for HttpApp {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A WebSocket echo server.
pub struct WsEchoApp {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl WsEchoApp {
    /// Starts it on `ip`.
    pub async fn start(ip: IpAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((ip, 0))
            .await
            .context("binding the WebSocket app")?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        if message.is_close() {
                            break;
                        }
                        if (message.is_text() || message.is_binary())
                            && ws.send(message).await.is_err()
                        {
                            break;
                        }
                    }
                    let _ = ws.close(None).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for WsEchoApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A raw TCP echo server.
pub struct TcpEchoApp {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpEchoApp {
    /// Starts it on `ip`.
    pub async fn start(ip: IpAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((ip, 0))
            .await
            .context("binding the TCP echo app")?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut write).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self { addr, task })
    }
}

impl Drop for TcpEchoApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The PROXY protocol v2 signature (12 bytes).
pub const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A parsed PROXY protocol v2 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    /// `true` for PROXY (a relayed connection), `false` for LOCAL.
    pub proxied: bool,
    /// The client's address, as the edge saw it (`None` for LOCAL or an unspecified family).
    pub source: Option<SocketAddr>,
    /// The address the client connected to.
    pub destination: Option<SocketAddr>,
    /// Bytes of TLVs after the addresses.
    pub tlv_bytes: usize,
    /// Bytes of the whole header.
    pub header_len: usize,
}

/// Parses a PROXY protocol v2 header at the start of `buf`: `Ok(None)` while more bytes are
/// needed, an error describing what is wrong otherwise.
pub fn parse_proxy_v2(buf: &[u8]) -> Result<Option<ProxyHeader>, String> {
    let known = buf.len().min(PROXY_V2_SIGNATURE.len());
    if buf[..known] != PROXY_V2_SIGNATURE[..known] {
        return Err(format!(
            "no PROXY v2 signature; the connection starts with {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(32)])
        ));
    }
    if buf.len() < 16 {
        return Ok(None);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Err(format!("PROXY header version {version}, expected 2"));
    }
    let proxied = match command {
        0 => false,
        1 => true,
        other => {
            return Err(format!(
                "PROXY v2 command {other} is neither LOCAL nor PROXY"
            ))
        }
    };
    let family = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let (source, destination, addresses) = match family {
        // TCP over IPv4.
        0x11 => {
            if len < 12 {
                return Err(format!("PROXY v2 TCP/IPv4 address block of {len} bytes"));
            }
            let ip = |at: usize| {
                std::net::Ipv4Addr::new(body[at], body[at + 1], body[at + 2], body[at + 3])
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            (
                Some(SocketAddr::new(ip(0).into(), port(8))),
                Some(SocketAddr::new(ip(4).into(), port(10))),
                12,
            )
        }
        // TCP over IPv6.
        0x21 => {
            if len < 36 {
                return Err(format!("PROXY v2 TCP/IPv6 address block of {len} bytes"));
            }
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&body[at..at + 16]);
                std::net::Ipv6Addr::from(octets)
            };
            let port = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
            (
                Some(SocketAddr::new(ip(0).into(), port(32))),
                Some(SocketAddr::new(ip(16).into(), port(34))),
                36,
            )
        }
        0x00 => (None, None, 0),
        other => return Err(format!("PROXY v2 address family/protocol {other:#04x}")),
    };
    Ok(Some(ProxyHeader {
        proxied,
        source,
        destination,
        tlv_bytes: len - addresses,
        header_len: 16 + len,
    }))
}

/// A raw TCP app behind a `proxy_protocol = "v2"` route: every connection must start with a
/// PROXY v2 header, which is reported (or what was there instead), then the rest is echoed. A
/// connection closed without a byte (the origin's TCP probe) is not reported.
pub struct ProxyProtocolApp {
    /// Where it listens.
    pub addr: SocketAddr,
    headers: tokio::sync::mpsc::UnboundedReceiver<Result<ProxyHeader, String>>,
    task: JoinHandle<()>,
}

impl ProxyProtocolApp {
    /// Starts it on `ip`.
    pub async fn start(ip: IpAddr) -> anyhow::Result<Self> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let listener = TcpListener::bind((ip, 0))
            .await
            .context("binding the PROXY protocol app")?;
        let addr = listener.local_addr()?;
        let (report, headers) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let report = report.clone();
                connections.spawn(async move {
                    let mut buf = Vec::new();
                    let header = loop {
                        match parse_proxy_v2(&buf) {
                            Ok(Some(header)) => break header,
                            Ok(None) => {}
                            Err(error) => {
                                let _ = report.send(Err(error));
                                return;
                            }
                        }
                        let mut chunk = [0u8; 512];
                        match stream.read(&mut chunk).await {
                            // A connect that sends nothing is the origin's TCP probe of the
                            // service (as load balancers' health checks): not a client.
                            Ok(0) if buf.is_empty() => return,
                            Ok(0) | Err(_) => {
                                let _ = report.send(Err(format!(
                                    "the connection ended after {} bytes, before a whole PROXY v2 header",
                                    buf.len()
                                )));
                                return;
                            }
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let rest = buf.split_off(header.header_len);
                    let _ = report.send(Ok(header));
                    if stream.write_all(&rest).await.is_err() {
                        return;
                    }
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                    let _ = write.shutdown().await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Self {
            addr,
            headers,
            task,
        })
    }

    /// The header of the next connection (in accept order), waiting up to `timeout`.
    pub async fn next_header(&mut self, timeout: Duration) -> anyhow::Result<ProxyHeader> {
        match tokio::time::timeout(timeout, self.headers.recv()).await {
            Ok(Some(Ok(header))) => Ok(header),
            Ok(Some(Err(error))) => anyhow::bail!("the app got no valid PROXY v2 header: {error}"),
            Ok(None) => anyhow::bail!("the PROXY protocol app stopped"),
            Err(_) => {
                anyhow::bail!("no connection reached the PROXY protocol app within {timeout:?}")
            }
        }
    }
}

impl Drop for ProxyProtocolApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxy_v2_ipv4_with_tlvs() {
        let mut header = PROXY_V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[0x21, 0x11, 0, 15]);
        header.extend_from_slice(&[127, 0, 0, 4, 127, 0, 0, 2]);
        header.extend_from_slice(&40000u16.to_be_bytes());
        header.extend_from_slice(&4001u16.to_be_bytes());
        header.extend_from_slice(&[0x04, 0, 0]); // a NOOP TLV
        header.extend_from_slice(b"payload");
        for cut in 0..31 {
            assert_eq!(parse_proxy_v2(&header[..cut]), Ok(None), "cut at {cut}");
        }
        let parsed = parse_proxy_v2(&header).expect("valid").expect("complete");
        assert!(parsed.proxied);
        assert_eq!(
            parsed.source,
            Some("127.0.0.4:40000".parse().expect("addr"))
        );
        assert_eq!(
            parsed.destination,
            Some("127.0.0.2:4001".parse().expect("addr"))
        );
        assert_eq!(parsed.tlv_bytes, 3);
        assert_eq!(&header[parsed.header_len..], b"payload");
        assert!(parse_proxy_v2(b"GET / HTTP/1.1\r\n").is_err());
        let mut v1 = header.clone();
        v1[12] = 0x11;
        assert!(parse_proxy_v2(&v1).is_err());
    }
}
