//! Device sources: one module per device kind. Each owns its port, speaks the device's real
//! protocol, reconnects after an unplug, and emits [`Reading`]s. A source knows nothing of users,
//! SQLite or MQTT.
//!
//! Shared by the kinds: the one open → serve → down → back off → reopen loop
//! ([`supervise`](mod@supervise)), the repeat window ([`repeat`]) and rate-limited error
//! reports ([`throttle`]).

pub mod camera;
pub mod gate;
pub mod nfc;
pub mod repeat;
pub mod scanner;
pub mod skin;
pub mod supervise;
pub mod throttle;

/// A device's state, as its status events carry it (`crate::event`).
pub use crate::event::DeviceState;
/// Where a passage went; a station value (`crate::station`), named here too for the readings.
pub use crate::station::Direction;
pub use supervise::{serve_serial_port, supervise, Ended, Outage, Supervised, READ_TICK};

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;

/// What a device saw, where and when: raw enough to audit, with no identity attached.
#[derive(Debug, Clone)]
pub struct Reading {
    pub device: Arc<str>,
    pub station: Arc<str>,
    /// The gateway's clock when the reading was complete (e.g. the scanner's terminator arrived).
    pub at: SystemTime,
    pub observation: Observation,
}

#[derive(Debug, Clone)]
pub enum Observation {
    Code(scanner::ScannedCode),
    Status(DeviceStatus),
    /// A skin analyzer's finished diagnosis (serial SKN1 or posted by a tablet analyzer).
    Skin(skin::skn1::SkinReading),
    /// People crossed a counted doorway (a network people counter's interval).
    Passed(Passage),
    /// People crossed a turnstile since its last poll. `counters` is the gate's baseline once
    /// this passage is counted: the link persists it in the event's transaction.
    GatePassed {
        direction: Direction,
        count: u32,
        counters: gate::Counters,
    },
    /// A gate baseline that no passage carries (first read, a counter reset to zero): the link
    /// persists it alone. Not an event.
    GateBaseline(gate::Counters),
    /// A serial skin analyzer's `model` + `seq` sightings that left its de-duplication window:
    /// the link deletes their saved keys. Not an event.
    SkinForgotten(Vec<(String, u64)>),
    /// A card newly tapped on an NFC reader; its raw UID stays in memory (the link hashes it).
    NfcTap(nfc::NfcTap),
}

/// People crossing in one direction: a turnstile's pulses or a network counter's interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passage {
    pub direction: Direction,
    pub count: u64,
    /// The device's own counting interval (RFC 3339 UTC), when it reports one (HTTP counters).
    pub interval: Option<(String, String)>,
}

/// A device went up / down / silent, or rejected input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    pub kind: &'static str,
    pub state: DeviceState,
    pub reason: String,
    /// For throttled errors: how many rejections this report stands for.
    pub count: Option<u64>,
}

/// Why a source stops.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The pipeline behind the source is gone (shutdown): stop reading.
    #[error("the reading channel is closed")]
    Closed,
}

/// A source's handle for emitting readings. Sending blocks when the link is behind: readings
/// are never dropped at the source, the device's own buffer takes the back-pressure.
#[derive(Clone)]
pub struct ReadingSink {
    device: Arc<str>,
    station: Arc<str>,
    kind: &'static str,
    tx: mpsc::Sender<Reading>,
}

impl ReadingSink {
    pub fn new(device: &str, station: &str, kind: &'static str, tx: mpsc::Sender<Reading>) -> Self {
        ReadingSink {
            device: device.into(),
            station: station.into(),
            kind,
            tx,
        }
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    /// Emits an observation stamped now. Call from a source's own (blocking) thread.
    pub fn emit(&self, observation: Observation) -> Result<(), SourceError> {
        self.emit_at(SystemTime::now(), observation)
    }

    pub fn emit_at(&self, at: SystemTime, observation: Observation) -> Result<(), SourceError> {
        let reading = Reading {
            device: self.device.clone(),
            station: self.station.clone(),
            at,
            observation,
        };
        self.tx
            .blocking_send(reading)
            .map_err(|_| SourceError::Closed)
    }

    pub fn status(
        &self,
        state: DeviceState,
        reason: impl Into<String>,
        count: Option<u64>,
    ) -> Result<(), SourceError> {
        self.emit(Observation::Status(DeviceStatus {
            kind: self.kind,
            state,
            reason: reason.into(),
            count,
        }))
    }

    /// Emits a throttled error report, when one is due ([`throttle::ErrorThrottle`]).
    pub fn error_report(&self, due: Option<(&'static str, u64)>) -> Result<(), SourceError> {
        match due {
            Some((reason, count)) => self.status(DeviceState::Error, reason, Some(count)),
            None => Ok(()),
        }
    }
}
