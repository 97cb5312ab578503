//! Notifications: the audit trail, delivered to webhooks (signed JSON) and Slack-compatible
//! incoming webhooks.
//!
//! The [`Notifier`] runs in `kokoa-control serve` on the replica holding the `notify`
//! leadership ([`try_lead`](crate::store::LeaderStore::try_lead)). It reads new audit events
//! (every change and observation control records: `edge.status_changed`,
//! `edge.config_rejected`, `certificate.failed`, and any kind added later), queues one delivery
//! per event and matching target in the store, and sends them:
//! - one request at a time per target, in event order, so a slow or dead target delays only
//!   itself; at most `max_in_flight` requests in all;
//! - each attempt bounded by `timeout`; 2xx delivers; 5xx, 408, 429, timeouts and connection
//!   errors retry with exponential backoff (`retry_base` doubling up to `retry_max`) until
//!   `max_attempts`; other statuses (4xx, redirects, which are not followed) fail at once;
//! - the queue is in the store, bounded per target (`queue_limit` pending; beyond it the oldest
//!   are dropped and recorded as such) and its history pruned (`history` per target), so a dead
//!   endpoint costs a bounded number of rows and no memory;
//! - delivery is at least once: an attempt cut short by a restart or a leadership change is
//!   sent again by the next leader, with the same `Kokoa-Delivery` id.

pub mod message;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;

use crate::store::{
    AttemptOutcome, DueDelivery, Id, Leadership, NotificationKind, QueueLimits, Store,
};

/// The singleton job name of the notifier.
pub const LEADERSHIP_JOB: &str = "notify";
/// How often a replica that does not lead tries to take over.
const LEADERSHIP_RETRY: Duration = Duration::from_secs(15);
/// At most this much of a failed response's body goes into `last_error`.
const ERROR_BODY: usize = 256;

/// What the notifier runs with (`serve`'s `--notify-*` flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifyOptions {
    /// Attempts per delivery before it fails.
    pub max_attempts: u32,
    /// Backoff after the first failed attempt; doubles after each.
    pub retry_base: Duration,
    /// Longest backoff.
    pub retry_max: Duration,
    /// Time limit of one attempt (connect, send, response).
    pub timeout: Duration,
    /// Pending deliveries per target (the queue bound).
    pub queue_limit: u32,
    /// Finished deliveries kept per target.
    pub history: u32,
    /// How often the audit trail is read for new events.
    pub poll_interval: Duration,
    /// Requests in flight at once (one per target at most).
    pub max_in_flight: usize,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        NotifyOptions {
            max_attempts: 8,
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(600),
            timeout: Duration::from_secs(10),
            queue_limit: 1000,
            history: 1000,
            poll_interval: Duration::from_secs(1),
            max_in_flight: 16,
        }
    }
}

impl NotifyOptions {
    /// The backoff after failed attempt number `attempt` (1-based): `retry_base * 2^(attempt-1)`,
    /// at most `retry_max`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
        self.retry_base
            .checked_mul(factor)
            .unwrap_or(self.retry_max)
            .min(self.retry_max)
    }

    fn limits(&self) -> QueueLimits {
        QueueLimits {
            events_per_pass: 500,
            pending_per_target: self.queue_limit.max(1),
            history_per_target: self.history,
        }
    }
}

/// The `--notify-*` flags of `kokoa-control serve`.
#[derive(Clone, Debug, clap::Args)]
pub struct NotifyArgs {
    /// Attempts per notification before giving up.
    #[arg(long = "notify-max-attempts", value_name = "N", default_value_t = 8)]
    pub max_attempts: u32,
    /// Backoff after the first failed attempt, in milliseconds; doubles after each.
    #[arg(
        long = "notify-retry-base-ms",
        value_name = "MS",
        default_value_t = 5000
    )]
    pub retry_base_ms: u64,
    /// Longest backoff between attempts, in seconds.
    #[arg(
        long = "notify-retry-max",
        value_name = "SECONDS",
        default_value_t = 600
    )]
    pub retry_max_seconds: u64,
    /// Time limit of one attempt, in seconds.
    #[arg(
        id = "notify_timeout",
        long = "notify-timeout",
        value_name = "SECONDS",
        default_value_t = 10
    )]
    pub timeout_seconds: u64,
    /// Pending notifications per target; beyond it the oldest are dropped (a dead endpoint
    /// cannot grow the queue without bound).
    #[arg(long = "notify-queue-limit", value_name = "N", default_value_t = 1000)]
    pub queue_limit: u32,
    /// Finished notifications kept per target for `notify deliveries`.
    #[arg(long = "notify-history", value_name = "N", default_value_t = 1000)]
    pub history: u32,
}

