//! The journey store in one SQLite file (WAL).
//!
//! Durability: the writer acknowledges a batch to the broker only after this commit, and the
//! broker then deletes its copy; so `synchronous` is FULL by default (the commit survives a
//! power cut). NORMAL (survives a crash of the process, not of the machine) is a config choice
//! for a box whose disk is protected otherwise.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::{
    Committed, Expired, Group, JourneyStore, RepairDue, SinkLedger, SinkParked, SinkPosition,
    StoreError,
};
use crate::ingest::GatewayKey;
use crate::journey::UserView;
use crate::seq::{GatewaySeq, Hole, RepairRule};

/// Schema version (`PRAGMA user_version`). 2 added the sinks' tables ([`SINKS_SQL`]), 3 the
/// repair requests ([`REPAIR_SQL`]).
const SCHEMA: i64 = 3;
/// How long a statement waits for another connection's lock (the `user` query reads beside a
/// running consumer).
const BUSY_TIMEOUT_MS: u64 = 5_000;

const SCHEMA_SQL: &str = "
CREATE TABLE gateways (
    gw INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL, store TEXT NOT NULL, gateway TEXT NOT NULL,
    low INTEGER, high INTEGER,
    evicted INTEGER NOT NULL DEFAULT 0, late INTEGER NOT NULL DEFAULT 0,
    early TEXT NOT NULL DEFAULT '[]',
    UNIQUE (tenant, store, gateway)
);
CREATE TABLE holes (
    gw INTEGER NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,
    since_ms INTEGER NOT NULL, lost INTEGER NOT NULL,
    PRIMARY KEY (gw, first)
);
-- n: commit order, the cursor the sinks will read by.
CREATE TABLE events (
    n INTEGER PRIMARY KEY,
    gw INTEGER NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL,
    type TEXT NOT NULL, time TEXT NOT NULL, userid TEXT,
    committed_ms INTEGER NOT NULL, body TEXT NOT NULL,
    UNIQUE (gw, id)
);
CREATE INDEX events_user ON events (userid) WHERE userid IS NOT NULL;
CREATE TABLE users (
    tenant TEXT NOT NULL, userid TEXT NOT NULL, view TEXT NOT NULL,
    PRIMARY KEY (tenant, userid)
);
CREATE TABLE parked (
    n INTEGER PRIMARY KEY, topic TEXT NOT NULL, reason TEXT NOT NULL, body TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
";

/// The sinks' cursors and parked events; a version 1 file gets them on open.
const SINKS_SQL: &str = "
-- n: every event up to it is done for the sink; inflight: the last n of a request sent and
-- not yet answered (its fate is unknown after a crash).
CREATE TABLE sink_cursors (
    sink TEXT PRIMARY KEY, n INTEGER NOT NULL, inflight INTEGER
);
CREATE TABLE sink_parked (
    sink TEXT NOT NULL, n INTEGER NOT NULL, id TEXT NOT NULL, reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (sink, n)
);
";

/// Replay requests recorded in the holes, and the numbers they recovered; a file of an
/// earlier version gets them on open.
const REPAIR_SQL: &str = "
ALTER TABLE holes ADD COLUMN asks INTEGER NOT NULL DEFAULT 0;
ALTER TABLE holes ADD COLUMN asked_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE gateways ADD COLUMN recovered INTEGER NOT NULL DEFAULT 0;
";

/// `synchronous` for the journey store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    Full,
    Normal,
}

pub struct SqliteStore {
    conn: Connection,
    /// Gateway key → row id, filled on first use.
    ids: HashMap<GatewayKey, i64>,
}

impl SqliteStore {
    /// Opens (creating) the store for writing.
    pub fn open(path: &Path, sync: Synchronous) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match sync {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        match version {
            0..=2 => {
                let tx = conn.unchecked_transaction()?;
                if version == 0 {
                    tx.execute_batch(SCHEMA_SQL)?;
                }
                if version <= 1 {
                    tx.execute_batch(SINKS_SQL)?;
                }
                tx.execute_batch(REPAIR_SQL)?;
                tx.pragma_update(None, "user_version", SCHEMA)?;
                tx.commit()?;
            }
            SCHEMA => {}
            v => {
                return Err(StoreError::Corrupt(format!(
                    "{} has schema version {v}; this phygate-hq knows {SCHEMA}",
                    path.display()
                )))
            }
        }
        Ok(SqliteStore {
            conn,
            ids: HashMap::new(),
        })
    }

