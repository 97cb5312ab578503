//! One active check's running score: consecutive passes and failures against the thresholds
//! (the seeds' "3 failures in a row -> unhealthy, 3 passes in a row -> healthy"), with the last
//! result kept for the reason text.

use std::time::Duration;

use time::OffsetDateTime;

/// The thresholds a [`Tally`] counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Failures in a row that make a target unhealthy.
    pub unhealthy: u32,
    /// Passes in a row that make it healthy again.
    pub healthy: u32,
}

/// What one probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered as expected.
    Pass,
    /// The target answered that it is draining (503 `draining`): it is alive but takes no new
    /// traffic.
    Draining,
    /// It did not (the error says how).
    Fail(String),
}

/// A check's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough results yet to say either way.
    Unknown {
        /// Passes in a row so far.
        passes: u32,
        /// Failures in a row so far.
        failures: u32,
    },
    /// Healthy (it may have failed a few times since, below the threshold).
    Passing {
        /// Failures in a row since it last passed (below the unhealthy threshold).
        failures: u32,
    },
    /// Unhealthy.
    Failing {
        /// Failures in a row (0 while recovering).
        failures: u32,
        /// Passes in a row since it last failed (below the healthy threshold).
        passes: u32,
        /// The last failure.
        error: String,
    },
    /// The target says it is draining.
    Draining,
}

/// The running score of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally {
    healthy: Option<bool>,
    passes: u32,
    failures: u32,
    draining: bool,
    last_error: Option<String>,
    /// The last probe's latency.
    pub last_latency: Option<Duration>,
    /// When the last probe finished.
    pub last_at: Option<OffsetDateTime>,
}

impl Tally {
    /// A fresh tally. `assume_healthy` starts it healthy (a node that was serving before control
    /// restarted keeps serving until its checks say otherwise); otherwise it is unknown until
    /// a threshold is reached.
    pub fn new(assume_healthy: bool) -> Self {
        Tally {
            healthy: assume_healthy.then_some(true),
            passes: 0,
            failures: 0,
            draining: false,
            last_error: None,
            last_latency: None,
            last_at: None,
        }
    }

    /// Whether the check is between verdicts: failing below the unhealthy threshold while
    /// healthy, passing below the healthy threshold while unhealthy, or not decided yet. The
    /// checker probes such targets at the fast interval, so a state change is confirmed sooner
    /// (HAProxy's `fastinter`).
    pub fn settling(&self) -> bool {
        match self.healthy {
            None => !self.draining,
            Some(true) => self.failures > 0,
            Some(false) => self.passes > 0,
        }
    }

    /// Counts one probe's outcome. Returns whether the verdict's health flipped.
    pub fn record(
        &mut self,
        outcome: Outcome,
        latency: Duration,
        at: OffsetDateTime,
        thresholds: Thresholds,
    ) -> bool {
        let before = self.healthy;
        self.last_latency = Some(latency);
        self.last_at = Some(at);
        self.draining = outcome == Outcome::Draining;
        match outcome {
            // A draining target answered: alive, so it breaks a failure streak, but it is not
            // a pass toward "healthy" either.
            Outcome::Draining => {
                self.failures = 0;
                self.passes = 0;
            }
            Outcome::Pass => {
                self.failures = 0;
                self.passes = self.passes.saturating_add(1);
                if self.passes >= thresholds.healthy.max(1) {
                    self.healthy = Some(true);
                }
            }
            Outcome::Fail(error) => {
                self.passes = 0;
                self.failures = self.failures.saturating_add(1);
                self.last_error = Some(error);
                if self.failures >= thresholds.unhealthy.max(1) {
                    self.healthy = Some(false);
                }
            }
        }
        before != self.healthy
    }

    /// The verdict so far.
    pub fn verdict(&self) -> Verdict {
        if self.draining {
            return Verdict::Draining;
        }
        match self.healthy {
            None => Verdict::Unknown {
                passes: self.passes,
                failures: self.failures,
            },
            Some(true) => Verdict::Passing {
                failures: self.failures,
            },
            Some(false) => Verdict::Failing {
                failures: self.failures,
                passes: self.passes,
                error: self.last_error.clone().unwrap_or_default(),
            },
        }
    }

    /// Failures in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Passes in a row.
    pub fn passes(&self) -> u32 {
        self.passes
    }

    /// The last failure's error (kept after passes, for display).
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_is_settling_only_between_verdicts() {
        let t = Thresholds {
            unhealthy: 3,
            healthy: 3,
        };
        let at = OffsetDateTime::UNIX_EPOCH;
        let ms = Duration::from_millis(1);
        let mut tally = Tally::new(true);
        assert!(!tally.settling());
        tally.record(Outcome::Fail("refused".into()), ms, at, t);
        assert!(tally.settling(), "one failure of a healthy check");
        tally.record(Outcome::Fail("refused".into()), ms, at, t);
        tally.record(Outcome::Fail("refused".into()), ms, at, t);
        assert!(!tally.settling(), "decided: unhealthy");
        tally.record(Outcome::Pass, ms, at, t);
        assert!(tally.settling(), "recovering");
        tally.record(Outcome::Pass, ms, at, t);
        tally.record(Outcome::Pass, ms, at, t);
        assert!(!tally.settling(), "decided: healthy");
        assert!(Tally::new(false).settling(), "a new check is not decided");
    }

    const T: Thresholds = Thresholds {
        unhealthy: 3,
        healthy: 2,
    };

    fn run(tally: &mut Tally, outcome: Outcome) -> bool {
        tally.record(
            outcome,
            Duration::from_millis(1),
            OffsetDateTime::UNIX_EPOCH,
            T,
        )
    }

    #[test]
    fn thresholds_flip_the_verdict_with_hysteresis() {
        let mut tally = Tally::new(false);
        assert_eq!(
            tally.verdict(),
            Verdict::Unknown {
                passes: 0,
                failures: 0
            }
        );
        assert!(!run(&mut tally, Outcome::Pass));
        assert!(run(&mut tally, Outcome::Pass), "2 passes: healthy");
        assert_eq!(tally.verdict(), Verdict::Passing { failures: 0 });
        assert!(!run(&mut tally, Outcome::Fail("refused".into())));
        assert!(!run(&mut tally, Outcome::Fail("refused".into())));
        assert_eq!(tally.verdict(), Verdict::Passing { failures: 2 });
        assert!(run(&mut tally, Outcome::Fail("timed out".into())));
        assert_eq!(
            tally.verdict(),
            Verdict::Failing {
                failures: 3,
                passes: 0,
                error: "timed out".into()
            }
        );
        // One pass is not enough to come back; it resets the failure streak.
        assert!(!run(&mut tally, Outcome::Pass));
        assert!(matches!(
            tally.verdict(),
            Verdict::Failing {
                failures: 0,
                passes: 1,
                ..
            }
        ));
        assert!(run(&mut tally, Outcome::Pass));
        assert_eq!(tally.verdict(), Verdict::Passing { failures: 0 });
    }

    #[test]
    fn a_node_that_served_before_starts_healthy_and_draining_is_its_own_verdict() {
        let mut tally = Tally::new(true);
        assert_eq!(tally.verdict(), Verdict::Passing { failures: 0 });
        run(&mut tally, Outcome::Fail("x".into()));
        run(&mut tally, Outcome::Draining);
        assert_eq!(tally.verdict(), Verdict::Draining);
        assert_eq!(tally.failures(), 0);
        run(&mut tally, Outcome::Pass);
        assert_eq!(tally.verdict(), Verdict::Passing { failures: 0 });
    }
}
