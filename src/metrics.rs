//! Process-wide counters and gauges. Plain atomics: cheap on hot paths, read by the status view
//! and `/metrics`.
//!
//! Why global rather than a handle passed in the wiring (issue 11 asked for one or the other):
//! a store process is one gateway, and Prometheus scrapes a process, so a process-wide registry
//! is the metric's true scope; a handle would thread through every stage and device thread only
//! to reach the same atomics. The one process that runs many gateways, `phygate-hq fleet-sim`,
//! sums them, and it reports from each gateway's own outbox instead.

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
pub static CAMERA_REJECTED: Counter = Counter::new();
pub static SKIN_REJECTED: Counter = Counter::new();
pub static INGEST_REJECTED: Counter = Counter::new();
pub static NFC_FAILURES: Counter = Counter::new();
pub static NFC_BYTES_DISCARDED: Counter = Counter::new();
pub static EVENTS_ACCEPTED: Counter = Counter::new();
pub static EVENTS_PUBLISHED: Counter = Counter::new();
pub static EVENTS_EVICTED: Counter = Counter::new();
pub static REPLAYED: Counter = Counter::new();
pub static REPLAY_MISSING: Counter = Counter::new();
pub static OUTBOX_WRITE_ERRORS: Counter = Counter::new();
pub static OUTBOX_DEPTH: Counter = Counter::new();
pub static OUTBOX_BYTES: Counter = Counter::new();
pub static MQTT_RECONNECTS: Counter = Counter::new();
pub static MQTT_CONNECTED: Counter = Counter::new();
pub static PUBLISHES_REFUSED: Counter = Counter::new();
pub static PUBACK_TIMEOUTS: Counter = Counter::new();
pub static GATE_POLLS_FAILED: Counter = Counter::new();

pub static DOWNLINK_REFUSED: Counter = Counter::new();
pub static DOWNLINK_APPLIED: Counter = Counter::new();
pub static GATE_UNLOCKS: Counter = Counter::new();

/// Every metric: name, type, help, and the counter that holds its value.
static TABLE: [(&str, &str, &str, &Counter); 23] = [
    (
        "phygate_readings_total",
        "counter",
        "readings received from devices",
        &READINGS,
    ),
    (
        "phygate_scanner_rejected_total",
        "counter",
        "scanner lines rejected",
        &SCANNER_REJECTED,
    ),
    (
        "phygate_camera_rejected_total",
        "counter",
        "camera frames that were not readable images",
        &CAMERA_REJECTED,
    ),
    (
        "phygate_skin_rejected_total",
        "counter",
        "skin analyzer lines rejected",
        &SKIN_REJECTED,
    ),
    (
        "phygate_ingest_rejected_total",
        "counter",
        "HTTP ingest requests refused (4xx, 5xx)",
        &INGEST_REJECTED,
    ),
    (
        "phygate_nfc_failures_total",
        "counter",
        "NFC reader exchanges that failed (each followed by a re-initialisation)",
        &NFC_FAILURES,
    ),
    (
        "phygate_nfc_bytes_discarded_total",
        "counter",
        "bytes from NFC readers that were not part of a frame",
        &NFC_BYTES_DISCARDED,
    ),
    (
        "phygate_events_accepted_total",
        "counter",
        "events durably accepted into the outbox",
        &EVENTS_ACCEPTED,
    ),
    (
        "phygate_events_published_total",
        "counter",
        "events acknowledged by the broker",
        &EVENTS_PUBLISHED,
    ),
    (
        "phygate_events_evicted_total",
        "counter",
        "events dropped by the outbox quota",
        &EVENTS_EVICTED,
    ),
    (
        "phygate_events_replayed_total",
        "counter",
        "events queued to be published again by HQ's replay commands",
        &REPLAYED,
    ),
    (
        "phygate_replay_missing_total",
        "counter",
        "seqs HQ asked to replay that the outbox no longer held",
        &REPLAY_MISSING,
    ),
    (
        "phygate_outbox_write_errors_total",
        "counter",
        "failed outbox transactions",
        &OUTBOX_WRITE_ERRORS,
    ),
    (
        "phygate_outbox_depth",
        "gauge",
        "events waiting in the outbox",
        &OUTBOX_DEPTH,
    ),
    (
        "phygate_outbox_bytes",
        "gauge",
        "bytes of events waiting in the outbox",
        &OUTBOX_BYTES,
    ),
    (
        "phygate_mqtt_reconnects_total",
        "counter",
        "MQTT connection attempts after a failure",
        &MQTT_RECONNECTS,
    ),
    (
        "phygate_mqtt_publishes_refused_total",
        "counter",
        "event batches the broker refused with an MQTT 5 reason code (kept and sent again)",
        &PUBLISHES_REFUSED,
    ),
    (
        "phygate_mqtt_puback_timeouts_total",
        "counter",
        "connections dropped because no PUBACK came within [uplink] ack_timeout while batches were in flight",
        &PUBACK_TIMEOUTS,
    ),
    (
        "phygate_mqtt_connected",
        "gauge",
        "1 while connected to the broker",
        &MQTT_CONNECTED,
    ),
    (
        "phygate_gate_polls_failed_total",
        "counter",
        "gate polls without a valid answer (timeout, CRC, exception)",
        &GATE_POLLS_FAILED,
    ),
    (
        "phygate_downlink_refused_total",
        "counter",
        "downlink messages refused (size, schema, version); nothing of them applied",
        &DOWNLINK_REFUSED,
    ),
    (
        "phygate_downlink_applied_total",
        "counter",
        "downlink messages applied",
        &DOWNLINK_APPLIED,
    ),
    (
        "phygate_gate_unlocks_total",
        "counter",
        "gate unlocks written (entry tokens and HQ commands)",
        &GATE_UNLOCKS,
    ),
];

