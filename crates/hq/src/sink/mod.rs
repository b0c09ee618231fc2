//! The sinks: each journey engine gets the journey store's events once, in commit order.
//!
//! ```text
//! events (n) ─► runner: read above the cursor ─► mapping ─► engine request ─HTTP─► Braze / Amplitude / webhook
//!                 ▲                                                  │
//!                 └──── cursor + parked, one transaction ◄─ verdict ─┘
//! ```
//!
//! - [`mapping`]: event type → the engine's event name, properties and user attributes. Pure.
//! - [`engine`]: the request and answer as data, and the [`engine::Verdict`] an answer means.
//! - [`braze`], [`amplitude`], [`webhook`]: each engine's rules (limits, partial errors, reset
//!   headers, the webhook's CloudEvents and signature). Pure.
//! - [`runner`]: the I/O shell: the durable cursor, retries and backoff, the in-flight mark
//!   that makes an unknown fate an announced (`ambiguous`) repeat.
//! - [`config`]: `[[sink]]` in `hq.toml`, with the API key from a file or the environment.

pub mod amplitude;
pub mod braze;
pub mod config;
pub mod engine;
pub mod mapping;
pub mod runner;
pub mod webhook;

use std::time::Duration;

/// Exponential backoff with jitter: from `min`, doubling up to `max`; each wait is drawn in
/// [half, full] of the current step, so sinks that failed together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            step: min,
        }
    }

    pub fn next_wait(&mut self) -> Duration {
        let wait = self.step.mul_f64(0.5 + fastrand::f64() / 2.0);
        self.step = (self.step * 2).min(self.max);
        wait.max(self.min / 2)
    }

    pub fn reset(&mut self) {
        self.step = self.min;
    }

    pub fn min(&self) -> Duration {
        self.min
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let waits: Vec<Duration> = (0..6).map(|_| b.next_wait()).collect();
        for (w, step) in waits.iter().zip([100u64, 200, 400, 800, 800, 800]) {
            assert!(*w >= Duration::from_millis(step / 2) && *w <= Duration::from_millis(step));
        }
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(100));
    }
}
