//! `kokoa-control dev` (the README's first command) really publishes the sample app: an HTTPS
//! request to the edge, validated against the generated certificate, returns the app's page
//! with the forwarded headers the edge added.

use std::net::{SocketAddr, TcpListener as StdListener, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kokoa_control::dev::{self, DevOptions};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn free_tcp_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn https_get(port: u16, host: &str, cert_pem: &[u8], path: &str) -> anyhow::Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    let cert: CertificateDer<'static> = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem)?;
    roots.add(cert)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let mut tls = connector
        .connect(ServerName::try_from(host.to_owned())?, tcp)
        .await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    // The edge may close without close_notify once the response is complete.
    let _ = tls.read_to_end(&mut response).await;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

#[tokio::test]
async fn dev_serves_the_sample_app_through_the_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let options = DevOptions {
        dir: dir.path().to_owned(),
        host: "app.localhost".to_owned(),
        https_port: free_tcp_port(),
        http_port: free_tcp_port(),
        tunnel_port: free_udp_port(),
        admin_port: free_tcp_port(),
        app_port: free_tcp_port(),
    };
    // The origin's admin port is admin_port + 1: make sure it is free too.
    let options = DevOptions {
        admin_port: loop {
            let port = free_tcp_port();
            if port < u16::MAX && StdListener::bind(("127.0.0.1", port + 1)).is_ok() {
                break port;
            }
        },
        ..options
    };
    let files = dev::write_files(&options).unwrap();
    let cert_pem = std::fs::read(&files.certificate).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let options = options.clone();
        let files = files.clone();
        async move {
            dev::run(&options, &files, async {
                let _ = stop_rx.await;
            })
            .await
        }
    });

    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        match https_get(options.https_port, &options.host, &cert_pem, "/hello").await {
            Ok(page) if page.starts_with("HTTP/1.1 200") => break page,
            other if Instant::now() > deadline => panic!("dev never served the app: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(page.contains("Hello from the Kokoa sample app"), "{page}");
    assert!(page.contains("GET /hello"), "{page}");
    assert!(page.contains("x-forwarded-proto: https"), "{page}");
    assert!(page.contains("x-real-ip: 127.0.0.1"), "{page}");

    stop_tx.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .unwrap()
        .unwrap();
    result.unwrap();
}
