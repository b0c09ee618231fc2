//! The fleet's health in `/metrics`: one series per store from the stores' retained statuses
//! (online or not, and each store's report: backlog age and size, devices in error, member
//! versions), read afresh at each scrape like the `/stores` page, so the alert rules in
//! `deploy/prometheus/alerts.yml` can name a store that is offline or backlogged.
//!
//! A scrape reads the broker's retained statuses (about half a second of quiet time). When
//! the broker cannot be read, `phygate_hq_fleet_view_up` is 0 and no store series is given,
//! so an alert on it, not a false "every store offline", says so.

use std::fmt::Write;

use crate::fleet::StoreRow;

/// A per-store gauge: name, help, and its value in a row (`None`: the row has no such value,
/// e.g. no report).
type Gauge = (&'static str, &'static str, fn(&StoreRow) -> Option<u64>);

const GAUGES: [Gauge; 6] = [
    (
        "phygate_hq_store_online",
        "1 while the store's retained status says online, 0 when offline (its goodbye or its Last Will).",
        |r| Some(u64::from(r.status.as_deref() == Some("online"))),
    ),
    (
        "phygate_hq_store_reporting",
        "1 when the store's status carries a report (applied versions, devices, backlog).",
        |r| Some(u64::from(r.report.is_some())),
    ),
    (
        "phygate_hq_store_backlog_age_seconds",
        "Age of the oldest event the store's broker has not acknowledged (0: no backlog over 10 s).",
        |r| r.report.as_ref().map(|_| r.backlog_age_s.unwrap_or(0)),
    ),
    (
        "phygate_hq_store_backlog_events",
        "Events waiting in the store's outbox, as of its last report with a backlog (0: none).",
        |r| {
            r.report
                .as_ref()
                .map(|rep| rep.backlog.as_ref().map_or(0, |b| b.events))
        },
    ),
    (
        "phygate_hq_store_devices_in_error",
        "The store's devices erring, unplugged or silent.",
        |r| r.report.as_ref().map(|rep| rep.devices_in_error.len() as u64),
    ),
    (
        "phygate_hq_store_members_version",
        "The fleet-wide member map version the store holds.",
        |r| r.report.as_ref().map(|rep| rep.members.all),
    ),
];

/// The fleet's series; `rows` is `None` when the broker could not be read.
pub fn render(rows: Option<&[StoreRow]>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP phygate_hq_fleet_view_up 1 when this scrape could read the stores' statuses from the broker.\n\
         # TYPE phygate_hq_fleet_view_up gauge\nphygate_hq_fleet_view_up {}",
        u64::from(rows.is_some())
    );
    let Some(rows) = rows else {
        return out;
    };
    for (name, help, get) in GAUGES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for r in rows.iter().filter(|r| r.status.is_some()) {
            if let Some(v) = get(r) {
                let _ = writeln!(
                    out,
                    "{name}{{tenant=\"{}\",store=\"{}\"}} {v}",
                    crate::metrics::escape(&r.tenant),
                    crate::metrics::escape(&r.store)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_store_gets_its_series_and_an_unread_broker_says_so() {
        let rows = vec![
            StoreRow {
                tenant: "acme".into(),
                store: "s1".into(),
                status: Some("online".into()),
                report: Some(Default::default()),
                backlog_age_s: Some(42),
                ..StoreRow::default()
            },
            StoreRow {
                tenant: "acme".into(),
                store: "s2".into(),
                status: Some("offline".into()),
                ..StoreRow::default()
            },
        ];
        let text = render(Some(&rows));
        assert!(text.contains("phygate_hq_store_online{tenant=\"acme\",store=\"s1\"} 1"));
        assert!(text.contains("phygate_hq_store_online{tenant=\"acme\",store=\"s2\"} 0"));
        assert!(
            text.contains("phygate_hq_store_backlog_age_seconds{tenant=\"acme\",store=\"s1\"} 42")
        );
        assert!(
            !text.contains("backlog_age_seconds{tenant=\"acme\",store=\"s2\"}"),
            "no report, no backlog figure"
        );
        assert!(render(None).contains("phygate_hq_fleet_view_up 0"));
    }
}
