//! `phygate-hq fleet-sim`: N store gateways in one process, each the edge's own code — its
//! outbox (its own SQLite file) and its uplink (its own MQTT connection and client id) — fed
//! by [`super::mix::Mix`] at R events/s.
//!
//! Threads. The edge's outbox owns its SQLite connection on a thread of its own (rusqlite is
//! blocking), and the sim keeps that: each gateway's outbox runs the edge's unchanged
//! `Outbox::run` on its own thread, with a 256 KiB stack instead of the default 2 MiB. An idle
//! outbox thread is blocked on its queue: it costs no CPU, and its memory is the stack pages it
//! touched (measured: see docs/hq.md). Turning the outbox into a task would change the edge's
//! commit loop for the sake of the simulator, and the sim is there to measure that loop as it
//! ships. Everything asynchronous — the 1,000 uplinks and the 1,000 generators — shares one
//! tokio runtime of two worker threads.
//!
//! Durability. The outboxes run with `synchronous = NORMAL` (WAL: no fsync per commit, only
//! at checkpoints), not the edge's default FULL. A real store has a disk of its own and
//! fsyncs ~10 commits/s; 1,000 simulated stores on this machine's one shared disk would
//! fsync 10,000 times a second, and the run would measure the disk, not phygate. NORMAL keeps
//! every promise the fleet runs test (a killed consumer, a restarted broker, a crashed
//! simulator process lose nothing committed); only a power cut of the simulator's machine
//! could lose the last commits, and no fleet run cuts power.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use phygate::config::Config as EdgeConfig;
use phygate::event::Origin;
use phygate::outbox::{Outbox, OutboxHandle};
use phygate::shutdown::Shutdown;
use phygate::uplink::Uplink;
use serde::{Deserialize, Serialize};
use tracing::{info, warn, Instrument};

use super::mix::Mix;

/// The simulated fleet's tenant (the topics are `phygate/v1/fleet/<store>/…`).
pub const TENANT: &str = "fleet";
/// An outbox thread's stack: the edge's serve loop and SQLite need far less.
const OUTBOX_STACK: usize = 256 * 1024;
/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// `fleet-sim`'s arguments: the command line's, parsed once (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    #[arg(long)]
    pub stores: usize,
    /// Events per second per store.
    #[arg(long)]
    pub rate: f64,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// The broker, host:port; a cluster's nodes comma-separated (each store's `[mqtt] brokers`
    /// list, rotated so that store i starts on node i mod n: the fleet spreads over the nodes).
    #[arg(long, default_value = "127.0.0.1:1883", value_delimiter = ',', value_parser = parse_broker)]
    pub broker: Vec<(String, u16)>,
    /// Where the stores' outboxes go (one directory per store, `dir/<store>/`).
    #[arg(long, default_value = "fleet")]
    pub dir: PathBuf,
    /// How long the end waits for every outbox to be acknowledged.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// The stores' MQTT version (`[mqtt] protocol` of each simulated gateway, checked by the
    /// edge's own validator): 3.1.1 or 5.
    #[arg(long, default_value = "3.1.1")]
    pub mqtt: String,
    /// After the drain, print the report and keep the stores online until stdin closes: still
    /// connected, answering HQ's replay requests and sending their `seq` reports, as real
    /// stores do after their last event. `fleet-bench` passes it and closes stdin once HQ has
    /// settled: without it, events a broker lost near the run's end would find no store left
    /// to replay them, or to report that they were acknowledged.
    #[arg(long)]
    pub stay_online: bool,
}

/// `host:port`, the port last (an IPv6 host keeps its colons).
fn parse_broker(s: &str) -> Result<(String, u16), String> {
    s.rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
        .ok_or_else(|| format!("--broker must be host:port, not {s:?}"))
}

