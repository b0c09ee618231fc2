//! Loss repair, the store's side: HQ's `replay` command (docs/downlink.md) asks for a seq range
//! again, because a broker acknowledged it (PUBACK) and then lost it before HQ had it (a
//! mosquitto restart without persistence, a NATS stream leader killed before it stored). The
//! outbox still holds acknowledged rows for `[outbox] replay_window`, so the store reads the
//! range's rows (live or retained), hands them to the uplink to publish again on the events
//! topic with their own ids and seqs (HQ's de-duplication by gateway and id makes repeats
//! harmless), and answers `store.command.result` with how many it queued and which
//! sub-ranges it no longer holds (HQ declares those lost at once).
//!
//! The uplink publishes replays beside its normal batches without touching its in-flight book
//! of outbox rows or the watermark: a replay's PUBACK acknowledges nothing in the outbox.
//!
//! ```text
//! downlink ─Command─► link ─► Replayer ─read─► outbox
//!                                  └─batches─► uplink ─► events topic
//! ```

use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::event::{CommandResult, Event, EventData};
use crate::outbox::{Batch, OutboxError, OutboxHandle};

/// Replays waiting for the uplink, each at most one command's range (`MAX_REPLAY_SEQS`). When
/// full, a replay is refused (`busy`) and HQ asks again later: the uplink is offline or far
/// behind, and queueing more would only hold memory.
pub const QUEUE: usize = 8;

/// The uplink's end: replays to publish, each a command's batches in seq order.
pub type ReplayFeed = mpsc::Receiver<Vec<Batch>>;

/// Answers replay commands: a cloneable handle on the outbox and on the uplink's replay queue.
#[derive(Clone)]
pub struct Replayer {
    outbox: OutboxHandle,
    uplink: mpsc::Sender<Vec<Batch>>,
    batch_max_events: usize,
    batch_max_bytes: usize,
}

/// What a replay did, for the command's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `done` (queued for publishing, possibly nothing) or `refused` (the uplink's replay queue
    /// is full: ask again later).
    pub outcome: &'static str,
    pub detail: String,
    pub republished: u64,
    pub missing: Vec<[u64; 2]>,
}

/// The replayer and the feed the uplink publishes from. Batches are cut as the uplink's own
/// (`[uplink] batch_max_events`, `batch_max_bytes`).
pub fn channel(
    outbox: OutboxHandle,
    batch_max_events: usize,
    batch_max_bytes: usize,
) -> (Replayer, ReplayFeed) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (
        Replayer {
            outbox,
            uplink: tx,
            batch_max_events,
            batch_max_bytes,
        },
        rx,
    )
}

impl Replayer {
    /// Reads `from..=to` from the outbox and queues what it holds for the uplink.
    pub async fn replay(&self, from: u64, to: u64) -> Result<Outcome, OutboxError> {
        let r = self
            .outbox
            .replay(from, to, self.batch_max_events, self.batch_max_bytes)
            .await?;
        let missing_note = if r.missing.is_empty() {
            String::new()
        } else {
            format!("; no longer held: {:?}", r.missing)
        };
        if r.batches.is_empty() {
            crate::metrics::REPLAY_MISSING.add(span(&r.missing));
            return Ok(Outcome {
                outcome: "done",
                detail: format!("nothing of {from}..={to} is held{missing_note}"),
                republished: 0,
                missing: r.missing,
            });
        }
        match self.uplink.try_send(r.batches) {
            Ok(()) => {
                crate::metrics::REPLAYED.add(r.rows);
                crate::metrics::REPLAY_MISSING.add(span(&r.missing));
                Ok(Outcome {
                    outcome: "done",
                    detail: format!("{} of {from}..={to} published again{missing_note}", r.rows),
                    republished: r.rows,
                    missing: r.missing,
                })
            }
            // Nothing is said missing: the rows are there, only not sent this time.
            Err(mpsc::error::TrySendError::Full(_)) => Ok(Outcome {
                outcome: "refused",
                detail: "busy: earlier replays are still waiting for the uplink; ask again later"
                    .into(),
                republished: 0,
                missing: Vec::new(),
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(OutboxError::Closed),
        }
    }
}

/// How many seqs `ranges` cover.
fn span(ranges: &[[u64; 2]]) -> u64 {
    ranges.iter().map(|[a, b]| b - a + 1).sum()
}

/// The `store.command.result` of a replay command `id`.
pub fn result_event(gateway: &str, id: &str, o: Outcome) -> Event {
    Event::new(
        gateway.into(),
        SystemTime::now(),
        EventData::CommandResult(CommandResult {
            command_id: id.to_owned(),
            outcome: o.outcome,
            detail: o.detail,
            republished: Some(o.republished),
            missing: Some(o.missing),
        }),
    )
}
