//! The writer: the only owner of the journey store, on its own thread (rusqlite blocks). It
//! takes the consumer's messages, commits them in groups (one transaction for every message
//! waiting, up to [`MAX_GROUP`]), keeps each gateway's `seq` accounting, and settles each
//! message's receipt only once its commit is durable; the consumer acknowledges it to the
//! broker then. A failed commit settles nothing: the consumer drops the connection and the
//! broker sends the messages again.
//!
//! Once a second it records this consumer's beat in the journey store (its lag: how old the
//! freshest event it committed since the last beat was; 0 when connected and idle), and
//! declares lost the holes open longer than the grace plus the group's worst lag
//! ([`crate::seq::group_lag_ms`]), with one log line per gateway (and so per store) naming
//! the lost `seq` ranges. While the input is not connected it records nothing: the broker may
//! be keeping messages for it, and the others then count its lag as growing. With `[repair]`,
//! the same tick picks the holes due for a replay request and hands them to
//! [`crate::repair`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;
use tracing::{error, info, warn};

use crate::ingest::{self, Accepted, GatewayKey, Parked, Reported};
use crate::metrics::{GatewayFigures, Shared};
use crate::seq::{group_lag_ms, ConsumerBeat, GatewaySeq, RepairRule};
use crate::store::{Expired, Group, JourneyStore, StoreError};

/// Messages committed in one transaction at most: bounds a commit's latency and memory.
pub const MAX_GROUP: usize = 1024;
/// How often the holes are checked against the grace.
const TICK: Duration = Duration::from_secs(1);
/// Pause after a failed commit, so a broken disk does not spin the thread.
const FAILED_COMMIT_PAUSE: Duration = Duration::from_millis(500);

/// One MQTT message on its way to the store, with the receipt the consumer waits for.
pub struct Delivery {
    pub topic: String,
    pub payload: Vec<u8>,
    pub done: oneshot::Sender<()>,
}

/// Who this writer's consumer is in the group, for its beat.
#[derive(Debug, Clone)]
pub struct Member {
    /// Unique in the group: the MQTT client id (the broker keeps the session under it).
    pub id: String,
    /// How long after its last beat the broker may still hold messages for it
    /// ([`crate::input::Input::holds`]).
    pub holds: Duration,
    /// Set by the input while it is connected to the broker and taking messages.
    pub connected: Arc<AtomicBool>,
}

pub struct Writer {
    store: Box<dyn JourneyStore>,
    rx: flume::Receiver<Delivery>,
    gateways: HashMap<GatewayKey, GatewaySeq>,
    grace: Duration,
    stats: Shared,
    member: Member,
    /// The time (ms) of the freshest event committed since the last beat (`None`: nothing
    /// came). The lag is taken at the beat, not at the commit: a stall in between (the process
    /// stopped) adds to it.
    freshest_since_beat: Option<u64>,
    /// The input was connected at the previous tick too, and that tick was at most
    /// [`WATCHED`] ago: an idle tick then means that our queue at the broker is drained.
    /// Right after a (re)connect the broker may not have sent the session's backlog yet; after
    /// a stall (the process stopped, starved of CPU) the backlog may sit unread in the socket.
    watched: Option<Instant>,
    /// Replay requests for holes: the rule, and where the requests go.
    repair: Option<(RepairRule, crate::repair::Requests)>,
}