/// What the run did: printed as one JSON line on stdout for `fleet-bench`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimReport {
    pub stores: usize,
    /// Events committed to the outboxes.
    pub appended: u64,
    /// Of those, acknowledged by the broker (deleted from their outbox).
    pub published: u64,
    /// Appends the outbox refused (disk full, closed): none expected.
    pub refused: u64,
    pub offered_per_s: f64,
    pub appended_per_s: f64,
    pub generate_s: f64,
    /// The process's CPU time (user + system) while generating: what the fleet costs per
    /// event, without the opening of the stores and the drain.
    #[serde(default)]
    pub generate_cpu_s: f64,
    /// From the end of generation until every outbox was empty.
    pub drain_s: f64,
    pub open_s: f64,
    /// The process's threads at the end of generation.
    pub threads: u64,
    /// The process's own CPU time (user + system) and peak RSS, read at its very end.
    pub cpu_s: f64,
    pub peak_rss_kib: u64,
}

struct Gateway {
    outbox: OutboxHandle,
    /// Answers HQ's replay commands through this gateway's uplink.
    replayer: phygate::replay::Replayer,
    thread: std::thread::JoinHandle<()>,
    uplink: tokio::task::JoinHandle<()>,
}

/// The store id of gateway `i` (0-based): `s0001`, `s0002`, …
pub fn store_id(i: usize) -> String {
    format!("s{:04}", i + 1)
}

/// Runs the fleet and prints its report (one JSON line on stdout) once the outboxes are
/// drained; with `--stay-online`, then waits for stdin to close before the stores go.
pub fn run(args: SimArgs) -> anyhow::Result<SimReport> {
    anyhow::ensure!(args.stores > 0, "--stores must be at least 1");
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate must be a positive number of events per second per store"
    );
    one_malloc_arena_per_thread(args.stores);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(simulate(args))
}

/// Lets glibc give each outbox thread a malloc arena of its own. By default it caps the arenas
/// at 8 per core (16 here), so ~60 outbox threads share each arena and its lock; a thread
/// preempted while holding it makes the others sleep on the lock and be woken again (measured
/// with `perf`: futex waits from `__lll_lock_wait` under `malloc`, and 24 % less CPU per event
/// without them). A store's gateway has one outbox thread: this cost exists only in the
/// simulator, so it is set here, not in the edge. Costs address space, and little memory: an
/// arena holds the pages its thread uses.
fn one_malloc_arena_per_thread(stores: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let arenas = i32::try_from(stores.saturating_add(64)).unwrap_or(i32::MAX);
        // SAFETY: mallopt only sets a limit that glibc reads when a thread needs an arena;
        // called before the simulator starts its threads.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) } != 1 {
            warn!("could not raise glibc's malloc arena limit; outbox threads share arenas");
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = stores;
}

