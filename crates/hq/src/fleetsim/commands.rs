//! The simulated stores' answers to HQ's `replay` commands (`phygate::replay`): one MQTT
//! session for the whole fleet subscribes to every store's commands topic, and each replay is
//! run by its store's own replayer (its outbox, its uplink) and answered with the store's
//! `store.command.result`, as a real store's link does. One connection instead of a downlink
//! per store: the sim measures the event path, and 1,000 more sessions would measure the
//! broker's connection handling instead. Only `replay` is answered; the sim has no gates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use phygate::downlink::{Action, Update};
use phygate::outbox::OutboxHandle;
use phygate::replay::Replayer;
use phygate::shutdown::Shutdown;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use tracing::{info, warn};

use super::sim::TENANT;

/// Pause after a lost connection before polling again (rumqttc then reconnects).
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);
/// Pause after a refused subscription before subscribing again.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(2);

/// A store's replayer and outbox, by store id.
pub type Answerers = HashMap<String, (Replayer, OutboxHandle)>;

/// Answers replay commands until `stop`; each result appended counts in `appended`.
pub async fn answer(
    broker: (String, u16),
    stores: Answerers,
    appended: Arc<AtomicU64>,
    stop: Shutdown,
) {
    let mut o = MqttOptions::new("fleet-sim-commands", broker.0, broker.1);
    // Persistent: a command published while the broker restarts waits in the session.
    o.set_clean_session(false);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(o, 64);
    let filter = format!("{}/{TENANT}/+/commands", phygate_proto::topic::ROOT);
    // When to subscribe again after the broker refused: a clustered broker refuses while the
    // stream behind its MQTT sessions elects a leader (nats-server: "Unable to add JetStream
    // consumer for subscription … timeout"), and it keeps no subscription it refused.
    let mut resubscribe: Option<tokio::time::Instant> = None;
    loop {
        let due = resubscribe;
        let ev = tokio::select! {
            ev = events.poll() => ev,
            _ = sleep_until(due), if due.is_some() => {
                resubscribe = None;
                subscribe(&client, &filter);
                continue;
            }
            _ = stop.stopped() => break,
        };
        match ev {
            // Every connection subscribes, a resumed session too (the same filter again only
            // replaces the subscription): a cluster node may have lost it with its leader.
            Ok(Event::Incoming(Packet::ConnAck(_))) => subscribe(&client, &filter),
            Ok(Event::Incoming(Packet::SubAck(s)))
                if s.return_codes.contains(&SubscribeReasonCode::Failure) =>
            {
                warn!("the broker refused the stores' commands subscription; subscribing again in 2 s");
                resubscribe = Some(tokio::time::Instant::now() + RESUBSCRIBE_AFTER);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let store = p.topic.split('/').nth(3).unwrap_or_default().to_owned();
                let Some((replayer, outbox)) = stores.get(&store).cloned() else {
                    continue;
                };
                let appended = appended.clone();
                tokio::spawn(async move {
                    if run(store, p.topic, p.payload.to_vec(), replayer, outbox).await {
                        appended.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "fleet commands connection lost; reconnecting");
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
}

fn subscribe(client: &AsyncClient, filter: &str) {
    if let Err(e) = client.try_subscribe(filter, QoS::AtLeastOnce) {
        warn!(error = %e, "cannot subscribe to the stores' commands");
    }
}

/// Sleeps until `at` (never returns for None; the select's guard keeps it unpolled then).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Checks one command as the store's downlink does and runs it if it is a replay; true when
/// its result was appended.
async fn run(
    store: String,
    topic: String,
    payload: Vec<u8>,
    r: Replayer,
    outbox: OutboxHandle,
) -> bool {
    let c = match phygate::downlink::parse(TENANT, &store, &topic, &payload) {
        Ok(Update::Command(c)) => c,
        Ok(_) => return false,
        Err(e) => {
            warn!(store = %store, error = %e, "command refused");
            return false;
        }
    };
    let Action::Replay { from, to } = c.action else {
        return false;
    };
    match r.replay(from, to).await {
        Ok(o) => {
            info!(store = %store, from, to, republished = o.republished, missing = ?o.missing, "replay");
            let event = phygate::replay::result_event("gw1", &c.id, o);
            match outbox.append(event).await {
                Ok(_) => true,
                Err(e) => {
                    warn!(store = %store, error = %e, "replay result not stored");
                    false
                }
            }
        }
        Err(e) => {
            warn!(store = %store, error = %e, "replay failed");
            false
        }
    }
}
