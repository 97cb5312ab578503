//! The edge answers the ACME challenges control pushes to it: HTTP-01 tokens on the plain HTTP
//! listener, TLS-ALPN-01 validation certificates for `acme-tls/1` handshakes. Real sockets on
//! loopback, an in-process edge.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use kokoa_edge::acme::{HttpChallenge, TlsAlpnChallenge, ACME_TLS_ALPN};
use kokoa_edge::config::EdgeConfig;
use kokoa_edge::dial::TcpDialer;
use kokoa_edge::metrics::Metrics;
use kokoa_edge::sni::CertStore;
use kokoa_edge::{Edge, Listeners};
use kokoa_tunnel::key::PrivateKey;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

mod common;
use common::AcceptAny;

const DEADLINE: Duration = Duration::from_secs(10);

struct Running {
    https: SocketAddr,
    http: SocketAddr,
    acme: Arc<kokoa_edge::acme::AcmeChallenges>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .context("edge stops in time")??
    }
}

async fn start() -> Result<Running> {
    let text = format!(
        r#"
[edge]
https = "127.0.0.1:0"
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
drain_timeout = 1
[tunnel]
private_key = "{}"
[[origins]]
name = "home"
public_key = "{}"
address = "10.100.1.10"
origin_address = "10.100.1.1"
[[routes]]
host = "a.kokoa.test"
origin = "home"
port = 8001
"#,
        PrivateKey::generate().to_base64(),
        PrivateKey::generate().public_key().to_base64(),
    );
    let config = EdgeConfig::from_toml(&text, None)?;
    let listeners = Listeners::bind(&config).await?;
    let https = listeners.https.local_addr()?;
    let http = listeners.http.local_addr()?;
    let dialer = TcpDialer::new(HashMap::new(), Duration::from_secs(1));
    let edge = Edge::new(
        config,
        CertStore::placeholder()?,
        dialer,
        Metrics::default(),
    );
    let acme = edge.acme().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(edge.serve(
        listeners,
        async {
            let _ = stopped.await;
        },
        || {},
    ));
    Ok(Running {
        https,
        http,
        acme,
        stop: Some(stop),
        task,
    })
}

/// One HTTP/1.1 request for `a.kokoa.test` on a fresh connection; returns the status code and
/// the body.
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    get_for(addr, "a.kokoa.test", path).await
}

/// [`get`] for `host`.
async fn get_for(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response)).await??;
    let text = String::from_utf8(response)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A TLS handshake offering `alpn` for `sni`: the negotiated protocol and the leaf served.
async fn handshake(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> Result<(Option<Vec<u8>>, CertificateDer<'static>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let stream = TcpStream::connect(addr).await?;
    let tls = tokio::time::timeout(
        DEADLINE,
        TlsConnector::from(Arc::new(config)).connect(ServerName::try_from(sni.to_owned())?, stream),
    )
    .await??;
    let (_, session) = tls.get_ref();
    let leaf = session
        .peer_certificates()
        .and_then(|certs| certs.first())
        .context("a certificate")?
        .clone()
        .into_owned();
    Ok((session.alpn_protocol().map(<[u8]>::to_vec), leaf))
}

#[tokio::test]
async fn http01_tokens_are_answered_and_others_get_404() -> Result<()> {
    let edge = start().await?;
    let prefix = "/.well-known/acme-challenge/";
    assert_eq!(get(edge.http, &format!("{prefix}tok_1")).await?.0, 404);

    edge.acme.set_http(vec![HttpChallenge {
        token: "tok_1".into(),
        key_authorization: "tok_1.thumbprint".into(),
    }])?;
    assert_eq!(
        get(edge.http, &format!("{prefix}tok_1")).await?,
        (200, "tok_1.thumbprint".to_owned())
    );
    // Unknown tokens: 404, not a redirect; other paths of a routed name still redirect to
    // HTTPS, those of other names get 404.
    assert_eq!(get(edge.http, &format!("{prefix}other")).await?.0, 404);
    assert_eq!(get(edge.http, "/app").await?.0, 301);
    assert_eq!(get_for(edge.http, "b.kokoa.test", "/app").await?.0, 404);
    // Challenges are answered whatever the name (the validator asks for the name being
    // validated, which may not be routed here yet).
    edge.acme.set_http(vec![HttpChallenge {
        token: "tok_2".into(),
        key_authorization: "tok_2.thumbprint".into(),
    }])?;
    assert_eq!(
        get_for(edge.http, "b.kokoa.test", &format!("{prefix}tok_2")).await?,
        (200, "tok_2.thumbprint".to_owned())
    );

    // The next snapshot without the token withdraws it.
    edge.acme.set_http(Vec::new())?;
    assert_eq!(get(edge.http, &format!("{prefix}tok_1")).await?.0, 404);
    edge.stop().await
}

#[tokio::test]
async fn acme_tls_alpn_handshakes_get_the_validation_certificate() -> Result<()> {
    let edge = start().await?;
    let name = "a.kokoa.test";
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&[9u8; 32])];
    let validation = params.self_signed(&key)?;

    // No pending challenge: the acme-tls/1 handshake is refused (never a regular certificate).
    assert!(handshake(edge.https, name, &[ACME_TLS_ALPN]).await.is_err());

    edge.acme.set_tls_alpn(vec![TlsAlpnChallenge {
        name: name.into(),
        cert_pem: validation.pem(),
        key_pem: key.serialize_pem(),
    }])?;
    let (alpn, leaf) = handshake(edge.https, name, &[ACME_TLS_ALPN]).await?;
    assert_eq!(alpn.as_deref(), Some(ACME_TLS_ALPN));
    assert_eq!(leaf.as_ref(), validation.der().as_ref());

    // Ordinary clients for the same name get the regular certificate and h2.
    let (alpn, leaf) = handshake(edge.https, name, &[b"h2", b"http/1.1"]).await?;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_ne!(leaf.as_ref(), validation.der().as_ref());
    // Other names: no validation certificate.
    assert!(handshake(edge.https, "b.kokoa.test", &[ACME_TLS_ALPN])
        .await
        .is_err());
    edge.stop().await
}
