//! One `nats-server` with JetStream on a free loopback port and the `settings` a test gives it
//! (who may connect: `authorization`, `tls`), and a NATS client that publishes event batches
//! to it as a store's gateway would: a JetStream publish, acknowledged once the stream holds it.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use phygate::event::Origin;
use phygate::sim::broker::{find_program, free_port};

pub struct NatsServer {
    pub port: u16,
    child: Child,
}

impl NatsServer {
    /// Starts the server with its config, store and log under `dir`; `None` (with the reason
    /// printed) where nats-server is not installed outside CI, as the cluster tests skip.
    pub fn start(dir: &Path, settings: &str) -> Option<NatsServer> {
        let Some(binary) = find_program("nats-server") else {
            assert!(std::env::var("CI").is_err(), "nats-server is not installed");
            eprintln!("skipped: nats-server is not installed (apt-get install nats-server)");
            return None;
        };
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port().unwrap();
        let config = dir.join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "server_name: single\nlisten: 127.0.0.1:{port}\n\
                 jetstream {{ store_dir: \"{}\" }}\n{settings}",
                dir.join("jetstream").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("nats.log")).unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut server = NatsServer { port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = server.child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "nats-server did not listen on {port} ({exited:?}); see {}",
                dir.join("nats.log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes `count` batches of one anonymous scan each, seq 1..=count, from gateway `gw1` of
/// `store` (tenant [`super::TENANT`]) to its events subject, each acknowledged by the stream.
/// The events are the gateway's own serialisation ([`phygate::event::Event::to_json`]).
pub async fn publish_events(client: &async_nats::Client, store: &str, count: u64) {
    let js = async_nats::jetstream::new(client.clone());
    let subject = format!("phygate.v1.{}.{store}.events", super::TENANT);
    let origin = Origin {
        store: store.into(),
        gateway: "gw1".into(),
    };
    for seq in 1..=count {
        let batch = format!("[{}]", super::scan(40).to_json(&origin, seq));
        js.publish(subject.clone(), batch.into())
            .await
            .expect("publish")
            .await
            .expect("the stream's ack");
    }
}
