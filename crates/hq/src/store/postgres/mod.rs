//! The journey store in PostgreSQL, for several `phygate-hq` consumers sharing one share
//! group (the broker spreads the messages, even one store's, across them) and one database.
//! The same tables, the same de-duplication key (gateway, event id), the same user views and
//! sink cursors as SQLite; three things differ because the writers are now concurrent:
//!
//! - **`events.n` is commit order.** The sinks read "events with `n` above my cursor". With a
//!   `bigserial`, two writers could take 101 and 102, the second commit first, and a sink
//!   reading in between would move its cursor past 101 before 101 is visible: skipped for
//!   good. So `n` comes from the one row of `event_counter`, locked (`FOR UPDATE`) first in
//!   every writer transaction and advanced in it. The next writer waits on that row lock until
//!   this one commits, and PostgreSQL releases the locks only after the commit is visible: a
//!   higher `n` is never visible before a lower one. It serialises the writers' transactions;
//!   they write the same tables anyway, and each one carries a whole group of messages.
//! - **Per-gateway `seq` accounting is merged, not overwritten.** Two consumers may commit the
//!   same gateway's events. Each transaction locks the gateway rows (`SELECT … FOR UPDATE`, in
//!   `gw` order so that writers and the expiry never deadlock), reads the stored accounting,
//!   folds its own fresh events into it ([`super::account`]) and writes it back; the writer
//!   adopts what is returned. The expiry of holes runs on the stored accounting too, under the
//!   same locks, so a hole that the other consumer filled is never declared lost, and a loss
//!   is declared (and logged) by one consumer only.
//! - **One consumer drives a sink at a time.** [`crate::store::SinkLedger::claim`] takes a session-level
//!   advisory lock (`pg_try_advisory_lock`) keyed by the sink's row id, on the sink's own
//!   connection. The other consumers stand by and try again; when the holder dies, PostgreSQL
//!   ends its session and the lock with it, and one of them takes over from the durable
//!   cursor (an in-flight mark left behind makes its first request an announced repeat).
//!
//! - **The group's lag.** Each consumer's beat is a row of `consumers` (see `crate::seq`,
//!   "The group's lag"), written outside the writer's transactions: its own row only.
//!
//! Durability: PostgreSQL's own (`synchronous_commit`, on by default: a commit is flushed
//! before it returns, and the writer acknowledges to the broker only after it).
//! TLS to the database is not in yet: keep it on a trusted network or a local socket.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

mod ledger;
mod schema;

use postgres::{Client, NoTls, Transaction};

use super::{Committed, Expired, Group, JourneyStore, RepairDue, StoreError};
use crate::config::PgConfig;
use crate::ingest::GatewayKey;
use crate::journey::UserView;
use crate::seq::{ConsumerBeat, GatewaySeq, Hole, RepairRule};
use schema::{CONSUMERS_SQL, REPAIR_SQL, SCHEMA_SQL};

/// The schema's version, in `phygate_schema`.
const SCHEMA: i32 = 1;
/// Serialises the schema's creation between consumers that start together.
const SCHEMA_LOCK: i64 = 0x7068_7967_6174_6501;
/// The first key of the sinks' advisory locks (the second is the sink's row id), so that they
/// meet no other application's locks in a shared database.
const SINK_LOCK_SPACE: i32 = 0x7067_6873;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PgStore {
    config: postgres::Config,
    /// `None` after the connection was found closed: the next call connects again.
    client: Option<Client>,
    /// The sink this connection holds the advisory lock of.
    claimed: Option<String>,
    /// Gateway key → row id (ids never change once committed).
    ids: HashMap<GatewayKey, i64>,
}

