//! Local HTTP ingest: the listener network devices push to (docs/protocols.md §3b, §4).
//!
//! - `POST /v1/stations/{station}/counts`: a people counter's interval counts → one
//!   `store.gate.passed` per non-zero direction (`gate` = the counter's id).
//! - `POST /v1/stations/{station}/skin`: a tablet analyzer's SKN1 JSON (no CRC) →
//!   `store.skin.diagnosed`.
//!
//! Every device authenticates with its bearer token from config; the token names the device.
//! Answers, checked in this order:
//! `404` unknown station, `401` no or unknown token (for this endpoint's kind of device),
//! `403` a valid token of a device at another station (or a counts body naming another
//! device), `413` body over the cap (counts 64 KiB, skin 16 KiB), `400` bad body with a JSON
//! `error` and `detail`, `503` when the link or the outbox refuses (shutdown, disk full), and
//! `202` only once every event of the post is durable in the outbox.
//!
//! Idempotent: the same device + interval (counts), or device + `model` + `seq` within 24 h
//! (skin), is one post. Its [`receipt`] is written in the same transaction as its events; a
//! repeat answers `202` with the original events and creates nothing. Posts of one device are
//! serialized, so two concurrent identical posts cannot both insert.
//!
//! Requests go through the link ([`LinkHandle`]) so identity rules apply to them as to serial
//! readings; this stage stores the events itself to know when they are durable.

pub mod counts;
pub mod receipt;
pub mod retention;
pub mod settings;

pub use settings::{Endpoint, HttpDeviceConfig, IngestConfig, IngestSettings, Token};

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::json;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use self::counts::CountsPost;
use self::receipt::{Created, Receipt};
use crate::clock::unix_ms;
use crate::event::Event;
use crate::link::LinkHandle;
use crate::outbox::{OutboxHandle, StateWrite};
use crate::shutdown::Shutdown;
use crate::sources::skin::skn1;
use crate::sources::{Observation, Passage, Reading};
use crate::station::Direction;

/// How often receipts past their time (and a tablet's sightings past the window) are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// What a `503` tells the device to wait before retrying.
const RETRY_AFTER_S: &str = "5";

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The listen address is taken or not ours: fix `[ingest] listen`.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the ingest listener failed: {0}")]
    Serve(std::io::Error),
}

struct Device {
    id: Arc<str>,
    station: Arc<str>,
    endpoint: Endpoint,
    token: Token,
    /// Held from the idempotency lookup until the post's events are durable.
    lock: Arc<Mutex<()>>,
}

struct Shared {
    stations: HashSet<String>,
    devices: Vec<Device>,
    link: LinkHandle,
    outbox: OutboxHandle,
}

pub struct Ingest {
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    shutdown: Shutdown,
}

