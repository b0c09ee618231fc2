//! HQ → store on real parts: commands run at most once (also across a restart and when
//! redelivered), member maps apply whole and survive a restart, and malformed, oversized or
//! stale messages change nothing.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use rumqttc::{Client, MqttOptions, QoS};

const LONG: Duration = Duration::from_secs(60);

/// HQ's publisher.
fn hq_publisher(port: u16) -> Client {
    let mut options = MqttOptions::new(format!("hq-pub-{}", fastrand::u32(..)), "127.0.0.1", port);
    options.set_max_packet_size(1 << 20, 32 << 20);
    let (client, mut conn) = Client::new(options, 16);
    std::thread::spawn(move || for _ in conn.iter() {});
    client
}

fn topic(leaf: &str) -> String {
    format!("phygate/v1/{TENANT}/{STORE}/{leaf}")
}

fn command(id: &str, expires_in: i64) -> String {
    let exp = SystemTime::now() + Duration::from_secs(expires_in.max(0) as u64)
        - Duration::from_secs((-expires_in).max(0) as u64);
    format!(
        r#"{{"id":"{id}","expires_at":"{}","command":"open_gate","station":"gate-1"}}"#,
        phygate::event::format_time(exp)
    )
}

fn results(hq: &Hq) -> Vec<(String, String)> {
    hq.of_type("store.command.result")
        .iter()
        .map(|e| {
            (
                e["data"]["command_id"].as_str().unwrap().to_owned(),
                e["data"]["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_command_runs_once_even_when_redelivered_and_after_a_restart() {
    let rig = Rig::new();
    rig.write_config_with(&rig.gate_device(""), "");
    let hq = rig.hq("commands");
    let (_pty, _scanner) = rig.scanner();
    let gate = rig.gate(0, 0);
    let mut gw = rig.start_gateway();
    hq.wait_for(LONG, "gate up", |h| {
        h.statuses_of("gate-a")
            .iter()
            .any(|e| e["data"]["state"] == "up")
    });
    let hq_pub = hq_publisher(rig.broker.port);

    hq_pub
        .publish(
            topic("commands"),
            QoS::AtLeastOnce,
            false,
            command("open-1", 60),
        )
        .unwrap();
    hq.wait_for(LONG, "first result", |h| results(h).len() == 1);
    // Redelivered (same id), an expired one, and an oversized and a malformed one.
    hq_pub
        .publish(
            topic("commands"),
            QoS::AtLeastOnce,
            false,
            command("open-1", 60),
        )
        .unwrap();
    hq_pub
        .publish(
            topic("commands"),
            QoS::AtLeastOnce,
            false,
            command("open-2", -5),
        )
        .unwrap();
    hq_pub
        .publish(topic("commands"), QoS::AtLeastOnce, false, vec![b' '; 8192])
        .unwrap();
    hq_pub
        .publish(
            topic("commands"),
            QoS::AtLeastOnce,
            false,
            r#"{"id":"x","command":"open_gate"}"#,
        )
        .unwrap();
    hq.wait_for(LONG, "three results", |h| results(h).len() == 3);
    assert!(gw.terminate().success());
    gw.restart();
    hq.wait_for(LONG, "gate up again", |h| {
        h.statuses_of("gate-a")
            .iter()
            .filter(|e| e["data"]["state"] == "up")
            .count()
            >= 2
    });
    hq_pub
        .publish(
            topic("commands"),
            QoS::AtLeastOnce,
            false,
            command("open-1", 60),
        )
        .unwrap();
    hq.wait_for(LONG, "four results", |h| results(h).len() == 4);

    assert_eq!(
        results(&hq),
        [
            ("open-1".into(), "done".into()),
            ("open-1".into(), "duplicate".into()),
            ("open-2".into(), "expired".into()),
            ("open-1".into(), "duplicate".into()),
        ]
    );
    assert_eq!(gate.coil_writes().len(), 1, "the gate opened exactly once");
    assert!(
        gw.log().contains("downlink message refused"),
        "{}",
        gw.log()
    );
}

#[test]
fn member_maps_apply_whole_survive_a_restart_and_refuse_stale_or_broken_updates() {
    let rig = Rig::new();
    let (_pty, _scanner) = rig.scanner();
    let hq = rig.hq("members");
    let mut gw = rig.start_gateway();
    hq.wait_for(LONG, "scanner up", |h| !h.statuses().is_empty());
    let hq_pub = hq_publisher(rig.broker.port);
    let db = rig.db_path();
    let h = |c: char| c.to_string().repeat(43);
    let publish = |body: String| {
        hq_pub
            .publish(topic("members"), QoS::AtLeastOnce, false, body)
            .unwrap()
    };

    publish(format!(
        r#"{{"type":"snapshot","version":5,"members":[{{"card_hash":"{}","userid":"u-a"}},{{"card_hash":"{}","userid":"u-b"}}]}}"#,
        h('a'),
        h('b')
    ));
    eventually(LONG, "snapshot stored", || {
        outbox_state(&db, "members.version/store").as_deref() == Some(b"5".as_slice())
    });
    // A delta on top of 5; then one based on a version the store never had; a stale snapshot;
    // a broken one (one bad hash among good ones); all but the first change nothing.
    publish(format!(
        r#"{{"type":"delta","version":6,"base":5,"upsert":[{{"card_hash":"{}","userid":"u-c"}}],"delete":["{}"]}}"#,
        h('c'),
        h('a')
    ));
    publish(format!(
        r#"{{"type":"delta","version":9,"base":8,"upsert":[{{"card_hash":"{}","userid":"u-x"}}]}}"#,
        h('x')
    ));
    publish(format!(
        r#"{{"type":"snapshot","version":4,"members":[{{"card_hash":"{}","userid":"u-old"}}]}}"#,
        h('o')
    ));
    publish(format!(
        r#"{{"type":"snapshot","version":7,"members":[{{"card_hash":"{}","userid":"u-d"}},{{"card_hash":"short","userid":"u-e"}}]}}"#,
        h('d')
    ));
    eventually(LONG, "delta stored", || {
        outbox_state(&db, "members.version/store").as_deref() == Some(b"6".as_slice())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(gw.terminate().success());

    let member = |c: char| {
        outbox_state(&db, &format!("member/store/{}", h(c))).map(|v| String::from_utf8(v).unwrap())
    };
    assert_eq!(member('a'), None, "deleted by the delta");
    assert_eq!(member('b').as_deref(), Some("u-b"));
    assert_eq!(member('c').as_deref(), Some("u-c"));
    assert_eq!(
        (member('x'), member('o'), member('d')),
        (None, None, None),
        "refused updates changed nothing"
    );
    assert_eq!(
        outbox_state(&db, "members.version/store").as_deref(),
        Some(b"6".as_slice())
    );

    // After a restart the map is what was stored: a stale snapshot is still refused.
    gw.restart();
    hq.wait_for(LONG, "up again", |h| {
        h.statuses()
            .iter()
            .filter(|e| e["data"]["state"] == "up")
            .count()
            >= 2
    });
    publish(format!(
        r#"{{"type":"snapshot","version":6,"members":[{{"card_hash":"{}","userid":"u-z"}}]}}"#,
        h('z')
    ));
    std::thread::sleep(Duration::from_millis(800));
    assert!(gw.terminate().success());
    assert_eq!(member('z'), None);
    assert!(
        gw.log().contains("stale snapshot version 6"),
        "{}",
        gw.log()
    );
}

/// A member snapshot at version 5 with card `a` → `u-a`, stored: proves the downlink session
/// exists on the broker (it subscribed), so what HQ sends later is kept for it.
fn establish_session(hq_pub: &Client, db: &std::path::Path) {
    let snapshot = format!(
        r#"{{"type":"snapshot","version":5,"members":[{{"card_hash":"{}","userid":"u-a"}}]}}"#,
        "a".repeat(43)
    );
    // Sent again until stored: one sent before the first subscription reaches nobody.
    eventually(LONG, "snapshot stored", || {
        hq_pub
            .publish(topic("members"), QoS::AtLeastOnce, false, snapshot.clone())
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        outbox_state(db, "members.version/store").as_deref() == Some(b"5".as_slice())
    });
}

/// A delta 5 → 6 adding card `c` → `u-c`.
fn delta_6() -> String {
    format!(
        r#"{{"type":"delta","version":6,"base":5,"upsert":[{{"card_hash":"{}","userid":"u-c"}}]}}"#,
        "c".repeat(43)
    )
}

/// Waits until the delta and command `open-1` are applied, then checks each was applied once:
/// the map holds the delta, the gate opened once, one result, one "member map updated" at 6.
fn assert_applied_once(
    rig: &Rig,
    hq: &Hq,
    gw: &mut Gateway,
    gate: &phygate::sim::modbus_gate::GateSim,
) {
    let db = rig.db_path();
    eventually(LONG, "delta applied", || {
        outbox_state(&db, "members.version/store").as_deref() == Some(b"6".as_slice())
    });
    hq.wait_for(LONG, "the command's result", |h| !results(h).is_empty());
    // Time for a second application, if there were one.
    std::thread::sleep(Duration::from_millis(800));
    assert!(gw.terminate().success());
    assert_eq!(
        outbox_state(&db, &format!("member/store/{}", "c".repeat(43))).as_deref(),
        Some(b"u-c".as_slice())
    );
    assert_eq!(results(hq), [("open-1".into(), "done".into())]);
    assert_eq!(gate.coil_writes().len(), 1, "the gate opened exactly once");
    let log = gw.log();
    let applied_6 = log
        .lines()
        .filter(|l| l.contains("member map updated") && l.contains("version=6"))
        .count();
    assert_eq!(applied_6, 1, "{log}");
}

#[test]
fn regression_a_delta_and_a_command_sent_while_the_gateway_is_down_are_applied_once_when_it_is_back(
) {
    let rig = Rig::new();
    rig.write_config_with(&rig.gate_device(""), "");
    let hq = rig.hq("offline");
    let (_pty, _scanner) = rig.scanner();
    let gate = rig.gate(0, 0);
    let mut gw = rig.start_gateway();
    let hq_pub = hq_publisher(rig.broker.port);
    establish_session(&hq_pub, &rig.db_path());
    assert!(gw.terminate().success());

    // The gateway is down, the broker up: HQ sends a delta and a command.
    hq_pub
        .publish(topic("members"), QoS::AtLeastOnce, false, delta_6())
        .unwrap();
    hq_pub
        .publish(
            topic("commands"),
            QoS::AtLeastOnce,
            false,
            command("open-1", 120),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    gw.restart();
    assert_applied_once(&rig, &hq, &mut gw, &gate);
}

#[test]
fn regression_a_kill_between_receipt_and_commit_gets_the_message_again_and_applies_it_once() {
    let rig = Rig::new();
    rig.write_config_with(&rig.gate_device(""), "");
    let hq = rig.hq("killed");
    let (_pty, _scanner) = rig.scanner();
    let gate = rig.gate(0, 0);
    let log = rig.dir.path().join("phygate.log");
    let mut gw = rig.start_gateway();
    let hq_pub = hq_publisher(rig.broker.port);
    establish_session(&hq_pub, &rig.db_path());
    assert!(gw.terminate().success());

    // Every downlink message now waits 30 s between receipt and commit (debug builds only).
    let mut paused = Gateway::start_with_env(
        &rig.config,
        &log,
        &[("PHYGATE_TEST_DOWNLINK_PAUSE_MS", "30000")],
    );
    hq_pub
        .publish(topic("members"), QoS::AtLeastOnce, false, delta_6())
        .unwrap();
    hq_pub
        .publish(
            topic("commands"),
            QoS::AtLeastOnce,
            false,
            command("open-1", 120),
        )
        .unwrap();
    eventually(LONG, "the delta received and paused", || {
        paused
            .log()
            .contains("test pause before applying a downlink message")
    });
    paused.kill9();
    assert_eq!(
        outbox_state(&rig.db_path(), "members.version/store").as_deref(),
        Some(b"5".as_slice()),
        "nothing committed"
    );

    let mut gw = Gateway::start(&rig.config, &log);
    assert_applied_once(&rig, &hq, &mut gw, &gate);
}
