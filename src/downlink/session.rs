//! The downlink's own MQTT connection: HQ → store messages are acknowledged to the broker only
//! once what they change is committed, and none is lost while the store is offline.
//!
//! Why a second client instead of subscribing on the uplink's:
//!
//! - The downlink needs a persistent session (a stable client id, and 3.1.1's
//!   `clean_session = false` or MQTT 5's clean start off with a session expiry interval,
//!   `[mqtt] session_expiry`): the broker then keeps the subscriptions while the store is
//!   offline, queues the QoS 1 messages sent meanwhile (a member delta, a command), and sends
//!   again any message it delivered but never got a PUBACK for (the daemon was killed before
//!   committing it). On MQTT 5 the session ends `session_expiry` after the store disconnects;
//!   without the interval it would end at once and nothing sent meanwhile would arrive.
//! - The uplink wants the opposite. Its durable copy is the outbox, and it republishes from the
//!   oldest un-acked row after every CONNACK; with a persistent session rumqttc would also replay
//!   its own pending queue (`eventloop.rs`, the `session_present` branch), doubling every resend,
//!   and a fresh session per connection is what lets it map PUBACKs to rows by queue order.
//! - One event loop per direction also keeps a slow apply (a 16 MiB member snapshot committing)
//!   from holding the uplink's PUBACKs, and vice versa.
//!
//! Acknowledgements are manual (`set_manual_acks`): rumqttc would otherwise PUBACK a message on
//! receipt. Each message goes on with a [`Receipt`]; PUBACKs go out in the order the messages
//! came (MQTT 3.1.1 §4.6.0), each when its receipt is settled. A receipt dropped unsettled (the
//! commit failed) drops the connection: the broker redelivers the message on the resumed
//! session, and until then it would hold the broker's in-flight window. Receipts of a connection
//! that ended are forgotten: a PUBACK for a packet id of an old connection could acknowledge a
//! different message on the new one, and the broker redelivers the old one anyway.
//!
//! So the guarantee is at-least-once delivery into a committed transaction; every apply is
//! idempotent (a command id runs once, a member update carries its version, keys and config
//! replace whole), which makes the effect exactly once. The session lives on the broker: a
//! message published before the store's very first connection, or after the broker dropped
//! the session (its expiry, a broker without persistence restarted), reaches it only if
//! retained.
//!
//! Test hook: in debug builds only, `PHYGATE_TEST_DOWNLINK_PAUSE_MS=N` makes every received
//! message wait N ms before it is handed on (logged as "test pause before applying a downlink
//! message"), so a test can `kill -9` the daemon between receipt and commit. Release builds
//! never read the variable.

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::settings::DownlinkSettings;
use super::{Delivery, Receipt, Update};
use crate::backoff::ReconnectBackoff;
use crate::mqtt::{LinkEvent, Received, Session, SessionOptions};
use crate::settle::SettleQueue;
use crate::shutdown::Shutdown;
use crate::uplink::settings::MqttConfig;

/// Requests the client may queue: acknowledgements, at most one per message in flight.
const REQUESTS: usize = 256;
/// After a refused subscription, the first wait before subscribing again; it doubles with each
/// refusal up to [`RESUBSCRIBE_MAX`]. A refusal is not always for good: a clustered broker
/// refuses while the stream behind its MQTT sessions elects a leader (nats-server logs
/// "Unable to add JetStream consumer for subscription … timeout"), and an ACL may be fixed.
/// The broker keeps no subscription it refused, so without a retry the store would never get
/// HQ's keys, members, config or commands until its session was lost.
const RESUBSCRIBE_MIN: Duration = Duration::from_secs(5);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(300);
/// Debug builds only: sleep this many milliseconds after receiving a downlink message and before
/// handing it on, so a test can `kill -9` the daemon between receipt and commit.
pub const TEST_PAUSE_ENV: &str = "PHYGATE_TEST_DOWNLINK_PAUSE_MS";

#[derive(Debug, thiserror::Error)]
pub enum DownlinkError {
    /// The MQTT settings cannot work (e.g. unreadable TLS files): fix the config.
    #[error("MQTT settings: {0}")]
    Settings(String),
}

