//! The one verdict on the gateway: `ok`, `degraded` or `down`, with a reason in words for
//! each problem. Computed by [`judge`], a pure function of the facts the page shows, so the
//! page's banner, `phygate status` (text, `--json`, exit code), `/healthz` and systemd's
//! `STATUS=` line cannot disagree with each other or with the cards below the banner.
//!
//! - **down**: the gateway is not doing its job, events are being lost or not taken: the
//!   outbox does not answer or cannot write, readings are not being processed, a required
//!   device (`[status] required`) is not connected, or no device at all is connected.
//! - **degraded**: events are still taken and kept, but something needs a look: a device
//!   reported an error, is silent, unplugged or not heard from (when not required), HQ is not
//!   connected (the outbox buffers meanwhile) or connected but not taking the backlog, the
//!   outbox is near its quota (the oldest events will be dropped), the clock is not
//!   synchronized.
//! - **ok**: none of the above. A clock the kernel cannot be asked about is no reason either
//!   way: the verdict claims only what is known.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::board::Shown;
use super::facts::{Device, Hq, Outbox};
use crate::clock::Clock;
use crate::words;

/// Outbox bytes at or above this share of `[outbox] max_bytes` are degraded: the quota drops
/// the oldest events next, and someone has time to act before it does.
pub const NEAR_QUOTA_PERCENT: u64 = 90;
/// HQ connected yet the oldest unsent event older than this: HQ is not taking the backlog
/// (refused publishes, a stuck ack). Far above a normal drain after an outage of minutes.
pub const STALE_BACKLOG: Duration = Duration::from_secs(15 * 60);

/// How bad, worst last (so `max` is the overall level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    Degraded,
    Down,
}

impl Level {
    /// The word in JSON, in `/healthz`'s first line, in the page's classes.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Degraded => "degraded",
            Level::Down => "down",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a reason is about: the page colours that card by its worst reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Device,
    Hq,
    Outbox,
    /// The link stage that turns readings into events.
    Link,
    Clock,
}

/// One problem, in words for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub level: Level,
    pub about: Part,
    /// The device's id, for [`Part::Device`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    pub text: String,
}

/// The overall level and every reason for it, worst first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub level: Level,
    pub reasons: Vec<Reason>,
}

impl Verdict {
    /// The worst level among the reasons about `part` (`Ok` without any): a card's colour.
    pub fn level_of(&self, part: Part) -> Level {
        self.reasons
            .iter()
            .filter(|r| r.about == part)
            .map(|r| r.level)
            .max()
            .unwrap_or(Level::Ok)
    }

    /// The reasons' texts, worst first.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.reasons.iter().map(|r| r.text.as_str())
    }

    /// Needs someone: what `phygate status` exits 1 for.
    pub fn needs_attention(&self) -> bool {
        self.level != Level::Ok
    }
}

/// `degraded: scanner-1 reported an error: missing_aim; HQ is not connected …`, or `ok`.
impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.level)?;
        for (i, text) in self.texts().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            f.write_str(text)?;
        }
        Ok(())
    }
}

/// The facts a verdict is made from (the report's, borrowed).
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub now: SystemTime,
    pub devices: &'a [Device],
    pub hq: &'a Hq,
    pub outbox: &'a Outbox,
    /// The link takes readings off its queue (or has none waiting).
    pub link_draining: bool,
    pub clock: &'a Clock,
}

