//! The replay window: acknowledged rows stay in the file for `[outbox] replay_window` after
//! their acknowledgement, so that HQ can ask for them again (the `replay` command) when the
//! broker lost them after its PUBACK (a broker restarted without persistence, a cluster whose
//! stream leader died before it stored them).
//!
//! What is known is when the watermark moved, not when each row was acknowledged: the window
//! keeps marks "at instant T the watermark reached W", one per [`Retention::grain`] at most, so
//! their number is bounded (about [`MARKS`]) whatever the rate. A row at or below a mark's
//! watermark was acknowledged by the mark's instant (the last acknowledgement it took in), so
//! once that mark is `window` old every row at or below it may go. Rows acknowledged within one
//! grain share a mark: they are kept up to a grain longer than the window, never shorter.
//!
//! The marks live in memory only. At the open, every dead row still in the file counts as
//! acknowledged then: a restart keeps them a whole window more, which errs on the side of
//! being able to replay. Nothing here decides crash safety: the range delete still removes
//! only rows at or below a committed watermark (`watermark.rs`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Marks kept at most for one window: the grain is the window divided by this.
const MARKS: u32 = 1_024;
/// The finest grain: marks closer than this in time are merged.
const MIN_GRAIN: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy)]
struct Mark {
    /// When the mark was opened: it takes in acknowledgements for one grain from then.
    opened: Instant,
    /// When the last acknowledgement it took in came: what its age is counted from.
    at: Instant,
    watermark: u64,
}

/// When the watermark reached which seq, for the last `window` (see the module doc).
#[derive(Debug)]
pub(super) struct Retention {
    window: Duration,
    grain: Duration,
    /// Marks, oldest first; instants and watermarks both increase.
    marks: VecDeque<Mark>,
    /// Every row at or below this seq was acknowledged at least `window` ago, as far as the
    /// marks already dropped tell.
    aged: u64,
}

impl Retention {
    pub(super) fn new(window: Duration) -> Retention {
        Retention {
            window,
            grain: (window / MARKS).max(MIN_GRAIN),
            marks: VecDeque::new(),
            aged: 0,
        }
    }

    /// The watermark reached `acked` at `now` (committed).
    pub(super) fn acked(&mut self, now: Instant, acked: u64) {
        if self.window.is_zero() {
            self.aged = self.aged.max(acked);
            return;
        }
        match self.marks.back_mut() {
            Some(m) if acked <= m.watermark => {}
            Some(m) if now.saturating_duration_since(m.opened) < self.grain => {
                m.at = now;
                m.watermark = acked;
            }
            _ => self.marks.push_back(Mark {
                opened: now,
                at: now,
                watermark: acked,
            }),
        }
    }

    /// The highest seq whose acknowledgement is at least `window` old at `now`: every dead row
    /// at or below it may be removed.
    pub(super) fn aged_through(&self, now: Instant) -> u64 {
        let old = self
            .marks
            .partition_point(|m| now.saturating_duration_since(m.at) >= self.window);
        match old {
            0 => self.aged,
            n => self.aged.max(self.marks[n - 1].watermark),
        }
    }

    /// Drops the marks that have aged by `now` (folded into `aged`).
    pub(super) fn prune(&mut self, now: Instant) {
        let through = self.aged_through(now);
        while self.marks.front().is_some_and(|m| m.watermark <= through) {
            self.marks.pop_front();
        }
        self.aged = through;
    }

    /// How long until the oldest mark still waiting ages (zero when one has already).
    pub(super) fn next_due(&self, now: Instant) -> Option<Duration> {
        let m = self.marks.front()?;
        Some(
            self.window
                .saturating_sub(now.saturating_duration_since(m.at)),
        )
    }

    /// Every row at or below `seq` may go now, whatever its age (room is needed).
    pub(super) fn release_through(&mut self, seq: u64) {
        self.aged = self.aged.max(seq);
        while self.marks.front().is_some_and(|m| m.watermark <= seq) {
            self.marks.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn a_zero_window_releases_at_once() {
        let mut r = Retention::new(Duration::ZERO);
        let t0 = Instant::now();
        r.acked(t0, 500);
        assert_eq!(r.aged_through(t0), 500);
        assert_eq!(r.next_due(t0), None);
    }

    #[test]
    fn rows_wait_the_window_after_their_acknowledgement() {
        let mut r = Retention::new(WINDOW);
        let t0 = Instant::now();
        r.acked(t0, 100);
        r.acked(t0 + Duration::from_secs(30), 200);
        assert_eq!(r.aged_through(t0 + WINDOW - Duration::from_millis(1)), 0);
        assert_eq!(r.aged_through(t0 + WINDOW), 100);
        assert_eq!(
            r.next_due(t0 + Duration::from_secs(40)),
            Some(Duration::from_secs(20))
        );
        assert_eq!(r.aged_through(t0 + Duration::from_secs(90)), 200);
        r.prune(t0 + Duration::from_secs(90));
        assert_eq!(r.next_due(t0 + Duration::from_secs(90)), None);
        assert_eq!(r.aged_through(t0 + Duration::from_secs(90)), 200);
    }

    #[test]
    fn room_releases_before_the_window() {
        let mut r = Retention::new(WINDOW);
        let t0 = Instant::now();
        r.acked(t0, 100);
        r.acked(t0 + Duration::from_secs(10), 300);
        r.release_through(300);
        assert_eq!(r.aged_through(t0), 300);
        assert_eq!(r.next_due(t0), None);
    }

    proptest! {
        /// Whatever the acknowledgements' times and sizes: a seq is released only once its
        /// acknowledgement is at least the window old, and by a grain past the window it is.
        #[test]
        fn released_exactly_after_the_window(
            steps in proptest::collection::vec((0u64..5_000, 1u64..50), 1..200),
            probe in 0u64..400_000,
        ) {
            let mut r = Retention::new(WINDOW);
            let t0 = Instant::now();
            let (mut at, mut acked) = (0u64, 0u64);
            // (ms, watermark) of every acknowledgement.
            let mut history = Vec::new();
            for (gap, n) in steps {
                at += gap;
                acked += n;
                r.acked(t0 + Duration::from_millis(at), acked);
                history.push((at, acked));
            }
            let now = Duration::from_millis(probe);
            let through = r.aged_through(t0 + now);
            let window = WINDOW.as_millis() as u64;
            let grain = r.grain.as_millis() as u64;
            // Never early: every released seq was acknowledged a window ago.
            let acked_by = |ms: u64| history.iter().filter(|(t, _)| *t <= ms).map(|(_, w)| *w).max().unwrap_or(0);
            prop_assert!(through <= acked_by(probe.saturating_sub(window)));
            // Never later than a grain past the window.
            prop_assert!(through >= acked_by(probe.saturating_sub(window + grain)));
        }
    }
}
