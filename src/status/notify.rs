//! systemd's notify protocol (`Type=notify`): `READY=1` once running, `STATUS=` lines for
//! `systemctl status`, `WATCHDOG=1` while the pipeline is alive, `RELOADING=1` / `STOPPING=1`.
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
    /// `WatchdogSec=` as systemd handed it (`WATCHDOG_USEC`), when the watchdog is on.
    pub watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (honouring `WATCHDOG_PID`).
    pub fn from_env() -> Notifier {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled().filter(|d| !d.is_zero()),
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Before a reload; systemd (`Type=notify-reload`) waits for the next `READY=1`.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        // A lost datagram costs a STATUS line or one ping; systemd's timeout judges the rest.
        if let Err(e) = sd_notify::notify(states) {
            debug!(error = %e, "cannot notify systemd");
        }
    }
}
