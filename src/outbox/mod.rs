//! The outbox: the only owner of the SQLite database. Events are durable here before they count
//! as accepted; the uplink reads batches from here, and they leave only on acknowledgement (a
//! watermark; the dead rows are removed in ranges while the thread is idle).
//!
//! One thread owns the connection (rusqlite is blocking). Callers hold an [`OutboxHandle`]; its
//! requests queue on a bounded channel, and the thread commits every append waiting in the queue
//! in one transaction (group commit): one fsync per group under load, one per event when idle;
//! only after a full group does the next wait (at most [`FILL_WAIT`]) to fill.

pub mod keys;
pub mod settings;
mod store;

pub use settings::{OutboxConfig, Synchronous};
pub use store::{Batch, Check, Replay, Stats, Store, StoreError, Verdict, EVICT_STEP_ROWS};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tracing::{error, info, warn};

use crate::event::{Origin, Prepared};

/// Requests waiting for the thread; when full, appenders wait (back-pressure to the sources).
const QUEUE: usize = 4096;
/// Most requests folded into one transaction: bounds a group's latency and memory.
const MAX_GROUP: usize = 2048;
/// After a full group (requests come faster than the thread commits them), how long the next
/// group may wait to fill: sources that briefly fall behind on a loaded CPU otherwise cause a
/// run of tiny groups, one fsync each. Under one fsync here (an idle append takes ~3 ms), so a
/// wait costs less than the commit it saves; an idle store never waits (its groups are not full).
/// Nothing is answered before its commit either way.
const FILL_WAIT: Duration = Duration::from_millis(2);
/// How often a filling group looks at the queue (not woken per request: the CPU is the sources').
const FILL_POLL: Duration = Duration::from_micros(250);
/// Appends held in memory while the disk refuses writes, before the queue stops being read.
const MAX_HELD: usize = 10_000;
/// Wait between attempts to write held appends (disk full).
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How often rows past the retention age are looked for.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The append was not made durable (disk full, I/O error). The caller still owns the data and
    /// should answer its device "not accepted" (e.g. HTTP 503) or retry.
    #[error("the event was not stored: {0}")]
    NotStored(String),
    /// The outbox thread has stopped (shutdown or a fatal database error).
    #[error("the outbox is closed")]
    Closed,
}

/// State keys and their values.
pub type StateEntries = Vec<(String, Vec<u8>)>;
/// A state key to set (`Some`) or delete (`None`).
pub type StateWrite = (String, Option<Vec<u8>>);

enum Request {
    Append {
        /// Serialised by the submitter, off the outbox thread. Not boxed: the queue's slot
        /// holds it, so an event costs no allocation (and no free on this thread) beyond its
        /// JSON.
        event: Prepared,
        /// State committed in the same transaction as the event (e.g. a counter baseline).
        state: Vec<StateWrite>,
        done: Option<oneshot::Sender<Result<u64, OutboxError>>>,
    },
    Ack {
        first: u64,
        last: u64,
    },
    Fetch {
        after: u64,
        /// Most batches to read, one after the other.
        batches: usize,
        max_events: usize,
        max_bytes: usize,
        /// When there is nothing after `after`: wait for rows instead of answering empty
        /// (`waiting.rs`).
        wait: bool,
        reply: oneshot::Sender<Result<Vec<Batch>, OutboxError>>,
    },
    Stats {
        reply: oneshot::Sender<Stats>,
    },
    /// The rows of `from..=to` still in the file (a `replay` command), as batches.
    Replay {
        from: u64,
        to: u64,
        max_events: usize,
        max_bytes: usize,
        reply: oneshot::Sender<Result<Replay, OutboxError>>,
    },
    /// State writes committed together, in one transaction.
    PutState {
        writes: Vec<StateWrite>,
        /// Told when the transaction committed (or did not): for writes that something
        /// outside waits on, e.g. a downlink message acknowledged to the broker only then.
        done: Option<oneshot::Sender<Result<(), OutboxError>>>,
    },
    GetState {
        prefix: String,
        reply: oneshot::Sender<Result<StateEntries, OutboxError>>,
    },
    /// One key's value: an exact lookup.
    GetKey {
        key: String,
        reply: oneshot::Sender<Result<Option<Vec<u8>>, OutboxError>>,
    },
    /// The background integrity check of file number `file` (counted from the open) is done.
    Checked {
        file: u64,
        verdict: Verdict,
    },
}