/// The longest gap between two ticks over which an idle writer still counts as having watched
/// its input.
const WATCHED: Duration = Duration::from_millis(1_500);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Writer {
    pub fn new(
        mut store: Box<dyn JourneyStore>,
        rx: flume::Receiver<Delivery>,
        grace: Duration,
        stats: Shared,
        member: Member,
    ) -> Result<Writer, StoreError> {
        let gateways: HashMap<_, _> = store.load_gateways()?.into_iter().collect();
        store.join(
            &member.id,
            &ConsumerBeat {
                at_ms: now_ms(),
                lag_ms: 0,
                holds_ms: member.holds.as_millis() as u64,
            },
        )?;
        let mut w = Writer {
            store,
            rx,
            gateways,
            grace,
            stats,
            member,
            freshest_since_beat: None,
            watched: None,
            repair: None,
        };
        w.publish_all();
        Ok(w)
    }

    /// Asks the gateways to replay holes pending past `rule.after_ms`, through `requests`.
    pub fn with_repair(mut self, rule: RepairRule, requests: crate::repair::Requests) -> Self {
        self.repair = Some((rule, requests));
        self
    }

    /// Serves until every sender is gone; blocking, run it on its own thread.
    pub fn run(mut self) {
        let mut next_tick = Instant::now() + TICK;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(first) => {
                    let mut group = vec![first];
                    group.extend(self.rx.try_iter().take(MAX_GROUP - 1));
                    self.commit(group);
                }
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_tick {
                self.beat_and_expire();
                next_tick = Instant::now() + TICK;
            }
        }
        info!("writer stopped: every committed message was settled");
    }

    fn commit(&mut self, group: Vec<Delivery>) {
        let now = now_ms();
        let mut accepted: Vec<Accepted> = Vec::new();
        let mut parked: Vec<(String, Parked)> = Vec::new();
        let mut reports: Vec<Reported> = Vec::new();
        for d in &group {
            if phygate_proto::topic::parse_status(&d.topic).is_some() {
                match ingest::read_status(&d.topic, &d.payload) {
                    Ok(Some(r)) => reports.push(r),
                    Ok(None) => {}
                    // Not an event: nothing to park; the next status replaces it.
                    Err(reason) => warn!(topic = %d.topic, %reason, "status message ignored"),
                }
                continue;
            }
            for item in ingest::read_batch(&d.topic, &d.payload) {
                match item {
                    Ok(a) => accepted.push(a),
                    Err(p) => {
                        warn!(topic = %d.topic, reason = %p.reason, "event parked");
                        parked.push((d.topic.clone(), p));
                    }
                }
            }
        }
        // The accounting moves first (a duplicate changes nothing in it) and is written in the
        // same transaction as the events; a failed commit reloads it from the store.
        let mut touched: Vec<GatewayKey> = Vec::new();
        for e in &accepted {
            let g = self.gateways.entry(e.gateway.clone()).or_default();
            let done = crate::store::account(g, e, now);
            if done.late > 0 {
                info!(gateway = %e.gateway, late = done.late, seq = e.seq, "events declared lost arrived late: loss retracted");
            }
            if !done.not_held.is_empty() {
                let count: u64 = done.not_held.iter().map(|[a, b]| b - a + 1).sum();
                warn!(
                    tenant = %e.gateway.tenant,
                    store = %e.gateway.store,
                    gateway = %e.gateway.gateway,
                    lost = count,
                    seqs = ?done.not_held,
                    "events lost: asked to replay them, the gateway answered it no longer holds them"
                );
            }
            if !touched.contains(&e.gateway) {
                touched.push(e.gateway.clone());
            }
        }
        // A report that changes nothing (the usual case: HQ already has every number it
        // names) is not written, nor is a gateway row made for it.
        reports.retain(|r| {
            let mut g = self.gateways.get(&r.gateway).cloned().unwrap_or_default();
            let before = g.clone();
            crate::store::account_report(&mut g, r, now);
            if g == before {
                return false;
            }
            self.gateways.insert(r.gateway.clone(), g);
            if !touched.contains(&r.gateway) {
                touched.push(r.gateway.clone());
            }
            true
        });
        let result = self.store.commit(&Group {
            accepted: &accepted,
            parked: &parked,
            reports: &reports,
            gateways: touched.iter().map(|k| (k, &self.gateways[k])).collect(),
            now_ms: now,
        });
        let messages = group.len() as u64;
        match result {
            Ok(done) => {
                if let Some(t) = freshest_ms(&accepted) {
                    self.freshest_since_beat = Some(self.freshest_since_beat.unwrap_or(0).max(t));
                }
                // A shared store's accounting includes the other consumers' events.
                for (k, g) in done.gateways {
                    self.gateways.insert(k, g);
                }
                for d in group {
                    // The consumer may have moved to a new connection: then nobody waits.
                    let _ = d.done.send(());
                }
                let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
                s.events_stored += done.fresh;
                s.duplicates += done.duplicates;
                s.parked += parked.len() as u64;
                s.batches += messages;
                for k in &touched {
                    s.gateways
                        .insert(k.clone(), GatewayFigures::of(&self.gateways[k]));
                }
            }
            Err(e) => {
                error!(error = %e, messages = group.len(), "commit failed; the broker will send these messages again");
                self.stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .commit_errors += 1;
                drop(group);
                match self.store.load_gateways() {
                    Ok(g) => self.gateways = g.into_iter().collect(),
                    Err(e) => error!(error = %e, "reloading the seq accounting failed"),
                }
                std::thread::sleep(FAILED_COMMIT_PAUSE);
            }
        }
    }

    /// Records this consumer's beat, then declares lost what waited for the grace plus the
    /// group's worst lag. Without the group's beats (the store failed), nothing is declared.
    fn beat_and_expire(&mut self) {
        // Not connected: the broker may keep messages for us, so record nothing and declare
        // nothing; our last beat ages, and with it the lag the other consumers count for us.
        // Just connected, or just back from a stall, and nothing committed yet: the same,
        // until the next tick.
        let connected = self.member.connected.load(Ordering::Relaxed);
        let tick = Instant::now();
        let watched = std::mem::replace(&mut self.watched, connected.then_some(tick))
            .is_some_and(|last| tick.duration_since(last) <= WATCHED);
        if !connected || (!watched && self.freshest_since_beat.is_none()) {
            return;
        }
        let now = now_ms();
        let beat = ConsumerBeat {
            at_ms: now,
            // A gateway clock ahead of ours counts as no lag.
            lag_ms: self
                .freshest_since_beat
                .take()
                .map_or(0, |t| now.saturating_sub(t)),
            holds_ms: self.member.holds.as_millis() as u64,
        };
        let group_lag = match self.store.beat(&self.member.id, &beat) {
            Ok(beats) => group_lag_ms(&beats, now),
            Err(e) => {
                error!(error = %e, "recording this consumer's progress failed; no loss declared this time");
                return;
            }
        };
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .group_lag_ms = group_lag;
        self.expire(now, self.grace.as_millis() as u64 + group_lag);
        self.repair(now);
    }

    /// Picks the holes due for a replay request and hands them to the repairer.
    fn repair(&mut self, now: u64) {
        let Some((rule, requests)) = &self.repair else {
            return;
        };
        let due = match self.store.repair(&self.gateways, now, rule) {
            Ok(due) => due,
            Err(e) => {
                error!(error = %e, "picking the holes to repair failed");
                return;
            }
        };
        for d in due {
            let request = crate::repair::Request {
                key: d.key.clone(),
                ranges: d.ranges,
            };
            if requests.try_send(request).is_err() {
                // Recorded as asked all the same: the hole's retry asks again.
                warn!(gateway = %d.key.gateway, store = %d.key.store, "replay requests queue full; asked again later");
                self.stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .replays_failed += 1;
            }
            self.gateways.insert(d.key, d.seq);
        }
    }

    fn expire(&mut self, now: u64, wait_ms: u64) {
        let expired = match self.store.expire(&self.gateways, now, wait_ms) {
            Ok(e) => e,
            Err(e) => {
                // Nothing declared: the next tick tries again.
                error!(error = %e, "declaring the expired holes lost failed");
                return;
            }
        };
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        for Expired {
            key: k,
            seq: g,
            newly,
        } in expired
        {
            let count: u64 = newly.iter().map(|[a, b]| b - a + 1).sum();
            warn!(
                tenant = %k.tenant,
                store = %k.store,
                gateway = %k.gateway,
                lost = count,
                lost_total = g.lost(),
                seqs = ?newly,
                "events lost: seq numbers never arrived and were not announced as evicted"
            );
            s.gateways.insert(k.clone(), GatewayFigures::of(&g));
            self.gateways.insert(k, g);
        }
    }

    fn publish_all(&mut self) {
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        for (k, g) in &self.gateways {
            s.gateways.insert(k.clone(), GatewayFigures::of(g));
        }
    }
}

/// The time (by the gateways' clocks, ms) of the freshest event of a commit. Times are all in
/// one fixed format, so the greatest string is the latest time.
fn freshest_ms(accepted: &[Accepted]) -> Option<u64> {
    let latest = accepted.iter().map(|e| e.time.as_str()).max()?;
    let t = humantime::parse_rfc3339_weak(latest).ok()?;
    Some(t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_millis() as u64)
}
