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

use crate::event::{DeviceStatusData, Event, EventData, GatePassed, QrScanned, SkinDiagnosed};
use crate::outbox::{OutboxError, OutboxHandle, StateWrite};
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
            let state = state_of(&reading);
            let event = to_event(reading);
            debug!(id = %event.id, ty = event.data.type_name(), "event");
            self.outbox.submit_with_state(event, state).await?;
        }
        Ok(())
    }
}

/// State committed with a reading's event: what a source must find again after a restart.
fn state_of(reading: &Reading) -> Vec<StateWrite> {
    match &reading.observation {
        Observation::Skin(skin) => {
            crate::sources::skin::seen_state(&reading.device, skin, reading.at)
                .into_iter()
                .collect()
        }
        _ => Vec::new(),
    }
}

/// One reading → one event. Pure: the identity rules plug in here.
pub fn to_event(reading: Reading) -> Event {
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
    Event::new(reading.station, reading.at, data)
}
