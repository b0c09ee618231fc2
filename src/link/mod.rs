//! Link: turns device readings into journey events. This is where identity is attached (app
//! tokens, NFC members, station sessions, visits); a source never knows about users.

pub mod cardhash;
mod classify;
pub mod jwks;
pub mod nfc;
pub mod replay;
pub mod token;

pub use classify::{classify_code, CodeKind};

use tokio::sync::mpsc;
use tracing::debug;

use crate::event::{DeviceStatusData, Event, EventData, IdSource, QrScanned};
use crate::outbox::{OutboxError, OutboxHandle};
use crate::sources::{Observation, Reading};

pub struct Link {
    readings: mpsc::Receiver<Reading>,
    outbox: OutboxHandle,
    settings: LinkSettings,
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

impl Link {
    pub fn new(
        readings: mpsc::Receiver<Reading>,
        outbox: OutboxHandle,
        settings: LinkSettings,
    ) -> Self {
        Link {
            readings,
            outbox,
            settings,
        }
    }

    /// Runs until every source has dropped its sender, then returns with everything handed on.
    pub async fn run(mut self) -> Result<(), OutboxError> {
        while let Some(reading) = self.readings.recv().await {
            crate::metrics::READINGS.inc();
            let event = to_event(&self.settings, reading);
            debug!(id = %event.id, ty = event.data.type_name(), "event");
            self.outbox.submit(event).await?;
        }
        Ok(())
    }
}

/// One reading → one event. Pure: the identity rules plug in here.
pub fn to_event(settings: &LinkSettings, reading: Reading) -> Event {
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
        Observation::NfcTap(tap) => {
            let (data, member) = nfc::tapped(settings.card_key.as_ref(), &tap);
            let mut event = Event::new(reading.station, reading.at, EventData::NfcTapped(data));
            if let Some(user) = member {
                event.userid = Some(user);
                event.idsource = IdSource::NfcMember;
            }
            return event;
        }
    };
    Event::new(reading.station, reading.at, data)
}
