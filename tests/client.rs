//! An HTTPS client for the edge: dials the edge's address directly (no DNS), sends SNI and Host
//! for the name under test, and speaks HTTP/1.1 or HTTP/2 as negotiated by ALPN.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::pki::TestCa;

/// A request body.
pub type Body = BoxBody<Bytes, Infallible>;

/// The HTTP version to ask for with ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// `http/1.1`.
    Http1,
    /// `h2`.
    Http2,
}

/// Dials one edge.
#[derive(Clone)]
pub struct EdgeClient {
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    h1: Arc<rustls::ClientConfig>,
    h2: Arc<rustls::ClientConfig>,
}

/// A response read whole.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One open connection.
pub enum Connection {
    /// HTTP/1.1.
    H1(hyper::client::conn::http1::SendRequest<Body>),
    /// HTTP/2.
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

impl EdgeClient {
    /// A client for the edge at `addr` trusting `ca`.
    pub fn new(addr: SocketAddr, ca: &TestCa) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            source: None,
            h1: ca.client_config(&[b"http/1.1"])?,
            h2: ca.client_config(&[b"h2"])?,
        })
    }

    /// A client for the edge at `addr` with its own rustls configs for HTTP/1.1 and HTTP/2
    /// (e.g. trusting an ACME CA's root).
    pub fn with_configs(
        addr: SocketAddr,
        h1: Arc<rustls::ClientConfig>,
        h2: Arc<rustls::ClientConfig>,
    ) -> Self {
        Self {
            addr,
            source: None,
            h1,
            h2,
        }
    }

    /// The same client, connecting from `source` (a 127.0.0.0/8 address): the edge sees a
    /// different client address, as it would for many real clients.
    pub fn with_source(&self, source: std::net::IpAddr) -> Self {
        Self {
            source: Some(source),
            ..self.clone()
        }
    }

    /// TLS to the edge with SNI `host` and the ALPN of `proto`.
    pub async fn tls(&self, host: &str, proto: Proto) -> anyhow::Result<TlsStream<TcpStream>> {
        let config = match proto {
            Proto::Http1 => self.h1.clone(),
            Proto::Http2 => self.h2.clone(),
        };
        let tcp = match self.source {
            None => TcpStream::connect(self.addr).await,
            Some(source) => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(source, 0))?;
                socket.connect(self.addr).await
            }
        }
        .with_context(|| format!("connecting to the edge at {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(host.to_owned()).context("server name")?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with the edge for {host}"))?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let expected: &[u8] = match proto {
            Proto::Http1 => b"http/1.1",
            Proto::Http2 => b"h2",
        };
        if alpn.as_deref() != Some(expected) {
            bail!(
                "the edge negotiated ALPN {:?}, expected {:?}",
                alpn.map(|a| String::from_utf8_lossy(&a).into_owned()),
                String::from_utf8_lossy(expected)
            );
        }
        Ok(tls)
    }

    /// Opens an HTTP connection for `host`.
    pub async fn connect(&self, host: &str, proto: Proto) -> anyhow::Result<Connection> {
        let tls = TokioIo::new(self.tls(host, proto).await?);
        Ok(match proto {
            Proto::Http1 => {
                let (sender, connection) = hyper::client::conn::http1::handshake(tls).await?;
                tokio::spawn(connection);
                Connection::H1(sender)
            }
            Proto::Http2 => {
                let (sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), tls).await?;
                tokio::spawn(connection);
                Connection::H2(sender)
            }
        })
    }

    /// Writes `request` (raw HTTP/1.1 bytes, which may be malformed or oversized on purpose) on
    /// a fresh TLS connection for `host`, and reads what comes back until a whole response
    /// (head and `Content-Length` body) has arrived, the edge closes, or `wait` passes. Writing
    /// runs alongside reading, so an edge that answers early and stops reading is seen.
    pub async fn raw_http1(
        &self,
        host: &str,
        request: Vec<u8>,
        wait: Duration,
    ) -> anyhow::Result<RawAnswer> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let tls = self.tls(host, Proto::Http1).await?;
        let (mut read, mut write) = tokio::io::split(tls);
        let writer = tokio::spawn(async move {
            write.write_all(&request).await?;
            write.flush().await?;
            // Keep the write half open: a shutdown would send close_notify.
            std::io::Result::Ok(write)
        });
        let mut answer = RawAnswer::default();
        let deadline = tokio::time::Instant::now() + wait;
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            if answer.complete() {
                break;
            }
            match tokio::time::timeout_at(deadline, read.read(&mut chunk)).await {
                Err(_) => {
                    answer.timed_out = true;
                    break;
                }
                Ok(Ok(0)) => {
                    answer.closed = Some("EOF".into());
                    break;
                }
                Ok(Ok(n)) => answer.bytes.extend_from_slice(&chunk[..n]),
                Ok(Err(error)) => {
                    answer.closed = Some(error.to_string());
                    break;
                }
            }
        }
        if writer.is_finished() {
            if let Ok(Err(error)) = writer.await {
                answer.write_error = Some(error.to_string());
            }
        } else {
            writer.abort();
        }
        Ok(answer)
    }

    /// One request on a fresh connection, body read whole, bounded by 60 s.
    pub async fn get(&self, host: &str, path: &str, proto: Proto) -> anyhow::Result<Answer> {
        let mut connection = self.connect(host, proto).await?;
        let request = request(host, path, "GET", Empty::new().boxed())?;
        let response = connection.send(request).await?;
        read(response).await
    }
}

