//! The node-state model: one pure function, [`judge`], turns what control observed of a node
//! (its Watch stream, its heartbeats, its active checks, its drain flag, its last NACK) into a
//! [`NodeStatus`] and the [`Cause`]s behind it. Everything that shows a node's state (the API,
//! `kokoa-control status`, the state events (`edge.offline`, ...), the metrics, DNS steering) shows what
//! this function decided, so the rules live here and nowhere else:
//!
//! 1. **draining** when an operator drained the node, or its admin `/healthz` answers 503
//!    `draining` (the node is shutting down);
//! 2. **enrolling** while it has never connected (no heartbeat, no ACK, no stream);
//! 3. **offline** when its public listener failed `unhealthy_threshold` probes in a row, or it
//!    went silent (no heartbeat within `heartbeat_timeout`, or its stream closed more than a
//!    heartbeat interval ago and nothing came since) and no public probe shows it still
//!    serving;
//! 4. **enrolling** (a new node) or **offline** (a recovering one) while its public probe has
//!    not yet passed `healthy_threshold` times; a new node also stays **enrolling** until a
//!    heartbeat reports an applied config and no tunnel down to a peer that is itself serving
//!    (an edge is not published before it reaches its running origins);
//! 5. **degraded** when it serves but something needs attention: its admin `/healthz` fails,
//!    it is silent while its public listener still answers, it rejected its current config,
//!    a tunnel peer or (origins) a service is down;
//! 6. **online** otherwise.
//!
//! Reasons are written for an operator: "no heartbeat for 31 s (expected every 10 s)", "3
//! failed probes of https://203.0.113.10/healthz: connection refused", "service web: connection
//! refused". A [`Judgement`]'s [`key`](Judgement::key) leaves out what changes on every look
//! (ages, counts), so the checker stores a reason again only when its substance changes.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;

use super::heartbeat::Heartbeat;
use super::tally::Verdict;
use crate::store::{CheckKind, Nack, NodeId, NodeStatus};

/// The timing the judgement compares ages against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How often nodes heartbeat.
    pub heartbeat_interval: Duration,
    /// A node silent for longer is offline (unless its public listener still answers).
    pub heartbeat_timeout: Duration,
    /// Passes in a row a probe needs before a node counts as healthy (for the reason text).
    pub healthy_threshold: u32,
}

/// This control process's view of the node's Watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Open.
    Open {
        /// Since when.
        since: OffsetDateTime,
    },
    /// Closed then (the node left, its connection broke).
    Closed {
        /// When.
        at: OffsetDateTime,
    },
    /// Not known here (the node talks to another control replica, or none since this one
    /// started): heartbeat ages decide.
    Unknown,
}

/// One active check of the node and its verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckView {
    /// What is checked.
    pub kind: CheckKind,
    /// The probed URL.
    pub target: String,
    /// Its verdict so far.
    pub verdict: Verdict,
}

/// What control observed of one node, the input of [`judge`].
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    /// Which node.
    pub node: NodeId,
    /// The state it was judged to be in last time (stored).
    pub previous: NodeStatus,
    /// It has connected at least once (a heartbeat, an ACK or a stream was seen).
    pub seen: bool,
    /// An operator drained it.
    pub drained: bool,
    /// Its Watch stream as this process sees it.
    pub stream: Stream,
    /// When it last sent a heartbeat (to any control replica).
    pub last_heartbeat: Option<OffsetDateTime>,
    /// Its last heartbeat.
    pub heartbeat: Option<&'a Heartbeat>,
    /// The newest config it applied.
    pub applied_version: Option<u64>,
    /// The last config it rejected.
    pub nack: Option<&'a Nack>,
    /// Its active checks (an edge's public listener and admin `/healthz`).
    pub checks: &'a [CheckView],
    /// Its WireGuard peers by public key (an edge's origins, an origin's edges).
    pub peers: &'a HashMap<String, Peer>,
}

/// One WireGuard peer of a node as control knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its name.
    pub name: String,
    /// It was judged serving (online or degraded) last round: a tunnel to it can come up.
    pub serving: bool,
}

