//! The journey store: every event once, the parked ones, each user's view, and each gateway's
//! `seq` accounting, committed together. [`JourneyStore`] is what the writer needs,
//! [`SinkLedger`] what a sink needs. Two implementations: SQLite ([`sqlite::SqliteStore`]), the
//! default, so a single `phygate-hq` runs with nothing else installed; and PostgreSQL
//! ([`postgres::PgStore`]), for several consumers sharing one group and one store.

pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;

use crate::config::{StoreBackend, StoreConfig};
use crate::ingest::{Accepted, GatewayKey, Parked, Reported};
use crate::journey::UserView;
use crate::seq::{ConsumerBeat, GatewaySeq, RepairRule};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused a read or a write. Nothing of the transaction is kept: leave its
    /// messages unacknowledged so that the broker sends them again.
    #[error("journey store: {0}")]
    Db(#[from] rusqlite::Error),
    /// PostgreSQL refused a read or a write, or the connection failed: the same as `Db`; the
    /// next call connects again.
    #[error("journey store (PostgreSQL): {0}")]
    Postgres(#[from] ::postgres::Error),
    /// The connection that held this sink's claim ended, so another consumer may drive the
    /// sink now: stop forwarding, claim it again, and re-read the cursor.
    #[error("journey store: the claim on sink {0} was lost with its connection")]
    ClaimLost(String),
    /// A stored row does not read back (an older or foreign schema): check the file.
    #[error("journey store: {0}")]
    Corrupt(String),
}

/// One transaction's worth of work.
pub struct Group<'a> {
    pub accepted: &'a [Accepted],
    /// Parked events, with the topic they came on.
    pub parked: &'a [(String, Parked)],
    /// The gateways' `seq` reports (their status messages), folded after the events.
    pub reports: &'a [Reported],
    /// The accounting of every gateway the accepted events and reports touched, after them.
    pub gateways: Vec<(&'a GatewayKey, &'a GatewaySeq)>,
    /// Commit time, ms since the Unix epoch.
    pub now_ms: u64,
}

/// What a commit did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Events stored for the first time.
    pub fresh: u64,
    /// Events already stored (same gateway and id): resends, not stored again.
    pub duplicates: u64,
    /// The accounting of the touched gateways as the store now has it, when that differs from
    /// the writer's own: a store shared with other consumers folds the events into what they
    /// committed (PostgreSQL). Empty when the writer's accounting is the truth (SQLite).
    pub gateways: Vec<(GatewayKey, GatewaySeq)>,
}

/// A gateway whose pending holes were declared lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub key: GatewayKey,
    /// Its accounting after the change.
    pub seq: GatewaySeq,
    /// The ranges declared lost now.
    pub newly: Vec<[u64; 2]>,
}

/// What folding one event into its gateway's accounting changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Accounted {
    /// Numbers retracted from the lost ones (they arrived, or were announced, late).
    pub late: u64,
    /// Ranges declared lost now: the gateway answered a replay saying it no longer holds them.
    pub not_held: Vec<[u64; 2]>,
}

/// Folds event `e`, committed at `now_ms`, into its gateway's accounting. The one rule both
/// the writer and a shared store apply, so the two cannot count differently.
pub fn account(g: &mut GatewaySeq, e: &Accepted, now_ms: u64) -> Accounted {
    let mut late = g.receive(e.seq, now_ms);
    if let Some(ranges) = &e.evicted {
        late += g.announce(ranges);
    }
    let not_held = match replay_missing(e) {
        Some(ranges) => g.not_held(&ranges),
        None => Vec::new(),
    };
    Accounted { late, not_held }
}

/// Folds gateway report `r`, committed at `now_ms`, into its accounting: the other rule both
/// the writer and a shared store apply.
pub fn account_report(g: &mut GatewaySeq, r: &Reported, now_ms: u64) {
    g.reported(r.acked, r.held_from, now_ms);
}

