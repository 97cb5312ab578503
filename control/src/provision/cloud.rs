//! What the cloud provisioners (DigitalOcean, Vultr, Hetzner) share: their settings and one
//! JSON API client that sends the Bearer token, retries rate limits (429) and server errors
//! (5xx) a few times with backoff, and turns the providers' error bodies into
//! [`ProvisionError`]s that quote the provider's message.

use std::time::Duration;

use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::Method;
use serde_json::Value;
use zeroize::Zeroizing;

use super::ProvisionError;
use crate::dns::http::{snippet, JsonClient};

/// Attempts of one request when the provider answers 429 or 5xx (or cannot be reached).
pub const ATTEMPTS: u32 = 4;
/// The first retry's delay; doubled each time.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Default time allowed for one API request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a new VPS gets the `kokoa-edge` program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// An `https://` URL of the `kokoa-edge` binary for the VPS's architecture (e.g. a
    /// release asset).
    pub url: String,
    /// Its SHA-256 (hex), checked on the VPS before it runs.
    pub sha256: String,
}

/// Settings of a cloud provisioner.
#[derive(Clone)]
pub struct CloudSettings {
    /// The API base URL (the provider's own unless overridden, e.g. for a test fake).
    pub api_url: String,
    /// The API token.
    pub token: Zeroizing<String>,
    /// Region / location.
    pub region: String,
    /// Size / plan / server type.
    pub size: String,
    /// Image (OS) the VPS boots.
    pub image: String,
    /// Where the VPS gets kokoa-edge (else the image must have it installed).
    pub release: Option<Release>,
    /// SSH keys (provider ids or fingerprints) put on the VPS.
    pub ssh_keys: Vec<String>,
    /// Time allowed for one API request.
    pub timeout: Duration,
}

impl std::fmt::Debug for CloudSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudSettings")
            .field("api_url", &self.api_url)
            .field("region", &self.region)
            .field("size", &self.size)
            .field("image", &self.image)
            .field("release", &self.release)
            .finish_non_exhaustive()
    }
}

/// A provider's JSON API with its Bearer token.
#[derive(Debug)]
pub struct Api {
    client: JsonClient,
    provider: &'static str,
}

/// The provider's message in an error body: `message` (DigitalOcean), `error.message`
/// (Hetzner), `error` (Vultr), else the start of the body.
pub fn error_message(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return snippet(body);
    };
    value["message"]
        .as_str()
        .or_else(|| value["error"]["message"].as_str())
        .or_else(|| value["error"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| snippet(body))
}

impl Api {
    /// A client for `settings.api_url` sending `Authorization: Bearer TOKEN`.
    pub fn new(provider: &'static str, settings: &CloudSettings) -> Result<Self, ProvisionError> {
        let bearer = HeaderValue::from_str(&format!("Bearer {}", settings.token.as_str()))
            .map_err(|_| {
                ProvisionError::Config(format!(
                    "the {provider} API token has characters a header cannot carry"
                ))
            })?;
        let client = JsonClient::new(
            &settings.api_url,
            settings.timeout,
            vec![(AUTHORIZATION, bearer)],
        )
        .map_err(|e| ProvisionError::Config(e.to_string()))?;
        Ok(Api { client, provider })
    }

    /// Sends a request; returns the status and the JSON body (`Null` when empty) for 2xx and
    /// for 404 (which callers read as "gone"). 401/403, 429 after the retries, other 4xx and
    /// 5xx after the retries are errors quoting the provider's message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ProvisionError> {
        let provider = self.provider;
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let last = attempt >= ATTEMPTS;
            let response = match self.client.send(method.clone(), path, body).await {
                Ok(response) => response,
                Err(error) if last => {
                    return Err(ProvisionError::Transport {
                        provider,
                        message: error.to_string(),
                    })
                }
                Err(error) => {
                    tracing::debug!(provider, %error, attempt, "provider API unreachable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                    continue;
                }
            };
            let status = response.status;
            match status {
                200..=299 | 404 => {
                    let value = if response.body.is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_slice(&response.body).map_err(|e| {
                            ProvisionError::Provider {
                                provider,
                                message: format!(
                                    "{method} {path} answered {status} with a body that is not \
                                     JSON ({e}): {}",
                                    snippet(&response.body)
                                ),
                            }
                        })?
                    };
                    return Ok((status, value));
                }
                401 | 403 => {
                    return Err(ProvisionError::Unauthorized {
                        provider,
                        status,
                        message: error_message(&response.body),
                    })
                }
                429 | 500..=599 if !last => {
                    tracing::info!(provider, status, attempt, "provider API busy; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
                429 => {
                    return Err(ProvisionError::RateLimited {
                        provider,
                        message: error_message(&response.body),
                    })
                }
                500..=599 => {
                    return Err(ProvisionError::Provider {
                        provider,
                        message: format!(
                            "{method} {path} answered {status}: {}",
                            error_message(&response.body)
                        ),
                    })
                }
                _ => {
                    return Err(ProvisionError::Refused {
                        provider,
                        status,
                        message: error_message(&response.body),
                    })
                }
            }
        }
    }

    /// A [`ProvisionError::Provider`] for an answer that does not follow the API.
    pub fn unexpected(&self, what: impl std::fmt::Display) -> ProvisionError {
        ProvisionError::Provider {
            provider: self.provider,
            message: what.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_of_each_provider_are_found() {
        assert_eq!(
            error_message(br#"{"id":"unauthorized","message":"Unable to authenticate you"}"#),
            "Unable to authenticate you"
        );
        assert_eq!(
            error_message(
                br#"{"error":{"code":"unauthorized","message":"unable to authenticate"}}"#
            ),
            "unable to authenticate"
        );
        assert_eq!(
            error_message(br#"{"error":"Invalid API token.","status":401}"#),
            "Invalid API token."
        );
        assert_eq!(error_message(b"bad gateway"), "bad gateway");
    }
}
