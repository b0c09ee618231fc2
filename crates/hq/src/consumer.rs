//! The consumer: one MQTT 5 connection with a persistent session, subscribed to every store's
//! events through the share group, acknowledging each message only once the writer has
//! committed it.
//!
//! - **Shared subscription** `$share/{group}/phygate/v1/+/+/events`: the consumers of one group
//!   split the fleet's stream; the broker sends each message to one of them.
//! - **Persistent session**: clean start off and a session expiry, under a stable client id.
//!   While this consumer restarts (or is killed), the broker keeps its subscription and queues
//!   what arrives for it, and sends again what it delivered but never got a PUBACK for.
//! - **Manual acks** (`set_manual_acks`): rumqttc would otherwise PUBACK on receipt, before the
//!   events are stored. Each message goes to the writer with a receipt; PUBACKs go out in
//!   arrival order, each once its receipt is settled (the commit is durable). A receipt dropped
//!   unsettled (the commit failed) drops the connection, so the broker sends the message
//!   again. Receipts of a connection that ended are forgotten: a packet id of an old connection
//!   could name another message on the new one, and the broker redelivers the old one anyway.
//! - **Flow control**: `receive_maximum` caps the messages the broker sends before our
//!   PUBACKs; that bounds what waits here and in the writer's queue.
//!
//! So every event is stored at least once, and de-duplication by (gateway, id) makes it once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use phygate::backoff::ReconnectBackoff;
use phygate::settle::SettleQueue;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use crate::config::MqttConfig;
use crate::writer::Delivery;

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// After a refused subscription, the first wait before subscribing again; doubles up to
/// [`RESUBSCRIBE_MAX`] while the broker keeps refusing. A refusal may pass (an ACL fixed, a
/// cluster node ready again), and a broker keeps no subscription it refused.
const RESUBSCRIBE_MIN: Duration = Duration::from_secs(5);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(300);

pub struct Consumer {
    client: AsyncClient,
    eventloop: EventLoop,
    /// The group's share of every store's events, and of every store's status (for the `seq`
    /// report it carries: `crate::seq`'s holes at either end of what HQ received).
    filters: [String; 2],
    writer: flume::Sender<Delivery>,
    /// Messages of this connection not yet acknowledged, in arrival order.
    pending: SettleQueue<Publish>,
    /// Acknowledgements the request queue had no room for, oldest first: sent as the event
    /// loop drains the queue. Dropping one instead would leave its message unacknowledged on
    /// a live connection, and once `receive_maximum` of them pile up the broker sends no more.
    unsent_acks: VecDeque<Publish>,
    /// The gateway's reconnect backoff: jittered, and it starts over only after a connection
    /// that stayed up (a broker that accepts and drops at once is retried at the capped pace).
    backoff: ReconnectBackoff,
    /// When to subscribe again after a refusal, and the wait after the next one.
    resubscribe_at: Option<tokio::time::Instant>,
    resubscribe_wait: Duration,
    shutdown: watch::Receiver<bool>,
    /// Up from the CONNACK to the connection's end: the writer records its beat only then.
    connected: Arc<AtomicBool>,
}

impl Consumer {
    pub fn new(
        m: &MqttConfig,
        writer: flume::Sender<Delivery>,
        connected: Arc<AtomicBool>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Consumer> {
        let mut o = MqttOptions::new(&m.client_id, &m.host, m.port);
        o.set_keep_alive(m.keepalive);
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(m.session_expiry.as_secs() as u32));
        o.set_receive_maximum(Some(m.receive_maximum));
        o.set_max_packet_size(Some(m.max_packet_bytes));
        o.set_manual_acks(true);
        m.security.apply_v5(&mut o)?;
        // Requests: the PUBACKs, at most one per message in flight, and the subscription.
        let (client, eventloop) = AsyncClient::new(o, m.receive_maximum as usize + 8);
        Ok(Consumer {
            client,
            eventloop,
            filters: [
                phygate_proto::topic::shared_events(&m.group),
                phygate_proto::topic::shared_status(&m.group),
            ],
            writer,
            pending: SettleQueue::default(),
            unsent_acks: VecDeque::new(),
            backoff: ReconnectBackoff::new(BACKOFF_MIN, BACKOFF_MAX),
            resubscribe_at: None,
            resubscribe_wait: RESUBSCRIBE_MIN,
            shutdown,
            connected,
        })
    }