/// The ranges a `store.command.result` of a replay says the gateway no longer holds: only
/// ranges below the result's own seq (it was written after them), well-formed.
fn replay_missing(e: &Accepted) -> Option<Vec<[u64; 2]>> {
    if e.ty != phygate_proto::envelope::types::COMMAND_RESULT {
        return None;
    }
    let ranges: Vec<[u64; 2]> = serde_json::from_value(e.data.get("missing")?.clone()).ok()?;
    let ranges: Vec<[u64; 2]> = ranges
        .into_iter()
        .filter(|[a, b]| a <= b && *b < e.seq)
        .collect();
    (!ranges.is_empty()).then_some(ranges)
}

/// A gateway to ask for replays of `ranges` (`crate::repair`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairDue {
    pub key: GatewayKey,
    /// Its accounting with the requests recorded.
    pub seq: GatewaySeq,
    pub ranges: Vec<[u64; 2]>,
}

/// Picks, on copies, the holes of `gateways` due for a replay request by `now_ms`; returns
/// the gateways that have some.
pub fn repair_all<'a>(
    gateways: impl Iterator<Item = (&'a GatewayKey, &'a GatewaySeq)>,
    now_ms: u64,
    rule: &RepairRule,
) -> Vec<RepairDue> {
    gateways
        .filter_map(|(key, g)| {
            let mut seq = g.clone();
            let ranges = seq.repairs(now_ms, rule);
            (!ranges.is_empty()).then(|| RepairDue {
                key: key.clone(),
                seq,
                ranges,
            })
        })
        .collect()
}

/// Declares lost, on copies, the holes of `gateways` open for `grace_ms` by `now_ms`; returns
/// the gateways that changed.
pub fn expire_all<'a>(
    gateways: impl Iterator<Item = (&'a GatewayKey, &'a GatewaySeq)>,
    now_ms: u64,
    grace_ms: u64,
) -> Vec<Expired> {
    gateways
        .filter_map(|(key, g)| {
            let mut seq = g.clone();
            let newly = seq.expire(now_ms, grace_ms);
            (!newly.is_empty()).then(|| Expired {
                key: key.clone(),
                seq,
                newly,
            })
        })
        .collect()
}

pub trait JourneyStore: Send {
    /// Every gateway's accounting as last committed.
    fn load_gateways(&mut self) -> Result<Vec<(GatewayKey, GatewaySeq)>, StoreError>;
    /// Commits `group` in one transaction: an event whose (gateway, id) is stored already is
    /// skipped (the de-duplication rule), the others are stored and folded into their user's
    /// view; the parked ones and the gateways' accounting are written alongside.
    fn commit(&mut self, group: &Group<'_>) -> Result<Committed, StoreError>;
    /// Declares lost the holes open for `grace_ms` by `now_ms` and writes the gateways that
    /// changed; returns them. `local` is the writer's own accounting: the truth for a store
    /// only it writes (SQLite). A store shared with other consumers (PostgreSQL) works on its
    /// stored accounting instead, under the gateways' row locks, so that a hole another
    /// consumer filled is not declared lost, and each loss is declared (and logged) once.
    fn expire(
        &mut self,
        local: &HashMap<GatewayKey, GatewaySeq>,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<Vec<Expired>, StoreError>;
    /// Picks the holes due for a replay request (`rule`) by `now_ms`, records the requests in
    /// the stored accounting and returns them. As [`JourneyStore::expire`]: `local` is the
    /// truth for a store only this writer writes; a shared store picks on its stored accounting
    /// under the gateways' row locks, so that two consumers do not ask for the same hole.
    fn repair(
        &mut self,
        local: &HashMap<GatewayKey, GatewaySeq>,
        now_ms: u64,
        rule: &RepairRule,
    ) -> Result<Vec<RepairDue>, StoreError>;
    /// Records that consumer `consumer` is in the group, before it takes a message: a first
    /// beat (lag 0: it holds nothing yet) unless it has one already; a restarted consumer's
    /// old beat stays, since its session may hold a backlog. SQLite: nothing to record.
    fn join(&mut self, _consumer: &str, _beat: &ConsumerBeat) -> Result<(), StoreError> {
        Ok(())
    }
    /// Records consumer `consumer`'s beat and returns the beats of every consumer of the
    /// group, its own included: what [`crate::seq::group_lag_ms`] needs. A store that one
    /// consumer alone writes (SQLite) has no one else's to return, and keeps nothing.
    fn beat(
        &mut self,
        _consumer: &str,
        beat: &ConsumerBeat,
    ) -> Result<Vec<ConsumerBeat>, StoreError> {
        Ok(vec![*beat])
    }
    /// The views of user `userid`, one per tenant that knows it.
    fn user(&mut self, userid: &str) -> Result<Vec<(String, UserView)>, StoreError>;
}

/// Where a sink stands in the commit order of `events` (column `n`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SinkPosition {
    /// Every event up to this `n` is done for the sink: forwarded, parked or not for it.
    pub cursor: u64,
    /// Set while a request covering events up to this `n` is out: after a crash, the request
    /// may or may not have reached the engine (its resend is then counted as ambiguous).
    pub inflight: Option<u64>,
}

/// An event the engine refused for good, kept with the reason and never sent again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkParked {
    pub n: u64,
    pub id: String,
    pub reason: String,
}

