//! Is the pipeline alive? The monitor asks the outbox thread for its stats every tick (one
//! request outstanding at most), watches the link take readings off its queue, and samples the
//! HQ link. Its findings are facts for the [`verdict`](super::verdict) (page, `/healthz`,
//! `phygate status`, the `STATUS=` line this monitor keeps current); its own [`Pipeline::alive`](super::pipeline::Pipeline::alive)
//! drives systemd's watchdog.
//!
//! HQ being unreachable never stops the watchdog: restarting the gateway cannot fix a WAN
//! outage, and the outbox holds the events meanwhile. Only a wedged outbox or link does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::notify::Notifier;
use super::pipeline::WRITE_ERROR_HOLD;
use super::report::{Report, Reporter};
use super::verdict::Level;
use crate::outbox::{OutboxError, OutboxHandle, Stats};
use crate::shutdown::Shutdown;
use crate::sources::Reading;
use crate::words;

/// How often the pipeline is checked without a watchdog (with one: four times per period).
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Without a watchdog: an outbox that takes longer than this to answer is "not answering".
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

type StatsFuture = Pin<Box<dyn Future<Output = Result<Stats, OutboxError>> + Send>>;

pub struct Monitor {
    /// Where the findings go (its `health`) and the report the `STATUS=` line is made from.
    reporter: Arc<Reporter>,
    outbox: OutboxHandle,
    readings: mpsc::WeakSender<Reading>,
    notifier: Notifier,
    every: Duration,
    deadline: Duration,
}

impl Monitor {
    pub fn new(
        reporter: Arc<Reporter>,
        outbox: OutboxHandle,
        readings: mpsc::WeakSender<Reading>,
        notifier: Notifier,
    ) -> Monitor {
        // With a watchdog, a wedge must show well within one period so the pings stop in time.
        let (every, deadline) = match notifier.watchdog {
            Some(w) => (CHECK_EVERY.min(w / 4), ANSWER_WITHIN.min(w / 2)),
            None => (CHECK_EVERY, ANSWER_WITHIN),
        };
        Monitor {
            reporter,
            outbox,
            readings,
            notifier,
            every,
            deadline,
        }
    }

    /// Checks until `stop`; pings the watchdog after each check that finds the pipeline alive.
    pub async fn run(self, stop: Shutdown) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe: Option<(Instant, StatsFuture)> = None;
        let health = &self.reporter.health;
        let mut link = (self.reporter.board.taken(), None::<Instant>);
        let mut write_errors = (crate::metrics::OUTBOX_WRITE_ERRORS.get(), None::<Instant>);
        let mut hq = crate::metrics::MQTT_CONNECTED.get() == 1;
        let mut last_status = String::new();
        let mut was_alive = true;
        let mut was_level = Level::Ok;
        loop {
            tokio::select! {
                // Cancel-safe: the probe lives outside the select and is polled again next time.
                r = async { probe.as_mut().expect("guarded").1.as_mut().await }, if probe.is_some() => {
                    let (sent, _) = probe.take().expect("guarded");
                    let rtt = sent.elapsed();
                    let deadline = self.deadline;
                    health.update(|p| {
                        p.outbox_answering = r.is_ok() && rtt <= deadline;
                        if let Ok(stats) = r {
                            p.stats = Some(stats);
                        }
                    });
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    match &probe {
                        None => {
                            let outbox = self.outbox.clone();
                            probe = Some((now, Box::pin(async move { outbox.stats().await })));
                        }
                        Some((sent, _)) if now - *sent > self.deadline => {
                            health.update(|p| p.outbox_answering = false);
                        }
                        Some(_) => {}
                    }
                    let link_draining = self.link_draining(&mut link, now);
                    let errors = crate::metrics::OUTBOX_WRITE_ERRORS.get();
                    if errors != write_errors.0 {
                        write_errors = (errors, Some(now));
                    }
                    let writable = write_errors.1.is_none_or(|t| now - t > WRITE_ERROR_HOLD);
                    let connected = crate::metrics::MQTT_CONNECTED.get() == 1;
                    let hq_changed = connected != hq;
                    hq = connected;
                    health.update(|p| {
                        p.link_draining = link_draining;
                        p.outbox_writable = writable;
                        p.hq_connected = connected;
                        if hq_changed {
                            p.hq_since = SystemTime::now();
                        }
                    });
                    let pipeline = health.get();
                    let alive = pipeline.alive();
                    if alive {
                        self.notifier.watchdog();
                    }
                    let report = self.reporter.report();
                    if alive != was_alive {
                        if alive {
                            info!("pipeline alive again");
                        } else {
                            warn!(verdict = %report.verdict, "pipeline wedged; watchdog pings stop");
                        }
                        was_alive = alive;
                    }
                    let level = report.verdict.level;
                    if level != was_level {
                        if level > was_level {
                            warn!(verdict = %report.verdict, "the gateway's verdict worsened");
                        } else {
                            info!(verdict = %report.verdict, "the gateway's verdict improved");
                        }
                        was_level = level;
                    }
                    let line = status_line(&report);
                    if line != last_status {
                        self.notifier.status(&line);
                        last_status = line;
                    }
                }
                _ = stop.stopped() => return,
            }
        }
    }

    /// The link drains when its queue is empty or it took a reading since the last check; a
    /// queue that holds readings and does not move for the deadline is a wedged link.
    fn link_draining(
        &self,
        (taken, stuck_since): &mut (u64, Option<Instant>),
        now: Instant,
    ) -> bool {
        let waiting = self
            .readings
            .upgrade()
            .map(|tx| tx.max_capacity() - tx.capacity())
            .unwrap_or(0);
        let t = self.reporter.board.taken();
        if waiting == 0 || t != *taken {
            *stuck_since = None;
        } else if stuck_since.is_none() {
            *stuck_since = Some(now);
        }
        *taken = t;
        stuck_since.is_none_or(|s| now - s <= self.deadline)
    }
}

/// One line for `systemctl status`: the verdict, what a technician checks first. When ok, what
/// is working (`ok: 3 devices working, HQ connected`); otherwise the level and every reason.
pub fn status_line(report: &Report) -> String {
    match report.verdict.level {
        Level::Ok => format!(
            "ok: {} working, HQ connected",
            words::count(report.devices.len(), "device", "devices")
        ),
        _ => report.verdict.to_string(),
    }
}
