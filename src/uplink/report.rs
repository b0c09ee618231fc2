//! The gateway's report to HQ, carried by its retained status message (`…/{store}/status`,
//! [`phygate_proto::status`]): the config, key set and member map versions it applied, the
//! devices in error, and the age of its backlog.
//!
//! Why the status and not events: the report is a state ("what I hold now"), and a retained
//! message is what MQTT keeps per topic for state. HQ reads the whole fleet's in one
//! subscription, a push's `--wait` sees at once the stores that already hold the version (so a
//! repeated push says what the stores hold, not that nobody answered), and a backlog's age can
//! only travel beside the backlog, not behind it in the outbox. The applied events
//! (`store.config.applied`) stay the durable record of each change.
//!
//! Not a flood: the versions are sent when one changes; the devices and the backlog are looked
//! at every [`CHECK_EVERY`] and sent only when a device enters or leaves an error state or a
//! backlog appears or clears, and, while a backlog lasts, again every [`BACKLOG_REFRESH`]
//! (its `oldest` time moves as it drains; its age grows at HQ without any message).
//!
//! The `seq` report ([`SeqReport`]: acknowledged through, held from) tells HQ the numbers it
//! cannot see missing on its own: those after the last event it received, when a store goes
//! quiet after a broker lost its last events. So it goes out when the acknowledged `seq` has
//! stopped moving (one [`CHECK_EVERY`] without a new acknowledgement: the store went quiet),
//! again once [`SEQ_REPEAT`] later (the first may have been lost with the events it speaks
//! of), and while the store is busy at most every [`SEQ_REFRESH`] (there, the next events
//! show HQ any hole).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use phygate_proto::status::{Backlog, DeviceError, KeysReport, MembersReport, Report, SeqReport};
use tokio::sync::watch;

use crate::outbox::OutboxHandle;
use crate::status::board::Shown;
use crate::status::Board;

/// How often the devices and the backlog are looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// An unacknowledged event older than this is a backlog worth reporting; below it, it is
/// simply on its way.
pub const BACKLOG_AFTER: Duration = Duration::from_secs(10);
/// While a backlog lasts, how often its report is renewed.
pub const BACKLOG_REFRESH: Duration = Duration::from_secs(30);
/// After a `seq` report, how long before it is sent once more unchanged.
pub const SEQ_REPEAT: Duration = Duration::from_secs(30);
/// While acknowledgements keep coming, how often the `seq` report is sent.
pub const SEQ_REFRESH: Duration = Duration::from_secs(60);

/// The versions applied from HQ, written by whoever applies them (the link: keys and members;
/// the config applier: configs) and read by the uplink.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    pub config: Option<String>,
    pub keys: Option<KeysReport>,
    pub members: MembersReport,
}

/// A cloneable handle on the applied versions.
#[derive(Clone)]
pub struct AppliedHandle(Arc<watch::Sender<Applied>>);

impl Default for AppliedHandle {
    fn default() -> Self {
        AppliedHandle(Arc::new(watch::channel(Applied::default()).0))
    }
}

impl AppliedHandle {
    pub fn subscribe(&self) -> watch::Receiver<Applied> {
        self.0.subscribe()
    }

    pub fn set_config(&self, version: Option<String>) {
        self.0.send_if_modified(|a| replace(&mut a.config, version));
    }

    /// The key set from HQ as the gateway keeps it (its JWKS text) and its kids.
    pub fn set_keys(&self, jwks: &str, kids: Vec<String>) {
        let keys = Some(KeysReport {
            version: keys_version(jwks),
            kids,
        });
        self.0.send_if_modified(|a| replace(&mut a.keys, keys));
    }

    pub fn set_members(&self, scope: crate::downlink::MemberScope, version: u64) {
        self.0.send_if_modified(|a| {
            let held = match scope {
                crate::downlink::MemberScope::Store => &mut a.members.store,
                crate::downlink::MemberScope::Fleet => &mut a.members.all,
            };
            replace(held, version)
        });
    }
}

fn replace<T: PartialEq>(slot: &mut T, new: T) -> bool {
    let changed = *slot != new;
    *slot = new;
    changed
}

/// A key set's version: the config's digest rule on the JWKS as the gateway keeps it (compact,
/// keys sorted by kid), so HQ computes it from its own JWKS through the edge's parser.
pub fn keys_version(jwks: &str) -> String {
    crate::config::hq::version(jwks)
}

