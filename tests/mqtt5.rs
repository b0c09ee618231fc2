//! What MQTT 5 adds on the edge, on a real mosquitto: a broker's refusal of the events (an ACL
//! denial, PUBACK 0x87) is shown with its reason and deletes nothing; the batch says its media
//! type; the retained status and the Last Will work as on 3.1.1. The uplink and downlink tests
//! that hold on both versions run on both (`on_both_protocols!` in spine.rs, downlink.rs,
//! tls.rs).

mod common;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn status_topic() -> String {
    format!("phygate/v1/{TENANT}/{STORE}/status")
}

/// An ACL that lets the (anonymous) store do everything but touch its events topic (mosquitto
/// stops at the first matching line, so the denial comes first), and HQ (user `hq`) read all.
fn acl_denying_events(dir: &Path) -> std::path::PathBuf {
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        format!(
            "topic deny {}\ntopic readwrite #\nuser hq\ntopic read #\n",
            events_topic()
        ),
    )
    .unwrap();
    acl
}

/// The broker's settings with `acl`. And a bounded client queue, as mosquitto's default has:
/// mosquitto 2.0 checks it after a refused publish and, with the rig's `max_queued_messages 0`
/// (no limit everywhere else), reads it as over quota and drops the connection after each
/// refusal.
fn denying_broker(acl: &Path) -> String {
    format!(
        "allow_anonymous true\nacl_file {}\nmax_queued_messages 1000\n",
        acl.display()
    )
}

