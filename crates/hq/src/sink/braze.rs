//! Braze `POST /users/track`. Pure: the request and the reading of its answer.
//!
//! - At most 75 events (and 75 attribute objects) per request; `external_id` is the app's
//!   user id, so anonymous events are not for Braze.
//! - `Authorization: Bearer <REST API key>`.
//! - `201` (or `200`) may carry `errors: [{type, input_array, index}]`: those objects were
//!   refused, the rest processed. A refused attribute object parks the event that carried it.
//! - `429` with `X-RateLimit-Reset` (epoch seconds): wait until then.
//! - Braze does not de-duplicate: the runner never repeats a request whose answer it read.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::engine::{common_verdict, Engine, HttpRequest, HttpResponse, Verdict};
use super::mapping::Mapped;

/// Braze's documented limit per request.
pub const MAX_EVENTS: usize = 75;
/// Far above 75 events of ours; Braze's own cap on a request body is larger.
const MAX_BYTES: usize = 4 * 1024 * 1024;

pub struct Braze {
    /// The REST endpoint's base, e.g. `https://rest.iad-01.braze.com`.
    pub base_url: String,
    pub api_key: String,
    pub batch: usize,
}

impl Engine for Braze {
    fn max_events(&self) -> usize {
        self.batch.min(MAX_EVENTS)
    }

    fn max_bytes(&self) -> usize {
        MAX_BYTES
    }

    fn accepts(&self, e: &Mapped) -> bool {
        e.userid.is_some()
    }

    fn request(&self, batch: &[Mapped]) -> HttpRequest {
        let events: Vec<Value> = batch
            .iter()
            .map(|e| {
                json!({
                    "external_id": e.userid,
                    "name": e.name,
                    "time": e.time,
                    "properties": e.properties,
                })
            })
            .collect();
        let attributes: Vec<Value> = batch
            .iter()
            .filter(|e| !e.user_attributes.is_empty())
            .map(|e| {
                let mut a = e.user_attributes.clone();
                a.insert("external_id".into(), json!(e.userid));
                Value::Object(a)
            })
            .collect();
        let mut body = json!({ "events": events });
        if !attributes.is_empty() {
            body["attributes"] = Value::Array(attributes);
        }
        HttpRequest {
            url: format!("{}/users/track", self.base_url.trim_end_matches('/')),
            headers: vec![
                ("authorization", format!("Bearer {}", self.api_key)),
                ("content-type", "application/json".into()),
            ],
            body: body.to_string().into_bytes(),
        }
    }

    fn verdict(&self, r: &HttpResponse, batch: &[Mapped], now: SystemTime) -> Verdict {
        match r.status {
            200 | 201 => Verdict::Done {
                refused: partial_errors(&r.body, batch),
            },
            429 => Verdict::Retry {
                at: r
                    .header("x-ratelimit-reset")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| UNIX_EPOCH + Duration::from_secs(s))
                    .or_else(|| r.retry_after(now)),
                throttled: true,
                reason: "HTTP 429 (rate limit)".into(),
            },
            _ => common_verdict(r, now),
        }
    }
}

/// The batch indexes refused in a `201`'s `errors`, with the reason. An attribute object's
/// index is mapped back to the event that carried it (the request lists only the events with
/// attributes, in batch order).
fn partial_errors(body: &[u8], batch: &[Mapped]) -> Vec<(usize, String)> {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let owners: Vec<usize> = (0..batch.len())
        .filter(|i| !batch[*i].user_attributes.is_empty())
        .collect();
    let mut refused: Vec<(usize, String)> = v
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|err| {
            let index = err.get("index")?.as_u64()? as usize;
            let array = err.get("input_array")?.as_str()?;
            let kind = err.get("type").and_then(Value::as_str).unwrap_or("refused");
            let at = match array {
                "events" => index,
                "attributes" => *owners.get(index)?,
                _ => return None,
            };
            (at < batch.len()).then(|| (at, format!("braze {array}[{index}]: {kind}")))
        })
        .collect();
    refused.sort();
    refused.dedup_by_key(|r| r.0);
    refused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::mapping::Mapping;

    fn batch() -> Vec<Mapped> {
        let body = |n: u64, ty: &str| {
            format!(
                r#"{{"id":"id-{n}","type":"{ty}","time":"2026-11-23T05:09:30.777Z","storeid":"s","stationid":"k","userid":"u{n}","data":{{"measures":{{"a":1}},"skin_type":"dry"}}}}"#
            )
        };
        let m = Mapping::default();
        vec![
            m.map(1, &body(1, "store.qr.scanned")).unwrap(),
            m.map(2, &body(2, "store.skin.diagnosed")).unwrap(),
            m.map(3, &body(3, "store.skin.diagnosed")).unwrap(),
        ]
    }

    fn braze() -> Braze {
        Braze {
            base_url: "http://b/".into(),
            api_key: "k".into(),
            batch: 500,
        }
    }

    #[test]
    fn a_request_names_the_user_and_sets_the_attributes() {
        let b = braze();
        assert_eq!(b.max_events(), 75, "never above Braze's limit");
        let r = b.request(&batch());
        assert_eq!(r.url, "http://b/users/track");
        assert!(r.headers.contains(&("authorization", "Bearer k".into())));
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["events"][1]["external_id"], "u2");
        assert_eq!(v["events"][1]["name"], "skin_diagnosed");
        assert_eq!(
            v["attributes"][0],
            json!({"external_id": "u2", "skin_type": "dry"})
        );
    }

    #[test]
    fn partial_errors_name_the_events_to_park() {
        let r = HttpResponse {
            status: 201,
            body: br#"{"message":"success","errors":[{"type":"bad time","input_array":"events","index":0},{"type":"bad attr","input_array":"attributes","index":1}]}"#.to_vec(),
            ..Default::default()
        };
        let Verdict::Done { refused } = braze().verdict(&r, &batch(), SystemTime::now()) else {
            panic!()
        };
        assert_eq!(refused.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 2]);
        assert!(refused[0].1.contains("bad time"));
    }

    #[test]
    fn a_429_waits_for_the_reset_header() {
        let r = HttpResponse {
            status: 429,
            headers: vec![("x-ratelimit-reset".into(), "1795410600".into())],
            ..Default::default()
        };
        let v = braze().verdict(&r, &batch(), SystemTime::now());
        assert!(
            matches!(v, Verdict::Retry { at: Some(t), throttled: true, .. }
            if t == UNIX_EPOCH + Duration::from_secs(1_795_410_600))
        );
    }
}
