//! Link: turns device readings into journey events. This is where identity is attached (app
//! tokens, NFC members, station sessions, visits, journey stage — see [`journey`]); a source
//! never knows about users.
//!
//! Readings arrive two ways: on the sources' channel (fire and forget: the outbox makes them
//! durable in its next group), and through a [`LinkHandle`] from a caller that must know the
//! event before it answers its device (HTTP ingest: `202` only once durable, idempotent replays).
//! HQ's downlink updates (keys, members, commands) arrive on a third queue: the link owns the
//! identity state they change. Each comes with a receipt, settled only once the update's effect
//! is committed (then the broker gets its acknowledgement, see `downlink::session`).

pub mod cardhash;
mod classify;
pub mod journey;
pub mod jwks;
pub mod nfc;
pub mod replay;
pub mod settings;
pub mod stage;
pub mod token;

pub use classify::{classify_code, CodeKind};
pub use settings::IdentityConfig;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::downlink::{Action, Command, Delivery, MemberScope, Receipt, Update};
use crate::event::{CommandResult, Event, EventData, QrScanned};
use crate::outbox::{OutboxError, OutboxHandle};
use crate::sources::gate::GateRegistry;
use crate::sources::Reading;
use journey::{Journey, Linked};
use jwks::KeySet;

/// Readings waiting in a [`LinkHandle`]'s queue; when full, callers wait (HTTP requests queue).
const HANDLE_QUEUE: usize = 64;

/// How often idle visits are ended and expired token ids forgotten.
const TICK: Duration = Duration::from_secs(5);
/// Downlink updates waiting for the link.
const UPDATE_QUEUE: usize = 64;
/// An entry decision must reach the gate within 100 ms (docs/architecture.md §5); past this the unlock is
/// given up and the event says the gate stayed shut.
const UNLOCK_WAIT: Duration = Duration::from_millis(500);
/// Command ids remembered (executed at most once) are kept this long.
const COMMAND_MEMORY: Duration = Duration::from_secs(7 * 24 * 3600);
use crate::outbox::keys::COMMAND_PREFIX;
/// How often remembered command ids past their memory are forgotten (and their keys deleted).
const COMMAND_PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub struct Link {
    readings: mpsc::Receiver<Reading>,
    outbox: OutboxHandle,
    requests: Option<mpsc::Receiver<Request>>,
    updates: Option<mpsc::Receiver<Delivery>>,
    journey: Journey,
    gates: GateRegistry,
    gateway: Arc<str>,
    /// Downlink command ids already run.
    commands_seen: HashSet<String>,
    /// When remembered command ids were last pruned.
    commands_pruned: Instant,
    board: crate::status::Board,
    /// Where the key set and member versions in force are posted for HQ (the status report).
    applied: crate::uplink::report::AppliedHandle,
    /// Answers HQ's `replay` commands; `None`: refused (no uplink takes replays).
    replayer: Option<crate::replay::Replayer>,
}

/// A reading whose caller wants its event back (and stores it itself).
struct Request {
    reading: Reading,
    reply: oneshot::Sender<Event>,
}

/// A cloneable handle for callers that turn a reading into an event and wait for it.
#[derive(Clone)]
pub struct LinkHandle {
    tx: mpsc::Sender<Request>,
}

/// The link has stopped (shutdown): the caller should refuse its device (e.g. HTTP 503).
#[derive(Debug, thiserror::Error)]
#[error("the link is closed")]
pub struct LinkClosed;

impl LinkHandle {
    /// The event for `reading`, with whatever identity the link's rules attach. The caller
    /// stores it (e.g. `append_with_state`) and so knows when it is durable.
    pub async fn link(&self, reading: Reading) -> Result<Event, LinkClosed> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(Request { reading, reply })
            .await
            .map_err(|_| LinkClosed)?;
        wait.await.map_err(|_| LinkClosed)
    }
}

impl Link {
    /// `gates`: the gates entry tokens and HQ commands may open (made before the sources
    /// start, so the link is whole before anything runs).
    pub fn new(
        readings: mpsc::Receiver<Reading>,
        outbox: OutboxHandle,
        journey: Journey,
        gateway: &str,
        gates: GateRegistry,
    ) -> Self {
        Link {
            readings,
            outbox,
            requests: None,
            updates: None,
            journey,
            gates,
            gateway: gateway.into(),
            commands_seen: HashSet::new(),
            commands_pruned: Instant::now(),
            board: Default::default(),
            applied: Default::default(),
            replayer: None,
        }
    }

