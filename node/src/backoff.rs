//! Reconnect delays: jittered exponential backoff.

use std::time::Duration;

use rand::Rng as _;

/// First reconnect delay.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(200);
/// Longest reconnect delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Jittered exponential backoff: each delay is drawn from the upper half of the current step,
/// and the step doubles up to the maximum.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            step: initial,
        }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let low = step / 2;
        low + step.mul_f64(rand::thread_rng().gen_range(0.0..=0.5))
    }

    /// Back to the initial step (after a healthy connection).
    pub fn reset(&mut self) {
        self.step = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_resets() {
        let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_MAX);
        let first = backoff.next_delay();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
        let second = backoff.next_delay();
        assert!(second >= Duration::from_millis(200) && second <= Duration::from_millis(400));
        for _ in 0..20 {
            assert!(backoff.next_delay() <= BACKOFF_MAX);
        }
        let late = backoff.next_delay();
        assert!(late >= BACKOFF_MAX / 2, "{late:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(200));
    }
}
