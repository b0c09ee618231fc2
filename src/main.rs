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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Several crates could install a TLS provider; ours is ring. Already installed is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
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
                println!(
                    "{} is valid. phygate run would start:\n{config}",
                    file.display()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Run { config } => {
            let config = Config::load(&config)?;
            runtime()?.block_on(phygate::daemon::run(config, shutdown_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
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
