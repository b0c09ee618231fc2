//! A generic webhook: any HTTP endpoint receives the events as CloudEvents, in the HTTP
//! binding's *structured* mode. Pure: the request and the reading of its answer.
//!
//! - One event per request, `POST {url}`, `Content-Type: application/cloudevents+json`, the
//!   stored event unchanged as the body (it is a CloudEvents 1.0 envelope already).
//!   Structured mode rather than batched (`application/cloudevents-batch+json`): each request
//!   then has one event id, which is its `Idempotency-Key`, so a receiver de-duplicates with
//!   the key alone, the way payment APIs do; the cost is a request per event.
//! - `Idempotency-Key: <event id>`: the only repeat the runner makes (a request whose fate
//!   is unknown, counted as ambiguous) carries the same key, so a receiver that keeps the keys
//!   it has processed takes every event exactly once.
//! - `X-Phygate-Signature: sha256=<hex>`: HMAC-SHA256 of the exact body bytes with the
//!   sink's secret, lower-case hex (the scheme GitHub's `X-Hub-Signature-256` uses). The
//!   receiver computes the same over the raw body and compares in constant time.
//! - `2xx`: taken. `429`, `5xx`, `408`, `409`: retry, after `Retry-After` (seconds) when
//!   given, else the backoff. `401`, `403`, `404`: our config (secret, URL); retried with
//!   the backoff and logged. Any other `4xx`: the receiver refuses this event for good: it is
//!   parked and counted.
//! - Anonymous events go only when the sink's `anonymous = true`.

use std::time::SystemTime;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::engine::{common_verdict, Engine, HttpRequest, HttpResponse, Verdict};
use super::mapping::Mapped;

pub const CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";
pub const SIGNATURE_HEADER: &str = "x-phygate-signature";
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// One stored event is far below this; a receiver's own cap is usually about 1 MB.
const MAX_BYTES: usize = 1_000_000;

pub struct Webhook {
    /// The full endpoint URL (nothing is appended).
    pub url: String,
    pub secret: String,
    /// Whether events without a `userid` are sent.
    pub anonymous: bool,
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    // Hex by hand: 32 bytes do not warrant a crate.
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

impl Engine for Webhook {
    fn max_events(&self) -> usize {
        1
    }

    fn max_bytes(&self) -> usize {
        MAX_BYTES
    }

    fn accepts(&self, e: &Mapped) -> bool {
        self.anonymous || e.userid.is_some()
    }

    fn request(&self, batch: &[Mapped]) -> HttpRequest {
        let (body, id) = match batch.first() {
            Some(e) => (e.body.to_string().into_bytes(), e.id.clone()),
            None => (Vec::new(), String::new()),
        };
        HttpRequest {
            url: self.url.clone(),
            headers: vec![
                ("content-type", CONTENT_TYPE.into()),
                (IDEMPOTENCY_HEADER, id),
                (SIGNATURE_HEADER, signature(self.secret.as_bytes(), &body)),
            ],
            body,
        }
    }

    fn verdict(&self, r: &HttpResponse, batch: &[Mapped], now: SystemTime) -> Verdict {
        match r.status {
            200..=299 => Verdict::Done {
                refused: Vec::new(),
            },
            401 | 403 | 404 | 408 | 409 | 429 | 500..=599 => common_verdict(r, now),
            status => Verdict::Done {
                refused: (0..batch.len())
                    .map(|i| (i, format!("webhook: HTTP {status}: {}", r.excerpt())))
                    .collect(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::mapping::Mapping;

    fn event(user: bool) -> Mapped {
        let user = if user { r#""userid":"u-1","# } else { "" };
        let body = format!(
            r#"{{"specversion":"1.0","id":"0193b6a6-55e0-7123-9abc-def012345678","type":"store.visit.started","time":"2026-11-23T05:09:30.777Z",{user}"storeid":"s","stationid":"k","data":{{"visit":"v"}}}}"#
        );
        Mapping::default().map(4, &body).unwrap()
    }

    fn hook(anonymous: bool) -> Webhook {
        Webhook {
            url: "http://h/in".into(),
            secret: "s3cret".into(),
            anonymous,
        }
    }

    #[test]
    fn a_request_is_one_signed_cloudevent_keyed_by_its_id() {
        let e = event(true);
        let r = hook(false).request(std::slice::from_ref(&e));
        assert_eq!(r.url, "http://h/in");
        let header = |k: &str| r.headers.iter().find(|h| h.0 == k).unwrap().1.clone();
        assert_eq!(header(IDEMPOTENCY_HEADER), e.id);
        assert!(header("content-type").starts_with("application/cloudevents+json"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v, e.body, "the stored event, unchanged");
        // RFC 4231 test case 2, to pin the scheme against a published vector.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(header(SIGNATURE_HEADER), signature(b"s3cret", &r.body));
    }

    #[test]
    fn anonymous_events_only_when_configured_and_a_4xx_parks() {
        assert!(!hook(false).accepts(&event(false)));
        assert!(hook(true).accepts(&event(false)));
        let now = SystemTime::now();
        let answer = |status| HttpResponse {
            status,
            ..Default::default()
        };
        let batch = [event(true)];
        assert!(matches!(
            hook(true).verdict(&answer(422), &batch, now),
            Verdict::Done { refused } if refused.len() == 1
        ));
        assert!(matches!(
            hook(true).verdict(&answer(503), &batch, now),
            Verdict::Retry {
                throttled: false,
                ..
            }
        ));
        assert!(matches!(
            hook(true).verdict(&answer(401), &batch, now),
            Verdict::Misconfigured(_)
        ));
    }
}
