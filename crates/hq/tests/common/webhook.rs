//! A webhook receiver as a careful integrator writes one: it checks the HMAC-SHA256 signature
//! over the raw body (computed here with the `hmac` crate, not with phygate's code), checks
//! that the `Idempotency-Key` is the CloudEvent's id, and counts every event it takes by that
//! key, so "forwarded twice" is counted where it happens. A script makes it answer 429 (with
//! `Retry-After`), 500, or a permanent 422 first.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How the receiver answers the next request.
#[derive(Debug, Clone)]
pub enum Answer {
    Ok,
    /// 429 with `Retry-After: secs`.
    Throttle(u64),
    Status500,
}

#[derive(Default)]
pub struct Receiver {
    pub secret: String,
    pub script: Mutex<VecDeque<Answer>>,
    /// Ids refused for good (422) whenever they come.
    pub refuse: Mutex<BTreeSet<String>>,
    /// Id → times taken.
    pub taken: Mutex<BTreeMap<String, u32>>,
    /// Each request: when, its id, the status answered.
    pub requests: Mutex<Vec<(SystemTime, String, u16)>>,
    /// Requests whose signature or headers did not check out.
    pub rejected: Mutex<Vec<String>>,
}

impl Receiver {
    pub fn new(secret: &str) -> Arc<Receiver> {
        Arc::new(Receiver {
            secret: secret.into(),
            ..Default::default()
        })
    }

    pub fn taken(&self) -> BTreeMap<String, u32> {
        self.taken.lock().unwrap().clone()
    }

    /// Events taken more than once, counted once per repeat.
    pub fn twice(&self) -> u64 {
        self.taken().values().map(|c| u64::from(c - 1)).sum()
    }

    /// Serves on a free loopback port, path `/hook`.
    pub async fn serve(self: &Arc<Receiver>) -> SocketAddr {
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    fn check(&self, headers: &HeaderMap, body: &[u8]) -> Result<String, String> {
        let header = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or(format!("no {k}"))
        };
        let signature = header("x-phygate-signature")?;
        let hex = signature.strip_prefix("sha256=").ok_or("not sha256=")?;
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.as_bytes()).unwrap();
        mac.update(body);
        // verify_slice compares in constant time, as a receiver must.
        mac.verify_slice(&bytes).map_err(|_| "bad signature")?;
        if !header("content-type")?.starts_with("application/cloudevents+json") {
            return Err("not structured CloudEvents".into());
        }
        let event: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let key = header("idempotency-key")?;
        if event["id"] != key.as_str() || event["specversion"] != "1.0" {
            return Err(format!("key {key} is not the event's id"));
        }
        Ok(key)
    }
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Response {
    let key = match r.check(&headers, &body) {
        Ok(k) => k,
        Err(why) => {
            r.rejected.lock().unwrap().push(why);
            return StatusCode::UNAUTHORIZED.into_response();
        }
    };
    let refused = r.refuse.lock().unwrap().contains(&key);
    let answer = if refused {
        None
    } else {
        Some(r.script.lock().unwrap().pop_front().unwrap_or(Answer::Ok))
    };
    let (status, response) = match answer {
        None => (
            422,
            (StatusCode::UNPROCESSABLE_ENTITY, "unknown store").into_response(),
        ),
        Some(Answer::Ok) => {
            *r.taken.lock().unwrap().entry(key.clone()).or_default() += 1;
            (200, StatusCode::OK.into_response())
        }
        Some(Answer::Throttle(secs)) => {
            let mut h = HeaderMap::new();
            h.insert("retry-after", secs.to_string().parse().unwrap());
            (429, (StatusCode::TOO_MANY_REQUESTS, h).into_response())
        }
        Some(Answer::Status500) => (500, StatusCode::INTERNAL_SERVER_ERROR.into_response()),
    };
    r.requests
        .lock()
        .unwrap()
        .push((SystemTime::now(), key, status));
    response
}
