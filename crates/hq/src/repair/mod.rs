//! Loss repair, HQ's side: the writer picks the holes due for a replay request
//! ([`crate::seq::GatewaySeq::repairs`], recorded in the stored accounting so that the
//! consumers of a group do not all ask for the same hole) and hands them here; this task
//! publishes one `replay` command per range to the store's commands topic, with a fresh id and
//! an expiry, through the fleet controls' MQTT code ([`crate::control::mqtt`]). The store
//! publishes what it still holds on its events topic (HQ stores it as any late event, and the
//! hole closes) and answers `store.command.result` with the sub-ranges it no longer holds,
//! which the writer declares lost at once ([`crate::store::account`]).
//!
//! A request that cannot be published (the broker is away) is dropped with a warning: the
//! hole's next retry asks again, and a hole never asked for still waits for the grace.

pub mod config;

use std::time::SystemTime;

use phygate_proto::downlink::CommandMessage;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::control::mqtt::Link;
use crate::ingest::GatewayKey;
use crate::metrics::Shared;
pub use config::RepairConfig;

/// Requests waiting to be published; when full the writer drops the newest (counted, and asked
/// again on the hole's retry): the writer never waits on the broker.
pub const QUEUE: usize = 1024;

/// Ranges of one gateway to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub key: GatewayKey,
    pub ranges: Vec<[u64; 2]>,
}

/// The writer's end.
pub type Requests = mpsc::Sender<Request>;

/// One replay command on its way.
struct Ask {
    key: GatewayKey,
    from: u64,
    to: u64,
    id: String,
    topic: String,
    body: Vec<u8>,
}

pub struct Repairer {
    config: RepairConfig,
    rx: mpsc::Receiver<Request>,
    stats: Shared,
    stopped: watch::Receiver<bool>,
    link: Option<Link>,
}

impl Repairer {
    pub fn new(
        config: RepairConfig,
        stats: Shared,
        stopped: watch::Receiver<bool>,
    ) -> (Repairer, Requests) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (
            Repairer {
                config,
                rx,
                stats,
                stopped,
                link: None,
            },
            tx,
        )
    }

    pub async fn run(mut self) {
        loop {
            let first = tokio::select! {
                // Cancel-safe: mpsc's recv loses nothing when dropped.
                r = self.rx.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
                _ = self.stopped.changed() => break,
            };
            // Everything waiting goes out together: after a broker's failover every store of
            // the fleet has a hole at once.
            let mut requests = vec![first];
            while requests.len() < QUEUE {
                match self.rx.try_recv() {
                    Ok(r) => requests.push(r),
                    Err(_) => break,
                }
            }
            let asks: Vec<Ask> = requests
                .iter()
                .flat_map(|r| r.ranges.iter().map(|range| self.ask(&r.key, *range)))
                .collect();
            for window in asks.chunks(crate::control::mqtt::PUBLISH_WINDOW) {
                self.publish(window).await;
            }
        }
        if let Some(link) = self.link.take() {
            link.close().await;
        }
    }

    /// The replay command for `from..=to` of gateway `key`, with a fresh id.
    fn ask(&self, key: &GatewayKey, [from, to]: [u64; 2]) -> Ask {
        let id = format!("replay-{:016x}", fastrand::u64(..));
        let expires_at =
            phygate_proto::envelope::format_time(SystemTime::now() + self.config.expires);
        let message = CommandMessage::replay(id.clone(), expires_at, from, to);
        Ask {
            key: key.clone(),
            from,
            to,
            id,
            topic: phygate_proto::topic::commands(&key.tenant, &key.store),
            body: serde_json::to_vec(&message).expect("a command serialises"),
        }
    }

    /// Publishes `asks` together (their PUBACKs awaited at once); on a failure connects again
    /// and tries once more (a repeat is harmless: the store answers a replay twice, HQ drops
    /// the duplicates).
    async fn publish(&mut self, asks: &[Ask]) {
        let messages: Vec<(&str, &[u8])> = asks
            .iter()
            .map(|a| (a.topic.as_str(), a.body.as_slice()))
            .collect();
        for attempt in 0..2 {
            let link = match self.link.as_mut() {
                Some(link) => link,
                None => match Link::connect(&self.config.broker, &self.config.security).await {
                    Ok(link) => self.link.insert(link),
                    Err(e) => {
                        warn!(error = %e, broker = %self.config.broker, "cannot reach the broker for replay requests; the holes are asked for again later");
                        self.count(asks.len(), false);
                        return;
                    }
                },
            };
            match link.publish_all(&messages, false).await {
                Ok(()) => {
                    for a in asks {
                        info!(tenant = %a.key.tenant, store = %a.key.store, gateway = %a.key.gateway, from = a.from, to = a.to, id = %a.id, "replay requested");
                    }
                    self.count(asks.len(), true);
                    return;
                }
                Err(e) => {
                    debug!(error = %e, attempt, "replay requests not acknowledged; connecting again");
                    self.link = None;
                }
            }
        }
        for a in asks {
            warn!(tenant = %a.key.tenant, store = %a.key.store, from = a.from, to = a.to, "replay request not published; asked again later");
        }
        self.count(asks.len(), false);
    }

    fn count(&self, n: usize, published: bool) {
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        if published {
            s.replays_requested += n as u64;
        } else {
            s.replays_failed += n as u64;
        }
    }
}