impl PgStore {
    /// Connects, creating the schema if missing. Blocking: call it off the async runtime.
    pub fn open(pg: &PgConfig) -> Result<PgStore, StoreError> {
        let mut config: postgres::Config = pg
            .url
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("store.url: {e}")))?;
        if let Some(p) = &pg.password {
            config.password(&p.0);
        }
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("phygate-hq");
        let mut client = config.connect(NoTls)?;
        // The DDL runs only when the schema is missing: even `IF NOT EXISTS` takes table locks
        // that deadlock against another consumer's running commits.
        // Asked again once the lock is held: another consumer may have created it meanwhile.
        // A scan of pg_class, not `to_regclass`: that one answers from the session's catalog
        // cache, which the advisory lock does not refresh, so it kept saying "missing".
        const PRESENT: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace \
             WHERE c.relname = $1 AND s.nspname = current_schema())";
        fn missing(
            c: &mut impl postgres::GenericClient,
            table: &str,
        ) -> Result<bool, postgres::Error> {
            Ok(!c.query_one(PRESENT, &[&table])?.get::<_, bool>(0))
        }
        const COLUMN: &str = "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace \
             WHERE c.relname = 'holes' AND a.attname = 'asked_ms' AND NOT a.attisdropped \
             AND s.nspname = current_schema())";
        fn unrepaired(c: &mut impl postgres::GenericClient) -> Result<bool, postgres::Error> {
            Ok(!c.query_one(COLUMN, &[])?.get::<_, bool>(0))
        }
        let present = !missing(&mut client, "phygate_schema")?
            && !missing(&mut client, "consumers")?
            && !unrepaired(&mut client)?;
        let mut tx = client.transaction()?;
        if !present {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
            if missing(&mut tx, "phygate_schema")? {
                tx.batch_execute(SCHEMA_SQL)?;
            }
            if missing(&mut tx, "consumers")? {
                tx.batch_execute(CONSUMERS_SQL)?;
            }
            if unrepaired(&mut tx)? {
                tx.batch_execute(REPAIR_SQL)?;
            }
        }
        let version: Option<i32> = tx
            .query_opt("SELECT version FROM phygate_schema", &[])?
            .map(|r| r.get(0));
        match version {
            None => {
                tx.execute("INSERT INTO phygate_schema VALUES ($1)", &[&SCHEMA])?;
            }
            Some(SCHEMA) => {}
            Some(v) => {
                return Err(StoreError::Corrupt(format!(
                    "{} has schema version {v}; this phygate-hq knows {SCHEMA}",
                    pg.url
                )))
            }
        }
        tx.commit()?;
        Ok(PgStore {
            config,
            client: Some(client),
            claimed: None,
            ids: HashMap::new(),
        })
    }

    /// The live connection; connects again after one was lost. A lost connection that held a
    /// sink's claim answers [`StoreError::ClaimLost`] once: the lock went with it.
    fn conn(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            drop_off_runtime(self.client.take());
            if let Some(sink) = self.claimed.take() {
                return Err(StoreError::ClaimLost(sink));
            }
        }
        if self.client.is_none() {
            self.ids.clear();
            self.client = Some(self.config.connect(NoTls)?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Locks the rows of `keys` (creating the missing ones) in `gw` order and reads their
    /// accounting.
    fn lock_gateways(
        tx: &mut Transaction<'_>,
        ids: &mut HashMap<GatewayKey, i64>,
        keys: impl Iterator<Item = GatewayKey>,
    ) -> Result<BTreeMap<i64, (GatewayKey, GatewaySeq)>, StoreError> {
        let mut gws = Vec::new();
        for key in keys {
            let gw = match ids.get(&key) {
                Some(gw) => *gw,
                None => {
                    tx.execute(
                        "INSERT INTO gateways (tenant, store, gateway) VALUES ($1, $2, $3) \
                         ON CONFLICT DO NOTHING",
                        &[&key.tenant, &key.store, &key.gateway],
                    )?;
                    let gw: i64 = tx
                        .query_one(
                            "SELECT gw FROM gateways WHERE tenant = $1 AND store = $2 AND gateway = $3",
                            &[&key.tenant, &key.store, &key.gateway],
                        )?
                        .get(0);
                    ids.insert(key, gw);
                    gw
                }
            };
            gws.push(gw);
        }
        read_gateways(tx, "WHERE gw = ANY($1) ORDER BY gw FOR UPDATE", &gws)
    }

    /// Writes the accounting of `gateways` back: three statements for the whole group,
    /// whatever its size (a statement per gateway and per hole cost ~4 round trips per
    /// message, which bounded the fleet's rate by the loopback latency).
    /// Finds the gateways `due` names (a first look without locks, on the partial index of
    /// pending holes), applies `pick` to their stored accounting under their row locks, writes
    /// back the gateways it changed (`changed` names each one's key and new accounting), and
    /// commits: the shape the expiry and the repair sweeps share.
    fn pick_locked<T>(
        mut tx: Transaction<'_>,
        due: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
        pick: impl FnOnce(&BTreeMap<i64, (GatewayKey, GatewaySeq)>) -> Vec<T>,
        changed: impl Fn(&T) -> (&GatewayKey, &GatewaySeq),
    ) -> Result<Vec<T>, StoreError> {
        let due: Vec<i64> = tx.query(due, params)?.iter().map(|r| r.get(0)).collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut locked = read_gateways(&mut tx, "WHERE gw = ANY($1) ORDER BY gw FOR UPDATE", &due)?;
        let picked = pick(&locked);
        locked.retain(
            |_, (k, g)| match picked.iter().map(&changed).find(|(key, _)| *key == k) {
                Some((_, seq)) => {
                    *g = seq.clone();
                    true
                }
                None => false,
            },
        );
        Self::write_gateways(&mut tx, &locked)?;
        tx.commit()?;
        Ok(picked)
    }

    fn write_gateways(
        tx: &mut Transaction<'_>,
        gateways: &BTreeMap<i64, (GatewayKey, GatewaySeq)>,
    ) -> Result<(), StoreError> {
        if gateways.is_empty() {
            return Ok(());
        }
        let gws: Vec<i64> = gateways.keys().copied().collect();
        let gs = || gateways.values().map(|(_, g)| g);
        let lows: Vec<Option<i64>> = gs().map(|g| g.span.map(|s| s.0 as i64)).collect();
        let highs: Vec<Option<i64>> = gs().map(|g| g.span.map(|s| s.1 as i64)).collect();
        let evicted: Vec<i64> = gs().map(|g| g.evicted as i64).collect();
        let late: Vec<i64> = gs().map(|g| g.late as i64).collect();
        let recovered: Vec<i64> = gs().map(|g| g.recovered as i64).collect();
        let early: Vec<String> = gs()
            .map(|g| serde_json::to_string(&g.early).unwrap_or_else(|_| "[]".into()))
            .collect();
        tx.execute(
            "UPDATE gateways g SET low = t.low, high = t.high, evicted = t.evicted, late = t.late, \
             early = t.early, recovered = t.recovered \
             FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[], $5::BIGINT[], $6::TEXT[], \
                         $7::BIGINT[]) \
                  AS t (gw, low, high, evicted, late, early, recovered) \
             WHERE g.gw = t.gw",
            &[&gws, &lows, &highs, &evicted, &late, &early, &recovered],
        )?;
        tx.execute("DELETE FROM holes WHERE gw = ANY($1)", &[&gws])?;
        let holes: Vec<(i64, &Hole)> = gateways
            .iter()
            .flat_map(|(gw, (_, g))| g.holes.values().map(move |h| (*gw, h)))
            .collect();
        if !holes.is_empty() {
            let hole_gws: Vec<i64> = holes.iter().map(|(gw, _)| *gw).collect();
            let firsts: Vec<i64> = holes.iter().map(|(_, h)| h.first as i64).collect();
            let lasts: Vec<i64> = holes.iter().map(|(_, h)| h.last as i64).collect();
            let since: Vec<i64> = holes.iter().map(|(_, h)| h.since_ms as i64).collect();
            let lost: Vec<bool> = holes.iter().map(|(_, h)| h.lost).collect();
            let asks: Vec<i32> = holes.iter().map(|(_, h)| h.asks as i32).collect();
            let asked: Vec<i64> = holes.iter().map(|(_, h)| h.asked_ms as i64).collect();
            tx.execute(
                "INSERT INTO holes (gw, first, last, since_ms, lost, asks, asked_ms) \
                 SELECT * FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[], \
                                      $5::BOOLEAN[], $6::INTEGER[], $7::BIGINT[])",
                &[&hole_gws, &firsts, &lasts, &since, &lost, &asks, &asked],
            )?;
        }
        Ok(())
    }

    /// Folds the users' fresh events (in group order) into their stored views: one read and
    /// one write for the whole group. Safe against the other writers: they wait on the
    /// counter row this transaction holds.
    fn fold_users(
        tx: &mut Transaction<'_>,
        events: &[&crate::ingest::Accepted],
    ) -> Result<(), StoreError> {
        let keys: std::collections::BTreeSet<(&str, &str)> = events
            .iter()
            .filter_map(|e| Some((e.gateway.tenant.as_str(), e.userid.as_deref()?)))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let tenants: Vec<&str> = keys.iter().map(|k| k.0).collect();
        let users: Vec<&str> = keys.iter().map(|k| k.1).collect();
        let mut views: BTreeMap<(String, String), UserView> = BTreeMap::new();
        for r in tx.query(
            "SELECT u.tenant, u.userid, u.view FROM users u \
             JOIN unnest($1::TEXT[], $2::TEXT[]) AS k (tenant, userid) \
               ON u.tenant = k.tenant AND u.userid = k.userid",
            &[&tenants, &users],
        )? {
            let (tenant, user): (String, String) = (r.get(0), r.get(1));
            let view = serde_json::from_str(r.get::<_, &str>(2))
                .map_err(|err| StoreError::Corrupt(format!("user {user}: {err}")))?;
            views.insert((tenant, user), view);
        }
        for e in events {
            if let Some(user) = &e.userid {
                views
                    .entry((e.gateway.tenant.clone(), user.clone()))
                    .or_default()
                    .apply(e);
            }
        }
        let mut texts = Vec::with_capacity(views.len());
        for view in views.values() {
            texts.push(
                serde_json::to_string(view).map_err(|err| StoreError::Corrupt(err.to_string()))?,
            );
        }
        let tenants: Vec<&str> = views.keys().map(|k| k.0.as_str()).collect();
        let users: Vec<&str> = views.keys().map(|k| k.1.as_str()).collect();
        tx.execute(
            "INSERT INTO users (tenant, userid, view) \
             SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[]) \
             ON CONFLICT (tenant, userid) DO UPDATE SET view = excluded.view",
            &[&tenants, &users, &texts],
        )?;
        Ok(())
    }
}

/// Reads gateways and their holes; `filter` selects (and may lock) the rows, `$1` being
/// `gws`.
fn read_gateways(
    tx: &mut Transaction<'_>,
    filter: &str,
    gws: &[i64],
) -> Result<BTreeMap<i64, (GatewayKey, GatewaySeq)>, StoreError> {
    let sql = format!(
        "SELECT gw, tenant, store, gateway, low, high, evicted, late, early, recovered \
         FROM gateways {filter}"
    );
    let rows = if filter.contains("$1") {
        tx.query(&sql, &[&gws])?
    } else {
        tx.query(&sql, &[])?
    };
    let mut out = BTreeMap::new();
    for r in rows {
        let key = GatewayKey {
            tenant: r.get(1),
            store: r.get(2),
            gateway: r.get(3),
        };
        let low: Option<i64> = r.get(4);
        let high: Option<i64> = r.get(5);
        let g = GatewaySeq {
            span: low.zip(high).map(|(l, h)| (l as u64, h as u64)),
            evicted: r.get::<_, i64>(6) as u64,
            late: r.get::<_, i64>(7) as u64,
            early: serde_json::from_str(r.get::<_, &str>(8)).unwrap_or_default(),
            recovered: r.get::<_, i64>(9) as u64,
            holes: Default::default(),
        };
        out.insert(r.get::<_, i64>(0), (key, g));
    }
    let ids: Vec<i64> = out.keys().copied().collect();
    for r in tx.query(
        "SELECT gw, first, last, since_ms, lost, asks, asked_ms FROM holes WHERE gw = ANY($1)",
        &[&ids],
    )? {
        let h = Hole {
            first: r.get::<_, i64>(1) as u64,
            last: r.get::<_, i64>(2) as u64,
            since_ms: r.get::<_, i64>(3) as u64,
            lost: r.get(4),
            asks: r.get::<_, i32>(5) as u32,
            asked_ms: r.get::<_, i64>(6) as u64,
        };
        if let Some((_, g)) = out.get_mut(&r.get::<_, i64>(0)) {
            g.holes.insert(h.first, h);
        }
    }
    Ok(out)
}

/// The `postgres` client owns a small tokio runtime, which may not be dropped on an async
/// worker (tokio panics): a sink's ledger ends on one when its task ends or is aborted. So a
/// client is dropped on a thread of its own there.
fn drop_off_runtime(client: Option<Client>) {
    if let Some(c) = client {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::spawn(move || drop(c));
        } else {
            drop(c);
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        drop_off_runtime(self.client.take());
    }
}

impl JourneyStore for PgStore {
    fn load_gateways(&mut self) -> Result<Vec<(GatewayKey, GatewaySeq)>, StoreError> {
        let mut tx = self.conn()?.transaction()?;
        let all = read_gateways(&mut tx, "", &[])?;
        tx.commit()?;
        Ok(all.into_values().collect())
    }

    fn commit(&mut self, group: &Group<'_>) -> Result<Committed, StoreError> {
        let result = self.commit_group(group);
        if result.is_err() {
            // Ids inserted by the rolled-back transaction do not exist.
            self.ids.clear();
        }
        result
    }

    fn expire(
        &mut self,
        _local: &HashMap<GatewayKey, GatewaySeq>,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<Vec<Expired>, StoreError> {
        let cutoff = now_ms.saturating_sub(grace_ms) as i64;
        let tx = self.conn()?.transaction()?;
        Self::pick_locked(
            tx,
            "SELECT DISTINCT gw FROM holes WHERE NOT lost AND since_ms <= $1",
            &[&cutoff],
            |locked| super::expire_all(locked.values().map(|(k, g)| (k, g)), now_ms, grace_ms),
            |e| (&e.key, &e.seq),
        )
    }

    fn repair(
        &mut self,
        _local: &HashMap<GatewayKey, GatewaySeq>,
        now_ms: u64,
        rule: &RepairRule,
    ) -> Result<Vec<RepairDue>, StoreError> {
        // A first look without locks (the partial index on pending holes; `retry` is the
        // shortest wait between asks, so it finds every hole due and maybe a few more), then
        // the pick on the stored accounting under the gateways' row locks: a hole another
        // consumer asked for since is seen as asked, and not asked for again before its wait.
        let opened = now_ms.saturating_sub(rule.after_ms) as i64;
        let retried = now_ms.saturating_sub(rule.retry_ms) as i64;
        let max_asks = rule.max_asks as i32;
        let tx = self.conn()?.transaction()?;
        Self::pick_locked(
            tx,
            "SELECT DISTINCT gw FROM holes WHERE NOT lost AND since_ms <= $1 \
             AND asks < $3 AND (asks = 0 OR asked_ms <= $2)",
            &[&opened, &retried, &max_asks],
            |locked| super::repair_all(locked.values().map(|(k, g)| (k, g)), now_ms, rule),
            |p| (&p.key, &p.seq),
        )
    }

    fn join(&mut self, consumer: &str, beat: &ConsumerBeat) -> Result<(), StoreError> {
        let (at, holds) = (beat.at_ms as i64, beat.holds_ms as i64);
        self.conn()?.execute(
            "INSERT INTO consumers (id, at_ms, lag_ms, holds_ms) VALUES ($1, $2, 0, $3) \
             ON CONFLICT (id) DO NOTHING",
            &[&consumer, &at, &holds],
        )?;
        Ok(())
    }

    fn beat(
        &mut self,
        consumer: &str,
        beat: &ConsumerBeat,
    ) -> Result<Vec<ConsumerBeat>, StoreError> {
        let c = self.conn()?;
        let (at, lag, holds) = (beat.at_ms as i64, beat.lag_ms as i64, beat.holds_ms as i64);
        // Autocommit: the row is this consumer's alone, and a beat is no part of a batch.
        c.execute(
            "INSERT INTO consumers (id, at_ms, lag_ms, holds_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET at_ms = excluded.at_ms, lag_ms = excluded.lag_ms, \
             holds_ms = excluded.holds_ms",
            &[&consumer, &at, &lag, &holds],
        )?;
        let rows = c.query("SELECT at_ms, lag_ms, holds_ms FROM consumers", &[])?;
        Ok(rows
            .iter()
            .map(|r| ConsumerBeat {
                at_ms: r.get::<_, i64>(0) as u64,
                lag_ms: r.get::<_, i64>(1) as u64,
                holds_ms: r.get::<_, i64>(2) as u64,
            })
            .collect())
    }

    fn user(&mut self, userid: &str) -> Result<Vec<(String, UserView)>, StoreError> {
        let rows = self.conn()?.query(
            "SELECT tenant, view FROM users WHERE userid = $1 ORDER BY tenant",
            &[&userid],
        )?;
        rows.iter()
            .map(|r| {
                let view = serde_json::from_str(r.get::<_, &str>(1))
                    .map_err(|err| StoreError::Corrupt(format!("user {userid}: {err}")))?;
                Ok((r.get(0), view))
            })
            .collect()
    }
}

impl PgStore {
    fn commit_group(&mut self, group: &Group<'_>) -> Result<Committed, StoreError> {
        let now = group.now_ms as i64;
        self.conn()?;
        let client = self.client.as_mut().expect("connected by conn()");
        let ids = &mut self.ids;
        let mut tx = client.transaction()?;
        // First: the counter row's lock, held to the commit (why: the module's doc).
        let mut n: i64 = tx
            .query_one("SELECT n FROM event_counter FOR UPDATE", &[])?
            .get(0);
        let keys: std::collections::BTreeSet<GatewayKey> = group
            .accepted
            .iter()
            .map(|e| &e.gateway)
            .chain(group.reports.iter().map(|r| &r.gateway))
            .cloned()
            .collect();
        let mut gateways = Self::lock_gateways(&mut tx, ids, keys.into_iter())?;
        let by_key: HashMap<GatewayKey, i64> = gateways
            .iter()
            .map(|(gw, (k, _))| (k.clone(), *gw))
            .collect();
        let mut fresh = Self::insert_events(&mut tx, group, &by_key, n, now)?;
        // n + 1 … n + len were handed out, one per row in order; a duplicate's number stays
        // unused (a gap is harmless: a sink reads "above its cursor").
        n += group.accepted.len() as i64;
        let mut done = Committed::default();
        let mut fresh_events = Vec::with_capacity(group.accepted.len());
        for e in group.accepted {
            let gw = by_key[&e.gateway];
            // `remove`: the same event twice in one group is stored once, the first time.
            if !fresh.remove(&(gw, e.id.clone())) {
                done.duplicates += 1;
                continue;
            }
            done.fresh += 1;
            let (_, g) = gateways.get_mut(&gw).expect("locked above");
            super::account(g, e, group.now_ms);
            fresh_events.push(e);
        }
        for r in group.reports {
            let (_, g) = gateways.get_mut(&by_key[&r.gateway]).expect("locked above");
            super::account_report(g, r, group.now_ms);
        }
        Self::fold_users(&mut tx, &fresh_events)?;
        for (topic, p) in group.parked {
            tx.execute(
                "INSERT INTO parked (topic, reason, body, at_ms) VALUES ($1, $2, $3, $4)",
                &[topic, &p.reason, &p.body, &now],
            )?;
        }
        tx.execute("UPDATE event_counter SET n = $1", &[&n])?;
        Self::write_gateways(&mut tx, &gateways)?;
        tx.commit()?;
        done.gateways = gateways.into_values().collect();
        Ok(done)
    }
}

impl PgStore {
    /// Inserts the group's events in one statement (a round trip per event would bound the
    /// fleet's rate by the loopback latency); the `i`-th gets `n = first + i + 1`. Returns
    /// the (gw, id) of those stored now.
    fn insert_events(
        tx: &mut Transaction<'_>,
        group: &Group<'_>,
        by_key: &HashMap<GatewayKey, i64>,
        first: i64,
        now: i64,
    ) -> Result<std::collections::HashSet<(i64, String)>, StoreError> {
        let a = group.accepted;
        let gws: Vec<i64> = a.iter().map(|e| by_key[&e.gateway]).collect();
        let ids: Vec<&str> = a.iter().map(|e| e.id.as_str()).collect();
        let seqs: Vec<i64> = a.iter().map(|e| e.seq as i64).collect();
        let types: Vec<&str> = a.iter().map(|e| e.ty.as_str()).collect();
        let times: Vec<&str> = a.iter().map(|e| e.time.as_str()).collect();
        let users: Vec<Option<&str>> = a.iter().map(|e| e.userid.as_deref()).collect();
        let bodies: Vec<&str> = a.iter().map(|e| e.body.as_str()).collect();
        let rows = tx.query(
            "INSERT INTO events (n, gw, id, seq, type, time, userid, committed_ms, body) \
             SELECT $1::BIGINT + t.ord, t.gw, t.id, t.seq, t.type, t.time, t.userid, $2::BIGINT, t.body \
             FROM unnest($3::BIGINT[], $4::TEXT[], $5::BIGINT[], $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[]) \
                  WITH ORDINALITY AS t (gw, id, seq, type, time, userid, body, ord) \
             ORDER BY t.ord \
             ON CONFLICT (gw, id) DO NOTHING RETURNING gw, id",
            &[&first, &now, &gws, &ids, &seqs, &types, &times, &users, &bodies],
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
