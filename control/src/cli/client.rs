//! [`ApiClient`]: the CLI's (and the tests') HTTP client for the REST API: JSON in and out,
//! bearer token, API errors surfaced with their status, message and field. `https://` URLs are
//! verified against control's CA file (`--ca-file`) or the system's roots ([`Trust`]).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::ErrorBody;

/// Default API URL (what `serve` listens on by default).
pub const DEFAULT_API_URL: &str = "https://127.0.0.1:7080";

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API URL is not usable.
    #[error("bad API URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The API could not be reached.
    #[error("cannot reach kokoa-control at {url}: {source} (is `kokoa-control serve` running? set --api-url or KOKOA_API_URL)")]
    Connect {
        /// The URL.
        url: String,
        /// The transport error.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// Reading the response failed.
    #[error("reading the response from {url}: {reason}")]
    Read {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The API answered with an error.
    #[error("{status}: {message}{}", field.as_ref().map(|f| format!(" (field `{f}`)")).unwrap_or_default())]
    Api {
        /// The HTTP status.
        status: StatusCode,
        /// The API's message.
        message: String,
        /// The field at fault.
        field: Option<String>,
    },
    /// The CA to trust could not be loaded.
    #[error("cannot use {what} to verify kokoa-control's certificate: {reason}")]
    Trust {
        /// The CA file, or "the system roots".
        what: String,
        /// Why.
        reason: String,
    },
    /// The response was not the expected JSON.
    #[error("unexpected response from {url}: {reason}")]
    Decode {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What an `https://` API URL's certificate is verified against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Trust {
    /// The operating system's root certificates (a public CA, e.g. an ACME certificate).
    #[default]
    SystemRoots,
    /// This PEM file of CA certificates (control's own CA: `DATA_DIR/ca.crt`).
    CaFile(std::path::PathBuf),
}

impl Trust {
    fn client_config(&self) -> Result<rustls::ClientConfig, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        match self {
            Trust::SystemRoots => {
                let loaded = rustls_native_certs::load_native_certs();
                for cert in loaded.certs {
                    let _ = roots.add(cert);
                }
                if roots.is_empty() {
                    return Err(ClientError::Trust {
                        what: "the system roots".into(),
                        reason: "none found; give control's CA with --ca-file".into(),
                    });
                }
            }
            Trust::CaFile(path) => {
                let error = |reason: String| ClientError::Trust {
                    what: path.display().to_string(),
                    reason,
                };
                let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    let cert = cert.map_err(|e| error(e.to_string()))?;
                    roots.add(cert).map_err(|e| error(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(error("no CERTIFICATE in it".into()));
                }
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Trust {
                what: "TLS".into(),
                reason: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

/// A REST API client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// Percent-encodes one path segment (names and host names are plain, but be safe).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'*') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl ApiClient {
    /// A client for the API at `url` (`https://host:port` or, for a loopback `--api-plain`
    /// control, `http://`; with or without `/api/v1`), trusting the system roots.
    pub fn new(url: &str, token: Option<String>) -> Result<ApiClient, ClientError> {
        Self::with_trust(url, token, Trust::SystemRoots)
    }

    /// A client for the API at `url` verifying its certificate against `trust`.
    pub fn with_trust(
        url: &str,
        token: Option<String>,
        trust: Trust,
    ) -> Result<ApiClient, ClientError> {
        let trimmed = url.trim().trim_end_matches('/');
        let base = trimmed
            .strip_suffix("/api/v1")
            .unwrap_or(trimmed)
            .to_string();
        let bad = |reason: &str| ClientError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = base.parse().map_err(|_| bad("not a URL"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(bad(
                    "expected https://HOST:PORT (or http:// for --api-plain)",
                ))
            }
        };
        if uri.host().is_none() {
            return Err(bad("no host"));
        }
        // Only an https URL needs the roots (system roots may be absent in a container).
        let config = if https {
            trust.client_config()?
        } else {
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(ApiClient {
            base,
            token,
            client,
        })
    }

    /// The base URL (without `/api/v1`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request to `/api/v1{path}` and returns the status and body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let url = format!("{}/api/v1{path}", self.base);
        let mut request = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::BadUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let response =
            self.client
                .request(request)
                .await
                .map_err(|source| ClientError::Connect {
                    url: url.clone(),
                    source,
                })?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Read {
                url: url.clone(),
                reason: e.to_string(),
            })?
            .to_bytes();
        Ok((status, bytes))
    }

    /// Like [`ApiClient::send`], turning a non-2xx answer into [`ClientError::Api`].
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let (status, bytes) = self.send(method, path, body).await?;
        if status.is_success() {
            return Ok(bytes);
        }
        let (message, field) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(error) => (error.error, error.field),
            Err(_) => (String::from_utf8_lossy(&bytes).trim().to_string(), None),
        };
        Err(ClientError::Api {
            status,
            message,
            field,
        })
    }

    fn decode<T: DeserializeOwned>(&self, path: &str, bytes: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
            url: format!("{}/api/v1{path}", self.base),
            reason: e.to_string(),
        })
    }

    /// `GET` and decode.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let bytes = self.call(Method::GET, path, None).await?;
        self.decode(path, &bytes)
    }

    /// `method` with a JSON body, and decode.
    pub async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Decode {
            url: path.to_string(),
            reason: e.to_string(),
        })?;
        let bytes = self.call(method, path, Some(body)).await?;
        self.decode(path, &bytes)
    }

    /// `POST` a JSON body and decode.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.json(Method::POST, path, body).await
    }

    /// `DELETE`.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.call(Method::DELETE, path, None).await.map(drop)
    }
}
