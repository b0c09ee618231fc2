//! The facts the page, `/status.json` and `phygate status` show, gathered once per request.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use tokio::sync::watch;

use super::board::{Board, DeviceView};
pub use super::facts::{Device, Hq, Outbox};
use super::pipeline::{hq_last_error, hq_refusal, Health, Pipeline};
use super::rfc3339;
use super::settings::{ReportSettings, StatusConfig};
use super::verdict::{self, Inputs, Level, Verdict};
use crate::clock::Clock;
use crate::words;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub store: String,
    pub gateway: String,
    pub version: String,
    #[serde(with = "rfc3339")]
    pub now: SystemTime,
    #[serde(with = "rfc3339")]
    pub started: SystemTime,
    /// Ok, degraded or down, and why: what the banner, `/healthz`, `phygate status` and
    /// systemd's `STATUS=` line say.
    pub verdict: Verdict,
    pub devices: Vec<Device>,
    pub hq: Hq,
    pub outbox: Outbox,
    pub clock: Clock,
    /// The link takes readings off its queue (or has none waiting).
    pub link_draining: bool,
}

/// What the report is made of, besides the board and the pipeline.
pub struct Facts<'a> {
    pub store: &'a str,
    pub gateway: &'a str,
    pub broker: String,
    pub started: SystemTime,
    pub required: &'a [String],
    pub quota_bytes: u64,
}

impl Report {
    pub fn gather(facts: Facts<'_>, devices: Vec<DeviceView>, pipeline: &Pipeline) -> Report {
        let now = SystemTime::now();
        let devices: Vec<Device> = devices
            .into_iter()
            .map(|view| Device {
                required: facts.required.contains(&view.id),
                view,
            })
            .collect();
        let (last_error, last_error_at) = hq_last_error().unzip();
        let (refused, refused_since) = hq_refusal().unzip();
        let stats = pipeline.stats.as_ref();
        let hq = Hq {
            broker: facts.broker,
            connected: pipeline.hq_connected,
            since: pipeline.hq_since,
            reconnects: crate::metrics::MQTT_RECONNECTS.get(),
            last_error,
            last_error_at,
            refused,
            refused_since,
        };
        let outbox = Outbox {
            answering: pipeline.outbox_answering,
            writable: pipeline.outbox_writable,
            depth: stats.map(|s| s.depth),
            bytes: stats.map(|s| s.bytes),
            quota_bytes: facts.quota_bytes,
            oldest_unsent: stats
                .and_then(|s| s.oldest_ms)
                .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)),
            evicted_total: crate::metrics::EVENTS_EVICTED.get(),
        };
        let clock = Clock::read();
        let verdict = verdict::judge(&Inputs {
            now,
            devices: &devices,
            hq: &hq,
            outbox: &outbox,
            link_draining: pipeline.link_draining,
            clock: &clock,
        });
        Report {
            store: facts.store.into(),
            gateway: facts.gateway.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            now,
            started: facts.started,
            verdict,
            devices,
            hq,
            outbox,
            clock,
            link_draining: pipeline.link_draining,
        }
    }
}

/// Gathers a [`Report`] on demand: for each page, JSON or `/healthz` request, and for the
/// monitor's `STATUS=` line, so all of them judge the same facts the same way.
pub struct Reporter {
    pub board: Board,
    pub health: Health,
    status: watch::Receiver<StatusConfig>,
    store: String,
    gateway: String,
    broker: String,
    quota_bytes: u64,
    started: SystemTime,
}

impl Reporter {
    pub fn new(
        settings: ReportSettings,
        board: Board,
        health: Health,
        status: watch::Receiver<StatusConfig>,
    ) -> Reporter {
        Reporter {
            board,
            health,
            status,
            store: settings.store,
            gateway: settings.gateway,
            broker: settings.broker,
            quota_bytes: settings.quota_bytes,
            started: SystemTime::now(),
        }
    }

    pub fn report(&self) -> Report {
        let required = self.status.borrow().required.clone();
        let facts = Facts {
            store: &self.store,
            gateway: &self.gateway,
            broker: self.broker.clone(),
            started: self.started,
            required: &required,
            quota_bytes: self.quota_bytes,
        };
        Report::gather(
            facts,
            self.board.devices(SystemTime::now()),
            &self.health.get(),
        )
    }
}

/// "3 s", "4 min", "2 h 5 min", "3 days": how long ago, at a glance (whole seconds).
pub fn ago(now: SystemTime, then: SystemTime) -> String {
    let s = now.duration_since(then).unwrap_or_default().as_secs();
    words::duration(Duration::from_secs(s))
}

/// The local wall-clock time, for people in the store.
pub fn local_time(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Local>::from(t)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// The terminal view (`phygate status`).
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = self.now;
        writeln!(
            f,
            "phygate {} — store {}, gateway {}, up {}",
            self.version,
            self.store,
            self.gateway,
            ago(now, self.started)
        )?;
        match self.verdict.level {
            Level::Ok => writeln!(f, "OK: every device is working and HQ gets the data")?,
            level => {
                writeln!(f, "{}", level.as_str().to_uppercase())?;
                for text in self.verdict.texts() {
                    writeln!(f, "  - {text}")?;
                }
            }
        }
        writeln!(f, "\nDEVICES")?;
        let width = self
            .devices
            .iter()
            .map(|d| d.view.id.len())
            .max()
            .unwrap_or(6)
            .max(6);
        for d in &self.devices {
            let v = &d.view;
            let last = v
                .last_reading
                .map(|t| format!("{} ago", ago(now, t)))
                .unwrap_or_else(|| "never".into());
            writeln!(
                f,
                "  {:<width$}  {:<9} {:<14} station {:<12} last reading {:<12} {}{}",
                v.id,
                v.state.as_str().to_uppercase(),
                v.kind,
                v.station,
                last,
                v.reason,
                if d.required { "" } else { " (not required)" },
            )?;
        }
        writeln!(f, "\nHQ LINK  {}", self.hq.broker)?;
        let state = if self.hq.connected {
            "connected"
        } else {
            "NOT CONNECTED"
        };
        writeln!(
            f,
            "  {state} for {}, {} reconnect attempts",
            ago(now, self.hq.since),
            self.hq.reconnects
        )?;
        if let (Some(e), Some(at), false) = (
            &self.hq.last_error,
            self.hq.last_error_at,
            self.hq.connected,
        ) {
            writeln!(f, "  last error {} ago: {e}", ago(now, at))?;
        }
        if let (Some(r), Some(at)) = (&self.hq.refused, self.hq.refused_since) {
            writeln!(
                f,
                "  the broker REFUSES the events for {}: {r} (they stay in the outbox)",
                ago(now, at)
            )?;
        }
        writeln!(f, "\nOUTBOX")?;
        match (self.outbox.depth, self.outbox.oldest_unsent) {
            (Some(0), _) => writeln!(f, "  nothing waiting: HQ has everything")?,
            (Some(n), Some(t)) => writeln!(
                f,
                "  {n} events waiting, oldest unsent from {} ago",
                ago(now, t)
            )?,
            (Some(n), None) => writeln!(f, "  {n} events waiting")?,
            (None, _) => writeln!(f, "  no figures yet")?,
        }
        if !self.outbox.answering {
            writeln!(f, "  NOT ANSWERING")?;
        } else if !self.outbox.writable {
            writeln!(f, "  CANNOT WRITE")?;
        }
        if self.outbox.evicted_total > 0 {
            writeln!(
                f,
                "  {} events dropped by the storage quota since start",
                self.outbox.evicted_total
            )?;
        }
        writeln!(f, "\nCLOCK  {}", self.clock.summary())
    }
}
