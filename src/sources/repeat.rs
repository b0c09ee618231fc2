//! Continuous-mode repeats (docs/protocols.md §1): a scanner or a camera sees the same code many
//! times while it stays in view; the first sighting is the reading, the rest are the same one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Continuous-mode repeat filter: the same payload within `window` of its last repeat is the
/// same sighting (a sliding window, so a code held in view for 5 s is one event).
#[derive(Debug)]
pub struct RepeatFilter {
    window: Duration,
    last_seen: HashMap<String, Instant>,
    /// Size at which stale sightings are swept next: twice what the last sweep kept (at least
    /// [`REPEAT_SWEEP_MIN`]), so a burst of distinct codes costs amortized O(1) per code.
    sweep_at: usize,
}

/// Sightings held before the first sweep: more than a scanner has in view at once.
const REPEAT_SWEEP_MIN: usize = 64;

impl RepeatFilter {
    pub fn new(window: Duration) -> Self {
        RepeatFilter {
            window,
            last_seen: HashMap::new(),
            sweep_at: REPEAT_SWEEP_MIN,
        }
    }

    /// True when `payload` is a repeat of a sighting still in view.
    pub fn is_repeat(&mut self, payload: &str, now: Instant) -> bool {
        if self.last_seen.len() > self.sweep_at {
            let window = self.window;
            self.last_seen
                .retain(|_, t| now.saturating_duration_since(*t) <= window);
            self.sweep_at = (self.last_seen.len() * 2).max(REPEAT_SWEEP_MIN);
        }
        match self.last_seen.get_mut(payload) {
            Some(t) if now.saturating_duration_since(*t) <= self.window => {
                *t = now;
                true
            }
            Some(t) => {
                *t = now;
                false
            }
            None => {
                self.last_seen.insert(payload.to_owned(), now);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regression_a_burst_of_distinct_codes_is_not_quadratic() {
        // Sweeping stale sightings on every code once 64 were held made a fast scanner's
        // burst O(n²): the 100k-code backlog test filled at 3k codes/s in a debug build.
        let mut r = RepeatFilter::new(Duration::from_millis(1500));
        let t0 = Instant::now();
        let started = Instant::now();
        for i in 0..100_000u32 {
            assert!(!r.is_repeat(&format!("C-{i}"), t0));
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(r.is_repeat("C-99999", t0 + Duration::from_millis(10)));
        // Stale sightings still go: a later burst sweeps them.
        let later = t0 + Duration::from_secs(10);
        for i in 0..40_000u32 {
            r.is_repeat(&format!("D-{i}"), later);
        }
        assert!(r.last_seen.len() <= 40_000, "{}", r.last_seen.len());
    }

    #[test]
    fn repeats_slide_with_the_last_sighting() {
        let mut r = RepeatFilter::new(Duration::from_millis(1500));
        let t0 = Instant::now();
        assert!(!r.is_repeat("A", t0));
        // Held in view for 5 s, repeated every 500 ms: one sighting.
        for i in 1..=10 {
            assert!(r.is_repeat("A", t0 + Duration::from_millis(500 * i)));
        }
        assert!(!r.is_repeat("B", t0 + Duration::from_millis(5100)));
        assert!(!r.is_repeat("A", t0 + Duration::from_millis(5000 + 1600)));
    }
}
