//! Link: turns device readings into journey events. This is where identity is attached (app
//! tokens, NFC members, station sessions, visits); a source never knows about users.
//!
//! Readings arrive two ways: on the sources' channel (fire and forget: the outbox makes them
//! durable in its next group), and through a [`LinkHandle`] from a caller that must know the
//! event before it answers its device (HTTP ingest: `202` only once durable, idempotent replays).

pub mod cardhash;
mod classify;
pub mod jwks;
pub mod nfc;
pub mod replay;
pub mod token;

pub use classify::{classify_code, CodeKind};

use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::event::{
    DeviceStatusData, Event, EventData, GatePassed, IdSource, QrScanned, SkinDiagnosed,
};
use crate::outbox::{OutboxError, OutboxHandle, StateWrite};
use crate::sources::gate::state_key as gate_state_key;
use crate::sources::{Observation, Reading};

/// Readings waiting in a [`LinkHandle`]'s queue; when full, callers wait (HTTP requests queue).
const HANDLE_QUEUE: usize = 64;

pub struct Link {
    readings: mpsc::Receiver<Reading>,
    outbox: OutboxHandle,
    requests: Option<mpsc::Receiver<Request>>,
    settings: LinkSettings,
    board: crate::status::Board,
}

/// What the link needs from the config. No `Debug`: it holds the tenant's card key.
#[derive(Clone, Default)]
pub struct LinkSettings {
    /// The tenant's card key (PROTOCOLS.md §6); taps carry no card hash without it.
    pub card_key: Option<[u8; cardhash::CARD_KEY_LEN]>,
}

impl LinkSettings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        LinkSettings {
            card_key: config.identity.card_key,
        }
    }
}

/// A reading whose caller wants its event back (and stores it itself).
struct Request {
    reading: Reading,
    reply: oneshot::Sender<Event>,
}

/// A cloneable handle for callers that turn a reading into an event and wait for it.
#[derive(Clone)]
pub struct LinkHandle {
    tx: mpsc::Sender<Request>,
}

/// The link has stopped (shutdown): the caller should refuse its device (e.g. HTTP 503).
#[derive(Debug, thiserror::Error)]
#[error("the link is closed")]
pub struct LinkClosed;

impl LinkHandle {
    /// The event for `reading`, with whatever identity the link's rules attach. The caller
    /// stores it (e.g. `append_with_state`) and so knows when it is durable.
    pub async fn link(&self, reading: Reading) -> Result<Event, LinkClosed> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(Request { reading, reply })
            .await
            .map_err(|_| LinkClosed)?;
        wait.await.map_err(|_| LinkClosed)
    }
}

impl Link {
    pub fn new(
        readings: mpsc::Receiver<Reading>,
        outbox: OutboxHandle,
        settings: LinkSettings,
    ) -> Self {
        Link {
            readings,
            outbox,
            requests: None,
            settings,
            board: Default::default(),
        }
    }

    /// Posts every reading's device state and time on `board` (the status page).
    pub fn with_board(mut self, board: crate::status::Board) -> Self {
        self.board = board;
        self
    }

    /// A handle for request/answer callers (call once, clone the handle); the link runs until
    /// its clones and the sources are gone.
    pub fn handle(&mut self) -> LinkHandle {
        let (tx, rx) = mpsc::channel(HANDLE_QUEUE);
        self.requests = Some(rx);
        LinkHandle { tx }
    }

