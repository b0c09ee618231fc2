//! The wiring: who spawns what, and which channel goes where. Reads top to bottom as the flow:
//! sources → link → outbox → uplink, and HQ's downlink back into the link (keys, members,
//! commands) and the config reloader. Shutdown runs the same way: sources stop, the link hands on
//! what it holds, the outbox commits, the uplink says goodbye; the downlink stops with the link,
//! leaving what was not committed un-acknowledged for the next start.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use crate::config::{Config, DeviceKind};
use crate::downlink::session::Downlink;
use crate::event::Origin;
use crate::ingest::Ingest;
use crate::link::journey::Journey;
use crate::link::Link;
use crate::outbox::Outbox;
use crate::sources::camera::CameraSource;
use crate::sources::gate::{GateRegistry, GateSource};
use crate::sources::nfc::NfcSource;
use crate::sources::scanner::ScannerSource;
use crate::sources::skin::SkinSource;
use crate::sources::{ReadingSink, StopFlag};
use crate::status::{Board, Ops, Watched};
use crate::uplink::Uplink;

/// Readings waiting for the link; when full, sources block (their devices buffer).
const READING_QUEUE: usize = 1024;
/// How long shutdown waits for HTTP posts in progress (a stuck client must not hold it).
const INGEST_GRACE: Duration = Duration::from_secs(5);
/// Configs from HQ waiting for the reloader; when full, the downlink waits (it is one retained
/// topic: more than one waiting is rare).
const HQ_CONFIG_QUEUE: usize = 4;

/// Handles for acting on devices, for whoever decides to act: the link's entry-token decisions
/// and HQ's commands (to come), tests.
#[derive(Clone, Default)]
pub struct Controls {
    /// Gates by station id.
    pub gates: GateRegistry,
}

/// Runs the gateway until `shutdown` resolves, then drains in flow order.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with(config, shutdown, |_| {}).await
}

/// As [`run`], for a service: `config` is what `downlink::hqconfig::effective` chose (HQ's
/// stored config or the local file), and SIGHUP re-reads it (see `status::reload`).
pub async fn run_service(
    config: crate::downlink::hqconfig::Effective,
    config_path: PathBuf,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let source = ConfigSource {
        local: Some(config_path),
        text: config.text,
        stored: Some(config.stored),
    };
    start(config.config, source, shutdown, |_| {}).await
}

/// As [`run`], handing `ready` the device controls once the sources are started.
pub async fn run_with(
    config: Config,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(Controls),
) -> anyhow::Result<()> {
    let source = ConfigSource {
        local: None,
        text: String::new(),
        stored: None,
    };
    start(config, source, shutdown, ready).await
}

/// Where the config in force came from, for reloads.
struct ConfigSource {
    /// The local file, re-read on SIGHUP (`None`: tests, the demo).
    local: Option<PathBuf>,
    /// The text in force at start.
    text: String,
    /// Where HQ's config is kept (`None`: next to this config's outbox).
    stored: Option<PathBuf>,
}

