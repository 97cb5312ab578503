//! The plain HTTP listener: answers ACME HTTP-01 challenges pushed by control
//! (`GET /.well-known/acme-challenge/<token>`, 404 for unknown tokens, never a redirect) and
//! redirects every other request for a name the edge routes to HTTPS.
//!
//! `GET`/`HEAD` get `301 Moved Permanently`; other methods get `308 Permanent Redirect` so that
//! clients repeat the method and body. `Location` is `https://host[:port]/path?query`, the
//! port omitted when it is 443. A host no route serves gets 404: the edge does not send
//! clients of arbitrary names (`Host: evil.example`) to an HTTPS address of that name. A head
//! over `max_header_bytes` gets 431 and several `Host` fields 400, as on the HTTPS port.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use kokoa_node::drain::DrainWatch;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument as _;

use crate::acme::AcmeChallenges;
use crate::head::{self, HeadError};
use crate::https::SharedHttpLimits;
use crate::https::{refuse, serve_until_drained};
use crate::limit::{Activity, ConnectionLimiter, LogSampler};
use crate::metrics::Metrics;
use crate::pool::ProxyBody;
use crate::proxy::{empty, head_refusal, page, ConnectionInfo};
use crate::route::{normalize_host, RouteTable};

/// Path prefix of ACME HTTP-01 challenges.
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The redirecting listener.
#[derive(Clone, Debug)]
pub struct HttpServer {
    /// Port written in `Location` (omitted when 443).
    pub https_port: u16,
    /// The routes: only their names are redirected.
    pub routes: Arc<ArcSwap<RouteTable>>,
    /// Timeouts and sizes.
    pub limits: SharedHttpLimits,
    /// Metrics.
    pub metrics: Metrics,
    /// Connection caps shared by every listener.
    pub connections: Arc<ConnectionLimiter>,
    /// Pending ACME HTTP-01 challenges.
    pub acme: Arc<AcmeChallenges>,
}