    fn gw_id(
        conn: &Connection,
        ids: &mut HashMap<GatewayKey, i64>,
        key: &GatewayKey,
    ) -> rusqlite::Result<i64> {
        if let Some(id) = ids.get(key) {
            return Ok(*id);
        }
        conn.execute(
            "INSERT OR IGNORE INTO gateways (tenant, store, gateway) VALUES (?1, ?2, ?3)",
            params![key.tenant, key.store, key.gateway],
        )?;
        let id = conn.query_row(
            "SELECT gw FROM gateways WHERE tenant = ?1 AND store = ?2 AND gateway = ?3",
            params![key.tenant, key.store, key.gateway],
            |r| r.get(0),
        )?;
        ids.insert(key.clone(), id);
        Ok(id)
    }

    fn write_gateways(
        conn: &Connection,
        ids: &mut HashMap<GatewayKey, i64>,
        gateways: &[(&GatewayKey, &GatewaySeq)],
    ) -> rusqlite::Result<()> {
        for (key, g) in gateways {
            let gw = Self::gw_id(conn, ids, key)?;
            let early = serde_json::to_string(&g.early).unwrap_or_else(|_| "[]".into());
            conn.execute(
                "UPDATE gateways SET low = ?2, high = ?3, evicted = ?4, late = ?5, early = ?6, \
                 recovered = ?7 WHERE gw = ?1",
                params![
                    gw,
                    g.span.map(|s| s.0 as i64),
                    g.span.map(|s| s.1 as i64),
                    g.evicted as i64,
                    g.late as i64,
                    early,
                    g.recovered as i64
                ],
            )?;
            conn.execute("DELETE FROM holes WHERE gw = ?1", [gw])?;
            let mut insert = conn.prepare_cached(
                "INSERT INTO holes (gw, first, last, since_ms, lost, asks, asked_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for h in g.holes.values() {
                insert.execute(params![
                    gw,
                    h.first as i64,
                    h.last as i64,
                    h.since_ms as i64,
                    h.lost,
                    h.asks,
                    h.asked_ms as i64
                ])?;
            }
        }
        Ok(())
    }
}

impl SqliteStore {
    /// Writes gateways' accounting alone.
    pub fn save_gateways(
        &mut self,
        gateways: &[(&GatewayKey, &GatewaySeq)],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        Self::write_gateways(&tx, &mut self.ids, gateways)?;
        tx.commit()?;
        Ok(())
    }
}

impl JourneyStore for SqliteStore {
    fn load_gateways(&mut self) -> Result<Vec<(GatewayKey, GatewaySeq)>, StoreError> {
        // Also the reset after a failed commit: ids cached in a rolled-back transaction go.
        self.ids.clear();
        let mut out = Vec::new();
        let mut stmt = self.conn.prepare(
            "SELECT gw, tenant, store, gateway, low, high, evicted, late, early, recovered \
             FROM gateways",
        )?;
        let rows = stmt.query_map([], |r| {
            let key = GatewayKey {
                tenant: r.get(1)?,
                store: r.get(2)?,
                gateway: r.get(3)?,
            };
            let low: Option<i64> = r.get(4)?;
            let high: Option<i64> = r.get(5)?;
            let g = GatewaySeq {
                span: low.zip(high).map(|(l, h)| (l as u64, h as u64)),
                evicted: r.get::<_, i64>(6)? as u64,
                late: r.get::<_, i64>(7)? as u64,
                early: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or_default(),
                recovered: r.get::<_, i64>(9)? as u64,
                holes: Default::default(),
            };
            Ok((r.get::<_, i64>(0)?, key, g))
        })?;
        let mut holes = self.conn.prepare(
            "SELECT first, last, since_ms, lost, asks, asked_ms FROM holes WHERE gw = ?1",
        )?;
        for row in rows {
            let (gw, key, mut g) = row?;
            let hs = holes.query_map([gw], |r| {
                Ok(Hole {
                    first: r.get::<_, i64>(0)? as u64,
                    last: r.get::<_, i64>(1)? as u64,
                    since_ms: r.get::<_, i64>(2)? as u64,
                    lost: r.get(3)?,
                    asks: r.get(4)?,
                    asked_ms: r.get::<_, i64>(5)? as u64,
                })
            })?;
            for h in hs {
                let h = h?;
                g.holes.insert(h.first, h);
            }
            self.ids.insert(key.clone(), gw);
            out.push((key, g));
        }
        Ok(out)
    }

