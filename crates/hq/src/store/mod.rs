//! The journey store: every event once, the parked ones, each user's view, and each gateway's
//! `seq` accounting, committed together. [`JourneyStore`] is what the writer needs; SQLite
//! ([`sqlite::SqliteStore`]) is the one implementation today, so a single `phygate-hq` runs with
//! nothing else installed. PostgreSQL, for several consumers sharing the work, comes next.

pub mod sqlite;

use crate::ingest::{Accepted, GatewayKey, Parked};
use crate::journey::UserView;
use crate::seq::GatewaySeq;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused a read or a write. Nothing of the transaction is kept: leave its
    /// messages unacknowledged so that the broker sends them again.
    #[error("journey store: {0}")]
    Db(#[from] rusqlite::Error),
    /// A stored row does not read back (an older or foreign schema): check the file.
    #[error("journey store: {0}")]
    Corrupt(String),
}

/// One transaction's worth of work.
pub struct Group<'a> {
    pub accepted: &'a [Accepted],
    /// Parked events, with the topic they came on.
    pub parked: &'a [(String, Parked)],
    /// The accounting of every gateway the accepted events touched, after them.
    pub gateways: Vec<(&'a GatewayKey, &'a GatewaySeq)>,
    /// Commit time, ms since the Unix epoch.
    pub now_ms: u64,
}

/// What a commit did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Events stored for the first time.
    pub fresh: u64,
    /// Events already stored (same gateway and id): resends, not stored again.
    pub duplicates: u64,
}

pub trait JourneyStore: Send {
    /// Every gateway's accounting as last committed.
    fn load_gateways(&mut self) -> Result<Vec<(GatewayKey, GatewaySeq)>, StoreError>;
    /// Commits `group` in one transaction: an event whose (gateway, id) is stored already is
    /// skipped (the de-duplication rule), the others are stored and folded into their user's
    /// view; the parked ones and the gateways' accounting are written alongside.
    fn commit(&mut self, group: &Group<'_>) -> Result<Committed, StoreError>;
    /// Writes gateways' accounting alone (holes declared lost by the clock).
    fn save_gateways(&mut self, gateways: &[(&GatewayKey, &GatewaySeq)]) -> Result<(), StoreError>;
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
