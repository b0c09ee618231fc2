//! The people-counter push body (docs/protocols.md §3b), pure: bytes and a clock reading in, a
//! validated interval count or the reason it was refused out.
//!
//! `{"device":"pc-1","from":"…Z","to":"…Z","in":3,"out":1}`: an RFC 3339 interval with
//! `from < to`, counts ≥ 0. Unknown keys are ignored, as SKN1 does, so a vendor profile can
//! pass extra fields through.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// docs/protocols.md §3b.
pub const MAX_BODY: usize = 64 * 1024;
/// More than any doorway passes in one interval: a bigger number is a counter's garbage.
pub const MAX_COUNT: u64 = 1_000_000;
/// How long an accepted interval is remembered (idempotency). A post whose interval ended
/// longer ago than this is refused rather than risk counting it twice.
pub const KEPT_MS: u64 = 7 * 24 * 3600 * 1000;

/// A validated post.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountsPost {
    pub device: String,
    /// The interval in one canonical UTC spelling, so `…+00:00` and `…Z` are the same interval.
    pub from: String,
    pub to: String,
    pub to_ms: u64,
    pub people_in: u64,
    pub people_out: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CountsReject {
    #[error("the body is not a JSON object")]
    BadJson,
    #[error("`device` is not a string")]
    BadDevice,
    #[error("`{0}` is not an RFC 3339 time")]
    BadTime(&'static str),
    #[error("`from` is not before `to`")]
    EmptyInterval,
    #[error("`{0}` is not an integer between 0 and 1000000")]
    BadCount(&'static str),
    #[error("the interval ended more than 7 days ago")]
    TooOld,
}

impl CountsReject {
    /// Short machine reason for the answer and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::BadDevice => "bad_device",
            Self::BadTime(_) => "bad_time",
            Self::EmptyInterval => "empty_interval",
            Self::BadCount(_) => "bad_count",
            Self::TooOld => "too_old",
        }
    }
}

/// Parses and checks a counts body received at `now_ms` (Unix ms).
pub fn parse_counts(body: &[u8], now_ms: u64) -> Result<CountsPost, CountsReject> {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(CountsReject::BadJson);
    };
    let device = obj
        .get("device")
        .and_then(Value::as_str)
        .ok_or(CountsReject::BadDevice)?
        .to_owned();
    let time = |field: &'static str| {
        obj.get(field)
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
            .ok_or(CountsReject::BadTime(field))
    };
    let (from, to) = (time("from")?, time("to")?);
    if from >= to {
        return Err(CountsReject::EmptyInterval);
    }
    let count = |field: &'static str| {
        obj.get(field)
            .and_then(Value::as_u64)
            .filter(|n| *n <= MAX_COUNT)
            .ok_or(CountsReject::BadCount(field))
    };
    let (people_in, people_out) = (count("in")?, count("out")?);
    let to_ms = u64::try_from(to.timestamp_millis()).unwrap_or(0);
    if now_ms.saturating_sub(to_ms) > KEPT_MS {
        return Err(CountsReject::TooOld);
    }
    let canonical = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    Ok(CountsPost {
        device,
        from: canonical(from),
        to: canonical(to),
        to_ms,
        people_in,
        people_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-23T05:10:00Z
    const NOW: u64 = 1_795_410_600_000;

    fn post(body: &str) -> Result<CountsPost, CountsReject> {
        parse_counts(body.as_bytes(), NOW)
    }

    #[test]
    fn spec_body_parses_and_spellings_of_one_instant_agree() {
        let p = post(r#"{"device":"pc-1","from":"2026-11-23T05:00:00Z","to":"2026-11-23T05:05:00Z","in":3,"out":1}"#)
            .unwrap();
        assert_eq!(p.device, "pc-1");
        assert_eq!((p.people_in, p.people_out), (3, 1));
        assert_eq!(p.from, "2026-11-23T05:00:00Z");
        let q = post(r#"{"device":"pc-1","from":"2026-11-23T06:00:00+01:00","to":"2026-11-23T05:05:00.000Z","in":3,"out":1,"vendor":"x"}"#)
            .unwrap();
        assert_eq!((q.from, q.to), (p.from, p.to));
    }

    #[test]
    fn every_bad_field_has_its_reason() {
        let cases = [
            ("[]", CountsReject::BadJson),
            ("{", CountsReject::BadJson),
            (
                r#"{"from":"2026-11-23T05:00:00Z"}"#,
                CountsReject::BadDevice,
            ),
            (
                r#"{"device":"pc-1","from":"yesterday","to":"2026-11-23T05:05:00Z","in":1,"out":1}"#,
                CountsReject::BadTime("from"),
            ),
            (
                r#"{"device":"pc-1","from":"2026-11-23T05:00:00Z","in":1,"out":1}"#,
                CountsReject::BadTime("to"),
            ),
            (
                r#"{"device":"pc-1","from":"2026-11-23T05:05:00Z","to":"2026-11-23T05:05:00Z","in":1,"out":1}"#,
                CountsReject::EmptyInterval,
            ),
            (
                r#"{"device":"pc-1","from":"2026-11-23T05:06:00Z","to":"2026-11-23T05:05:00Z","in":1,"out":1}"#,
                CountsReject::EmptyInterval,
            ),
            (
                r#"{"device":"pc-1","from":"2026-11-23T05:00:00Z","to":"2026-11-23T05:05:00Z","in":-1,"out":1}"#,
                CountsReject::BadCount("in"),
            ),
            (
                r#"{"device":"pc-1","from":"2026-11-23T05:00:00Z","to":"2026-11-23T05:05:00Z","in":1,"out":1.5}"#,
                CountsReject::BadCount("out"),
            ),
            (
                r#"{"device":"pc-1","from":"2026-11-23T05:00:00Z","to":"2026-11-23T05:05:00Z","in":"3","out":1}"#,
                CountsReject::BadCount("in"),
            ),
            (
                r#"{"device":"pc-1","from":"2026-11-23T05:00:00Z","to":"2026-11-23T05:05:00Z","in":1000001,"out":1}"#,
                CountsReject::BadCount("in"),
            ),
            (
                r#"{"device":"pc-1","from":"2026-11-01T05:00:00Z","to":"2026-11-01T05:05:00Z","in":1,"out":1}"#,
                CountsReject::TooOld,
            ),
        ];
        for (body, want) in cases {
            assert_eq!(post(body), Err(want.clone()), "{body}");
            assert!(!want.reason().is_empty());
        }
    }
}