impl Ingest {
    /// Binds the listener (the wiring starts none when no device posts here).
    pub async fn bind(
        settings: IngestSettings,
        link: LinkHandle,
        outbox: OutboxHandle,
        shutdown: Shutdown,
    ) -> Result<Ingest, IngestError> {
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|source| IngestError::Bind {
                addr: settings.listen,
                source,
            })?;
        let devices = settings
            .devices
            .into_iter()
            .map(|d| Device {
                id: d.id.into(),
                station: d.station.into(),
                endpoint: d.endpoint,
                token: d.token,
                lock: Arc::default(),
            })
            .collect();
        let shared = Arc::new(Shared {
            stations: settings.stations.into_iter().collect(),
            devices,
            link,
            outbox,
        });
        Ok(Ingest {
            listener,
            shared,
            shutdown,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until shutdown, then lets requests in progress finish.
    pub async fn run(self) -> Result<(), IngestError> {
        let addr = self.local_addr().map_err(IngestError::Serve)?;
        info!(%addr, "ingest listening");
        let router = Router::new()
            .route(
                "/v1/stations/{station}/counts",
                post(post_counts).layer(DefaultBodyLimit::max(counts::MAX_BODY)),
            )
            .route(
                "/v1/stations/{station}/skin",
                post(post_skin).layer(DefaultBodyLimit::max(skn1::MAX_JSON_BODY)),
            )
            .with_state(self.shared.clone());
        let shutdown = self.shutdown;
        let serve = axum::serve(self.listener, router)
            .with_graceful_shutdown(async move { shutdown.stopped().await });
        tokio::select! {
            r = serve => r.map_err(IngestError::Serve),
            // Never ends; dropping it mid-prune only leaves some stale receipts for next time.
            () = prune_forever(&self.shared) => Ok(()),
        }
    }
}

/// A refusal or an acceptance, as the device sees it.
#[derive(Debug)]
enum Answer {
    Accepted {
        events: Vec<Created>,
        duplicate: bool,
    },
    Refused {
        status: StatusCode,
        error: &'static str,
        detail: String,
    },
}

impl Answer {
    fn refused(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Answer {
        Answer::Refused {
            status,
            error,
            detail: detail.into(),
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let json = [(header::CONTENT_TYPE, "application/json")];
        match self {
            Answer::Accepted { events, duplicate } => (
                StatusCode::ACCEPTED,
                json,
                json!({ "events": events, "duplicate": duplicate }).to_string(),
            )
                .into_response(),
            Answer::Refused {
                status,
                error,
                detail,
            } => {
                crate::metrics::INGEST_REJECTED.inc();
                let body = json!({ "error": error, "detail": detail }).to_string();
                let mut response = (status, json, body).into_response();
                let headers = response.headers_mut();
                if status == StatusCode::UNAUTHORIZED {
                    headers.insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
                }
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    headers.insert(header::RETRY_AFTER, RETRY_AFTER_S.parse().unwrap());
                }
                response
            }
        }
    }
}

async fn post_counts(
    State(shared): State<Arc<Shared>>,
    Path(station): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let (device, body) = match shared.admit(Endpoint::Counts, &station, &headers, body) {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let post = match counts::parse_counts(&body, unix_ms(SystemTime::now())) {
        Ok(p) => p,
        Err(e) => return Answer::refused(StatusCode::BAD_REQUEST, e.reason(), e.to_string()),
    };
    if *post.device != *device.id {
        return Answer::refused(
            StatusCode::FORBIDDEN,
            "wrong_device",
            format!(
                "the token is device {:?}'s, the body names {:?}",
                device.id, post.device
            ),
        );
    }
    let _serial = device.lock.lock().await;
    shared.counts(device, post).await
}

async fn post_skin(
    State(shared): State<Arc<Shared>>,
    Path(station): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let (device, body) = match shared.admit(Endpoint::Skin, &station, &headers, body) {
        Ok(admitted) => admitted,
        Err(refused) => return refused,
    };
    let reading = match skn1::parse_json_body(&body) {
        Ok(r) => r,
        Err(e) => return Answer::refused(StatusCode::BAD_REQUEST, e.reason(), e.to_string()),
    };
    let _serial = device.lock.lock().await;
    shared.skin(device, reading).await
}

impl Shared {
    /// Station, token and body size: everything but the body's content.
    fn admit(
        &self,
        endpoint: Endpoint,
        station: &str,
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<(&Device, Bytes), Answer> {
        if !self.stations.contains(station) {
            return Err(Answer::refused(
                StatusCode::NOT_FOUND,
                "unknown_station",
                format!("no station {station:?} in this store"),
            ));
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .ok_or_else(|| {
                Answer::refused(
                    StatusCode::UNAUTHORIZED,
                    "no_token",
                    "send `Authorization: Bearer <the device's token>`",
                )
            })?;
        let device = self
            .devices
            .iter()
            .find(|d| d.endpoint == endpoint && d.token.matches(token))
            .ok_or_else(|| {
                Answer::refused(
                    StatusCode::UNAUTHORIZED,
                    "bad_token",
                    "the token is not a device's token for this endpoint",
                )
            })?;
        if *device.station != *station {
            return Err(Answer::refused(
                StatusCode::FORBIDDEN,
                "wrong_station",
                format!(
                    "device {:?} is at station {:?}, not {station:?}",
                    device.id, device.station
                ),
            ));
        }
        let body = body.map_err(|e| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Answer::refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("the body exceeds {} bytes", endpoint.max_body()),
            ),
            _ => Answer::refused(StatusCode::BAD_REQUEST, "unreadable_body", e.body_text()),
        })?;
        Ok((device, body))
    }

    /// Stores a counts post's events (one per non-zero direction), or answers a repeat with
    /// the original ones. Called with the device's lock held.
    async fn counts(&self, device: &Device, post: CountsPost) -> Answer {
        let key = receipt::counts_key(&device.id, &post.from, &post.to);
        let found = match self.receipt(&key).await {
            Ok(found) => found,
            Err(refused) => return refused,
        };
        let duplicate = found.is_some();
        let mut receipt = found.unwrap_or(Receipt {
            events: Vec::new(),
            // Until a repeat of this interval would be refused as too old anyway.
            keep_until_ms: post.to_ms.max(unix_ms(SystemTime::now())) + counts::KEPT_MS,
            counts: Some([post.people_in, post.people_out]),
        });
        if duplicate && receipt.counts != Some([post.people_in, post.people_out]) {
            warn!(device = %device.id, from = %post.from, to = %post.to, "a repeated interval with other counts; the first post stands");
        }
        let pending = receipt.pending();
        if pending.is_empty() && !duplicate {
            // Nothing to count, but the interval is taken: later posts of it are repeats.
            if let Err(e) = self
                .outbox
                .put_state(key.clone(), Some(receipt.encode()))
                .await
            {
                return unavailable(&e);
            }
        }
        for (direction, count) in pending {
            let passage = Passage {
                direction,
                count,
                interval: Some((post.from.clone(), post.to.clone())),
            };
            let event = match self.link(device, Observation::Passed(passage)).await {
                Ok(e) => e,
                Err(refused) => return refused,
            };
            receipt.events.push(created(&event, Some(direction)));
            let state = vec![(key.clone(), Some(receipt.encode()))];
            if let Err(refused) = self.store(event, state).await {
                return refused;
            }
        }
        Answer::Accepted {
            events: receipt.events,
            duplicate,
        }
    }

    /// Stores a tablet's reading, or answers a repeat of its `model` + `seq` within 24 h.
    /// Called with the device's lock held.
    async fn skin(&self, device: &Device, reading: skn1::SkinReading) -> Answer {
        let key = reading
            .seq
            .map(|seq| receipt::skin_key(&device.id, &reading.model, seq));
        if let Some(key) = &key {
            match self.receipt(key).await {
                Ok(Some(receipt)) => {
                    return Answer::Accepted {
                        events: receipt.events,
                        duplicate: true,
                    }
                }
                Ok(None) => {}
                Err(refused) => return refused,
            }
        }
        let event = match self.link(device, Observation::Skin(reading)).await {
            Ok(e) => e,
            Err(refused) => return refused,
        };
        let receipt = Receipt {
            events: vec![created(&event, None)],
            keep_until_ms: unix_ms(event.time) + skn1::DEDUP_WINDOW_MS,
            counts: None,
        };
        let state = key
            .map(|k| (k, Some(receipt.encode())))
            .into_iter()
            .collect();
        match self.store(event, state).await {
            Ok(()) => Answer::Accepted {
                events: receipt.events,
                duplicate: false,
            },
            Err(refused) => refused,
        }
    }

    /// The live receipt under `key`, if any: one index probe, whatever the table holds.
    async fn receipt(&self, key: &str) -> Result<Option<Receipt>, Answer> {
        let value = self
            .outbox
            .state_value(key)
            .await
            .map_err(|e| unavailable(&e))?;
        let now = unix_ms(SystemTime::now());
        Ok(value
            .and_then(|v| Receipt::decode(&v))
            .filter(|r| r.live(now)))
    }

    async fn link(&self, device: &Device, observation: Observation) -> Result<Event, Answer> {
        let reading = Reading {
            device: device.id.clone(),
            station: device.station.clone(),
            at: SystemTime::now(),
            observation,
        };
        self.link.link(reading).await.map_err(|e| {
            Answer::refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                e.to_string(),
            )
        })
    }

    /// Appends and waits until durable.
    async fn store(&self, event: Event, state: Vec<StateWrite>) -> Result<(), Answer> {
        let (id, ty) = (event.id, event.data.type_name());
        match self.outbox.append_with_state(event, state).await {
            Ok(seq) => {
                debug!(%id, ty, seq, "ingest event durable");
                Ok(())
            }
            Err(e) => Err(unavailable(&e)),
        }
    }

    /// Deletes every device's receipts past their time, and a tablet's sightings past the
    /// window ([`retention`]). Each device's under its lock, so a post cannot renew a receipt
    /// between the read and the delete.
    async fn prune(&self) {
        let now = unix_ms(SystemTime::now());
        for device in &self.devices {
            let _serial = device.lock.lock().await;
            let skin = device.endpoint == Endpoint::Skin;
            match retention::prune_device(&self.outbox, &device.id, skin, now).await {
                Ok(0) => {}
                Ok(n) => debug!(device = %device.id, keys = n, "ingest state pruned"),
                Err(e) => {
                    warn!(error = %e, "cannot prune ingest state");
                    return;
                }
            }
        }
    }
}

async fn prune_forever(shared: &Shared) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    loop {
        every.tick().await;
        shared.prune().await;
    }
}

impl Endpoint {
    fn max_body(self) -> usize {
        match self {
            Endpoint::Counts => counts::MAX_BODY,
            Endpoint::Skin => skn1::MAX_JSON_BODY,
        }
    }
}

fn created(event: &Event, direction: Option<Direction>) -> Created {
    Created {
        id: event.id.hyphenated().to_string(),
        ty: event.data.type_name().into(),
        direction: direction.map(|d| d.as_str().into()),
    }
}

fn unavailable(e: &crate::outbox::OutboxError) -> Answer {
    warn!(error = %e, "ingest post not stored");
    Answer::refused(StatusCode::SERVICE_UNAVAILABLE, "not_stored", e.to_string())
}
