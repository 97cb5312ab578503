//! Helpers the comparison runs inside the namespaces as subcommands of this binary:
//! the upload sink (an HTTP/1.1 app that reads and counts request bodies) and the idle-client
//! (opens N TLS keep-alive connections, makes one request on each, then holds them idle).
//! Also the run's certificate authority.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// The run's certificate: a throwaway CA and a server certificate for the benchmark names.
pub struct Pki {
    /// CA certificate, PEM (clients trust it).
    pub ca_pem: String,
    /// Server chain (leaf, CA), PEM.
    pub chain_pem: String,
    /// Server key, PKCS#8 PEM.
    pub key_pem: String,
}

impl Pki {
    /// Makes a CA and an ECDSA P-256 server certificate for `names`.
    pub fn generate(names: &[&str]) -> anyhow::Result<Self> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "kokoa bench CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().context("generating the CA key")?;
        let ca = ca_params
            .self_signed(&ca_key)
            .context("self-signing the CA")?;
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let key = KeyPair::generate().context("generating the server key")?;
        let cert = params
            .signed_by(&key, &ca, &ca_key)
            .context("signing the server certificate")?;
        Ok(Self {
            ca_pem: ca.pem(),
            chain_pem: format!("{}{}", cert.pem(), ca.pem()),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The upload sink: answers every request with `200` and the number of body bytes it read,
/// after reading the whole body. Serves until killed.
pub async fn upload_sink(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the upload sink to {listen}"))?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("upload sink: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                let mut body = request.into_body();
                let mut total: u64 = 0;
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame?.into_data() {
                        total += data.len() as u64;
                    }
                }
                Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(format!("{total}\n")))))
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Opens TLS connections to `addr` (SNI `host`, trusting `ca_pem`), sends one keep-alive
/// `GET /` on each and reads the response, then keeps every TCP connection open, in two
/// phases (after a fill: `count - warm` connections opened the same way and closed again):
/// `warm` connections, then `WARM <n>` is printed and a line is awaited on stdin;
/// then `count - warm` more, `READY <n>` is printed and it waits for a line (or stdin closing,
/// or `hold`) before closing them all. The harness reads memory at `WARM` and at `READY`, so
/// fixed costs (runtime threads, upstream pools) stay out of the per-connection figure.
/// The client drops its own TLS state after the response (the server cannot tell), so
/// 10,000 connections cost the client little memory.
pub async fn idle_clients(
    addr: SocketAddr,
    host: &str,
    ca_pem: &str,
    count: usize,
    warm: usize,
    hold: Duration,
) -> anyhow::Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(ca_pem)? {
        roots.add(cert).context("trusting the CA")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let opener = Opener {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        name: ServerName::try_from(host.to_owned()).context("SNI host name")?,
        request: format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"),
        addr,
    };
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    let warm = warm.min(count);
    // First the measured phase's pattern once, closed again: every fixed cost that phase could
    // grow (the edge's upstream pool reaches the size the concurrency of 128 needs) has grown
    // before the first reading. Without it the pool's growth landed in the per-connection
    // figure: with the window budget's per-client share, one address opens at most 32
    // full-size (poolable) tunnel streams at a time, so the pool filled over several bursts
    // of the measured phase (+32 MiB of stream buffers per node for 900 connections, measured
    // with `kokoa_tunnel_window_bytes`), not in the warm one.
    if count > warm {
        drop(opener.open(count - warm).await?);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut held = opener.open(warm).await?;
    println!("WARM {}", held.len());
    if tokio::time::timeout(hold, stdin.read_line(&mut line))
        .await
        .is_err()
    {
        bail!("no go-ahead on stdin within {hold:?}");
    }
    held.extend(opener.open(count - warm).await?);
    println!("READY {}", held.len());
    line.clear();
    let _ = tokio::time::timeout(hold, stdin.read_line(&mut line)).await;
    drop(held);
    Ok(())
}

struct Opener {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    request: String,
    addr: SocketAddr,
}

impl Opener {
    /// Opens `count` idle connections, 128 at a time; fails if any fails.
    async fn open(&self, count: usize) -> anyhow::Result<Vec<TcpStream>> {
        let gate = Arc::new(Semaphore::new(128));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..count {
            let permit = gate.clone().acquire_owned().await.context("semaphore")?;
            let connector = self.connector.clone();
            let name = self.name.clone();
            let request = self.request.clone();
            let addr = self.addr;
            tasks.spawn(async move {
                let _permit = permit;
                tokio::time::timeout(
                    Duration::from_secs(30),
                    one_idle(connector, name, addr, request),
                )
                .await
                .context("connection and first request took over 30 s")?
            });
        }
        let mut held = Vec::with_capacity(count);
        let mut failures = 0usize;
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined.context("idle client task")? {
                Ok(stream) => held.push(stream),
                Err(error) => {
                    failures += 1;
                    first_error.get_or_insert(format!("{error:#}"));
                }
            }
        }
        if failures > 0 {
            bail!(
                "{failures} of {count} idle connections failed; first: {}",
                first_error.unwrap_or_default()
            );
        }
        Ok(held)
    }
}

async fn one_idle(
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    addr: SocketAddr,
    request: String,
) -> anyhow::Result<TcpStream> {
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    let _ = tcp.set_nodelay(true);
    let mut tls = connector
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    tls.write_all(request.as_bytes()).await.context("request")?;
    // Read the head, then exactly Content-Length bytes of body, so the connection is idle
    // and reusable from the server's point of view.
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        let n = tls.read(&mut chunk).await.context("response")?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > 64 * 1024 {
            bail!("response head over 64 KiB");
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        bail!(
            "unexpected response: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .context("response without Content-Length")?;
    while buf.len() - head_end < length {
        let n = tls.read(&mut chunk).await.context("response body")?;
        if n == 0 {
            bail!("connection closed inside the response body");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let (tcp, _tls_state) = tls.into_inner();
    Ok(tcp)
}

fn rustls_pemfile_certs(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use rustls_pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the CA PEM")
}
