//! The health checker's flags, for `kokoa-control serve` to flatten into its own
//! (`#[command(flatten)] health: HealthArgs`), and how they become [`HealthSettings`].

use std::time::Duration;

use super::HealthSettings;

/// Node health flags.
#[derive(Clone, Debug, clap::Args)]
pub struct HealthArgs {
    /// How often nodes send a heartbeat, in seconds (control tells them).
    #[arg(
        long = "heartbeat-interval",
        value_name = "SECONDS",
        default_value_t = 10
    )]
    pub heartbeat_interval: u64,
    /// A node silent for longer than this many seconds is offline (unless its public
    /// listener still answers, which makes it degraded).
    #[arg(
        long = "health-heartbeat-timeout",
        value_name = "SECONDS",
        default_value_t = 30
    )]
    pub heartbeat_timeout: u64,
    /// Probes failed in a row that make an edge's public listener unhealthy.
    #[arg(
        long = "health-unhealthy-threshold",
        value_name = "N",
        default_value_t = 3
    )]
    pub unhealthy_threshold: u32,
    /// Probes passed in a row that make it healthy again.
    #[arg(
        long = "health-healthy-threshold",
        value_name = "N",
        default_value_t = 3
    )]
    pub healthy_threshold: u32,
    /// Seconds between two probes of each edge (its public HTTPS listener at its public IP,
    /// its admin /healthz when it has an admin address).
    #[arg(
        long = "health-check-interval",
        value_name = "SECONDS",
        default_value_t = 5
    )]
    pub check_interval: u64,
    /// Seconds between two probe rounds while a check is between verdicts (an edge that was
    /// healthy failed a probe, an unhealthy one passed one, a new one is undecided): a dead
    /// edge is confirmed after one check interval and THRESHOLD - 1 of these.
    #[arg(
        long = "health-fast-interval",
        value_name = "SECONDS",
        default_value_t = 2
    )]
    pub fast_interval: u64,
    /// A probe that takes longer than this many milliseconds fails.
    #[arg(
        long = "health-check-timeout",
        value_name = "MILLISECONDS",
        default_value_t = 2000
    )]
    pub check_timeout_ms: u64,
    /// The port of the edges' public HTTPS listener, probed at each edge's public IP.
    #[arg(
        long = "health-public-port",
        value_name = "PORT",
        default_value_t = 443
    )]
    pub public_port: u16,
    /// Hours of health history (probe results) to keep.
    #[arg(
        long = "health-history-retention",
        value_name = "HOURS",
        default_value_t = 24
    )]
    pub history_retention_hours: u64,
}

impl Default for HealthArgs {
    fn default() -> Self {
        let settings = HealthSettings::default();
        HealthArgs {
            heartbeat_interval: settings.heartbeat_interval.as_secs(),
            heartbeat_timeout: settings.heartbeat_timeout.as_secs(),
            unhealthy_threshold: settings.unhealthy_threshold,
            healthy_threshold: settings.healthy_threshold,
            check_interval: settings.check_interval.as_secs(),
            fast_interval: settings.fast_check_interval.as_secs(),
            check_timeout_ms: u64::try_from(settings.check_timeout.as_millis()).unwrap_or(0),
            public_port: settings.public_port,
            history_retention_hours: settings.history_retention.as_secs() / 3600,
        }
    }
}

/// A flag value the checker cannot work with.
#[derive(Debug, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct HealthArgsError {
    /// The flag, without `--`.
    pub flag: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl HealthArgs {
    /// The settings these flags describe, checked.
    pub fn settings(&self) -> Result<HealthSettings, HealthArgsError> {
        let bad = |flag, reason: &str| HealthArgsError {
            flag,
            reason: reason.to_owned(),
        };
        if !(1..=3600).contains(&self.heartbeat_interval) {
            return Err(bad("heartbeat-interval", "must be 1 to 3600 seconds"));
        }
        if self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(bad(
                "health-heartbeat-timeout",
                "must be longer than --heartbeat-interval (three intervals is usual)",
            ));
        }
        if !(1..=100).contains(&self.unhealthy_threshold) {
            return Err(bad("health-unhealthy-threshold", "must be 1 to 100"));
        }
        if !(1..=100).contains(&self.healthy_threshold) {
            return Err(bad("health-healthy-threshold", "must be 1 to 100"));
        }
        if !(1..=3600).contains(&self.check_interval) {
            return Err(bad("health-check-interval", "must be 1 to 3600 seconds"));
        }
        if !(1..=self.check_interval).contains(&self.fast_interval) {
            return Err(bad(
                "health-fast-interval",
                "must be at least 1 second and at most --health-check-interval",
            ));
        }
        if self.check_timeout_ms < 10 || self.check_timeout_ms >= self.check_interval * 1000 {
            return Err(bad(
                "health-check-timeout",
                "must be at least 10 ms and shorter than --health-check-interval",
            ));
        }
        if self.public_port == 0 {
            return Err(bad("health-public-port", "must be 1 to 65535"));
        }
        if !(1..=24 * 366).contains(&self.history_retention_hours) {
            return Err(bad("health-history-retention", "must be 1 to 8784 hours"));
        }
        Ok(HealthSettings {
            check_interval: Duration::from_secs(self.check_interval),
            fast_check_interval: Duration::from_secs(self.fast_interval),
            check_timeout: Duration::from_millis(self.check_timeout_ms),
            public_port: self.public_port,
            history_retention: Duration::from_secs(self.history_retention_hours * 3600),
            heartbeat_interval: Duration::from_secs(self.heartbeat_interval),
            heartbeat_timeout: Duration::from_secs(self.heartbeat_timeout),
            unhealthy_threshold: self.unhealthy_threshold,
            healthy_threshold: self.healthy_threshold,
            ..HealthSettings::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_settings_defaults_and_bad_values_name_their_flag() {
        assert_eq!(
            HealthArgs::default().settings().unwrap(),
            HealthSettings::default()
        );
        let error = HealthArgs {
            heartbeat_timeout: 5,
            ..HealthArgs::default()
        }
        .settings()
        .unwrap_err();
        assert_eq!(error.flag, "health-heartbeat-timeout");
        let error = HealthArgs {
            unhealthy_threshold: 0,
            ..HealthArgs::default()
        }
        .settings()
        .unwrap_err();
        assert!(error
            .to_string()
            .starts_with("--health-unhealthy-threshold"));
        let error = HealthArgs {
            check_timeout_ms: 5000,
            ..HealthArgs::default()
        }
        .settings()
        .unwrap_err();
        assert_eq!(error.flag, "health-check-timeout");
        let error = HealthArgs {
            fast_interval: 6,
            ..HealthArgs::default()
        }
        .settings()
        .unwrap_err();
        assert_eq!(error.flag, "health-fast-interval");
    }
}