    fn commit(&mut self, group: &Group<'_>) -> Result<Committed, StoreError> {
        let tx = self.conn.transaction()?;
        let mut done = Committed::default();
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO events (gw, id, seq, type, time, userid, committed_ms, body) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for e in group.accepted {
                let gw = Self::gw_id(&tx, &mut self.ids, &e.gateway)?;
                let fresh = insert.execute(params![
                    gw,
                    e.id,
                    e.seq as i64,
                    e.ty,
                    e.time,
                    e.userid,
                    group.now_ms as i64,
                    e.body
                ])? == 1;
                if !fresh {
                    done.duplicates += 1;
                    continue;
                }
                done.fresh += 1;
                if let Some(user) = &e.userid {
                    let old: Option<String> = tx
                        .query_row(
                            "SELECT view FROM users WHERE tenant = ?1 AND userid = ?2",
                            params![e.gateway.tenant, user],
                            |r| r.get(0),
                        )
                        .optional()?;
                    let mut view: UserView = match old {
                        Some(text) => serde_json::from_str(&text)
                            .map_err(|err| StoreError::Corrupt(format!("user {user}: {err}")))?,
                        None => UserView::default(),
                    };
                    view.apply(e);
                    let text = serde_json::to_string(&view)
                        .map_err(|err| StoreError::Corrupt(err.to_string()))?;
                    tx.execute(
                        "INSERT INTO users (tenant, userid, view) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (tenant, userid) DO UPDATE SET view = excluded.view",
                        params![e.gateway.tenant, user, text],
                    )?;
                }
            }
            let mut park = tx.prepare_cached(
                "INSERT INTO parked (topic, reason, body, at_ms) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (topic, p) in group.parked {
                park.execute(params![topic, p.reason, p.body, group.now_ms as i64])?;
            }
        }
        Self::write_gateways(&tx, &mut self.ids, &group.gateways)?;
        tx.commit()?;
        Ok(done)
    }

    fn expire(
        &mut self,
        local: &HashMap<GatewayKey, GatewaySeq>,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<Vec<Expired>, StoreError> {
        // The writer is this file's only writer: its accounting is the truth.
        let expired = super::expire_all(local.iter(), now_ms, grace_ms);
        if !expired.is_empty() {
            let list: Vec<_> = expired.iter().map(|e| (&e.key, &e.seq)).collect();
            self.save_gateways(&list)?;
        }
        Ok(expired)
    }

    fn repair(
        &mut self,
        local: &HashMap<GatewayKey, GatewaySeq>,
        now_ms: u64,
        rule: &RepairRule,
    ) -> Result<Vec<RepairDue>, StoreError> {
        // The writer is this file's only writer: its accounting is the truth.
        let due = super::repair_all(local.iter(), now_ms, rule);
        if !due.is_empty() {
            let list: Vec<_> = due.iter().map(|d| (&d.key, &d.seq)).collect();
            self.save_gateways(&list)?;
        }
        Ok(due)
    }

    fn user(&mut self, userid: &str) -> Result<Vec<(String, UserView)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT tenant, view FROM users WHERE userid = ?1 ORDER BY tenant")?;
        let rows = stmt.query_map([userid], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (tenant, text) = row?;
            let view = serde_json::from_str(&text)
                .map_err(|err| StoreError::Corrupt(format!("user {userid}: {err}")))?;
            out.push((tenant, view));
        }
        Ok(out)
    }
}

