//! What the status endpoint reports: counters the writer keeps, and each gateway's
//! accounting. The writer updates it after each commit; readers take a copy under the lock.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

use crate::ingest::GatewayKey;
use crate::seq::GatewaySeq;

#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// MQTT messages (batches) committed.
    pub batches: u64,
    pub events_stored: u64,
    pub duplicates: u64,
    pub parked: u64,
    pub commit_errors: u64,
    /// The group's worst lag at the last expiry check, ms (`crate::seq::group_lag_ms`).
    pub group_lag_ms: u64,
    /// Replay commands this consumer published ([`crate::repair`]), and those it could not.
    pub replays_requested: u64,
    pub replays_failed: u64,
    pub gateways: BTreeMap<GatewayKey, GatewayFigures>,
    /// By sink name; each sink's runner keeps its own entry.
    pub sinks: BTreeMap<String, SinkFigures>,
}

/// One sink's counters since start, and where it stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SinkFigures {
    /// Events the engine took.
    pub forwarded: u64,
    pub requests: u64,
    /// Events the engine refused for good (table `sink_parked`).
    pub parked: u64,
    /// Requests repeated after no answer: the engine may have their events twice.
    pub ambiguous: u64,
    /// The events in those requests: at most this many are at the engine twice.
    pub ambiguous_events: u64,
    /// Requests retried after a failure (5xx, no connection, no answer, our config).
    pub retries: u64,
    /// Requests the engine throttled (429).
    pub throttled: u64,
    /// Events not for this sink (anonymous for Braze, types not forwarded).
    pub skipped: u64,
    pub cursor: u64,
    /// Events committed and not yet done for the sink.
    pub lag: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GatewayFigures {
    pub high: u64,
    pub lost: u64,
    pub pending: u64,
    pub evicted: u64,
    pub late: u64,
    pub recovered: u64,
}

impl GatewayFigures {
    pub fn of(g: &GatewaySeq) -> GatewayFigures {
        GatewayFigures {
            high: g.span.map_or(0, |s| s.1),
            lost: g.lost(),
            pending: g.pending(),
            evicted: g.evicted,
            late: g.late,
            recovered: g.recovered,
        }
    }
}

/// Shared between the writer (the only one that changes it) and the status endpoint.
pub type Shared = Arc<Mutex<Stats>>;