pub struct Downlink {
    session: Session,
    tenant: String,
    store: String,
    /// Keys, members and commands: the link applies them.
    link: mpsc::Sender<Delivery>,
    /// Config documents: the config applier (`daemon::reload`) takes them.
    config: mpsc::Sender<Delivery<String>>,
    /// Messages of this connection not yet acknowledged, in arrival order.
    pending: SettleQueue<Received>,
    backoff: ReconnectBackoff,
    /// When to subscribe again after a refusal, and the wait after the next one.
    resubscribe_at: Option<tokio::time::Instant>,
    resubscribe_wait: Duration,
    shutdown: Shutdown,
    pause: Option<Duration>,
}

impl Downlink {
    pub fn new(
        settings: DownlinkSettings,
        link: mpsc::Sender<Delivery>,
        config_updates: mpsc::Sender<Delivery<String>>,
        shutdown: Shutdown,
    ) -> Result<Self, DownlinkError> {
        let options = SessionOptions {
            client_id: client_id(&settings.mqtt),
            persistent: true,
            manual_acks: true,
            // It publishes nothing: acknowledgements are not publishes.
            inflight: 8,
            // Incoming: a member snapshot is the largest document; outgoing: only small packets.
            max_incoming: super::MAX_MEMBERS_BYTES + 1024,
            max_outgoing: 64 * 1024,
            will: None,
            requests: REQUESTS,
        };
        let session = Session::new(&settings.mqtt, &options).map_err(DownlinkError::Settings)?;
        Ok(Downlink {
            session,
            tenant: settings.tenant,
            store: settings.store,
            link,
            config: config_updates,
            pending: SettleQueue::default(),
            backoff: ReconnectBackoff::new(settings.backoff_min, settings.backoff_max),
            resubscribe_at: None,
            resubscribe_wait: RESUBSCRIBE_MIN,
            shutdown,
            pause: test_pause(),
        })
    }

    pub async fn run(mut self) -> Result<(), DownlinkError> {
        loop {
            let resubscribe = self.resubscribe_at;
            tokio::select! {
                // Cancel-safe: rumqttc keeps partial reads in the event loop's buffers.
                ev = self.session.poll() => match ev {
                    Ok(ev) => self.on_event(ev).await,
                    Err(e) => {
                        if self.back_off(e).await {
                            break;
                        }
                    }
                },
                // Cancel-safe: the receiver is polled by reference and stays at the front.
                (publish, settled) = self.pending.next(), if !self.pending.is_empty() => {
                    match settled {
                        Ok(()) => self.ack(&publish),
                        Err(_) if self.link.is_closed() || self.config.is_closed() => {
                            debug!(topic = %publish.topic(), "downlink message left for the next start");
                        }
                        Err(_) => {
                            warn!(
                                topic = %publish.topic(),
                                "downlink message not applied; reconnecting so the broker sends it again"
                            );
                            self.session.clean();
                            if self.back_off("a downlink message was not applied").await {
                                break;
                            }
                        }
                    }
                }
                _ = sleep_until(resubscribe), if resubscribe.is_some() => {
                    self.resubscribe_at = None;
                    info!("subscribing again to the downlink topics the broker refused");
                    self.subscribe();
                }
                _ = self.shutdown.stopped() => break,
            }
        }
        self.shut_down().await;
        Ok(())
    }

