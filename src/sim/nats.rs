//! A local three-node NATS cluster for tests and benchmarks: Debian's `nats-server` (2.9), each
//! node with its own JetStream store, cluster routes to the two others and an MQTT listener, all
//! on free loopback ports. A node can be SIGKILLed and restarted on the same ports and store, as
//! a crashed server on a real host would come back.
//!
//! The MQTT listener needs JetStream (sessions, QoS 1 subscriptions and retained messages live
//! in `$MQTT_*` streams), and JetStream in a cluster needs a meta leader before any stream can be
//! created: [`NatsCluster::start`] returns only once one is elected.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::broker::{find_program, free_port};

/// How long a node gets to listen, and the cluster to elect a meta leader.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One `nats-server` process and the ports it serves.
pub struct NatsNode {
    pub name: String,
    /// NATS clients (`nats://127.0.0.1:{client_port}`).
    pub client_port: u16,
    /// MQTT 3.1.1 clients: the gateways connect here.
    pub mqtt_port: u16,
    /// The monitoring endpoint (`/jsz`, `/varz`).
    pub http_port: u16,
    pub route_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    binary: PathBuf,
}

impl NatsCluster {
    /// Writes three configs under `dir`, starts the nodes and waits for the JetStream meta
    /// leader. A try whose node does not come up is thrown away and made again on new ports:
    /// a port found free can be taken by another process before the node binds it.
    pub fn start(dir: &Path) -> std::io::Result<NatsCluster> {
        let mut last = None;
        for attempt in 1..=3 {
            match NatsCluster::start_once(&dir.join(format!("try{attempt}"))) {
                Ok(c) => return Ok(c),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("three tries"))
    }

    fn start_once(dir: &Path) -> std::io::Result<NatsCluster> {
        let binary = find_program("nats-server").ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "nats-server is not installed (apt-get install nats-server)",
            )
        })?;
        let mut nodes = Vec::new();
        for i in 1..=3 {
            let name = format!("n{i}");
            let node_dir = dir.join(&name);
            std::fs::create_dir_all(&node_dir)?;
            nodes.push(NatsNode {
                config: node_dir.join("nats.conf"),
                log: node_dir.join("nats.log"),
                name,
                client_port: free_port()?,
                mqtt_port: free_port()?,
                http_port: free_port()?,
                route_port: free_port()?,
                child: None,
            });
        }
        let routes: Vec<String> = nodes
            .iter()
            .map(|n| format!("nats-route://127.0.0.1:{}", n.route_port))
            .collect();
        for n in &nodes {
            let store = n.config.parent().expect("node dir").join("jetstream");
            // `stream_replicas`: the `$MQTT_*` streams (sessions, QoS 1 deliveries) on every
            // node, so a node's death loses no MQTT session.
            let config = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{http}\n\
                 jetstream {{ store_dir: \"{store}\" }}\n\
                 cluster {{ name: phygate, listen: 127.0.0.1:{route}, routes: [{routes}] }}\n\
                 mqtt {{ listen: 127.0.0.1:{mqtt}, stream_replicas: 3 }}\n",
                name = n.name,
                client = n.client_port,
                http = n.http_port,
                store = store.display(),
                route = n.route_port,
                routes = routes.join(", "),
                mqtt = n.mqtt_port,
            );
            std::fs::write(&n.config, config)?;
        }
        let mut cluster = NatsCluster { nodes, binary };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i)?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_listening(i)?;
        }
        cluster.wait_meta_leader()?;
        Ok(cluster)
    }

    /// `nats://…` URLs of every node, for a NATS client that fails over between them.
    pub fn client_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect()
    }

    /// `127.0.0.1:{mqtt_port}` of every node, in node order.
    pub fn mqtt_addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.mqtt_port))
            .collect()
    }

    /// SIGKILL: nothing flushed, no goodbye to the routes.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its ports and store, and waits until it listens and the
    /// cluster has a meta leader.
    pub fn restart(&mut self, i: usize) -> std::io::Result<()> {
        if self.nodes[i].child.is_none() {
            self.spawn(i)?;
        }
        self.wait_listening(i)?;
        self.wait_meta_leader()
    }

    /// The pid of node `i`'s process, while it runs (for a benchmark's CPU and memory meters).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// The name of the JetStream meta leader, as a running node sees it.
    pub fn meta_leader(&self) -> Option<String> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .find_map(|n| {
                let jsz = http_get(n.http_port, "/jsz").ok()?;
                let v: serde_json::Value = serde_json::from_str(&jsz).ok()?;
                let leader = v["meta_cluster"]["leader"].as_str()?;
                (!leader.is_empty()).then(|| leader.to_owned())
            })
    }

    fn spawn(&mut self, i: usize) -> std::io::Result<()> {
        let n = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)?;
        n.child = Some(
            Command::new(&self.binary)
                .arg("-c")
                .arg(&n.config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?,
        );
        Ok(())
    }

    fn wait_listening(&mut self, i: usize) -> std::io::Result<()> {
        let n = &mut self.nodes[i];
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", n.mqtt_port)).is_ok() {
                return Ok(());
            }
            // Exited (a port taken meanwhile): no use waiting.
            if let Some(status) = n.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                n.child = None;
                return Err(std::io::Error::other(format!(
                    "nats-server {} exited ({status}) before listening (see {})",
                    n.name,
                    n.log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(std::io::Error::other(format!(
            "nats-server {} did not listen for MQTT on {} (see {})",
            n.name,
            n.mqtt_port,
            n.log.display()
        )))
    }

    /// Waits for a meta leader that sees every running node as a current peer: before that,
    /// creating a three-replica stream fails with "no suitable peers for placement".
    fn wait_meta_leader(&self) -> std::io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let running = self.nodes.iter().filter(|n| n.child.is_some()).count();
        while Instant::now() < deadline {
            if self.current_peers() == Some(running) && self.routes_meshed(running) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other(format!(
            "the NATS cluster elected no JetStream meta leader with {running} current peers"
        )))
    }

    /// Every running node routes to every other one. Nodes that dial each other at once keep
    /// one route of the pair and close the other ("Duplicate Route"); a stream created before
    /// that settles was seen to miss the messages published on a node for minutes.
    fn routes_meshed(&self, running: usize) -> bool {
        self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
            http_get(n.http_port, "/routez")
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["num_routes"].as_u64())
                == Some(running as u64 - 1)
        })
    }

    /// The node leading stream `name` (in the global account), as a running node's
    /// monitoring endpoint reports it; `None` while it has no leader or no node answers.
    pub fn stream_leader(&self, name: &str) -> Option<String> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .find_map(|n| {
                let jsz = http_get(n.http_port, "/jsz?accounts=true&streams=true").ok()?;
                let v: serde_json::Value = serde_json::from_str(&jsz).ok()?;
                v["account_details"]
                    .as_array()?
                    .iter()
                    .filter_map(|a| a["stream_detail"].as_array())
                    .flatten()
                    .find(|s| s["name"] == name)
                    .and_then(|s| s["cluster"]["leader"].as_str())
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
            })
    }

    /// The meta leader and the peers it sees as current, counted, as the leader reports them.
    fn current_peers(&self) -> Option<usize> {
        let leader = self.meta_leader()?;
        let node = self.nodes.iter().find(|n| n.name == leader)?;
        let jsz = http_get(node.http_port, "/jsz").ok()?;
        let v: serde_json::Value = serde_json::from_str(&jsz).ok()?;
        let replicas = v["meta_cluster"]["replicas"].as_array()?;
        let current = replicas
            .iter()
            .filter(|r| {
                r["current"].as_bool() == Some(true) && r["offline"].as_bool() != Some(true)
            })
            .count();
        Some(1 + current)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// A bare HTTP/1.0 GET on loopback, the body as text: the monitoring endpoint answers small JSON documents, and
/// the gateway's library carries no HTTP client to ask it with.
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}