/// A cloneable handle on the outbox with typed requests.
#[derive(Clone)]
pub struct OutboxHandle {
    tx: flume::Sender<Request>,
    committed: watch::Receiver<u64>,
    /// Who the events are from: they are serialised before they are queued.
    origin: std::sync::Arc<Origin>,
}

/// The opened outbox, before its thread starts.
pub struct Outbox {
    store: Store,
    rx: flume::Receiver<Request>,
    committed: watch::Sender<u64>,
    pub quarantined: Option<PathBuf>,
    /// Acknowledged ranges whose delete the disk refused, retried with every group.
    held_acks: Vec<(u64, u64)>,
    /// For the integrity check's verdict; weak, so that shutdown does not wait for it.
    weak: flume::WeakSender<Request>,
    /// The full integrity check of the file in use, while it runs.
    check: Option<Check>,
    /// Which file is in use: 0 from the open, one more after each move aside. A verdict on
    /// an older file is ignored.
    file: u64,
    /// Why the file in use is corrupt, once a statement or the check said so: moved aside
    /// after the group that found it.
    corrupt: Option<String>,
    /// The gateway, as the source of the outbox's own reports.
    gateway: String,
    /// Acknowledgements waiting to ride in the next group's transaction (`idle.rs`).
    deferred_acks: DeferredAcks,
    /// Fetches waiting for rows (`waiting.rs`).
    waiting_fetches: Vec<WaitingFetch>,
}

impl Outbox {
    /// Opens the database (quarantining a corrupt one) and returns the outbox and its handle.
    pub fn open(
        config: &OutboxConfig,
        origin: Origin,
    ) -> Result<(Outbox, OutboxHandle), StoreError> {
        let gateway = origin.gateway.clone();
        let shared = std::sync::Arc::new(origin.clone());
        let mut opened = Store::open(
            &config.path,
            config.synchronous,
            origin,
            config.max_bytes,
            config.max_age,
        )?;
        if let Some(cap) = config.max_file_bytes {
            opened.store.cap_file(cap)?;
        }
        opened.store.set_replay_window(config.replay_window);
        let stats = opened.store.stats()?;
        info!(db = %config.path.display(), depth = stats.depth, last_seq = stats.last_seq, "outbox open");

        let (tx, rx) = flume::bounded(QUEUE);
        let weak = tx.downgrade();
        let (committed, committed_rx) = watch::channel(stats.last_seq);
        Ok((
            Outbox {
                store: opened.store,
                rx,
                committed,
                quarantined: opened.quarantined,
                held_acks: Vec::new(),
                weak,
                check: None,
                file: 0,
                corrupt: None,
                gateway,
                deferred_acks: DeferredAcks::default(),
                waiting_fetches: Vec::new(),
            },
            OutboxHandle {
                tx,
                committed: committed_rx,
                origin: shared,
            },
        ))
    }

