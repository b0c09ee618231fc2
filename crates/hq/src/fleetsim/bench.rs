//! `phygate-hq fleet-bench`: the whole chain on one machine, real parts only —
//!
//! ```text
//! fleet-sim (N gateways) ─MQTT─► mosquitto ─$share/journey─► K × phygate-hq run ─► journey store
//!                                                                       └─HTTP─► Braze-like, Amplitude-like
//! ```
//!
//! — then the verdict, counted where each thing happens: `published` by the simulator (every
//! event acknowledged by the broker), `stored_unique` and `lost` by HQ's journey store,
//! `forwarded_twice` by the engine servers, `ambiguous` by the consumers (their log lines,
//! which survive a SIGKILL), latencies by the engines (event time → engine request). Faults:
//! a consumer SIGKILLed and restarted, the broker stopped and restarted, mid-run.
//!
//! `--broker nats`: a three-node NATS cluster instead of mosquitto ([`super::brokers`]), the
//! consumers on its JetStream stream; `--kill-node-at` SIGKILLs a node and restarts it, and
//! the report adds the stores' reconnect spread ([`super::reconnects`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use phygate::sim::broker::free_port;
use tracing::info;

use super::brokers::{BrokerKind, Brokers};
use super::engines::{self, Engines};
use super::journey::{losses, settle, Journey};
use super::pgserver;
use super::procs::{read_sim_output, take_offline, Consumer, Meter};
use super::reconnects::{self, Spread};
use super::sim::SimReport;

/// Which journey store the consumers share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// `fleet-bench`'s arguments: the command line's, parsed once (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 1000)]
    pub stores: usize,
    /// Events per second per store.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    #[arg(long, value_enum, default_value = "sqlite")]
    pub store: StoreKind,
    /// SIGKILL the first consumer this long after the fleet starts, then restart it.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub kill_consumer_at: Option<Duration>,
    /// Stop and restart the broker this long after the fleet starts (mosquitto).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub restart_broker_at: Option<Duration>,
    /// The broker: one mosquitto, or a three-node NATS cluster (JetStream, MQTT on every node;
    /// the consumers read through HQ's JetStream input).
    #[arg(long, value_enum, default_value = "mosquitto")]
    pub broker: BrokerKind,
    /// SIGKILL NATS node n1 this long after the fleet starts, restart it a few seconds later,
    /// and report the stores' reconnect spread (--broker nats).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub kill_node_at: Option<Duration>,
    /// Chance that an engine answers a request 429.
    #[arg(long, default_value_t = 0.02)]
    pub throttle: f64,
    /// Keep every file here (default: a temp dir, removed at the end).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// How long the end waits for HQ to store and forward everything.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration)]
    pub settle_timeout: Duration,
    /// The stores' MQTT version (`[mqtt] protocol` of each simulated gateway): 3.1.1 or 5;
    /// HQ's consumers are unchanged.
    #[arg(long, default_value = "3.1.1")]
    pub mqtt: String,
}

/// The run's figures.
#[derive(Debug, Default)]
pub struct Verdict {
    pub published: u64,
    pub stored_unique: u64,
    pub lost: u64,
    /// Holes HQ still waits on at the end (neither arrived nor declared lost).
    pub pending: u64,
    pub forwarded_twice: u64,
    pub ambiguous: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
}

impl Verdict {
    /// Nothing lost, everything stored once, every repeat at an engine an announced one.
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.pending == 0
            && self.stored_unique == self.published
            && self.forwarded_twice <= self.ambiguous
    }
}

pub(super) const API_KEY: &str = "fleet-bench-key";

