//! Amplitude HTTP V2 `POST /2/httpapi`. Pure: the request and the reading of its answer.
//!
//! - At most 2,000 events and under 1 MB per request; `insert_id` is the event's id, so
//!   Amplitude itself drops a repeat within 7 days.
//! - Anonymous events go as a `device_id` (the visit's anonymous id, or the station).
//! - `400` names the refused events by index in `events_with_invalid_fields` and
//!   `events_with_missing_fields` (field → indexes); nothing of the request was taken: park
//!   those, send the rest again. A `400` about the `api_key` is our config, not the events.
//! - `429`: throttled; retry after the backoff (or `Retry-After`).

use std::time::SystemTime;

use serde_json::{json, Value};

use super::engine::{common_verdict, Engine, HttpRequest, HttpResponse, Verdict};
use super::mapping::Mapped;

pub const MAX_EVENTS: usize = 2_000;
/// Amplitude refuses a request of 1 MB or more.
pub const MAX_BYTES: usize = 1_000_000;

pub struct Amplitude {
    /// e.g. `https://api2.amplitude.com` (or the EU one).
    pub base_url: String,
    pub api_key: String,
    pub batch: usize,
}

impl Engine for Amplitude {
    fn max_events(&self) -> usize {
        self.batch.min(MAX_EVENTS)
    }

    fn max_bytes(&self) -> usize {
        MAX_BYTES
    }

    fn accepts(&self, _e: &Mapped) -> bool {
        true
    }

    fn request(&self, batch: &[Mapped]) -> HttpRequest {
        let events: Vec<Value> = batch
            .iter()
            .map(|e| {
                let mut v = json!({
                    "device_id": e.device,
                    "event_type": e.name,
                    "time": e.time_ms,
                    "insert_id": e.id,
                    "event_properties": e.properties,
                });
                if let Some(u) = &e.userid {
                    v["user_id"] = json!(u);
                }
                if !e.user_attributes.is_empty() {
                    v["user_properties"] = Value::Object(e.user_attributes.clone());
                }
                v
            })
            .collect();
        // Our ids are short (`u-8812`); Amplitude's default minimum is 5 characters.
        let body = json!({
            "api_key": self.api_key,
            "events": events,
            "options": { "min_id_length": 1 },
        });
        HttpRequest {
            url: format!("{}/2/httpapi", self.base_url.trim_end_matches('/')),
            headers: vec![
                ("content-type", "application/json".into()),
                ("accept", "*/*".into()),
            ],
            body: body.to_string().into_bytes(),
        }
    }

    fn verdict(&self, r: &HttpResponse, batch: &[Mapped], now: SystemTime) -> Verdict {
        match r.status {
            200 => Verdict::Done {
                refused: Vec::new(),
            },
            400 => bad_request(r, batch.len()),
            _ => common_verdict(r, now),
        }
    }
}

fn bad_request(r: &HttpResponse, len: usize) -> Verdict {
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    if v.get("missing_field").and_then(Value::as_str) == Some("api_key")
        || v.get("error")
            .and_then(Value::as_str)
            .is_some_and(|e| e.contains("api_key") || e.contains("API key"))
    {
        return Verdict::Misconfigured(format!("HTTP 400: {}", r.excerpt()));
    }
    let mut refused: Vec<(usize, String)> = Vec::new();
    for (list, what) in [
        ("events_with_invalid_fields", "invalid"),
        ("events_with_missing_fields", "missing"),
    ] {
        let Some(fields) = v.get(list).and_then(Value::as_object) else {
            continue;
        };
        for (field, indexes) in fields {
            for i in indexes.as_array().into_iter().flatten() {
                if let Some(i) = i.as_u64().map(|i| i as usize).filter(|i| *i < len) {
                    refused.push((i, format!("amplitude: {what} field {field}")));
                }
            }
        }
    }
    if refused.is_empty() {
        return Verdict::Split(format!("HTTP 400: {}", r.excerpt()));
    }
    refused.sort();
    refused.dedup_by_key(|r| r.0);
    Verdict::Resend { refused }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(status: u16, body: &str) -> Verdict {
        let a = Amplitude {
            base_url: "http://a".into(),
            api_key: "k".into(),
            batch: 10_000,
        };
        assert_eq!(a.max_events(), 2_000);
        let r = HttpResponse {
            status,
            body: body.as_bytes().to_vec(),
            ..Default::default()
        };
        a.verdict(&r, &[], SystemTime::now())
    }

    #[test]
    fn a_400_with_indexes_parks_those_and_resends_the_rest() {
        let v = verdict(
            400,
            r#"{"code":400,"error":"Request missing required field","events_with_invalid_fields":{"time":[3,1]},"events_with_missing_fields":{"event_type":[1]}}"#,
        );
        // Indexes past the batch (here: it is empty) are ignored, so check with a real length.
        assert!(matches!(v, Verdict::Split(_)));
        let v = bad_request(
            &HttpResponse {
                status: 400,
                body: br#"{"code":400,"events_with_invalid_fields":{"time":[3,1]},"events_with_missing_fields":{"event_type":[1]}}"#.to_vec(),
                ..Default::default()
            },
            5,
        );
        let Verdict::Resend { refused } = v else {
            panic!("{v:?}")
        };
        assert_eq!(refused.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn a_bad_api_key_is_our_config_not_the_events() {
        let v = verdict(
            400,
            r#"{"code":400,"error":"Request missing required field","missing_field":"api_key"}"#,
        );
        assert!(matches!(v, Verdict::Misconfigured(_)), "{v:?}");
        assert!(matches!(
            verdict(429, "{}"),
            Verdict::Retry {
                throttled: true,
                ..
            }
        ));
        assert!(matches!(
            verdict(503, ""),
            Verdict::Retry {
                throttled: false,
                ..
            }
        ));
    }
}