/// A labelled series: name, kind, help, and its value in a gateway's or a sink's figures.
type Series<F> = (&'static str, &'static str, &'static str, fn(&F) -> u64);

/// The Prometheus text exposition of `s`.
pub fn render(s: &Stats) -> String {
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    };
    counter(
        "phygate_hq_batches_total",
        "MQTT messages committed and acknowledged.",
        s.batches,
    );
    counter(
        "phygate_hq_events_stored_total",
        "Events stored for the first time.",
        s.events_stored,
    );
    counter(
        "phygate_hq_duplicates_total",
        "Events received again and not stored twice.",
        s.duplicates,
    );
    counter(
        "phygate_hq_parked_total",
        "Events refused and kept aside (table parked).",
        s.parked,
    );
    counter(
        "phygate_hq_commit_errors_total",
        "Journey store commits that failed (messages redelivered).",
        s.commit_errors,
    );
    counter(
        "phygate_hq_replays_requested_total",
        "Replay commands published to stores for pending holes.",
        s.replays_requested,
    );
    counter(
        "phygate_hq_replays_failed_total",
        "Replay commands that could not be published (asked again on the hole's retry).",
        s.replays_failed,
    );
    let _ = writeln!(
        out,
        "# HELP phygate_hq_group_lag_seconds The share group's worst lag: a hole becomes a loss after the grace plus this.\n# TYPE phygate_hq_group_lag_seconds gauge\nphygate_hq_group_lag_seconds {:.3}",
        s.group_lag_ms as f64 / 1000.0
    );
    let per_gateway: [Series<GatewayFigures>; 6] = [
        (
            "phygate_hq_lost_events",
            "gauge",
            "Seq numbers missing past the grace and never announced as evicted: lost.",
            |f| f.lost,
        ),
        (
            "phygate_hq_pending_events",
            "gauge",
            "Seq numbers missing, still within the grace.",
            |f| f.pending,
        ),
        (
            "phygate_hq_evicted_events_total",
            "counter",
            "Seq numbers the gateway announced as evicted by its quota.",
            |f| f.evicted,
        ),
        (
            "phygate_hq_late_events_total",
            "counter",
            "Seq numbers that arrived or were announced after being declared lost.",
            |f| f.late,
        ),
        (
            "phygate_hq_recovered_events_total",
            "counter",
            "Seq numbers that arrived after HQ asked the gateway to replay them.",
            |f| f.recovered,
        ),
        (
            "phygate_hq_last_seq",
            "gauge",
            "Highest seq seen from the gateway.",
            |f| f.high,
        ),
    ];
    for (name, kind, help, get) in per_gateway {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (k, f) in &s.gateways {
            let _ = writeln!(
                out,
                "{name}{{tenant=\"{}\",store=\"{}\",gateway=\"{}\"}} {}",
                escape(&k.tenant),
                escape(&k.store),
                escape(&k.gateway),
                get(f)
            );
        }
    }
    let per_sink: [Series<SinkFigures>; 10] = [
        (
            "phygate_hq_sink_forwarded_total",
            "counter",
            "Events the journey engine took.",
            |f| f.forwarded,
        ),
        (
            "phygate_hq_sink_requests_total",
            "counter",
            "Requests sent to the journey engine.",
            |f| f.requests,
        ),
        (
            "phygate_hq_sink_parked_total",
            "counter",
            "Events the engine refused for good (parked, not retried).",
            |f| f.parked,
        ),
        (
            "phygate_hq_sink_ambiguous_total",
            "counter",
            "Requests repeated after their fate was unknown: the engine may hold their events twice.",
            |f| f.ambiguous,
        ),
        (
            "phygate_hq_sink_ambiguous_events_total",
            "counter",
            "Events in the requests repeated after their fate was unknown.",
            |f| f.ambiguous_events,
        ),
        (
            "phygate_hq_sink_retries_total",
            "counter",
            "Requests retried after a failure.",
            |f| f.retries,
        ),
        (
            "phygate_hq_sink_throttled_total",
            "counter",
            "Requests the engine throttled (429).",
            |f| f.throttled,
        ),
        (
            "phygate_hq_sink_skipped_total",
            "counter",
            "Events not for this sink (anonymous for Braze, types not forwarded).",
            |f| f.skipped,
        ),
        (
            "phygate_hq_sink_cursor",
            "gauge",
            "The commit number up to which every event is done for the sink.",
            |f| f.cursor,
        ),
        (
            "phygate_hq_sink_lag_events",
            "gauge",
            "Events committed and not yet done for the sink.",
            |f| f.lag,
        ),
    ];
    for (name, kind, help, get) in per_sink {
        if s.sinks.is_empty() {
            break;
        }
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (sink, f) in &s.sinks {
            let _ = writeln!(out, "{name}{{sink=\"{}\"}} {}", escape(sink), get(f));
        }
    }
    out
}

/// A Prometheus label value: backslash, quote and newline escaped.
pub(crate) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_is_labelled_by_store() {
        let mut s = Stats::default();
        s.gateways.insert(
            GatewayKey {
                tenant: "acme".into(),
                store: "s\"1".into(),
                gateway: "gw1".into(),
            },
            GatewayFigures {
                lost: 3,
                ..Default::default()
            },
        );
        let text = render(&s);
        assert!(
            text.contains(
                "phygate_hq_lost_events{tenant=\"acme\",store=\"s\\\"1\",gateway=\"gw1\"} 3"
            ),
            "{text}"
        );
    }
}
