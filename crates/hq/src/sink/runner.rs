//! One sink's forwarding loop: the only I/O of the sinks. It reads the events above its
//! durable cursor in commit order, maps them, sends them in batches, and moves the cursor in
//! the transaction that parks the events the engine refused for good. So after a restart, or
//! a `kill -9`, it starts exactly after the last batch whose answer it read: nothing is sent
//! twice, nothing skipped.
//!
//! The one repeat allowed is a request whose fate is unknown: it was sent and the connection
//! died (or the timeout ran out, or the process was killed) before an answer. Before each
//! request the runner writes an *in-flight* mark; an answer clears it. A repeat of a request
//! that had no answer, in this run or after a restart that found the mark, is counted as
//! `ambiguous` (metric and log line): the engine may now have those events twice, and every
//! such repeat is announced.
//!
//! Back-pressure: a throttled engine makes only its runner wait (the reset header, else the
//! backoff); the consumer and the writer go on, and the lag (events committed, not yet done
//! for the sink) grows as a metric.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tracing::{error, info, warn};

use super::config::SinkConfig;
use super::engine::{Engine, HttpRequest, HttpResponse, Verdict};
use super::mapping::{Mapped, Mapping};
use super::Backoff;
use crate::metrics::{Shared, SinkFigures};
use crate::store::{SinkLedger, SinkParked, SinkPosition, StoreError};

/// Events read from the store at once, beyond one request's worth: the ones the sink skips
/// (anonymous for Braze, operational types) do not cost a query each. They are kept until
/// used: re-reading 4,000 rows for each 75-event Braze request made a sink that had fallen
/// behind read every event ~25 times (31 % of a consumer's CPU in the fleet benchmark, in
/// the rows' allocations), so the further behind it was, the slower it caught up.
const READ_AHEAD: usize = 4_000;
/// Pause after the journey store failed a read or a write.
const STORE_PAUSE: Duration = Duration::from_secs(1);
/// How often a consumer standing by tries to take a sink that another one drives.
const CLAIM_RETRY: Duration = Duration::from_secs(1);
/// The longest an engine's reset header may make us wait before trying again.
const MAX_RESET_WAIT: Duration = Duration::from_secs(3_600);

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The HTTP client could not be built (TLS roots): the sink cannot run; fix the host.
    #[error("sink {0}: HTTP client: {1}")]
    Client(String, reqwest::Error),
}

/// Why forwarding stopped.
enum Halt {
    Stopped,
    /// Another consumer may drive the sink now: claim it again before going on.
    ClaimLost,
}

/// A request that got no answer.
enum SendError {
    /// Not sent (no connection): repeating it is safe.
    Unsent(String),
    /// Sent, or maybe sent, then no answer: its fate is unknown.
    Unknown(String),
}

/// The sink's connection to the journey store, used on the blocking pool (rusqlite blocks).
#[derive(Clone)]
struct Ledger {
    inner: Arc<Mutex<Box<dyn SinkLedger>>>,
    sink: Arc<str>,
}