impl SinkLedger for SqliteStore {
    fn sink_position(&mut self, sink: &str) -> Result<SinkPosition, StoreError> {
        let row: Option<(i64, Option<i64>)> = self
            .conn
            .query_row(
                "SELECT n, inflight FROM sink_cursors WHERE sink = ?1",
                [sink],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(
            row.map_or(SinkPosition::default(), |(n, inflight)| SinkPosition {
                cursor: n as u64,
                inflight: inflight.map(|i| i as u64),
            }),
        )
    }

    fn events_after(&mut self, after: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        // No `LIMIT ?`: SQLite re-prepares a statement whose LIMIT is a bound parameter at
        // every run; rows are stepped lazily, so taking `limit` of them reads no more.
        let mut stmt = self
            .conn
            .prepare_cached("SELECT n, body FROM events WHERE n > ?1 ORDER BY n")?;
        let rows = stmt.query_map([after as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
        })?;
        Ok(rows.take(limit).collect::<Result<_, _>>()?)
    }

    fn last_n(&mut self) -> Result<u64, StoreError> {
        let n: Option<i64> = self
            .conn
            .query_row("SELECT max(n) FROM events", [], |r| r.get(0))?;
        Ok(n.unwrap_or(0) as u64)
    }

    fn sink_inflight(&mut self, sink: &str, upto: Option<u64>) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO sink_cursors (sink, n, inflight) VALUES (?1, 0, ?2) \
             ON CONFLICT (sink) DO UPDATE SET inflight = excluded.inflight",
            params![sink, upto.map(|u| u as i64)],
        )?;
        Ok(())
    }

    fn sink_advance(
        &mut self,
        sink: &str,
        to: u64,
        parked: &[SinkParked],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut park = tx.prepare_cached(
                "INSERT OR REPLACE INTO sink_parked (sink, n, id, reason, at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for p in parked {
                park.execute(params![sink, p.n as i64, p.id, p.reason, now_ms as i64])?;
            }
            tx.execute(
                "INSERT INTO sink_cursors (sink, n, inflight) VALUES (?1, ?2, NULL) \
                 ON CONFLICT (sink) DO UPDATE SET n = excluded.n, inflight = NULL",
                params![sink, to as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn sink_parked(&mut self, sink: &str) -> Result<Vec<SinkParked>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT n, id, reason FROM sink_parked WHERE sink = ?1 ORDER BY n")?;
        let rows = stmt.query_map([sink], |r| {
            Ok(SinkParked {
                n: r.get::<_, i64>(0)? as u64,
                id: r.get(1)?,
                reason: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Accepted;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn event(gateway: &str, seq: u64) -> Accepted {
        Accepted {
            gateway: GatewayKey {
                tenant: "t".into(),
                store: "s".into(),
                gateway: gateway.into(),
            },
            // Two gateways may use the same id: the key is (gateway, id).
            id: format!("00000000-0000-7000-8000-{seq:012}"),
            seq,
            ty: "store.qr.scanned".into(),
            time: format!("2026-11-23T05:00:{:02}.{:03}Z", seq / 1000 % 60, seq % 1000),
            userid: Some("u".into()),
            stage: Some("browse".into()),
            evicted: None,
            data: serde_json::json!({}),
            body: "{}".into(),
        }
    }

    proptest! {
        /// The de-duplication rule: whatever the repeats and however they are grouped into
        /// commits, each (gateway, id) is stored once, and every repeat is counted.
        #[test]
        fn each_gateway_and_id_is_stored_once(
            arrivals in proptest::collection::vec((0u8..2, 1u64..30), 1..120),
            cuts in proptest::collection::btree_set(0usize..120, 0..10),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut store = SqliteStore::open(&dir.path().join("hq.db"), Synchronous::Normal).unwrap();
            let events: Vec<Accepted> = arrivals
                .iter()
                .map(|(g, seq)| event(if *g == 0 { "gw-a" } else { "gw-b" }, *seq))
                .collect();
            let mut bounds: Vec<usize> = cuts.into_iter().filter(|c| *c < events.len()).collect();
            bounds.push(events.len());
            let (mut from, mut total) = (0, Committed::default());
            for to in bounds {
                let done = store
                    .commit(&Group { accepted: &events[from..to], parked: &[], reports: &[], gateways: vec![], now_ms: 0 })
                    .unwrap();
                total.fresh += done.fresh;
                total.duplicates += done.duplicates;
                from = to;
            }
            let unique: BTreeSet<(u8, u64)> = arrivals.iter().copied().collect();
            let rows: i64 = store.conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0)).unwrap();
            prop_assert_eq!(rows as usize, unique.len());
            prop_assert_eq!(total.fresh as usize, unique.len());
            prop_assert_eq!((total.fresh + total.duplicates) as usize, arrivals.len());
        }
    }

    #[test]
    fn the_accounting_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hq.db");
        let key = event("gw", 1).gateway;
        let mut g = GatewaySeq::default();
        for s in [1, 4, 9] {
            g.receive(s, 10);
        }
        g.announce(&[[2, 2]]);
        g.expire(100, 50);
        {
            let mut store = SqliteStore::open(&path, Synchronous::Full).unwrap();
            store.save_gateways(&[(&key, &g)]).unwrap();
        }
        let mut store = SqliteStore::open(&path, Synchronous::Full).unwrap();
        assert_eq!(store.load_gateways().unwrap(), vec![(key, g)]);
    }

    #[test]
    fn a_version_1_store_gets_the_sinks_tables_and_a_sink_starts_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hq.db");
        {
            let store = SqliteStore::open(&path, Synchronous::Normal).unwrap();
            store
                .conn
                .execute_batch(
                    // As version 1 had it: no sinks' tables, no repair columns either.
                    "DROP TABLE sink_cursors; DROP TABLE sink_parked; \
                     ALTER TABLE holes DROP COLUMN asks; ALTER TABLE holes DROP COLUMN asked_ms; \
                     ALTER TABLE gateways DROP COLUMN recovered; PRAGMA user_version = 1;",
                )
                .unwrap();
        }
        let mut store = SqliteStore::open(&path, Synchronous::Normal).unwrap();
        assert_eq!(
            store.sink_position("braze").unwrap(),
            SinkPosition::default()
        );
        store.sink_inflight("braze", Some(9)).unwrap();
        let parked = [SinkParked {
            n: 3,
            id: "x".into(),
            reason: "r".into(),
        }];
        store.sink_advance("braze", 9, &parked, 1).unwrap();
        assert_eq!(
            store.sink_position("braze").unwrap(),
            SinkPosition {
                cursor: 9,
                inflight: None
            }
        );
        assert_eq!(store.sink_parked("braze").unwrap(), parked);
    }
}
