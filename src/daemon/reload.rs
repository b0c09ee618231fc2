//! Config reloads: SIGHUP re-reads the config file, and HQ's `config` topic sends a whole
//! config (see `config::hq` for where it is kept and its precedence over the local
//! file). Both are validated and applied the same way.
//!
//! An invalid config is rejected with every problem logged (and, from HQ, reported as
//! `store.config.rejected`), and the running config stays in force. A valid one is compared with
//! the running one table by table:
//!
//! - applied live: `[status]` (listen address, required devices) and `[log]` (level);
//! - everything else (stations, devices, outbox, mqtt, uplink, identity, ingest, ids) needs a
//!   restart: those shape threads, ports, the database and the HQ session that are opened once.
//!   The log (and HQ's `store.config.applied`) says which sections changed and that the old
//!   values stay in force until then.
//!
//! Files the config names (TLS certificates, the JWKS file) are read at start: replacing them
//! needs a restart too.

use std::path::PathBuf;
use std::time::SystemTime;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::hq as hqconfig;
use crate::config::Config;
use crate::downlink::Delivery;
use crate::event::{ConfigApplied, ConfigRejected, Event, EventData};
use crate::outbox::OutboxHandle;
use crate::shutdown::Shutdown;
use crate::status::notify::Notifier;
use crate::status::{Live, StatusConfig};

/// Top-level tables a reload applies without a restart.
const LIVE: &[&str] = &["status", "log"];

/// Which changed sections were applied and which wait for a restart.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub live: Vec<String>,
    pub restart: Vec<String>,
}

/// Compares two configs as written (every top-level key, defaults left implicit).
pub fn plan(running: &toml::Table, new: &toml::Table) -> Plan {
    let mut keys: Vec<&String> = running.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut plan = Plan::default();
    for key in keys {
        if running.get(key) != new.get(key) {
            if LIVE.contains(&key.as_str()) {
                plan.live.push(key.clone());
            } else {
                plan.restart.push(key.clone());
            }
        }
    }
    plan
}

/// Where configs come from, for the reloader.
pub struct Sources {
    /// The local file (`--config`), re-read on SIGHUP; `None`: no SIGHUP (tests, the demo).
    pub local: Option<PathBuf>,
    /// The text of the config in force at start (HQ's stored one, or the local file's).
    pub text: String,
    /// HQ's configs from the downlink.
    pub hq: Option<mpsc::Receiver<Delivery<String>>>,
    /// Where HQ's config is kept: next to the local file's outbox (`hqconfig::Effective`), so a
    /// config that moves `[outbox] path` is found again at the next start.
    pub stored: PathBuf,
    /// Where the version of HQ's config in force is posted (the status report).
    pub applied: crate::uplink::report::AppliedHandle,
}

/// What the status side is handed to start the reloader with (`status::Ops::start`): HQ's
/// configs from the downlink, and the file (when there is one) on SIGHUP.
pub(super) fn spawner(
    config: &Config,
    source: super::ConfigSource,
    hq: mpsc::Receiver<Delivery<String>>,
    outbox: OutboxHandle,
    applied: crate::uplink::report::AppliedHandle,
) -> impl FnOnce(Live) -> JoinHandle<()> {
    let sources = Sources {
        applied,
        stored: (source.stored).unwrap_or_else(|| hqconfig::stored_path(&config.outbox.path)),
        local: source.local,
        text: source.text,
        hq: Some(hq),
    };
    let started = config.clone();
    move |live: Live| {
        let reloader = Reloader::new(sources, &started, live.status, live.notifier, outbox);
        tokio::spawn(reloader.run(live.shutdown))
    }
}

pub struct Reloader {
    local: Option<PathBuf>,
    /// Where HQ's config is kept; while it exists it is what SIGHUP re-reads.
    stored: PathBuf,
    /// The config in force: live tables as last applied, the others as at start.
    running: toml::Table,
    /// The config at start: HQ's must name the same tenant and store.
    started: Config,
    status: watch::Sender<StatusConfig>,
    notifier: Notifier,
    hup: Option<Signal>,
    hq: Option<mpsc::Receiver<Delivery<String>>>,
    /// Where HQ's configs are reported.
    outbox: OutboxHandle,
    applied: crate::uplink::report::AppliedHandle,
}

impl Reloader {
    /// Takes over SIGHUP at once when there is a local file (its default action ends the
    /// process), so a reload sent right after start is a reload. Call within the runtime.
    pub fn new(
        sources: Sources,
        started: &Config,
        status: watch::Sender<StatusConfig>,
        notifier: Notifier,
        outbox: OutboxHandle,
    ) -> Self {
        let running = toml::from_str(&sources.text).unwrap_or_default();
        // HQ's config is in force when the text at start is the stored one.
        let from_hq = std::fs::read_to_string(&sources.stored)
            .is_ok_and(|stored| !sources.text.is_empty() && stored == sources.text);
        sources
            .applied
            .set_config(from_hq.then(|| hqconfig::version(&sources.text)));
        let hup = sources.local.as_ref().and_then(|_| {
            signal(SignalKind::hangup())
                .inspect_err(
                    |e| error!(error = %e, "cannot listen for SIGHUP; config reloads need a restart"),
                )
                .ok()
        });
        Reloader {
            local: sources.local,
            stored: sources.stored,
            running,
            started: started.clone(),
            status,
            notifier,
            hup,
            hq: sources.hq,
            outbox,
            applied: sources.applied,
        }
    }

