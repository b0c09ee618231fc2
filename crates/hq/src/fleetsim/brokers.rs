//! The bench's broker: one mosquitto (the consumers share `$share/journey`), or a three-node
//! NATS cluster with JetStream (`phygate::sim::nats`): the stores publish over MQTT to the
//! nodes' MQTT listeners, the consumers read the events stream through HQ's JetStream input,
//! sharing one durable consumer (NATS's MQTT side has no `$share`).

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use phygate::sim::broker::Mosquitto;
use phygate::sim::nats::NatsCluster;

use super::procs::pid_by_cmdline;

/// `--broker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerKind {
    Mosquitto,
    Nats,
}

/// How long a SIGKILLed NATS node stays down before it is started again.
pub const NODE_DOWN: Duration = Duration::from_secs(5);

pub enum Brokers {
    Mosquitto {
        server: Mosquitto,
        /// Its config file's path: the meter finds the broker's pid by it.
        conf: String,
    },
    Nats(NatsCluster),
}

impl Brokers {
    pub fn start(kind: BrokerKind, dir: &Path) -> anyhow::Result<Brokers> {
        Ok(match kind {
            BrokerKind::Mosquitto => {
                // The test broker saves its whole in-memory store every second, for the fault
                // tests' SIGKILLs. With a fleet's backlog queued for a consumer that lags, that
                // is a save of hundreds of MB a second, and the broker stops answering pings.
                // The bench stops the broker only with SIGTERM, which saves on the way out.
                let server = Mosquitto::start_with(
                    &dir.join("broker"),
                    "allow_anonymous true\nautosave_interval 60\n",
                )
                .context("starting mosquitto")?;
                let conf = dir.join("broker").join("mosquitto.conf");
                let conf = conf.to_string_lossy().into_owned();
                Brokers::Mosquitto { server, conf }
            }
            BrokerKind::Nats => Brokers::Nats(
                NatsCluster::start(&dir.join("nats")).context("starting the NATS cluster")?,
            ),
        })
    }

    /// The `host:port` list for fleet-sim's `--broker` (one per node; the sim rotates it per
    /// store).
    pub fn mqtt_addresses(&self) -> Vec<String> {
        match self {
            Brokers::Mosquitto { server, .. } => vec![format!("127.0.0.1:{}", server.port)],
            Brokers::Nats(c) => c.mqtt_addresses(),
        }
    }

    /// Consumer `k`'s input tables: the MQTT shared subscription, or the JetStream input with
    /// every node's URL, consumer k starting at node (k-1) mod 3: the consumers spread too, and
    /// the first one sits on n1, the node `--kill-node-at` kills.
    pub fn consumer_input(&self, k: usize) -> String {
        match self {
            Brokers::Mosquitto { server, .. } => format!(
                "[mqtt]\nport = {}\nclient_id = \"fleet-hq-{k}\"\ngroup = \"journey\"\nkeepalive = \"30s\"\n",
                server.port
            ),
            Brokers::Nats(c) => {
                let mut urls: Vec<String> =
                    c.client_urls().iter().map(|u| format!("{u:?}")).collect();
                let n = urls.len();
                urls.rotate_left((k - 1) % n);
                // Replay requests go through an MQTT listener: n2's, since `--kill-node-at`
                // kills n1.
                let mqtt = c.mqtt_addresses();
                format!(
                    "[input]\nkind = \"jetstream\"\nservers = [{}]\nack_wait = \"10s\"\n\
                     [repair]\nbroker = \"{}\"\n",
                    urls.join(", "),
                    mqtt[1 % mqtt.len()]
                )
            }
        }
    }

    /// Each broker process's name and pid, for the meters.
    pub fn pids(&self) -> Vec<(String, Option<u32>)> {
        match self {
            Brokers::Mosquitto { conf, .. } => vec![("mosquitto".into(), pid_by_cmdline(conf))],
            Brokers::Nats(c) => (0..c.nodes.len())
                .map(|i| (format!("nats-{}", c.nodes[i].name), c.pid(i)))
                .collect(),
        }
    }

    /// `--restart-broker-at`: mosquitto stopped with SIGTERM (it saves its sessions and
    /// queues; a SIGKILL would lose what it acknowledged since its last save — the broker's
    /// loss, not phygate's) and started again.
    pub fn restart_mosquitto(&mut self) -> anyhow::Result<()> {
        let Brokers::Mosquitto { server, .. } = self else {
            anyhow::bail!("--restart-broker-at is for --broker mosquitto (NATS: --kill-node-at)");
        };
        server.stop(false);
        std::thread::sleep(Duration::from_secs(1));
        server.restart()?;
        Ok(())
    }

    /// On the NATS cluster, moves the events stream's leadership to n1, the node
    /// `--kill-node-at` kills, so the kill hits the worst case: the stream without a leader
    /// while the other nodes PUBACK what it cannot store (docs/fleet.md, "The durability
    /// boundary"). A leader step-down hands leadership to another replica at random, so it is
    /// asked until n1 leads, a few times at most. Returns the leader at the end.
    pub fn lead_events_from_n1(&self, rt: &tokio::runtime::Runtime) -> anyhow::Result<String> {
        let Brokers::Nats(c) = self else {
            anyhow::bail!("only the NATS cluster has a stream leader");
        };
        // The input's default stream: the bench's consumer configs name none.
        let stream = "PHYGATE_EVENTS";
        let wanted = c.nodes[0].name.clone();
        let servers = c
            .client_urls()
            .iter()
            .map(|u| u.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .context("the cluster's client URLs")?;
        let client = rt
            .block_on(async_nats::connect(servers))
            .context("connecting to the NATS cluster")?;
        let mut leader = None;
        for _ in 0..12 {
            leader = c.stream_leader(stream);
            match &leader {
                Some(l) if *l == wanted => break,
                // No leader yet (the consumers create the stream as they start): wait.
                None => {}
                Some(_) => {
                    let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
                    rt.block_on(client.request(subject, "".into()))
                        .context("asking the stream's leader to step down")?;
                }
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        leader.context("the events stream has no leader")
    }

    /// `--kill-node-at`: node n1 (the first node of every third store's list) SIGKILLed, and
    /// started again on its ports and store after [`NODE_DOWN`].
    pub fn kill_and_restart_node(&mut self) -> anyhow::Result<()> {
        let Brokers::Nats(c) = self else {
            anyhow::bail!("--kill-node-at is for --broker nats");
        };
        c.kill(0);
        std::thread::sleep(NODE_DOWN);
        c.restart(0).context("restarting NATS node n1")?;
        Ok(())
    }

    pub fn stop(&mut self) {
        match self {
            Brokers::Mosquitto { server, .. } => server.stop(false),
            Brokers::Nats(c) => {
                for i in 0..c.nodes.len() {
                    c.kill(i);
                }
            }
        }
    }
}
