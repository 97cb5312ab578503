//! The health checker's Prometheus metrics (see [`HealthMetrics::register_metrics`] for names).

use std::collections::HashSet;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::metrics::MetricSource;
use crate::store::{CheckKind, NodeStatus};

/// Labels of [`HealthMetrics::nodes`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `edge` or `origin`.
    pub kind: String,
    /// The state.
    pub state: String,
}

/// Labels of [`HealthMetrics::node_state`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    /// `edge` or `origin`.
    pub kind: String,
    /// The node's name.
    pub name: String,
    /// The state.
    pub state: String,
}

/// Labels of [`HealthMetrics::service_up`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The origin's name.
    pub origin: String,
    /// The service's name.
    pub service: String,
}

/// Labels of [`HealthMetrics::checks`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// `public`, `admin` or `service`.
    pub check: String,
    /// `pass`, `fail` or `draining`.
    pub result: String,
}

/// Labels of [`HealthMetrics::check_duration`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckKindLabels {
    /// `public` or `admin`.
    pub check: String,
}

/// Buckets from 1 ms to ~16 s.
#[derive(Clone, Copy, Debug)]
pub struct DurationBuckets;

impl MetricConstructor<Histogram> for DurationBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.001, 2.0, 15))
    }
}

/// Metrics of node states and active checks.
#[derive(Debug)]
pub struct HealthMetrics {
    /// Nodes per kind and state.
    pub nodes: Family<StateLabels, Gauge>,
    /// 1 for each node's current state.
    pub node_state: Family<NodeLabels, Gauge>,
    /// State changes, by kind and new state.
    pub transitions: Family<StateLabels, Counter>,
    /// Probe results (control's probes and the services' results reported by origins).
    pub checks: Family<CheckLabels, Counter>,
    /// How long control's probes took.
    pub check_duration: Family<CheckKindLabels, Histogram, DurationBuckets>,
    /// Health history rows removed by retention.
    pub history_pruned: Counter,
    /// 1 for each origin service its origin reports up, 0 down.
    pub service_up: Family<ServiceLabels, Gauge>,
    /// Label sets of `node_state` set last time, to remove those of nodes that changed or
    /// went away.
    shown: Mutex<HashSet<NodeLabels>>,
    /// Label sets of `service_up` set last time.
    services_shown: Mutex<HashSet<ServiceLabels>>,
}

impl Default for HealthMetrics {
    fn default() -> Self {
        HealthMetrics {
            nodes: Family::default(),
            node_state: Family::default(),
            transitions: Family::default(),
            checks: Family::default(),
            check_duration: Family::new_with_constructor(DurationBuckets),
            history_pruned: Counter::default(),
            service_up: Family::default(),
            shown: Mutex::new(HashSet::new()),
            services_shown: Mutex::new(HashSet::new()),
        }
    }
}

