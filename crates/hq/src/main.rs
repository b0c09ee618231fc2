//! `phygate-hq`: the command line. See `phygate_hq` for the map of the crate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use phygate_hq::config::Config;
use phygate_hq::fleetsim::bench::BenchArgs;
use phygate_hq::fleetsim::sim::SimArgs;
use phygate_hq::store::JourneyStore;

#[derive(Parser)]
#[command(
    name = "phygate-hq",
    version,
    about = "HQ's side of phygate: consumes the fleet's events into a journey store, de-duplicated, and reports lost events per store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Beside a running `phygate demo`: consume its events and print them as a journey engine
    /// (a signed webhook) receives them. Needs no config: the store demo leaves one for it.
    Demo {
        /// HQ config to use instead of the one the store demo leaves in the temp dir.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Consume the fleet's events until SIGTERM or Ctrl-C.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file and print what it resolves to.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print a user's journey (stage, visit, latest diagnosis) as JSON, one line per tenant.
    User {
        /// The app user id (`userid`).
        id: String,
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print each gateway's seq accounting: highest seq, lost and pending ranges.
    Losses {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Simulate N store gateways in this process, each with the gateway's own outbox (its own
    /// SQLite file) and uplink, publishing to a broker; prints a JSON report at the end.
    FleetSim {
        #[command(flatten)]
        args: SimArgs,
    },
    /// The fleet benchmark: a local mosquitto, K consumers, Braze- and Amplitude-like servers
    /// and fleet-sim; prints published, stored, lost, repeats, latency, CPU and memory.
    FleetBench {
        #[command(flatten)]
        args: BenchArgs,
    },
    /// Every store: its retained online/offline status, last event and losses, as a table.
    Stores {
        #[arg(long, short)]
        config: PathBuf,
        /// One JSON line per store instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The fleet controls: keys, members, config, command (docs/hq.md "Fleet controls").
    #[command(flatten)]
    Control(Box<phygate_hq::control::Control>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal; journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("phygate-hq: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Control(control) => return phygate_hq::control::dispatch(*control),
        Command::Stores { config, json } => {
            let source = phygate_hq::fleet::Source::of(&Config::load(&config)?);
            let rows = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(phygate_hq::fleet::view(&source))?;
            if json {
                for row in rows {
                    println!("{}", serde_json::to_string(&row)?);
                }
            } else {
                print!("{}", phygate_hq::fleet::table(&rows));
            }
        }
        Command::Demo { config } => serve(phygate_hq::demo::run(config))?,
        Command::Run { config } => serve(phygate_hq::run::run(Config::load(&config)?))?,
        Command::CheckConfig { config } => {
            let c = Config::load(&config)?;
            println!("{c:#?}");
        }
        Command::User { id, config } => {
            let mut store = open(&config)?;
            let views = store.user(&id)?;
            if views.is_empty() {
                eprintln!("phygate-hq: no user {id:?} in the journey store");
                return Ok(ExitCode::from(2));
            }
            for (tenant, view) in views {
                let line = serde_json::json!({"tenant": tenant, "userid": id, "journey": view});
                println!("{line}");
            }
        }
        Command::Losses { config } => {
            let mut store = open(&config)?;
            let mut gateways = store.load_gateways()?;
            gateways.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, g) in gateways {
                let pending = g.pending_ranges();
                let line = serde_json::json!({
                    "tenant": key.tenant, "store": key.store, "gateway": key.gateway,
                    "last_seq": g.span.map(|s| s.1), "lost": g.lost(), "lost_ranges": g.lost_ranges(),
                    "pending_ranges": pending, "evicted": g.evicted, "late": g.late,
                    "recovered": g.recovered,
                });
                println!("{line}");
            }
        }
        Command::FleetSim { args } => {
            // The report is printed by the run, once drained.
            phygate_hq::fleetsim::sim::run(args)?;
        }
        Command::FleetBench { args } => {
            if !phygate_hq::fleetsim::bench::run(args)? {
                return Ok(ExitCode::from(3));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn open(config: &std::path::Path) -> anyhow::Result<Box<dyn JourneyStore>> {
    let c = Config::load(config)?;
    Ok(phygate_hq::store::open_journey(&c.store)?)
}

/// Runs a long-lived service (`run`, `demo`) on a multi-threaded runtime: the consumer, the
/// sinks and the status endpoint run side by side.
fn serve(service: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(service)
}
