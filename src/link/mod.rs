//! Link: turns device readings into journey events. This is where identity is attached (app
//! tokens, NFC members, station sessions, visits); a source never knows about users.

pub mod cardhash;
mod classify;
pub mod jwks;
pub mod replay;
pub mod token;

pub use classify::{classify_code, CodeKind};

use tokio::sync::mpsc;
use tracing::debug;

use crate::event::{DeviceStatusData, Event, EventData, GatePassed, QrScanned};
use crate::outbox::{OutboxError, OutboxHandle, StateWrite};
use crate::sources::gate::state_key as gate_state_key;
use crate::sources::{Observation, Reading};

pub struct Link {
    readings: mpsc::Receiver<Reading>,
    outbox: OutboxHandle,
}

impl Link {
    pub fn new(readings: mpsc::Receiver<Reading>, outbox: OutboxHandle) -> Self {
        Link { readings, outbox }
    }

    /// Runs until every source has dropped its sender, then returns with everything handed on.
    pub async fn run(mut self) -> Result<(), OutboxError> {
        while let Some(reading) = self.readings.recv().await {
            crate::metrics::READINGS.inc();
            // A gate's baseline is committed with the event that counted it (or alone): after a
            // crash both are there or neither, so no passage is lost or counted twice.
            let state = gate_state(&reading);
            match to_event(reading) {
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
        Ok(())
    }
}

/// The durable state a reading moves forward: a gate's counter baseline.
fn gate_state(reading: &Reading) -> Vec<StateWrite> {
    match &reading.observation {
        Observation::GatePassed { counters, .. } | Observation::GateBaseline(counters) => {
            vec![(gate_state_key(&reading.device), Some(counters.encode()))]
        }
        _ => Vec::new(),
    }
}

/// One reading → one event (none for a reading that only moves state). Pure: the identity rules
/// plug in here.
pub fn to_event(reading: Reading) -> Option<Event> {
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
        Observation::GatePassed {
            direction, count, ..
        } => EventData::GatePassed(GatePassed {
            gate: reading.device.to_string(),
            direction,
            count,
        }),
        Observation::GateBaseline(_) => return None,
    };
    Some(Event::new(reading.station, reading.at, data))
}
