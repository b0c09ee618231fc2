//! The outbox thread's sweeps between groups: rows past the retention dropped a bounded step
//! per commit (serving the requests that wait between steps), and acknowledged rows removed a
//! range at a time.

use std::time::SystemTime;

use tracing::warn;

use super::{Outbox, Request, MAX_GROUP};

impl Outbox {
    /// Drops rows past the retention, a bounded step per commit, serving the requests waiting
    /// between steps. Returns the appends the disk refused meanwhile, to retry.
    pub(super) fn expire(&mut self) -> Vec<Request> {
        let mut held = Vec::new();
        loop {
            match self.store.expire(SystemTime::now()) {
                Ok(n) if n as usize >= self.store.step() => {}
                Ok(_) => break,
                Err(e) => {
                    self.note(&e);
                    warn!(error = %e, "outbox retention sweep failed");
                    break;
                }
            }
            self.committed.send_replace(self.store.last_seq());
            let mut waiting: Vec<Request> = self.rx.try_iter().take(MAX_GROUP).collect();
            held.extend(self.serve(&mut waiting));
            if self.corrupt.is_some() {
                break;
            }
        }
        self.committed.send_replace(self.store.last_seq());
        held
    }

    /// Removes one range of acknowledged rows.
    pub(super) fn reclaim_step(&mut self) {
        if let Err(e) = self.store.reclaim_step() {
            self.note(&e);
            warn!(error = %e, "removing acknowledged outbox rows failed");
        }
    }
}