/// Why a node is in its state; a [`Judgement`] lists one or more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// It has never connected.
    NeverConnected,
    /// It connected but its heartbeat predates its first applied config (so it says nothing
    /// yet about the tunnels that config sets up).
    NoConfigYet,
    /// An operator drained it.
    Drained,
    /// Its `/healthz` answers 503 `draining`.
    AnswersDraining {
        /// The probed URL.
        target: String,
    },
    /// A probe failed `failures` times in a row (or has not recovered yet).
    ProbesFailing {
        /// Public listener or admin.
        kind: CheckKind,
        /// The probed URL.
        target: String,
        /// Failures in a row (0 while recovering).
        failures: u32,
        /// Passes since (recovering).
        passes: u32,
        /// The last failure.
        error: String,
    },
    /// A probe has not passed often enough yet to call the node healthy.
    ProbesPending {
        /// The probed URL.
        target: String,
        /// Passes so far.
        passes: u32,
        /// Passes needed.
        needed: u32,
    },
    /// No heartbeat within the timeout.
    NoHeartbeat {
        /// Silence so far (`None`: it never sent one).
        silent_for: Option<Duration>,
        /// The expected interval.
        interval: Duration,
    },
    /// Its stream closed and nothing came since.
    Disconnected {
        /// How long ago.
        ago: Duration,
    },
    /// It rejected the config it should run.
    RejectedConfig {
        /// The rejected version.
        version: u64,
        /// The node's reason.
        error: String,
    },
    /// A WireGuard peer has had no handshake for 180 s.
    PeerDown {
        /// The peer's name (or its key when control does not know it).
        name: String,
        /// Age of the last handshake (`None`: never).
        last_handshake: Option<Duration>,
        /// `origin` or `edge`.
        peer_kind: &'static str,
    },
    /// One of an origin's services fails its checks.
    ServiceDown {
        /// The service.
        name: String,
        /// Why.
        error: String,
    },
    /// All is well (the summary shown for online nodes).
    Healthy {
        /// Age of the last heartbeat.
        heartbeat_age: Option<Duration>,
        /// How many active checks pass.
        passing_checks: usize,
    },
}

/// Whole seconds, for reasons.
fn secs(d: Duration) -> u64 {
    d.as_secs()
}

/// A compact age: `31 s`, `4 min`, `2 h`.
fn age(d: Duration) -> String {
    let s = d.as_secs();
    if s < 120 {
        format!("{s} s")
    } else if s < 7200 {
        format!("{} min", s / 60)
    } else {
        format!("{} h", s / 3600)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::NeverConnected => f.write_str(
                "has never connected: install its bundle, or make a new enrollment token (kokoa-control node-token create)",
            ),
            Cause::NoConfigYet => f.write_str("connected; no config applied yet"),
            Cause::Drained => f.write_str(
                "drained by an operator (undrain: kokoa-control edge undrain NAME)",
            ),
            Cause::AnswersDraining { target } => write!(f, "{target} answers 503 draining"),
            Cause::ProbesFailing {
                kind: _,
                target,
                failures,
                passes,
                error,
            } => {
                if *failures > 0 {
                    let s = if *failures == 1 { "" } else { "s" };
                    write!(f, "{failures} failed probe{s} of {target}: {error}")
                } else {
                    write!(f, "recovering: {passes} passed probe")?;
                    if *passes != 1 {
                        f.write_str("s")?;
                    }
                    write!(f, " of {target} since it failed ({error})")
                }
            }
            Cause::ProbesPending {
                target,
                passes,
                needed,
            } => write!(f, "{passes} of {needed} probes of {target} passed so far"),
            Cause::NoHeartbeat {
                silent_for: Some(silent),
                interval,
            } => write!(
                f,
                "no heartbeat for {} (expected every {} s)",
                age(*silent),
                secs(*interval)
            ),
            Cause::NoHeartbeat {
                silent_for: None,
                interval,
            } => write!(
                f,
                "connected but has sent no heartbeat (expected every {} s)",
                secs(*interval)
            ),
            Cause::Disconnected { ago } => write!(
                f,
                "disconnected from control {} ago and not heard from since",
                age(*ago)
            ),
            Cause::RejectedConfig { version, error } => {
                write!(f, "rejected config v{version}: {error}")
            }
            Cause::PeerDown {
                name,
                last_handshake,
                peer_kind,
            } => match last_handshake {
                Some(ago) => write!(
                    f,
                    "tunnel to {peer_kind} {name} down (last handshake {} ago)",
                    age(*ago)
                ),
                None => write!(f, "tunnel to {peer_kind} {name} down (no handshake yet)"),
            },
            Cause::ServiceDown { name, error } => write!(f, "service {name}: {error}"),
            Cause::Healthy {
                heartbeat_age,
                passing_checks,
            } => {
                match heartbeat_age {
                    Some(a) => write!(f, "heartbeat {} ago", age(*a))?,
                    None => f.write_str("no heartbeat yet")?,
                }
                match passing_checks {
                    0 => Ok(()),
                    1 => f.write_str("; its probe passes"),
                    n => write!(f, "; its {n} probes pass"),
                }
            }
        }
    }
}