/// The verdict on `i`. Pure: same facts, same verdict.
pub fn judge(i: &Inputs<'_>) -> Verdict {
    let mut reasons = Vec::new();
    let mut add = |level, about, device: Option<&str>, text: String| {
        reasons.push(Reason {
            level,
            about,
            device: device.map(str::to_owned),
            text,
        })
    };

    let o = i.outbox;
    if !o.answering {
        add(
            Level::Down,
            Part::Outbox,
            None,
            "the outbox (SQLite) is not answering: new events are not being stored".into(),
        );
    } else if !o.writable {
        add(
            Level::Down,
            Part::Outbox,
            None,
            "the outbox cannot write (disk full or failing?): new events are not being stored"
                .into(),
        );
    }
    if !i.link_draining {
        add(
            Level::Down,
            Part::Link,
            None,
            "readings are not being processed (the link is stuck)".into(),
        );
    }

    device_reasons(i, &mut add);
    hq_reasons(i, &mut add);

    if let Some(bytes) = o.bytes {
        if o.quota_bytes > 0 && bytes.saturating_mul(100) >= o.quota_bytes * NEAR_QUOTA_PERCENT {
            add(
                Level::Degraded,
                Part::Outbox,
                None,
                format!(
                    "the outbox is {}% full ({} of {}): the oldest events are dropped at the quota",
                    (bytes.saturating_mul(100) / o.quota_bytes).min(100),
                    words::bytes(bytes),
                    words::bytes(o.quota_bytes)
                ),
            );
        }
    }

    if i.clock.synchronized == Some(false) {
        add(
            Level::Degraded,
            Part::Clock,
            None,
            "the clock is not synchronized (check NTP): event times and token checks may be off"
                .into(),
        );
    }

    // Stable: worst first, each level in the order above.
    reasons.sort_by_key(|r| std::cmp::Reverse(r.level));
    Verdict {
        level: reasons.iter().map(|r| r.level).max().unwrap_or(Level::Ok),
        reasons,
    }
}

/// Adds a reason: its level, what it is about, the device it names, its text.
type Add<'r> = dyn FnMut(Level, Part, Option<&str>, String) + 'r;

/// A reason per device that is not fine; a missing one is down when required (or when none is
/// up).
fn device_reasons(i: &Inputs<'_>, add: &mut Add<'_>) {
    // With no device connected at all the gateway takes nothing: each one is a reason to act.
    let none_up = !i.devices.is_empty() && i.devices.iter().all(|d| !d.view.state.is_up());
    for d in i.devices {
        let v = &d.view;
        let missing = if d.required || none_up {
            Level::Down
        } else {
            Level::Degraded
        };
        let (level, text) = match v.state {
            Shown::Ok => continue,
            Shown::Error => (
                Level::Degraded,
                format!("{} reported an error: {}", v.id, v.reason),
            ),
            Shown::Silent => (Level::Degraded, format!("{} is silent: {}", v.id, v.reason)),
            Shown::Unplugged => (missing, format!("{} is unplugged: {}", v.id, v.reason)),
            Shown::Waiting => (missing, format!("{} has not been heard from yet", v.id)),
        };
        add(level, Part::Device, Some(&v.id), text);
    }
}

/// HQ not connected, or connected but not taking the backlog.
fn hq_reasons(i: &Inputs<'_>, add: &mut Add<'_>) {
    let o = i.outbox;
    let hq = i.hq;
    let waiting = match o.depth {
        Some(n) if n > 0 => format!(
            "; {} wait in the outbox",
            words::count(n as usize, "event", "events")
        ),
        _ => String::new(),
    };
    if let (true, Some(why)) = (hq.connected, &hq.refused) {
        add(
            Level::Degraded,
            Part::Hq,
            None,
            format!("HQ's broker refuses the events: {why}{waiting}"),
        );
    } else if !hq.connected {
        // Whole seconds: "for 4 s", not "for 4.1 s".
        let since =
            Duration::from_secs(i.now.duration_since(hq.since).unwrap_or_default().as_secs());
        let last = match &hq.last_error {
            Some(e) => format!(" (last error: {e})"),
            None => String::new(),
        };
        add(
            Level::Degraded,
            Part::Hq,
            None,
            format!(
                "HQ is not connected for {}{last}{waiting}",
                words::duration(since)
            ),
        );
    } else if let Some(oldest) = o.oldest_unsent.filter(|_| o.depth.unwrap_or(0) > 0) {
        let age = i.now.duration_since(oldest).unwrap_or_default();
        if age >= STALE_BACKLOG {
            add(
                Level::Degraded,
                Part::Hq,
                None,
                format!(
                    "HQ is connected but has not taken the backlog: the oldest unsent event is {} old{waiting}",
                    words::duration(age)
                ),
            );
        }
    }
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