    /// Serves requests until every handle is dropped, then returns (everything accepted is
    /// committed by then). Blocking: run on a dedicated thread.
    pub fn run(mut self) {
        if let Some(moved) = self.quarantined.clone() {
            self.report_moved(&moved);
        }
        self.start_check();
        let mut held: Vec<Request> = Vec::new();
        let mut group: Vec<Request> = Vec::with_capacity(MAX_GROUP);
        let mut last_expire = Instant::now();
        // The last group was full: the next one may wait to fill (FILL_WAIT).
        let mut saturated = false;
        loop {
            // Whatever committed rows last time round (a group, an eviction's report, the
            // retention sweep), a fetch waiting for them is answered before the thread sleeps.
            self.answer_waiting_fetches();
            let first = if self.store.evicting() {
                // An eviction under way goes on in bounded steps between groups; requests
                // waiting go first.
                match self.rx.try_recv() {
                    Ok(r) => Some(r),
                    Err(flume::TryRecvError::Empty) => {
                        if let Err(e) = self.store.evict_step() {
                            self.note(&e);
                            warn!(error = %e, "outbox eviction step failed");
                        }
                        self.move_aside_if_corrupt();
                        self.committed.send_replace(self.store.last_seq());
                        continue;
                    }
                    Err(flume::TryRecvError::Disconnected) => None,
                }
            } else if held.is_empty() && self.held_acks.is_empty() {
                if let Some(at) = self.idle_deadline() {
                    match self.rx.recv_deadline(at) {
                        Ok(r) => Some(r),
                        Err(flume::RecvTimeoutError::Timeout) => {
                            self.idle_work();
                            continue;
                        }
                        Err(flume::RecvTimeoutError::Disconnected) => break,
                    }
                } else {
                    match self.rx.recv() {
                        Ok(r) => Some(r),
                        Err(_) => break,
                    }
                }
            } else if held.len() >= MAX_HELD {
                std::thread::sleep(RETRY_EVERY);
                None
            } else {
                match self.rx.recv_timeout(RETRY_EVERY) {
                    Ok(r) => Some(r),
                    Err(flume::RecvTimeoutError::Timeout) => None,
                    Err(flume::RecvTimeoutError::Disconnected) if held.is_empty() => break,
                    Err(flume::RecvTimeoutError::Disconnected) => {
                        // Shutting down with appends the disk refused: one last try, then say so.
                        std::thread::sleep(RETRY_EVERY);
                        None
                    }
                }
            };
            let wait = saturated && held.is_empty();
            group.append(&mut held);
            group.extend(first);
            self.fill(&mut group, wait);
            saturated = group.len() >= MAX_GROUP;
            held = self.serve(&mut group);
            if self.acks_due() {
                // A steady stream of acknowledgements alone (a backlog draining): committed
                // when it pauses or every ACK_LINGER, not once per PUBACK (`idle.rs`).
                self.commit_deferred_acks();
            }
            if self.store.reclaim_overdue() {
                // Never idle, and acknowledging fast: removed between groups, or the file
                // would grow by everything acknowledged.
                self.reclaim_step();
            }
            if self.store.retained_over_quota() {
                // Live rows need the room the replay window's rows take: those go first, a
                // bounded step between groups.
                if let Err(e) = self.store.reclaim_for_room() {
                    self.note(&e);
                    warn!(error = %e, "removing acknowledged outbox rows failed");
                }
            }
            self.move_aside_if_corrupt();
            if !held.is_empty() && self.rx.is_disconnected() && self.rx.is_empty() {
                error!(
                    count = held.len(),
                    "shutting down with events the disk refused; they are lost"
                );
                break;
            }
            // Ages are judged only by a synchronised clock: one stepped far forward (or still
            // wrong before NTP) would otherwise expire the whole backlog.
            if last_expire.elapsed() >= EXPIRE_EVERY && crate::clock::synced() {
                last_expire = Instant::now();
                held.extend(self.expire());
            }
        }
        self.commit_deferred_acks();
        info!("outbox closed");
    }

    /// Takes the requests waiting, up to [`MAX_GROUP`]; when `wait`, for up to [`FILL_WAIT`].
    fn fill(&self, group: &mut Vec<Request>, wait: bool) {
        let deadline = Instant::now() + FILL_WAIT;
        loop {
            let room = MAX_GROUP.saturating_sub(group.len());
            group.extend(self.rx.try_iter().take(room));
            let now = Instant::now();
            if !wait || group.len() >= MAX_GROUP || now >= deadline || self.rx.is_disconnected() {
                return;
            }
            std::thread::sleep(FILL_POLL.min(deadline - now));
        }
    }

