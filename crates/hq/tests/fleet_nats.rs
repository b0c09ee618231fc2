//! The fleet on a clustered broker: a real three-node NATS cluster (Debian's nats-server, with
//! JetStream and an MQTT listener on every node), the gateway's own outbox and uplink publishing
//! to it over MQTT with a list of brokers, and `phygate-hq` reading the events stream through
//! its JetStream input into SQLite. Nodes are SIGKILLed and restarted: nothing is lost, nothing
//! is stored twice.

mod common;

use std::time::Duration;

use common::{scan, wait_for, Edge, Hq};
use phygate::sim::nats::NatsCluster;

const WAIT: Duration = Duration::from_secs(90);

/// The cluster, or a loud failure in CI (`.ci/run` installs nats-server); elsewhere a skip
/// that says why.
fn cluster(dir: &std::path::Path) -> Option<NatsCluster> {
    match NatsCluster::start(&dir.join("nats")) {
        Ok(c) => Some(c),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var("CI").is_err() => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("NATS cluster: {e}"),
    }
}

/// Which node holds the MQTT connection of `client_id`, from each node's `/connz`.
fn node_of(cluster: &NatsCluster, client_id: &str) -> Option<usize> {
    (0..cluster.nodes.len()).find(|&i| {
        cluster.is_running(i)
            && phygate::sim::nats::http_get(cluster.nodes[i].http_port, "/connz?limit=1024")
                .unwrap_or_default()
                .contains(&format!("\"mqtt_client\": \"{client_id}\""))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_moves_to_the_next_node_when_its_node_dies_and_its_backlog_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nats) = cluster(dir.path()) else {
        return;
    };
    let mqtt = nats.mqtt_addresses();
    // HQ reads through nodes B and C only: A is the one that dies.
    let hq = Hq::start_jetstream(&dir.path().join("hq"), &nats.client_urls()[1..], "30s");
    let mut edge = Edge::open_brokers(&dir.path().join("s1"), "s1", &mqtt);
    edge.start_uplink();

    let mut last = 0;
    for _ in 0..100 {
        last = edge.append(scan(40)).await;
    }
    wait_for(WAIT, "the first events at HQ", || {
        hq.stored("s1", "gw1").len() as u64 == last
    });
    assert_eq!(
        node_of(&nats, "edge-s1"),
        Some(0),
        "the gateway starts on the first broker of its list"
    );

    nats.kill(0);
    // The backlog grows while the gateway finds the next node.
    for _ in 0..300 {
        last = edge.append(scan(40)).await;
    }
    wait_for(WAIT, "the backlog at HQ", || {
        hq.stored("s1", "gw1").len() as u64 == last
    });
    let stored = hq.stored("s1", "gw1");
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>(),
        "an event missing"
    );
    assert!(stored.values().all(|&n| n == 1), "an event stored twice");
    assert_eq!(node_of(&nats, "edge-s1"), Some(1), "moved to the next node");
    wait_for(WAIT, "the outbox emptied by PUBACKs", || {
        edge.backlog() == 0
    });
    edge.stop_uplink().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jetstream_input_stores_every_event_once_across_a_node_kill9_and_an_hq_kill9() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut nats) = cluster(dir.path()) else {
        return;
    };
    let mqtt = nats.mqtt_addresses();
    let mut hq = Hq::start_jetstream(&dir.path().join("hq"), &nats.client_urls(), "30s");
    // Three stores, each starting on another node.
    let mut edges = Vec::new();
    for (i, store) in ["s1", "s2", "s3"].iter().enumerate() {
        let mut list = mqtt.clone();
        list.rotate_left(i);
        let mut edge = Edge::open_brokers(&dir.path().join(store), store, &list);
        edge.start_uplink();
        edges.push(edge);
    }

    let mut last = [0u64; 3];
    for round in 0..4 {
        for _ in 0..150 {
            for (i, edge) in edges.iter().enumerate() {
                last[i] = edge.append(scan(30)).await;
            }
        }
        match round {
            0 => {
                wait_for(WAIT, "HQ stored some", || {
                    !hq.stored("s2", "gw1").is_empty()
                });
                // The node s2 publishes to, and one of the stream's three replicas.
                nats.kill(1);
            }
            1 => {
                hq.kill9();
                nats.restart(1).unwrap();
            }
            2 => hq.restart(),
            _ => {}
        }
    }
    for (i, store) in ["s1", "s2", "s3"].iter().enumerate() {
        wait_for(WAIT, &format!("every event of {store} at HQ"), || {
            hq.stored(store, "gw1").len() as u64 == last[i]
        });
        let stored = hq.stored(store, "gw1");
        assert_eq!(
            stored.keys().copied().collect::<Vec<_>>(),
            (1..=last[i]).collect::<Vec<_>>(),
            "{store}: an event missing"
        );
        assert!(stored.values().all(|&n| n == 1), "{store}: stored twice");
    }
    let losses = hq.query(&["losses"]);
    assert_eq!(losses.len(), 3, "{losses:?}");
    assert!(losses.iter().all(|g| g["lost"] == 0), "{losses:?}");
    for edge in &mut edges {
        edge.stop_uplink().await;
    }
    assert!(hq.terminate(), "SIGTERM exits cleanly:\n{}", hq.log());
}
