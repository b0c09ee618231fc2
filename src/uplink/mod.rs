//! Uplink: publishes the outbox to HQ over MQTT QoS 1, in `seq` order, and deletes rows only on
//! the broker's PUBACK for the publish that carried them.
//!
//! rumqttc's own queue is not a durable copy: with a clean session (always, here) it empties its
//! pending queue on every CONNACK. So after each CONNACK the uplink forgets what it had in flight
//! and republishes from the oldest un-acked row. `publish` does not return the packet id; the
//! PUBACK is matched through `Outgoing::Publish(pkid)` events, which come in the order the
//! publishes were queued. That order is only reliable within one connection, and this task is
//! the only one queueing publishes, only while connected, so it holds.
//!
//! The MQTT version (`[mqtt] protocol`) is the shell's business ([`crate::mqtt::Session`]); the
//! book and this loop are the same for both. On MQTT 5 a PUBACK may refuse a batch (an ACL
//! denial, a quota): the batch is not delivered, its rows stay, the refusal is logged and shown
//! on the status page, and the book holds until a backoff has passed (`book.rs` says what this
//! does to the in-order watermark). On 3.1.1 a broker that refuses a publish still acknowledges
//! it: there the PUBACK is the only word, and it is taken as delivered.
//!
//! Replays (`crate::replay`) go out on the same connection beside the outbox batches, at most
//! [`REPLAY_INFLIGHT`] at a time; their PUBACKs acknowledge nothing in the outbox, and a replay
//! in flight when the connection drops is not sent again (HQ asks again).
//!
//! HQ's messages to the store do not come in here: they need the opposite session (persistent,
//! acknowledged only after commit), which [`crate::downlink::session`] keeps on its own client.

mod book;
pub mod report;
pub mod settings;

pub use settings::{BrokerAddr, MqttConfig, Protocol, TlsConfig, UplinkConfig, UplinkSettings};

use book::{Book, Sent};
use report::{ReportSources, Reporter};

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

use phygate_proto::envelope::BATCH_CONTENT_TYPE;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::backoff::{Backoff, ReconnectBackoff};
use crate::mqtt::{LinkError, LinkEvent, Refusal, Session, SessionOptions, Will, JSON};
use crate::outbox::{Batch, OutboxError, OutboxHandle};
use crate::shutdown::Shutdown;

/// Pause before reading the outbox again after a refused read.
const FETCH_RETRY: Duration = Duration::from_secs(1);
/// How long shutdown waits for the last acknowledgements and the offline status.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Replay batches queued or on the wire at once: a repair never crowds out the live stream.
const REPLAY_INFLIGHT: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The MQTT settings cannot work (e.g. unreadable TLS files): fix the config.
    #[error("MQTT settings: {0}")]
    Settings(String),
    /// The outbox stopped under the uplink: the daemon is going down.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// The uplink's modes; each `async fn` runs one and returns the next.
enum Mode {
    Connecting,
    Live,
    BackingOff(LinkError),
    ShuttingDown,
}

type FetchFuture = Pin<Box<dyn Future<Output = Result<Vec<Batch>, OutboxError>> + Send>>;

pub struct Uplink {
    session: Session,
    outbox: OutboxHandle,
    committed: watch::Receiver<u64>,
    shutdown: Shutdown,
    settings: UplinkConfig,
    events_topic: String,
    status_topic: String,
    gateway: String,
    backoff: ReconnectBackoff,
    /// Between retries of a batch the broker refused (MQTT 5): reset by an accepted batch.
    refusal_backoff: Backoff,
    /// After a refusal: when the book may start again from the oldest unacknowledged row.
    retry_at: Option<tokio::time::Instant>,
    /// What is in flight, and which PUBACK settles it. A batch's tag is when it was queued:
    /// publish → PUBACK is the latency metric.
    book: Book<Instant>,
    /// The report the status carries ([`report`]); `None`: a bare status (the fleet simulator).
    reporter: Option<Reporter>,
    /// Replays to publish (`crate::replay`); `None`: this uplink takes no replay commands.
    replays: Option<crate::replay::ReplayFeed>,
    /// Batches of replays taken from the feed and not yet published, in order.
    replaying: VecDeque<Batch>,
    /// The broker's packet limit from this connection's CONNACK (MQTT 5), if it stated one.
    packet_limit: Option<usize>,
    /// The last sign that the broker takes our publishes: the CONNACK, or any PUBACK since.
    /// With publishes in flight and nothing since for `ack_timeout`, the connection is
    /// dropped: a broker that answers keep-alives but holds a PUBLISH (a clustered broker's
    /// stuck stream) would otherwise hold the window, and the store's backlog, for good;
    /// MQTT 3.1.1 §4.4 resends only on a new connection.
    last_ack: tokio::time::Instant,
}

