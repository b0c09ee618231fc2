//! The sources' part of the wiring: one supervised thread per device with a port of its own,
//! and the gate controls by station (made first: the link is built with them).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use crate::clock::unix_ms;
use crate::config::{DeviceConfig, DeviceKind};
use crate::outbox::keys;
use crate::outbox::{OutboxError, OutboxHandle};
use crate::shutdown::Shutdown;
use crate::sources::camera::CameraSource;
use crate::sources::gate::control::UnlockQueue;
use crate::sources::gate::{Counters, GateRegistry, GateSource};
use crate::sources::nfc::NfcSource;
use crate::sources::scanner::ScannerSource;
use crate::sources::skin::{skn1, Sighting, SkinSource};
use crate::sources::{Reading, ReadingSink, SourceError};

/// Every device's source, ready to start: the gates' controls exist before any thread does, so
/// the link is built with them and nothing is set after it runs.
pub(super) struct Devices {
    devices: Vec<DeviceConfig>,
    /// Each gate's thread end of its unlock queue, by device id.
    unlocks: HashMap<String, UnlockQueue>,
    gates: GateRegistry,
}

impl Devices {
    pub(super) fn new(devices: &[DeviceConfig]) -> Devices {
        let mut unlocks = HashMap::new();
        let mut gates = HashMap::new();
        for device in devices {
            if let DeviceKind::Gate(cfg) = &device.kind {
                let (control, queue) =
                    crate::sources::gate::control::channel(&device.id, cfg.timeout);
                gates.insert(device.station.clone(), control);
                unlocks.insert(device.id.clone(), queue);
            }
        }
        Devices {
            devices: devices.to_vec(),
            unlocks,
            gates: GateRegistry::new(gates),
        }
    }

    /// The gates by station.
    pub(super) fn gates(&self) -> GateRegistry {
        self.gates.clone()
    }