/// What a sink runner needs from the journey store: its durable cursor, the events above it
/// in commit order, and its parked events. Each sink holds its own connection.
pub trait SinkLedger: Send {
    /// Takes the right to drive `sink`; `false` while another consumer holds it. A store that
    /// one process alone uses (SQLite) always grants it. PostgreSQL holds the claim as long as
    /// the ledger's connection lives; a later call that finds the connection gone answers
    /// [`StoreError::ClaimLost`].
    fn claim(&mut self, _sink: &str) -> Result<bool, StoreError> {
        Ok(true)
    }
    fn sink_position(&mut self, sink: &str) -> Result<SinkPosition, StoreError>;
    /// Up to `limit` events with `n` above `after`, in commit order: (`n`, the event as JSON).
    fn events_after(&mut self, after: u64, limit: usize) -> Result<Vec<(u64, String)>, StoreError>;
    /// The highest `n` committed (0 when empty): the sink's lag is this minus its cursor.
    fn last_n(&mut self) -> Result<u64, StoreError>;
    /// Records (or clears) the request about to go out, before it goes out.
    fn sink_inflight(&mut self, sink: &str, upto: Option<u64>) -> Result<(), StoreError>;
    /// In one transaction: parks `parked`, moves the cursor to `to` and clears the in-flight
    /// mark. A crash leaves either all of it or none.
    fn sink_advance(
        &mut self,
        sink: &str,
        to: u64,
        parked: &[SinkParked],
        now_ms: u64,
    ) -> Result<(), StoreError>;
    /// The events parked for `sink`, oldest first.
    fn sink_parked(&mut self, sink: &str) -> Result<Vec<SinkParked>, StoreError>;
}

/// Opens the configured store for the writer (and the `user` and `losses` commands).
/// Blocking: call it off the async runtime.
pub fn open_journey(config: &StoreConfig) -> Result<Box<dyn JourneyStore>, StoreError> {
    Ok(match &config.backend {
        StoreBackend::Sqlite { path, synchronous } => {
            Box::new(sqlite::SqliteStore::open(path, *synchronous)?)
        }
        StoreBackend::Postgres(pg) => Box::new(postgres::PgStore::open(pg)?),
    })
}

/// Opens a sink's own connection to the configured store. Blocking, like [`open_journey`].
pub fn open_ledger(config: &StoreConfig) -> Result<Box<dyn SinkLedger>, StoreError> {
    Ok(match &config.backend {
        StoreBackend::Sqlite { path, synchronous } => {
            Box::new(sqlite::SqliteStore::open(path, *synchronous)?)
        }
        StoreBackend::Postgres(pg) => Box::new(postgres::PgStore::open(pg)?),
    })
}