/// Where the uplink reads the report from.
#[derive(Clone)]
pub struct ReportSources {
    pub applied: watch::Receiver<Applied>,
    pub board: Board,
}

/// Builds the report and decides when it is worth sending.
pub struct Reporter {
    sources: ReportSources,
    /// What triggered the last report: devices (id, state) and whether there was a backlog.
    last_shape: Option<(Vec<(String, String)>, bool)>,
    last_backlog_sent: Option<SystemTime>,
    seq: SeqPacer,
}

impl Reporter {
    pub fn new(sources: ReportSources) -> Reporter {
        Reporter {
            sources,
            last_shape: None,
            last_backlog_sent: None,
            seq: SeqPacer::default(),
        }
    }

    /// Waits for a change of the applied versions (cancel-safe; pending forever once the
    /// writers are gone).
    pub async fn applied_changed(&mut self) {
        if self.sources.applied.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The report as of now, and whether it differs enough from the last one sent to send it.
    pub async fn check(&mut self, outbox: &OutboxHandle, now: SystemTime) -> (Report, bool) {
        let report = self.build(outbox, now).await;
        let shape = shape(&report);
        let backlog_due = report.backlog.is_some()
            && self
                .last_backlog_sent
                .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= BACKLOG_REFRESH);
        let seq_due = report.seq.is_some_and(|s| self.seq.due(s.acked, now));
        let due = self.last_shape.as_ref() != Some(&shape) || backlog_due || seq_due;
        (report, due)
    }

    /// Notes that `report` went out.
    pub fn sent(&mut self, report: &Report, now: SystemTime) {
        self.last_shape = Some(shape(report));
        self.last_backlog_sent = report.backlog.as_ref().map(|_| now);
        if let Some(s) = report.seq {
            self.seq.sent(s.acked, now);
        }
    }

    async fn build(&mut self, outbox: &OutboxHandle, now: SystemTime) -> Report {
        let applied = self.sources.applied.borrow_and_update().clone();
        let devices_in_error = self
            .sources
            .board
            .devices(now)
            .into_iter()
            .filter(|d| matches!(d.state, Shown::Error | Shown::Unplugged | Shown::Silent))
            .map(|d| DeviceError {
                device: d.id,
                kind: d.kind,
                state: d.state.as_str().to_owned(),
                reason: d.reason,
            })
            .collect();
        let (backlog, seq) = match outbox.stats().await {
            Ok(s) => (
                backlog(s.oldest_ms, s.depth, now),
                (s.acked > 0).then_some(SeqReport {
                    acked: s.acked,
                    held_from: s.held_from,
                }),
            ),
            Err(_) => (None, None),
        };
        Report {
            config: applied.config,
            keys: applied.keys,
            members: applied.members,
            devices_in_error,
            backlog,
            seq,
        }
    }
}

/// When the `seq` report is worth a status message of its own (the module's doc).
#[derive(Debug, Default)]
struct SeqPacer {
    /// The acknowledged `seq` at the previous check.
    previous: Option<u64>,
    /// The last one sent, and when.
    sent: Option<(u64, SystemTime)>,
    /// The last one sent went out twice.
    repeated: bool,
}

impl SeqPacer {
    /// Whether a report of `acked`, checked at `now` (every [`CHECK_EVERY`]), is due.
    fn due(&mut self, acked: u64, now: SystemTime) -> bool {
        let quiet = self.previous == Some(acked);
        self.previous = Some(acked);
        let since = |at: SystemTime| now.duration_since(at).unwrap_or_default();
        match self.sent {
            None => quiet,
            Some((last, at)) if last != acked => quiet || since(at) >= SEQ_REFRESH,
            Some((_, at)) => !self.repeated && since(at) >= SEQ_REPEAT,
        }
    }

    fn sent(&mut self, acked: u64, now: SystemTime) {
        self.repeated = self.sent.is_some_and(|(last, _)| last == acked);
        self.sent = Some((acked, now));
    }
}

/// A backlog when the oldest unacknowledged event is older than [`BACKLOG_AFTER`].
fn backlog(oldest_ms: Option<i64>, depth: u64, now: SystemTime) -> Option<Backlog> {
    let oldest = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(oldest_ms?).ok()?);
    let age = now.duration_since(oldest).unwrap_or_default();
    (age >= BACKLOG_AFTER).then(|| Backlog {
        oldest: crate::event::format_time(oldest),
        events: depth,
    })
}

