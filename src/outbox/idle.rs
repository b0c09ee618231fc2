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
//! Waiting for an append makes sense only while appends come. A backlog drained with no live
//! events (the night after an outage) has none to ride with: its acknowledgements stream in,
//! one per PUBACK, are committed together every [`ACK_LINGER`] while they keep coming, and at
//! once when they acknowledge the last row: the drain is over, and no PUBACK is left to wait
//! for. Waiting out the linger there too left the end of a drain unacknowledged on disk for
//! half a second: the depth gauge and the status page showed a backlog already delivered, and
//! a crash in that time resent it (the spine bench measured it: every drain round ended
//! ~0.5 s late). A drain that stalls before its last row (the broker slow, the link lost) is
//! committed by the linger, as before. Committing whenever the PUBACKs paused for 2 ms was
//! tried and dropped: on a loaded machine they pause often, and each pause cost the outbox
//! thread an fsync between its reads.
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
    /// When the newest of them came.
    latest: Option<Instant>,
    /// The highest seq among them (0: none).
    through: u64,
    /// When the last group with appends was served: while appends come, acknowledgements wait
    /// to ride with them.
    appended: Option<Instant>,
}

impl DeferredAcks {
    pub(super) fn defer(&mut self, acks: Vec<(u64, u64)>, now: Instant) {
        if acks.is_empty() {
            return;
        }
        self.since.get_or_insert(now);
        self.latest = Some(now);
        self.through = acks.iter().fold(self.through, |t, r| t.max(r.1));
        self.ranges.extend(acks);
    }

    /// Every range deferred, to commit now.
    pub(super) fn take(&mut self) -> Vec<(u64, u64)> {
        (self.since, self.latest, self.through) = (None, None, 0);
        std::mem::take(&mut self.ranges)
    }

    /// Every range deferred, to commit with a group served at `now` (`appending`: it has
    /// appends of its own).
    pub(super) fn ride(&mut self, appending: bool, now: Instant) -> Vec<(u64, u64)> {
        if appending {
            self.appended = Some(now);
        }
        self.take()
    }

    /// When they must be committed even if no group comes: after the linger, or at once when
    /// they reach `last_seq`, the outbox's last row, and no appends come to carry them.
    pub(super) fn deadline(&self, last_seq: u64) -> Option<Instant> {
        let lingered = self.since? + ACK_LINGER;
        let latest = self.latest?;
        let appends_come = self
            .appended
            .is_some_and(|at| latest.saturating_duration_since(at) < ACK_LINGER);
        Some(if !appends_come && self.through >= last_seq {
            latest
        } else {
            lingered
        })
    }

    pub(super) fn due(&self, now: Instant, last_seq: u64) -> bool {
        self.deadline(last_seq).is_some_and(|at| at <= now)
    }

    /// The highest seq acknowledged among them (0: none). A read from below it must see them
    /// applied, or it would hand out acknowledged rows again.
    pub(super) fn through(&self) -> u64 {
        self.through
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
            .deadline(self.store.last_seq())
            .into_iter()
            .chain(reclaim)
            .min()
    }

    /// Does what [`Outbox::idle_deadline`] waited for.
    pub(super) fn idle_work(&mut self) {
        if self.acks_due() {
            self.commit_deferred_acks();
        } else {
            self.reclaim_step();
        }
    }

    /// The deferred acknowledgements must be committed now, even with no group to ride in.
    pub(super) fn acks_due(&self) -> bool {
        self.deferred_acks
            .due(Instant::now(), self.store.last_seq())
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

    /// A last row beyond every acknowledgement of a test: the drain is not over.
    const MORE: u64 = u64::MAX;

    #[test]
    fn deferred_acks_are_due_after_the_linger_from_the_oldest_while_appends_come() {
        let t0 = Instant::now();
        let mut d = DeferredAcks::default();
        assert_eq!(d.deadline(MORE), None);
        assert!(
            !d.due(t0 + Duration::from_secs(3600), MORE),
            "nothing deferred"
        );
        assert!(d.ride(true, t0).is_empty());
        d.defer(vec![(1, 5)], t0);
        d.defer(vec![(6, 9)], t0 + Duration::from_millis(300));
        assert_eq!(
            d.deadline(MORE),
            Some(t0 + ACK_LINGER),
            "counted from the oldest"
        );
        assert!(!d.due(t0 + ACK_LINGER - Duration::from_millis(1), MORE));
        assert!(d.due(t0 + ACK_LINGER, MORE));
        assert_eq!(d.through(), 9);
        assert_eq!(d.take(), vec![(1, 5), (6, 9)]);
        assert_eq!((d.deadline(MORE), d.through()), (None, 0));
    }

    #[test]
    fn a_drains_acknowledgements_with_no_appends_are_due_once_they_reach_the_last_row() {
        let t0 = Instant::now();
        let mut d = DeferredAcks::default();
        d.defer(vec![(1, 500)], t0);
        d.defer(vec![(501, 1000)], t0 + Duration::from_millis(1));
        // More rows to drain: committed every linger while the PUBACKs keep coming.
        assert_eq!(d.deadline(1500), Some(t0 + ACK_LINGER));
        // The last row acknowledged: no PUBACK is left to wait for.
        assert_eq!(d.deadline(1000), Some(t0 + Duration::from_millis(1)));
        assert!(d.due(t0 + Duration::from_millis(1), 1000));
        d.take();
        // An append long before the acknowledgement does not hold it for the linger either.
        d.ride(true, t0);
        let later = t0 + ACK_LINGER + Duration::from_millis(1);
        d.defer(vec![(1, 1)], later);
        assert_eq!(d.deadline(1), Some(later));
        // One just before it does: the next append is likely to come and carry it.
        d.take();
        d.ride(true, later);
        d.defer(vec![(2, 2)], later + Duration::from_millis(1));
        assert_eq!(
            d.deadline(2),
            Some(later + Duration::from_millis(1) + ACK_LINGER)
        );
    }

    #[test]
    fn an_empty_acknowledgement_defers_nothing() {
        let mut d = DeferredAcks::default();
        d.defer(Vec::new(), Instant::now());
        assert_eq!(d.deadline(MORE), None);
    }

    #[test]
    fn a_batch_of_dead_rows_goes_at_the_first_pause_and_a_few_once_quiet() {
        assert_eq!(reclaim_after(RECLAIM_BATCH), IDLE);
        assert_eq!(reclaim_after(RECLAIM_BATCH - 1), QUIET);
        assert_eq!(reclaim_after(1), QUIET);
    }
}