    /// Runs until every source and handle has dropped its sender, then returns with everything
    /// handed on.
    pub async fn run(mut self) -> Result<(), OutboxError> {
        let mut readings_open = true;
        let mut requests = self.requests.take();
        loop {
            tokio::select! {
                // Both branches are cancel-safe: mpsc::Receiver::recv loses nothing when the
                // other branch wins.
                r = self.readings.recv(), if readings_open => match r {
                    Some(reading) => {
                        crate::metrics::READINGS.inc();
                        self.board.observe(&reading);
                        // State a source must find again after a restart (a gate's baseline,
                        // a skin reading's dedupe key) commits with the event that moved it, or
                        // alone: after a crash both are there or neither.
                        let state = state_of(&reading);
                        match to_event(&self.settings, reading) {
                            Some(event) => {
                                debug!(id = %event.id, ty = event.data.type_name(), "event");
                                self.outbox.submit_with_state(event, state).await?;
                            }
                            None => {
                                for (key, value) in state {
                                    self.outbox.put_state(key, value).await?;
                                }
                            }
                        }
                    }
                    None => readings_open = false,
                },
                r = recv_opt(&mut requests), if requests.is_some() => match r {
                    Some(Request { reading, reply }) => {
                        crate::metrics::READINGS.inc();
                        self.board.observe(&reading);
                        // Callers send only readings that make events; for any other the caller
                        // sees the reply dropped and refuses its device.
                        if let Some(event) = to_event(&self.settings, reading) {
                            debug!(id = %event.id, ty = event.data.type_name(), "event (awaited)");
                            // The caller may have given up (HTTP client gone); it stored nothing.
                            let _ = reply.send(event);
                        }
                    }
                    None => requests = None,
                },
                else => break,
            }
        }
        Ok(())
    }
}

/// Receives from an optional queue (the branch is disabled while it is `None`).
async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// State committed with a reading's event: what a source must find again after a restart.
fn state_of(reading: &Reading) -> Vec<StateWrite> {
    match &reading.observation {
        Observation::GatePassed { counters, .. } | Observation::GateBaseline(counters) => {
            vec![(gate_state_key(&reading.device), Some(counters.encode()))]
        }
        Observation::Skin(skin) => {
            crate::sources::skin::seen_state(&reading.device, skin, reading.at)
                .into_iter()
                .collect()
        }
        _ => Vec::new(),
    }
}

/// One reading → one event (none for a reading that only moves state). Pure: the identity rules
/// plug in here.
pub fn to_event(settings: &LinkSettings, reading: Reading) -> Option<Event> {
    let data = match reading.observation {
        Observation::Code(code) => {
            let kind = classify_code(&code.payload);
            EventData::QrScanned(QrScanned {
                kind: kind.as_str(),
                symbology: code.symbology,
                aim: code.aim,
                // An app token is a bearer credential while it lives: never forwarded.
                payload: (kind != CodeKind::AppToken).then_some(code.payload),
                kid: None,
                jti: None,
                verdict: None,
                gate_opened: None,
            })
        }
        Observation::Status(s) => EventData::DeviceStatus(DeviceStatusData {
            device: reading.device.to_string(),
            kind: s.kind,
            state: s.state,
            reason: s.reason,
            count: s.count,
        }),
        // Identity seam: a diagnosis at kiosk K within the session window of a verified scan
        // at K belongs to that user (DESIGN.md). Until sessions land here it stays anonymous.
        Observation::Skin(skin) => EventData::SkinDiagnosed(SkinDiagnosed {
            model: skin.model,
            measures: skin.measures,
            extra: skin.extra,
            skin_type: skin.skin_type.map(|t| t.as_str()),
            device_seq: skin.seq,
            device_time: skin.device_time,
        }),
        Observation::GatePassed {
            direction, count, ..
        } => EventData::GatePassed(GatePassed {
            gate: reading.device.to_string(),
            direction,
            count: u64::from(count),
            from: None,
            to: None,
        }),
        Observation::GateBaseline(_) => return None,
        Observation::NfcTap(tap) => {
            let (data, member) = nfc::tapped(settings.card_key.as_ref(), &tap);
            let mut event = Event::new(reading.station, reading.at, EventData::NfcTapped(data));
            if let Some(user) = member {
                event.userid = Some(user);
                event.idsource = IdSource::NfcMember;
            }
            return Some(event);
        }
        Observation::Passed(p) => {
            let (from, to) = p.interval.unzip();
            EventData::GatePassed(GatePassed {
                gate: reading.device.to_string(),
                direction: p.direction,
                count: p.count,
                from,
                to,
            })
        }
    };
    Some(Event::new(reading.station, reading.at, data))
}
