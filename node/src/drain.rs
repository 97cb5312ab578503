//! Graceful shutdown: tell every connection to finish, then wait a bounded time for them.
//!
//! [`Drain::new`] returns a [`DrainSignal`] kept by whoever decides to stop, and a [`DrainWatch`]
//! cloned into every task that must finish its work first (an accept loop, a connection). A task
//! learns that draining began from [`DrainWatch::signaled`] and ends by dropping its watch.

use std::time::Duration;

use tokio::sync::watch;

/// Constructor for a signal/watch pair.
#[derive(Debug)]
pub struct Drain;

impl Drain {
    /// Creates a linked signal and watch.
    #[allow(clippy::new_ret_no_self)]
    pub fn new() -> (DrainSignal, DrainWatch) {
        let (tx, rx) = watch::channel(false);
        (DrainSignal { tx }, DrainWatch { rx })
    }
}

/// The side that starts draining.
#[derive(Debug)]
pub struct DrainSignal {
    tx: watch::Sender<bool>,
}

/// Held by every task that must finish before the process exits.
#[derive(Clone, Debug)]
pub struct DrainWatch {
    rx: watch::Receiver<bool>,
}

/// How draining ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every watch was dropped within the grace period.
    Complete,
    /// The grace period passed with watches still alive; `remaining` of them.
    TimedOut {
        /// Watches still held when time ran out.
        remaining: usize,
    },
}

impl DrainSignal {
    /// Signals every watch, then waits until all of them are dropped or `grace` has passed.
    pub async fn drain(self, grace: Duration) -> DrainOutcome {
        // `send_replace` works even when no receiver is left.
        self.tx.send_replace(true);
        let closed = self.tx.closed();
        match tokio::time::timeout(grace, closed).await {
            Ok(()) => DrainOutcome::Complete,
            Err(_) => DrainOutcome::TimedOut {
                remaining: self.tx.receiver_count(),
            },
        }
    }

    /// Number of watches still alive.
    pub fn watchers(&self) -> usize {
        self.tx.receiver_count()
    }
}

impl DrainWatch {
    /// Resolves once draining has begun (at once if it already has).
    ///
    /// Cancellation safe: it can be used in `select!` repeatedly.
    pub async fn signaled(&self) {
        let mut rx = self.rx.clone();
        // An error means the signal was dropped without draining: treat it as a drain.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    /// Whether draining has begun.
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_watchers_to_drop() {
        let (signal, watch) = Drain::new();
        let task_watch = watch.clone();
        drop(watch);
        let task = tokio::spawn(async move {
            task_watch.signaled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(task_watch);
        });
        assert_eq!(
            signal.drain(Duration::from_secs(5)).await,
            DrainOutcome::Complete
        );
        task.await.unwrap();
    }

    #[tokio::test]
    async fn drain_times_out_when_a_watcher_lingers() {
        let (signal, watch) = Drain::new();
        let outcome = signal.drain(Duration::from_millis(50)).await;
        assert_eq!(outcome, DrainOutcome::TimedOut { remaining: 1 });
        assert!(watch.is_draining());
    }
}
