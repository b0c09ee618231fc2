//! The one shutdown signal, and the order in which the gateway drains after it.
//!
//! The wiring (`daemon`) stops one [`Shutdown`] when the process is asked to stop; each stage
//! sees it at its turn in the flow, so nothing accepted is left behind:
//! 1. the stages fed from outside stop at it: the device sources (their blocking threads poll
//!    [`Shutdown::is_stopped`] between reads), the HTTP ingest (it answers the posts in
//!    progress), the status side and the config reloader;
//! 2. the link ends by drop, once every source thread and ingest request has let go of its
//!    sender, with everything it held handed to the outbox, which commits it;
//! 3. the HQ side (downlink, uplink) stops at the link's end: its signal is a second
//!    [`Shutdown`] that the link task stops by dropping a [`StopOnDrop`]. So the uplink says
//!    goodbye only once nothing more is coming, and the downlink leaves what was not applied
//!    un-acknowledged for the next start;
//! 4. the outbox thread ends when its last handle drops.
//!
//! One type for all of it: async stages `select!` on [`Shutdown::stopped`], blocking threads
//! poll [`Shutdown::is_stopped`] or wait with [`Shutdown::sleep`].

use std::time::{Duration, Instant};

use tokio_util::sync::{CancellationToken, DropGuard};

/// How often a blocking [`Shutdown::sleep`] looks at the signal: a device thread ends within
/// this of a stop.
const SLEEP_TICK: Duration = Duration::from_millis(50);

/// A shutdown signal: cloned to every stage that stops at it; stopped once, never reset.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops every clone (idempotent).
    pub fn stop(&self) {
        self.0.cancel();
    }

    pub fn is_stopped(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once stopped (at once when already stopped). Cancel-safe: it holds nothing, so
    /// a `select!` may drop and call it again.
    pub async fn stopped(&self) {
        self.0.cancelled().await
    }

    /// Blocking: sleeps up to `d`, returning early (true) when stopped. For device threads.
    pub fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while !self.is_stopped() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(left.min(SLEEP_TICK));
        }
        true
    }

    /// A guard that stops this signal when it is dropped: held by a task whose end is the next
    /// stage's signal (it stops on a panic's unwinding too).
    pub fn stop_on_drop(&self) -> StopOnDrop {
        StopOnDrop(self.0.clone().drop_guard())
    }
}

/// Stops its [`Shutdown`] when dropped ([`Shutdown::stop_on_drop`]).
#[must_use = "the signal stops as soon as the guard is dropped"]
pub struct StopOnDrop(#[allow(dead_code)] DropGuard);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocking_sleep_ends_early_on_stop_and_runs_out_otherwise() {
        let shutdown = Shutdown::new();
        assert!(!shutdown.sleep(Duration::from_millis(10)));
        let clone = shutdown.clone();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            clone.stop();
        });
        let started = Instant::now();
        assert!(shutdown.sleep(Duration::from_secs(60)));
        assert!(started.elapsed() < Duration::from_secs(30));
        stopper.join().unwrap();
        assert!(shutdown.is_stopped());
    }

    #[tokio::test]
    async fn dropping_the_guard_stops_the_next_stage() {
        let next = Shutdown::new();
        let guard = next.stop_on_drop();
        let task = tokio::spawn(async move {
            let _guard = guard;
        });
        task.await.unwrap();
        // Resolves only because the guard went with the task.
        next.stopped().await;
        assert!(next.is_stopped());
    }
}