async fn start(
    config: Config,
    source: ConfigSource,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(Controls),
) -> anyhow::Result<()> {
    crate::clock::set_mode(config.clock_sync);
    let origin = Origin {
        store: config.store.clone(),
        gateway: config.gateway.clone(),
    };
    let (outbox, outbox_handle) = Outbox::open(&config.outbox, origin)
        .with_context(|| format!("opening the outbox {}", config.outbox.path.display()))?;
    // A corrupt file moved aside (at the open, or found later by the outbox's background
    // check) is reported by the outbox itself, as its first event on the fresh file.
    let outbox_thread = outbox.spawn().context("starting the outbox thread")?;

    let (readings_tx, readings_rx) = mpsc::channel(READING_QUEUE);
    let readings_probe = readings_tx.downgrade();
    let board = Board::new(&config);
    let mut link = Link::new(
        readings_rx,
        outbox_handle.clone(),
        Journey::new(&config),
        &config,
    )
    .with_board(board.clone());
    let downlink = link.updates();

    // The HTTP ingest, bound before anything starts so a taken port fails the start cleanly.
    let (stop_ingest, ingest_stopped) = watch::channel(false);
    let ingest = Ingest::bind(
        &config,
        link.handle(),
        outbox_handle.clone(),
        ingest_stopped,
    )
    .await?
    .map(|i| tokio::spawn(i.run()));

    // Sources, each on its own supervised thread.
    let stop = StopFlag::default();
    let mut sources = Vec::new();
    let mut gates = HashMap::new();
    for device in &config.devices {
        let sink = ReadingSink::new(
            &device.id,
            &device.station,
            device.kind.name(),
            readings_tx.clone(),
        );
        let stop = stop.clone();
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
                let (cfg, outbox) = (cfg.clone(), outbox_handle.clone());
                spawn_supervised(&device.id, stop.clone(), move || {
                    SkinSource::new(cfg.clone(), sink.clone(), outbox.clone(), stop.clone()).run()
                })?
            }
            DeviceKind::Gate(cfg) => {
                let cfg = cfg.clone();
                let (control, unlocks) =
                    crate::sources::gate::control::channel(&device.id, cfg.timeout);
                gates.insert(device.station.clone(), control);
                // Read-only use: the baseline at start. New baselines go through the link.
                let outbox = outbox_handle.clone();
                spawn_supervised(&device.id, stop.clone(), move || {
                    let (sink, stop) = (sink.clone(), stop.clone());
                    GateSource::new(cfg.clone(), sink, stop, outbox.clone(), unlocks.clone()).run()
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
    drop(readings_tx);
    let gates = GateRegistry::new(gates);
    link.set_gates(gates.clone());
    ready(Controls { gates });

    // Link → outbox → uplink; HQ → downlink → link and reloader.
    let link = tokio::spawn(link.run());
    let (stop_uplink, uplink_stopped) = watch::channel(false);
    let uplink = tokio::spawn(Uplink::new(&config, outbox_handle.clone(), uplink_stopped)?.run());
    let (hq_config, hq_configs) = mpsc::channel(HQ_CONFIG_QUEUE);
    let (stop_downlink, downlink_stopped) = watch::channel(false);
    let downlink =
        tokio::spawn(Downlink::new(&config, downlink, hq_config, downlink_stopped)?.run());
    // Status last: READY=1 means everything above is running.
    let ops = Ops::start(
        &config,
        Watched {
            board,
            outbox: outbox_handle.clone(),
            readings: readings_probe,
            configs: crate::status::reload::Sources {
                stored: source
                    .stored
                    .unwrap_or_else(|| crate::downlink::hqconfig::stored_path(&config.outbox.path)),
                local: source.local,
                text: source.text,
                hq: Some(hq_configs),
            },
        },
    );
    drop(outbox_handle);
    info!(store = %config.store, gateway = %config.gateway, devices = config.devices.len(), "phygate running");

    shutdown.await;
    info!("shutting down: stopping sources");
    ops.stop().await;
    stop.stop();
    stop_ingest.send_replace(true);
    if let Some(mut ingest) = ingest {
        match tokio::time::timeout(INGEST_GRACE, &mut ingest).await {
            Ok(r) => r?.context("ingest")?,
            Err(_) => {
                error!(
                    "HTTP posts still in progress after the grace period; dropping them unanswered"
                );
                ingest.abort();
            }
        }
    }
    tokio::task::spawn_blocking(move || {
        for t in sources {
            let _ = t.join();
        }
    })
    .await?;
    link.await?.context("link")?;
    stop_downlink.send_replace(true);
    downlink.await?.context("downlink")?;
    stop_uplink.send_replace(true);
    uplink.await?.context("uplink")?;
    tokio::task::spawn_blocking(move || outbox_thread.join())
        .await?
        .map_err(|_| anyhow::anyhow!("outbox thread panicked"))?;
    info!("stopped; everything accepted is in the outbox");
    Ok(())
}

/// Runs a blocking source on its own thread and restarts it if it panics: one broken device is
/// one error in the log, never the whole gateway down.
fn spawn_supervised<F>(name: &str, stop: StopFlag, body: F) -> anyhow::Result<JoinHandle<()>>
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