    /// Commits a group; answers fetches and stats after the commit so they see it. Returns the
    /// fire-and-forget appends to retry when the disk refused them.
    fn serve(&mut self, group: &mut Vec<Request>) -> Vec<Request> {
        let mut appends = Appends::with_capacity(group.len());
        // Deletes the disk refused last time go first: they make room.
        let retrying = !self.held_acks.is_empty();
        let mut acks = std::mem::take(&mut self.held_acks);
        let mut lone_state: Vec<(usize, StateWrite)> = Vec::new();
        let mut state_dones = Vec::new();
        let mut reads = Vec::new();
        for r in group.drain(..) {
            match r {
                Request::Append { event, state, done } => {
                    appends.events.push(event);
                    appends.states.push(state);
                    appends.dones.push(done);
                }
                Request::Ack { first, last } => acks.push((first, last)),
                // Placed among the appends as it arrived: a key's writes keep their order.
                Request::PutState { writes, done } => {
                    let at = appends.events.len();
                    lone_state.extend(writes.into_iter().map(|w| (at, w)));
                    state_dones.extend(done);
                }
                other => reads.push(other),
            }
        }
        // Acknowledgements alone wait for the next group (`idle.rs`): unless a read must see
        // them applied (a stats or state read; a fetch from below them, as after a reconnect).
        let through = self
            .deferred_acks
            .through()
            .max(acks.iter().map(|a| a.1).max().unwrap_or(0));
        let reads_need_acks = reads.iter().any(|r| match r {
            Request::Fetch { after, .. } => *after < through,
            _ => true,
        });
        let now = Instant::now();
        if appends.events.is_empty()
            && lone_state.is_empty()
            && !reads_need_acks
            && !retrying
            && !self.store.evicting()
        {
            self.deferred_acks.defer(std::mem::take(&mut acks), now);
        } else {
            acks.splice(0..0, self.deferred_acks.ride(!appends.is_empty(), now));
        }
        let (held, failed) = self.commit(appends, acks, lone_state);
        if let Some(e) = &failed {
            if e.is_corruption() {
                self.corrupt.get_or_insert_with(|| e.to_string());
            }
        }
        for done in state_dones {
            // When the group failed, some lone writes may still have gone in with a shorter
            // run; "not stored" is then only "not known to be stored", and the waiter (the
            // downlink) gets the message again, which it applies idempotently.
            let answer = match &failed {
                None => Ok(()),
                Some(e) => Err(OutboxError::NotStored(e.to_string())),
            };
            // The waiter may have gone (shutdown); the writes are committed or not either way.
            let _ = done.send(answer);
        }
        for r in reads {
            match r {
                Request::Fetch {
                    after,
                    batches,
                    max_events,
                    max_bytes,
                    wait,
                    reply,
                } => match self
                    .store
                    .fetch_batches(after, batches, max_events, max_bytes)
                {
                    Ok(b) if b.is_empty() && wait => self.park_fetch(WaitingFetch {
                        after,
                        batches,
                        max_events,
                        max_bytes,
                        reply,
                    }),
                    batch => {
                        let _ = reply.send(batch.map_err(|e| self.failed(e)));
                    }
                },
                Request::Stats { reply } => {
                    let stats = self.store.stats().unwrap_or_default();
                    let checking = self.check.is_some();
                    let _ = reply.send(Stats { checking, ..stats });
                }
                Request::Replay {
                    from,
                    to,
                    max_events,
                    max_bytes,
                    reply,
                } => {
                    let replay = self.store.replay_range(from, to, max_events, max_bytes);
                    let _ = reply.send(replay.map_err(|e| self.failed(e)));
                }
                Request::GetState { prefix, reply } => {
                    let entries = self.store.scan_state(&prefix);
                    let _ = reply.send(entries.map_err(|e| self.failed(e)));
                }
                Request::GetKey { key, reply } => {
                    let value = self.store.get_state(&key);
                    let _ = reply.send(value.map_err(|e| self.failed(e)));
                }
                Request::Checked { file, verdict } => match verdict {
                    _ if file != self.file => {}
                    Verdict::Healthy => {
                        info!("outbox integrity check passed");
                        self.check = None;
                    }
                    Verdict::Corrupt(why) => {
                        self.corrupt.get_or_insert(why);
                    }
                    Verdict::Unknown(why) => {
                        warn!(error = %why, "the outbox integrity check did not finish");
                        self.check = None;
                    }
                },
                Request::Append { .. } | Request::Ack { .. } | Request::PutState { .. } => {
                    unreachable!("sorted above")
                }
            }
        }
        held
    }

    /// A read's error for its caller, noted if it says the file is corrupt.
    fn failed(&mut self, e: StoreError) -> OutboxError {
        self.note(&e);
        OutboxError::NotStored(e.to_string())
    }

