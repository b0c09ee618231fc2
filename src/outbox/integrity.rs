//! The outbox thread's side of a corrupt file: the full integrity check started in the
//! background after the open (its verdict comes back as a request), a statement that finds
//! corruption noted, and the file moved aside for a fresh one, with an error event that says
//! where it went.

use std::time::SystemTime;

use tracing::{error, warn};

use super::{Check, Outbox, Request, StoreError};
use crate::event::{DeviceState, DeviceStatusData, Event, EventData};

impl Outbox {
    /// Starts the full integrity check of the file in use; its verdict comes back as a request.
    pub(super) fn start_check(&mut self) {
        let (tx, file) = (self.weak.clone(), self.file);
        let done = move |verdict| {
            // Gone at shutdown: nothing to tell.
            if let Some(tx) = tx.upgrade() {
                let _ = tx.send(Request::Checked { file, verdict });
            }
        };
        match Check::spawn(self.store.path(), done) {
            Ok(check) => self.check = Some(check),
            Err(e) => warn!(error = %e, "cannot start the outbox integrity check"),
        }
    }

    /// Remembers that a statement found the file corrupt.
    pub(super) fn note(&mut self, e: &StoreError) {
        if e.is_corruption() && self.corrupt.is_none() {
            self.corrupt = Some(e.to_string());
        }
    }

    /// Moves a file found corrupt aside and goes on with a fresh one, and says so to HQ.
    pub(super) fn move_aside_if_corrupt(&mut self) {
        let Some(why) = self.corrupt.take() else {
            return;
        };
        error!(error = %why, "the outbox database is corrupt");
        if let Some(check) = self.check.take() {
            check.stop();
        }
        self.file += 1;
        match self.store.move_aside() {
            Ok(moved) => {
                self.report_moved(&moved);
                self.committed.send_replace(self.store.last_seq());
            }
            // Nothing else to do: the statements on the file keep failing and say so.
            Err(e) => error!(error = %e, "cannot move the corrupt outbox database aside"),
        }
    }

    /// Appends the `store.device.status` error that says where a corrupt file went.
    pub(super) fn report_moved(&mut self, moved: &std::path::Path) {
        let report = Event::new(
            self.gateway.as_str().into(),
            SystemTime::now(),
            EventData::DeviceStatus(DeviceStatusData {
                device: "outbox".into(),
                kind: "outbox",
                state: DeviceState::Error,
                reason: format!(
                    "database was corrupt; moved to {} and a fresh one started",
                    moved.display()
                ),
                count: None,
            }),
        );
        if let Err(e) = self.store.commit_group(&[report], &[]) {
            error!(error = %e, "cannot report the corrupt outbox database");
        }
    }
}
