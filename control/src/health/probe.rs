//! Control's active probes of edges, one [`Outcome`] each:
//!
//! - **public**: a TLS handshake with the edge's public HTTPS listener at its public address
//!   (`public_ip` and `--health-public-port`). The probe sends no SNI and trusts no root, so it
//!   never completes a handshake; what it checks is that the edge's TLS engine *answers*: a
//!   certificate or an alert in reply to the ClientHello is a pass, a refused or reset
//!   connection, a close without a TLS reply or silence until the timeout is a failure. This is
//!   the path clients take (kernel, accept loop, connection limits, TLS), it needs no route, no
//!   certificate and no reserved path on the edge, and a stopped process (whose kernel still
//!   completes TCP handshakes from the backlog) fails it, which a TCP connect alone would not;
//! - **admin**: `GET /healthz` on the edge's admin listener (`admin_address`, when control can
//!   reach it): 200 passes, 503 `draining` is [`Outcome::Draining`], anything else fails.
//!
//! Every probe is bounded by the check timeout, and reads at most [`MAX_BODY`] bytes.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::tally::Outcome;

/// At most this much of an admin `/healthz` body is read.
pub const MAX_BODY: usize = 1024;

/// A probe's outcome and how long it took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probed {
    /// What it found.
    pub outcome: Outcome,
    /// How long it took.
    pub took: Duration,
}

async fn timed<F>(timeout: Duration, probe: F) -> Probed
where
    F: std::future::Future<Output = Outcome>,
{
    let started = Instant::now();
    let outcome = match tokio::time::timeout(timeout, probe).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::Fail(format!("timed out after {}", human(timeout))),
    };
    Probed {
        outcome,
        took: started.elapsed(),
    }
}

/// `3 s`, `500 ms`.
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// The client config of public probes: no roots (the handshake is never meant to complete),
/// no SNI (the probe goes to an address).
fn public_tls() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            config.enable_sni = false;
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}

/// Probes the public HTTPS listener at `addr`; see the module doc.
pub async fn public(addr: SocketAddr, timeout: Duration) -> Probed {
    timed(timeout, async move {
        let stream = match TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(error) => return Outcome::Fail(io_text(&error)),
        };
        let connector = tokio_rustls::TlsConnector::from(public_tls());
        let name = ServerName::IpAddress(addr.ip().into());
        match connector.connect(name, stream).await {
            // Only with a certificate our empty root store trusts, which cannot be; either way
            // the listener answered.
            Ok(_) => Outcome::Pass,
            // rustls errors (a certificate we do not trust, an alert from the edge) come as
            // InvalidData: the edge's TLS engine replied.
            Err(error) if error.kind() == std::io::ErrorKind::InvalidData => Outcome::Pass,
            Err(error) => Outcome::Fail(format!("no TLS reply: {}", io_text(&error))),
        }
    })
    .await
}

/// Probes `GET http://{address}/healthz`; see the module doc.
pub async fn admin(address: &str, timeout: Duration) -> Probed {
    timed(timeout, async move {
        let stream = match TcpStream::connect(address).await {
            Ok(stream) => stream,
            Err(error) => return Outcome::Fail(io_text(&error)),
        };
        let (mut sender, connection) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(pair) => pair,
                Err(error) => return Outcome::Fail(error.to_string()),
            };
        // Ends with the probe: the connection is dropped with `sender` when this returns.
        let connection = tokio::spawn(connection);
        let request = Request::get("/healthz")
            .header(hyper::header::HOST, address)
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new());
        let outcome = match request {
            Err(error) => Outcome::Fail(error.to_string()),
            Ok(request) => match sender.send_request(request).await {
                Err(error) => Outcome::Fail(error.to_string()),
                Ok(response) => {
                    let status = response.status();
                    let body = Limited::new(response.into_body(), MAX_BODY)
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let text = String::from_utf8_lossy(&body);
                    match status {
                        StatusCode::OK => Outcome::Pass,
                        StatusCode::SERVICE_UNAVAILABLE if text.trim() == "draining" => {
                            Outcome::Draining
                        }
                        status => Outcome::Fail(format!("HTTP {}", status.as_u16())),
                    }
                }
            },
        };
        connection.abort();
        outcome
    })
    .await
}

/// An I/O error as a reason: `connection refused`, not `Connection refused (os error 111)`.
fn io_text(error: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match error.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        UnexpectedEof => "closed without a reply".into(),
        TimedOut => "timed out".into(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    const T: Duration = Duration::from_secs(2);

    /// A free loopback port with nothing listening.
    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    #[tokio::test]
    async fn public_probe_passes_a_tls_server_and_fails_silence_and_refusal() {
        // A TLS server with a self-signed certificate: the probe passes (it never trusts it).
        let cert = rcgen::generate_simple_self_signed(vec!["edge.test".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for _ in 0..1 {
                let (stream, _) = listener.accept().await.unwrap();
                let _ = acceptor.accept(stream).await;
            }
        });
        assert_eq!(public(addr, T).await.outcome, Outcome::Pass);
        server.await.unwrap();

        // Nothing listening.
        let probed = public(closed_port().await, T).await;
        assert_eq!(probed.outcome, Outcome::Fail("connection refused".into()));

        // Accepts, never answers: the timeout.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(stream);
        });
        let probed = public(addr, Duration::from_millis(300)).await;
        assert_eq!(
            probed.outcome,
            Outcome::Fail("timed out after 300 ms".into())
        );
        assert!(probed.took >= Duration::from_millis(300));
        silent.abort();

        // Accepts and closes at once: no TLS reply.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let closer = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf).await;
        });
        let probed = public(addr, T).await;
        assert!(
            matches!(&probed.outcome, Outcome::Fail(e) if e.starts_with("no TLS reply")),
            "{probed:?}"
        );
        closer.await.unwrap();
    }

    /// Serves one HTTP/1.1 response per connection.
    async fn http_once(response: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            stream.write_all(response.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn admin_probe_reads_healthz() {
        let (addr, task) =
            http_once("HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
                .await;
        assert_eq!(admin(&addr, T).await.outcome, Outcome::Pass);
        let request = task.await.unwrap();
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request}"
        );

        let (addr, _task) = http_once(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\nconnection: close\r\n\r\ndraining\n",
        )
        .await;
        assert_eq!(admin(&addr, T).await.outcome, Outcome::Draining);

        let (addr, _task) = http_once(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(
            admin(&addr, T).await.outcome,
            Outcome::Fail("HTTP 500".into())
        );

        let addr = closed_port().await.to_string();
        assert_eq!(
            admin(&addr, T).await.outcome,
            Outcome::Fail("connection refused".into())
        );
    }
}
