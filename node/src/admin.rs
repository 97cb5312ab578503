//! The admin listener: `GET /healthz` for load balancers and supervisors, `GET /metrics` in
//! Prometheus text format. It is bound to a separate, usually private, address; it never serves
//! proxied traffic.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Content type of the Prometheus text exposition format produced by prometheus-client.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The admin endpoint of one node. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    draining: AtomicBool,
}

impl Admin {
    /// Serves `registry` (with every metric and collector already registered) on `/metrics`.
    pub fn new(registry: Registry) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                draining: AtomicBool::new(false),
            }),
        }
    }

    /// While draining, `/healthz` answers 503 so that load balancers stop sending traffic.
    pub fn set_draining(&self, draining: bool) {
        self.inner.draining.store(draining, Ordering::Relaxed);
    }

    /// Renders the current metrics in the Prometheus/OpenMetrics text format.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        // Encoding into a String only fails if a collector's own encoding fails.
        if let Err(error) =
            prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
        {
            tracing::warn!(%error, "encoding metrics failed");
        }
        out
    }

    /// Answers admin requests on `listener` until `shutdown` resolves.
    ///
    /// Errors on single connections are logged and do not stop the listener.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(request)) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(error) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%error, "admin connection ended with an error");
                }
            });
        }
    }

    fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        match (request.method(), request.uri().path()) {
            (&Method::GET | &Method::HEAD, "/healthz") => {
                if self.inner.draining.load(Ordering::Relaxed) {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else {
                    text(StatusCode::OK, "ok\n")
                }
            }
            (&Method::GET, "/metrics") => {
                let mut response = Response::new(Full::new(Bytes::from(self.render_metrics())));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
                response
            }
            (_, "/healthz" | "/metrics") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /healthz or /metrics\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn healthz_metrics_and_draining() {
        let mut registry = Registry::default();
        let counter: Counter = Counter::default();
        registry.register(
            "kokoa_test_things",
            "Things counted by the test",
            counter.clone(),
        );
        counter.inc_by(3);
        let admin = Admin::new(registry);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn({
            let admin = admin.clone();
            async move { admin.serve(listener, async { drop(stop_rx.await) }).await }
        });

        let health = get(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.ends_with("ok\n"), "{health}");

        let metrics = get(addr, "/metrics").await;
        assert!(metrics.contains("kokoa_test_things_total 3"), "{metrics}");

        admin.set_draining(true);
        let health = get(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 503"), "{health}");

        let missing = get(addr, "/nope").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

        stop_tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