    /// Posts every reading's device state and time on `board` (the status page).
    pub fn with_board(mut self, board: crate::status::Board) -> Self {
        self.board = board;
        self
    }

    /// Posts the key set and member versions in force on `applied` (the status report to HQ).
    pub fn with_applied(mut self, applied: crate::uplink::report::AppliedHandle) -> Self {
        self.applied = applied;
        self
    }

    /// Answers HQ's `replay` commands through `replayer` (`crate::replay`).
    pub fn with_replayer(mut self, replayer: crate::replay::Replayer) -> Self {
        self.replayer = Some(replayer);
        self
    }

    /// A handle for request/answer callers (call once, clone the handle); the link runs until
    /// its clones and the sources are gone.
    pub fn handle(&mut self) -> LinkHandle {
        let (tx, rx) = mpsc::channel(HANDLE_QUEUE);
        self.requests = Some(rx);
        LinkHandle { tx }
    }

    /// Where the downlink sends checked updates.
    pub fn updates(&mut self) -> mpsc::Sender<Delivery> {
        let (tx, rx) = mpsc::channel(UPDATE_QUEUE);
        self.updates = Some(rx);
        tx
    }

    /// Runs until every source and handle has dropped its sender, then returns with everything
    /// handed on.
    pub async fn run(mut self) -> Result<(), OutboxError> {
        self.restore().await?;
        let mut readings_open = true;
        let mut requests = self.requests.take();
        let mut updates = self.updates.take();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Every branch is cancel-safe: mpsc::Receiver::recv and Interval::tick lose
                // nothing when another branch wins.
                r = self.readings.recv(), if readings_open => match r {
                    Some(reading) => {
                        crate::metrics::READINGS.inc();
                        self.board.observe(&reading);
                        let linked = self.journey.link(reading, Instant::now());
                        self.store(linked).await?;
                    }
                    None => readings_open = false,
                },
                r = recv_opt(&mut requests), if requests.is_some() => match r {
                    Some(Request { reading, reply }) => {
                        crate::metrics::READINGS.inc();
                        self.board.observe(&reading);
                        let mut linked = self.journey.link(reading, Instant::now());
                        if linked.events.is_empty() {
                            // Callers send only readings that make events; the dropped reply
                            // tells them to refuse their device.
                            self.store(linked).await?;
                            continue;
                        }
                        let first = linked.events.remove(0);
                        // The caller stores its event itself (durable before it answers); what
                        // else the reading moved is stored here.
                        self.store(linked).await?;
                        let _ = reply.send(first);
                    }
                    None => requests = None,
                },
                u = recv_opt(&mut updates), if updates.is_some() => match u {
                    Some(Delivery { update, receipt }) => self.apply(update, receipt).await?,
                    None => updates = None,
                },
                _ = tick.tick() => {
                    let linked = self.journey.tick(Instant::now(), SystemTime::now());
                    self.store(linked).await?;
                    if self.commands_pruned.elapsed() >= COMMAND_PRUNE_EVERY {
                        self.prune_commands().await?;
                    }
                }
                else => break,
            }
            if !readings_open && requests.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// Takes back the identity state persisted before a restart.
    async fn restore(&mut self) -> Result<(), OutboxError> {
        let mut entries = Vec::new();
        for prefix in [
            journey::JTI_PREFIX,
            journey::MEMBER_PREFIX,
            journey::MEMBERS_VERSION,
            journey::KEYS_JWKS,
            journey::VISIT_PREFIX,
        ] {
            entries.extend(self.outbox.state(prefix).await?);
        }
        for (key, _) in self.outbox.state(COMMAND_PREFIX).await? {
            self.commands_seen
                .insert(key[COMMAND_PREFIX.len()..].to_owned());
        }
        self.prune_commands().await?;
        debug!(entries = entries.len(), "identity state restored");
        let hq_keys = entries
            .iter()
            .find(|(k, _)| k == journey::KEYS_JWKS)
            .and_then(|(_, v)| KeySet::from_jwks_json(&String::from_utf8_lossy(v)).ok());
        self.journey.restore(entries);
        if let Some(keys) = hq_keys {
            self.post_keys(&keys);
        }
        for scope in [MemberScope::Store, MemberScope::Fleet] {
            self.applied
                .set_members(scope, self.journey.members_version(scope));
        }
        Ok(())
    }