    async fn on_event(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Connected {
                session_present, ..
            } => {
                info!(session_present, "downlink connected to HQ");
                self.backoff.connected();
                self.pending.clear();
                // The broker keeps the subscriptions with the session; a new session (the first
                // start, the broker lost it, or it expired) subscribes, and the retained keys
                // and config then come again (applying them is idempotent).
                // A refusal pending a retry: the resumed session does not hold that
                // subscription either, and the retry comes at its time.
                if !session_present {
                    self.subscribe();
                }
            }
            LinkEvent::SubscribeRefused(codes) => {
                let wait = self.resubscribe_wait;
                warn!(
                    codes,
                    retry_in = ?wait,
                    "the broker refused a downlink subscription (an ACL, or a clustered broker \
                     not ready); HQ's messages on it do not arrive until it is granted"
                );
                self.resubscribe_at = Some(tokio::time::Instant::now() + wait);
                self.resubscribe_wait = (wait * 2).min(RESUBSCRIBE_MAX);
            }
            LinkEvent::Subscribed => self.resubscribe_wait = RESUBSCRIBE_MIN,
            LinkEvent::Message(p) => self.receive(p).await,
            _ => {}
        }
    }

    /// Subscribes to every downlink topic (the same filter again only replaces a subscription
    /// the broker holds, MQTT 3.1.1 §3.8.4).
    fn subscribe(&mut self) {
        let topics = super::topics(&self.tenant, &self.store);
        if let Err(e) = self.session.try_subscribe_many(topics) {
            warn!(error = %e, "could not subscribe to the downlink topics");
        }
    }

    /// Checks a message and hands it on; a refused one is settled at once (a redelivery would
    /// be refused again).
    async fn receive(&mut self, publish: Received) {
        if let Some(pause) = self.pause {
            info!(topic = %publish.topic(), ms = pause.as_millis() as u64, "test pause before applying a downlink message");
            tokio::time::sleep(pause).await;
        }
        let (receipt, settled) = Receipt::new();
        self.pending.push(publish, settled);
        let publish = self.pending.last().expect("just pushed");
        let (topic, payload) = (publish.topic(), publish.payload().to_vec());
        // The appliers are quick; waiting here briefly holds the MQTT loop, which is better than
        // dropping a message. A closed queue (shutdown) drops the receipt: redelivered next start.
        let handed = match super::parse(&self.tenant, &self.store, &topic, &payload) {
            Ok(Update::Config(text)) => self
                .config
                .send(Delivery {
                    update: text,
                    receipt,
                })
                .await
                .is_ok(),
            Ok(update) => self.link.send(Delivery { update, receipt }).await.is_ok(),
            Err(e) => {
                crate::metrics::DOWNLINK_REFUSED.inc();
                warn!(
                    topic,
                    bytes = payload.len(),
                    "downlink message refused: {e}"
                );
                receipt.settle();
                true
            }
        };
        if !handed {
            debug!(
                topic,
                "downlink message after its applier stopped; left for the next start"
            );
        }
    }

    fn ack(&mut self, publish: &Received) {
        // The request queue holds one acknowledgement per message in flight at most; if it
        // were full the message would simply come again on the next connection.
        if let Err(e) = self.session.try_ack(publish) {
            warn!(error = %e, topic = %publish.topic(), "could not queue a downlink acknowledgement");
        }
    }

    /// Forgets this connection's receipts and waits before the next attempt; true on shutdown.
    async fn back_off(&mut self, error: impl std::fmt::Display) -> bool {
        self.pending.clear();
        let delay = self.backoff.next_delay();
        let next = self.session.next_broker();
        debug!(error = %error, retry_in = ?delay, next_broker = ?next, "downlink connection down");
        tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = self.shutdown.stopped() => true,
        }
    }

    /// Acknowledges what was settled by now, then disconnects; the rest comes again next start.
    async fn shut_down(&mut self) {
        for publish in self.pending.take_settled() {
            self.ack(&publish);
        }
        let _ = self.session.try_disconnect();
        // Sends the acknowledgements and the DISCONNECT; the broker keeps the session either way
        // (on MQTT 5 for `session_expiry`: a normal DISCONNECT does not change the interval).
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Ok(ev)) = tokio::time::timeout_at(deadline, self.session.poll()).await {
            if matches!(ev, LinkEvent::DisconnectSent) {
                break;
            }
        }
    }
}

/// The downlink session's client id: stable (the broker finds the session by it) and not the
/// uplink's (a second connection with one id would take the first one over).
/// Sleeps until `at`; never for None (the select's guard leaves it unpolled then).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub fn client_id(mqtt: &MqttConfig) -> String {
    format!("{}-downlink", mqtt.client_id)
}

/// The test pause (see [`TEST_PAUSE_ENV`]); release builds never read it.
fn test_pause() -> Option<Duration> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let ms: u64 = std::env::var(TEST_PAUSE_ENV).ok()?.parse().ok()?;
    warn!(
        ms,
        "{TEST_PAUSE_ENV} is set: every downlink message waits before it is applied (test hook)"
    );
    Some(Duration::from_millis(ms))
}
