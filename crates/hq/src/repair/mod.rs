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
            let request = tokio::select! {
                // Cancel-safe: mpsc's recv loses nothing when dropped.
                r = self.rx.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
                _ = self.stopped.changed() => break,
            };
            for range in &request.ranges {
                self.ask(&request.key, *range).await;
            }
        }
        if let Some(link) = self.link.take() {
            link.close().await;
        }
    }

    /// Publishes one replay command; on a failed publish connects again and tries once more.
    async fn ask(&mut self, key: &GatewayKey, [from, to]: [u64; 2]) {
        let id = format!("replay-{:016x}", fastrand::u64(..));
        let expires_at =
            phygate_proto::envelope::format_time(SystemTime::now() + self.config.expires);
        let message = CommandMessage::replay(id.clone(), expires_at, from, to);
        let body = serde_json::to_vec(&message).expect("a command serialises");
        let topic = phygate_proto::topic::commands(&key.tenant, &key.store);
        for attempt in 0..2 {
            let link = match self.link.as_mut() {
                Some(link) => link,
                None => match Link::connect(&self.config.broker, &self.config.security).await {
                    Ok(link) => self.link.insert(link),
                    Err(e) => {
                        warn!(error = %e, broker = %self.config.broker, "cannot reach the broker for replay requests; the holes are asked for again later");
                        self.count(false);
                        return;
                    }
                },
            };
            match link.publish(&topic, body.clone(), false).await {
                Ok(()) => {
                    info!(tenant = %key.tenant, store = %key.store, gateway = %key.gateway, from, to, id = %id, "replay requested");
                    self.count(true);
                    return;
                }
                Err(e) => {
                    debug!(error = %e, attempt, "replay request not acknowledged; connecting again");
                    self.link = None;
                }
            }
        }
        warn!(tenant = %key.tenant, store = %key.store, from, to, "replay request not published; asked again later");
        self.count(false);
    }

    fn count(&self, published: bool) {
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        if published {
            s.replays_requested += 1;
        } else {
            s.replays_failed += 1;
        }
    }
}
