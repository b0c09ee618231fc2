//! Rate-limited error reports (docs/protocols.md §1): a device spewing garbage is one `error`
//! status per interval, carrying how many rejections it stands for, not one per bad line.

use std::time::{Duration, Instant};

/// At most one error report per device per `interval`, each with the count it stands for.
#[derive(Debug)]
pub struct ErrorThrottle {
    interval: Duration,
    last_report: Option<Instant>,
    pending: u64,
    pending_reason: &'static str,
}

impl ErrorThrottle {
    pub fn new(interval: Duration) -> Self {
        ErrorThrottle {
            interval,
            last_report: None,
            pending: 0,
            pending_reason: "",
        }
    }

    /// Records one rejection; returns `(reason, count)` when a report is due now.
    pub fn record(&mut self, reason: &'static str, now: Instant) -> Option<(&'static str, u64)> {
        self.pending += 1;
        self.pending_reason = reason;
        self.due(now)
    }

    /// Returns the report held back by the rate limit once its interval has passed.
    pub fn due(&mut self, now: Instant) -> Option<(&'static str, u64)> {
        let open = self
            .last_report
            .is_none_or(|t| now.saturating_duration_since(t) >= self.interval);
        if self.pending == 0 || !open {
            return None;
        }
        self.last_report = Some(now);
        let count = std::mem::take(&mut self.pending);
        Some((self.pending_reason, count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_throttled_with_counts() {
        let mut t = ErrorThrottle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.record("empty", t0), Some(("empty", 1)));
        assert_eq!(t.record("too_long", t0 + Duration::from_millis(10)), None);
        assert_eq!(
            t.record("invalid_utf8", t0 + Duration::from_millis(20)),
            None
        );
        assert_eq!(t.due(t0 + Duration::from_millis(500)), None);
        assert_eq!(
            t.due(t0 + Duration::from_millis(1000)),
            Some(("invalid_utf8", 2))
        );
        assert_eq!(t.due(t0 + Duration::from_millis(3000)), None);
    }
}