impl Cause {
    /// What identifies the cause apart from ages and counts.
    fn key(&self) -> String {
        match self {
            Cause::NeverConnected => "never".into(),
            Cause::NoConfigYet => "no-config".into(),
            Cause::Drained => "drained".into(),
            Cause::AnswersDraining { target } => format!("answers-draining {target}"),
            Cause::ProbesFailing {
                target,
                failures,
                error,
                ..
            } => format!("failing {target} {} {error}", *failures > 0),
            Cause::ProbesPending { target, .. } => format!("pending {target}"),
            Cause::NoHeartbeat { silent_for, .. } => format!("silent {}", silent_for.is_some()),
            Cause::Disconnected { .. } => "disconnected".into(),
            Cause::RejectedConfig { version, .. } => format!("nack {version}"),
            Cause::PeerDown { name, .. } => format!("peer {name}"),
            Cause::ServiceDown { name, error } => format!("service {name} {error}"),
            Cause::Healthy { .. } => "healthy".into(),
        }
    }
}

/// A node's state and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judgement {
    /// The state.
    pub status: NodeStatus,
    /// Why, most important first (never empty).
    pub causes: Vec<Cause>,
}

impl Judgement {
    fn new(status: NodeStatus, causes: Vec<Cause>) -> Self {
        Judgement { status, causes }
    }