/// What makes a report worth sending when it changes: the versions, each device's (id, state)
/// in error, whether there is a backlog. Not a reason's wording nor the backlog's count.
fn shape(r: &Report) -> (Vec<(String, String)>, bool) {
    let mut key: Vec<(String, String)> = r
        .devices_in_error
        .iter()
        .map(|d| (d.device.clone(), d.state.clone()))
        .collect();
    key.push((
        format!("{:?}", (&r.config, &r.keys, r.members)),
        String::new(),
    ));
    (key, r.backlog.is_some())
}

/// `{"state":…,"gateway":…,"version":…,"since":…,"report":…}` (docs/events.md "Status").
pub(super) fn status_payload(
    state: &str,
    gateway: &str,
    report: Option<phygate_proto::status::Report>,
) -> Vec<u8> {
    let status = phygate_proto::status::Status {
        state: state.to_owned(),
        gateway: gateway.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        since: crate::event::format_time(std::time::SystemTime::now()),
        report,
    };
    serde_json::to_vec(&status).expect("a status serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_is_reported_only_past_its_threshold() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let ms = |s: u64| Some((s * 1000) as i64);
        assert_eq!(backlog(None, 0, now), None);
        assert_eq!(backlog(ms(995), 3, now), None, "5 s old: on its way");
        let b = backlog(ms(900), 40, now).expect("100 s old");
        assert_eq!(b.events, 40);
        assert_eq!(b.oldest, "1970-01-01T00:15:00.000Z");
    }

    #[test]
    fn a_reason_or_count_change_is_not_a_new_shape_but_a_state_or_version_is() {
        let dev = |state: &str, reason: &str| DeviceError {
            device: "scanner-1".into(),
            kind: "scanner".into(),
            state: state.into(),
            reason: reason.into(),
        };
        let mut a = Report {
            devices_in_error: vec![dev("error", "too_long")],
            ..Report::default()
        };
        let b = Report {
            devices_in_error: vec![dev("error", "bad_suffix")],
            ..a.clone()
        };
        assert_eq!(shape(&a), shape(&b));
        let c = Report {
            devices_in_error: vec![dev("unplugged", "port lost")],
            ..a.clone()
        };
        assert_ne!(shape(&a), shape(&c));
        let before = shape(&a);
        a.members.all = 2;
        assert_ne!(before, shape(&a));
    }

    #[test]
    fn the_seq_report_goes_when_the_store_goes_quiet_once_more_later_and_rarely_while_busy() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut p = SeqPacer::default();
        // Busy: the watermark moves at every check; nothing until SEQ_REFRESH after a report.
        assert!(!p.due(10, at(0)));
        assert!(!p.due(20, at(2)));
        // Quiet: unchanged over one check.
        assert!(p.due(20, at(4)));
        p.sent(20, at(4));
        assert!(!p.due(20, at(6)), "just sent");
        assert!(p.due(20, at(4 + SEQ_REPEAT.as_secs())), "the repeat");
        p.sent(20, at(4 + SEQ_REPEAT.as_secs()));
        assert!(!p.due(20, at(600)), "repeated once only");
        // Busy again: every SEQ_REFRESH at most.
        let mut t = 600;
        let mut sent = 0;
        for acked in 21..200 {
            t += CHECK_EVERY.as_secs();
            if p.due(acked, at(t)) {
                p.sent(acked, at(t));
                sent += 1;
            }
        }
        let busy = (200 - 21) * CHECK_EVERY.as_secs();
        // The first at once (the last report is long past), then one per SEQ_REFRESH.
        assert_eq!(sent, 1 + busy / SEQ_REFRESH.as_secs(), "over {busy} s");
        // Quiet once more: due at once, though the last report is recent.
        assert!(p.due(199, at(t + 2)));
    }

    #[test]
    fn the_handle_tells_only_real_changes() {
        let h = AppliedHandle::default();
        let mut rx = h.subscribe();
        h.set_members(crate::downlink::MemberScope::Fleet, 4);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        h.set_members(crate::downlink::MemberScope::Fleet, 4);
        assert!(!rx.has_changed().unwrap());
        h.set_keys(r#"{"keys":[]}"#, vec![]);
        assert!(rx.has_changed().unwrap());
        assert!(rx
            .borrow()
            .keys
            .as_ref()
            .unwrap()
            .version
            .starts_with("sha256:"));
    }
}
