//! The upstream keep-alive pool: idle HTTP/1.1 connections to each origin service are kept and
//! reused, as Nginx's upstream `keepalive` does, so that a request does not pay a TCP handshake
//! through the tunnel.
//!
//! Built on hyper-util's pooling client with a [`Connector`] over any [`Dialer`]. The pool key
//! is the request URI's authority, which encodes the service: `http://<origin>:<port>/…`
//! (origin names are restricted to URI-safe characters by the config). The client never
//! resolves or connects by itself; the real `Host` header is set by the proxy.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::dial::{DialError, Dialer};
use crate::metrics::{DialLabels, Metrics};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Boxed error of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request sent upstream and every response sent to clients.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// The URI that addresses `port` on `origin` in the pool (path and query appended by callers).
pub fn service_uri(origin: &str, port: u16, path_and_query: &str) -> Result<Uri, http::Error> {
    let path = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    Uri::builder()
        .scheme("http")
        .authority(format!("{origin}:{port}"))
        .path_and_query(path)
        .build()
}

/// A tower `Service<Uri>` that opens connections with a [`Dialer`] for hyper's pool.
pub struct Connector<D> {
    dialer: Arc<D>,
    // Only this family, not all of `Metrics`: hyper's pool clones the connector per request.
    dial_errors: Family<DialLabels, Counter>,
}

impl<D> Clone for Connector<D> {
    fn clone(&self) -> Self {
        Self {
            dialer: self.dialer.clone(),
            dial_errors: self.dial_errors.clone(),
        }
    }
}

impl<D: Dialer> tower_service::Service<Uri> for Connector<D> {
    type Response = TokioIo<Upstream<D::Stream>>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, DialError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let dialer = self.dialer.clone();
        let dial_errors = self.dial_errors.clone();
        Box::pin(async move {
            let origin = uri.host().unwrap_or_default().to_owned();
            let port = uri.port_u16().unwrap_or(80);
            match dialer.dial(&origin, port).await {
                Ok(stream) => Ok(TokioIo::new(Upstream(stream))),
                Err(error) => {
                    dial_errors
                        .get_or_create(&DialLabels {
                            origin,
                            reason: error.reason(),
                        })
                        .inc();
                    Err(error)
                }
            }
        })
    }
}

/// A connection to an origin service, as hyper's pool sees it.
#[derive(Debug)]
pub struct Upstream<S>(pub S);

impl<S> Connection for Upstream<S> {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Upstream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Upstream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// The keep-alive pool: one hyper client shared by every route, keyed by origin service.
pub struct Pool<D: Dialer> {
    client: Client<Connector<D>, ProxyBody>,
}

impl<D: Dialer> Clone for Pool<D> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
        }
    }
}

impl<D: Dialer> Pool<D> {
    /// Keeps up to `max_idle` idle connections per origin service for `idle_timeout`.
    pub fn new(dialer: Arc<D>, metrics: Metrics, max_idle: usize, idle_timeout: Duration) -> Self {
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(idle_timeout)
            .pool_max_idle_per_host(max_idle)
            // The proxy sets Host to the client's host; the URI's authority is only a pool key.
            .set_host(false)
            .build(Connector {
                dialer,
                dial_errors: metrics.dial_errors.clone(),
            });
        Self { client }
    }

    /// Sends `request` (its URI from [`service_uri`]) over an idle or new connection. A request
    /// that fails on a stale pooled connection before being written is retried once by hyper.
    pub async fn send(
        &self,
        request: http::Request<ProxyBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(request).await
    }
}

/// The [`DialError`] inside a pool error, if connecting was what failed.
pub fn dial_error(error: &hyper_util::client::legacy::Error) -> Option<&DialError> {
    let mut source = std::error::Error::source(error);
    while let Some(current) = source {
        if let Some(dial) = current.downcast_ref::<DialError>() {
            return Some(dial);
        }
        source = current.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dial::TcpDialer;
    use http_body_util::{BodyExt, Empty};
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn service_uri_encodes_origin_and_port() {
        let uri = service_uri("home_1", 8001, "/a?b=c").unwrap();
        assert_eq!(uri.host(), Some("home_1"));
        assert_eq!(uri.port_u16(), Some(8001));
        assert_eq!(uri.path_and_query().unwrap().as_str(), "/a?b=c");
        assert_eq!(service_uri("o", 1, "*").unwrap().path(), "/");
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let server = tokio::spawn({
            let accepted = accepted.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(|_req| async {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(Bytes::from_static(b"ok")),
                            ))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            }
        });
        let dialer = TcpDialer::new(
            HashMap::from([("home".to_owned(), IpAddr::V4(Ipv4Addr::LOCALHOST))]),
            Duration::from_secs(2),
        );
        let pool = Pool::new(
            Arc::new(dialer),
            Metrics::default(),
            4,
            Duration::from_secs(90),
        );
        for _ in 0..20 {
            let request = http::Request::builder()
                .uri(service_uri("home", port, "/").unwrap())
                .header(http::header::HOST, "app.example.com")
                .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
                .unwrap();
            let response = pool.send(request).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        let request = http::Request::builder()
            .uri(service_uri("nowhere", port, "/").unwrap())
            .body(Empty::new().map_err(|never| match never {}).boxed_unsync())
            .unwrap();
        let error = pool.send(request).await.unwrap_err();
        assert!(
            matches!(dial_error(&error), Some(DialError::UnknownOrigin(_))),
            "{error:?}"
        );
        server.abort();
    }
}
