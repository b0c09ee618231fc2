//! Acknowledgement by watermark. QoS 1 PUBACKs come in publish order (MQTT 3.1.1 §4.6), and
//! the uplink publishes in `seq` order, so what the broker has acknowledged is a prefix of the
//! outbox: one number, `acked` in `meta`, says which. An acknowledgement moves it up in a small
//! write (the `meta` row, in the group's transaction) instead of deleting each row (~3 µs per
//! row with `RETURNING`); reads start above it; the rows at or below it are dead and removed in
//! seq ranges later ([`Store::reclaim_step`]: when the outbox thread is idle, or when too many
//! are waiting, or when the disk refuses a write), once the replay window (`retain.rs`) no
//! longer keeps them. Their bytes are counted apart (`retained`): an acknowledgement moves a
//! range's bytes from the live total to the retained one, a reclaim takes them off.
//!
//! Crash safety: the watermark and the totals are written in the transaction that acknowledges;
//! the range delete only ever removes rows at or below a committed watermark. A crash between
//! the two leaves dead rows that the next run never reads and removes later; a crash before
//! the watermark's commit leaves the rows live, and they are published again (same ids).
//!
//! Byte accounting without reading the rows: each batch the uplink was handed knows its size
//! ([`Handed`]); an acknowledgement of exactly such a batch subtracts it. Any other range (a
//! batch whose rows an eviction touched since, a range not handed out by this run) is sized by
//! one `count/sum` over its rows: slower, and exact.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{Store, StoreError, Synchronous, Tally};

/// Most seqs one reclaim step removes: about 10–35 ms of the outbox thread on this machine, so
/// a request arriving meanwhile waits no longer than that.
pub(super) const RECLAIM_STEP: u64 = 8_192;
/// Dead seqs past which reclaim runs between groups even when the outbox is never idle (a busy
/// store draining a backlog): without it the file would grow by what is acknowledged.
pub(super) const RECLAIM_OVERDUE: u64 = 200_000;
/// Batch sizes remembered at most: far more than any in-flight window (the uplink keeps a few
/// batches out); a reader that fetches without acknowledging does not grow the outbox's memory.
const HANDED_MAX: usize = 4_096;

/// The sizes of batches handed out and not yet acknowledged: last seq → (first seq, rows,
/// body bytes).
#[derive(Debug, Default)]
pub(super) struct Handed(BTreeMap<u64, (u64, u64, u64)>);

impl Handed {
    pub(super) fn handed_out(&mut self, first: u64, last: u64, rows: u64, bytes: u64) {
        if self.0.len() >= HANDED_MAX {
            self.0.pop_first();
        }
        self.0.insert(last, (first, rows, bytes));
    }

    /// The size of exactly the batch `first..=last`, if it was handed out.
    fn size(&self, first: u64, last: u64) -> Option<(u64, u64)> {
        match self.0.get(&last) {
            Some(&(f, rows, bytes)) if f == first => Some((rows, bytes)),
            _ => None,
        }
    }

    /// Forgets the batches at or below the watermark: acknowledged.
    fn acked_through(&mut self, watermark: u64) {
        self.0 = self.0.split_off(&(watermark + 1));
    }

    /// Forgets every size: rows were removed other than by acknowledgement.
    pub(super) fn forget_all(&mut self) {
        self.0.clear();
    }
}

/// What an acknowledged range does, by the watermark rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AckStep {
    /// Everything in it is at or below the watermark already (the PUBACK of a batch sent again).
    Stale,
    /// It continues the acknowledged prefix: the watermark moves to `last`, and the range's
    /// live rows are `from..=last`.
    Advance { from: u64, last: u64 },
    /// Live rows lie between the watermark and it (never seen with in-order PUBACKs): its rows
    /// are deleted one by one, the watermark stays.
    Delete { first: u64, last: u64 },
}

/// The watermark rule. `live_between(a, b)` answers whether any row remains in `a..=b`: a gap
/// left by an eviction does not stop the watermark, a live row does.
pub(super) fn ack_step(
    watermark: u64,
    first: u64,
    last: u64,
    live_between: impl FnOnce(u64, u64) -> bool,
) -> AckStep {
    if last <= watermark {
        return AckStep::Stale;
    }
    let from = first.max(watermark + 1);
    if from == watermark + 1 || !live_between(watermark + 1, from - 1) {
        AckStep::Advance { from, last }
    } else {
        AckStep::Delete { first, last }
    }
}

