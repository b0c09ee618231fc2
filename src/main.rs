//! The `phygate` command line.

use std::process::ExitCode;

use clap::Parser;
#[cfg(feature = "sim")]
use phygate::cli::SimKind;
use phygate::cli::{Cli, Command};
use phygate::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's screen is HQ's view: only warnings besides it, unless RUST_LOG says otherwise.
    phygate::status::log::init(match cli.command {
        #[cfg(feature = "sim")]
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
            let effective = phygate::config::hq::effective(loaded, text);
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
        #[cfg(feature = "sim")]
        Command::Demo { seconds, rate } => {
            runtime()?.block_on(phygate::demo::run(seconds, rate))?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "sim")]
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
