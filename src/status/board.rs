//! The board: what each device last said, kept for the status page. The link posts every
//! reading here ([`Board::observe`], one call); nothing here blocks for long (a short std
//! mutex: the page and `/metrics` copy it out, the link writes a few fields).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::settings::BoardDevice;
use crate::sources::{DeviceState, Observation, Reading};

/// How long a rejected input or a device error keeps the device shown as `error` when nothing
/// newer was said: long enough for someone to look, short enough not to cry wolf all day.
pub const ERROR_HOLD: Duration = Duration::from_secs(60);

/// What a store employee sees for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shown {
    /// Connected and working.
    Ok,
    /// Connected, but nothing read for longer than its `silent_after`.
    Silent,
    /// It rejected input or failed in the last minute.
    Error,
    /// Its port is gone (cable, power) or it does not answer.
    Unplugged,
    /// Nothing heard yet (just started, or a network device that has not posted).
    Waiting,
}

impl Shown {
    pub fn as_str(self) -> &'static str {
        match self {
            Shown::Ok => "ok",
            Shown::Silent => "silent",
            Shown::Error => "error",
            Shown::Unplugged => "unplugged",
            Shown::Waiting => "waiting",
        }
    }

    /// Connected, whatever it read: what `/healthz` asks of a required device.
    pub fn is_up(self) -> bool {
        matches!(self, Shown::Ok | Shown::Silent | Shown::Error)
    }
}

/// One device as the page shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceView {
    pub id: String,
    pub kind: String,
    pub station: String,
    pub state: Shown,
    /// The device's own words for its state (`opened`, `port lost: …`, `too_long`).
    pub reason: String,
    /// When the last reading (a code, a tap, a diagnosis, a passage) arrived.
    #[serde(default, with = "super::rfc3339::option")]
    pub last_reading: Option<SystemTime>,
    pub readings: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    id: String,
    kind: String,
    station: String,
    /// Last up / down / silent report and when.
    status: Option<(DeviceState, String, SystemTime)>,
    /// Last error report and when.
    error: Option<(String, SystemTime)>,
    last_reading: Option<SystemTime>,
    readings: u64,
}

impl Entry {
    fn view(&self, now: SystemTime) -> DeviceView {
        let recent_error = self.error.as_ref().filter(|(_, at)| {
            now.duration_since(*at).unwrap_or_default() < ERROR_HOLD
                && self.status.as_ref().is_none_or(|(_, _, s)| s <= at)
        });
        let (state, reason) = match (&self.status, recent_error) {
            (Some((DeviceState::Down, r, _)), _) => (Shown::Unplugged, r.clone()),
            (Some((DeviceState::Silent, r, _)), _) => (Shown::Silent, r.clone()),
            (_, Some((r, _))) => (Shown::Error, r.clone()),
            (Some((_, r, _)), None) => (Shown::Ok, r.clone()),
            // Network devices report no link state: a post is their sign of life.
            (None, None) if self.last_reading.is_some() => (Shown::Ok, "posting".into()),
            (None, None) => (Shown::Waiting, "nothing heard yet".into()),
        };
        DeviceView {
            id: self.id.clone(),
            kind: self.kind.clone(),
            station: self.station.clone(),
            state,
            reason,
            last_reading: self.last_reading,
            readings: self.readings,
        }
    }
}

/// A cloneable handle on the board.
#[derive(Clone, Default)]
pub struct Board {
    devices: Arc<Mutex<Vec<Entry>>>,
    /// Readings the link has taken, ever: the watchdog's sign that the link drains its queue.
    taken: Arc<AtomicU64>,
}

impl Board {
    /// A board with every configured device, in config order, waiting for its first word.
    pub fn new(devices: Vec<BoardDevice>) -> Board {
        let devices = devices
            .into_iter()
            .map(|d| Entry {
                id: d.id,
                kind: d.kind.into(),
                station: d.station,
                status: None,
                error: None,
                last_reading: None,
                readings: 0,
            })
            .collect();
        Board {
            devices: Arc::new(Mutex::new(devices)),
            taken: Arc::default(),
        }
    }

    /// Notes a reading the link took. Cheap: a counter and a short lock.
    pub fn observe(&self, reading: &Reading) {
        self.taken.fetch_add(1, Ordering::Relaxed);
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = devices.iter_mut().find(|e| *e.id == *reading.device) else {
            return; // not a configured device (e.g. the outbox's own reports)
        };
        match &reading.observation {
            Observation::Status(s) if s.state == DeviceState::Error => {
                e.error = Some((s.reason.clone(), reading.at));
            }
            Observation::Status(s) => e.status = Some((s.state, s.reason.clone(), reading.at)),
            // Moves state only; not something the device read.
            Observation::GateBaseline(_) | Observation::SkinForgotten(_) => {}
            _ => {
                e.last_reading = Some(reading.at);
                e.readings += 1;
            }
        }
    }

    /// Every device as shown at `now`.
    pub fn devices(&self, now: SystemTime) -> Vec<DeviceView> {
        let devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        devices.iter().map(|e| e.view(now)).collect()
    }

    /// Readings taken by the link so far.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::DeviceStatus;

    fn board() -> Board {
        let text = r#"
tenant = "t"
store = "s"
[[station]]
id = "k"
role = "kiosk"
[[device]]
kind = "scanner"
id = "sc"
station = "k"
port = "/dev/null"
[mqtt]
host = "h"
"#;
        Board::new(
            crate::config::Config::parse(text, std::path::Path::new("x.toml"))
                .unwrap()
                .board_devices(),
        )
    }

    fn status(at: SystemTime, state: DeviceState, reason: &str) -> Reading {
        Reading {
            device: "sc".into(),
            station: "k".into(),
            at,
            observation: Observation::Status(DeviceStatus {
                kind: "scanner",
                state,
                reason: reason.into(),
                count: None,
            }),
        }
    }

    fn state(b: &Board, now: SystemTime) -> (Shown, String) {
        let d = &b.devices(now)[0];
        (d.state, d.reason.clone())
    }

    #[test]
    fn states_follow_the_device_reports() {
        let b = board();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(state(&b, t0).0, Shown::Waiting);
        b.observe(&status(t0, DeviceState::Up, "opened"));
        assert_eq!(state(&b, t0), (Shown::Ok, "opened".into()));
        b.observe(&status(t0, DeviceState::Down, "port lost"));
        assert_eq!(state(&b, t0).0, Shown::Unplugged);
        assert!(!state(&b, t0).0.is_up());
        b.observe(&status(t0, DeviceState::Up, "opened"));
        b.observe(&status(t0, DeviceState::Silent, "no code for 30m"));
        assert_eq!(state(&b, t0).0, Shown::Silent);
        assert_eq!(b.taken(), 4);
    }

    #[test]
    fn an_error_shows_for_a_minute_unless_the_device_says_more() {
        let b = board();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        b.observe(&status(t0, DeviceState::Up, "opened"));
        b.observe(&status(t0, DeviceState::Error, "too_long"));
        assert_eq!(state(&b, t0), (Shown::Error, "too_long".into()));
        assert_eq!(state(&b, t0 + ERROR_HOLD).0, Shown::Ok);
        // A reader that failed and came back is ok at once.
        b.observe(&status(t0, DeviceState::Error, "no answer"));
        b.observe(&status(
            t0 + Duration::from_secs(1),
            DeviceState::Up,
            "reinitialised",
        ));
        assert_eq!(state(&b, t0 + Duration::from_secs(2)).0, Shown::Ok);
    }
}
