//! The SQLite outbox table: durable append with group commit, batch reads in `seq` order,
//! delete on acknowledgement, quota eviction. Synchronous; owned by the outbox thread.
//!
//! Invariants:
//! - `seq` is dense and increasing for the gateway's life: the last one given is kept in `meta`
//!   in the same transaction as the rows, so an empty outbox after a restart continues the count.
//! - A row is deleted only by an acknowledgement of its publish, or by eviction, and every
//!   eviction appends a `store.outbox.evicted` event naming the seq ranges it removed.
//! - WAL journal; `synchronous` from config (FULL by default: a commit survives a power cut).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use tracing::{error, warn};

use crate::config::Synchronous;
use crate::event::{Event, EventData, Origin, OutboxEvicted, Priority};

/// Schema versions, applied in order; `PRAGMA user_version` says how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: the outbox and its counters.
    "CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        priority INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        body TEXT NOT NULL
     );
     CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
     INSERT INTO meta(key, value) VALUES ('last_seq', 0);",
    // 2: small durable state of other stages (gate counter baselines, replay cache, members),
    // written in the same transaction as the events it explains.
    "CREATE TABLE state (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;",
];

/// The rows whose age can be judged: their event's time came from a synchronised clock
/// (`clocksync`; rows written before it existed count as synchronised). A board that booted in
/// 1970 and then met NTP would otherwise see its whole backlog as decades old. Such rows are
/// still bounded by the byte quota.
const STAMPED_BY_SYNCED_CLOCK: &str = "coalesce(json_extract(body, '$.clocksync'), 1) = 1";
/// Eviction frees down to this share of the quota, so a full outbox does not evict on every append.
const EVICT_TO_PERCENT: u64 = 90;
/// SQLite waits this long for a lock held by an outside reader (e.g. `sqlite3` during support).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The disk (or the database's size limit) is full: nothing of the failed group was written.
    /// Retry later; acknowledged rows being deleted may free room.
    #[error("the outbox disk is full")]
    Full,
    /// Any other SQLite failure; the transaction was rolled back.
    #[error("outbox database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot quarantine the corrupt database {path}: {source}")]
    Quarantine {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn classify(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::Full,
        _ => StoreError::Sqlite(e),
    }
}

/// A run of events ready to publish: `[` bodies `]`, seqs `first..=last`.
#[derive(Debug, Clone)]
pub struct Batch {
    pub first: u64,
    pub last: u64,
    pub count: usize,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub depth: u64,
    pub bytes: u64,
    pub last_seq: u64,
    pub oldest_ms: Option<i64>,
}

pub struct Store {
    conn: Connection,
    sync: Synchronous,
    origin: Origin,
    max_bytes: u64,
    max_age: Duration,
    last_seq: u64,
    depth: u64,
    bytes: u64,
}

/// What opening found.
pub struct Opened {
    pub store: Store,
    /// Where a corrupt database was moved before a fresh one was started.
    pub quarantined: Option<PathBuf>,
}

