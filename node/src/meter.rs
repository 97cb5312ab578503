//! What a node measures of itself for heartbeats, from `/proc`: resident memory, CPU use
//! between two heartbeats, and per-second rates of the node's running totals.

use std::time::Instant;

/// Linux's USER_HZ: the unit of the CPU times in `/proc/self/stat` (100 on every architecture
/// Linux supports in practice; reading it needs `sysconf`, i.e. libc).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// The host's name, for enrollment and `Hello`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

/// Resident set size from `/proc/self/status` (`VmRSS`, in kB); 0 where unavailable.
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Process CPU time (user + system) in seconds from `/proc/self/stat`.
pub fn cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after its `)` are plain.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS_PER_SECOND)
}

/// CPU use between two heartbeats, in cores.
pub struct CpuMeter {
    last: Option<(Instant, f64)>,
}

impl Default for CpuMeter {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuMeter {
    /// Starts measuring now.
    pub fn new() -> Self {
        Self {
            last: cpu_seconds().map(|cpu| (Instant::now(), cpu)),
        }
    }

    /// CPU cores used since the previous call (or since `new`).
    pub fn cores(&mut self) -> f64 {
        let Some(now_cpu) = cpu_seconds() else {
            return 0.0;
        };
        let now = Instant::now();
        let cores = match self.last {
            Some((then, then_cpu)) => {
                let wall = now.duration_since(then).as_secs_f64();
                if wall > 0.0 {
                    ((now_cpu - then_cpu) / wall).max(0.0)
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((now, now_cpu));
        cores
    }
}

/// Turns the node's running totals into per-second rates between heartbeats.
#[derive(Default)]
pub struct RateMeter {
    last: Option<(Instant, u64, u64)>,
}

impl RateMeter {
    /// Requests and errors per second since the previous call.
    pub fn rates(&mut self, requests: u64, errors: u64) -> (f64, f64) {
        let now = Instant::now();
        let rates = match self.last {
            Some((then, then_requests, then_errors)) => {
                let wall = now.duration_since(then).as_secs_f64();
                if wall > 0.0 {
                    (
                        requests.saturating_sub(then_requests) as f64 / wall,
                        errors.saturating_sub(then_errors) as f64 / wall,
                    )
                } else {
                    (0.0, 0.0)
                }
            }
            None => (0.0, 0.0),
        };
        self.last = Some((now, requests, errors));
        rates
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn process_meters_read_proc() {
        assert!(resident_bytes() > 0);
        assert!(cpu_seconds().is_some());
        let mut rates = RateMeter::default();
        assert_eq!(rates.rates(10, 1), (0.0, 0.0));
        std::thread::sleep(Duration::from_millis(20));
        let (requests, errors) = rates.rates(20, 1);
        assert!(requests > 0.0 && errors == 0.0);
    }
}