/// Runs the benchmark, prints its report; returns whether the verdict holds.
pub fn run(args: BenchArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.consumers >= 1, "--consumers must be at least 1");
    anyhow::ensure!(
        args.kill_node_at.is_none() || args.broker == BrokerKind::Nats,
        "--kill-node-at kills a node of the NATS cluster: it needs --broker nats"
    );
    anyhow::ensure!(
        args.restart_broker_at.is_none() || args.broker == BrokerKind::Mosquitto,
        "--restart-broker-at restarts mosquitto; on the NATS cluster use --kill-node-at"
    );
    if args.store == StoreKind::Sqlite {
        anyhow::ensure!(
            args.consumers == 1,
            "a SQLite journey store has one consumer (--consumers 1); several share --store postgres"
        );
    }
    let temp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("fleet-bench").tempdir()?;
            temp.path().to_owned()
        }
    };
    std::fs::create_dir_all(&dir)?;
    // Kept until the end: dropping it shuts the server down.
    let mut pg = None;
    let journey = match args.store {
        StoreKind::Sqlite => Journey::Sqlite(dir.join("hq.db")),
        StoreKind::Postgres => {
            let server = pgserver::Postgres::start().context("starting PostgreSQL")?;
            let url = server.database("journey")?;
            pg = Some(server);
            Journey::Postgres(url)
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let interrupted = interrupt_flag(&rt);
    let engines = Engines::new(API_KEY, args.throttle);
    let (listener, engines_addr) = rt.block_on(engines::bind())?;
    rt.block_on(async { engines.serve(listener) });

    let mut broker = Brokers::start(args.broker, &dir)?;
    let mut consumers = Vec::new();
    for k in 1..=args.consumers {
        let mut c = Consumer::new(&dir, k);
        write_consumer_config(&c, &broker.consumer_input(k), engines_addr, &journey)?;
        c.start(API_KEY)?;
        consumers.push(c);
    }
    if args.kill_node_at.is_some() {
        let leader = broker.lead_events_from_n1(&rt)?;
        println!("events stream leader: {leader} (--kill-node-at kills n1)");
    }
    let brokers = broker.mqtt_addresses();
    info!(dir = %dir.display(), ?brokers, engines = %engines_addr, "chain up; starting the fleet");

    let start = Instant::now();
    let mut sim = start_sim(&args, &dir, &brokers)?;
    let published_since = Arc::new(AtomicU64::new(0));
    let (report_line, sim_out) =
        read_sim_output(sim.stdout.take().expect("piped"), published_since.clone());
    let mut meters = Meters::new(args.consumers, pg.as_ref().and_then(|p| p.pid()));
    let mut faults = Faults::new(&args);
    // The simulator prints its report once its outboxes are drained, then stays online.
    let out = loop {
        if let Ok(line) = report_line.try_recv() {
            break line;
        }
        if let Some(status) = sim.try_wait()? {
            // The line may have come just before the exit.
            match report_line.try_recv() {
                Ok(line) => break line,
                Err(_) => anyhow::bail!(
                    "fleet-sim failed ({status}); see {}",
                    dir.join("fleet-sim.log").display()
                ),
            }
        }
        if interrupted.load(Ordering::SeqCst) {
            let _ = sim.kill();
            let _ = sim.wait();
            // Returning drops the consumers, the broker and PostgreSQL: each stops its process.
            anyhow::bail!("interrupted: the simulator, consumers, broker and database are stopped");
        }
        faults.apply(start.elapsed(), &mut consumers, &mut broker)?;
        meters.sample(&sim, &consumers, &broker);
        std::thread::sleep(Duration::from_millis(500));
    };
    // What each process of HQ's side used while the fleet ran: the figures that say which
    // one limits the rate (after it, HQ has the machine to itself).
    meters.sample_hq(&consumers, &broker);
    let while_sim = (start.elapsed(), meters.cpu_by_process());
    let mut report: SimReport = match serde_json::from_str(out.trim()) {
        Ok(r) => r,
        Err(e) => {
            take_offline(&mut sim);
            anyhow::bail!("reading fleet-sim's report {out:?}: {e}");
        }
    };

    let first_report = report.published;
    let settled = settle(
        &journey,
        || first_report.max(published_since.load(Ordering::Relaxed)),
        args.settle_timeout,
        || {
            meters.sample_hq(&consumers, &broker);
            !interrupted.load(Ordering::SeqCst)
        },
        || losses(&consumers[0].config).ok(),
    );
    // Settled (or given up on): the stores may go.
    take_offline(&mut sim);
    let _ = sim_out.join();
    report.published = report
        .published
        .max(published_since.load(Ordering::Relaxed));
    anyhow::ensure!(
        !interrupted.load(Ordering::SeqCst),
        "interrupted: the simulator, consumers, broker and database are stopped"
    );
    let elapsed = start.elapsed();
    let verdict = collect(&report, &journey, &consumers, &engines)?;
    for c in &mut consumers {
        c.terminate();
    }
    broker.stop();
    drop(pg);
    let spread = match faults.node_killed_at {
        Some(at) => Some(
            reconnects::from_log(&dir.join("fleet-sim.log"), at)
                .context("reading the stores' reconnects from fleet-sim.log")?,
        ),
        None => None,
    };
    print_report(
        &args,
        &report,
        &verdict,
        &engines,
        &meters,
        elapsed,
        &while_sim,
        settled,
        spread.as_ref(),
    );
    if args.dir.is_some() {
        eprintln!("files kept in {}", dir.display());
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(verdict.ok())
}

/// Set on Ctrl-C or SIGTERM. The bench owns child processes (simulator, consumers, broker,
/// database), so it must not die on the default handler: it stops them on its way out.
fn interrupt_flag(rt: &tokio::runtime::Runtime) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("interrupted: stopping the fleet's processes");
        set.store(true, Ordering::SeqCst);
    });
    flag
}