impl Store {
    /// Opens (or creates) the outbox. A file that is not a healthy SQLite database is moved aside
    /// with a timestamped name and a fresh outbox starts: never deleted, never a crash loop.
    pub fn open(
        path: &Path,
        sync: Synchronous,
        origin: Origin,
        max_bytes: u64,
        max_age: Duration,
    ) -> Result<Opened, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
            })?;
        }
        let mut quarantined = None;
        let conn = match open_checked(path, sync) {
            Ok(c) => c,
            Err(e) if is_corruption(&e) => {
                let moved = quarantine(path)?;
                error!(db = %path.display(), moved_to = %moved.display(), error = %e, "outbox database is corrupt; moved aside, starting a fresh one");
                quarantined = Some(moved);
                open_checked(path, sync)?
            }
            Err(e) => return Err(e.into()),
        };
        let last_seq: i64 =
            conn.query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                r.get(0)
            })?;
        let (depth, bytes): (i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(octet_length(body)), 0) FROM outbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let store = Store {
            conn,
            sync,
            origin,
            max_bytes,
            max_age,
            last_seq: last_seq as u64,
            depth: depth as u64,
            bytes: bytes as u64,
        };
        store.publish_gauges();
        Ok(Opened { store, quarantined })
    }

    /// Caps the database file at about `bytes` (SQLite `max_page_count`): past it, a write that
    /// needs a new page fails as on a full disk ([`StoreError::Full`]). Deletes still commit
    /// (their pages go to the free list, and the WAL is outside the cap), so acknowledged rows
    /// make room again.
    pub fn cap_file(&self, bytes: u64) -> Result<(), StoreError> {
        let page: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages = (bytes / page.max(512) as u64).max(1);
        // SQLite answers with the cap in force (never below the file's current size).
        let _: i64 = self
            .conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get(0)
            })?;
        Ok(())
    }

    pub fn stats(&self) -> Result<Stats, StoreError> {
        let oldest_ms = self
            .conn
            .query_row(
                "SELECT created_ms FROM outbox ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(Stats {
            depth: self.depth,
            bytes: self.bytes,
            last_seq: self.last_seq,
            oldest_ms,
        })
    }

    /// Appends events and deletes acknowledged ranges in one transaction: a group commit. Returns
    /// the seq given to each event, in order. On error nothing of the group is written.
    pub fn commit_group(
        &mut self,
        events: &[Event],
        acked: &[(u64, u64)],
    ) -> Result<Vec<u64>, StoreError> {
        self.commit_group_with_state(events, acked, &[])
    }

    /// As [`Store::commit_group`], also setting state keys (`None` deletes) in the same transaction.
    pub fn commit_group_with_state(
        &mut self,
        events: &[Event],
        acked: &[(u64, u64)],
        state: &[(String, Option<Vec<u8>>)],
    ) -> Result<Vec<u64>, StoreError> {
        let (seqs, t) = self.try_group(events, acked, state).map_err(classify)?;
        (self.last_seq, self.depth, self.bytes) = (t.last_seq, t.depth, t.bytes);
        self.publish_gauges();
        Ok(seqs)
    }

    fn try_group(
        &mut self,
        events: &[Event],
        acked: &[(u64, u64)],
        state: &[(String, Option<Vec<u8>>)],
    ) -> rusqlite::Result<(Vec<u64>, Tally)> {
        let mut t = Tally {
            last_seq: self.last_seq,
            depth: self.depth,
            bytes: self.bytes,
        };
        // A group that only deletes acknowledged rows need not reach the disk before it returns:
        // if a power cut undoes it, those events are published again (same ids), never lost.
        // The next FULL commit syncs the WAL, these frames included.
        let relaxed = events.is_empty() && state.is_empty() && self.sync == Synchronous::Full;
        if relaxed {
            self.conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        }
        let result = self.write_group(&mut t, events, acked, state);
        if relaxed {
            self.conn.execute_batch("PRAGMA synchronous = FULL")?;
        }
        result.map(|seqs| (seqs, t))
    }

    fn write_group(
        &mut self,
        t: &mut Tally,
        events: &[Event],
        acked: &[(u64, u64)],
        state: &[(String, Option<Vec<u8>>)],
    ) -> rusqlite::Result<Vec<u64>> {
        let tx = self.conn.transaction()?;
        for &(first, last) in acked {
            let mut delete = tx.prepare_cached(
                "DELETE FROM outbox WHERE seq BETWEEN ?1 AND ?2 RETURNING octet_length(body)",
            )?;
            let mut rows = delete.query(params![first as i64, last as i64])?;
            while let Some(row) = rows.next()? {
                t.depth -= 1;
                t.bytes -= row.get::<_, i64>(0)? as u64;
            }
        }
        let mut seqs = Vec::with_capacity(events.len());
        for e in events {
            seqs.push(insert(&tx, &self.origin, e, t)?);
        }
        if t.bytes > self.max_bytes {
            let target = self.max_bytes / 100 * EVICT_TO_PERCENT;
            let evicted = evict_over_quota(&tx, t, target)?;
            if let Some(report) = evicted_event(&self.origin, evicted, "bytes") {
                insert(&tx, &self.origin, &report, t)?;
            }
        }
        for (key, value) in state {
            match value {
                Some(v) => tx
                    .prepare_cached("INSERT OR REPLACE INTO state(key, value) VALUES (?1, ?2)")?
                    .execute(params![key, v])?,
                None => tx
                    .prepare_cached("DELETE FROM state WHERE key = ?1")?
                    .execute([key])?,
            };
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'last_seq'",
            params![t.last_seq as i64],
        )?;
        tx.commit()?;
        Ok(seqs)
    }

    /// Drops rows older than the retention and appends the report naming them, in one
    /// transaction: a crash (or a full disk) between the two would have left a gap nobody
    /// announced. Called now and then, not per append.
    pub fn expire(&mut self, now: SystemTime) -> Result<u64, StoreError> {
        let cutoff = unix_ms(now) - self.max_age.as_millis() as i64;
        let mut t = Tally {
            last_seq: self.last_seq,
            depth: self.depth,
            bytes: self.bytes,
        };
        let tx = self.conn.transaction().map_err(classify)?;
        let old: Vec<Victim> = tx
            .prepare_cached(&format!(
                "SELECT {} FROM outbox WHERE created_ms < ?1 AND {STAMPED_BY_SYNCED_CLOCK} \
                 ORDER BY seq",
                victim_columns()
            ))?
            .query_map([cutoff], victim)?
            .collect::<rusqlite::Result<_>>()?;
        if old.is_empty() {
            return Ok(0);
        }
        let mut evicted = Evicted::default();
        for v in &old {
            evicted.push(v);
            t.depth -= 1;
            t.bytes -= v.1 as u64;
        }
        let n = old.len() as u64;
        tx.execute(
            &format!("DELETE FROM outbox WHERE created_ms < ?1 AND {STAMPED_BY_SYNCED_CLOCK}"),
            [cutoff],
        )
        .map_err(classify)?;
        if let Some(report) = evicted_event(&self.origin, evicted, "age") {
            insert(&tx, &self.origin, &report, &mut t).map_err(classify)?;
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'last_seq'",
            params![t.last_seq as i64],
        )
        .map_err(classify)?;
        tx.commit().map_err(classify)?;
        (self.last_seq, self.depth, self.bytes) = (t.last_seq, t.depth, t.bytes);
        self.publish_gauges();
        warn!(
            count = n,
            "outbox rows older than the retention were dropped"
        );
        crate::metrics::EVENTS_EVICTED.add(n);
        Ok(n)
    }

    /// The next batch after `after`: at most `max_events` events and about `max_bytes` bytes (a
    /// single larger event still goes alone).
    pub fn fetch_after(
        &self,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Option<Batch>, StoreError> {
        let mut q = self
            .conn
            .prepare_cached("SELECT seq, body FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let mut rows = q.query(params![after as i64, max_events as i64])?;
        let mut payload = Vec::with_capacity(max_bytes.min(64 * 1024));
        payload.push(b'[');
        let (mut first, mut last, mut count) = (0, 0, 0);
        while let Some(row) = rows.next()? {
            let seq = row.get::<_, i64>(0)? as u64;
            let body = row.get_ref(1)?.as_bytes().map_err(rusqlite::Error::from)?;
            if count > 0 && payload.len() + body.len() + 2 > max_bytes {
                break;
            }
            if count == 0 {
                first = seq;
            } else {
                payload.push(b',');
            }
            payload.extend_from_slice(body);
            last = seq;
            count += 1;
        }
        payload.push(b']');
        Ok((count > 0).then_some(Batch {
            first,
            last,
            count,
            payload,
        }))
    }

    /// A state value, if set.
    pub fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM state WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?)
    }

    /// All state entries whose key starts with `prefix`.
    pub fn scan_state(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut q = self.conn.prepare_cached(
            "SELECT key, value FROM state WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
        )?;
        let rows = q.query_map([prefix], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn publish_gauges(&self) {
        crate::metrics::OUTBOX_DEPTH.set(self.depth);
        crate::metrics::OUTBOX_BYTES.set(self.bytes);
    }
}

/// The outbox's counters as a transaction changes them; applied only once it commits.
struct Tally {
    last_seq: u64,
    depth: u64,
    bytes: u64,
}

/// Inserts one event with the next seq.
fn insert(
    tx: &rusqlite::Transaction,
    origin: &Origin,
    e: &Event,
    t: &mut Tally,
) -> rusqlite::Result<u64> {
    let seq = t.last_seq + 1;
    let body = e.to_json(origin, seq);
    tx.prepare_cached(
        "INSERT INTO outbox(seq, id, priority, created_ms, body) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        seq as i64,
        e.id.hyphenated().to_string(),
        e.priority() as i64,
        unix_ms(e.time),
        body
    ])?;
    t.last_seq = seq;
    t.depth += 1;
    t.bytes += body.len() as u64;
    Ok(seq)
}