    /// The key set from HQ in force, as the gateway keeps it, for the status report.
    fn post_keys(&self, keys: &KeySet) {
        let kids = keys.kids().map(str::to_owned).collect();
        self.applied.set_keys(&keys.to_jwks_json(), kids);
    }

    /// Forgets the command ids whose memory ended: without it their keys stayed forever.
    async fn prune_commands(&mut self) -> Result<(), OutboxError> {
        self.commands_pruned = Instant::now();
        let entries = self.outbox.state(COMMAND_PREFIX).await?;
        let expired = expired_commands(&entries, SystemTime::now());
        if expired.is_empty() {
            return Ok(());
        }
        for key in &expired {
            self.commands_seen.remove(&key[COMMAND_PREFIX.len()..]);
        }
        debug!(count = expired.len(), "remembered command ids forgotten");
        self.outbox
            .put_states(expired.into_iter().map(|k| (k, None)).collect())
            .await
    }

    /// Opens a gate if asked, then hands events and state to the outbox in one transaction
    /// with the first event (or alone).
    async fn store(&mut self, mut linked: Linked) -> Result<(), OutboxError> {
        if let Some(station) = linked.unlock.take() {
            let opened = self.unlock(&station).await;
            if let Some(EventData::QrScanned(QrScanned { gate_opened, .. })) =
                linked.events.first_mut().map(|e| &mut e.data)
            {
                *gate_opened = Some(opened);
            }
        }
        let mut state = std::mem::take(&mut linked.state);
        if linked.events.is_empty() {
            if !state.is_empty() {
                self.outbox.put_states(state).await?;
            }
            return Ok(());
        }
        for event in linked.events {
            debug!(id = %event.id, ty = event.data.type_name(), user = event.userid.is_some(), "event");
            self.outbox
                .submit_with_state(event, std::mem::take(&mut state))
                .await?;
        }
        Ok(())
    }

    /// Writes the unlock coil of the gate at `station`; true when the module took it.
    async fn unlock(&self, station: &str) -> bool {
        let Some(gate) = self.gates.get(station) else {
            warn!(
                station,
                "an entry token was valid at a station with no gate to open"
            );
            return false;
        };
        match tokio::time::timeout(UNLOCK_WAIT, gate.unlock()).await {
            Ok(Ok(receipt)) => {
                crate::metrics::GATE_UNLOCKS.inc();
                info!(
                    station,
                    latency_us = receipt.latency().as_micros() as u64,
                    "gate opened"
                );
                true
            }
            Ok(Err(e)) => {
                warn!(station, error = %e, "gate did not open");
                false
            }
            Err(_) => {
                warn!(station, "gate did not answer the unlock in time");
                false
            }
        }
    }

    /// Applies an update and settles its receipt once the effect is committed. A commit the
    /// disk refused leaves the receipt unsettled (the broker sends the message again); only a
    /// closed outbox (shutdown) ends the link.
    async fn apply(&mut self, update: Update, receipt: Receipt) -> Result<(), OutboxError> {
        let committed = match update {
            Update::Keys(keys) => {
                let kids: Vec<String> = keys.kids().map(str::to_owned).collect();
                let jwks = keys.to_jwks_json();
                let reported = keys.clone();
                self.journey.set_downlink_keys(keys);
                let r = self
                    .outbox
                    .put_states_durable(vec![(journey::KEYS_JWKS.into(), Some(jwks.into_bytes()))])
                    .await;
                if r.is_ok() {
                    self.post_keys(&reported);
                    crate::metrics::DOWNLINK_APPLIED.inc();
                    info!(?kids, "token keys from HQ applied");
                }
                r
            }
            Update::Members(m) => match self.journey.plan_members(&m) {
                // One request, one transaction: the map on disk is never half a snapshot, and
                // memory follows only once the disk has it. A refused commit leaves both as
                // they were, so the broker's redelivery applies the update then.
                Ok(writes) => {
                    let r = self.outbox.put_states_durable(writes).await;
                    if r.is_ok() {
                        self.journey.commit_members(&m);
                        self.applied.set_members(m.scope, m.version);
                        crate::metrics::DOWNLINK_APPLIED.inc();
                        info!(
                            scope = m.scope.as_str(),
                            version = m.version,
                            upserts = m.upsert.len(),
                            deletes = m.delete.len(),
                            "member map updated"
                        );
                    }
                    r
                }
                Err(why) => {
                    crate::metrics::DOWNLINK_REFUSED.inc();
                    warn!(
                        scope = m.scope.as_str(),
                        version = m.version,
                        "member update refused: {why}"
                    );
                    Ok(())
                }
            },
            Update::Command(c) => self.command(c).await,
            Update::Config(_) => {
                // Routed to the config applier by the downlink; never sent here.
                warn!("a config update reached the link; ignored");
                Ok(())
            }
        };
        match committed {
            Ok(()) => receipt.settle(),
            Err(OutboxError::Closed) => return Err(OutboxError::Closed),
            Err(e) => {
                warn!(error = %e, "downlink update not committed; HQ's broker will send it again")
            }
        }
        Ok(())
    }