fn status_json(rig: &Rig) -> Value {
    let (code, body) = get(rig.status_port, "/status.json");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The ids of the scanned codes' events still in the outbox.
fn scanned_in_outbox(rig: &Rig) -> usize {
    let conn = rusqlite::Connection::open(rig.db_path()).unwrap();
    conn.query_row(
        "SELECT count(*) FROM outbox WHERE body LIKE '%store.qr.scanned%' AND seq > \
         (SELECT coalesce((SELECT value FROM meta WHERE key = 'acked'), 0))",
        [],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as usize
}

#[test]
fn an_acl_denial_of_the_events_is_shown_with_its_reason_code_and_nothing_leaves_the_outbox() {
    let files = tempfile::tempdir().unwrap();
    let acl = acl_denying_events(files.path());
    let mut rig = Rig::with_broker_on(&denying_broker(&acl), Mqtt::V5);
    rig.write_config("\n[uplink]\nbackoff_min = \"100ms\"\nbackoff_max = \"500ms\"\n");
    let hq = Hq::connect_as(rig.broker.port, "acl", Some(("hq", "any")));
    let (_pty, mut scanner) = rig.scanner();
    let gw = rig.start_gateway();
    for i in 0..5 {
        scanner.scan(&format!("DENIED-{i}")).unwrap();
    }
    // Refused, kept, and tried again (more than once: the backoff does not give up).
    eventually(LONG, "the refusal retried", || {
        gw.log()
            .matches("HQ's broker refused a batch; its events stay in the outbox")
            .count()
            >= 3
    });
    let log = gw.log();
    assert!(log.contains("NotAuthorized (0x87)"), "{log}");
    assert_eq!(scanned_in_outbox(&rig), 5, "nothing deleted on a refusal");

    // The page's link and outbox facts come from the health monitor's round: wait for one.
    eventually(LONG, "the page to show the refusal", || {
        let s = status_json(&rig);
        s["hq"]["connected"] == true
            && s["hq"]["refused"] == "NotAuthorized (0x87)"
            && s["outbox"]["depth"].as_u64() >= Some(5)
    });
    let s = status_json(&rig);
    assert_eq!(s["verdict"]["level"], "degraded", "{s}");
    assert!(
        s["verdict"]["reasons"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("HQ's broker refuses the events: NotAuthorized (0x87)"),
        "{s}"
    );
    let (_, page) = get(rig.status_port, "/");
    assert!(
        page.contains("The broker refuses the events") && page.contains("NotAuthorized (0x87)"),
        "{page}"
    );
    assert!(hq.scanned_payloads().is_empty());

    // The ACL is lifted: everything kept arrives, once each, in order, and the page clears.
    std::fs::write(&acl, "topic readwrite #\nuser hq\ntopic read #\n").unwrap();
    rig.broker.stop(false);
    rig.broker.restart().unwrap();
    hq.wait_for(LONG, "the kept codes", |h| h.scanned_payloads().len() >= 5);
    assert_eq!(
        hq.scanned_payloads(),
        (0..5).map(|i| format!("DENIED-{i}")).collect::<Vec<_>>()
    );
    eventually(LONG, "the outbox drained", || scanned_in_outbox(&rig) == 0);
    eventually(LONG, "the refusal cleared", || {
        status_json(&rig)["hq"]["refused"].is_null()
    });
}

#[test]
fn regression_on_3_1_1_the_same_denial_is_acknowledged_and_the_events_are_gone() {
    // The reason MQTT 5 matters where a broker's ACL may deny: a 3.1.1 PUBACK has no reason
    // code, mosquitto acknowledges the denied publish, and the outbox lets go of it
    // (docs/fleet.md, the durability boundary). Pinned so the docs stay true.
    let files = tempfile::tempdir().unwrap();
    let acl = acl_denying_events(files.path());
    let rig = Rig::with_broker_on(&denying_broker(&acl), Mqtt::V311);
    let (_pty, mut scanner) = rig.scanner();
    let gw = rig.start_gateway();
    eventually(LONG, "connected", || gw.log().contains("connected to HQ"));
    wait_listening(rig.status_port);
    for i in 0..5 {
        scanner.scan(&format!("LOST-{i}")).unwrap();
    }
    // The scanner's `up` and the five codes accepted, every accepted event acknowledged.
    eventually(LONG, "the scans accepted and acknowledged", || {
        let accepted = metric(&rig, "phygate_events_accepted_total");
        accepted >= 6 && metric(&rig, "phygate_events_published_total") == accepted
    });
    // The outbox commits a lone acknowledgement with its next group, or within 500 ms
    // (`outbox/idle.rs`): the file's watermark follows the metric shortly after.
    eventually(LONG, "the outbox let go", || scanned_in_outbox(&rig) == 0);
    assert!(!gw.log().contains("refused a batch"));
    assert!(status_json(&rig)["hq"]["refused"].is_null());
}

/// A counter of the gateway's `/metrics`.
fn metric(rig: &Rig, name: &str) -> u64 {
    let (_, body) = get(rig.status_port, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A v5 subscriber to the store's status and events; every publish goes to the channel.
fn v5_subscriber(port: u16) -> (Client, mpsc::Receiver<Publish>) {
    let mut options = MqttOptions::new(format!("hq-v5-{port}"), "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    options.set_max_packet_size(Some(16 * 1024 * 1024));
    let (client, mut connection) = Client::new(options, 16);
    client.subscribe(status_topic(), QoS::AtLeastOnce).unwrap();
    client.subscribe(events_topic(), QoS::AtLeastOnce).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for ev in connection.iter() {
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    (client, rx)
}

/// The next publish on `topic` whose JSON satisfies `want`.
fn next_on(rx: &mpsc::Receiver<Publish>, topic: &str, want: impl Fn(&Value) -> bool) -> Publish {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let p = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("nothing more on {topic}"));
        if p.topic == topic.as_bytes() && want(&serde_json::from_slice(&p.payload).unwrap()) {
            return p;
        }
    }
}

#[test]
fn on_mqtt_5_the_batch_and_status_carry_their_media_type_and_the_last_will_still_says_offline() {
    let rig = Rig::on(Mqtt::V5);
    let (_client, rx) = v5_subscriber(rig.broker.port);
    let (_pty, mut scanner) = rig.scanner();
    let mut gw = rig.start_gateway();

    let online = next_on(&rx, &status_topic(), |v| v["state"] == "online");
    let props = online.properties.clone().expect("properties");
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    assert_eq!(props.payload_format_indicator, Some(1));

    scanner.scan("WITH-PROPERTIES").unwrap();
    let batch = next_on(&rx, &events_topic(), |v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|e| e["data"]["payload"] == "WITH-PROPERTIES"))
    });
    let props = batch.properties.expect("properties");
    assert_eq!(
        props.content_type.as_deref(),
        Some("application/cloudevents-batch+json")
    );
    assert_eq!(props.payload_format_indicator, Some(1));

    // kill -9: no goodbye; the broker publishes the will.
    gw.kill9();
    let will = next_on(&rx, &status_topic(), |v| v["state"] == "offline");
    assert_eq!(
        will.properties.and_then(|p| p.content_type).as_deref(),
        Some("application/json")
    );
    // And it is retained: a newcomer reads it.
    let (_late, late_rx) = v5_subscriber(rig.broker.port);
    let retained = next_on(&late_rx, &status_topic(), |_| true);
    assert!(retained.retain, "the status is retained");
    let v: Value = serde_json::from_slice(&retained.payload).unwrap();
    assert_eq!(v["state"], "offline");
    assert_eq!(v["gateway"], "gw1");
}

/// mosquitto's `max_packet_size`, which it states in its MQTT 5 CONNACK.
fn broker_with_packet_limit(limit: usize) -> String {
    format!("allow_anonymous true\nmax_packet_size {limit}\n")
}

#[test]
fn batches_are_cut_to_the_packet_limit_the_broker_states() {
    // A backlog of twelve ~0.5 kB events is one batch by the uplink's own size limit, over the
    // broker's 2,000 bytes. Before the cut, rumqttc refused that publish as a connection error
    // and the uplink reconnected and sent the same batch forever: nothing arrived.
    let mut rig = Rig::with_broker_on(&broker_with_packet_limit(2000), Mqtt::V5);
    let hq = rig.hq("limit");
    let (_pty, mut scanner) = rig.scanner();
    let gw = rig.start_gateway();
    eventually(LONG, "connected", || gw.log().contains("max_packet=2000"));
    rig.broker.stop(false);
    for i in 0..12 {
        scanner.scan(&format!("BACKLOG-{i}")).unwrap();
    }
    eventually(LONG, "the backlog buffered", || {
        scanned_in_outbox(&rig) == 12
    });
    rig.broker.restart().unwrap();
    hq.wait_for(LONG, "the backlog at HQ", |h| {
        h.scanned_payloads().len() >= 12
    });
    assert_eq!(
        hq.scanned_payloads(),
        (0..12).map(|i| format!("BACKLOG-{i}")).collect::<Vec<_>>()
    );
    eventually(LONG, "the outbox drained", || scanned_in_outbox(&rig) == 0);
    let log = gw.log();
    assert!(!log.contains("cannot be sent"), "{log}");
}

#[test]
fn one_event_over_the_broker_packet_limit_is_kept_and_the_reason_shown() {
    let rig = Rig::with_broker_on(&broker_with_packet_limit(2000), Mqtt::V5);
    rig.write_config("\n[uplink]\nbackoff_min = \"100ms\"\nbackoff_max = \"500ms\"\n");
    let hq = rig.hq("limit");
    let (_pty, mut scanner) = rig.scanner();
    let gw = rig.start_gateway();
    eventually(LONG, "connected", || gw.log().contains("max_packet=2000"));
    wait_listening(rig.status_port);
    scanner.scan(&"L".repeat(2500)).unwrap();
    scanner.scan("AFTER-THE-LONG-ONE").unwrap();
    // The page's link facts come from the health monitor's round: wait for one.
    eventually(LONG, "the page to show the limit", || {
        let s = status_json(&rig);
        s["hq"]["connected"] == true
            && s["hq"]["refused"]
                .as_str()
                .is_some_and(|r| r.contains("over the broker's maximum packet size of 2000 bytes"))
    });
    // Held, not lost and not overtaken; the link stays up (no reconnect loop).
    assert_eq!(scanned_in_outbox(&rig), 2);
    assert!(hq.scanned_payloads().is_empty());
    let log = gw.log();
    assert!(log.contains("a batch cannot be sent"), "{log}");
    assert!(!log.contains("HQ link down"), "{log}");
}