/// Name, help and value of every metric, for exporters.
pub fn snapshot() -> Vec<(&'static str, &'static str, &'static str, u64)> {
    TABLE
        .iter()
        .map(|&(name, kind, help, counter)| (name, kind, help, counter.get()))
        .collect()
}

/// A Prometheus-style histogram: cumulative counts per upper bound, with sum and count.
pub struct Histogram {
    /// Upper bounds in seconds, increasing; `+Inf` is implied.
    pub bounds: &'static [f64],
    buckets: [AtomicU64; MAX_BUCKETS],
    sum_us: AtomicU64,
    count: AtomicU64,
}

const MAX_BUCKETS: usize = 16;

impl Histogram {
    pub const fn new(bounds: &'static [f64]) -> Self {
        assert!(bounds.len() <= MAX_BUCKETS);
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; MAX_BUCKETS],
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| s <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (Prometheus `le` buckets), the sum in seconds, the count.
    pub fn read(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut total = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .map(|(b, n)| {
                total += n.load(Ordering::Relaxed);
                (*b, total)
            })
            .collect();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, sum, self.count.load(Ordering::Relaxed))
    }
}

/// Counters under one name, told apart by a label whose values are known up front.
pub struct Labeled<const N: usize> {
    pub label: &'static str,
    pub values: [&'static str; N],
    counts: [Counter; N],
}

impl<const N: usize> Labeled<N> {
    pub const fn new(label: &'static str, values: [&'static str; N]) -> Self {
        Labeled {
            label,
            values,
            counts: [const { Counter::new() }; N],
        }
    }

    /// Counts one `value`; an unknown value is counted under the last one (`other`).
    pub fn inc(&self, value: &str) {
        let i = self
            .values
            .iter()
            .position(|v| *v == value)
            .unwrap_or(N - 1);
        self.counts[i].inc();
    }

    pub fn read(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.values
            .iter()
            .copied()
            .zip(self.counts.iter().map(Counter::get))
    }
}

/// Batch publish → its PUBACK, in seconds: the HQ link's round trip plus the broker's
/// persistence. From a LAN broker's milliseconds to a congested uplink's seconds.
pub static PUBLISH_LATENCY: Histogram = Histogram::new(&[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
]);

/// App-token verdicts (docs/protocols.md §5), incremented by the link's token check with
/// `Verdict::as_str()`.
pub static TOKEN_VERDICTS: Labeled<10> = Labeled::new(
    "verdict",
    [
        "valid",
        "expired",
        "not_yet_valid",
        "bad_signature",
        "unknown_key",
        "wrong_audience",
        "wrong_store",
        "replayed",
        "malformed",
        "other",
    ],
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_buckets_are_cumulative() {
        static H: Histogram = Histogram::new(&[0.01, 0.1, 1.0]);
        for ms in [5, 50, 50, 500, 5000] {
            H.observe(Duration::from_millis(ms));
        }
        let (buckets, sum, count) = H.read();
        assert_eq!(buckets, [(0.01, 1), (0.1, 3), (1.0, 4)]);
        assert_eq!(count, 5);
        assert!((sum - 5.605).abs() < 1e-9);
    }

    #[test]
    fn every_token_verdict_has_its_own_counter() {
        for v in crate::link::token::Verdict::ALL {
            assert!(
                TOKEN_VERDICTS.values[..9].contains(&v.as_str()),
                "{}",
                v.as_str()
            );
        }
    }
}