async fn simulate(args: SimArgs) -> anyhow::Result<SimReport> {
    let stop = Shutdown::new();
    let opening = Instant::now();
    let mut gateways = Vec::with_capacity(args.stores);
    for i in 0..args.stores {
        gateways.push(open_gateway(&args, i, stop.clone())?);
    }
    let open_s = opening.elapsed().as_secs_f64();
    let answerers = gateways
        .iter()
        .enumerate()
        .map(|(i, g)| (store_id(i), (g.replayer.clone(), g.outbox.clone())))
        .collect();

    info!(stores = args.stores, open_s, "fleet open; generating");

    let appended = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    // The stores' command results are appended events too: counted, so that HQ's count of
    // stored events matches what the fleet published.
    // The last node of a cluster: `fleet-bench --kill-node-at` kills the first.
    let commands = tokio::spawn(super::commands::answer(
        args.broker[args.broker.len() - 1].clone(),
        answerers,
        appended.clone(),
        stop.clone(),
    ));
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let cpu_at_start = own_cpu_s();
    let start = Instant::now();
    let end = start + args.duration;
    let mut generators = Vec::new();
    for (i, g) in gateways.iter().enumerate() {
        let (outbox, appended, refused) = (g.outbox.clone(), appended.clone(), refused.clone());
        let mix = Mix::new(&store_id(i), i as u64 + 1);
        generators.push(tokio::spawn(generate(
            outbox, mix, period, end, appended, refused,
        )));
    }
    let progress = tokio::spawn(progress(appended.clone(), start, end));
    for g in generators {
        g.await.context("a generator panicked")?;
    }
    progress.abort();
    let generate_s = start.elapsed().as_secs_f64();
    let generate_cpu_s = own_cpu_s() - cpu_at_start;
    let threads = own_threads();

    let draining = Instant::now();
    let left = drain(&gateways, args.drain_timeout).await;
    let drain_s = draining.elapsed().as_secs_f64();
    if left > 0 {
        warn!(
            left,
            "events still in the outboxes after the drain timeout (not published)"
        );
    }
    let appended_now = appended.load(Ordering::Relaxed);
    let own = super::procstat::usage(std::process::id()).unwrap_or_default();
    let report = SimReport {
        stores: args.stores,
        appended: appended_now,
        published: appended_now.saturating_sub(left),
        refused: refused.load(Ordering::Relaxed),
        offered_per_s: args.rate * args.stores as f64,
        appended_per_s: appended_now as f64 / generate_s,
        generate_s,
        generate_cpu_s,
        drain_s,
        open_s,
        threads,
        cpu_s: own.cpu.as_secs_f64(),
        peak_rss_kib: own.peak_kib,
    };
    println!("{}", serde_json::to_string(&report)?);
    if args.stay_online {
        info!("drained; the stores stay online until stdin closes");
        stay_online(&gateways, &appended, report.published).await;
        info!("stdin closed; the stores go offline");
    }
    stop.stop();
    let _ = commands.await;
    for g in gateways {
        let _ = g.uplink.await;
        // The outbox thread ends once its last handle is gone: the replayer holds one too.
        drop(g.outbox);
        drop(g.replayer);
        tokio::task::spawn_blocking(move || g.thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("an outbox thread panicked"))?;
    }
    Ok(report)
}

