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
//! HQ's messages to the store do not come in here: they need the opposite session (persistent,
//! acknowledged only after commit), which [`crate::downlink::session`] keeps on its own client.

mod book;
pub mod brokers;
pub mod settings;

pub use settings::{BrokerAddr, MqttConfig, TlsConfig, UplinkConfig, UplinkSettings};

use book::{Book, Sent};
use brokers::BrokerTurns;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

use rumqttc::{
    AsyncClient, ConnectionError, Event as MqttEvent, EventLoop, LastWill, MqttOptions, Outgoing,
    Packet, QoS,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::backoff::ReconnectBackoff;
use crate::outbox::{Batch, OutboxError, OutboxHandle};

/// Pause before reading the outbox again after a refused read.
const FETCH_RETRY: Duration = Duration::from_secs(1);
/// How long shutdown waits for the last acknowledgements and the offline status.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

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
    BackingOff(ConnectionError),
    ShuttingDown,
}

type FetchFuture = Pin<Box<dyn Future<Output = Result<Vec<Batch>, OutboxError>> + Send>>;

pub struct Uplink {
    client: AsyncClient,
    eventloop: EventLoop,
    outbox: OutboxHandle,
    committed: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    settings: UplinkConfig,
    events_topic: String,
    status_topic: String,
    gateway: String,
    backoff: ReconnectBackoff,
    brokers: BrokerTurns,
    /// What is in flight, and which PUBACK settles it. A batch's tag is when it was queued:
    /// publish → PUBACK is the latency metric.
    book: Book<Instant>,
}

impl Uplink {
    pub fn new(
        settings: UplinkSettings,
        outbox: OutboxHandle,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, UplinkError> {
        let s = settings;
        let brokers = BrokerTurns::new(&s.mqtt.brokers, |broker| {
            mqtt_options(&s.mqtt, broker, &s.batching, &s.status_topic, &s.gateway)
        })
        .map_err(UplinkError::Settings)?;
        let (client, eventloop) = AsyncClient::new(brokers.first(), s.batching.inflight + 8);
        Ok(Uplink {
            client,
            eventloop,
            committed: outbox.committed(),
            outbox,
            shutdown,
            backoff: ReconnectBackoff::new(s.batching.backoff_min, s.batching.backoff_max),
            settings: s.batching,
            events_topic: s.events_topic,
            status_topic: s.status_topic,
            gateway: s.gateway,
            brokers,
            book: Book::new(),
        })
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
                ev = self.eventloop.poll() => match ev {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                        info!(broker = ?self.eventloop.mqtt_options.broker_address(), "connected to HQ");
                        crate::metrics::MQTT_CONNECTED.set(1);
                        // The backoff resets only once the link proves useful (a batch acked, or
                        // a stable connection): a broker that accepts and then drops us (an ACL
                        // denial, an overloaded cluster node) keeps getting a growing delay.
                        self.backoff.connected();
                        // Resend every un-acked row: the outbox still has exactly those.
                        self.book.connected();
                        self.publish_status("online");
                        return Mode::Live;
                    }
                    Ok(_) => {}
                    Err(e) => return Mode::BackingOff(e),
                },
                _ = self.shutdown.changed() => return Mode::ShuttingDown,
            }
        }
    }

    async fn live(&mut self) -> Result<Mode, UplinkError> {
        let mut fetch: Option<FetchFuture> = None;
        let mut caught_up = false;
        // Batches read ahead of the window (at most one window's worth): a PUBACK's free slot
        // is filled at once instead of after a round trip to the outbox thread, which under a
        // loaded CPU waits for that thread to be scheduled. Dropped with the connection: the
        // next one reads again from the oldest unacknowledged row.
        let mut ready: VecDeque<Batch> = VecDeque::new();
        let window = self.settings.inflight;
        loop {
            while self.book.batches_in_flight() < window {
                let Some(batch) = ready.pop_front() else {
                    break;
                };
                if !self.publish_batch(batch) {
                    // Not queued: read again from the last batch queued, in order.
                    ready.clear();
                    break;
                }
            }
            let wanted = match (&fetch, caught_up) {
                (None, false) => self
                    .book
                    .next_fetch((2 * window).saturating_sub(ready.len()))
                    .map(|(after, room)| (ready.back().map_or(after, |b| b.last), room)),
                _ => None,
            };
            // Every free slot in one request: a round trip to the outbox thread per batch made
            // the drain wait on that thread's wake-ups.
            if let Some((after, room)) = wanted {
                self.committed.borrow_and_update();
                let h = self.outbox.clone();
                let (n, b) = (
                    self.settings.batch_max_events,
                    self.settings.batch_max_bytes,
                );
                fetch = Some(Box::pin(
                    async move { h.fetch_batches(after, room, n, b).await },
                ));
            }
            tokio::select! {
                ev = self.eventloop.poll() => match ev {
                    Ok(ev) => self.on_event(ev).await?,
                    Err(e) => return Ok(Mode::BackingOff(e)),
                },
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
                                _ = self.shutdown.changed() => return Ok(Mode::ShuttingDown),
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
                _ = self.shutdown.changed() => return Ok(Mode::ShuttingDown),
            }
        }
    }

    async fn back_off(&mut self, error: ConnectionError) -> Mode {
        crate::metrics::MQTT_CONNECTED.set(0);
        crate::metrics::MQTT_RECONNECTS.inc();
        self.book.disconnected();
        let delay = self.backoff.next_delay();
        let next = self.brokers.advance(&mut self.eventloop);
        warn!(error = %error, retry_in = ?delay, next_broker = ?next, "HQ link down");
        crate::status::hq_link_failed(&error);
        tokio::select! {
            _ = tokio::time::sleep(delay) => Mode::Connecting,
            _ = self.shutdown.changed() => Mode::ShuttingDown,
        }
    }

    /// Says goodbye (retained offline status), and takes the acks that arrive in the grace time.
    async fn shut_down(&mut self) -> Result<(), UplinkError> {
        if crate::metrics::MQTT_CONNECTED.get() == 0 {
            return Ok(());
        }
        self.publish_status("offline");
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while !self.book.is_empty() {
            match tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
                Ok(Ok(ev)) => self.on_event(ev).await?,
                Ok(Err(_)) | Err(_) => break,
            }
        }
        // Best effort: the broker would publish the Last Will (offline) anyway.
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(200), self.eventloop.poll()).await;
        crate::metrics::MQTT_CONNECTED.set(0);
        Ok(())
    }

    async fn on_event(&mut self, ev: MqttEvent) -> Result<(), UplinkError> {
        match ev {
            MqttEvent::Outgoing(Outgoing::Publish(pkid)) => self.book.assigned(pkid),
            MqttEvent::Incoming(Packet::PubAck(ack)) => match self.book.acked(ack.pkid) {
                Some(Sent::Batch {
                    first,
                    last,
                    count,
                    tag: queued,
                }) => {
                    crate::metrics::PUBLISH_LATENCY.observe(queued.elapsed());
                    self.backoff.reset();
                    debug!(first, last, count, "batch acknowledged");
                    self.outbox.ack(first, last).await?;
                    crate::metrics::EVENTS_PUBLISHED.add(count as u64);
                }
                Some(Sent::Status) => {}
                None => debug!(pkid = ack.pkid, "PUBACK for no publish of this connection"),
            },
            _ => {}
        }
        Ok(())
    }

    /// Queues a batch's publish; false when the client refused it.
    fn publish_batch(&mut self, batch: Batch) -> bool {
        let queued = Instant::now();
        // The channel holds inflight + 8 requests and at most `inflight` batches are queued, so
        // a full channel cannot happen; if it did, the batch is simply fetched again.
        match self
            .client
            .try_publish(&self.events_topic, QoS::AtLeastOnce, false, batch.payload)
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

    fn publish_status(&mut self, state: &str) {
        let payload = status_payload(state, &self.gateway);
        match self
            .client
            .try_publish(&self.status_topic, QoS::AtLeastOnce, true, payload)
        {
            Ok(()) => self.book.queued_status(),
            Err(e) => warn!(error = %e, "could not queue the status message"),
        }
    }
}

