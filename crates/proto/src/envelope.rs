//! The CloudEvents 1.0 envelope (structured JSON) every phygate event travels in, as
//! docs/events.md describes it. One type for both sides: the gateway serialises it with borrowed
//! strings, HQ deserialises it into owned ones (`Envelope<'static, serde_json::Value>`), so an
//! attribute renamed on one side fails the other side's tests, not production.

use std::borrow::Cow;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// `specversion`: CloudEvents 1.0.
pub const SPECVERSION: &str = "1.0";
/// `datacontenttype` of every event's `data`.
pub const DATACONTENTTYPE: &str = "application/json";
/// The content type of a published batch: a JSON array of structured events.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// The event types (`type`), docs/events.md "Types".
pub mod types {
    pub const QR_SCANNED: &str = "store.qr.scanned";
    pub const NFC_TAPPED: &str = "store.nfc.tapped";
    pub const NFC_LINKED: &str = "store.nfc.linked";
    pub const GATE_PASSED: &str = "store.gate.passed";
    pub const VISIT_STARTED: &str = "store.visit.started";
    pub const VISIT_ENDED: &str = "store.visit.ended";
    pub const SKIN_DIAGNOSED: &str = "store.skin.diagnosed";
    pub const DEVICE_STATUS: &str = "store.device.status";
    pub const OUTBOX_EVICTED: &str = "store.outbox.evicted";
    pub const COMMAND_RESULT: &str = "store.command.result";
    pub const CONFIG_APPLIED: &str = "store.config.applied";
    pub const CONFIG_REJECTED: &str = "store.config.rejected";
}

/// How the event's user was identified (`idsource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdSource {
    QrToken,
    NfcMember,
    Session,
    None,
}

impl IdSource {
    pub fn as_str(self) -> &'static str {
        match self {
            IdSource::QrToken => "qr_token",
            IdSource::NfcMember => "nfc_member",
            IdSource::Session => "session",
            IdSource::None => "none",
        }
    }
}

/// One event. The field order is the order on the wire. Unknown attributes are accepted when
/// reading (CloudEvents lets producers add extensions), so an older HQ reads a newer gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<'a, D> {
    pub specversion: Cow<'a, str>,
    /// A UUIDv7, unique forever: the de-duplication key (with the gateway).
    pub id: Cow<'a, str>,
    /// `/stores/{store}/stations/{station}` ([`source`]).
    pub source: Cow<'a, str>,
    #[serde(rename = "type")]
    pub ty: Cow<'a, str>,
    /// RFC 3339 UTC, three fractional digits and `Z` ([`format_time`]).
    pub time: Cow<'a, str>,
    pub datacontenttype: Cow<'a, str>,
    pub storeid: Cow<'a, str>,
    pub stationid: Cow<'a, str>,
    pub gatewayid: Cow<'a, str>,
    /// Per gateway, dense and increasing for the gateway's life.
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userid: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonid: Option<Cow<'a, str>>,
    pub idsource: IdSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Cow<'a, str>>,
    pub clocksync: bool,
    pub data: D,
}

/// The `source` attribute of an event made at `station` of `store`.
pub fn source(store: &str, station: &str) -> String {
    format!("/stores/{store}/stations/{station}")
}

/// RFC 3339 UTC with exactly three fractional digits and `Z`.
pub fn format_time(t: SystemTime) -> String {
    let mut buf = [0; TIME_LEN];
    match format_time_into(t, &mut buf) {
        Some(text) => text.to_owned(),
        // Before 1970 or after 9999: chrono knows how those are written.
        None => chrono::DateTime::<chrono::Utc>::from(t)
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }
}

/// The length of a time as [`format_time`] writes it (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
pub const TIME_LEN: usize = 24;

/// Seconds from 1970 to 10000-01-01: the first time whose year has five digits.
const YEAR_10000: u64 = 253_402_300_800;