impl HttpServer {
    /// Accepts connections until draining begins.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        drain: DrainWatch,
        abort: watch::Receiver<bool>,
    ) {
        let sampler = LogSampler::new(Duration::from_secs(1));
        loop {
            let (stream, client) = tokio::select! {
                _ = drain.signaled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "http accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let permit = match self.connections.try_acquire(client.ip()) {
                Ok(permit) => permit,
                Err(refusal) => {
                    refuse(stream, &self.metrics, &sampler, "http", client, refusal);
                    continue;
                }
            };
            let server = self.clone();
            let info = ConnectionInfo {
                client,
                sni: None,
                drain: drain.clone(),
                abort: abort.clone(),
                activity: Arc::new(Activity::default()),
            };
            let span = tracing::info_span!("http", client = %client);
            tokio::spawn(
                async move {
                    let _permit = permit;
                    let _guard = server.metrics.connection("http");
                    let handler = server.clone();
                    let activity = info.activity.clone();
                    let service = service_fn(move |request| {
                        let _in_flight = activity.begin();
                        let response = handler.answer(&request);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let limits = server.limits.load_full();
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder
                        .timer(TokioTimer::new())
                        .header_read_timeout(limits.header_read_timeout)
                        .max_buf_size(limits.max_header_bytes)
                        .max_headers(limits.max_headers);
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    serve_until_drained(
                        connection,
                        &info,
                        Some(limits.idle_timeout),
                        limits.timeouts.send,
                        &server.metrics,
                    )
                    .await;
                }
                .instrument(span),
            );
        }
    }

    /// The answer to one plain HTTP request.
    pub fn answer<B>(&self, request: &Request<B>) -> Response<ProxyBody> {
        let path = request.uri().path();
        if let Some(token) = path.strip_prefix(ACME_CHALLENGE_PREFIX) {
            return match self.acme.key_authorization(token) {
                Some(key_authorization) => acme_answer(request.method(), key_authorization),
                None => {
                    tracing::debug!(token, "unknown ACME challenge token");
                    page(StatusCode::NOT_FOUND, "Unknown ACME challenge token.")
                }
            };
        }
        if head::head_size(request) > self.limits.load().max_header_bytes {
            return head_refusal(HeadError::TooLarge, true);
        }
        let host = match head::request_host(request) {
            Ok(host) => {
                normalize_host(&host).filter(|host| kokoa_model::HostName::new(host).is_ok())
            }
            Err(HeadError::NoHost | HeadError::MissingHost) => None,
            Err(error) => return head_refusal(error, true),
        };
        let Some(host) = host else {
            return page(
                StatusCode::BAD_REQUEST,
                "A valid Host header is required to redirect to HTTPS.",
            );
        };
        if self.routes.load().lookup(&host).is_none() {
            return page(
                StatusCode::NOT_FOUND,
                "No site is configured for this host name on this server.",
            );
        }
        let path_and_query = request
            .uri()
            .path_and_query()
            .map(|pq| pq.as_str())
            .filter(|pq| pq.starts_with('/'))
            .unwrap_or("/");
        let location = if self.https_port == 443 {
            format!("https://{host}{path_and_query}")
        } else {
            format!("https://{host}:{}{path_and_query}", self.https_port)
        };
        let Ok(location) = HeaderValue::from_str(&location) else {
            return page(StatusCode::BAD_REQUEST, "The request cannot be redirected.");
        };
        let status = if request.method() == Method::GET || request.method() == Method::HEAD {
            StatusCode::MOVED_PERMANENTLY
        } else {
            StatusCode::PERMANENT_REDIRECT
        };
        let mut response = Response::new(empty());
        *response.status_mut() = status;
        response.headers_mut().insert(header::LOCATION, location);
        response
    }
}

/// The HTTP-01 answer: the key authorization as `application/octet-stream` (RFC 8555
/// section 8.3), to GET and HEAD only.
fn acme_answer(method: &Method, key_authorization: String) -> Response<ProxyBody> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = page(
            StatusCode::METHOD_NOT_ALLOWED,
            "ACME challenges answer GET only.",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    tracing::info!("answered an ACME HTTP-01 challenge");
    let mut response = Response::new(
        Full::new(Bytes::from(key_authorization))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use kokoa_model::{EdgeLimits, HttpRoute};

    fn routes() -> Arc<ArcSwap<RouteTable>> {
        let route = |host: &str| HttpRoute {
            host: host.parse().unwrap(),
            aliases: Vec::new(),
            origin: "home".parse().unwrap(),
            port: kokoa_model::Port::new(1).unwrap(),
            limits: Default::default(),
        };
        Arc::new(ArcSwap::from_pointee(RouteTable::new(
            &[route("app.example.com"), route("*.wild.example.com")],
            &EdgeLimits::default(),
        )))
    }

    fn answer(port: u16, method: Method, uri: &str, host: Option<&str>) -> Response<ProxyBody> {
        let server = HttpServer {
            https_port: port,
            routes: routes(),
            limits: Default::default(),
            metrics: Metrics::default(),
            connections: ConnectionLimiter::new(Default::default(), 0, 0),
            acme: AcmeChallenges::new(),
        };
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        server.answer(&builder.body(()).unwrap())
    }

    #[test]
    fn redirects_keep_path_and_query() {
        let response = answer(443, Method::GET, "/a/b?c=d", Some("App.Example.com:80"));
        assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            response.headers()[header::LOCATION],
            "https://app.example.com/a/b?c=d"
        );
        let response = answer(8443, Method::POST, "/form", Some("app.example.com"));
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            response.headers()[header::LOCATION],
            "https://app.example.com:8443/form"
        );
    }

    #[test]
    fn only_routed_names_are_redirected() {
        for host in ["a.wild.example.com", "APP.example.com."] {
            let response = answer(443, Method::GET, "/", Some(host));
            assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY, "{host}");
        }
        for host in ["evil.com", "example.com", "a.b.wild.example.com"] {
            let response = answer(443, Method::GET, "/", Some(host));
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{host}");
            assert!(!response.headers().contains_key(header::LOCATION));
        }
        // Absolute form: the target names the host, and the Host header must agree.
        let response = answer(
            443,
            Method::GET,
            "http://evil.com/x",
            Some("app.example.com"),
        );
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn bad_hosts_and_acme_tokens() {
        assert_eq!(
            answer(443, Method::GET, "/", None).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            answer(443, Method::GET, "/", Some("evil\"host")).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            answer(
                443,
                Method::GET,
                "/.well-known/acme-challenge/abc",
                Some("a.example.com")
            )
            .status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn pending_acme_tokens_get_their_key_authorization() {
        let server = HttpServer {
            https_port: 443,
            routes: routes(),
            limits: Default::default(),
            metrics: Metrics::default(),
            connections: ConnectionLimiter::new(Default::default(), 0, 0),
            acme: AcmeChallenges::new(),
        };
        server
            .acme
            .set_http(vec![crate::acme::HttpChallenge {
                token: "tok".into(),
                key_authorization: "tok.thumb".into(),
            }])
            .unwrap();
        let request = |method: Method, path: &str| {
            server.answer(
                &Request::builder()
                    .method(method)
                    .uri(path)
                    .header(header::HOST, "a.example.com")
                    .body(())
                    .unwrap(),
            )
        };
        let response = request(Method::GET, "/.well-known/acme-challenge/tok");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/octet-stream"
        );
        assert_eq!(
            request(Method::POST, "/.well-known/acme-challenge/tok").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            request(Method::GET, "/.well-known/acme-challenge/other").status(),
            StatusCode::NOT_FOUND
        );
    }
}