impl Ledger {
    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn SinkLedger, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (inner, sink) = (self.inner.clone(), self.sink.clone());
        tokio::task::spawn_blocking(move || {
            let mut l = inner.lock().unwrap_or_else(|p| p.into_inner());
            f(l.as_mut(), &sink)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

pub struct SinkRunner {
    name: String,
    engine: Box<dyn Engine>,
    mapping: Mapping,
    ledger: Ledger,
    http: reqwest::Client,
    backoff: Backoff,
    poll: Duration,
    stats: Shared,
    stop: watch::Receiver<bool>,
    /// The last request had no answer: the next one repeats it and is counted as ambiguous.
    uncertain: bool,
}

impl SinkRunner {
    /// `ledger` is the sink's own connection to the journey store.
    pub fn new(
        config: &SinkConfig,
        ledger: Box<dyn SinkLedger>,
        stats: Shared,
        stop: watch::Receiver<bool>,
    ) -> Result<SinkRunner, SinkError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| SinkError::Client(config.name.clone(), e))?;
        Ok(SinkRunner {
            name: config.name.clone(),
            engine: config.engine(),
            mapping: config.mapping.clone(),
            ledger: Ledger {
                inner: Arc::new(Mutex::new(ledger)),
                sink: config.name.as_str().into(),
            },
            http,
            backoff: Backoff::new(config.backoff_min, config.backoff_max),
            poll: config.poll,
            stats,
            stop,
            uncertain: false,
        })
    }

    /// Forwards until the stop signal. A request already sent is answered (or times out)
    /// before it stops, so a clean stop never leaves a fate unknown. While another consumer
    /// drives the sink (a shared PostgreSQL store), this one stands by and takes over when
    /// that one's claim ends, from the durable cursor.
    pub async fn run(mut self) -> Result<(), SinkError> {
        while let Some(cursor) = self.claim().await {
            info!(sink = %self.name, cursor, "sink started");
            match self.forward(cursor).await {
                Halt::Stopped => break,
                Halt::ClaimLost => {
                    warn!(sink = %self.name, "the sink's claim was lost with its store connection; claiming it again")
                }
            }
        }
        info!(sink = %self.name, "sink stopped");
        Ok(())
    }

    /// Waits for the claim on the sink, then reads its cursor; `None` when stopped first.
    async fn claim(&mut self) -> Option<u64> {
        // What is in doubt is the stored in-flight mark's to say: another consumer may have
        // settled it meanwhile.
        self.uncertain = false;
        let mut standing_by = false;
        loop {
            match self.ledger.call(|l, s| l.claim(s)).await {
                Ok(true) => break,
                Ok(false) => {
                    if !std::mem::replace(&mut standing_by, true) {
                        info!(sink = %self.name, "another consumer drives this sink: standing by");
                    }
                    if self.pause(CLAIM_RETRY.max(self.poll)).await {
                        return None;
                    }
                }
                Err(e) => {
                    error!(sink = %self.name, error = %e, "claiming the sink failed");
                    if self.pause(STORE_PAUSE).await {
                        return None;
                    }
                }
            }
        }
        loop {
            match self.ledger.call(|l, s| l.sink_position(s)).await {
                Ok(SinkPosition { cursor, inflight }) => {
                    if let Some(upto) = inflight {
                        warn!(sink = %self.name, cursor, upto, "a request was out when the sink last stopped: it is sent again and counted as ambiguous");
                        self.uncertain = true;
                    }
                    return Some(cursor);
                }
                Err(e) => {
                    error!(sink = %self.name, error = %e, "reading the sink's cursor failed");
                    if self.pause(STORE_PAUSE).await {
                        return None;
                    }
                }
            }
        }
    }

    /// The forwarding loop, from `cursor`, until stopped or the claim is lost.
    async fn forward(&mut self, mut cursor: u64) -> Halt {
        // Rows read and not yet covered by the cursor, in `n` order: events are never changed
        // once stored, so they stay valid while this runner holds the claim (this call).
        let mut ahead: VecDeque<(u64, String)> = VecDeque::new();
        while !*self.stop.borrow() {
            if ahead.is_empty() {
                match self
                    .ledger
                    .call(move |l, _| l.events_after(cursor, READ_AHEAD))
                    .await
                {
                    Ok(rows) => ahead = rows.into(),
                    Err(StoreError::ClaimLost(_)) => return Halt::ClaimLost,
                    Err(e) => {
                        error!(sink = %self.name, error = %e, "reading events failed");
                        if self.pause(STORE_PAUSE).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            self.publish_lag(cursor).await;
            if ahead.is_empty() {
                if self.pause(self.poll).await {
                    break;
                }
                continue;
            }
            let (batch, covered, skipped) = self.take_batch(ahead.make_contiguous());
            self.count(|f| f.skipped += skipped);
            match self.deliver(batch, covered).await {
                Ok(done) => {
                    cursor = done;
                    while ahead.front().is_some_and(|(n, _)| *n <= done) {
                        ahead.pop_front();
                    }
                }
                Err(halt) => return halt,
            }
        }
        Halt::Stopped
    }

    /// The next request's events from `rows`, the `n` up to which they cover the rows (the
    /// skipped ones included) and how many were skipped.
    fn take_batch(&self, rows: &[(u64, String)]) -> (Vec<Mapped>, u64, u64) {
        let mut batch = Vec::new();
        let mut covered = 0;
        let mut skipped = 0;
        for (n, body) in rows {
            match self.mapping.map(*n, body) {
                Some(m) if self.engine.accepts(&m) => {
                    if batch.len() == self.engine.max_events() {
                        break;
                    }
                    batch.push(m);
                }
                _ => skipped += 1,
            }
            covered = *n;
        }
        (batch, covered, skipped)
    }

    /// Sends `batch` (covering the rows up to `covered`) until the engine has answered for
    /// every event; returns the new cursor, or why it halted first.
    async fn deliver(&mut self, mut batch: Vec<Mapped>, mut covered: u64) -> Result<u64, Halt> {
        let mut parked: Vec<SinkParked> = Vec::new();
        loop {
            // Keep under the engine's byte cap by halving; one event too large is parked.
            let req = loop {
                let req = self.engine.request(&batch);
                if batch.is_empty() || req.body.len() < self.engine.max_bytes() {
                    break req;
                }
                if batch.len() == 1 {
                    let e = batch.remove(0);
                    let reason =
                        format!("{} bytes: above the engine's request limit", req.body.len());
                    parked.push(SinkParked {
                        n: e.n,
                        id: e.id,
                        reason,
                    });
                } else {
                    batch.truncate(batch.len() / 2);
                    covered = batch.last().map_or(covered, |e| e.n);
                }
            };
            if batch.is_empty() {
                return self.advance(covered, parked, 0).await;
            }
            self.mark_inflight(Some(covered)).await?;
            if std::mem::take(&mut self.uncertain) {
                let events = batch.len() as u64;
                self.count(|f| {
                    f.ambiguous += 1;
                    f.ambiguous_events += events;
                });
                warn!(sink = %self.name, upto = covered, events = batch.len(), "ambiguous: repeating a request whose fate is unknown; the engine may receive these events twice");
            }
            self.count(|f| f.requests += 1);
            let wait = match self.send(req).await {
                Err(SendError::Unsent(e)) => {
                    warn!(sink = %self.name, error = %e, "request not sent; retrying");
                    self.count(|f| f.retries += 1);
                    self.mark_inflight(None).await?;
                    self.backoff.next_wait()
                }
                Err(SendError::Unknown(e)) => {
                    warn!(sink = %self.name, error = %e, "no answer to a sent request: its fate is unknown; it will be repeated once, counted as ambiguous");
                    self.count(|f| f.retries += 1);
                    // The in-flight mark stays: a restart before the repeat counts it too.
                    self.uncertain = true;
                    self.backoff.next_wait()
                }
                Ok(resp) => match self.engine.verdict(&resp, &batch, SystemTime::now()) {
                    Verdict::Done { refused } => {
                        let forwarded = (batch.len() - refused.len()) as u64;
                        parked.extend(park(&batch, &refused));
                        self.backoff.reset();
                        return self.advance(covered, parked, forwarded).await;
                    }
                    Verdict::Resend { refused } => {
                        warn!(sink = %self.name, refused = refused.len(), "events refused for good: parked; sending the rest again");
                        parked.extend(park(&batch, &refused));
                        let mut i = 0;
                        batch.retain(|_| {
                            i += 1;
                            !refused.iter().any(|r| r.0 == i - 1)
                        });
                        self.mark_inflight(None).await?;
                        continue;
                    }
                    Verdict::Retry {
                        at,
                        throttled,
                        reason,
                    } => {
                        self.count(|f| {
                            if throttled {
                                f.throttled += 1
                            } else {
                                f.retries += 1
                            }
                        });
                        self.mark_inflight(None).await?;
                        let wait = match at {
                            Some(t) => t
                                .duration_since(SystemTime::now())
                                .unwrap_or_default()
                                .clamp(self.backoff.min(), MAX_RESET_WAIT),
                            None => self.backoff.next_wait(),
                        };
                        info!(sink = %self.name, %reason, wait_ms = wait.as_millis() as u64, "engine asks to wait; retrying the same request");
                        wait
                    }
                    Verdict::Misconfigured(reason) => {
                        error!(sink = %self.name, %reason, "the engine refuses our credentials or URL: fix the sink's config; retrying");
                        self.count(|f| f.retries += 1);
                        self.mark_inflight(None).await?;
                        self.backoff.next_wait()
                    }
                    Verdict::Split(reason) => {
                        self.mark_inflight(None).await?;
                        if batch.len() == 1 {
                            let e = batch.remove(0);
                            warn!(sink = %self.name, id = %e.id, %reason, "event refused for good: parked");
                            parked.push(SinkParked {
                                n: e.n,
                                id: e.id,
                                reason,
                            });
                        } else {
                            info!(sink = %self.name, %reason, events = batch.len(), "request refused as a whole: sending it in halves");
                            batch.truncate(batch.len() / 2);
                            covered = batch.last().map_or(covered, |e| e.n);
                            parked.retain(|p| p.n <= covered);
                        }
                        continue;
                    }
                },
            };
            if self.pause(wait).await {
                return Err(Halt::Stopped);
            }
        }
    }

    async fn send(&self, req: HttpRequest) -> Result<HttpResponse, SendError> {
        let mut b = self.http.post(&req.url).body(req.body);
        for (k, v) in req.headers {
            b = b.header(k, v);
        }
        let resp = b.send().await.map_err(|e| {
            // Only a failed connect proves nothing went out; anything later may have.
            if e.is_connect() || e.is_builder() {
                SendError::Unsent(format!("{e:#}"))
            } else {
                SendError::Unknown(format!("{e:#}"))
            }
        })?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        // The status is the engine's answer; a body cut short only loses its details.
        let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }

    /// Moves the cursor to `to` with `parked`, retrying the store until it takes it: the
    /// engine has these events, so reading them again would send them twice.
    async fn advance(
        &mut self,
        to: u64,
        parked: Vec<SinkParked>,
        forwarded: u64,
    ) -> Result<u64, Halt> {
        let count = parked.len() as u64;
        for p in &parked {
            warn!(sink = %self.name, n = p.n, id = %p.id, reason = %p.reason, "event parked for this sink");
        }
        let parked = Arc::new(parked);
        loop {
            let p = parked.clone();
            let now = now_ms();
            match self
                .ledger
                .call(move |l, s| l.sink_advance(s, to, &p, now))
                .await
            {
                Ok(()) => break,
                // The in-flight mark is still set: whoever drives the sink next counts the
                // repeat.
                Err(StoreError::ClaimLost(_)) => return Err(Halt::ClaimLost),
                Err(e) => {
                    error!(sink = %self.name, error = %e, "moving the cursor failed; trying again");
                    if self.pause(STORE_PAUSE).await {
                        return Err(Halt::Stopped);
                    }
                }
            }
        }
        self.count(|f| {
            f.forwarded += forwarded;
            f.parked += count;
            f.cursor = to;
        });
        Ok(to)
    }

    /// Writes (or clears) the in-flight mark, retrying the store until it takes it.
    async fn mark_inflight(&mut self, upto: Option<u64>) -> Result<(), Halt> {
        loop {
            match self.ledger.call(move |l, s| l.sink_inflight(s, upto)).await {
                Ok(()) => return Ok(()),
                Err(StoreError::ClaimLost(_)) => return Err(Halt::ClaimLost),
                Err(e) => {
                    error!(sink = %self.name, error = %e, "writing the in-flight mark failed");
                    if self.pause(STORE_PAUSE).await {
                        return Err(Halt::Stopped);
                    }
                }
            }
        }
    }

    async fn publish_lag(&self, cursor: u64) {
        if let Ok(last) = self.ledger.call(|l, _| l.last_n()).await {
            self.count(|f| {
                f.lag = last.saturating_sub(cursor);
                f.cursor = cursor;
            });
        }
    }

    fn count(&self, f: impl FnOnce(&mut SinkFigures)) {
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        f(s.sinks.entry(self.name.clone()).or_default());
    }

    /// Waits `d`; `true` when the stop signal came first. Both branches are cancel-safe:
    /// the sleep holds nothing, `changed` only marks the value seen.
    async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => *self.stop.borrow(),
            _ = self.stop.changed() => true,
        }
    }
}

fn park(batch: &[Mapped], refused: &[(usize, String)]) -> Vec<SinkParked> {
    refused
        .iter()
        .filter_map(|(i, reason)| {
            let e = batch.get(*i)?;
            Some(SinkParked {
                n: e.n,
                id: e.id.clone(),
                reason: reason.clone(),
            })
        })
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