    /// Starts every device's source; devices that post to the ingest listener have none.
    pub(super) fn spawn(
        mut self,
        readings: &mpsc::Sender<Reading>,
        outbox: &OutboxHandle,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Vec<JoinHandle<()>>> {
        let mut sources = Vec::new();
        for device in &self.devices {
            let sink = ReadingSink::new(
                &device.id,
                &device.station,
                device.kind.name(),
                readings.clone(),
            );
            let stop = shutdown.clone();
            let thread = match &device.kind {
                DeviceKind::Scanner(cfg) => {
                    let cfg = cfg.clone();
                    spawn_supervised(&device.id, stop.clone(), move || {
                        ScannerSource::new(cfg.clone(), sink.clone(), stop.clone()).run()
                    })?
                }
                DeviceKind::Nfc(cfg) => {
                    let cfg = cfg.clone();
                    spawn_supervised(&device.id, stop.clone(), move || {
                        NfcSource::new(cfg.clone(), sink.clone(), stop.clone()).run()
                    })?
                }
                DeviceKind::Skin(cfg) => {
                    let cfg = cfg.clone();
                    // As for a gate: the saved sightings at each (re)start; new ones and the
                    // deletion of forgotten ones go through the link.
                    let (outbox, id) = (outbox.clone(), device.id.clone());
                    spawn_supervised(&device.id, stop.clone(), move || {
                        let saved = skin_sightings(&outbox, &id)?;
                        SkinSource::new(cfg.clone(), sink.clone(), stop.clone(), saved).run()
                    })?
                }
                DeviceKind::Gate(cfg) => {
                    let cfg = cfg.clone();
                    let unlocks = self.unlocks.remove(&device.id).expect("made in new");
                    // Read-only use: the baseline at each (re)start. New ones go through the link.
                    let (outbox, id) = (outbox.clone(), device.id.clone());
                    spawn_supervised(&device.id, stop.clone(), move || {
                        let baseline = gate_baseline(&outbox, &id)?;
                        let (sink, stop) = (sink.clone(), stop.clone());
                        GateSource::new(cfg.clone(), sink, stop, baseline, unlocks.clone()).run()
                    })?
                }
                DeviceKind::Camera(cfg) => {
                    let cfg = cfg.clone();
                    spawn_supervised(&device.id, stop.clone(), move || {
                        CameraSource::new(cfg.clone(), sink.clone(), stop.clone()).run()
                    })?
                }
                // They post to the ingest listener: no thread of their own.
                DeviceKind::SkinHttp(_) | DeviceKind::PeopleCounter(_) => continue,
            };
            sources.push(thread);
        }
        Ok(sources)
    }
}

/// Runs a blocking source on its own thread and restarts it if it panics: one broken device is
/// one error in the log, never the whole gateway down.
fn spawn_supervised<F>(name: &str, stop: Shutdown, body: F) -> anyhow::Result<JoinHandle<()>>
where
    F: Fn() -> Result<(), crate::sources::SourceError> + Send + 'static,
{
    let device = name.to_owned();
    std::thread::Builder::new()
        .name(format!("src-{name}"))
        .spawn(move || loop {
            match std::panic::catch_unwind(AssertUnwindSafe(&body)) {
                Ok(_) => return,
                Err(_) => {
                    error!(device, "device source panicked; restarting it");
                    if stop.sleep(Duration::from_secs(1)) {
                        return;
                    }
                }
            }
        })
        .with_context(|| format!("starting the thread of device {name}"))
}

/// A gate's saved counter baseline (`None`: count from the first read).
fn gate_baseline(outbox: &OutboxHandle, device: &str) -> Result<Option<Counters>, SourceError> {
    let key = crate::outbox::keys::gate(device);
    let entries = match outbox.state_blocking(&key) {
        Ok(entries) => entries,
        Err(OutboxError::Closed) => return Err(SourceError::Closed),
        Err(e) => {
            // Counting from the first read loses only the downtime's passages; guessing
            // would double-count them.
            warn!(device = device, error = %e, "cannot read the gate baseline; starting without one");
            return Ok(None);
        }
    };
    // The scan is by prefix: `gate/g1` also finds `gate/g10`.
    let value = entries.into_iter().find(|(k, _)| *k == key).map(|(_, v)| v);
    Ok(value.and_then(|v| {
        let decoded = Counters::decode(&v);
        if decoded.is_none() {
            warn!(
                device = device,
                "unreadable gate baseline; starting without one"
            );
        }
        decoded
    }))
}

/// A serial skin analyzer's saved sightings still within the de-duplication window; the stale
/// or unreadable ones are deleted here (those the running source forgets, the link deletes).
fn skin_sightings(outbox: &OutboxHandle, device: &str) -> Result<Vec<Sighting>, SourceError> {
    let entries = match outbox.state_blocking(&keys::skin_seen_prefix(device)) {
        Ok(entries) => entries,
        Err(OutboxError::Closed) => return Err(SourceError::Closed),
        Err(e) => {
            // Not fatal: the worst case is one duplicate of a reading resent right now.
            warn!(device, error = %e, "cannot load the skin de-duplication state");
            return Ok(Vec::new());
        }
    };
    let (live, stale) = split_seen(device, entries, unix_ms(SystemTime::now()));
    for key in stale {
        if let Err(e) = outbox.put_state_blocking(key, None) {
            warn!(device, error = %e, "cannot delete a stale de-duplication key");
            break;
        }
    }
    debug!(
        device,
        loaded = live.len(),
        "skin de-duplication state loaded"
    );
    Ok(live)
}

/// Saved sightings → the live ones, and the keys of stale or unreadable ones.
fn split_seen(
    device: &str,
    entries: Vec<(String, Vec<u8>)>,
    now_ms: u64,
) -> (Vec<Sighting>, Vec<String>) {
    let mut live = Vec::new();
    let mut stale = Vec::new();
    for (key, value) in entries {
        let at = std::str::from_utf8(&value)
            .ok()
            .and_then(|v| v.parse::<u64>().ok());
        match (keys::parse_skin_seen(device, &key), at) {
            (Some((model, seq)), Some(at_ms))
                if now_ms.saturating_sub(at_ms) < skn1::DEDUP_WINDOW_MS =>
            {
                live.push(Sighting { model, seq, at_ms })
            }
            _ => stale.push(key),
        }
    }
    live.sort_by_key(|s| s.at_ms);
    (live, stale)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::link::journey::skin_seen_state;
    use crate::sources::skin::skn1::SkinReading;

    fn reading(model: &str, seq: Option<u64>) -> SkinReading {
        SkinReading {
            model: model.into(),
            seq,
            device_time: None,
            measures: [("moisture".to_string(), 40.0)].into(),
            extra: Default::default(),
            skin_type: None,
        }
    }

    #[test]
    fn seen_state_round_trips_through_split() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(5_000);
        let (key, value) = skin_seen_state("skin-1", &reading("AX/200", Some(7)), at).unwrap();
        assert_eq!(key, "skin/seen/skin-1/AX/200/7");
        let entries = vec![(key.clone(), value.unwrap())];
        let (live, stale) = split_seen("skin-1", entries.clone(), 6_000);
        let seen = Sighting {
            model: "AX/200".into(),
            seq: 7,
            at_ms: 5_000,
        };
        assert_eq!(live, vec![seen]);
        assert!(stale.is_empty());
        let (live, stale) = split_seen("skin-1", entries, 5_000 + skn1::DEDUP_WINDOW_MS);
        assert!(live.is_empty());
        assert_eq!(stale, vec![key]);
        assert!(skin_seen_state("skin-1", &reading("AX", None), at).is_none());
    }

    #[test]
    fn unreadable_state_is_stale_not_fatal() {
        let entries = vec![
            ("skin/seen/d/M/x".to_string(), b"1".to_vec()),
            ("skin/seen/d/M/3".to_string(), b"soon".to_vec()),
        ];
        let (live, stale) = split_seen("d", entries, 10);
        assert!(live.is_empty());
        assert_eq!(stale.len(), 2);
    }
}