/// What an eviction removed: its rows, and the announcements of the loss reports among them,
/// carried on so a report dropped by a later eviction does not take its ranges with it (HQ
/// would see a gap nobody announced).
#[derive(Debug, Default)]
struct Evicted {
    seqs: Vec<u64>,
    carried: Vec<[u64; 2]>,
    carried_count: u64,
}

/// A row chosen for eviction: seq, size, and for a loss report its ranges (JSON) and count.
type Victim = (i64, i64, Option<String>, Option<i64>);

/// The columns of a [`Victim`]. Only identified-priority rows can be loss reports, so the
/// JSON is read for those alone.
fn victim_columns() -> String {
    let report = format!(
        "priority = {} AND json_extract(body, '$.type') = 'store.outbox.evicted'",
        Priority::Identified as i64
    );
    format!(
        "seq, octet_length(body), CASE WHEN {report} THEN json_extract(body, '$.data.ranges') END, \
         CASE WHEN {report} THEN json_extract(body, '$.data.count') END"
    )
}

fn victim(r: &rusqlite::Row) -> rusqlite::Result<Victim> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

impl Evicted {
    fn push(&mut self, (seq, _, ranges, count): &Victim) {
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

/// Deletes the lowest-priority, oldest rows until `bytes <= target`.
fn evict_over_quota(
    tx: &rusqlite::Transaction,
    t: &mut Tally,
    target: u64,
) -> rusqlite::Result<Evicted> {
    let (depth, bytes) = (&mut t.depth, &mut t.bytes);
    let mut evicted = Evicted::default();
    // No index on priority: it would slow every append and every ack delete, while eviction
    // is rare and frees 10 % of the quota at once, so a scan in seq order is affordable here.
    let mut pick = tx.prepare_cached(&format!(
        "SELECT {} FROM outbox WHERE priority = ?1 AND seq > ?2 ORDER BY seq LIMIT 512",
        victim_columns()
    ))?;
    let mut delete = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
    let (mut priority, mut after) = (Priority::Telemetry as i64, 0i64);
    while *bytes > target && *depth > 0 && priority <= Priority::Identified as i64 {
        let chunk: Vec<Victim> = pick
            .query_map([priority, after], victim)?
            .collect::<rusqlite::Result<_>>()?;
        if chunk.is_empty() {
            (priority, after) = (priority + 1, 0);
            continue;
        }
        after = chunk.last().map_or(after, |c| c.0);
        for v in chunk {
            if *bytes <= target {
                break;
            }
            delete.execute([v.0])?;
            *depth -= 1;
            *bytes -= v.1 as u64;
            evicted.push(&v);
        }
    }
    evicted.count_dropped("outbox over its byte quota: lowest-priority oldest events dropped");
    Ok(evicted)
}

/// The `store.outbox.evicted` report: the dropped seqs and the ranges of dropped reports, as
/// merged ranges, and how many events they stand for.
fn evicted_event(origin: &Origin, evicted: Evicted, policy: &'static str) -> Option<Event> {
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

fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

fn open_checked(path: &Path, sync: Synchronous) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL: appends are sequential writes and a reader never blocks the writer.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        warn!(
            mode,
            "SQLite refused WAL mode; durability holds but appends are slower"
        );
    }
    conn.execute_batch(&format!("PRAGMA synchronous = {};", sync.pragma()))?;
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(check),
        ));
    }
    migrate(&conn)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(())
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// Moves the database and its WAL/SHM files aside as `NAME.corrupt-YYYYmmddTHHMMSSZ` (with
/// `.1`, `.2`… after it when that name is taken: a quarantined file is never overwritten).
fn quarantine(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let base = format!("{}.corrupt-{stamp}", path.display());
    let taken = |p: &PathBuf| {
        ["", "-wal", "-shm"]
            .iter()
            .any(|s| PathBuf::from(format!("{}{s}", p.display())).exists())
    };
    let moved = std::iter::once(PathBuf::from(&base))
        .chain((1..).map(|n| PathBuf::from(format!("{base}.{n}"))))
        .find(|p| !taken(p))
        .expect("an unused name");
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        let to = PathBuf::from(format!("{}{suffix}", moved.display()));
        if from.exists() {
            std::fs::rename(&from, &to).map_err(|source| StoreError::Quarantine {
                path: from.clone(),
                source,
            })?;
        }
    }
    Ok(moved)
}

