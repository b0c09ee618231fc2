//! One short MQTT 3.1.1 session for a fleet control: publish at QoS 1 and wait for the broker's
//! PUBACK, subscribe and read what comes back. A clean session on purpose: a control runs, says
//! what happened and exits; it has nothing to resume. No reconnect either: a dropped connection
//! is an error the engineer sees, and every control is safe to run again.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS};
use tokio::time::Instant;

pub use crate::mqtt_security::Security;
use crate::sink::config::Secret;

/// How long the broker gets to accept the connection, a subscription or a publish.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// Publishes awaiting their PUBACK at once in [`Link::publish_all`]: under the client's
/// request queue (64) and in-flight window (100), so queueing them never waits.
pub const PUBLISH_WINDOW: usize = 32;

pub struct Link {
    client: AsyncClient,
    events: EventLoop,
    /// Messages that arrived while we waited for something else (a PUBACK, a SUBACK).
    inbox: VecDeque<Publish>,
}

/// `host:port`, the port defaulting to 1883.
pub fn split_broker(broker: &str) -> anyhow::Result<(String, u16)> {
    match broker.rsplit_once(':') {
        Some((host, port)) => Ok((
            host.to_owned(),
            port.parse()
                .with_context(|| format!("--broker {broker:?}: the port is not a number"))?,
        )),
        None => Ok((broker.to_owned(), 1883)),
    }
}

impl Link {
    /// Connects to the control target's broker and waits for the CONNACK.
    pub async fn to(target: &super::Target) -> anyhow::Result<Link> {
        let security = Security {
            ca: target.ca.clone(),
            client: target.cert.clone().zip(target.key.clone()),
            username: target.username.clone(),
            // From the environment: a secret on the command line would be in every `ps`
            // listing and shell history.
            password: target
                .username
                .as_ref()
                .and_then(|_| std::env::var("PHYGATE_HQ_MQTT_PASSWORD").ok())
                .map(Secret),
        };
        Link::connect(&target.broker, &security).await
    }

    /// Connects and waits for the CONNACK.
    pub async fn connect(broker: &str, security: &Security) -> anyhow::Result<Link> {
        let (host, port) = split_broker(broker)?;
        let id = format!("phygate-hq-ctl-{:016x}", fastrand::u64(..));
        let mut options = MqttOptions::new(id, host, port);
        options.set_keep_alive(Duration::from_secs(30));
        security.apply(&mut options)?;
        // A member snapshot may be as large as the edge accepts; the event batches we read
        // back are far smaller than the edge's own packet limit.
        let max = phygate_proto::downlink::MAX_MEMBERS_BYTES + 4096;
        options.set_max_packet_size(max, max);
        let (client, events) = AsyncClient::new(options, 64);
        let mut link = Link {
            client,
            events,
            inbox: VecDeque::new(),
        };
        link.until(BROKER_TIMEOUT, "the broker's CONNACK", |e| {
            matches!(e, Event::Incoming(Packet::ConnAck(_)))
        })
        .await
        .with_context(|| format!("connecting to the broker {broker}"))?;
        Ok(link)
    }

    /// Publishes at QoS 1 and returns once the broker acknowledged it (PUBACK): from then on the
    /// broker holds it (and, retained, gives it to every later subscriber).
    pub async fn publish(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> anyhow::Result<()> {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await?;
        let mut pkid = None;
        self.until(BROKER_TIMEOUT, "the broker's PUBACK", |e| match e {
            Event::Outgoing(Outgoing::Publish(id)) => {
                pkid = Some(*id);
                false
            }
            Event::Incoming(Packet::PubAck(ack)) => Some(ack.pkid) == pkid,
            _ => false,
        })
        .await
        .with_context(|| format!("publishing to {topic}"))
    }

    /// Publishes each `(topic, payload)` at QoS 1, [`PUBLISH_WINDOW`] of them awaiting their
    /// PUBACK at once, and returns once the broker acknowledged them all. One at a time, a
    /// fleet's worth of commands waits a round trip each: nats-server acknowledges a QoS 1
    /// publish to subscribed MQTT sessions once JetStream stored it, ~20 ms here, so a replay
    /// request to each of 1,000 stores took 20 s (the fleet benchmark's node kill), and a
    /// `config push --all` to 1,000 stores on mosquitto 37.7 s.
    pub async fn publish_all(
        &mut self,
        messages: &[(&str, &[u8])],
        retain: bool,
    ) -> anyhow::Result<()> {
        for window in messages.chunks(PUBLISH_WINDOW) {
            for (topic, payload) in window {
                self.client
                    .publish(*topic, QoS::AtLeastOnce, retain, payload.to_vec())
                    .await?;
            }
            let mut sent = std::collections::HashSet::new();
            let mut acked = 0;
            self.until(BROKER_TIMEOUT, "the broker's PUBACKs", |e| {
                match e {
                    Event::Outgoing(Outgoing::Publish(id)) => {
                        sent.insert(*id);
                    }
                    Event::Incoming(Packet::PubAck(ack)) if sent.remove(&ack.pkid) => acked += 1,
                    _ => {}
                }
                acked == window.len()
            })
            .await?;
        }
        Ok(())
    }

    /// Subscribes at QoS 1 and returns once the broker granted it (SUBACK).
    pub async fn subscribe(&mut self, filter: &str) -> anyhow::Result<()> {
        self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        let mut refused = false;
        self.until(BROKER_TIMEOUT, "the broker's SUBACK", |e| match e {
            Event::Incoming(Packet::SubAck(ack)) => {
                refused = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                true
            }
            _ => false,
        })
        .await?;
        if refused {
            bail!("the broker refused the subscription to {filter} (its ACL?)");
        }
        Ok(())
    }

    /// The next message on a subscription, or `None` once `timeout` passed without one.
    pub async fn next_message(&mut self, timeout: Duration) -> anyhow::Result<Option<Publish>> {
        if let Some(p) = self.inbox.pop_front() {
            return Ok(Some(p));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.poll()).await {
                Err(_) => return Ok(None),
                Ok(Err(e)) => return Err(anyhow!("connection to the broker lost: {e}")),
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => return Ok(Some(p)),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The retained messages on `filter`: what the broker sends right after the SUBACK, until
    /// it has been quiet for `quiet`.
    pub async fn retained(
        &mut self,
        filter: &str,
        quiet: Duration,
    ) -> anyhow::Result<Vec<Publish>> {
        self.subscribe(filter).await?;
        let mut out = Vec::new();
        while let Some(p) = self.next_message(quiet).await? {
            if p.retain {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// Says goodbye so the broker does not wait for the keepalive.
    pub async fn close(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.events.poll()).await;
    }

    /// Polls until `done` says so; messages that arrive meanwhile are kept for `next_message`.
    async fn until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&Event) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = match tokio::time::timeout(left, self.events.poll()).await {
                Err(_) => {
                    bail!("no answer from the broker within {timeout:?} (waiting for {what})")
                }
                Ok(Err(e)) => bail!("{e} (waiting for {what})"),
                Ok(Ok(event)) => event,
            };
            if done(&event) {
                return Ok(());
            }
            if let Event::Incoming(Packet::Publish(p)) = event {
                self.inbox.push_back(p);
            }
        }
    }
}
