//! The command line: its definition ([`Cli`], parsed by `main.rs`, which dispatches it; also
//! read by `crates/gen` to write the man pages and shell completions the .deb ships), and the
//! tools beyond `run`: token and card-hash helpers; and how every command writes to standard
//! output.

pub mod token;

use std::fmt;
use std::io::{self, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Writes to standard output and flushes. A closed pipe is success: `phygate status | head -1`
/// or `phygate check-config x.toml | less` quit before reading everything, and that is the
/// reader's choice, not a failure (`println!` would panic there). Other errors (a full disk
/// behind a redirect) are returned.
pub fn write_stdout(args: fmt::Arguments<'_>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// `print!` through [`write_stdout`]: returns `io::Result<()>`, never panics on a closed pipe.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!($($arg)*))
    };
}

/// `println!` through [`write_stdout`]: returns `io::Result<()>`, never panics on a closed pipe.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

// The definition only: `main.rs` dispatches it; `crates/gen` renders it as man pages and
// completions. (A `///` doc here would become the help text.)
#[derive(Parser)]
#[command(
    name = "phygate",
    version,
    about = "Store edge gateway: reads scanners and other store devices, buffers every event in SQLite, syncs to HQ over MQTT",
    long_about = None
)]
// The store's package (no `sim`) has no demo to point at.
#[cfg_attr(
    feature = "sim",
    command(
        after_help = "Start with `phygate demo` to see the whole flow, `phygate check-config FILE` before installing a config.\nLogs go to stderr; set RUST_LOG=debug for more."
    )
)]
#[cfg_attr(
    not(feature = "sim"),
    command(
        after_help = "Run `phygate check-config FILE` before installing a config.\nLogs go to stderr; set RUST_LOG=debug for more."
    )
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
    #[cfg(feature = "sim")]
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
    Token(token::TokenCommand),
    /// Play a device on a pseudo-terminal, for bench work and tests. Prints the port to configure.
    #[cfg(feature = "sim")]
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

/// The devices `phygate simulate` plays (feature `sim`).
#[cfg(feature = "sim")]
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SimKind {
    Scanner,
    /// A skin analyzer speaking SKN1.
    Skin,
    /// A turnstile's Modbus RTU I/O module, driven by commands on stdin (`in 3`, `alarm on`, `help`).
    Gate,
    /// A PN532 NFC reader, driven by stdin: `tap 04A1B2C3`, `remove`, `random`, `fault drop-ack`…
    Nfc,
}
