//! The sinks' side of the PostgreSQL store: the claim (one consumer drives a sink at a time,
//! see the parent module), the cursor, the in-flight mark and the parked events.

use super::{PgStore, SINK_LOCK_SPACE};
use crate::store::{SinkLedger, SinkParked, SinkPosition, StoreError};

impl SinkLedger for PgStore {
    fn claim(&mut self, sink: &str) -> Result<bool, StoreError> {
        let c = self.conn()?;
        c.execute(
            "INSERT INTO sink_cursors (sink, n) VALUES ($1, 0) ON CONFLICT DO NOTHING",
            &[&sink],
        )?;
        let id: i32 = c
            .query_one("SELECT id FROM sink_cursors WHERE sink = $1", &[&sink])?
            .get(0);
        let got: bool = c
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&SINK_LOCK_SPACE, &id],
            )?
            .get(0);
        if got {
            self.claimed = Some(sink.to_owned());
        }
        Ok(got)
    }

    fn sink_position(&mut self, sink: &str) -> Result<SinkPosition, StoreError> {
        let row = self.conn()?.query_opt(
            "SELECT n, inflight FROM sink_cursors WHERE sink = $1",
            &[&sink],
        )?;
        Ok(row.map_or(SinkPosition::default(), |r| SinkPosition {
            cursor: r.get::<_, i64>(0) as u64,
            inflight: r.get::<_, Option<i64>>(1).map(|i| i as u64),
        }))
    }

    fn events_after(&mut self, after: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError> {
        let rows = self.conn()?.query(
            "SELECT n, body FROM events WHERE n > $1 ORDER BY n LIMIT $2",
            &[&(after as i64), &(limit as i64)],
        )?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get(1)))
            .collect())
    }

    fn last_n(&mut self) -> Result<u64, StoreError> {
        let n: Option<i64> = self
            .conn()?
            .query_one("SELECT max(n) FROM events", &[])?
            .get(0);
        Ok(n.unwrap_or(0) as u64)
    }

    fn sink_inflight(&mut self, sink: &str, upto: Option<u64>) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO sink_cursors (sink, n, inflight) VALUES ($1, 0, $2) \
             ON CONFLICT (sink) DO UPDATE SET inflight = excluded.inflight",
            &[&sink, &upto.map(|u| u as i64)],
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
        let mut tx = self.conn()?.transaction()?;
        for p in parked {
            tx.execute(
                "INSERT INTO sink_parked (sink, n, id, reason, at_ms) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (sink, n) DO UPDATE SET id = excluded.id, reason = excluded.reason, \
                 at_ms = excluded.at_ms",
                &[&sink, &(p.n as i64), &p.id, &p.reason, &(now_ms as i64)],
            )?;
        }
        tx.execute(
            "INSERT INTO sink_cursors (sink, n, inflight) VALUES ($1, $2, NULL) \
             ON CONFLICT (sink) DO UPDATE SET n = excluded.n, inflight = NULL",
            &[&sink, &(to as i64)],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn sink_parked(&mut self, sink: &str) -> Result<Vec<SinkParked>, StoreError> {
        let rows = self.conn()?.query(
            "SELECT n, id, reason FROM sink_parked WHERE sink = $1 ORDER BY n",
            &[&sink],
        )?;
        Ok(rows
            .iter()
            .map(|r| SinkParked {
                n: r.get::<_, i64>(0) as u64,
                id: r.get(1),
                reason: r.get(2),
            })
            .collect())
    }
}