/// Keeps the stores online until stdin closes. Answering a replay request appends the
/// command's result, an event like any other: each time the fleet has published more and
/// drained it, prints `{"published": N}` (the new total) for the bench to wait for.
async fn stay_online(gateways: &[Gateway], appended: &AtomicU64, mut published: u64) {
    let closed = stdin_closed();
    tokio::pin!(closed);
    let mut open = true;
    while open {
        tokio::select! {
            // One last look before the stores go.
            _ = &mut closed => open = false,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let now = appended.load(Ordering::Relaxed);
        if now == published {
            continue;
        }
        let mut left = 0;
        for g in gateways {
            left += g.outbox.stats().await.map(|s| s.depth).unwrap_or(1);
        }
        if left == 0 {
            published = now;
            println!("{}", serde_json::json!({ "published": published }));
        }
    }
}

/// Returns once stdin reaches its end (closed by the parent, or the parent gone).
async fn stdin_closed() {
    // A blocking read on a thread of its own: one thread for the whole wait.
    let _ =
        tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
            .await;
}

/// Opens gateway `i`'s outbox (its thread started) and starts its uplink.
fn open_gateway(args: &SimArgs, i: usize, stopped: Shutdown) -> anyhow::Result<Gateway> {
    let store = store_id(i);
    let dir = args.dir.join(&store);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = edge_config(&store, i, &dir, args)?;
    let origin = Origin {
        store: store.clone(),
        gateway: "gw1".into(),
    };
    let (outbox, handle) = Outbox::open(&config.outbox, origin)
        .with_context(|| format!("opening the outbox of {store}"))?;
    let thread = std::thread::Builder::new()
        .name("outbox".into())
        .stack_size(OUTBOX_STACK)
        .spawn(move || outbox.run())
        .context("starting an outbox thread")?;
    let settings = config.uplink_settings();
    let (replayer, replays) = phygate::replay::channel(
        handle.clone(),
        settings.batching.batch_max_events,
        settings.batching.batch_max_bytes,
    );
    let uplink = Uplink::new(settings, handle.clone(), stopped)
        .with_context(|| format!("the uplink of {store}"))?
        .with_replays(replays)
        .with_report(no_devices_report());
    // The span names the store in every uplink log line: `fleet-bench` reads each store's
    // "connected to HQ" times from the log for the reconnect spread.
    let span = tracing::info_span!("gateway", store = %store);
    let uplink = tokio::spawn(
        async move {
            if let Err(e) = uplink.run().await {
                warn!(error = %e, "uplink ended");
            }
        }
        .instrument(span),
    );
    Ok(Gateway {
        outbox: handle,
        replayer,
        thread,
        uplink,
    })
}

/// The status report of a store without devices: the versions stay unset, and the `seq`
/// report (what the broker acknowledged) is the edge's own, so HQ sees the holes at the end of
/// a simulated store's events as it would a real one's.
fn no_devices_report() -> phygate::uplink::report::ReportSources {
    phygate::uplink::report::ReportSources {
        applied: phygate::uplink::report::AppliedHandle::default().subscribe(),
        board: phygate::status::Board::new(Vec::new()),
    }
}

/// The edge config of one simulated store, parsed by the edge's own parser.
fn edge_config(store: &str, i: usize, dir: &Path, args: &SimArgs) -> anyhow::Result<EdgeConfig> {
    let path = dir.join("phygate.toml");
    anyhow::ensure!(!args.broker.is_empty(), "--broker names no broker");
    let mut brokers: Vec<String> = args
        .broker
        .iter()
        .map(|(h, p)| format!("\"{h}:{p}\""))
        .collect();
    let n = brokers.len();
    brokers.rotate_left(i % n);
    let (brokers, mqtt) = (brokers.join(", "), &args.mqtt);
    let text = format!(
        "tenant = \"{TENANT}\"\nstore = \"{store}\"\ngateway = \"gw1\"\n\
         [outbox]\npath = \"{}\"\nsynchronous = \"normal\"\n\
         [mqtt]\nbrokers = [{brokers}]\nclient_id = \"fleet-{store}\"\nkeepalive = \"30s\"\n\
         protocol = \"{mqtt}\"\n",
        dir.join("outbox.db").display()
    );
    EdgeConfig::parse(&text, &path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// One store's devices: an event every `period` (from a random phase, so the fleet's appends
/// spread over the period), appended durably, until `end`. When the machine cannot keep up,
/// missed ticks are skipped: the offered rate drops, and the report shows it.
async fn generate(
    outbox: OutboxHandle,
    mut mix: Mix,
    period: Duration,
    end: Instant,
    appended: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
) {
    let phase = period.mul_f64(fastrand::f64());
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if Instant::now() >= end {
            return;
        }
        match outbox.append(mix.next_event()).await {
            Ok(_) => appended.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                warn!(error = %e, "append refused");
                refused.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

async fn progress(appended: Arc<AtomicU64>, start: Instant, end: Instant) {
    let mut last = (0, start);
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let now = (appended.load(Ordering::Relaxed), Instant::now());
        let rate = (now.0 - last.0) as f64 / now.1.duration_since(last.1).as_secs_f64();
        let left_s = end.saturating_duration_since(now.1).as_secs();
        info!(
            appended = now.0,
            per_s = rate.round(),
            left_s,
            "fleet generating"
        );
        last = now;
    }
}

/// Waits until every outbox is empty (all acknowledged by the broker), or `timeout`; returns
/// how many events are left.
async fn drain(gateways: &[Gateway], timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let mut left = 0;
        for g in gateways {
            // A closed outbox cannot say: count it as not drained.
            left += g.outbox.stats().await.map(|s| s.depth).unwrap_or(1);
        }
        if left == 0 || Instant::now() >= deadline {
            return left;
        }
        info!(left, "draining the outboxes");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// This process's CPU time so far, in seconds (0 where there is no /proc).
fn own_cpu_s() -> f64 {
    super::procstat::usage(std::process::id())
        .unwrap_or_default()
        .cpu
        .as_secs_f64()
}

/// `Threads:` of /proc/self/status (0 where there is no /proc).
fn own_threads() -> u64 {
    super::procstat::status_field(std::process::id(), "Threads:").unwrap_or(0)
}
