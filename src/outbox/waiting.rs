//! Fetches that wait at the outbox for rows: the uplink, caught up, asks for the next batches
//! once, and is answered by the outbox thread right after the commit that brings them.
//!
//! Why. Before, a caught-up uplink waited on the `committed` watch, and each commit woke it to
//! send a fetch, which woke the outbox thread again to read the rows it had just written: two
//! thread wake-ups and a round trip per commit. A store publishing each event as it comes (a
//! few a second) paid them for every event; on a loaded CPU each wake-up waits for the
//! scheduler. Now the read happens in the wake-up that committed the rows.

use tokio::sync::oneshot;

use super::{Batch, Outbox, OutboxError};

/// A fetch that found nothing after `after`, parked until rows come.
pub(super) struct WaitingFetch {
    pub(super) after: u64,
    pub(super) batches: usize,
    pub(super) max_events: usize,
    pub(super) max_bytes: usize,
    pub(super) reply: oneshot::Sender<Result<Vec<Batch>, OutboxError>>,
}

impl Outbox {
    /// Parks a fetch that found nothing; a fetch whose asker gave up (a dropped connection, a
    /// refused batch: the uplink reads again from elsewhere) is forgotten here.
    pub(super) fn park_fetch(&mut self, fetch: WaitingFetch) {
        self.waiting_fetches.retain(|f| !f.reply.is_closed());
        self.waiting_fetches.push(fetch);
    }

    /// Answers the waiting fetches that rows have come for (after any commit).
    pub(super) fn answer_waiting_fetches(&mut self) {
        if self.waiting_fetches.is_empty() {
            return;
        }
        let last = self.store.last_seq();
        let (ready, waiting) = std::mem::take(&mut self.waiting_fetches)
            .into_iter()
            .filter(|f| !f.reply.is_closed())
            .partition(|f| f.after < last);
        self.waiting_fetches = waiting;
        for f in ready {
            let batches = self
                .store
                .fetch_batches(f.after, f.batches, f.max_events, f.max_bytes);
            match batches {
                // Rows above `after` that the watermark already covers: still nothing to send.
                Ok(b) if b.is_empty() => self.waiting_fetches.push(f),
                batches => {
                    let _ = f.reply.send(batches.map_err(|e| self.failed(e)));
                }
            }
        }
    }
}
