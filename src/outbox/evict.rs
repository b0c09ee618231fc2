//! Choosing what goes when the outbox is over its quota or past its retention, and the
//! `store.outbox.evicted` report that names it: every seq that leaves other than by an
//! acknowledgement is announced to HQ, in the same transaction as its delete.

use std::time::SystemTime;

use tracing::warn;

use rusqlite::params;

use super::{classify, insert, save_tally, Store, StoreError, Tally, STAMPED_BY_SYNCED_CLOCK};
use crate::event::unix_ms_signed;

/// Rows picked per query.
const PICK: usize = 512;
/// Seqs one query scans at most, so that a priority with few or no rows is passed over in
/// bounded pieces.
const WINDOW: i64 = 4_096;
/// A step scans at most this many seqs per row it may delete.
const SCAN_PER_STEP: usize = 4;
use crate::event::{Event, EventData, Origin, OutboxEvicted, Priority};

/// Where an eviction's scan resumes: every row of a lower priority, and of this one up to
/// `after`, is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cursor {
    pub(super) priority: i64,
    pub(super) after: i64,
}

impl Default for Cursor {
    fn default() -> Self {
        Cursor {
            priority: Priority::Telemetry as i64,
            after: 0,
        }
    }
}

/// What an eviction removed: its rows, and the announcements of the loss reports among them,
/// carried on so a report dropped by a later eviction does not take its ranges with it (HQ
/// would see a gap nobody announced).
#[derive(Debug, Default)]
pub(super) struct Evicted {
    pub(super) seqs: Vec<u64>,
    carried: Vec<[u64; 2]>,
    carried_count: u64,
}

/// A row chosen for eviction: seq, size, and for a loss report its ranges (JSON) and count.
pub(super) type Victim = (i64, i64, Option<String>, Option<i64>);

/// The columns of a [`Victim`]. Only identified-priority rows can be loss reports, so the
/// JSON is read for those alone.
pub(super) fn victim_columns() -> String {
    let report = format!(
        "priority = {} AND json_extract(body, '$.type') = 'store.outbox.evicted'",
        Priority::Identified as i64
    );
    format!(
        "seq, octet_length(body), CASE WHEN {report} THEN json_extract(body, '$.data.ranges') END, \
         CASE WHEN {report} THEN json_extract(body, '$.data.count') END"
    )
}

pub(super) fn victim(r: &rusqlite::Row) -> rusqlite::Result<Victim> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

impl Evicted {
    pub(super) fn push(&mut self, (seq, _, ranges, count): &Victim) {
        self.seqs.push(*seq as u64);
        if let Some(ranges) = ranges {
            // Written by `evicted_event`, so it parses; an unreadable one still counts its row.
            let ranges: Vec<[u64; 2]> = serde_json::from_str(ranges).unwrap_or_default();
            self.carried.extend(ranges);
            self.carried_count += count.unwrap_or(0).max(0) as u64;
        }
    }

    fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Counts the dropped rows (metric and log line).
    fn count_dropped(&self, why: &'static str) {
        if !self.seqs.is_empty() {
            warn!(count = self.seqs.len(), "{why}");
            crate::metrics::EVENTS_EVICTED.add(self.seqs.len() as u64);
        }
    }
}

