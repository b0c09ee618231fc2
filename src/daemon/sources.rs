//! The sources' part of the wiring: one supervised thread per device with a port of its own,
//! and the gate controls by station (made first: the link is built with them).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tracing::{error, warn};

use crate::config::{DeviceConfig, DeviceKind};
use crate::outbox::{OutboxError, OutboxHandle};
use crate::shutdown::Shutdown;
use crate::sources::camera::CameraSource;
use crate::sources::gate::control::UnlockQueue;
use crate::sources::gate::{Counters, GateRegistry, GateSource};
use crate::sources::nfc::NfcSource;
use crate::sources::scanner::ScannerSource;
use crate::sources::skin::SkinSource;
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
                    let (cfg, outbox) = (cfg.clone(), outbox.clone());
                    spawn_supervised(&device.id, stop.clone(), move || {
                        SkinSource::new(cfg.clone(), sink.clone(), outbox.clone(), stop.clone())
                            .run()
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