impl Default for NotifyArgs {
    fn default() -> Self {
        let d = NotifyOptions::default();
        NotifyArgs {
            max_attempts: d.max_attempts,
            retry_base_ms: u64::try_from(d.retry_base.as_millis()).unwrap_or(u64::MAX),
            retry_max_seconds: d.retry_max.as_secs(),
            timeout_seconds: d.timeout.as_secs(),
            queue_limit: d.queue_limit,
            history: d.history,
        }
    }
}

impl NotifyArgs {
    /// The options, checked.
    pub fn options(&self) -> anyhow::Result<NotifyOptions> {
        anyhow::ensure!(
            (1..=100).contains(&self.max_attempts),
            "--notify-max-attempts must be 1 to 100"
        );
        anyhow::ensure!(
            self.retry_base_ms >= 1,
            "--notify-retry-base-ms must be positive"
        );
        anyhow::ensure!(
            (1..=86_400).contains(&self.retry_max_seconds),
            "--notify-retry-max must be 1 to 86400 seconds"
        );
        anyhow::ensure!(
            (1..=300).contains(&self.timeout_seconds),
            "--notify-timeout must be 1 to 300 seconds"
        );
        anyhow::ensure!(
            (1..=1_000_000).contains(&self.queue_limit),
            "--notify-queue-limit must be 1 to 1000000"
        );
        anyhow::ensure!(
            self.history <= 1_000_000,
            "--notify-history must be at most 1000000"
        );
        Ok(NotifyOptions {
            max_attempts: self.max_attempts,
            retry_base: Duration::from_millis(self.retry_base_ms),
            retry_max: Duration::from_secs(self.retry_max_seconds),
            timeout: Duration::from_secs(self.timeout_seconds),
            queue_limit: self.queue_limit,
            history: self.history,
            ..NotifyOptions::default()
        })
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Sends the audit trail to the notification targets (see the module documentation).
pub struct Notifier {
    store: Arc<dyn Store>,
    options: NotifyOptions,
    client: HttpsClient,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// A notifier over `store`. Fails when the system's trusted roots cannot be loaded.
    pub fn new(store: Arc<dyn Store>, options: NotifyOptions) -> anyhow::Result<Arc<Self>> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| anyhow::anyhow!("cannot load the system's trusted CA roots: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(Arc::new(Notifier {
            store,
            options,
            client,
        }))
    }

    /// Runs until `shutdown` resolves. Only the replica holding the `notify` leadership
    /// queues and sends; the others retry every 15 s. Attempts in flight at shutdown are
    /// abandoned (and sent again by the next leader).
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut leadership: Option<Leadership> = None;
        let mut in_flight: JoinSet<Id> = JoinSet::new();
        let mut busy: HashSet<Id> = HashSet::new();
        loop {
            let leading = tokio::select! {
                _ = &mut shutdown => return,
                leading = self.lead(&mut leadership) => leading,
            };
            if !leading {
                // Whatever was in flight is the new leader's now.
                in_flight.abort_all();
                busy.clear();
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(LEADERSHIP_RETRY) => {}
                }
                continue;
            }
            match self
                .store
                .fan_out_notifications(self.options.limits())
                .await
            {
                Ok(report) if report.queued > 0 || report.dropped > 0 => {
                    tracing::debug!(?report, "notifications queued");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot queue notifications"),
            }
            self.dispatch(&mut in_flight, &mut busy).await;
            let wait = self.next_wakeup().await;
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(wait) => {}
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    Self::finished(done, &mut busy);
                    while let Some(done) = in_flight.try_join_next() {
                        Self::finished(done, &mut busy);
                    }
                }
            }
        }
    }

    fn finished(done: Result<Id, tokio::task::JoinError>, busy: &mut HashSet<Id>) {
        match done {
            Ok(target) => {
                busy.remove(&target);
            }
            Err(error) => {
                // A panicking attempt: free everything rather than wedge a target.
                tracing::error!(%error, "notification attempt task failed");
                busy.clear();
            }
        }
    }

    /// Starts attempts for the due deliveries of targets with none in flight.
    async fn dispatch(self: &Arc<Self>, in_flight: &mut JoinSet<Id>, busy: &mut HashSet<Id>) {
        let room = self.options.max_in_flight.saturating_sub(busy.len());
        if room == 0 {
            return;
        }
        let busy_now: Vec<Id> = busy.iter().copied().collect();
        let due = match self
            .store
            .due_notification_deliveries(&busy_now, u32::try_from(room).unwrap_or(u32::MAX))
            .await
        {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "cannot read due notifications");
                return;
            }
        };
        for due in due {
            let target = due.delivery.target_id;
            busy.insert(target);
            let notifier = self.clone();
            in_flight.spawn(async move {
                notifier.attempt(due).await;
                target
            });
        }
    }

    /// Sleeps until the next poll, or sooner when a retry is due.
    async fn next_wakeup(&self) -> Duration {
        let poll = self.options.poll_interval;
        match self.store.next_delivery_due().await {
            Ok(Some(at)) => {
                // Already due means in flight now (or waiting for room): its end wakes the loop.
                match Duration::try_from(at - time::OffsetDateTime::now_utc()) {
                    Ok(until) if !until.is_zero() => until.clamp(Duration::from_millis(10), poll),
                    _ => poll,
                }
            }
            _ => poll,
        }
    }

    /// Keeps or takes the `notify` leadership.
    async fn lead(&self, leadership: &mut Option<Leadership>) -> bool {
        if let Some(held) = leadership.as_ref() {
            if held.holds().await {
                return true;
            }
            tracing::warn!("lost the notification leadership (database connection)");
            *leadership = None;
        }
        match self.store.try_lead(LEADERSHIP_JOB).await {
            Ok(Some(held)) => {
                tracing::info!("this control replica now sends notifications");
                *leadership = Some(held);
                true
            }
            Ok(None) => false,
            Err(error) => {
                tracing::warn!(%error, "cannot take the notification leadership");
                false
            }
        }
    }

    /// One attempt of one delivery, recorded in the store.
    async fn attempt(&self, due: DueDelivery) -> AttemptOutcome {
        let attempt = due.delivery.attempts.saturating_add(1);
        let span = tracing::info_span!(
            "notify",
            delivery = %due.delivery.id,
            kind = %due.delivery.kind,
            attempt
        );
        let (status, error) =
            match tokio::time::timeout(self.options.timeout, self.send(&due)).await {
                Ok(Ok((status, _))) if (200..300).contains(&status) => (Some(status), None),
                Ok(Ok((status, text))) if text.is_empty() => {
                    (Some(status), Some(format!("HTTP {status}")))
                }
                Ok(Ok((status, text))) => (Some(status), Some(format!("HTTP {status}: {text}"))),
                Ok(Err(error)) => (None, Some(error)),
                Err(_) => (
                    None,
                    Some(format!(
                        "no answer within {} s",
                        self.options.timeout.as_secs_f32()
                    )),
                ),
            };
        let outcome = match (status, error) {
            (Some(status), None) => AttemptOutcome::Delivered { status },
            (status, error) => {
                let error = error.unwrap_or_default();
                // Redirects are not followed: the target's URL should be the final one.
                let retryable = status.is_none_or(|s| s >= 500 || s == 408 || s == 429);
                if !retryable {
                    AttemptOutcome::Failed {
                        status,
                        error: format!("refused, not retried: {error}"),
                    }
                } else if attempt >= self.options.max_attempts {
                    AttemptOutcome::Failed {
                        status,
                        error: format!("gave up after {attempt} attempts: {error}"),
                    }
                } else {
                    AttemptOutcome::Retry {
                        status,
                        error,
                        retry_in: self.options.backoff(attempt),
                    }
                }
            }
        };
        match &outcome {
            AttemptOutcome::Delivered { .. } => {
                tracing::debug!(parent: &span, "notification delivered");
            }
            AttemptOutcome::Retry {
                error, retry_in, ..
            } => {
                tracing::info!(parent: &span, %error, ?retry_in, "notification failed; will retry");
            }
            AttemptOutcome::Failed { error, .. } => {
                tracing::warn!(parent: &span, %error, "notification failed for good");
            }
        }
        if let Err(error) = self
            .store
            .finish_delivery_attempt(due.delivery.id, outcome.clone())
            .await
        {
            tracing::warn!(parent: &span, %error, "cannot record the notification attempt");
        }
        outcome
    }

    /// Sends one request: the response's status and, unless 2xx, the start of its body (Slack
    /// says why there: `invalid_payload`, `no_service`, ...); or an error saying what failed.
    async fn send(&self, due: &DueDelivery) -> Result<(u16, String), String> {
        let body = match due.kind {
            NotificationKind::Webhook => message::webhook_body(&due.delivery, &due.event),
            NotificationKind::Slack => message::slack_body(&due.event),
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(due.url.expose())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, format!("kokoa-control/{}", crate::VERSION));
        if due.kind == NotificationKind::Webhook {
            request = request
                .header(message::EVENT_HEADER, due.delivery.kind.as_str())
                .header(message::DELIVERY_HEADER, due.delivery.id.to_string());
            if let Some(secret) = &due.secret {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                request = request.header(
                    message::SIGNATURE_HEADER,
                    message::signature(secret.expose(), now, &body),
                );
            }
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Ok((status, String::new()));
        }
        let body = Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let text: String = String::from_utf8_lossy(&body)
            .chars()
            .take(ERROR_BODY)
            .collect();
        Ok((status, text.trim().to_string()))
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
