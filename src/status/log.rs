//! Logging: to stderr, which journald collects under systemd. There, lines carry their
//! syslog priority (`<3>` error … `<7>` debug, sd-daemon(3)) so `journalctl -p warning` works,
//! and no timestamp or colours (journald adds its own time). The filter can be swapped at run
//! time: a reload applies `[log] level`.

use std::sync::OnceLock;

use tracing::{Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

use super::settings::LogConfig;

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the process's logger (call once, first thing in `main`).
pub fn init(default: &'static str) {
    let _ = DEFAULT.set(default);
    let (filter, handle) = reload::Layer::new(filter_for(None));
    // systemd sets JOURNAL_STREAM when stderr goes to the journal.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    // Colours only for a person at a terminal, not in files or pipes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let plain = fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let (journal, terminal) = if journald {
        let journal = fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(Priority(fmt::format().without_time().with_ansi(false)));
        (Some(journal), None)
    } else {
        (None, Some(plain))
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(journal)
        .with(terminal)
        .init();
    let _ = FILTER.set(handle);
}

/// The filter when neither `[log] level` nor `RUST_LOG` says: per command (`info` for `run`).
static DEFAULT: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// `[log] level` when set, else a non-empty `RUST_LOG`, else the command's default.
fn filter_for(level: Option<&str>) -> EnvFilter {
    let default = || EnvFilter::new(DEFAULT.get().copied().unwrap_or("info"));
    match level {
        Some(level) => EnvFilter::try_new(level).unwrap_or_else(|_| default()),
        None => match std::env::var("RUST_LOG") {
            Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(v).unwrap_or_else(|_| default()),
            _ => default(),
        },
    }
}

/// Applies `[log] level` (a no-op where [`init`] did not install the logger, e.g. in tests).
pub fn apply(config: &LogConfig) {
    if let Some(handle) = FILTER.get() {
        if let Err(e) = handle.reload(filter_for(config.level.as_deref())) {
            tracing::warn!(error = %e, "cannot change the log filter");
        }
    }
}

/// Prefixes each line with its syslog priority for journald.
struct Priority<F>(F);

impl<S, N, F> FormatEvent<S, N> for Priority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}