#[cfg(test)]
#[path = "store_fault_tests.rs"]
mod fault_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::DeviceStatusData;

    fn origin() -> Origin {
        Origin {
            store: "s1".into(),
            gateway: "gw".into(),
        }
    }

    fn open(path: &Path, max_bytes: u64) -> Opened {
        Store::open(
            path,
            Synchronous::Full,
            origin(),
            max_bytes,
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    fn scan(payload: &str) -> Event {
        super::fault_tests::scan(payload, None)
    }

    fn status() -> Event {
        Event::new(
            "k1".into(),
            SystemTime::now(),
            EventData::DeviceStatus(DeviceStatusData {
                device: "d".into(),
                kind: "scanner",
                state: crate::sources::DeviceState::Up,
                reason: "x".repeat(200),
                count: None,
            }),
        )
    }

    fn bodies(b: &Batch) -> Vec<serde_json::Value> {
        serde_json::from_slice(&b.payload).unwrap()
    }

    #[test]
    fn append_fetch_ack_in_seq_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir.path().join("o.db"), 1 << 30).store;
        let seqs = s
            .commit_group(&[scan("a"), scan("b"), scan("c")], &[])
            .unwrap();
        assert_eq!(seqs, vec![1, 2, 3]);
        let b = s.fetch_after(0, 2, 1 << 20).unwrap().unwrap();
        assert_eq!((b.first, b.last, b.count), (1, 2, 2));
        let v = bodies(&b);
        assert_eq!(v[0]["data"]["payload"], "a");
        assert_eq!(v[1]["seq"], 2);
        // Fetching does not delete; only an ack does.
        assert_eq!(s.stats().unwrap().depth, 3);
        s.commit_group(&[], &[(1, 2)]).unwrap();
        let b = s.fetch_after(0, 10, 1 << 20).unwrap().unwrap();
        assert_eq!((b.first, b.last), (3, 3));
        assert_eq!(s.stats().unwrap().depth, 1);
    }

    #[test]
    fn batch_respects_byte_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir.path().join("o.db"), 1 << 30).store;
        let events: Vec<Event> = (0..10)
            .map(|i| scan(&format!("{i}{}", "x".repeat(100))))
            .collect();
        s.commit_group(&events, &[]).unwrap();
        let b = s.fetch_after(0, 100, 1024).unwrap().unwrap();
        assert!(b.payload.len() <= 1024, "{}", b.payload.len());
        assert!(b.count >= 2 && b.count < 10);
        assert_eq!(bodies(&b).len(), b.count);
    }

    #[test]
    fn seq_continues_after_reopen_of_an_empty_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        {
            let mut s = open(&path, 1 << 30).store;
            s.commit_group(&[scan("a"), scan("b")], &[]).unwrap();
            s.commit_group(&[], &[(1, 2)]).unwrap();
        }
        let mut s = open(&path, 1 << 30).store;
        assert_eq!(s.stats().unwrap().depth, 0);
        assert_eq!(s.commit_group(&[scan("c")], &[]).unwrap(), vec![3]);
    }

    #[test]
    fn reopen_after_crash_keeps_committed_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let s = open(&path, 1 << 30).store;
        let mut s = s;
        s.commit_group(&[scan("a"), scan("b")], &[]).unwrap();
        // No close, no checkpoint: as after kill -9 (WAL file left behind).
        std::mem::forget(s);
        let s = open(&path, 1 << 30).store;
        let b = s.fetch_after(0, 10, 1 << 20).unwrap().unwrap();
        assert_eq!(b.count, 2);
    }

    #[test]
    fn quota_evicts_lowest_priority_oldest_first_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir.path().join("o.db"), 20_000).store;
        // Interleave identified scans and telemetry until well over quota.
        for i in 0..40 {
            let mut e = scan(&format!("user-scan-{i}"));
            e.userid = Some(format!("u{i}"));
            s.commit_group(&[e, status()], &[]).unwrap();
        }
        let st = s.stats().unwrap();
        assert!(st.bytes <= 20_000, "{st:?}");
        let all = s.fetch_after(0, 10_000, 1 << 24).unwrap().unwrap();
        let v = bodies(&all);
        let identified = v.iter().filter(|e| e["userid"].is_string()).count();
        assert_eq!(identified, 40, "identified events are the last to go");
        let reports: Vec<&serde_json::Value> = v
            .iter()
            .filter(|e| e["type"] == "store.outbox.evicted")
            .collect();
        assert!(!reports.is_empty());
        let evicted: u64 = reports
            .iter()
            .map(|r| r["data"]["count"].as_u64().unwrap())
            .sum();
        assert_eq!(
            evicted as usize + v.len() - reports.len(),
            80,
            "every event is either kept or counted"
        );
        assert!(v
            .iter()
            .all(|e| e["type"] != "store.device.status" || e["seq"].as_u64().unwrap() > 40));
    }

    #[test]
    fn expired_rows_are_dropped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir.path().join("o.db"), 1 << 30).store;
        let mut old = scan("old");
        old.time = SystemTime::now() - Duration::from_secs(7200);
        old.clocksync = true;
        s.commit_group(&[old, scan("new")], &[]).unwrap();
        assert_eq!(s.expire(SystemTime::now()).unwrap(), 1);
        let v = bodies(&s.fetch_after(0, 10, 1 << 20).unwrap().unwrap());
        assert_eq!(v[0]["data"]["payload"], "new");
        assert_eq!(v[1]["type"], "store.outbox.evicted");
        assert_eq!(v[1]["data"]["ranges"], serde_json::json!([[1, 1]]));
        assert_eq!(v[1]["data"]["policy"], "age");
    }

    #[test]
    fn state_commits_with_events_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        {
            let mut s = open(&path, 1 << 30).store;
            let state = vec![
                ("gate/g1".to_string(), Some(b"41".to_vec())),
                ("gate/g2".to_string(), Some(b"7".to_vec())),
            ];
            s.commit_group_with_state(&[scan("a")], &[], &state)
                .unwrap();
            s.commit_group_with_state(&[], &[], &[("gate/g2".to_string(), None)])
                .unwrap();
        }
        let s = open(&path, 1 << 30).store;
        assert_eq!(s.get_state("gate/g1").unwrap(), Some(b"41".to_vec()));
        assert_eq!(s.get_state("gate/g2").unwrap(), None);
        assert_eq!(s.scan_state("gate/").unwrap().len(), 1);
    }

    #[test]
    fn corrupt_database_is_quarantined_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let opened = open(&path, 1 << 30);
        let moved = opened.quarantined.expect("quarantined");
        assert_eq!(std::fs::read(&moved).unwrap(), vec![0x5a; 8192]);
        let mut s = opened.store;
        assert_eq!(s.commit_group(&[scan("a")], &[]).unwrap(), vec![1]);
    }
}