impl HealthMetrics {
    /// Sets the state gauges to exactly `nodes` (kind, name, state).
    pub fn set_states(&self, nodes: &[(&'static str, String, NodeStatus)]) {
        for kind in ["edge", "origin"] {
            for state in NodeStatus::ALL {
                let count = nodes
                    .iter()
                    .filter(|(k, _, s)| *k == kind && *s == state)
                    .count();
                self.nodes
                    .get_or_create(&StateLabels {
                        kind: kind.to_owned(),
                        state: state.as_str().to_owned(),
                    })
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
        let current: HashSet<NodeLabels> = nodes
            .iter()
            .map(|(kind, name, state)| NodeLabels {
                kind: (*kind).to_owned(),
                name: name.clone(),
                state: state.as_str().to_owned(),
            })
            .collect();
        let mut shown = self.shown.lock();
        for gone in shown.difference(&current) {
            self.node_state.remove(gone);
        }
        for labels in &current {
            self.node_state.get_or_create(labels).set(1);
        }
        *shown = current;
    }

    /// Sets `service_up` to exactly `services` (origin, service, up).
    pub fn set_services(&self, services: &[(String, String, bool)]) {
        let mut shown = self.services_shown.lock();
        let current: HashSet<ServiceLabels> = services
            .iter()
            .map(|(origin, service, _)| ServiceLabels {
                origin: origin.clone(),
                service: service.clone(),
            })
            .collect();
        for gone in shown.difference(&current) {
            self.service_up.remove(gone);
        }
        for (origin, service, up) in services {
            self.service_up
                .get_or_create(&ServiceLabels {
                    origin: origin.clone(),
                    service: service.clone(),
                })
                .set(i64::from(*up));
        }
        *shown = current;
    }

    /// Counts a state change.
    pub fn transition(&self, kind: &'static str, to: NodeStatus) {
        self.transitions
            .get_or_create(&StateLabels {
                kind: kind.to_owned(),
                state: to.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts one probe result (and its duration for control's own probes).
    pub fn check(&self, kind: CheckKind, result: &'static str, took: Option<Duration>) {
        self.checks
            .get_or_create(&CheckLabels {
                check: kind.as_str().to_owned(),
                result: result.to_owned(),
            })
            .inc();
        if let Some(took) = took {
            self.check_duration
                .get_or_create(&CheckKindLabels {
                    check: kind.as_str().to_owned(),
                })
                .observe(took.as_secs_f64());
        }
    }
}

impl MetricSource for HealthMetrics {
    /// `kokoa_nodes{kind,state}`, `kokoa_node_state{kind,name,state}`,
    /// `kokoa_node_state_transitions_total{kind,state}`, `kokoa_health_checks_total{check,result}`,
    /// `kokoa_health_check_duration_seconds{check}`, `kokoa_service_up{origin,service}`,
    /// `kokoa_health_history_pruned_total`.
    fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "kokoa_nodes",
            "Nodes per kind (edge, origin) and state (enrolling, online, degraded, offline, draining)",
            self.nodes.clone(),
        );
        registry.register(
            "kokoa_node_state",
            "1 for each node's current state",
            self.node_state.clone(),
        );
        registry.register(
            "kokoa_node_state_transitions",
            "Node state changes, by kind and new state",
            self.transitions.clone(),
        );
        registry.register(
            "kokoa_health_checks",
            "Health probe results: control's probes of edges (public, admin), and changes of the services' state that origins report (service)",
            self.checks.clone(),
        );
        registry.register(
            "kokoa_health_check_duration_seconds",
            "Duration of control's probes of edges",
            self.check_duration.clone(),
        );
        registry.register(
            "kokoa_service_up",
            "1 while an origin reports its service up (its probes pass), 0 while down",
            self.service_up.clone(),
        );
        registry.register(
            "kokoa_health_history_pruned",
            "Health history rows removed by retention",
            self.history_pruned.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_gauges_follow_the_nodes() {
        let metrics = HealthMetrics::default();
        let text = |m: &HealthMetrics| crate::metrics::render(&crate::metrics::registry(&[m]));
        metrics.set_states(&[
            ("edge", "e1".into(), NodeStatus::Online),
            ("edge", "e2".into(), NodeStatus::Offline),
        ]);
        let out = text(&metrics);
        assert!(
            out.contains("kokoa_nodes{kind=\"edge\",state=\"online\"} 1"),
            "{out}"
        );
        assert!(out.contains("kokoa_node_state{kind=\"edge\",name=\"e2\",state=\"offline\"} 1"));
        metrics.set_states(&[("edge", "e1".into(), NodeStatus::Online)]);
        let out = text(&metrics);
        assert!(!out.contains("name=\"e2\""), "{out}");
        assert!(out.contains("kokoa_nodes{kind=\"edge\",state=\"offline\"} 0"));
        metrics.check(CheckKind::Public, "fail", Some(Duration::from_millis(3)));
        let out = text(&metrics);
        assert!(out.contains("kokoa_health_checks_total{check=\"public\",result=\"fail\"} 1"));
        assert!(out.contains("kokoa_health_check_duration_seconds_count{check=\"public\"} 1"));
    }
}