/// Deletes the lowest-priority, oldest rows until `bytes <= target`, resuming the eviction
/// under way (`t.evicting`). Past [`super::EVICT_STEP_ROWS`] rows (or a scan of four times as many
/// seqs) it stops once `bytes <= max`, and
/// leaves the cursor in `t.evicting` for the next commit.
pub(super) fn evict_over_quota(
    tx: &rusqlite::Transaction,
    t: &mut Tally,
    max: u64,
    target: u64,
    step: usize,
) -> rusqlite::Result<Evicted> {
    let mut evicted = Evicted::default();
    // No index on priority: it would slow every append and every ack delete, while eviction
    // is rare and frees 10 % of the quota at once, so a scan in seq order is affordable here.
    // But a priority with no rows (no telemetry in the backlog) costs a pass over the whole
    // table: the scan goes in windows of seqs, and a step ends after `SCAN_PER_STEP` times
    // `step` seqs scanned as well as after `step` rows deleted, so no commit reads the whole
    // table; the cursor carried between steps keeps each from scanning again what an earlier
    // one passed.
    let mut pick = tx.prepare_cached(&format!(
        "SELECT {} FROM outbox WHERE seq > ?2 AND seq <= ?3 AND priority = ?1 \
         ORDER BY seq LIMIT {PICK}",
        victim_columns()
    ))?;
    let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
    // Rows at or below the watermark are acknowledged (dead, not counted): never evicted.
    let acked = t.acked as i64;
    let oldest = |tx: &rusqlite::Transaction| -> rusqlite::Result<i64> {
        tx.prepare_cached("SELECT coalesce(min(seq), ?1 + 1) FROM outbox WHERE seq > ?1")?
            .query_row([acked], |r| r.get(0))
    };
    let mut at = match t.evicting.take() {
        Some(at) => Cursor {
            after: at.after.max(acked),
            ..at
        },
        None => Cursor {
            after: oldest(tx)? - 1,
            ..Cursor::default()
        },
    };
    let mut scanned = 0u64;
    // A step that deleted its share ends only with room under the quota for its own report,
    // whose size follows the ranges it names (an upper bound: ranges found adjacent later
    // merge). A step that scanned its share ends anyway: while it passes over rows it may not
    // evict (a priority with none), the outbox stays over its quota by what comes in meanwhile,
    // for a few commits, rather than one commit reading the whole table.
    let mut ranges = 0u64;
    let step_done = |t: &Tally, evicted: &Evicted, ranges: u64, scanned: u64| {
        let report = 512 + 48 * (ranges + evicted.carried.len() as u64);
        scanned >= (step * SCAN_PER_STEP) as u64
            || (evicted.seqs.len() >= step && t.bytes + report <= max)
    };
    'scan: while t.bytes > target && t.depth > 0 && at.priority <= Priority::Identified as i64 {
        if step_done(t, &evicted, ranges, scanned) {
            t.evicting = Some(at);
            break;
        }
        if at.after >= t.last_seq as i64 {
            at = Cursor {
                priority: at.priority + 1,
                after: oldest(tx)? - 1,
            };
            continue;
        }
        let end = at.after.saturating_add(WINDOW);
        let chunk: Vec<Victim> = pick
            .query_map([at.priority, at.after, end], victim)?
            .collect::<rusqlite::Result<_>>()?;
        let whole_window = chunk.len() < PICK;
        let from = at.after;
        for v in chunk {
            if t.bytes <= target {
                break 'scan;
            }
            if step_done(t, &evicted, ranges, scanned) {
                t.evicting = Some(at);
                break 'scan;
            }
            if evicted.seqs.last() != Some(&(v.0 as u64 - 1)) {
                ranges += 1;
            }
            delete.execute([v.0])?;
            t.depth -= 1;
            t.bytes -= v.1 as u64;
            at.after = v.0;
            evicted.push(&v);
        }
        if whole_window {
            at.after = end;
        }
        scanned += (at.after - from).max(0) as u64;
    }
    evicted.count_dropped("outbox over its byte quota: lowest-priority oldest events dropped");
    Ok(evicted)
}

/// The `store.outbox.evicted` report: the dropped seqs and the ranges of dropped reports, as
/// merged ranges, and how many events they stand for.
pub(super) fn evicted_event(
    origin: &Origin,
    evicted: Evicted,
    policy: &'static str,
) -> Option<Event> {
    if evicted.is_empty() {
        return None;
    }
    let count = evicted.seqs.len() as u64 + evicted.carried_count;
    let mut all: Vec<[u64; 2]> = evicted.seqs.iter().map(|s| [*s, *s]).collect();
    all.extend(evicted.carried);
    all.sort_unstable();
    let mut ranges: Vec<[u64; 2]> = Vec::with_capacity(all.len());
    for [first, last] in all {
        match ranges.last_mut() {
            Some(r) if first <= r[1].saturating_add(1) => r[1] = r[1].max(last),
            _ => ranges.push([first, last]),
        }
    }
    let mut e = Event::new(
        origin.gateway.as_str().into(),
        SystemTime::now(),
        EventData::OutboxEvicted(OutboxEvicted {
            ranges,
            count,
            policy,
        }),
    );
    e.stage = None;
    debug_assert_eq!(e.priority(), Priority::Identified);
    Some(e)
}

impl Store {
    /// Drops rows older than the retention, at most [`EVICT_STEP_ROWS`] of them, and appends
    /// the report naming them, in one transaction: a crash (or a full disk) between the two
    /// would have left a gap nobody announced. Returns how many were dropped; when that is a
    /// whole step, more may be due (call again). Called now and then, not per append.
    pub fn expire(&mut self, now: SystemTime) -> Result<u64, StoreError> {
        let cutoff = unix_ms_signed(now) - self.max_age.as_millis() as i64;
        let mut t = self.tally();
        let tx = self.conn.transaction().map_err(classify)?;
        let old: Vec<Victim> = tx
            .prepare_cached(&format!(
                "SELECT {} FROM outbox WHERE seq > ?3 AND created_ms < ?1 \
                 AND {STAMPED_BY_SYNCED_CLOCK} ORDER BY seq LIMIT ?2",
                victim_columns()
            ))?
            .query_map(params![cutoff, self.step as i64, t.acked as i64], victim)?
            .collect::<rusqlite::Result<_>>()?;
        if old.is_empty() {
            return Ok(0);
        }
        self.handed.borrow_mut().forget_all();
        let mut evicted = Evicted::default();
        let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
        for v in &old {
            delete.execute([v.0]).map_err(classify)?;
            evicted.push(v);
            t.depth -= 1;
            t.bytes -= v.1 as u64;
        }
        drop(delete);
        let n = old.len() as u64;
        if let Some(report) = evicted_event(&self.origin, evicted, "age") {
            insert(&tx, &report.prepare(&self.origin), &mut t).map_err(classify)?;
        }
        save_tally(&tx, &t).map_err(classify)?;
        tx.commit().map_err(classify)?;
        self.apply(t);
        warn!(
            count = n,
            "outbox rows older than the retention were dropped"
        );
        crate::metrics::EVENTS_EVICTED.add(n);
        Ok(n)
    }
}
