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