    /// Runs a command at most once and reports the outcome. Its id is committed before the
    /// command runs: a crash in between makes the redelivered command a `duplicate`, never a
    /// second gate opening. The outcome is committed with the id's final record.
    async fn command(&mut self, c: Command) -> Result<(), OutboxError> {
        let remember = |id: &str| {
            let until = SystemTime::now() + COMMAND_MEMORY;
            vec![(
                format!("{COMMAND_PREFIX}{id}"),
                Some(crate::event::format_time(until).into_bytes()),
            )]
        };
        let mut replayed = None;
        let (outcome, detail) = if self.commands_seen.contains(&c.id) {
            ("duplicate", "already received; not run again".to_owned())
        } else if SystemTime::now() > c.expires_at {
            ("expired", "arrived after its expiry; not run".to_owned())
        } else {
            match &c.action {
                // A read and a publish: nothing to run once only, so nothing to remember
                // before it runs (a redelivery is answered `duplicate` all the same).
                Action::Replay { from, to } => match &self.replayer {
                    None => (
                        "refused",
                        "this gateway takes no replay commands".to_owned(),
                    ),
                    Some(r) => {
                        let o = r.replay(*from, *to).await?;
                        let answer = (o.outcome, o.detail.clone());
                        replayed = Some((o.republished, o.missing));
                        answer
                    }
                },
                Action::OpenGate { station } => match self.gates.get(station) {
                    None => ("refused", format!("no gate at station {station:?}")),
                    Some(_) => {
                        self.outbox.put_states_durable(remember(&c.id)).await?;
                        self.commands_seen.insert(c.id.clone());
                        if self.unlock(station).await {
                            ("done", format!("gate at {station} opened"))
                        } else {
                            ("failed", format!("gate at {station} did not open"))
                        }
                    }
                },
            }
        };
        info!(id = %c.id, outcome, "{detail}");
        let event = Event::new(
            self.gateway.clone(),
            SystemTime::now(),
            EventData::CommandResult(CommandResult {
                command_id: c.id.clone(),
                outcome,
                detail,
                republished: replayed.as_ref().map(|r| r.0),
                missing: replayed.map(|r| r.1),
            }),
        );
        let state = if outcome == "duplicate" {
            Vec::new()
        } else {
            self.commands_seen.insert(c.id.clone());
            remember(&c.id)
        };
        self.outbox.append_with_state(event, state).await.map(drop)
    }
}

/// The keys of remembered command ids whose memory (the time in their value) ended by `now`;
/// an unreadable one is forgotten too (HQ does not resend a command that old).
fn expired_commands(entries: &[(String, Vec<u8>)], now: SystemTime) -> Vec<String> {
    entries
        .iter()
        .filter(|(_, v)| {
            let until = std::str::from_utf8(v)
                .ok()
                .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok());
            until.is_none_or(|u| SystemTime::from(u) <= now)
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// Receives from an optional queue (the branch is disabled while it is `None`).
async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_command_ids_are_forgotten_after_their_memory() {
        let t0 = SystemTime::now();
        let remember = |id: &str, at: SystemTime| {
            (
                format!("{COMMAND_PREFIX}{id}"),
                crate::event::format_time(at + COMMAND_MEMORY).into_bytes(),
            )
        };
        let entries = vec![
            remember("old", t0 - COMMAND_MEMORY - Duration::from_secs(1)),
            remember("new", t0),
            ("cmd/garbled".to_owned(), b"?".to_vec()),
        ];
        assert_eq!(expired_commands(&entries, t0), ["cmd/old", "cmd/garbled"]);
        // A week on, the one remembered now goes too: the family is bounded by a week of
        // commands.
        assert_eq!(
            expired_commands(&entries, t0 + COMMAND_MEMORY + Duration::from_secs(1)),
            ["cmd/old", "cmd/new", "cmd/garbled"]
        );
    }
}
