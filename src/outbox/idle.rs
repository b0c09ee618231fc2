//! What the outbox thread leaves for later: acknowledgements that wait to ride in the next
//! group's transaction, and when the dead rows are removed.
//!
//! Why. A store publishing a steady trickle (a few events a second) used to pay three write
//! transactions per event: the append, the acknowledgement that followed its PUBACK ~1 ms
//! later, and the removal of the acknowledged row once the queue was quiet for [`IDLE`]. Each
//! is a WAL commit: at least two page frames written (flash wear on a store's SD card), the
//! file locks taken and released, and a wake-up of this thread. Now an acknowledgement alone
//! is applied with the next group (the next event's append, usually a fraction of a second
//! later) or after [`ACK_LINGER`], and dead rows are removed [`RECLAIM_BATCH`] at a time, or
//! all of them once the store has been quiet for [`QUIET`].
//!
//! Safety. A deferred acknowledgement is not yet on disk: a crash (or a power cut) before it
//! commits leaves those rows live, and the next run publishes them again with the same ids,
//! which HQ de-duplicates. That is the same outcome as a crash between a PUBACK and its
//! commit before, only over a longer window (at most [`ACK_LINGER`]). Nothing is lost: a row
//! leaves the file only below a committed watermark.

use std::time::{Duration, Instant};

use super::{Appends, Outbox};

/// A queue quiet this long counts as idle: a batch of dead rows is removed then. Short enough
/// to use the pauses of a busy store, long enough not to stall a drain between its fetches.
pub(super) const IDLE: Duration = Duration::from_millis(50);
/// A queue quiet this long: every dead row is removed, however few (a store that went quiet
/// leaves a clean file).
pub(super) const QUIET: Duration = Duration::from_secs(1);
/// Dead rows worth a removal in a pause of [`IDLE`]: one range delete per ~1,000 events
/// instead of one per event. At a few hundred bytes a row, a few hundred KiB of file.
pub(super) const RECLAIM_BATCH: u64 = 1024;
/// The longest an acknowledgement waits for a group to ride in before it is committed alone.
/// Bounds what a crash makes the next run publish again.
pub(super) const ACK_LINGER: Duration = Duration::from_millis(500);

/// How long the queue must be quiet before dead rows are removed, for so many of them.
pub(super) fn reclaim_after(dead_rows: u64) -> Duration {
    if dead_rows >= RECLAIM_BATCH {
        IDLE
    } else {
        QUIET
    }
}

/// Acknowledged ranges not yet committed, oldest first.
#[derive(Debug, Default)]
pub(super) struct DeferredAcks {
    ranges: Vec<(u64, u64)>,
    /// When the oldest of them came.
    since: Option<Instant>,
}

impl DeferredAcks {
    pub(super) fn defer(&mut self, acks: Vec<(u64, u64)>, now: Instant) {
        if acks.is_empty() {
            return;
        }
        self.since.get_or_insert(now);
        self.ranges.extend(acks);
    }

    /// Every range deferred, to commit now.
    pub(super) fn take(&mut self) -> Vec<(u64, u64)> {
        self.since = None;
        std::mem::take(&mut self.ranges)
    }

    /// When they must be committed even if no group comes.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.since.map(|t| t + ACK_LINGER)
    }

    pub(super) fn due(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|at| at <= now)
    }

    /// The highest seq acknowledged among them (0: none). A read from below it must see them
    /// applied, or it would hand out acknowledged rows again.
    pub(super) fn through(&self) -> u64 {
        self.ranges.iter().map(|r| r.1).max().unwrap_or(0)
    }
}

impl Outbox {
    /// When the idle queue has work to do even if no request comes: deferred acknowledgements
    /// to commit, dead rows to remove (`idle.rs`).
    pub(super) fn idle_deadline(&self) -> Option<Instant> {
        // Dead rows kept for the replay window wake the thread when the window lets them go;
        // those it lets go are removed in batches, as above.
        let now = Instant::now();
        let reclaim = self.store.reclaim_due_in().map(|due| {
            if due.is_zero() {
                now + reclaim_after(self.store.dead_rows())
            } else {
                now + due
            }
        });
        self.deferred_acks
            .deadline()
            .into_iter()
            .chain(reclaim)
            .min()
    }

    /// Does what [`Outbox::idle_deadline`] waited for.
    pub(super) fn idle_work(&mut self) {
        if self.deferred_acks.due(Instant::now()) {
            self.commit_deferred_acks();
        } else {
            self.reclaim_step();
        }
    }

    /// Commits the deferred acknowledgements alone (no group came for them).
    pub(super) fn commit_deferred_acks(&mut self) {
        let acks = self.deferred_acks.take();
        if acks.is_empty() {
            return;
        }
        let (held, _) = self.commit(Appends::default(), acks, Vec::new());
        debug_assert!(held.is_empty(), "no append was in the commit");
        self.move_aside_if_corrupt();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_acks_are_due_after_the_linger_from_the_oldest() {
        let t0 = Instant::now();
        let mut d = DeferredAcks::default();
        assert_eq!(d.deadline(), None);
        assert!(!d.due(t0 + Duration::from_secs(3600)), "nothing deferred");
        d.defer(vec![(1, 5)], t0);
        d.defer(vec![(6, 9)], t0 + Duration::from_millis(300));
        assert_eq!(
            d.deadline(),
            Some(t0 + ACK_LINGER),
            "counted from the oldest"
        );
        assert!(!d.due(t0 + ACK_LINGER - Duration::from_millis(1)));
        assert!(d.due(t0 + ACK_LINGER));
        assert_eq!(d.through(), 9);
        assert_eq!(d.take(), vec![(1, 5), (6, 9)]);
        assert_eq!((d.deadline(), d.through()), (None, 0));
    }

    #[test]
    fn an_empty_acknowledgement_defers_nothing() {
        let mut d = DeferredAcks::default();
        d.defer(Vec::new(), Instant::now());
        assert_eq!(d.deadline(), None);
    }

    #[test]
    fn a_batch_of_dead_rows_goes_at_the_first_pause_and_a_few_once_quiet() {
        assert_eq!(reclaim_after(RECLAIM_BATCH), IDLE);
        assert_eq!(reclaim_after(RECLAIM_BATCH - 1), QUIET);
        assert_eq!(reclaim_after(1), QUIET);
    }
}
