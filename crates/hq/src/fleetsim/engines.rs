//! The fleet benchmark's journey engines: a Braze-like and an Amplitude-like HTTP server in
//! the bench's process, answering as the engines' documentation says, and counting every
//! event they take by its identity, so "forwarded twice" is counted where it happens.
//!
//! - Braze `POST /users/track`: `Authorization: Bearer <key>`; at most 75 events per request,
//!   else `400`; `201 {"message":"success"}`; now and then `429` with `X-RateLimit-Reset`
//!   (epoch seconds, one second ahead). Braze events carry no id: an event is named by
//!   (`external_id`, `time`), unique in the simulated fleet ([`super::mix`]).
//! - Amplitude `POST /2/httpapi`: the `api_key` in the body; at most 2,000 events, else `413`;
//!   `200 {"code":200,…}`; now and then `429 {"code":429,…}`. An event is named by its
//!   `insert_id`.
//!
//! A throttled request takes nothing. Latency is taken when an event is first taken: now − the
//! event's `time`, which the simulated store set just before committing it to its outbox.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

/// What one engine took.
#[derive(Debug, Default)]
pub struct Tally {
    /// Event identity → times taken.
    pub taken: HashMap<String, u32>,
    /// Per event, at its first take: engine request time − event time, in ms.
    pub latency_ms: Vec<u64>,
    pub requests: u64,
    pub throttled: u64,
    /// Requests refused as malformed (over the limit, bad key): none expected.
    pub refused: u64,
}

impl Tally {
    /// Events taken more than once, counted once per extra take.
    pub fn twice(&self) -> u64 {
        self.taken.values().map(|&c| u64::from(c - 1)).sum()
    }

    fn take(&mut self, keys: Vec<(String, u64)>) {
        let now = unix_ms();
        for (key, time_ms) in keys {
            let count = self.taken.entry(key).or_default();
            *count += 1;
            if *count == 1 {
                self.latency_ms.push(now.saturating_sub(time_ms));
            }
        }
    }
}

/// The two engines' shared state.
pub struct Engines {
    pub braze: Mutex<Tally>,
    pub amplitude: Mutex<Tally>,
    pub api_key: String,
    /// Chance that a request is answered 429.
    pub throttle: f64,
}

impl Engines {
    pub fn new(api_key: &str, throttle: f64) -> Arc<Engines> {
        Arc::new(Engines {
            braze: Mutex::default(),
            amplitude: Mutex::default(),
            api_key: api_key.to_owned(),
            throttle,
        })
    }

    /// Serves both engines on `listener` until the runtime ends.
    pub fn serve(self: &Arc<Self>, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/users/track", post(braze))
            .route("/2/httpapi", post(amplitude))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
    }

    /// (p50, p99) of the latencies of both engines, in ms.
    pub fn percentiles(&self) -> (u64, u64) {
        let mut all = self.braze.lock().unwrap().latency_ms.clone();
        all.extend(self.amplitude.lock().unwrap().latency_ms.iter());
        all.sort_unstable();
        let at = |q: f64| {
            if all.is_empty() {
                return 0;
            }
            all[((all.len() - 1) as f64 * q).round() as usize]
        };
        (at(0.50), at(0.99))
    }
}

pub async fn bind() -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    Ok((l, addr))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn events(body: &[u8]) -> Option<(Value, Vec<Value>)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let events = v.get("events")?.as_array()?.clone();
    Some((v, events))
}

async fn braze(State(e): State<Arc<Engines>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut tally = e.braze.lock().unwrap();
    tally.requests += 1;
    let bearer = format!("Bearer {}", e.api_key);
    if headers.get("authorization").and_then(|h| h.to_str().ok()) != Some(bearer.as_str()) {
        tally.refused += 1;
        let body = r#"{"message":"Invalid API key"}"#;
        return (StatusCode::UNAUTHORIZED, body).into_response();
    }
    let Some((_, events)) = events(&body) else {
        tally.refused += 1;
        return (StatusCode::BAD_REQUEST, r#"{"message":"bad JSON"}"#).into_response();
    };
    if events.len() > 75 {
        tally.refused += 1;
        let body = r#"{"message":"Exceeded the limit of 75 events per request"}"#;
        return (StatusCode::BAD_REQUEST, body).into_response();
    }
    if fastrand::f64() < e.throttle {
        tally.throttled += 1;
        let reset = unix_ms() / 1000 + 1;
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", reset.into());
        let body = r#"{"message":"rate limit exceeded"}"#;
        return (StatusCode::TOO_MANY_REQUESTS, h, body).into_response();
    }
    let keys = events
        .iter()
        .map(|ev| {
            let user = ev["external_id"].as_str().unwrap_or_default();
            let time = ev["time"].as_str().unwrap_or_default();
            let ms = humantime::parse_rfc3339_weak(time)
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_millis() as u64);
            (format!("{user}|{time}"), ms)
        })
        .collect();
    tally.take(keys);
    (StatusCode::CREATED, r#"{"message":"success"}"#).into_response()
}

async fn amplitude(State(e): State<Arc<Engines>>, body: Bytes) -> Response {
    let mut tally = e.amplitude.lock().unwrap();
    tally.requests += 1;
    let Some((v, events)) = events(&body) else {
        tally.refused += 1;
        let body = json!({"code": 400, "error": "Invalid JSON request body"}).to_string();
        return (StatusCode::BAD_REQUEST, body).into_response();
    };
    if v["api_key"].as_str() != Some(e.api_key.as_str()) {
        tally.refused += 1;
        let body = json!({"code": 400, "error": "Invalid API key"}).to_string();
        return (StatusCode::BAD_REQUEST, body).into_response();
    }
    if events.len() > 2000 || body.len() >= 1_000_000 {
        tally.refused += 1;
        let body = json!({"code": 413, "error": "Payload too large"}).to_string();
        return (StatusCode::PAYLOAD_TOO_LARGE, body).into_response();
    }
    if fastrand::f64() < e.throttle {
        tally.throttled += 1;
        let body = json!({"code": 429, "error": "Too many requests for some devices and users",
                          "eps_threshold": 30})
        .to_string();
        return (StatusCode::TOO_MANY_REQUESTS, body).into_response();
    }
    let keys = events
        .iter()
        .map(|ev| {
            let id = ev["insert_id"].as_str().unwrap_or_default().to_owned();
            (id, ev["time"].as_u64().unwrap_or(0))
        })
        .collect();
    tally.take(keys);
    let n = events.len();
    let body = json!({"code": 200, "events_ingested": n, "payload_size_bytes": body.len(),
                      "server_upload_time": unix_ms()});
    (StatusCode::OK, body.to_string()).into_response()
}