fn write_consumer_config(
    c: &Consumer,
    input: &str,
    engines: std::net::SocketAddr,
    journey: &Journey,
) -> anyhow::Result<()> {
    let status_port = free_port()?;
    let key = super::procs::KEY_ENV;
    let store = match journey {
        Journey::Sqlite(_) => "path = \"hq.db\"".to_owned(),
        Journey::Postgres(url) => format!("kind = \"postgres\"\nurl = \"{url}\""),
    };
    let text = format!(
        "{input}\
         [store]\n{store}\n\
         [loss]\ngrace = \"10s\"\n\
         [status]\nlisten = \"127.0.0.1:{status_port}\"\n\
         [[sink]]\nname = \"braze\"\nkind = \"braze\"\nurl = \"http://{engines}\"\napi_key_env = \"{key}\"\n\
         poll = \"100ms\"\nbackoff_min = \"200ms\"\n\
         [[sink]]\nname = \"amplitude\"\nkind = \"amplitude\"\nurl = \"http://{engines}\"\napi_key_env = \"{key}\"\n\
         batch = 1000\npoll = \"100ms\"\nbackoff_min = \"200ms\"\n"
    );
    std::fs::write(&c.config, text).with_context(|| format!("writing {}", c.config.display()))
}

fn start_sim(args: &BenchArgs, dir: &Path, brokers: &[String]) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join("fleet-sim.log"))?;
    Command::new(std::env::current_exe()?)
        .arg("fleet-sim")
        .args(["--stores", &args.stores.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--duration", &format!("{}ms", args.duration.as_millis())])
        .args(["--broker", &brokers.join(",")])
        .args(["--mqtt", &args.mqtt])
        .arg("--dir")
        .arg(dir.join("stores"))
        .arg("--stay-online")
        .env("RUST_LOG", "info")
        // Closed once HQ has settled: the stores stay online until then (see `--stay-online`).
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("starting fleet-sim")
}

/// The faults, each once at its time.
struct Faults {
    kill_at: Option<Duration>,
    restart_at: Option<Duration>,
    kill_node_at: Option<Duration>,
    /// When the NATS node was SIGKILLed (the log's clock: the reconnect spread counts from it).
    node_killed_at: Option<SystemTime>,
}

impl Faults {
    fn new(args: &BenchArgs) -> Faults {
        Faults {
            kill_at: args.kill_consumer_at,
            restart_at: args.restart_broker_at,
            kill_node_at: args.kill_node_at,
            node_killed_at: None,
        }
    }

    fn apply(
        &mut self,
        t: Duration,
        consumers: &mut [Consumer],
        broker: &mut Brokers,
    ) -> anyhow::Result<()> {
        if self.kill_at.is_some_and(|at| t >= at) {
            self.kill_at = None;
            eprintln!("fault at {t:.1?}: SIGKILL {}", consumers[0].name);
            consumers[0].kill9();
            std::thread::sleep(Duration::from_secs(1));
            consumers[0].start(API_KEY)?;
            eprintln!("{} restarted", consumers[0].name);
        }
        if self.restart_at.is_some_and(|at| t >= at) {
            self.restart_at = None;
            eprintln!("fault at {t:.1?}: broker stopped (SIGTERM)");
            broker.restart_mosquitto()?;
            eprintln!("broker restarted");
        }
        if self.kill_node_at.is_some_and(|at| t >= at) {
            self.kill_node_at = None;
            eprintln!("fault at {t:.1?}: SIGKILL NATS node n1");
            self.node_killed_at = Some(SystemTime::now());
            broker.kill_and_restart_node()?;
            eprintln!("NATS node n1 restarted");
        }
        Ok(())
    }
}

/// A meter per process role.
struct Meters {
    sim: Meter,
    /// One per broker process (mosquitto, or each NATS node), by name.
    brokers: Vec<(String, Meter)>,
    consumers: Vec<Meter>,
    /// PostgreSQL's postmaster and backends, when the consumers share one.
    postgres: Option<Meter>,
    postgres_pid: Option<u32>,
}

impl Meters {
    fn new(consumers: usize, postgres_pid: Option<u32>) -> Meters {
        Meters {
            sim: Meter::default(),
            brokers: Vec::new(),
            consumers: (0..consumers).map(|_| Meter::default()).collect(),
            postgres: postgres_pid.map(|_| Meter::default()),
            postgres_pid,
        }
    }

    /// The CPU time of each process of HQ's side so far, by name.
    fn cpu_by_process(&self) -> Vec<(String, Duration)> {
        let brokers = self.brokers.iter().map(|(n, m)| (n.clone(), m.cpu()));
        let consumers = (self.consumers.iter().enumerate())
            .map(|(k, m)| (format!("phygate-hq#{}", k + 1), m.cpu()));
        let postgres = (self.postgres.iter()).map(|m| ("postgres".to_owned(), m.cpu()));
        brokers.chain(consumers).chain(postgres).collect()
    }

    fn sample(&mut self, sim: &Child, consumers: &[Consumer], broker: &Brokers) {
        self.sim.sample(Some(sim.id()));
        self.sample_hq(consumers, broker);
    }

    fn sample_hq(&mut self, consumers: &[Consumer], broker: &Brokers) {
        for (name, pid) in broker.pids() {
            match self.brokers.iter_mut().find(|(n, _)| *n == name) {
                Some((_, m)) => m.sample(pid),
                None => {
                    let mut m = Meter::default();
                    m.sample(pid);
                    self.brokers.push((name, m));
                }
            }
        }
        for (m, c) in self.consumers.iter_mut().zip(consumers) {
            m.sample(c.pid());
        }
        if let Some(m) = &mut self.postgres {
            m.sample_tree(self.postgres_pid);
        }
    }
}

fn collect(
    report: &SimReport,
    store: &Journey,
    consumers: &[Consumer],
    engines: &Arc<Engines>,
) -> anyhow::Result<Verdict> {
    let (stored_unique, _) = store.progress().context("reading the journey store")?;
    let (lost, pending) = losses(&consumers[0].config)?;
    let (p50_ms, p99_ms) = engines.percentiles();
    Ok(Verdict {
        published: report.published,
        stored_unique,
        lost,
        pending,
        forwarded_twice: engines.braze.lock().unwrap().twice()
            + engines.amplitude.lock().unwrap().twice(),
        ambiguous: consumers.iter().map(Consumer::ambiguous_events).sum(),
        p50_ms,
        p99_ms,
    })
}

#[allow(clippy::too_many_arguments)]
fn print_report(
    args: &BenchArgs,
    r: &SimReport,
    v: &Verdict,
    engines: &Engines,
    meters: &Meters,
    elapsed: Duration,
    while_sim: &(Duration, Vec<(String, Duration)>),
    settled: Option<Duration>,
    spread: Option<&Spread>,
) {
    println!(
        "stores={} published={} stored_unique={} lost={} forwarded_twice={} ambiguous={} p50_ms={} p99_ms={}",
        r.stores, v.published, v.stored_unique, v.lost, v.forwarded_twice, v.ambiguous, v.p50_ms, v.p99_ms
    );
    if let Some(s) = spread {
        println!("{}", s.line());
    }
    println!(
        "rate: offered {:.0} ev/s, committed {:.0} ev/s over {:.0} s; outboxes drained {:.1} s after; HQ settled {}",
        r.offered_per_s,
        r.appended_per_s,
        r.generate_s,
        r.drain_s,
        settled.map_or("NOT within the timeout".into(), |d| format!("{:.1} s after", d.as_secs_f64()))
    );
    if let Some(settled) = settled {
        // From the first event to HQ done with the last: HQ's sustained rate over the run.
        let span = r.generate_s + r.drain_s + settled.as_secs_f64();
        println!(
            "HQ: stored and forwarded {:.0} ev/s over {span:.0} s",
            v.stored_unique as f64 / span
        );
    }
    for (name, t) in [("braze", &engines.braze), ("amplitude", &engines.amplitude)] {
        let t = t.lock().unwrap();
        println!(
            "engine {name}: {} events, {} requests, {} answered 429, {} refused",
            t.taken.len(),
            t.requests,
            t.throttled,
            t.refused
        );
    }
    println!(
        "process fleet-sim: cpu {:.1} s ({:.0} % of a core), rss peak {} MB, threads {}; \
         generating: {:.0} % of a core, {:.0} µs of CPU per event",
        r.cpu_s,
        100.0 * r.cpu_s / elapsed.as_secs_f64().max(0.001),
        r.peak_rss_kib / 1024,
        r.threads,
        100.0 * r.generate_cpu_s / r.generate_s.max(0.001),
        1e6 * r.generate_cpu_s / (r.appended.max(1) as f64)
    );
    for (name, m) in &meters.brokers {
        println!("process {name}: {}", m.line(elapsed));
    }
    for (k, m) in meters.consumers.iter().enumerate() {
        println!("process phygate-hq#{}: {}", k + 1, m.line(elapsed));
    }
    if let Some(m) = &meters.postgres {
        println!("process postgres (and its backends): {}", m.line(elapsed));
    }
    let (ran, cpu) = while_sim;
    let shares: Vec<String> = cpu
        .iter()
        .map(|(name, c)| {
            let share = 100.0 * c.as_secs_f64() / ran.as_secs_f64().max(0.001);
            format!("{name} {share:.0} %")
        })
        .collect();
    println!(
        "while the fleet ran ({:.0} s; the simulator's own figure above): {} of a core",
        ran.as_secs_f64(),
        shares.join(", ")
    );
    let mut own = Meter::default();
    own.sample(Some(std::process::id()));
    println!("process fleet-bench (engines): {}", own.line(elapsed));
    if v.pending > 0 {
        println!("pending: {} seq numbers still awaited by HQ", v.pending);
    }
    let faults = [
        args.kill_consumer_at
            .map(|t| format!("consumer SIGKILLed at {t:?}")),
        args.restart_broker_at
            .map(|t| format!("broker restarted at {t:?}")),
        args.kill_node_at
            .map(|t| format!("NATS node n1 SIGKILLed at {t:?} and restarted")),
    ];
    let faults: Vec<String> = faults.into_iter().flatten().collect();
    println!(
        "verdict: {} (faults: {})",
        if v.ok() { "ok" } else { "FAILED" },
        if faults.is_empty() {
            "none".into()
        } else {
            faults.join(", ")
        }
    );
}