    /// Commits a group in one transaction. When the disk refuses it (full, or at the file
    /// cap), commits what it can, in order: the acknowledged rows' deletes alone (they make
    /// room, and rows left behind would wait for the next reconnect to be resent), then the
    /// longest run of appends from the front that fits. Without this, appends held back by a
    /// full disk rode in every later group, each group failed whole, and the outbox could
    /// never shrink again, even with HQ back. Returns the fire-and-forget appends to retry;
    /// appenders that wait are told theirs was not stored. Lone state writes after the last
    /// stored append are dropped: a source writes its key again with its next change. Also
    /// returns the whole-group error, if the group did not commit in one piece.
    fn commit(
        &mut self,
        mut appends: Appends,
        acks: Vec<(u64, u64)>,
        lone_state: Vec<(usize, StateWrite)>,
    ) -> (Vec<Request>, Option<StoreError>) {
        let n = appends.events.len();
        if n == 0 && acks.is_empty() && lone_state.is_empty() {
            return (Vec::new(), None);
        }
        let state = appends.state_of(0, n, &lone_state);
        let error = match self.store.commit_prepared(&appends.events, &acks, &state) {
            Ok(seqs) => {
                self.stored(&mut appends, 0, &seqs);
                return (Vec::new(), None);
            }
            Err(e) => e,
        };
        crate::metrics::OUTBOX_WRITE_ERRORS.inc();
        // Acknowledged rows still in the file make room once removed.
        if let Err(e) = self.store.reclaim_all() {
            warn!(error = %e, "removing acknowledged outbox rows failed");
        }
        if !acks.is_empty() {
            let alone =
                (n > 0 || !lone_state.is_empty()) && self.store.commit_group(&[], &acks).is_ok();
            if !alone {
                // Kept, not dropped: retried with every group until the deletes commit.
                self.held_acks = acks;
            }
        }
        // The longest prefix of appends that fits, found by halving the next try.
        let (mut stored, mut chunk) = (0, n);
        while stored < n && chunk > 0 {
            let end = (stored + chunk).min(n);
            let state = appends.state_of(stored, end, &lone_state);
            match self
                .store
                .commit_prepared(&appends.events[stored..end], &[], &state)
            {
                Ok(seqs) => {
                    self.stored(&mut appends, stored, &seqs);
                    stored = end;
                }
                Err(_) => chunk /= 2,
            }
        }
        let mut held = Vec::new();
        let mut refused = 0;
        let rest = appends
            .events
            .drain(stored..)
            .zip(appends.states.drain(stored..))
            .zip(appends.dones.drain(stored..));
        for ((event, state), done) in rest {
            match done {
                Some(done) => {
                    refused += 1;
                    let _ = done.send(Err(OutboxError::NotStored(error.to_string())));
                }
                None => held.push(Request::Append {
                    event,
                    state,
                    done: None,
                }),
            }
        }
        error!(
            error = %error,
            events = n,
            stored,
            held = held.len(),
            refused,
            acks_held = self.held_acks.len(),
            "outbox transaction failed; what fits was stored, the rest is held or refused"
        );
        (held, Some(error))
    }

    /// Answers the appends from `from` on that `seqs` stored, and tells the uplink.
    fn stored(&mut self, appends: &mut Appends, from: usize, seqs: &[u64]) {
        crate::metrics::EVENTS_ACCEPTED.add(seqs.len() as u64);
        for (done, seq) in appends.dones[from..].iter_mut().zip(seqs) {
            if let Some(done) = done.take() {
                // The appender may have given up waiting; the event is stored either way.
                let _ = done.send(Ok(*seq));
            }
        }
        self.committed.send_replace(self.store.last_seq());
    }

    /// Runs the outbox on its own named thread.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("outbox".into())
            .spawn(move || self.run())
    }
}

#[path = "handle.rs"]
mod handle;

#[path = "integrity.rs"]
mod integrity;

#[path = "sweeps.rs"]
mod sweeps;

#[path = "appends.rs"]
mod appends;
use appends::Appends;

#[path = "idle.rs"]
mod idle;
use idle::DeferredAcks;

#[path = "waiting.rs"]
mod waiting;
use waiting::WaitingFetch;

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
