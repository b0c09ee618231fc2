//! Opening the outbox's file, and what happens when it is corrupt.
//!
//! Start-up must not wait for the backlog: a full `PRAGMA quick_check` reads every page (64 s
//! for 5M rows from a cold cache on this machine), so the open checks only what the other
//! stages read back at start (`meta`, `state`: small tables, a partial check), and the full
//! check runs after the start on a read-only connection of its own ([`Check`]). Whatever finds
//! the file corrupt (the open, that check, or any statement on the way) ends the same: the file
//! and its WAL are moved aside, never deleted nor written again, and a fresh one starts.
//! Running, the rows accepted since the open and the state are carried to the fresh file first
//! (best effort: what can still be read); the rows from before the open stay in the file moved
//! aside, as when the open itself finds it corrupt.

use std::path::{Path, PathBuf};

use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, ErrorCode, OpenFlags};
use tracing::{error, warn};

use super::{
    cap_file, read_tally, save_tally, Store, StoreError, Synchronous, BUSY_TIMEOUT, MIGRATIONS,
};

/// Opens the file, migrates it and checks its small tables. On an error the connection is
/// closed without a checkpoint: a corrupt file is left as it was found.
pub(super) fn open_checked(path: &Path, sync: Synchronous) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    match prepare(&conn, sync) {
        Ok(()) => Ok(conn),
        Err(e) => {
            close_as_found(conn);
            Err(e)
        }
    }
}

fn prepare(conn: &Connection, sync: Synchronous) -> rusqlite::Result<()> {
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
    migrate(conn)?;
    // A partial check: these tables' pages only (no free-list or page-use pass), so its cost
    // follows the state, not the backlog. The outbox table is checked by [`Check`].
    for table in ["meta", "state"] {
        let check: String =
            conn.query_row(&format!("PRAGMA quick_check({table})"), [], |r| r.get(0))?;
        if check != "ok" {
            return Err(corrupt(check));
        }
    }
    Ok(())
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

fn corrupt(detail: String) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
        Some(detail),
    )
}

/// Closes without folding the WAL into the file (SQLite checkpoints on the last close): a
/// file about to be moved aside keeps exactly what was found, its WAL beside it.
fn close_as_found(conn: Connection) {
    let _ = conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true);
    if let Err((_, e)) = conn.close() {
        warn!(error = %e, "closing the outbox database failed");
    }
}

pub(super) fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

impl StoreError {
    /// The database file is corrupt: the owner should move it aside
    /// ([`Store::move_aside`]); retrying on it will not help.
    pub fn is_corruption(&self) -> bool {
        matches!(self, StoreError::Sqlite(e) if is_corruption(e))
    }
}

