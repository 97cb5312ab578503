//! Origins' services as control sees them: each origin probes its own services (HTTP `GET` of
//! the health path, or a TCP connect) and reports them in its heartbeats; the health checker
//! reads those reports every tick with [`ServiceWatch::observe`] and turns a change between up
//! and down into
//! - an audit event, `service.down` / `service.up` (notification targets match them like any
//!   other kind), with the origin, service, check and error in its detail,
//! - a health history row (`kind = service`, with the origin's and the service's ids: served by
//!   `/health-checks?service_id=` and `kokoa-control origin show`),
//! - a count in `kokoa_health_checks_total{check="service"}`,
//!
//! and keeps `kokoa_service_up{origin,service}` at each reported service's current state (1
//! up, 0 down; services of origins without a fresh heartbeat are left out).
//!
//! Only fresh heartbeats count (a silent origin's services are unknown, not down: the origin's
//! own state says it is silent). The first report of a service after control starts sets its
//! baseline and a history row, without an event; so a restart of control emits no repeated
//! `service.down`.

use std::collections::{HashMap, HashSet};

use serde_json::json;
use time::OffsetDateTime;

use super::heartbeat::ServiceHeartbeat;
use super::metrics::HealthMetrics;
use crate::store::{Actor, CheckKind, Entity, Id, NewHealthCheck, Store, StoreError};

/// One report to observe: an origin and the services its latest fresh heartbeat lists.
#[derive(Clone, Copy, Debug)]
pub struct OriginReport<'a> {
    /// The origin's id.
    pub id: Id,
    /// Its name.
    pub name: &'a str,
    /// Its services as it reported them.
    pub services: &'a [ServiceHeartbeat],
}

/// What changed in one [`ServiceWatch::observe`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// `(origin, service)` that went down.
    pub down: Vec<(String, String)>,
    /// `(origin, service)` that came back up.
    pub up: Vec<(String, String)>,
}

/// The last known state of every reported service; see the module doc.
#[derive(Debug, Default)]
pub struct ServiceWatch {
    /// `(origin id, service name)` -> up.
    known: HashMap<(Id, String), bool>,
}

impl ServiceWatch {
    /// Compares `reports` with the last known states and records what changed (events, history,
    /// metrics). Services of origins not in `reports` keep their last state; those no longer
    /// reported by an origin that is in them are forgotten.
    pub async fn observe(
        &mut self,
        store: &dyn Store,
        metrics: &HealthMetrics,
        reports: &[OriginReport<'_>],
        now: OffsetDateTime,
    ) -> Result<Changes, StoreError> {
        let mut changes = Changes::default();
        let mut rows = Vec::new();
        let mut gauges = Vec::new();
        let reported: HashSet<Id> = reports.iter().map(|r| r.id).collect();
        let mut seen: HashSet<(Id, String)> = HashSet::new();
        for report in reports {
            let mut ids: Option<HashMap<String, Id>> = None;
            for service in report.services {
                let key = (report.id, service.name.clone());
                seen.insert(key.clone());
                gauges.push((
                    report.name.to_owned(),
                    service.name.clone(),
                    service.healthy,
                ));
                let previous = self.known.insert(key, service.healthy);
                if previous == Some(service.healthy) {
                    continue;
                }
                if ids.is_none() {
                    ids = Some(
                        store
                            .list_services(Some(report.id))
                            .await?
                            .into_iter()
                            .map(|s| (s.name, s.id))
                            .collect(),
                    );
                }
                let service_id = ids.as_ref().and_then(|ids| ids.get(&service.name).copied());
                let target = service
                    .check
                    .clone()
                    .unwrap_or_else(|| format!("service {} (port {})", service.name, service.port));
                rows.push(NewHealthCheck {
                    kind: CheckKind::Service,
                    target: format!("{}: {target}", report.name),
                    edge_id: None,
                    origin_id: Some(report.id),
                    service_id,
                    success: service.healthy,
                    response_time_ms: None,
                    error: service.error.clone().filter(|_| !service.healthy),
                    checked_at: now,
                });
                metrics.check(
                    CheckKind::Service,
                    if service.healthy { "pass" } else { "fail" },
                    None,
                );
                // The first report after control started is a baseline, not a change.
                if previous.is_none() {
                    continue;
                }
                let action = if service.healthy { "up" } else { "down" };
                tracing::info!(
                    origin = report.name,
                    service = %service.name,
                    state = action,
                    error = service.error.as_deref().unwrap_or(""),
                    "service state changed"
                );
                let pair = (report.name.to_owned(), service.name.clone());
                if service.healthy {
                    changes.up.push(pair);
                } else {
                    changes.down.push(pair);
                }
                let entity_id = service_id.map_or_else(
                    || format!("{}/{}", report.name, service.name),
                    |id| id.to_string(),
                );
                store
                    .record_event(
                        &Actor::System,
                        Entity::Service,
                        &entity_id,
                        action,
                        json!({
                            "origin": report.name,
                            "service": service.name,
                            "port": service.port,
                            "check": service.check,
                            "error": service.error.as_ref().filter(|_| !service.healthy),
                        }),
                    )
                    .await?;
            }
        }
        self.known.retain(|(origin, name), _| {
            !reported.contains(origin) || seen.contains(&(*origin, name.clone()))
        });
        metrics.set_services(&gauges);
        if !rows.is_empty() {
            match store.record_health_checks(rows).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(changes)
    }
}
