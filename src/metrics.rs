//! Process-wide counters and gauges. Plain atomics: cheap on hot paths, read by the status view
//! and `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// For gauges.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Self {
        Counter::new()
    }
}

pub static READINGS: Counter = Counter::new();
pub static SCANNER_REJECTED: Counter = Counter::new();
pub static SKIN_REJECTED: Counter = Counter::new();
pub static INGEST_REJECTED: Counter = Counter::new();
pub static NFC_FAILURES: Counter = Counter::new();
pub static NFC_BYTES_DISCARDED: Counter = Counter::new();
pub static EVENTS_ACCEPTED: Counter = Counter::new();
pub static EVENTS_PUBLISHED: Counter = Counter::new();
pub static EVENTS_EVICTED: Counter = Counter::new();
pub static OUTBOX_WRITE_ERRORS: Counter = Counter::new();
pub static OUTBOX_DEPTH: Counter = Counter::new();
pub static OUTBOX_BYTES: Counter = Counter::new();
pub static MQTT_RECONNECTS: Counter = Counter::new();
pub static MQTT_CONNECTED: Counter = Counter::new();
pub static GATE_POLLS_FAILED: Counter = Counter::new();

/// App-token verdicts, indexed by `Verdict as usize`.
pub static TOKEN_VERDICTS: [Counter; 9] = [const { Counter::new() }; 9];
pub static DOWNLINK_REFUSED: Counter = Counter::new();
pub static DOWNLINK_APPLIED: Counter = Counter::new();
pub static GATE_UNLOCKS: Counter = Counter::new();

pub fn token_verdict(v: crate::link::token::Verdict) {
    TOKEN_VERDICTS[v as usize].inc();
}

/// Name, help and value of every metric, for exporters.
pub fn snapshot() -> Vec<(&'static str, &'static str, &'static str, u64)> {
    vec![
        (
            "phygate_readings_total",
            "counter",
            "readings received from devices",
            READINGS.get(),
        ),
        (
            "phygate_scanner_rejected_total",
            "counter",
            "scanner lines rejected",
            SCANNER_REJECTED.get(),
        ),
        (
            "phygate_skin_rejected_total",
            "counter",
            "skin analyzer lines rejected",
            SKIN_REJECTED.get(),
        ),
        (
            "phygate_ingest_rejected_total",
            "counter",
            "HTTP ingest requests refused (4xx, 5xx)",
            INGEST_REJECTED.get(),
        ),
        (
            "phygate_nfc_failures_total",
            "counter",
            "NFC reader exchanges that failed (each followed by a re-initialisation)",
            NFC_FAILURES.get(),
        ),
        (
            "phygate_nfc_bytes_discarded_total",
            "counter",
            "bytes from NFC readers that were not part of a frame",
            NFC_BYTES_DISCARDED.get(),
        ),
        (
            "phygate_events_accepted_total",
            "counter",
            "events durably accepted into the outbox",
            EVENTS_ACCEPTED.get(),
        ),
        (
            "phygate_events_published_total",
            "counter",
            "events acknowledged by the broker",
            EVENTS_PUBLISHED.get(),
        ),
        (
            "phygate_events_evicted_total",
            "counter",
            "events dropped by the outbox quota",
            EVENTS_EVICTED.get(),
        ),
        (
            "phygate_outbox_write_errors_total",
            "counter",
            "failed outbox transactions",
            OUTBOX_WRITE_ERRORS.get(),
        ),
        (
            "phygate_outbox_depth",
            "gauge",
            "events waiting in the outbox",
            OUTBOX_DEPTH.get(),
        ),
        (
            "phygate_outbox_bytes",
            "gauge",
            "bytes of events waiting in the outbox",
            OUTBOX_BYTES.get(),
        ),
        (
            "phygate_mqtt_reconnects_total",
            "counter",
            "MQTT connection attempts after a failure",
            MQTT_RECONNECTS.get(),
        ),
        (
            "phygate_mqtt_connected",
            "gauge",
            "1 while connected to the broker",
            MQTT_CONNECTED.get(),
        ),
        (
            "phygate_gate_polls_failed_total",
            "counter",
            "gate polls without a valid answer (timeout, CRC, exception)",
            GATE_POLLS_FAILED.get(),
        ),
        (
            "phygate_downlink_refused_total",
            "counter",
            "downlink messages refused (size, schema, version); nothing of them applied",
            DOWNLINK_REFUSED.get(),
        ),
        (
            "phygate_downlink_applied_total",
            "counter",
            "downlink messages applied",
            DOWNLINK_APPLIED.get(),
        ),
        (
            "phygate_gate_unlocks_total",
            "counter",
            "gate unlocks written (entry tokens and HQ commands)",
            GATE_UNLOCKS.get(),
        ),
    ]
}

/// `(verdict, count)` of every app-token verdict, for exporters (label `verdict`).
pub fn token_verdicts() -> Vec<(&'static str, u64)> {
    use crate::link::token::Verdict::*;
    [
        Valid,
        Expired,
        NotYetValid,
        BadSignature,
        UnknownKey,
        WrongAudience,
        WrongStore,
        Replayed,
        Malformed,
    ]
    .into_iter()
    .map(|v| (v.as_str(), TOKEN_VERDICTS[v as usize].get()))
    .collect()
}
