//! The live event feed: one poller reads new audit events from the store (once a second, only
//! while someone listens) and broadcasts them; each open `/events/stream` is a server-sent-events
//! stream of them. Streams are bounded ([`DEFAULT_MAX_STREAMS`], `serve --ui-max-streams`):
//! beyond it a new one gets 503 and those already open carry on. A stream re-checks its session
//! every [`RECHECK`] and ends when the session did.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};

use super::pages::overview::EventRow;
use super::session::viewer;
use super::Web;
use crate::api::extract::{cookie, SESSION_COOKIE};
use crate::store::{Event, EventQuery, Store};

/// Streams open at once by default.
pub const DEFAULT_MAX_STREAMS: usize = 64;
/// How often the poller looks for new events.
pub const POLL: Duration = Duration::from_secs(1);
/// How often an open stream re-checks its session.
pub const RECHECK: Duration = Duration::from_secs(30);

/// The shared feed.
#[derive(Clone)]
pub struct Feed {
    store: Arc<dyn Store>,
    tx: broadcast::Sender<Arc<Event>>,
    streams: Arc<Semaphore>,
    polling: Arc<AtomicBool>,
}

impl Feed {
    /// A feed over `store` allowing `max_streams` streams.
    pub fn new(store: Arc<dyn Store>, max_streams: usize) -> Self {
        let (tx, _) = broadcast::channel(256);
        Feed {
            store,
            tx,
            streams: Arc::new(Semaphore::new(max_streams)),
            polling: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A place among the streams, if one is free.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.streams.clone().try_acquire_owned().ok()
    }

    /// New events from now on; starts the poller if it is not running.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        let rx = self.tx.subscribe();
        if !self.polling.swap(true, Ordering::SeqCst) {
            let feed = self.clone();
            tokio::spawn(async move { feed.poll().await });
        }
        rx
    }

    async fn poll(self) {
        let mut last = match self
            .store
            .list_events(EventQuery {
                limit: Some(1),
                ..EventQuery::default()
            })
            .await
        {
            Ok(events) => events.last().map_or(0, |e| e.id),
            Err(error) => {
                tracing::warn!(%error, "event feed cannot read the audit trail");
                0
            }
        };
        loop {
            tokio::time::sleep(POLL).await;
            if self.tx.receiver_count() == 0 {
                self.polling.store(false, Ordering::SeqCst);
                // A subscriber may have come between the check and the store: keep going then.
                if self.tx.receiver_count() == 0 || self.polling.swap(true, Ordering::SeqCst) {
                    return;
                }
            }
            match self
                .store
                .list_events(EventQuery {
                    after: Some(last),
                    limit: Some(500),
                    ..EventQuery::default()
                })
                .await
            {
                Ok(events) => {
                    for event in events {
                        last = last.max(event.id);
                        let _ = self.tx.send(Arc::new(event));
                    }
                }
                Err(error) => tracing::warn!(%error, "event feed cannot read the audit trail"),
            }
        }
    }
}

/// `?entity=&entity_id=` of a stream.
#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    #[serde(default)]
    entity: Option<String>,
    #[serde(default)]
    entity_id: Option<String>,
}

impl Filter {
    fn admits(&self, event: &Event) -> bool {
        self.entity
            .as_deref()
            .filter(|e| !e.is_empty())
            .is_none_or(|e| event.entity.as_str() == e)
            && self
                .entity_id
                .as_deref()
                .filter(|e| !e.is_empty())
                .is_none_or(|e| event.entity_id == e)
    }
}

struct Open {
    rx: broadcast::Receiver<Arc<Event>>,
    web: Web,
    secret: String,
    filter: Filter,
    _permit: OwnedSemaphorePermit,
}

/// `GET /events/stream`: server-sent events, one `event: audit` per new audit event (JSON:
/// id, at, actor, what, entity_id).
pub async fn stream(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(filter): Query<Filter>,
) -> Response {
    if viewer(&web, &headers).await.is_err() {
        return (StatusCode::UNAUTHORIZED, "log in first").into_response();
    }
    let Some(permit) = web.feed.admit() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live event streams are open; try again later",
        )
            .into_response();
    };
    let secret = cookie(&headers, SESSION_COOKIE)
        .unwrap_or_default()
        .to_string();
    let open = Open {
        rx: web.feed.subscribe(),
        web,
        secret,
        filter,
        _permit: permit,
    };
    let events = futures_util::stream::unfold(open, |mut open| async move {
        loop {
            match tokio::time::timeout(RECHECK, open.rx.recv()).await {
                Ok(Ok(event)) => {
                    if !open.filter.admits(&event) {
                        continue;
                    }
                    let row = EventRow::from(&*event);
                    let data = json!({
                        "id": row.id, "at": row.at, "actor": row.actor, "what": row.what,
                        "entity": event.entity, "entity_id": row.entity_id,
                    });
                    let sse = SseEvent::default()
                        .event("audit")
                        .id(row.id.to_string())
                        .data(data.to_string());
                    return Some((Ok::<_, Infallible>(sse), open));
                }
                Ok(Err(broadcast::error::RecvError::Lagged(missed))) => {
                    let sse = SseEvent::default().event("lagged").data(missed.to_string());
                    return Some((Ok(sse), open));
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                Err(_) => {
                    if open.web.accounts.authenticate(&open.secret).await.is_err() {
                        return None;
                    }
                }
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