    /// The reason as stored and shown: the causes joined by `; `.
    pub fn reason(&self) -> String {
        self.causes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The state and the substance of the causes, without ages and counts: when it is the
    /// same as last time, the stored reason need not be rewritten.
    pub fn key(&self) -> String {
        let mut key = self.status.as_str().to_owned();
        for cause in &self.causes {
            key.push('|');
            key.push_str(&cause.key());
        }
        key
    }
}

/// Judges a node's state; see the module doc for the rules.
pub fn judge(o: &Observation<'_>, timing: &Timing, now: OffsetDateTime) -> Judgement {
    let since = |t: OffsetDateTime| Duration::try_from(now - t).unwrap_or_default();
    let heartbeat_age = o.last_heartbeat.map(since);
    // Closed, and nothing heard since: the node is gone (or talks to no replica).
    let disconnected = match o.stream {
        Stream::Closed { at } if o.last_heartbeat.is_none_or(|hb| hb <= at) => Some(since(at)),
        _ => None,
    };
    let fresh = heartbeat_age.is_some_and(|a| a <= timing.heartbeat_timeout);
    // How long the node has been quiet: since its last heartbeat, or since its stream opened
    // when it sent none on it yet.
    let quiet_for = match o.stream {
        Stream::Open { since: opened } => {
            Some(since(o.last_heartbeat.map_or(opened, |hb| hb.max(opened))))
        }
        _ => heartbeat_age,
    };
    let heartbeat = o.heartbeat.filter(|_| fresh);
    let public = o.checks.iter().find(|c| c.kind == CheckKind::Public);

    // 1. Draining.
    if o.drained {
        return Judgement::new(NodeStatus::Draining, vec![Cause::Drained]);
    }
    if let Some(check) = o.checks.iter().find(|c| c.verdict == Verdict::Draining) {
        return Judgement::new(
            NodeStatus::Draining,
            vec![Cause::AnswersDraining {
                target: check.target.clone(),
            }],
        );
    }

    // 2. Never connected (and no probe has passed: an edge run by hand may not talk to control
    // yet still serve).
    let any_pass = o
        .checks
        .iter()
        .any(|c| matches!(c.verdict, Verdict::Passing { .. }));
    // Only a node that has never been judged anything but enrolling: an edge that served
    // (its probes passed) and now fails them is offline, not "never connected".
    let never_served = o.previous == NodeStatus::Enrolling;
    if !o.seen && never_served && !any_pass && !matches!(o.stream, Stream::Open { .. }) {
        return Judgement::new(NodeStatus::Enrolling, vec![Cause::NeverConnected]);
    }

    let mut offline = Vec::new();
    let mut degraded = Vec::new();
    let mut pending = Vec::new();
    for check in o.checks {
        match &check.verdict {
            Verdict::Failing {
                failures,
                passes,
                error,
            } => {
                let cause = Cause::ProbesFailing {
                    kind: check.kind,
                    target: check.target.clone(),
                    failures: *failures,
                    passes: *passes,
                    error: error.clone(),
                };
                if check.kind == CheckKind::Public {
                    offline.push(cause);
                } else {
                    degraded.push(cause);
                }
            }
            Verdict::Unknown { passes, .. } if !o.previous.serves() => {
                pending.push(Cause::ProbesPending {
                    target: check.target.clone(),
                    passes: *passes,
                    needed: timing.healthy_threshold,
                })
            }
            _ => {}
        }
    }

    // 3. Silent: offline unless the public listener shows the node still serving.
    let silence = match (disconnected, quiet_for) {
        (Some(ago), _) if ago > timing.heartbeat_interval => Some(Cause::Disconnected { ago }),
        (_, Some(quiet)) if quiet > timing.heartbeat_timeout => Some(Cause::NoHeartbeat {
            silent_for: heartbeat_age.map(|_| quiet),
            interval: timing.heartbeat_interval,
        }),
        _ => None,
    };
    if let Some(silence) = silence {
        let serving = public.is_some_and(|c| match c.verdict {
            Verdict::Passing { .. } => true,
            Verdict::Unknown { .. } => o.previous.serves(),
            _ => false,
        });
        if serving {
            degraded.insert(0, silence);
        } else {
            offline.push(silence);
        }
    }
    if !offline.is_empty() {
        offline.extend(degraded);
        return Judgement::new(NodeStatus::Offline, offline);
    }

    // 4. Not yet proven healthy by its probes.
    if !pending.is_empty() {
        let status = if o.previous == NodeStatus::Offline {
            NodeStatus::Offline
        } else {
            NodeStatus::Enrolling
        };
        pending.extend(degraded);
        return Judgement::new(status, pending);
    }

    // 4b. A new node whose tunnels are not up yet: still enrolling, not degraded, so DNS
    // steering does not publish an edge that cannot reach its origins (a degraded edge serves).
    // Only tunnels that can come up count: waiting for a peer that is itself down (an origin
    // not running yet) would keep every new edge unpublished until it is.
    if o.previous == NodeStatus::Enrolling {
        if let Some(beat) = heartbeat {
            // The heartbeat a node sends on connect comes before its first config: no peers
            // yet, which is not "all peers up".
            if beat.applied_version == 0 {
                return Judgement::new(NodeStatus::Enrolling, vec![Cause::NoConfigYet]);
            }
            let waiting: Vec<Cause> = peers_down(o, beat, true).collect();
            if !waiting.is_empty() {
                return Judgement::new(NodeStatus::Enrolling, waiting);
            }
        }
    }

    // 5. Degraded: what the node reports about itself (only from a fresh heartbeat).
    if let Some(nack) = o.nack {
        if o.applied_version
            .is_none_or(|applied| nack.version > applied)
        {
            degraded.push(Cause::RejectedConfig {
                version: nack.version,
                error: nack.error.clone(),
            });
        }
    }
    if let Some(beat) = heartbeat {
        degraded.extend(peers_down(o, beat, false));
        for service in beat.services.iter().filter(|s| !s.healthy) {
            degraded.push(Cause::ServiceDown {
                name: service.name.clone(),
                error: service
                    .error
                    .clone()
                    .unwrap_or_else(|| "unhealthy".to_owned()),
            });
        }
    }
    if !degraded.is_empty() {
        return Judgement::new(NodeStatus::Degraded, degraded);
    }

    // 6. Online.
    Judgement::new(
        NodeStatus::Online,
        vec![Cause::Healthy {
            heartbeat_age,
            passing_checks: o
                .checks
                .iter()
                .filter(|c| matches!(c.verdict, Verdict::Passing { .. }))
                .count(),
        }],
    )
}

/// A [`Cause::PeerDown`] per WireGuard peer the heartbeat reports down; with `serving_only`,
/// only peers judged serving.
fn peers_down<'a>(
    o: &'a Observation<'_>,
    beat: &'a Heartbeat,
    serving_only: bool,
) -> impl Iterator<Item = Cause> + 'a {
    let peer_kind = match o.node {
        NodeId::Edge(_) => "origin",
        NodeId::Origin(_) => "edge",
    };
    beat.peers
        .iter()
        .filter(|p| !p.up)
        .filter(move |p| !serving_only || o.peers.get(&p.public_key).is_some_and(|k| k.serving))
        .map(move |peer| Cause::PeerDown {
            name: o
                .peers
                .get(&peer.public_key)
                .map_or_else(|| peer.public_key.clone(), |k| k.name.clone()),
            last_handshake: peer.last_handshake_age_ms.map(Duration::from_millis),
            peer_kind,
        })
}