/// Applies acknowledged ranges in the group's transaction: moves the watermark (or deletes an
/// out-of-order range) and takes their rows and bytes off the totals.
pub(super) fn acknowledge(
    tx: &Transaction,
    t: &mut Tally,
    acked: &[(u64, u64)],
    handed: &mut Handed,
) -> rusqlite::Result<()> {
    let mut ranges = acked.to_vec();
    ranges.sort_unstable();
    for (first, last) in ranges {
        // No row above the last seq given exists yet: a watermark past it would make rows
        // appended later dead on arrival.
        let last = last.min(t.last_seq);
        let mut live = Ok(false);
        let step = ack_step(t.acked, first, last, |a, b| {
            live = live_rows(tx, a, b);
            *live.as_ref().unwrap_or(&true)
        });
        live?;
        let (from, last) = match step {
            AckStep::Stale => continue,
            AckStep::Advance { from, last } => (from, last),
            AckStep::Delete { first, last } => (first, last),
        };
        let (rows, bytes) = match handed.size(from, last) {
            Some(size) => size,
            None => size_of(tx, from, last)?,
        };
        t.depth -= rows.min(t.depth);
        t.bytes -= bytes.min(t.bytes);
        match step {
            AckStep::Advance { .. } => {
                t.acked = last;
                t.retained += bytes;
            }
            _ => {
                tx.prepare_cached("DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2")?
                    .execute(params![from as i64, last as i64])?;
                handed.forget_all();
            }
        }
    }
    handed.acked_through(t.acked);
    Ok(())
}

/// Whether any row remains in `first..=last`.
fn live_rows(tx: &Transaction, first: u64, last: u64) -> rusqlite::Result<bool> {
    tx.prepare_cached("SELECT 1 FROM outbox WHERE seq BETWEEN ?1 AND ?2 LIMIT 1")?
        .query_row(params![first as i64, last as i64], |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
}

/// The rows and body bytes in `first..=last`, read from the table.
fn size_of(tx: &Transaction, first: u64, last: u64) -> rusqlite::Result<(u64, u64)> {
    tx.prepare_cached(
        "SELECT count(*), coalesce(sum(octet_length(body)), 0) FROM outbox \
         WHERE seq BETWEEN ?1 AND ?2",
    )?
    .query_row(params![first as i64, last as i64], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
    })
}

/// Removes every dead row still in the file, in the group's transaction: live rows need the
/// room (see `write_group`).
pub(super) fn drop_retained(tx: &Transaction, t: &mut Tally) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM outbox WHERE seq > ?1 AND seq <= ?2")?
        .execute(params![t.reclaimed as i64, t.acked as i64])?;
    t.reclaimed = t.acked;
    t.retained = 0;
    Ok(())
}

/// Where reclaiming starts at the open: below the oldest row (one index probe), or at the
/// watermark when no dead row is left.
pub(super) fn first_dead(conn: &Connection, watermark: u64) -> rusqlite::Result<u64> {
    let oldest: Option<i64> = conn.query_row("SELECT min(seq) FROM outbox", [], |r| r.get(0))?;
    Ok(match oldest {
        Some(seq) if (seq as u64) <= watermark => seq as u64 - 1,
        _ => watermark,
    })
}

impl Store {
    /// The highest seq the replay window lets go now.
    fn reclaim_limit(&self) -> u64 {
        self.retention
            .aged_through(std::time::Instant::now())
            .min(self.acked)
    }

    /// Dead rows (at or below the watermark) older than the replay window wait to be removed.
    pub fn reclaim_pending(&self) -> bool {
        self.reclaimed < self.reclaim_limit()
    }

    /// How long until dead rows are due for removal: zero when some are now, `None` when
    /// none is kept. The outbox thread wakes up then even when no request comes.
    pub fn reclaim_due_in(&self) -> Option<std::time::Duration> {
        if self.reclaim_pending() {
            return Some(std::time::Duration::ZERO);
        }
        if self.reclaimed >= self.acked {
            return None;
        }
        self.retention.next_due(std::time::Instant::now())
    }

    /// Live and retained rows together are over the quota: retained rows go (oldest first)
    /// before the window ends, until they fit in the room live rows leave.
    pub fn retained_over_quota(&self) -> bool {
        self.retained > 0
            && self.reclaimed < self.acked
            && self.bytes.saturating_add(self.retained) > self.max_bytes
    }

    /// Bytes of acknowledged rows kept for replay.
    pub fn retained_bytes(&self) -> u64 {
        self.retained
    }

    /// How many dead (acknowledged) seqs are due for removal: past the replay window, not yet
    /// removed.
    pub fn dead_rows(&self) -> u64 {
        let limit = self.reclaim_limit();
        limit - self.reclaimed.min(limit)
    }

    /// The test hook (`PHYGATE_TEST_ABORT_BEFORE_RECLAIM`, debug builds) is set and this run
    /// has committed an acknowledgement.
    fn abort_hook_armed(&self) -> bool {
        self.abort_before_reclaim && self.acked > self.acked_at_open
    }

    /// So many dead rows wait that they are removed even while the outbox is busy.
    pub fn reclaim_overdue(&self) -> bool {
        // Under the test hook, at once: the process then dies right after the first
        // acknowledgement's commit, in the middle of a drain, with rows still unacknowledged.
        let threshold = if self.abort_hook_armed() {
            0
        } else {
            RECLAIM_OVERDUE
        };
        self.dead_rows() > threshold
    }

    /// Removes the next range of dead rows the replay window lets go, at most [`RECLAIM_STEP`]
    /// seqs, in a commit of its own. Returns how many rows went. The live totals do not
    /// change; the retained bytes go down by theirs.
    pub fn reclaim_step(&mut self) -> Result<u64, StoreError> {
        self.retention.prune(std::time::Instant::now());
        let limit = self.reclaim_limit();
        self.reclaim_through(limit)
    }