/// What came back for raw bytes sent with [`EdgeClient::raw_http1`].
#[derive(Debug, Default)]
pub struct RawAnswer {
    /// Every byte received.
    pub bytes: Vec<u8>,
    /// How the connection ended, if the edge ended it (`EOF` or the read error).
    pub closed: Option<String>,
    /// Whether the wait ran out with the connection still open.
    pub timed_out: bool,
    /// The write error, if writing the request failed (the edge stopped reading).
    pub write_error: Option<String>,
}

impl RawAnswer {
    /// The status of the (first) response, if a status line arrived.
    pub fn status(&self) -> Option<u16> {
        let text = String::from_utf8_lossy(&self.bytes);
        let line = text.lines().next()?;
        let mut parts = line.split(' ');
        if !parts.next()?.starts_with("HTTP/1.") {
            return None;
        }
        parts.next()?.parse().ok()
    }

    /// A response header's value (the first one, name case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        let text = String::from_utf8_lossy(&self.bytes);
        let (head, _) = text.split_once("\r\n\r\n")?;
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }

    /// Whether a whole response (head and `Content-Length` body, if any) has arrived.
    fn complete(&self) -> bool {
        let Some(end) = self.bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        match self.header("content-length").map(|v| v.parse::<usize>()) {
            Some(Ok(len)) => self.bytes.len() >= end + 4 + len,
            // No length: the body ends when the connection does.
            _ => false,
        }
    }

    /// Everything received, as text (for messages).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

impl Connection {
    /// Sends a request and returns the response head (the body streams).
    pub async fn send(&mut self, mut request: Request<Body>) -> anyhow::Result<Response<Incoming>> {
        if matches!(self, Connection::H2(_)) {
            // HTTP/2 carries the host in :authority (from the URI).
            request.headers_mut().remove("host");
        }
        let send = async {
            match self {
                Connection::H1(sender) => {
                    sender.ready().await?;
                    sender.send_request(request).await
                }
                Connection::H2(sender) => {
                    sender.ready().await?;
                    sender.send_request(request).await
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), send)
            .await
            .context("no response head within 60 s")?
            .context("request failed")
    }
}

/// Builds a request for `https://host/path` (Host header for HTTP/1.1, authority for HTTP/2).
pub fn request(host: &str, path: &str, method: &str, body: Body) -> anyhow::Result<Request<Body>> {
    Request::builder()
        .method(method)
        .uri(format!("https://{host}{path}"))
        .header("host", host)
        .body(body)
        .context("building a request")
}

/// Reads a response whole (bounded by 120 s).
pub async fn read(response: Response<Incoming>) -> anyhow::Result<Answer> {
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(120), body.collect())
        .await
        .context("response body not complete within 120 s")?
        .context("reading the response body")?
        .to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}
