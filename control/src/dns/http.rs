//! The small JSON-over-HTTPS client the PowerDNS and Cloudflare providers (and the cloud edge
//! provisioners, `crate::provision::cloud`) share: hyper-util's
//! pooled client over hyper-rustls (the system's roots; plain `http://` allowed for an API on
//! loopback or a private network), one timeout per request including the body, and a cap on
//! the body a server can make control hold.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header::{HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::DnsError;

/// The largest response body a provider API may send (a page of records is far smaller).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// An answer: the status and the whole body.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// The body, at most [`MAX_RESPONSE_BYTES`].
    pub body: Bytes,
}

/// A client for one API base URL (`https://api.cloudflare.com/client/v4`).
#[derive(Clone)]
pub struct JsonClient {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    timeout: Duration,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::fmt::Debug for JsonClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Headers carry the credentials: never printed.
        f.debug_struct("JsonClient")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl JsonClient {
    /// A client for `base` (an `http://` or `https://` URL; a trailing `/` is dropped) that
    /// sends `headers` (credentials, marked sensitive) with every request.
    pub fn new(
        base: &str,
        timeout: Duration,
        headers: Vec<(HeaderName, HeaderValue)>,
    ) -> Result<Self, DnsError> {
        let base = base.trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .map_err(|e| DnsError::Config(format!("{base:?} is not a URL: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(DnsError::Config(format!(
                "{base:?} is not an http:// or https:// URL"
            )));
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = if uri.scheme_str() == Some("https") {
            builder
                .with_provider_and_native_roots(provider)
                .map_err(|e| {
                    DnsError::Config(format!(
                        "loading the system's CA roots for {base}: {e} (install ca-certificates)"
                    ))
                })?
        } else {
            // Plain HTTP needs no roots; a machine without a CA bundle can still reach a
            // PowerDNS API on loopback.
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| DnsError::Config(format!("TLS setup: {e}")))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            builder.with_tls_config(config)
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let headers = headers
            .into_iter()
            .map(|(name, mut value)| {
                value.set_sensitive(true);
                (name, value)
            })
            .collect();
        Ok(Self {
            client,
            base,
            timeout,
            headers,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method` to `base + path` (path includes any query) with an optional JSON
    /// body, and reads the whole answer within the timeout. Transport failures, timeouts and
    /// oversized bodies are errors; any HTTP status is returned for the caller to judge.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Response, DnsError> {
        let url = format!("{}{path}", self.base);
        let fail = |reason: String| DnsError::Transport {
            server: self.base.clone(),
            reason,
        };
        let mut request = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header(ACCEPT, "application/json");
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let payload = match body {
            Some(json) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Bytes::from(
                    serde_json::to_vec(json)
                        .map_err(|e| fail(format!("encoding the request: {e}")))?,
                )
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|e| fail(format!("building {method} {path}: {e}")))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| fail(format!("{method} {path}: {e}")))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    fail(format!(
                        "{method} {path}: reading the answer (at most {MAX_RESPONSE_BYTES} bytes): {e}"
                    ))
                })?
                .to_bytes();
            Ok(Response { status, body })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                fail(format!(
                    "{method} {path}: no answer within {:?}",
                    self.timeout
                ))
            })?
    }
}

/// `value` percent-encoded for a URL query (unreserved characters and `*` kept).
pub fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'*') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The first `limit` characters of an API's error body, for messages.
pub fn snippet(body: &[u8]) -> String {
    const LIMIT: usize = 300;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.chars().count() > LIMIT {
        format!("{}...", text.chars().take(LIMIT).collect::<String>())
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_escaped_and_bad_urls_refused() {
        assert_eq!(query_escape("*.a-b.example.com"), "*.a-b.example.com");
        assert_eq!(query_escape("a b&c=d"), "a%20b%26c%3Dd");
        assert!(JsonClient::new("ftp://x", Duration::from_secs(1), Vec::new()).is_err());
        assert!(JsonClient::new("not a url", Duration::from_secs(1), Vec::new()).is_err());
    }
}