    /// As [`Store::reclaim_step`], before the window ends: live rows need the room.
    pub fn reclaim_for_room(&mut self) -> Result<u64, StoreError> {
        self.reclaim_through(self.acked)
    }

    fn reclaim_through(&mut self, limit: u64) -> Result<u64, StoreError> {
        if self.reclaimed >= limit {
            return Ok(0);
        }
        if self.abort_hook_armed() {
            // Test hook: dies as a SIGKILL would, after the watermark's commit and before the
            // range delete (tests/watermark.rs).
            std::process::abort();
        }
        let to = limit.min(self.reclaimed + RECLAIM_STEP);
        // Removing dead rows need not reach the disk before it returns: undone by a power cut,
        // they are still dead (the watermark committed before), and removed again.
        let relaxed = self.sync == Synchronous::Full;
        if relaxed {
            self.conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        }
        let mut t = self.tally();
        let removed = self.remove_dead(&mut t, to);
        if relaxed {
            self.conn.execute_batch("PRAGMA synchronous = FULL")?;
        }
        let removed = removed.map_err(super::classify)?;
        t.reclaimed = to;
        self.apply(t);
        Ok(removed)
    }

    /// Deletes the dead rows up to `to` and takes their bytes off the retained ones, with the
    /// total in `meta`, in one transaction. Reading their sizes costs a pass over the range,
    /// off the hot path like the delete itself (idle time, or between groups when overdue).
    fn remove_dead(&mut self, t: &mut Tally, to: u64) -> rusqlite::Result<u64> {
        let tx = self.conn.transaction()?;
        let (a, b) = (self.reclaimed as i64, to as i64);
        let bytes: i64 = tx
            .prepare_cached(
                "SELECT coalesce(sum(octet_length(body)), 0) FROM outbox \
                 WHERE seq > ?1 AND seq <= ?2",
            )?
            .query_row(params![a, b], |r| r.get(0))?;
        let removed = tx
            .prepare_cached("DELETE FROM outbox WHERE seq > ?1 AND seq <= ?2")?
            .execute(params![a, b])?;
        t.retained -= (bytes.max(0) as u64).min(t.retained);
        super::save_tally(&tx, t)?;
        tx.commit()?;
        Ok(removed as u64)
    }

    /// Removes every dead row, kept for replay or not, step by step (the disk refused a
    /// write: they make room).
    pub fn reclaim_all(&mut self) -> Result<u64, StoreError> {
        let mut removed = 0;
        while self.reclaimed < self.acked {
            removed += self.reclaim_for_room()?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_live(_: u64, _: u64) -> bool {
        false
    }

    #[test]
    fn the_next_range_advances_the_watermark() {
        assert_eq!(
            ack_step(0, 1, 500, |_, _| panic!("no gap to look at")),
            AckStep::Advance { from: 1, last: 500 }
        );
        assert_eq!(
            ack_step(500, 501, 1000, |_, _| panic!("no gap to look at")),
            AckStep::Advance {
                from: 501,
                last: 1000
            }
        );
    }

    #[test]
    fn a_range_at_or_below_the_watermark_is_stale() {
        assert_eq!(ack_step(1000, 1, 500, no_live), AckStep::Stale);
        assert_eq!(ack_step(1000, 501, 1000, no_live), AckStep::Stale);
    }

    #[test]
    fn a_range_straddling_the_watermark_advances_from_above_it() {
        assert_eq!(
            ack_step(700, 501, 1000, no_live),
            AckStep::Advance {
                from: 701,
                last: 1000
            }
        );
    }

    #[test]
    fn a_gap_without_rows_does_not_stop_the_watermark() {
        // Rows 501..=520 were evicted before they were published.
        let mut asked = None;
        let step = ack_step(500, 521, 1000, |a, b| {
            asked = Some((a, b));
            false
        });
        assert_eq!(
            step,
            AckStep::Advance {
                from: 521,
                last: 1000
            }
        );
        assert_eq!(asked, Some((501, 520)), "the gap itself is looked at");
    }

    #[test]
    fn a_live_row_before_the_range_keeps_the_watermark() {
        assert_eq!(
            ack_step(500, 1001, 1500, |_, _| true),
            AckStep::Delete {
                first: 1001,
                last: 1500
            }
        );
    }

    #[test]
    fn handed_sizes_are_exact_matches_and_forgotten_once_acknowledged() {
        let mut h = Handed::default();
        h.handed_out(1, 500, 500, 40_000);
        h.handed_out(501, 900, 400, 32_000);
        assert_eq!(h.size(1, 500), Some((500, 40_000)));
        assert_eq!(h.size(2, 500), None, "a clipped range is not the batch");
        h.acked_through(500);
        assert_eq!(h.size(1, 500), None);
        assert_eq!(h.size(501, 900), Some((400, 32_000)));
        h.forget_all();
        assert_eq!(h.size(501, 900), None);
    }
}
