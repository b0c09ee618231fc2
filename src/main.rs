//! The `phygate` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use phygate::config::Config;

#[derive(Parser)]
#[command(
    name = "phygate",
    version,
    about = "Store edge gateway: reads scanners and other store devices, buffers every event in SQLite, syncs to HQ over MQTT",
    long_about = None,
    after_help = "Start with `phygate demo` to see the whole flow, `phygate check-config FILE` before installing a config.\nLogs go to stderr; set RUST_LOG=debug for more."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a config file (what the systemd unit runs).
    Run {
        /// The TOML config, e.g. /etc/phygate/phygate.toml.
        #[arg(short, long, env = "PHYGATE_CONFIG")]
        config: PathBuf,
    },
    /// Show the running gateway's status: its verdict (ok, degraded or down, with reasons),
    /// devices, HQ link, outbox, clock (exit 0 ok, 1 degraded or down, 2 unreachable).
    Status {
        /// The gateway's status listener (`[status] listen`).
        #[arg(
            long,
            default_value = "http://127.0.0.1:8080",
            env = "PHYGATE_STATUS_URL"
        )]
        url: String,
        /// Print the raw JSON (`/status.json`) instead.
        #[arg(long)]
        json: bool,
    },
    /// Validate a config file: prints what `run` would start, or every error with its line and field.
    CheckConfig {
        /// The TOML config to check.
        file: PathBuf,
    },
    /// One-command demo: a simulated scanner, a local SQLite outbox, a local broker, and HQ's view.
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        /// Codes the simulated scanner sends per second.
        #[arg(long, default_value_t = 2.0)]
        rate: f64,
    },
    /// App tokens and card hashes: keygen, mint (with a QR PNG), verify, card-hash.
    #[command(subcommand)]
    Token(phygate::cli::token::TokenCommand),
    /// Play a device on a pseudo-terminal, for bench work and tests. Prints the port to configure.
    Simulate {
        #[arg(value_enum)]
        kind: SimKind,
        /// Stable path to create as a symlink to the simulated port.
        #[arg(long)]
        link: PathBuf,
        /// Line terminator the simulated scanner sends.
        #[arg(long, default_value = "cr")]
        terminator: String,
        /// Send AIM symbology identifiers (]Q1).
        #[arg(long)]
        aim: bool,
        /// Codes per second when generating codes (with no --stdin).
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Send each line read from standard input instead of generated codes (skin: each
        /// line is the JSON, framed with its CRC).
        #[arg(long)]
        stdin: bool,
        /// (skin) Mix a bad line of each kind in turn (bad CRC, out of range, oversize,
        /// garbage, truncated) into the generated readings.
        #[arg(long)]
        faults: bool,
        /// (gate) Modbus unit address of the simulated gate I/O module.
        #[arg(long, default_value_t = 1)]
        unit: u8,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SimKind {
    Scanner,
    /// A skin analyzer speaking SKN1.
    Skin,
    /// A turnstile's Modbus RTU I/O module, driven by commands on stdin (`in 3`, `alarm on`, `help`).
    Gate,
    /// A PN532 NFC reader, driven by stdin: `tap 04A1B2C3`, `remove`, `random`, `fault drop-ack`…
    Nfc,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's screen is HQ's view: only warnings besides it, unless RUST_LOG says otherwise.
    phygate::status::log::init(match cli.command {
        Command::Demo { .. } => "warn,rumqttd=off",
        _ => "info",
    });
    // Several crates could install a TLS provider; ours is ring. Already installed is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();

    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("phygate: error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(config) => {
                phygate::outln!(
                    "{} is valid. phygate run would start:\n{config}",
                    file.display()
                )?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Run { config } => {
            // The same checks as check-config, and the same list: nothing starts on a config
            // that check-config would refuse.
            let loaded = match Config::load(&config) {
                Ok(loaded) => loaded,
                Err(e) => {
                    eprintln!("phygate: refusing to start: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            // What load just read; HQ's stored config, when valid, takes precedence over it.
            let text = std::fs::read_to_string(&config)?;
            let effective = phygate::downlink::hqconfig::effective(loaded, text);
            let service = phygate::daemon::run_service(effective, config, shutdown_signal());
            runtime()?.block_on(service)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(cmd) => {
            phygate::cli::token::run(cmd)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { url, json } => match phygate::status::cli::fetch(&url) {
            Ok(report) => {
                if json {
                    phygate::outln!("{}", serde_json::to_string_pretty(&report)?)?;
                } else {
                    phygate::out!("{report}")?;
                }
                // 0 ok; 1 degraded or down: someone should look (2 is unreachable, below).
                Ok(ExitCode::from(u8::from(report.verdict.needs_attention())))
            }
            Err(e) => {
                eprintln!("phygate status: {e}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Demo { seconds, rate } => {
            runtime()?.block_on(phygate::demo::run(seconds, rate))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            kind,
            link,
            terminator,
            aim,
            rate,
            stdin,
            faults,
            unit,
        } => {
            match kind {
                SimKind::Scanner => {
                    phygate::sim::scanner::run_cli(&link, &terminator, aim, rate, stdin)?
                }
                SimKind::Skin => phygate::sim::skin::run_cli(&link, rate, stdin, faults)?,
                SimKind::Gate => phygate::sim::modbus_gate::run_cli(&link, unit)?,
                SimKind::Nfc => phygate::sim::pn532::run_cli(&link)?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Two workers: the device is small, and blocking work has its own threads.
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Resolves on SIGTERM (systemd stop) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops phygate");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