#[cfg(test)]
mod tests {
    use super::super::heartbeat::{PeerHeartbeat, ServiceHeartbeat};
    use super::*;

    const TIMING: Timing = Timing {
        heartbeat_interval: Duration::from_secs(10),
        heartbeat_timeout: Duration::from_secs(30),
        healthy_threshold: 3,
    };

    fn now() -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000)
    }

    fn ago(secs: i64) -> OffsetDateTime {
        now() - time::Duration::seconds(secs)
    }

    fn observe<'a>(
        node: NodeId,
        checks: &'a [CheckView],
        names: &'a HashMap<String, Peer>,
    ) -> Observation<'a> {
        Observation {
            node,
            previous: NodeStatus::Online,
            seen: true,
            drained: false,
            stream: Stream::Open { since: ago(300) },
            last_heartbeat: Some(ago(2)),
            heartbeat: None,
            applied_version: Some(5),
            nack: None,
            checks,
            peers: names,
        }
    }

    fn public(verdict: Verdict) -> CheckView {
        CheckView {
            kind: CheckKind::Public,
            target: "https://203.0.113.10/healthz".into(),
            verdict,
        }
    }

    fn edge() -> NodeId {
        NodeId::Edge(uuid::Uuid::nil())
    }

    fn judged(o: &Observation<'_>) -> (NodeStatus, String) {
        let j = judge(o, &TIMING, now());
        (j.status, j.reason())
    }

    #[test]
    fn a_connected_heart_beating_node_is_online() {
        let names = HashMap::new();
        let checks = [public(Verdict::Passing { failures: 0 })];
        let o = observe(edge(), &checks, &names);
        assert_eq!(
            judged(&o),
            (
                NodeStatus::Online,
                "heartbeat 2 s ago; its probe passes".into()
            )
        );
        // An origin has no probes.
        let o = observe(NodeId::Origin(uuid::Uuid::nil()), &[], &names);
        assert_eq!(judged(&o).0, NodeStatus::Online);
    }

    #[test]
    fn a_new_node_is_enrolling_until_it_connects_and_its_probes_pass() {
        let names = HashMap::new();
        let mut o = observe(edge(), &[], &names);
        o.previous = NodeStatus::Enrolling;
        o.seen = false;
        o.stream = Stream::Unknown;
        o.last_heartbeat = None;
        let (status, reason) = judged(&o);
        assert_eq!(status, NodeStatus::Enrolling);
        assert!(reason.starts_with("has never connected"), "{reason}");

        let checks = [public(Verdict::Unknown {
            passes: 1,
            failures: 0,
        })];
        let mut o = observe(edge(), &checks, &names);
        o.previous = NodeStatus::Enrolling;
        assert_eq!(
            judged(&o),
            (
                NodeStatus::Enrolling,
                "1 of 3 probes of https://203.0.113.10/healthz passed so far".into()
            )
        );
        // A node that served before control restarted keeps its state while its new tally
        // starts (the checker starts such tallies healthy; unknown ones do not demote it).
        o.previous = NodeStatus::Online;
        assert_eq!(judged(&o).0, NodeStatus::Online);
    }

    #[test]
    fn failed_public_probes_make_an_edge_offline() {
        let names = HashMap::new();
        let checks = [public(Verdict::Failing {
            failures: 3,
            passes: 0,
            error: "connection refused".into(),
        })];
        let o = observe(edge(), &checks, &names);
        assert_eq!(
            judged(&o),
            (
                NodeStatus::Offline,
                "3 failed probes of https://203.0.113.10/healthz: connection refused".into()
            )
        );
        // Recovering: still offline until the healthy threshold.
        let checks = [public(Verdict::Failing {
            failures: 0,
            passes: 1,
            error: "connection refused".into(),
        })];
        let o = observe(edge(), &checks, &names);
        let (status, reason) = judged(&o);
        assert_eq!(status, NodeStatus::Offline);
        assert!(
            reason.starts_with("recovering: 1 passed probe of"),
            "{reason}"
        );
    }

    #[test]
    fn silence_is_offline_unless_the_public_listener_still_answers() {
        let names = HashMap::new();
        let mut o = observe(NodeId::Origin(uuid::Uuid::nil()), &[], &names);
        o.last_heartbeat = Some(ago(31));
        o.stream = Stream::Unknown;
        assert_eq!(
            judged(&o),
            (
                NodeStatus::Offline,
                "no heartbeat for 31 s (expected every 10 s)".into()
            )
        );
        // A closed stream counts after one interval, before the heartbeat timeout.
        o.last_heartbeat = Some(ago(14));
        o.stream = Stream::Closed { at: ago(12) };
        assert_eq!(
            judged(&o),
            (
                NodeStatus::Offline,
                "disconnected from control 12 s ago and not heard from since".into()
            )
        );
        // A short reconnect (a restart) is nothing.
        o.stream = Stream::Closed { at: ago(3) };
        assert_eq!(judged(&o).0, NodeStatus::Online);
        // Connected, but quiet: counted from the connection when it sent nothing on it.
        o.stream = Stream::Open { since: ago(5) };
        o.last_heartbeat = Some(ago(100));
        assert_eq!(judged(&o).0, NodeStatus::Online);
        o.stream = Stream::Open { since: ago(40) };
        o.last_heartbeat = None;
        assert_eq!(
            judged(&o),
            (
                NodeStatus::Offline,
                "connected but has sent no heartbeat (expected every 10 s)".into()
            )
        );
        // An edge whose public listener answers is degraded, not offline.
        let checks = [public(Verdict::Passing { failures: 0 })];
        let mut o = observe(edge(), &checks, &names);
        o.last_heartbeat = Some(ago(40));
        let (status, reason) = judged(&o);
        assert_eq!(status, NodeStatus::Degraded);
        assert_eq!(reason, "no heartbeat for 40 s (expected every 10 s)");
        // ... and offline once both are gone, with both reasons.
        let checks = [public(Verdict::Failing {
            failures: 4,
            passes: 0,
            error: "timed out after 3 s".into(),
        })];
        let mut o = observe(edge(), &checks, &names);
        o.last_heartbeat = Some(ago(40));
        let (status, reason) = judged(&o);
        assert_eq!(status, NodeStatus::Offline);
        assert_eq!(
            reason,
            "4 failed probes of https://203.0.113.10/healthz: timed out after 3 s; \
             no heartbeat for 40 s (expected every 10 s)"
        );
    }

    #[test]
    fn draining_wins() {
        let names = HashMap::new();
        let checks = [public(Verdict::Failing {
            failures: 3,
            passes: 0,
            error: "x".into(),
        })];
        let mut o = observe(edge(), &checks, &names);
        o.drained = true;
        assert_eq!(judged(&o).0, NodeStatus::Draining);
        let checks = [public(Verdict::Draining)];
        let o = observe(edge(), &checks, &names);
        assert_eq!(
            judged(&o),
            (
                NodeStatus::Draining,
                "https://203.0.113.10/healthz answers 503 draining".into()
            )
        );
    }

    #[test]
    fn what_a_node_reports_degrades_it() {
        let names = HashMap::from([(
            "KEY".to_owned(),
            Peer {
                name: "home".to_owned(),
                serving: true,
            },
        )]);
        let beat = Heartbeat {
            applied_version: 5,
            peers: vec![PeerHeartbeat {
                public_key: "KEY".into(),
                up: false,
                last_handshake_age_ms: Some(240_000),
                ..PeerHeartbeat::default()
            }],
            ..Heartbeat::default()
        };
        let mut o = observe(edge(), &[], &names);
        o.heartbeat = Some(&beat);
        assert_eq!(
            judged(&o),
            (
                NodeStatus::Degraded,
                "tunnel to origin home down (last handshake 4 min ago)".into()
            )
        );
        // The same report from a new edge keeps it enrolling: it is not published before
        // its tunnels are up. Once they are, it is online.
        o.previous = NodeStatus::Enrolling;
        assert_eq!(
            judged(&o),
            (
                NodeStatus::Enrolling,
                "tunnel to origin home down (last handshake 4 min ago)".into()
            )
        );
        // Unless that origin is down itself: its tunnel cannot come up, so the edge does not
        // wait for it (it serves what it can and says what is missing).
        let mut down = names.clone();
        down.get_mut("KEY").expect("the peer").serving = false;
        let mut waiting = observe(edge(), &[], &down);
        waiting.previous = NodeStatus::Enrolling;
        waiting.heartbeat = Some(&beat);
        assert_eq!(
            judged(&waiting),
            (
                NodeStatus::Degraded,
                "tunnel to origin home down (last handshake 4 min ago)".into()
            )
        );
        let up = Heartbeat {
            peers: vec![PeerHeartbeat {
                public_key: "KEY".into(),
                up: true,
                last_handshake_age_ms: Some(1_000),
                ..PeerHeartbeat::default()
            }],
            ..Heartbeat::default()
        };
        o.heartbeat = Some(&up);
        assert_eq!(
            judged(&o),
            (
                NodeStatus::Enrolling,
                "connected; no config applied yet".into()
            ),
            "a heartbeat from before the first config says nothing about tunnels"
        );
        let configured = Heartbeat {
            applied_version: 5,
            ..up.clone()
        };
        o.heartbeat = Some(&configured);
        assert_eq!(judged(&o).0, NodeStatus::Online);
        let beat = Heartbeat {
            services: vec![ServiceHeartbeat {
                name: "web".into(),
                healthy: false,
                error: Some("connection refused".into()),
                ..ServiceHeartbeat::default()
            }],
            ..Heartbeat::default()
        };
        let nack = Nack {
            version: 6,
            error: "routes[0].host: bad".into(),
            object: None,
        };
        let mut o = observe(NodeId::Origin(uuid::Uuid::nil()), &[], &names);
        o.heartbeat = Some(&beat);
        o.nack = Some(&nack);
        assert_eq!(
            judged(&o),
            (
                NodeStatus::Degraded,
                "rejected config v6: routes[0].host: bad; service web: connection refused".into()
            )
        );
        // A NACK older than what it applied since is history.
        o.applied_version = Some(7);
        o.heartbeat = None;
        assert_eq!(judged(&o).0, NodeStatus::Online);
        // A failing admin probe degrades.
        let checks = [CheckView {
            kind: CheckKind::Admin,
            target: "http://127.0.0.1:9090/healthz".into(),
            verdict: Verdict::Failing {
                failures: 3,
                passes: 0,
                error: "connection refused".into(),
            },
        }];
        let o = observe(edge(), &checks, &names);
        assert_eq!(judged(&o).0, NodeStatus::Degraded);
    }

    #[test]
    fn keys_ignore_ages_and_counts() {
        let names = HashMap::new();
        let mut o = observe(NodeId::Origin(uuid::Uuid::nil()), &[], &names);
        o.stream = Stream::Unknown;
        o.last_heartbeat = Some(ago(31));
        let a = judge(&o, &TIMING, now());
        o.last_heartbeat = Some(ago(45));
        let b = judge(&o, &TIMING, now());
        assert_ne!(a.reason(), b.reason());
        assert_eq!(a.key(), b.key());
        let checks = [public(Verdict::Failing {
            failures: 3,
            passes: 0,
            error: "refused".into(),
        })];
        let c = judge(&observe(edge(), &checks, &names), &TIMING, now());
        let checks = [public(Verdict::Failing {
            failures: 4,
            passes: 0,
            error: "refused".into(),
        })];
        let d = judge(&observe(edge(), &checks, &names), &TIMING, now());
        assert_eq!(c.key(), d.key());
        assert_ne!(a.key(), c.key());
    }
}