/// `{"state":…,"gateway":…,"version":…,"since":…}` (docs/architecture.md §3).
fn status_payload(state: &str, gateway: &str) -> Vec<u8> {
    serde_json::json!({
        "state": state,
        "gateway": gateway,
        "version": env!("CARGO_PKG_VERSION"),
        "since": crate::event::format_time(SystemTime::now()),
    })
    .to_string()
    .into_bytes()
}

fn mqtt_options(
    m: &MqttConfig,
    broker: &BrokerAddr,
    u: &UplinkConfig,
    status_topic: &str,
    gateway: &str,
) -> Result<MqttOptions, String> {
    let mut o = connect_options(m, broker, &m.client_id)?;
    // The outbox is the session: a broker-side session would only replay what we resend anyway.
    o.set_clean_session(true);
    o.set_inflight((u.inflight + 2) as u16);
    // Outgoing: a batch, or one event larger than a batch (a long scanner line). Incoming:
    // nothing but acknowledgements (the downlink has its own connection).
    o.set_max_packet_size(64 * 1024, (u.batch_max_bytes * 2).max(4 * 1024 * 1024));
    o.set_last_will(LastWill::new(
        status_topic,
        status_payload("offline", gateway),
        QoS::AtLeastOnce,
        true,
    ));
    Ok(o)
}

/// Broker address, keepalive, credentials and TLS: what both of the store's connections (the
/// uplink's, the downlink's) share. An error says which file could not be read.
pub fn connect_options(
    m: &MqttConfig,
    broker: &BrokerAddr,
    client_id: &str,
) -> Result<MqttOptions, String> {
    let mut o = MqttOptions::new(client_id, &broker.host, broker.port);
    o.set_keep_alive(m.keepalive);
    if let Some(user) = &m.username {
        o.set_credentials(user, m.password.clone().unwrap_or_default());
    }
    if let Some(tls) = &m.tls {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let ca = read(&tls.ca)?;
        let client_auth = match (&tls.cert, &tls.key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        o.set_transport(rumqttc::Transport::tls(ca, client_auth, None));
    }
    Ok(o)
}
