//! The outbox's totals (last seq, live rows and bytes, the watermark, retained bytes), kept in
//! `meta` and written in the same transaction as every change to the rows, so that opening
//! reads them instead of the table.

use rusqlite::{params, Connection};

use super::{Cursor, Store};

impl Store {
    pub(super) fn tally(&self) -> Tally {
        Tally {
            last_seq: self.last_seq,
            depth: self.depth,
            bytes: self.bytes,
            acked: self.acked,
            evicting: self.evicting,
            retained: self.retained,
            reclaimed: self.reclaimed,
        }
    }

    /// Takes on a committed transaction's counters.
    pub(super) fn apply(&mut self, t: Tally) {
        if t.acked > self.acked {
            self.retention.acked(std::time::Instant::now(), t.acked);
        }
        if t.reclaimed > self.reclaimed {
            self.retention.release_through(t.reclaimed);
        }
        (
            self.last_seq,
            self.depth,
            self.bytes,
            self.acked,
            self.evicting,
            self.retained,
            self.reclaimed,
        ) = (
            t.last_seq,
            t.depth,
            t.bytes,
            t.acked,
            t.evicting,
            t.retained,
            t.reclaimed,
        );
        self.publish_gauges();
    }
}

/// The outbox's counters as a transaction changes them; applied only once it commits.
pub(super) struct Tally {
    pub(super) last_seq: u64,
    pub(super) depth: u64,
    pub(super) bytes: u64,
    pub(super) acked: u64,
    pub(super) evicting: Option<Cursor>,
    /// Bytes of dead rows kept for replay.
    pub(super) retained: u64,
    /// Every row at or below it is gone (not kept in `meta`: found again at the open).
    pub(super) reclaimed: u64,
}

pub(super) fn read_tally(conn: &Connection) -> rusqlite::Result<Tally> {
    let mut t = Tally {
        last_seq: 0,
        depth: 0,
        bytes: 0,
        acked: 0,
        evicting: None,
        retained: 0,
        reclaimed: 0,
    };
    let mut q = conn.prepare("SELECT key, value FROM meta")?;
    let mut rows = q.query([])?;
    while let Some(row) = rows.next()? {
        let value = row.get::<_, i64>(1)?.max(0) as u64;
        match row.get_ref(0)?.as_str()? {
            "last_seq" => t.last_seq = value,
            "rows" => t.depth = value,
            "bytes" => t.bytes = value,
            "acked" => t.acked = value,
            "retained" => t.retained = value,
            _ => {}
        }
    }
    Ok(t)
}

/// Writes the counters in the transaction that changed them.
pub(super) fn save_tally(tx: &rusqlite::Transaction, t: &Tally) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE meta SET value = CASE key WHEN 'last_seq' THEN ?1 WHEN 'rows' THEN ?2 \
         WHEN 'bytes' THEN ?3 WHEN 'acked' THEN ?4 ELSE ?5 END \
         WHERE key IN ('last_seq', 'rows', 'bytes', 'acked', 'retained')",
    )?
    .execute(params![
        t.last_seq as i64,
        t.depth as i64,
        t.bytes as i64,
        t.acked as i64,
        t.retained as i64
    ])?;
    Ok(())
}