impl Uplink {
    pub fn new(
        settings: UplinkSettings,
        outbox: OutboxHandle,
        shutdown: Shutdown,
    ) -> Result<Self, UplinkError> {
        let s = settings;
        let session = Session::new(&s.mqtt, &session_options(&s)).map_err(UplinkError::Settings)?;
        Ok(Uplink {
            session,
            committed: outbox.committed(),
            outbox,
            shutdown,
            backoff: ReconnectBackoff::new(s.batching.backoff_min, s.batching.backoff_max),
            refusal_backoff: Backoff::new(s.batching.backoff_min, s.batching.backoff_max),
            retry_at: None,
            settings: s.batching,
            events_topic: s.events_topic,
            status_topic: s.status_topic,
            gateway: s.gateway,
            book: Book::new(),
            reporter: None,
            replays: None,
            replaying: VecDeque::new(),
            packet_limit: None,
            last_ack: tokio::time::Instant::now(),
        })
    }

    /// Publishes the replays that `feed` brings (HQ's `replay` commands, `crate::replay`).
    pub fn with_replays(mut self, feed: crate::replay::ReplayFeed) -> Self {
        self.replays = Some(feed);
        self
    }

    /// Makes the status carry the gateway's report (applied versions, devices in error,
    /// backlog), sent again when it changes.
    pub fn with_report(mut self, sources: ReportSources) -> Self {
        self.reporter = Some(Reporter::new(sources));
        self
    }

    pub async fn run(mut self) -> Result<(), UplinkError> {
        let mut mode = Mode::Connecting;
        loop {
            mode = match mode {
                Mode::Connecting => self.connect().await,
                Mode::Live => self.live().await?,
                Mode::BackingOff(e) => self.back_off(e).await,
                Mode::ShuttingDown => {
                    self.shut_down().await?;
                    return Ok(());
                }
            };
        }
    }

    async fn connect(&mut self) -> Mode {
        loop {
            tokio::select! {
                // Cancel-safe: rumqttc keeps partial reads in the event loop's buffers.
                ev = self.session.poll() => match ev {
                    Ok(LinkEvent::Connected { max_packet, .. }) => {
                        info!(broker = ?self.session.broker_address(), max_packet, "connected to HQ");
                        self.packet_limit = max_packet.map(|m| m as usize);
                        crate::metrics::MQTT_CONNECTED.set(1);
                        // The backoff resets only once the link proves useful (a batch acked, or
                        // a stable connection): a broker that accepts and then drops us (an ACL
                        // denial, an overloaded cluster node) keeps getting a growing delay.
                        self.backoff.connected();
                        // Resend every un-acked row: the outbox still has exactly those.
                        self.book.connected();
                        self.retry_at = None;
                        self.last_ack = tokio::time::Instant::now();
                        self.publish_status("online", true).await;
                        return Mode::Live;
                    }
                    Ok(_) => {}
                    Err(e) => return Mode::BackingOff(e),
                },
                _ = self.shutdown.stopped() => return Mode::ShuttingDown,
            }
        }
    }