    /// Reloads on every SIGHUP and HQ config until `shutdown`.
    pub async fn run(mut self, shutdown: Shutdown) {
        let mut hup = self.hup.take();
        let mut hq = self.hq.take();
        loop {
            tokio::select! {
                // Cancel-safe: a signal that arrives meanwhile is kept for the next recv.
                _ = async { hup.as_mut().expect("guarded").recv().await }, if hup.is_some() => self.reload(),
                // Cancel-safe: mpsc::Receiver::recv loses nothing.
                d = async { hq.as_mut().expect("guarded").recv().await }, if hq.is_some() => match d {
                    Some(d) => {
                        if self.apply_hq(d).await.is_err() {
                            return;
                        }
                    }
                    None => hq = None,
                },
                _ = shutdown.stopped() => return,
            }
        }
    }

    fn reload(&mut self) {
        // HQ's stored config, while there is one, is the config in force (hqconfig).
        let path = if self.stored.exists() {
            self.stored.clone()
        } else {
            match &self.local {
                Some(p) => p.clone(),
                None => return,
            }
        };
        info!(config = %path.display(), "SIGHUP: reloading the config");
        self.notifier.reloading();
        match self.try_reload(&path) {
            Ok(()) => self.notifier.ready("running; config reloaded"),
            Err(e) => {
                error!("config reload rejected; the running config stays in force. {e}");
                self.notifier
                    .ready("running; last config reload was rejected (see the log)");
            }
        }
    }

    fn try_reload(&mut self, path: &std::path::Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let config = Config::parse(&text, path).map_err(|e| e.to_string())?;
        let new: toml::Table = toml::from_str(&text).map_err(|e| e.to_string())?;
        self.apply(&config, new);
        Ok(())
    }

    /// Checks, stores, applies and reports a config from HQ; the receipt is settled once the
    /// report is committed (an outcome HQ will hear of). Err: the outbox closed (shutdown).
    async fn apply_hq(&mut self, d: Delivery<String>) -> Result<(), crate::outbox::OutboxError> {
        let Delivery {
            update: text,
            receipt,
        } = d;
        let version = hqconfig::version(&text);
        let checked = hqconfig::check(&text, &self.stored, &self.started).and_then(|c| {
            let table = toml::from_str::<toml::Table>(&text).map_err(|e| vec![e.to_string()])?;
            Ok((c, table))
        });
        let data = match checked {
            Err(reasons) => {
                crate::metrics::DOWNLINK_REFUSED.inc();
                error!(
                    version,
                    "config from HQ rejected whole; the running config stays in force. {}",
                    reasons.join("; ")
                );
                EventData::ConfigRejected(ConfigRejected { version, reasons })
            }
            Ok((config, table)) => {
                if let Err(e) = hqconfig::persist(&self.stored, &text) {
                    // Not applied and not acknowledged: the broker sends it again.
                    error!(version, file = %self.stored.display(), error = %e, "cannot store HQ's config; not applied");
                    return Ok(());
                }
                info!(version, file = %self.stored.display(), "config from HQ stored; it is the config in force from now on");
                let plan = self.apply(&config, table);
                self.applied.set_config(Some(version.clone()));
                crate::metrics::DOWNLINK_APPLIED.inc();
                EventData::ConfigApplied(ConfigApplied {
                    version,
                    live: plan.live,
                    restart: plan.restart,
                })
            }
        };
        let event = Event::new(
            self.started.gateway.as_str().into(),
            SystemTime::now(),
            data,
        );
        match self.outbox.append(event).await {
            Ok(_) => receipt.settle(),
            Err(crate::outbox::OutboxError::Closed) => {
                return Err(crate::outbox::OutboxError::Closed)
            }
            Err(e) => {
                warn!(error = %e, "the config report was not stored; HQ's broker will send the config again")
            }
        }
        Ok(())
    }

    /// Applies the live tables of a valid config and says what waits for a restart.
    fn apply(&mut self, config: &Config, new: toml::Table) -> Plan {
        let plan = plan(&self.running, &new);
        if plan.live.is_empty() && plan.restart.is_empty() {
            info!("config reloaded: nothing changed");
            return plan;
        }
        crate::status::log::apply(&config.log);
        self.status.send_if_modified(|s| {
            let changed = *s != config.status;
            *s = config.status.clone();
            changed
        });
        for key in LIVE {
            match new.get(*key) {
                Some(v) => self.running.insert(key.to_string(), v.clone()),
                None => self.running.remove(*key),
            };
        }
        if !plan.live.is_empty() {
            info!(sections = %plan.live.join(", "), "config reloaded: applied live");
        }
        if !plan.restart.is_empty() {
            warn!(
                sections = %plan.restart.join(", "),
                "config reloaded, but these sections only change with a restart \
                 (systemctl restart phygate); their old values stay in force until then"
            );
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn status_and_log_are_live_the_rest_waits_for_a_restart() {
        let old =
            table("store = \"a\"\n[status]\nlisten = \"127.0.0.1:1\"\n[mqtt]\nhost = \"h\"\n");
        let new = table("store = \"a\"\n[status]\nlisten = \"127.0.0.1:2\"\n[log]\nlevel = \"debug\"\n[mqtt]\nhost = \"k\"\n");
        assert_eq!(
            plan(&old, &new),
            Plan {
                live: vec!["log".into(), "status".into()],
                restart: vec!["mqtt".into()],
            }
        );
        assert_eq!(plan(&old, &old), Plan::default());
    }
}
