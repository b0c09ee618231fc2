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

fn a_command_runs_once_even_when_redelivered_and_after_a_restart(mqtt: Mqtt) {
    let rig = Rig::on(mqtt);
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

/// On MQTT 5 this is also the session expiry's test: with clean start off but no
/// `session_expiry_interval` (0) the broker would end the session at the gateway's DISCONNECT,
/// and the delta and the command sent meanwhile would never arrive.
fn regression_a_delta_and_a_command_sent_while_the_gateway_is_down_are_applied_once_when_it_is_back(
    mqtt: Mqtt,
) {
    let rig = Rig::on(mqtt);
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

fn regression_a_kill_between_receipt_and_commit_gets_the_message_again_and_applies_it_once(
    mqtt: Mqtt,
) {
    let rig = Rig::on(mqtt);
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

/// `sha256:` and the first 16 hex digits of the text's digest: how HQ names a config.
fn config_version(text: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(text.as_bytes());
    let hex: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[test]
fn regression_a_retained_config_from_hq_is_applied_reported_and_kept_and_a_bad_one_rejected_whole()
{
    let rig = Rig::new();
    let hq = rig.hq("config");
    let (_pty, _scanner) = rig.scanner();
    let mut gw = rig.start_gateway();
    hq.wait_for(LONG, "scanner up", |h| !h.statuses().is_empty());
    wait_listening(rig.status_port);
    let hq_pub = hq_publisher(rig.broker.port);
    let local = std::fs::read_to_string(&rig.config).unwrap();
    let listen = |port: u16| format!("listen = \"127.0.0.1:{port}\"");
    let applied = |h: &Hq| h.of_type("store.config.applied");

    // HQ's config moves the status page (live) and changes a batch size (next start).
    let hq_port = phygate::sim::broker::free_port().unwrap();
    let good = format!(
        "{}\n[uplink]\nbatch_max_events = 50\n",
        local.replace(&listen(rig.status_port), &listen(hq_port))
    );
    hq_pub
        .publish(topic("config"), QoS::AtLeastOnce, true, good.clone())
        .unwrap();
    hq.wait_for(LONG, "store.config.applied", |h| !applied(h).is_empty());
    let report = &applied(&hq)[0]["data"];
    assert_eq!(report["version"], config_version(&good));
    assert_eq!(report["live"], serde_json::json!(["status"]));
    assert_eq!(report["restart"], serde_json::json!(["uplink"]));
    wait_listening(hq_port);
    assert_eq!(
        get(hq_port, "/healthz").0,
        200,
        "the status page moved at once"
    );

    // One that does not validate (another store, a bad inflight) is rejected whole: its status
    // port is not taken, and every problem is reported.
    let bad_port = phygate::sim::broker::free_port().unwrap();
    let bad = good
        .replace(&listen(hq_port), &listen(bad_port))
        .replace(&format!("store = \"{STORE}\""), "store = \"s2\"")
        .replace(
            "batch_max_events = 50",
            "batch_max_events = 50\ninflight = 999",
        );
    hq_pub
        .publish(topic("config"), QoS::AtLeastOnce, true, bad.clone())
        .unwrap();
    hq.wait_for(LONG, "store.config.rejected", |h| {
        !h.of_type("store.config.rejected").is_empty()
    });
    let rejected = &hq.of_type("store.config.rejected")[0]["data"];
    assert_eq!(rejected["version"], config_version(&bad));
    let reasons = rejected["reasons"].to_string();
    assert!(
        reasons.contains("uplink.inflight") && reasons.contains("store"),
        "{reasons}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(std::net::TcpStream::connect(("127.0.0.1", bad_port)).is_err());
    assert_eq!(get(hq_port, "/healthz").0, 200);

    // After a restart the applied config is in force (the local file still names the old port).
    assert!(gw.terminate().success());
    gw.restart();
    wait_listening(hq_port);
    assert!(std::net::TcpStream::connect(("127.0.0.1", rig.status_port)).is_err());
    assert!(std::net::TcpStream::connect(("127.0.0.1", bad_port)).is_err());
    assert!(gw.log().contains("HQ's config is in force"), "{}", gw.log());
    assert!(gw.terminate().success());
}

/// Regression: HQ's config was stored next to the outbox of the config in force but looked for,
/// at start, next to the local file's outbox. Once an HQ config had moved `[outbox] path`, every
/// later HQ config was written where no start would look, and a restart fell back to the first.
#[test]
fn regression_an_hq_config_that_moves_the_outbox_is_still_the_one_found_at_the_next_start() {
    let rig = Rig::new();
    let hq = rig.hq("config-moved-outbox");
    let (_pty, _scanner) = rig.scanner();
    let mut gw = rig.start_gateway();
    hq.wait_for(LONG, "scanner up", |h| !h.statuses().is_empty());
    let hq_pub = hq_publisher(rig.broker.port);
    let local = std::fs::read_to_string(&rig.config).unwrap();
    let listen = |port: u16| format!("listen = \"127.0.0.1:{port}\"");
    let old_db = rig.db_path();
    // Another folder: the stored config lives beside the outbox file.
    let moved_db = old_db.parent().unwrap().join("moved").join("phygate.db");
    let with = |port: u16| {
        local
            .replace(&listen(rig.status_port), &listen(port))
            .replace(
                &format!("path = \"{}\"", old_db.display()),
                &format!("path = \"{}\"", moved_db.display()),
            )
    };
    let applied = |h: &Hq, n: usize| h.of_type("store.config.applied").len() >= n;

    // First HQ config: the outbox moves (next start), the status page moves (at once).
    let first_port = phygate::sim::broker::free_port().unwrap();
    hq_pub
        .publish(topic("config"), QoS::AtLeastOnce, true, with(first_port))
        .unwrap();
    hq.wait_for(LONG, "the first config applied", |h| applied(h, 1));
    assert!(gw.terminate().success());
    gw.restart();
    wait_listening(first_port);
    assert!(gw.log().contains("HQ's config is in force"), "{}", gw.log());

    // Second HQ config, applied while the moved outbox is in force.
    let second_port = phygate::sim::broker::free_port().unwrap();
    hq_pub
        .publish(topic("config"), QoS::AtLeastOnce, true, with(second_port))
        .unwrap();
    hq.wait_for(LONG, "the second config applied", |h| applied(h, 2));
    wait_listening(second_port);

    // The next start finds the second one, not the first.
    assert!(gw.terminate().success());
    gw.restart();
    wait_listening(second_port);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", first_port)).is_err(),
        "a restart went back to the first HQ config"
    );
    assert!(gw.terminate().success());
}

on_both_protocols!(
    a_command_runs_once_even_when_redelivered_and_after_a_restart,
    regression_a_delta_and_a_command_sent_while_the_gateway_is_down_are_applied_once_when_it_is_back,
    regression_a_kill_between_receipt_and_commit_gets_the_message_again_and_applies_it_once,
);
