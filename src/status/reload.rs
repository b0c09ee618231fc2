//! SIGHUP: re-read the config file, validate it, and apply what can change live.
//!
//! An invalid file is rejected with every problem logged, and the running config stays in
//! force. A valid one is compared with the running one table by table:
//!
//! - applied live: `[status]` (listen address, required devices) and `[log]` (level);
//! - everything else (stations, devices, outbox, mqtt, uplink, identity, ingest, ids) needs a
//!   restart: those shape threads, ports, the database and the HQ session that are opened once.
//!   The log says which sections changed and that the old values stay in force until then.
//!
//! Files the config names (TLS certificates, the JWKS file) are read at start: replacing them
//! needs a restart too.

use std::path::PathBuf;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::notify::Notifier;
use crate::config::{Config, StatusConfig};

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

pub struct Reloader {
    path: PathBuf,
    /// The config in force: live tables as last applied, the others as at start.
    running: toml::Table,
    status: watch::Sender<StatusConfig>,
    notifier: Notifier,
    hup: Option<Signal>,
}

impl Reloader {
    /// Takes over SIGHUP at once (its default action ends the process), so a reload sent right
    /// after start is a reload. Call within the runtime.
    pub fn new(path: PathBuf, status: watch::Sender<StatusConfig>, notifier: Notifier) -> Self {
        let running = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| toml::from_str(&t).ok())
            .unwrap_or_default();
        let hup = signal(SignalKind::hangup())
            .inspect_err(
                |e| error!(error = %e, "cannot listen for SIGHUP; config reloads need a restart"),
            )
            .ok();
        Reloader {
            path,
            running,
            status,
            notifier,
            hup,
        }
    }

    /// Reloads on every SIGHUP until `stop`.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let Some(mut hup) = self.hup.take() else {
            return;
        };
        loop {
            tokio::select! {
                // Cancel-safe: a signal that arrives meanwhile is kept for the next recv.
                _ = hup.recv() => self.reload(),
                _ = stop.changed() => return,
            }
        }
    }

    fn reload(&mut self) {
        info!(config = %self.path.display(), "SIGHUP: reloading the config");
        self.notifier.reloading();
        match self.try_reload() {
            Ok(()) => self.notifier.ready("running; config reloaded"),
            Err(e) => {
                error!("config reload rejected; the running config stays in force. {e}");
                self.notifier
                    .ready("running; last config reload was rejected (see the log)");
            }
        }
    }

    fn try_reload(&mut self) -> Result<(), String> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        let config = Config::parse(&text, &self.path).map_err(|e| e.to_string())?;
        let new: toml::Table = toml::from_str(&text).map_err(|e| e.to_string())?;
        let plan = plan(&self.running, &new);
        if plan.live.is_empty() && plan.restart.is_empty() {
            info!("config reloaded: nothing changed");
            return Ok(());
        }
        super::log::apply(&config.log);
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
        Ok(())
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
