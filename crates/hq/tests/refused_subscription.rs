//! HQ's MQTT consumer against a broker that refuses its shared subscriptions, then grants them
//! (`phygate::sim::scripted_broker`: neither mosquitto 2.0 nor nats-server refuses on demand).
//! It subscribes again on the same connection, and says why it consumed nothing meanwhile.

mod common;

use std::time::Duration;

use common::Hq;
use phygate::sim::scripted_broker::{Script, Scripted};

#[test]
fn a_refused_subscription_is_asked_again_on_the_same_connection() {
    // Both filters (the events and the stores' status) refused once.
    let broker = Scripted::start(Script {
        refusals: 2,
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Returns once the log says "subscribed": after the grant.
    let mut hq = Hq::start(&dir.path().join("hq"), broker.port, "30s");
    let subs = broker.subscribes();
    assert!(subs.len() >= 4, "{subs:?}");
    let filters = |k: usize| subs[k].1.join(",");
    assert!(filters(0).starts_with("$share/"), "{subs:?}");
    assert_eq!(
        [filters(0), filters(1)],
        [filters(2), filters(3)],
        "the refused filters asked again: {subs:?}"
    );
    assert!(
        subs.iter().all(|s| s.0 == subs[0].0),
        "on the same connection: {subs:?}"
    );
    assert!(
        subs[2].2 - subs[0].2 >= Duration::from_secs(4),
        "after the wait (5 s): {subs:?}"
    );
    let log = hq.log();
    assert!(
        log.contains("the broker refused HQ's subscription"),
        "{log}"
    );
    assert!(log.contains("NotAuthorized"), "{log}");
    assert!(
        log.contains("subscribing again after the broker's refusal"),
        "{log}"
    );
    assert!(hq.terminate());
}