    async fn live(&mut self) -> Result<Mode, UplinkError> {
        let mut fetch: Option<FetchFuture> = None;
        let mut caught_up = false;
        let mut report_check = tokio::time::interval(report::CHECK_EVERY);
        report_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        report_check.reset();
        // Batches read ahead of the window (at most one window's worth): a PUBACK's free slot
        // is filled at once instead of after a round trip to the outbox thread, which under a
        // loaded CPU waits for that thread to be scheduled. Dropped with the connection: the
        // next one reads again from the oldest unacknowledged row.
        let mut ready: VecDeque<Batch> = VecDeque::new();
        let window = self.settings.inflight;
        loop {
            // A refused batch's backoff has passed: start again from its rows once the
            // batches sent after it are settled (the next PUBACK brings us back here).
            if self
                .retry_at
                .is_some_and(|at| at <= tokio::time::Instant::now())
                && self.book.resume()
            {
                self.retry_at = None;
                caught_up = false;
                // What was read ahead, or is being read, lies after the refused rows.
                ready.clear();
                fetch = None;
            }
            self.publish_replays();
            let retry_wait = self.retry_at.filter(|at| *at > tokio::time::Instant::now());
            let ack_deadline =
                (!self.book.is_empty()).then(|| self.last_ack + self.settings.ack_timeout);
            // A held book (a refused PUBACK) publishes nothing new until it resumes.
            while !self.book.is_held() && self.book.batches_in_flight() < window {
                let Some(batch) = ready.pop_front() else {
                    break;
                };
                if !self.publish_batch(batch) {
                    // Not queued: read again from the last batch queued, in order (a read
                    // under way starts after what is dropped here: dropped with it).
                    ready.clear();
                    fetch = None;
                    break;
                }
            }
            let covered = self.book.batches_in_flight() + ready.len();
            let wanted = match (&fetch, caught_up) {
                (None, false) => self
                    .book
                    .next_fetch(book::read_target(window, covered).saturating_sub(ready.len()))
                    .map(|(after, room)| (ready.back().map_or(after, |b| b.last), room)),
                _ => None,
            };
            // Up to the read target in one request (`book::read_target`: small at first): a
            // round trip to the outbox thread per batch made the drain wait on that thread's
            // wake-ups. The request waits at the outbox when there is nothing to read yet, and
            // is answered by the commit that brings rows (`outbox/waiting.rs`): no wake-up of
            // this task per commit, and none of the outbox thread to read what it just wrote.
            if let Some((after, room)) = wanted {
                self.committed.borrow_and_update();
                let h = self.outbox.clone();
                let (n, b) = (self.settings.batch_max_events, self.batch_bytes());
                fetch = Some(Box::pin(
                    async move { h.next_batches(after, room, n, b).await },
                ));
            }
            tokio::select! {
                ev = self.session.poll() => match ev {
                    Ok(ev) => self.on_event(ev).await?,
                    Err(e) => return Ok(Mode::BackingOff(e)),
                },
                // Cancel-safe: a plain timer, rebuilt from `retry_at` each turn.
                _ = tokio::time::sleep_until(retry_wait.unwrap_or_else(tokio::time::Instant::now)), if retry_wait.is_some() => {}
                // Cancel-safe: a plain timer, rebuilt each turn from the last PUBACK.
                _ = tokio::time::sleep_until(ack_deadline.unwrap_or_else(tokio::time::Instant::now)), if ack_deadline.is_some() => {
                    crate::metrics::PUBACK_TIMEOUTS.inc();
                    self.session.clean();
                    return Ok(Mode::BackingOff(LinkError::NoAck(self.settings.ack_timeout)));
                }
                // Cancel-safe: a dropped fetch is a dropped read; the rows are read again.
                batch = async { fetch.as_mut().expect("guarded").await }, if fetch.is_some() => {
                    fetch = None;
                    match batch {
                        Ok(batches) if batches.is_empty() => caught_up = true,
                        Ok(batches) => ready.extend(batches),
                        Err(OutboxError::Closed) => return Ok(Mode::ShuttingDown),
                        // A read the database refused (I/O error, a locked file): the rows are
                        // still there. Retry after a pause instead of ending the uplink.
                        Err(e) => {
                            warn!(error = %e, "could not read the next batch; retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(FETCH_RETRY) => {}
                                _ = self.shutdown.stopped() => return Ok(Mode::ShuttingDown),
                            }
                        }
                    }
                }
                // Cancel-safe: a missed change is seen by the next borrow.
                changed = self.committed.changed(), if caught_up => {
                    if changed.is_err() {
                        return Ok(Mode::ShuttingDown);
                    }
                    caught_up = false;
                }
                // Cancel-safe: mpsc's recv loses nothing when dropped. Taken only once the
                // replays in hand are out, so the feed's bound holds them back.
                job = async { self.replays.as_mut().expect("guarded").recv().await }, if self.replays.is_some() && self.replaying.is_empty() => {
                    match job {
                        Some(batches) => self.replaying.extend(batches),
                        // The replayer is gone (the link ended): nothing more to replay.
                        None => self.replays = None,
                    }
                }
                // Cancel-safe: a watch change is seen by the next borrow.
                _ = async { self.reporter.as_mut().expect("guarded").applied_changed().await }, if self.reporter.is_some() => {
                    self.publish_status("online", true).await;
                }
                _ = report_check.tick(), if self.reporter.is_some() => {
                    self.publish_status("online", false).await;
                }
                _ = self.shutdown.stopped() => return Ok(Mode::ShuttingDown),
            }
        }
    }

