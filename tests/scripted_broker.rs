//! The gateway against brokers that misbehave in ways no test broker does on demand
//! (`phygate::sim::scripted_broker`): a refused downlink subscription, and a connection that
//! answers keep-alives but never acknowledges the events.

mod common;

use std::time::Duration;

use common::*;
use phygate::sim::scripted_broker::{Script, Scripted};

/// Points the rig's gateway at the scripted broker on `port`.
fn use_scripted_broker(rig: &Rig, port: u16) {
    let text = std::fs::read_to_string(&rig.config).unwrap().replace(
        &format!("port = {}\n", rig.broker.port),
        &format!("port = {port}\n"),
    );
    std::fs::write(&rig.config, text).unwrap();
}

fn a_refused_downlink_subscription_is_asked_again_on_the_same_connection(mqtt: Mqtt) {
    let broker = Scripted::start(Script {
        refusals: 1,
        ..Default::default()
    })
    .unwrap();
    let rig = Rig::on(mqtt);
    use_scripted_broker(&rig, broker.port);
    let gw = rig.start_gateway();

    eventually(Duration::from_secs(60), "a second SUBSCRIBE", || {
        broker.subscribes().len() >= 2
    });
    let got = broker.subscribes();
    assert_eq!(
        got[0].0, got[1].0,
        "asked again on the same connection: {got:?}"
    );
    assert_eq!(got[0].1, got[1].1, "the same filters: {got:?}");
    assert!(
        got[1].2 - got[0].2 >= Duration::from_secs(4),
        "the retry waits (5 s after the first refusal): {got:?}"
    );
    let log = gw.log();
    assert!(
        log.contains("the broker refused a downlink subscription"),
        "{log}"
    );
    assert!(
        log.contains("subscribing again to the downlink topics"),
        "{log}"
    );
    // Granted: no more asks.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(broker.subscribes().len(), 2, "{}", gw.log());
}

fn a_connection_whose_events_are_never_acknowledged_is_dropped_and_they_go_again_on_a_new_one(
    mqtt: Mqtt,
) {
    let broker = Scripted::start(Script {
        hold_first_events: true,
        ..Default::default()
    })
    .unwrap();
    let rig = Rig::on(mqtt);
    rig.write_config(
        "\n[uplink]\nack_timeout = \"3s\"\nbackoff_min = \"100ms\"\nbackoff_max = \"500ms\"\n",
    );
    use_scripted_broker(&rig, broker.port);
    let (_pty, mut scanner) = rig.scanner();
    let gw = rig.start_gateway();
    scanner.scan("HELD-1").unwrap();

    eventually(
        Duration::from_secs(60),
        "the event sent again on a new connection",
        || {
            let sc = broker.script.lock().unwrap();
            sc.events
                .iter()
                .any(|(conn, p)| p.contains("HELD-1") && Some(*conn) != sc.holding)
        },
    );
    let sc = broker.script.lock().unwrap();
    assert!(
        sc.events
            .iter()
            .any(|(conn, p)| p.contains("HELD-1") && Some(*conn) == sc.holding),
        "first sent on the connection that held it"
    );
    let log = gw.log();
    assert!(
        log.contains("the broker acknowledged no publish for 3s while batches were in flight"),
        "{log}"
    );
}

on_both_protocols!(
    a_refused_downlink_subscription_is_asked_again_on_the_same_connection,
    a_connection_whose_events_are_never_acknowledged_is_dropped_and_they_go_again_on_a_new_one,
);