/// As [`format_time`], written into `buf` without an allocation, for the times from 1970 to
/// 9999 (every clock a gateway has, even one that booted at 1970 without a real-time clock);
/// `None` outside them. Every event is stamped with one: through chrono it was an allocation
/// and about 1,700 instructions per event, here about a tenth of that.
pub fn format_time_into(t: SystemTime, buf: &mut [u8; TIME_LEN]) -> Option<&str> {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    let secs = since.as_secs();
    if secs >= YEAR_10000 {
        return None;
    }
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    let fields = [
        (0, 4, year),
        (5, 2, month),
        (8, 2, day),
        (11, 2, of_day / 3600),
        (14, 2, of_day / 60 % 60),
        (17, 2, of_day % 60),
        (20, 3, u64::from(since.subsec_millis())),
    ];
    *buf = *b"0000-00-00T00:00:00.000Z";
    for (at, width, mut value) in fields {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    // Only ASCII digits went into an ASCII template.
    std::str::from_utf8(buf).ok()
}

/// The proleptic Gregorian (year, month, day) of a day counted from 1970-01-01: the
/// days-to-civil algorithm of Howard Hinnant's `chrono`-compatible date library, on eras of
/// 400 years (146,097 days) counted from 0000-03-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Whether `s` has exactly the shape [`format_time`] writes (`YYYY-MM-DDTHH:MM:SS.mmmZ`), so
/// that two such times compare as strings in time order.
pub fn is_event_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// `data` of `store.outbox.evicted`, as HQ reads it: the seq ranges the gateway's quota policy
/// dropped (inclusive), how many, and why (`bytes` or `age`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evicted {
    pub ranges: Vec<[u64; 2]>,
    pub count: u64,
    pub policy: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_serialised_envelope_reads_back_owned() {
        let e = Envelope {
            specversion: SPECVERSION.into(),
            id: "0193b6a2-7c1e-7a3d-9f21-5b8e2c4d6a10".into(),
            source: source("paris-01", "entrance").into(),
            ty: types::QR_SCANNED.into(),
            time: "2026-11-23T05:01:02.123Z".into(),
            datacontenttype: DATACONTENTTYPE.into(),
            storeid: "paris-01".into(),
            stationid: "entrance".into(),
            gatewayid: "paris-01-gw1".into(),
            seq: 42,
            userid: Some("u-8812".into()),
            anonid: None,
            idsource: IdSource::QrToken,
            stage: Some("entry".into()),
            clocksync: true,
            data: serde_json::json!({"kind": "product"}),
        };
        let text = serde_json::to_string(&e).unwrap();
        assert!(!text.contains("anonid"), "absent, never null: {text}");
        let back: Envelope<'static, serde_json::Value> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn the_documented_example_parses() {
        // docs/events.md, store.visit.ended, with an extension attribute a later gateway may add.
        let text = r#"{"specversion":"1.0","id":"0193b6c0-4411-7f20-b3a4-c5d6e7f8a9b0","source":"/stores/paris-01/stations/exit","type":"store.visit.ended","time":"2026-11-23T05:32:47.900Z","datacontenttype":"application/json","storeid":"paris-01","stationid":"exit","gatewayid":"paris-01-gw1","seq":118,"userid":"u-8812","anonid":"5f1c9a0b3e7d2c48","idsource":"none","stage":"exit","clocksync":true,"later":1,"data":{"visit":"0193b6a2-7c1f-7c55-8d90-aa11bb22cc33","dwell_s":1905,"end_reason":"exit"}}"#;
        let e: Envelope<'static, serde_json::Value> = serde_json::from_str(text).unwrap();
        assert_eq!(e.seq, 118);
        assert_eq!(e.ty, types::VISIT_ENDED);
        assert_eq!(e.idsource, IdSource::None);
        assert!(is_event_time(&e.time));
    }

    #[test]
    fn the_fast_time_is_chronos_time_to_the_millisecond() {
        let chrono_text = |t: SystemTime| {
            chrono::DateTime::<chrono::Utc>::from(t)
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        // Edges (the epoch, leap days, century years, the last millisecond of 9999), then
        // times spread over the whole range by a fixed-seed generator.
        let mut secs = vec![
            0,
            86_399,
            951_782_400,   // 2000-02-29
            4_107_542_400, // 2100-03-01 (2100 is no leap year)
            1_795_410_062,
            YEAR_10000 - 1,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            secs.push(x % YEAR_10000);
        }
        let mut buf = [0; TIME_LEN];
        for (i, s) in secs.into_iter().enumerate() {
            let t =
                SystemTime::UNIX_EPOCH + Duration::from_millis(s * 1000 + (i as u64 * 7) % 1000);
            assert_eq!(format_time_into(t, &mut buf), Some(chrono_text(t).as_str()));
            assert_eq!(format_time(t), chrono_text(t));
        }
        let before = SystemTime::UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(format_time_into(before, &mut buf), None);
        assert_eq!(format_time(before), "1969-12-31T23:59:58.500Z");
        let after = SystemTime::UNIX_EPOCH + Duration::from_secs(YEAR_10000);
        assert_eq!(format_time_into(after, &mut buf), None);
        assert_eq!(format_time(after), chrono_text(after));
    }

    #[test]
    fn times_have_three_digits_and_compare_as_strings() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_410_062);
        assert_eq!(format_time(t), "2026-11-23T05:01:02.000Z");
        assert!(is_event_time(&format_time(t)));
        assert!(format_time(t) < format_time(t + Duration::from_millis(1)));
        for bad in ["2026-11-23T05:01:02Z", "2026-11-23T05:01:02.000+00:00", ""] {
            assert!(!is_event_time(bad), "{bad}");
        }
    }
}
