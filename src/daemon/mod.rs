//! The wiring: who spawns what, and which channel goes where. Reads top to bottom as the flow:
//! sources → link → outbox → uplink, and HQ's downlink back into the link (keys, members,
//! commands) and the config reloader. Every stage is built whole before it runs: nothing is set
//! after spawn. Shutdown is one signal and runs the same way (`crate::shutdown`): sources stop,
//! the link hands on what it holds, the outbox commits, the uplink says goodbye; the downlink
//! stops with the link, leaving what was not committed un-acknowledged for the next start.

use std::future::Future;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tracing::{error, info};

use crate::config::Config;
use crate::downlink::session::Downlink;
use crate::downlink::Delivery;
use crate::event::Origin;
use crate::ingest::Ingest;
use crate::link::journey::Journey;
use crate::link::Link;
use crate::outbox::{Outbox, OutboxHandle};
use crate::shutdown::Shutdown;
use crate::sources::gate::GateRegistry;
use crate::status::{Board, Ops, Watched};
use crate::uplink::Uplink;

pub mod reload;
mod sources;

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

/// As [`run`], for a service: `config` is what `config::hq::effective` chose (HQ's
/// stored config or the local file), and SIGHUP re-reads it (see `reload`).
pub async fn run_service(
    config: crate::config::hq::Effective,
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
    stop: impl Future<Output = ()>,
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
    let board = Board::new(config.board_devices());
    // The gates' controls first: the link is built whole, with the gates it may open.
    let devices = sources::Devices::new(&config.devices);
    let link = Link::new(
        readings_rx,
        outbox_handle.clone(),
        Journey::new(config.journey_settings()),
        &config.gateway,
        devices.gates(),
    )
    .with_board(board.clone());
    // The versions HQ's config, keys and members are at: posted by the link and the config
    // applier, carried by the uplink's status report.
    let applied = crate::uplink::report::AppliedHandle::default();
    // HQ's replay commands: the link reads the range from the outbox, the uplink publishes it.
    let uplink_settings = config.uplink_settings();
    let (replayer, replays) = crate::replay::channel(
        outbox_handle.clone(),
        uplink_settings.batching.batch_max_events,
        uplink_settings.batching.batch_max_bytes,
    );
    let mut link = link.with_applied(applied.clone()).with_replayer(replayer);
    let downlink = link.updates();

    // One shutdown signal for the stages fed from outside; the HQ side's is the link's end
    // (`crate::shutdown` has the order).
    let shutdown = Shutdown::new();
    // However `start` returns (an error half-way included), what it started stops.
    let _stop_on_return = shutdown.stop_on_drop();
    let link_ended = Shutdown::new();
    let link_ending = link_ended.stop_on_drop();

    let report = crate::uplink::report::ReportSources {
        applied: applied.subscribe(),
        board: board.clone(),
    };
    let (uplink, downlink, hq_configs) =
        hq_side(&config, &outbox_handle, downlink, report, &link_ended)?;
    let uplink = uplink.with_replays(replays);

    // The HTTP ingest, bound before anything starts so a taken port fails the start cleanly.
    let ingest = match config.ingest_settings() {
        None => None,
        Some(s) => {
            Some(Ingest::bind(s, link.handle(), outbox_handle.clone(), shutdown.clone()).await?)
        }
    }
    .map(|ingest| tokio::spawn(ingest.run()));

    // Sources, each on its own supervised thread.
    let gates = devices.gates();
    let sources = devices.spawn(&readings_tx, &outbox_handle, &shutdown)?;
    // The link also applies HQ's keys, members and commands, so it must run until the shutdown
    // even in a gateway with no device and no ingest: one sender is held until the signal.
    let held = readings_tx;
    let signal = shutdown.clone();
    tokio::spawn(async move {
        signal.stopped().await;
        drop(held);
    });
    ready(Controls { gates });

    // Link → outbox → uplink; HQ → downlink → link and reloader.
    let link = tokio::spawn(async move {
        let _ending = link_ending;
        link.run().await
    });
    let uplink = tokio::spawn(uplink.run());
    let downlink = tokio::spawn(downlink.run());
    let reloader = reload::spawner(&config, source, hq_configs, outbox_handle.clone(), applied);
    // Status last: READY=1 means everything above is running.
    let watched = Watched {
        board,
        outbox: outbox_handle.clone(),
        readings: readings_probe,
    };
    let ops = Ops::start(config.ops_settings(), watched, reloader, shutdown.clone());
    drop(outbox_handle);
    info!(store = %config.store, gateway = %config.gateway, devices = config.devices.len(), "phygate running");

    stop.await;
    Running {
        shutdown,
        ops,
        ingest,
        sources,
        link,
        downlink,
        uplink,
        outbox_thread,
    }
    .drain()
    .await
}

/// The HQ side, built (not started) before any thread runs, so settings it refuses (TLS files)
/// fail the start with nothing left running; both stop at the link's end. The receiver takes
/// HQ's configs from the downlink, for the reloader.
fn hq_side(
    config: &Config,
    outbox: &OutboxHandle,
    updates: mpsc::Sender<Delivery>,
    report: crate::uplink::report::ReportSources,
    link_ended: &Shutdown,
) -> anyhow::Result<(Uplink, Downlink, mpsc::Receiver<Delivery<String>>)> {
    let uplink = Uplink::new(config.uplink_settings(), outbox.clone(), link_ended.clone())?
        .with_report(report);
    let (hq_config, hq_configs) = mpsc::channel(HQ_CONFIG_QUEUE);
    let downlink = Downlink::new(
        config.downlink_settings(),
        updates,
        hq_config,
        link_ended.clone(),
    )?;
    Ok((uplink, downlink, hq_configs))
}

/// What runs, in flow order, for the shutdown to stop and wait for.
struct Running {
    shutdown: Shutdown,
    ops: Ops,
    ingest: Option<tokio::task::JoinHandle<Result<(), crate::ingest::IngestError>>>,
    sources: Vec<JoinHandle<()>>,
    link: tokio::task::JoinHandle<Result<(), crate::outbox::OutboxError>>,
    downlink: tokio::task::JoinHandle<Result<(), crate::downlink::session::DownlinkError>>,
    uplink: tokio::task::JoinHandle<Result<(), crate::uplink::UplinkError>>,
    outbox_thread: JoinHandle<()>,
}

impl Running {
    /// Stops the one signal, then waits for each stage in flow order: the sources and the
    /// ingest stop, the link hands on what it holds (the outbox commits it), which ends the
    /// downlink and the uplink (its goodbye), and the outbox thread ends with its last handle.
    async fn drain(self) -> anyhow::Result<()> {
        info!("shutting down: stopping sources");
        self.ops.stopping();
        self.shutdown.stop();
        if let Some(mut ingest) = self.ingest {
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
        let sources = self.sources;
        tokio::task::spawn_blocking(move || {
            for t in sources {
                let _ = t.join();
            }
        })
        .await?;
        self.link.await?.context("link")?;
        self.downlink.await?.context("downlink")?;
        self.uplink.await?.context("uplink")?;
        self.ops.stopped().await;
        let outbox_thread = self.outbox_thread;
        tokio::task::spawn_blocking(move || outbox_thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("outbox thread panicked"))?;
        info!("stopped; everything accepted is in the outbox");
        Ok(())
    }
}
