//! The gateway's retained status message (`…/{store}/status`, docs/events.md "Status"): whether
//! it is online, and, while it is, its report of what it holds from HQ and how it is doing —
//! the versions of the config, keys and member maps it applied, the devices in error, and the
//! age of its backlog. HQ's fleet view and its pushes' `--wait` read it with this same type.

use serde::{Deserialize, Serialize};

/// `{"state":…,"gateway":…,"version":…,"since":…,"report":{…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `online` or `offline`.
    pub state: String,
    pub gateway: String,
    /// The phygate version.
    pub version: String,
    /// When the message was made (RFC 3339, three fractional digits).
    pub since: String,
    /// Absent from the Last Will (the broker sends it when the connection dies, with what was
    /// set at connect: a report there could name versions older than the store's), and from
    /// gateways older than the report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
}

/// What the gateway holds and how it is doing, as of the message's `since`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The version of HQ's config in force (`sha256:` and 16 hex digits of its text, as HQ
    /// published it); `None` while the local file is in force.
    #[serde(default)]
    pub config: Option<String>,
    /// HQ's token key set in force; `None` before the first one.
    #[serde(default)]
    pub keys: Option<KeysReport>,
    /// The member map versions held (0: none yet).
    #[serde(default)]
    pub members: MembersReport,
    /// Devices that are not working: erring, unplugged or silent.
    #[serde(default)]
    pub devices_in_error: Vec<DeviceError>,
    /// Events waiting for the broker's acknowledgement longer than the gateway's threshold
    /// (10 s); `None` when there is no such backlog.
    #[serde(default)]
    pub backlog: Option<Backlog>,
    /// Where the gateway's `seq` stands with the broker; `None` before its first
    /// acknowledgement, and from gateways older than it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<SeqReport>,
}

/// The gateway's `seq` as the broker acknowledged it. HQ's loss accounting sees a missing
/// number only between two it received; this tells it the numbers it never saw at either end:
/// the last events before a store goes quiet, the first ones of a store HQ never heard from.
/// Both are events a broker acknowledged (PUBACK) and may still have lost (a NATS stream
/// without a leader, mosquitto restarted without persistence), so HQ asks for them again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqReport {
    /// Every `seq` up to this one was acknowledged by the broker.
    pub acked: u64,
    /// The lowest `seq` the gateway still holds (it can replay from here; `[outbox]
    /// replay_window`); `None` when it holds none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_from: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeysReport {
    /// `sha256:` and 16 hex digits of the key set as the gateway keeps it (its JWKS, compact,
    /// keys sorted by kid): HQ computes the same from what it published with the edge's parser.
    pub version: String,
    pub kids: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersReport {
    /// This store's map.
    pub store: u64,
    /// The tenant's fleet-wide map.
    pub all: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceError {
    pub device: String,
    pub kind: String,
    /// `error`, `unplugged` or `silent` (the status page's words).
    pub state: String,
    /// The device's own words: `too_long`, `port lost: …`.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backlog {
    /// When the oldest event not yet acknowledged by the broker was made (RFC 3339): its age
    /// is now minus this, growing until the next report.
    pub oldest: String,
    /// Events not yet acknowledged, as of the report.
    pub events: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_last_will_without_report_reads_and_a_report_round_trips() {
        let will: Status = serde_json::from_str(
            r#"{"state":"offline","gateway":"g","version":"0.1.0","since":"2026-12-07T00:00:00.000Z"}"#,
        )
        .unwrap();
        assert!(will.report.is_none());
        let mut s = will.clone();
        s.report = Some(Report {
            config: Some("sha256:0011223344556677".into()),
            members: MembersReport { store: 3, all: 7 },
            ..Report::default()
        });
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains(r#""members":{"store":3,"all":7}"#), "{text}");
        assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), s);
    }
}