/// Moves the database and its WAL/SHM files aside as `NAME.corrupt-YYYYmmddTHHMMSSZ` (with
/// `.1`, `.2`… after it when that name is taken: a quarantined file is never overwritten).
pub(super) fn quarantine(path: &Path) -> Result<PathBuf, StoreError> {
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

/// A row as stored, carried to a fresh file as it was.
type Row = (i64, String, i64, i64, String);

impl Store {
    /// Moves a corrupt file aside and continues on a fresh one, carrying over what can still
    /// be read of the state and of the rows accepted since the open (with their seqs). The
    /// seq count continues. Returns where the old file went.
    pub fn move_aside(&mut self) -> Result<PathBuf, StoreError> {
        let state: Vec<(String, Vec<u8>)> = read_all(
            &self.conn,
            "SELECT key, value FROM state ORDER BY key",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        );
        let rows: Vec<Row> = read_all(
            &self.conn,
            "SELECT seq, id, priority, created_ms, body FROM outbox WHERE seq > ?1 ORDER BY seq",
            // Acknowledged rows (at or below the watermark) need no carrying.
            [self.opened_at.max(self.acked) as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        );
        let old = std::mem::replace(&mut self.conn, Connection::open_in_memory()?);
        close_as_found(old);
        let moved = quarantine(&self.path)?;
        self.conn = open_checked(&self.path, self.sync)?;
        if let Some(cap) = self.file_cap {
            cap_file(&self.conn, cap)?;
        }
        let mut t = read_tally(&self.conn)?;
        t.last_seq = self.last_seq;
        t.acked = self.acked;
        // Acknowledged rows were not carried: none is kept for replay on the fresh file.
        t.reclaimed = self.acked;
        let tx = self.conn.transaction()?;
        for (key, value) in &state {
            tx.prepare_cached("INSERT INTO state(key, value) VALUES (?1, ?2)")?
                .execute(params![key, value])?;
        }
        for (seq, id, priority, created_ms, body) in &rows {
            tx.prepare_cached(
                "INSERT INTO outbox(seq, id, priority, created_ms, body) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![seq, id, priority, created_ms, body])?;
            t.depth += 1;
            t.bytes += body.len() as u64;
        }
        save_tally(&tx, &t)?;
        tx.commit()?;
        error!(
            db = %self.path.display(),
            moved_to = %moved.display(),
            carried_rows = rows.len(),
            carried_state = state.len(),
            "outbox database is corrupt; moved aside, continuing on a fresh one"
        );
        self.apply(t);
        self.handed.borrow_mut().forget_all();
        Ok(moved)
    }
}

/// The rows a query yields before the first error (a corrupt page ends the read, not the
/// carrying over).
fn read_all<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: impl FnMut(&rusqlite::Row) -> rusqlite::Result<T>,
) -> Vec<T> {
    let mut out = Vec::new();
    let read = conn.prepare(sql).and_then(|mut q| {
        for row in q.query_map(params, f)? {
            out.push(row?);
        }
        Ok(())
    });
    if let Err(e) = read {
        warn!(error = %e, read = out.len(), "reading a corrupt outbox stopped early");
    }
    out
}

/// What the full check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// SQLite's report: the file must be moved aside.
    Corrupt(String),
    /// The check could not run to the end (stopped at shutdown, I/O error): nothing is known.
    Unknown(String),
}

/// The full `PRAGMA quick_check` of a file, on a thread and a read-only connection of its own,
/// after the start. WAL lets it read while the outbox writes; while it runs, checkpoints cannot
/// pass its snapshot, so the WAL grows by what is written meanwhile and shrinks after.
pub struct Check {
    interrupt: rusqlite::InterruptHandle,
}

impl Check {
    /// Starts the check of `path`; `done` gets the verdict on the check's thread.
    pub fn spawn(
        path: &Path,
        done: impl FnOnce(Verdict) + Send + 'static,
    ) -> std::io::Result<Check> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(std::io::Error::other)?;
        let interrupt = conn.get_interrupt_handle();
        std::thread::Builder::new()
            .name("outbox-check".into())
            .spawn(move || {
                let verdict = check(&conn);
                close_as_found(conn);
                done(verdict);
            })?;
        Ok(Check { interrupt })
    }

    /// Stops the check (its verdict is then `Unknown`).
    pub fn stop(&self) {
        self.interrupt.interrupt();
    }
}

impl Drop for Check {
    fn drop(&mut self) {
        self.stop();
    }
}

fn check(conn: &Connection) -> Verdict {
    let run = || -> rusqlite::Result<Vec<String>> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mut q = conn.prepare("PRAGMA quick_check")?;
        let lines = q.query_map([], |r| r.get::<_, String>(0))?;
        lines.collect()
    };
    match run() {
        Ok(lines) if lines.len() == 1 && lines[0] == "ok" => Verdict::Healthy,
        Ok(lines) => Verdict::Corrupt(lines.join("; ")),
        Err(e) if is_corruption(&e) => Verdict::Corrupt(e.to_string()),
        Err(e) => Verdict::Unknown(e.to_string()),
    }
}