    async fn back_off(&mut self, error: LinkError) -> Mode {
        crate::metrics::MQTT_CONNECTED.set(0);
        crate::metrics::MQTT_RECONNECTS.inc();
        self.book.disconnected();
        let delay = self.backoff.next_delay();
        let next = self.session.next_broker();
        warn!(error = %error, retry_in = ?delay, next_broker = ?next, "HQ link down");
        crate::status::hq_link_failed(&error);
        tokio::select! {
            _ = tokio::time::sleep(delay) => Mode::Connecting,
            _ = self.shutdown.stopped() => Mode::ShuttingDown,
        }
    }

    /// Says goodbye (retained offline status), and takes the acks that arrive in the grace time.
    async fn shut_down(&mut self) -> Result<(), UplinkError> {
        if crate::metrics::MQTT_CONNECTED.get() == 0 {
            return Ok(());
        }
        self.publish_status("offline", true).await;
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while !self.book.is_empty() {
            match tokio::time::timeout_at(deadline, self.session.poll()).await {
                Ok(Ok(ev)) => self.on_event(ev).await?,
                Ok(Err(_)) | Err(_) => break,
            }
        }
        // Best effort: the broker would publish the Last Will (offline) anyway.
        let _ = self.session.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), self.session.poll()).await;
        crate::metrics::MQTT_CONNECTED.set(0);
        Ok(())
    }

    async fn on_event(&mut self, ev: LinkEvent) -> Result<(), UplinkError> {
        if matches!(ev, LinkEvent::PubAck { .. }) {
            self.last_ack = tokio::time::Instant::now();
        }
        match ev {
            LinkEvent::PublishSent(pkid) => self.book.assigned(pkid),
            LinkEvent::PubAck {
                pkid,
                refused: None,
            } => match self.book.acked(pkid) {
                Some(Sent::Batch {
                    first,
                    last,
                    count,
                    tag: queued,
                }) => {
                    crate::metrics::PUBLISH_LATENCY.observe(queued.elapsed());
                    self.backoff.reset();
                    self.refusal_backoff.reset();
                    crate::status::hq_publish_accepted();
                    debug!(first, last, count, "batch acknowledged");
                    self.outbox.ack(first, last).await?;
                    crate::metrics::EVENTS_PUBLISHED.add(count as u64);
                }
                Some(Sent::Status) => {}
                Some(Sent::Replay { count }) => debug!(count, "replay acknowledged"),
                None => debug!(pkid, "PUBACK for no publish of this connection"),
            },
            LinkEvent::PubAck {
                pkid,
                refused: Some(why),
            } => match self.book.refused(pkid) {
                Some(Sent::Batch {
                    first, last, count, ..
                }) => self.batch_refused(first, last, count, &why),
                Some(Sent::Status) => {
                    warn!(reason = %why, topic = %self.status_topic, "HQ's broker refused the status message")
                }
                Some(Sent::Replay { count }) => {
                    warn!(count, reason = %why, "HQ's broker refused a replay; HQ will ask again")
                }
                None => {
                    debug!(pkid, reason = %why, "refusing PUBACK for no publish of this connection")
                }
            },
            _ => {}
        }
        Ok(())
    }

    /// The broker did not take rows `first..=last`: they stay in the outbox and go again, from
    /// the oldest, after a backoff (see the module doc).
    fn batch_refused(&mut self, first: u64, last: u64, count: usize, why: &Refusal) {
        crate::metrics::PUBLISHES_REFUSED.inc();
        crate::status::hq_publish_refused(why);
        // Only the first refusal of a hold sets the time: the other batches of the same window
        // refused with it are the same story, not a reason to back off further.
        let now = tokio::time::Instant::now();
        let retry_at = *self
            .retry_at
            .get_or_insert_with(|| now + self.refusal_backoff.next_delay());
        let delay = retry_at.saturating_duration_since(now);
        warn!(
            first,
            last,
            count,
            reason = %why,
            retry_in = ?delay,
            topic = %self.events_topic,
            "HQ's broker refused a batch; its events stay in the outbox and are sent again"
        );
    }

    /// Queues the next replay batches while fewer than [`REPLAY_INFLIGHT`] are out.
    fn publish_replays(&mut self) {
        while self.book.replays_in_flight() < REPLAY_INFLIGHT {
            let Some(batch) = self.replaying.pop_front() else {
                return;
            };
            let count = batch.count;
            if !self.fits(&self.events_topic, batch.payload.len()) {
                // Cut by the configured batch size, over the broker's limit: dropped, and the
                // hole it would have filled waits for HQ's next ask or the grace.
                warn!(
                    count,
                    "a replay batch is over the broker's packet limit; not sent"
                );
                continue;
            }
            match self.session.try_publish(
                &self.events_topic,
                batch.payload,
                false,
                BATCH_CONTENT_TYPE,
            ) {
                Ok(()) => self.book.queued_replay(count),
                Err(e) => {
                    // Dropped, not retried: HQ asks again for what still misses.
                    warn!(error = %e, count, "could not queue a replay batch");
                    return;
                }
            }
        }
    }

    /// The most payload bytes a batch may have: the configured size, cut to what fits in the
    /// broker's packet limit when it stated one. Without the cut, rumqttc refuses the publish
    /// as a connection error, and the uplink would reconnect and send the same batch forever.
    fn batch_bytes(&self) -> usize {
        let configured = self.settings.batch_max_bytes;
        match self.packet_limit {
            Some(limit) => configured
                .min(limit.saturating_sub(publish_overhead(&self.events_topic)))
                .max(1),
            None => configured,
        }
    }

    /// Whether a publish of `payload` bytes on `topic` fits the broker's packet limit.
    fn fits(&self, topic: &str, payload: usize) -> bool {
        self.packet_limit
            .is_none_or(|limit| payload + publish_overhead(topic) <= limit)
    }

    /// A single event larger than the broker's packet limit: no batch can carry it, and the
    /// events after it may not overtake it. The book holds and tries again after a backoff;
    /// the log and the status page say why, so that the broker's limit can be raised.
    fn batch_too_large(&mut self, batch: &Batch, limit: usize) {
        let why = format!(
            "event seq {} is {} bytes, over the broker's maximum packet size of {limit} bytes \
             (its CONNACK); raise the broker's limit",
            batch.first,
            batch.payload.len()
        );
        crate::metrics::PUBLISHES_REFUSED.inc();
        crate::status::hq_publish_refused(&why);
        self.book.hold();
        let now = tokio::time::Instant::now();
        let retry_at = *self
            .retry_at
            .get_or_insert_with(|| now + self.refusal_backoff.next_delay());
        warn!(
            reason = %why,
            retry_in = ?retry_at.saturating_duration_since(now),
            "a batch cannot be sent; its events stay in the outbox"
        );
    }

    /// Queues a batch's publish; false when it was not queued.
    fn publish_batch(&mut self, batch: Batch) -> bool {
        if !self.fits(&self.events_topic, batch.payload.len()) {
            self.batch_too_large(&batch, self.packet_limit.unwrap_or_default());
            return false;
        }
        let queued = Instant::now();
        // The channel holds inflight + 8 requests and at most `inflight` batches are queued, so
        // a full channel cannot happen; if it did, the batch is simply fetched again.
        match self
            .session
            .try_publish(&self.events_topic, batch.payload, false, BATCH_CONTENT_TYPE)
        {
            Ok(()) => {
                self.book
                    .queued_batch(batch.first, batch.last, batch.count, queued);
                true
            }
            Err(e) => {
                warn!(error = %e, "could not queue a batch; it stays in the outbox");
                false
            }
        }
    }

    /// Publishes the retained status with the report; unless `always`, only when the report
    /// changed enough to be worth a message ([`report`]).
    async fn publish_status(&mut self, state: &str, always: bool) {
        let now = SystemTime::now();
        let report = match self.reporter.as_mut() {
            None if always => None,
            None => return,
            Some(r) => match r.check(&self.outbox, now).await {
                (_, false) if !always => return,
                (report, _) => Some(report),
            },
        };
        let payload = report::status_payload(state, &self.gateway, report.clone());
        if !self.fits(&self.status_topic, payload.len()) {
            // The status is a courtesy to HQ's fleet view; a publish the client would refuse
            // as a connection error would cost the events their link.
            warn!(
                bytes = payload.len(),
                limit = self.packet_limit,
                "the status message is over the broker's maximum packet size; not sent"
            );
            return;
        }
        match self
            .session
            .try_publish(&self.status_topic, payload, true, JSON)
        {
            Ok(()) => {
                self.book.queued_status();
                // Only a queued report counts as sent: one that could not be queued is due
                // again at the next check.
                if let (Some(r), Some(report)) = (self.reporter.as_mut(), &report) {
                    r.sent(report, now);
                }
            }
            Err(e) => warn!(error = %e, "could not queue the status message"),
        }
    }
}

