//! The REST API's and dashboard's listener: HTTPS by default, plain HTTP only on loopback.
//!
//! The certificate ([`ApiCertificate`]) is one of: signed by control's own CA for the
//! `--api-name` names (the default; clients trust `DATA_DIR/ca.crt`), a configured PEM pair
//! (`--api-tls-cert` / `--api-tls-key`), or one of control's ACME certificates
//! (`--api-tls-acme NAME`, swapped in place when renewed; control's CA-signed one is served
//! until it is issued).
//!
//! [`serve`] accepts connections up to a bound (`--api-max-connections`), gives each TLS
//! handshake and each request head a deadline, tells handlers the client address
//! ([`PeerAddr`]) and drains in-flight requests on shutdown for a grace period (live event
//! streams never end on their own).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::store::Store;
use crate::web::session::PeerAddr;

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get after shutdown begins.
pub const GRACE: Duration = Duration::from_secs(5);
/// Connections open at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// How often an ACME-backed certificate is looked up again without a config change.
const ACME_RECHECK: Duration = Duration::from_secs(300);

/// A PEM chain and key as rustls serves them.
pub fn certified_key(chain_pem: &str, key_pem: &str) -> anyhow::Result<CertifiedKey> {
    let chain = rustls_pemfile::certs(&mut chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("reading the certificate chain PEM")?;
    anyhow::ensure!(!chain.is_empty(), "no CERTIFICATE in the chain PEM");
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .context("reading the private key PEM")?
        .context("no private key in the key PEM")?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| anyhow::anyhow!("unsupported private key: {e}"))?;
    Ok(CertifiedKey::new(chain, signer))
}

/// The certificate the listener serves, swappable while it runs.
#[derive(Debug)]
pub struct ApiCertificate {
    current: ArcSwap<CertifiedKey>,
}

impl ApiCertificate {
    /// Serves `key` (until [`ApiCertificate::replace`]).
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(ApiCertificate {
            current: ArcSwap::from_pointee(key),
        })
    }

    /// Serves `key` from the next handshake on.
    pub fn replace(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }

    /// Keeps serving the ACME certificate of `name` from `store`: looks it up now, after every
    /// config change (a renewal is one) and every few minutes, until `stop`.
    pub async fn follow_acme(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        name: String,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut versions = store.subscribe_config_version();
        let mut served: Option<(crate::store::Id, time::OffsetDateTime)> = None;
        loop {
            match acme_key(&*store, &name).await {
                Ok(Some((id, not_after, key))) if served != Some((id, not_after)) => {
                    tracing::info!(%name, %not_after, "API listener now serves the ACME certificate");
                    self.replace(key);
                    served = Some((id, not_after));
                }
                Ok(Some(_)) => {}
                Ok(None) if served.is_none() => {
                    tracing::info!(%name, "no ACME certificate for the API yet; serving control's CA-signed one")
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%name, %error, "cannot load the API's ACME certificate")
                }
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = versions.changed() => {}
                () = tokio::time::sleep(ACME_RECHECK) => {}
            }
        }
    }
}

async fn acme_key(
    store: &dyn Store,
    name: &str,
) -> anyhow::Result<Option<(crate::store::Id, time::OffsetDateTime, CertifiedKey)>> {
    let name = name.to_ascii_lowercase();
    let now = time::OffsetDateTime::now_utc();
    let best = store
        .list_certificates()
        .await?
        .into_iter()
        .filter(|c| c.source == crate::store::CertificateSource::Acme)
        .filter(|c| c.names.iter().any(|n| n.eq_ignore_ascii_case(&name)))
        .filter(|c| c.chain_pem.is_some() && c.not_after.is_some_and(|t| t > now))
        .max_by_key(|c| c.not_after);
    let Some(cert) = best else {
        return Ok(None);
    };
    let Some(key) = store.certificate_key(cert.id).await? else {
        return Ok(None);
    };
    let chain = cert.chain_pem.clone().unwrap_or_default();
    let not_after = cert.not_after.unwrap_or(now);
    Ok(Some((cert.id, not_after, certified_key(&chain, &key)?)))
}

impl ResolvesServerCert for ApiCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A rustls acceptor serving `certificate`, offering HTTP/2 and HTTP/1.1.
pub fn acceptor(certificate: Arc<ApiCertificate>) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` (TLS when `tls` is given) until `shutdown`, then gives
/// in-flight requests [`GRACE`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    max_connections: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service =
            TowerToHyperService::new(router.clone().layer(axum::Extension(PeerAddr(peer))));
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                Some(tls) => {
                    let stream =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "API TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "API TLS handshake timed out");
                                return;
                            }
                        };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    if let Err(error) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, %error, "API connection ended with an error");
                    }
                }
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    if let Err(error) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, %error, "API connection ended with an error");
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!("API connections still open after the grace period; closing them");
    }
    Ok(())
}

/// The URL the dashboard is reached at on `addr`: `https://` unless plain, and `localhost` /
/// `127.0.0.1` for an unspecified or loopback address.
pub fn dashboard_url(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    let host = match addr.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        std::net::IpAddr::V4(ip) => ip.to_string(),
    };
    format!("{scheme}://{host}:{}/", addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            dashboard_url("0.0.0.0:7080".parse().unwrap(), true),
            "https://127.0.0.1:7080/"
        );
        assert_eq!(
            dashboard_url("[::1]:80".parse().unwrap(), false),
            "http://[::1]:80/"
        );
    }

    #[test]
    fn pem_pairs_load() {
        let cert = rcgen::generate_simple_self_signed(vec!["a.test".into()]).expect("cert");
        certified_key(&cert.cert.pem(), &cert.key_pair.serialize_pem()).expect("key");
        assert!(certified_key("nope", "nope").is_err());
    }
}
