//! What the health monitor finds about the pipeline, shared with the report: a leaf, so the
//! monitor (which reads the report for the `STATUS=` line) and the report do not import each
//! other.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::outbox::Stats;

/// A failed outbox transaction this recent means the outbox is not writable (disk full, I/O
/// errors). Appends the disk refused are retried every second, so a lasting problem keeps
/// this fresh.
pub(super) const WRITE_ERROR_HOLD: Duration = Duration::from_secs(10);

/// The last HQ link error, for the page (the uplink logs it too).
///
/// Global for now, and known as such (issue 11): both MQTT sessions (uplink and downlink) and
/// the status page would otherwise need a shared handle wired through the daemon; it holds
/// one process-wide fact, written rarely, read by the page.
static HQ_ERROR: Mutex<Option<(String, SystemTime)>> = Mutex::new(None);

/// Called by the uplink when the HQ link fails.
pub fn hq_link_failed(error: &dyn std::fmt::Display) {
    *HQ_ERROR.lock().unwrap_or_else(|p| p.into_inner()) =
        Some((error.to_string(), SystemTime::now()));
}

pub fn hq_last_error() -> Option<(String, SystemTime)> {
    HQ_ERROR.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The broker's refusal of the events (MQTT 5 PUBACK reason code), and since when it lasts;
/// global for the reason [`HQ_ERROR`] is.
static HQ_REFUSAL: Mutex<Option<(String, SystemTime)>> = Mutex::new(None);

/// Called by the uplink when the broker refuses a batch; the first refusal of a run of them
/// keeps its time (the page says for how long the broker has refused).
pub fn hq_publish_refused(reason: &dyn std::fmt::Display) {
    let mut r = HQ_REFUSAL.lock().unwrap_or_else(|p| p.into_inner());
    let since = r.as_ref().map_or_else(SystemTime::now, |(_, t)| *t);
    *r = Some((reason.to_string(), since));
}

/// Called by the uplink when the broker takes a batch: the refusal, if any, is over.
pub fn hq_publish_accepted() {
    let mut r = HQ_REFUSAL.lock().unwrap_or_else(|p| p.into_inner());
    if r.is_some() {
        *r = None;
    }
}

pub fn hq_refusal() -> Option<(String, SystemTime)> {
    HQ_REFUSAL.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// The monitor's latest findings.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The outbox answered its last stats request within the deadline.
    pub outbox_answering: bool,
    /// No failed transaction in the last [`WRITE_ERROR_HOLD`].
    pub outbox_writable: bool,
    /// The link takes readings off its queue (or has none waiting).
    pub link_draining: bool,
    /// The last stats the outbox gave (may be old when it stopped answering).
    pub stats: Option<Stats>,
    pub hq_connected: bool,
    /// Since when the HQ link is in its current state (up or down).
    pub hq_since: SystemTime,
}

impl Pipeline {
    /// Alive for systemd's watchdog: the stages a restart could fix are moving.
    pub fn alive(&self) -> bool {
        self.outbox_answering && self.link_draining
    }
}

#[derive(Clone)]
pub struct Health(Arc<Mutex<Pipeline>>);

impl Default for Health {
    fn default() -> Health {
        Health(Arc::new(Mutex::new(Pipeline {
            // Innocent until the first check: a page loaded during start says "starting".
            outbox_answering: true,
            outbox_writable: true,
            link_draining: true,
            stats: None,
            hq_connected: false,
            hq_since: SystemTime::now(),
        })))
    }
}

impl Health {
    pub fn get(&self) -> Pipeline {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut Pipeline)) {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
