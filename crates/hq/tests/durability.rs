//! What a PUBACK means, on each broker the fleet may run: the gateway deletes a row from its
//! outbox on PUBACK, so the broker's copy is all that is left of the event from then on
//! (docs/fleet.md, "The durability boundary"). These are the experiments behind that page.
//!
//! - mosquitto: the PUBACK says the message is in the broker's memory, queued for the
//!   sessions that want it. It reaches the disk at the next autosave (or a clean shutdown);
//!   a SIGKILL before then loses it.
//! - nats-server's MQTT (2.9): the PUBACK says the message was published on its NATS subject,
//!   not that a JetStream stream capturing that subject stored it: a stream that refuses the
//!   message (full) does not hold the PUBACK back.

use std::time::Duration;

use phygate::sim::broker::Mosquitto;
use phygate::sim::nats::NatsCluster;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const TOPIC: &str = "phygate/v1/acme/s1/events";

/// Publishes `n` QoS 1 messages to `TOPIC` on `port` and returns once every PUBACK arrived.
async fn publish_acked(port: u16, client_id: &str, n: usize) {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(o, n + 8);
    for i in 0..n {
        client
            .try_publish(TOPIC, QoS::AtLeastOnce, false, format!("m{i}"))
            .unwrap();
    }
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!("publishing: {other:?}"),
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
}

/// A persistent QoS 1 session on `TOPIC`: subscribes (if the broker has no session for it)
/// and counts what it receives within `window`.
async fn session_receives(port: u16, window: Duration) -> usize {
    let mut o = MqttOptions::new("durability-probe", "127.0.0.1", port);
    o.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(o, 16);
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(ev) = tokio::time::timeout_at(deadline, eventloop.poll()).await {
        match ev.unwrap() {
            Event::Incoming(Packet::ConnAck(c)) if !c.session_present => {
                client.try_subscribe(TOPIC, QoS::AtLeastOnce).unwrap();
            }
            Event::Incoming(Packet::Publish(_)) => received += 1,
            _ => {}
        }
    }
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    received
}

/// Returns what a persistent session finds after 100 PUBACKed messages and a broker stop
/// (`hard`: SIGKILL), on a mosquitto that saves to disk only every `autosave_interval` s.
async fn mosquitto_after_stop(dir: &std::path::Path, hard: bool) -> usize {
    // The broker's own defaults for how often it saves (an hour here, 30 min by default).
    let mut broker =
        Mosquitto::start_with(dir, "allow_anonymous true\nautosave_interval 3600\n").unwrap();
    // The session exists and is saved (a clean restart) before the messages arrive.
    assert_eq!(
        session_receives(broker.port, Duration::from_millis(300)).await,
        0
    );
    broker.stop(false);
    broker.restart().unwrap();
    publish_acked(broker.port, "durability-pub", 100).await;
    broker.stop(hard);
    broker.restart().unwrap();
    session_receives(broker.port, Duration::from_secs(2)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mosquitto_puback_is_memory_until_the_next_save() {
    let dir = tempfile::tempdir().unwrap();
    let kept = mosquitto_after_stop(&dir.path().join("term"), false).await;
    println!("mosquitto: pubacked=100 stop=SIGTERM kept={kept}");
    assert_eq!(kept, 100, "a clean stop saves the queued messages");
    let kept = mosquitto_after_stop(&dir.path().join("kill"), true).await;
    println!("mosquitto: pubacked=100 stop=SIGKILL kept={kept}");
    assert_eq!(
        kept, 0,
        "SIGKILL before the autosave: every PUBACKed message is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_mqtt_puback_does_not_wait_for_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let nats = match NatsCluster::start(&dir.path().join("nats")) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var("CI").is_err() => {
            eprintln!("skipped: {e}");
            return;
        }
        Err(e) => panic!("NATS cluster: {e}"),
    };
    let client = async_nats::connect(nats.client_urls()[0].as_str())
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    // A replicated stream capturing the events subjects, which takes one message and refuses
    // the rest (discard new): a store that says no.
    let mut stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "PROBE".into(),
            subjects: vec![phygate_proto::topic::ALL_EVENTS_SUBJECT.into()],
            num_replicas: 3,
            max_messages: 1,
            discard: async_nats::jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .unwrap();
    publish_acked(nats.nodes[0].mqtt_port, "durability-pub", 5).await;
    // The stream stores asynchronously: give it time, so a short count is not a late one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = stream.info().await.unwrap().state.messages;
    println!("nats-server MQTT: pubacked=5 stored_in_stream={stored}");
    assert!(
        stored <= 1,
        "5 PUBACKs, {stored} stored: the PUBACK did not wait for the stream"
    );
}