    pub async fn run(mut self) {
        loop {
            self.send_unsent_acks();
            let resubscribe = self.resubscribe_at;
            tokio::select! {
                // Cancel-safe: rumqttc keeps partial reads in the event loop's buffers.
                ev = self.eventloop.poll() => match ev {
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
                        Err(_) => {
                            warn!(topic = ?publish.topic, "batch not committed; reconnecting so the broker sends it again");
                            self.eventloop.clean();
                            if self.back_off("a batch was not committed").await {
                                break;
                            }
                        }
                    }
                }
                _ = sleep_until(resubscribe), if resubscribe.is_some() => {
                    self.resubscribe_at = None;
                    info!("subscribing again after the broker's refusal");
                    self.subscribe();
                }
                _ = self.shutdown.changed() => break,
            }
        }
        self.shut_down().await;
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Packet::ConnAck(c)) => {
                info!(session_present = c.session_present, filter = %self.filters[0], "connected to the broker");
                self.backoff.connected();
                self.connected.store(true, Ordering::Relaxed);
                self.pending.clear();
                self.unsent_acks.clear();
                // Every connection subscribes, a resumed session too: mosquitto 2.0.11 keeps
                // the session over its restart but not its shared subscription (the fleet
                // benchmark's broker restart: session_present=true, then no message). The same
                // filter again replaces the subscription (MQTT 5 §3.8.4), so it is harmless.
                self.subscribe();
            }
            Event::Incoming(Packet::SubAck(s))
                if s.return_codes
                    .iter()
                    .any(|c| !matches!(c, SubscribeReasonCode::Success(_))) =>
            {
                let wait = self.resubscribe_wait;
                // 0x9E: the broker has no shared subscriptions; 0x87: an ACL.
                warn!(
                    reasons = ?s.return_codes,
                    retry_in = ?wait,
                    "the broker refused HQ's subscription: nothing is consumed on it until it \
                     is granted (NotAuthorized: the ACL; SharedSubscriptionsNotSupported: this \
                     broker cannot share the stream between consumers)"
                );
                self.resubscribe_at = Some(tokio::time::Instant::now() + wait);
                self.resubscribe_wait = (wait * 2).min(RESUBSCRIBE_MAX);
            }
            Event::Incoming(Packet::SubAck(s)) => {
                self.resubscribe_wait = RESUBSCRIBE_MIN;
                info!(reasons = ?s.return_codes, "subscribed");
            }
            Event::Incoming(Packet::Publish(p)) => {
                let (done, settled) = oneshot::channel();
                let delivery = Delivery {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload.to_vec(),
                    done,
                };
                self.pending.push(p, settled);
                // The writer's queue holds `receive_maximum` messages and more; waiting here
                // when it is full holds the MQTT loop briefly, which beats dropping a message.
                // A closed queue (shutdown) drops the receipt: the message comes again next start.
                let _ = self.writer.send_async(delivery).await;
            }
            Event::Incoming(Packet::Disconnect(d)) => {
                warn!(reason = ?d.reason_code, "the broker disconnected us");
            }
            _ => {}
        }
    }

    fn subscribe(&self) {
        for filter in &self.filters {
            if let Err(e) = self.client.try_subscribe(filter, QoS::AtLeastOnce) {
                warn!(error = %e, %filter, "could not subscribe");
            }
        }
    }

    /// Queues the PUBACK, in order behind any the request queue had no room for. The queue
    /// is sized for one acknowledgement per message in flight, but the event loop drains it
    /// only between the incoming packets it hands out, so a burst of commits can outrun it
    /// (seen at 10,000 messages/s in the fleet benchmark).
    fn ack(&mut self, publish: &Publish) {
        self.unsent_acks.push_back(publish.clone());
        self.send_unsent_acks();
    }

    fn send_unsent_acks(&mut self) {
        while let Some(publish) = self.unsent_acks.front() {
            if self.client.try_ack(publish).is_err() {
                // Full (the event loop sends them as it goes) or closed (the connection
                // ends, and with it these receipts).
                return;
            }
            self.unsent_acks.pop_front();
        }
    }

    /// Forgets this connection's receipts and waits (capped, jittered) before the next
    /// attempt; true on shutdown.
    async fn back_off(&mut self, error: impl std::fmt::Display) -> bool {
        self.connected.store(false, Ordering::Relaxed);
        self.pending.clear();
        self.unsent_acks.clear();
        // In [d/2, d]: a fleet of consumers does not come back in step.
        let d = self.backoff.next_delay();
        warn!(error = %error, retry_in = ?d, "broker connection down");
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = self.shutdown.changed() => true,
        }
    }

    /// Acknowledges what was committed by now, then disconnects; the broker keeps the session
    /// and sends the rest again at the next start.
    async fn shut_down(&mut self) {
        self.connected.store(false, Ordering::Relaxed);
        for publish in self.pending.take_settled() {
            self.ack(&publish);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        let mut disconnecting = false;
        loop {
            // The acknowledgements first: DISCONNECT goes out behind the last of them.
            self.send_unsent_acks();
            if !disconnecting && self.unsent_acks.is_empty() {
                let _ = self.client.try_disconnect();
                disconnecting = true;
            }
            match tokio::time::timeout_at(deadline, self.eventloop.poll()).await {
                Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
        debug!("consumer stopped");
    }
}

/// Sleeps until `at`; never for None (the select's guard leaves it unpolled then).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