/// An upper bound on a publish's bytes besides its payload: fixed header (≤ 5), topic (2 + its
/// length), packet id (2) and the properties (length ≤ 4, content type 3 + its length, payload
/// format 2), with room to spare.
fn publish_overhead(topic: &str) -> usize {
    topic.len() + BATCH_CONTENT_TYPE.len() + 32
}

/// The uplink's connection: a clean session (the outbox is the session: a broker-side one
/// would only replay what the book resends anyway), the retained offline status as its will.
fn session_options(s: &UplinkSettings) -> SessionOptions {
    let u = &s.batching;
    SessionOptions {
        client_id: s.mqtt.client_id.clone(),
        persistent: false,
        manual_acks: false,
        inflight: (u.inflight + 2 + REPLAY_INFLIGHT) as u16,
        // Incoming: nothing but acknowledgements (the downlink has its own connection).
        max_incoming: 64 * 1024,
        // Outgoing: a batch, or one event larger than a batch (a long scanner line).
        max_outgoing: (u.batch_max_bytes * 2).max(4 * 1024 * 1024),
        will: Some(Will {
            topic: s.status_topic.clone(),
            payload: report::status_payload("offline", &s.gateway, None),
        }),
        // At most `inflight` batches, the replays and a status message are queued at once.
        requests: u.inflight + REPLAY_INFLIGHT + 8,
    }
}
