//! The JetStream input: the fleet's events from a NATS cluster, for HQs whose broker is NATS
//! (its MQTT listener has no `$share`, so the workers cannot split an MQTT subscription).
//!
//! - **The stream** captures `phygate.v1.*.*.events` and `phygate.v1.*.*.status`, the subjects
//!   nats-server gives the stores' MQTT events and status topics (the status for its `seq`
//!   report, `crate::seq`), with `replicas` copies (3: one node of three may die). It is
//!   created if missing. Work-queue retention: a message leaves the stream once acked, that is
//!   once it is in the journey store, so the stream holds exactly HQ's backlog.
//! - **One durable pull consumer** (`durable`), the same name in every phygate-hq: the workers
//!   pull from it in turn, and the server hands each message to one of them. A message not
//!   acked within `ack_wait` (a worker killed) goes to another.
//! - **Ack after commit.** Each message goes to the writer with a receipt, exactly as the MQTT
//!   input's; it is acked once its receipt is settled (the commit is durable), NAKed (sent
//!   again at once) if the receipt is dropped (the commit failed). Unlike an MQTT packet id, a
//!   JetStream ack names the message itself, so receipts outlive a reconnect and acks may go
//!   in any order.
//! - **Flow control**: `max_ack_pending` caps the messages out to all workers and not acked.
//!
//! So every event is stored at least once, and de-duplication by (gateway, id) makes it once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, AckKind};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::input::JetStreamConfig;
use crate::writer::Delivery;

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A message handed to the writer, resolving with the message once its receipt is settled
/// (`Ok`) or dropped (`Err`).
type Settling = Pin<
    Box<dyn Future<Output = (Result<(), oneshot::error::RecvError>, jetstream::Message)> + Send>,
>;

pub struct JetStreamInput {
    config: JetStreamConfig,
    writer: Option<flume::Sender<Delivery>>,
    pending: FuturesUnordered<Settling>,
    shutdown: watch::Receiver<bool>,
    /// Up while attached and the NATS connection is up: the writer records its beat only then.
    connected: Arc<AtomicBool>,
}

/// Why one attachment to the consumer ended.
enum Ended {
    Shutdown,
    Failed(String),
}

impl JetStreamInput {
    pub fn new(
        config: &JetStreamConfig,
        writer: flume::Sender<Delivery>,
        connected: Arc<AtomicBool>,
        shutdown: watch::Receiver<bool>,
    ) -> JetStreamInput {
        JetStreamInput {
            config: config.clone(),
            writer: Some(writer),
            pending: FuturesUnordered::new(),
            shutdown,
            connected,
        }
    }

    pub async fn run(mut self) {
        let Some(client) = self.connect().await else {
            debug!("JetStream input stopped before it connected");
            return;
        };
        let js = jetstream::new(client.clone());
        let mut delay = BACKOFF_MIN;
        loop {
            let ended = match attach(&self.config, &js).await {
                Ok(consumer) => {
                    delay = BACKOFF_MIN;
                    self.connected.store(true, Ordering::Relaxed);
                    let ended = self.consume(&consumer).await;
                    self.connected.store(false, Ordering::Relaxed);
                    ended
                }
                Err(e) => Ended::Failed(e),
            };
            match ended {
                Ended::Shutdown => break,
                Ended::Failed(e) => {
                    warn!(error = %e, retry_in = ?delay, "JetStream consumer unavailable");
                    if self.pause(delay).await {
                        break;
                    }
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        }
        self.shut_down(&client).await;
    }

    /// The first connection, tried until it succeeds or shutdown. Each failure is logged with
    /// its cause (a refused login, a certificate the server rejected): async-nats's own retry
    /// of a first connect would report only the kind of error. Once connected, the client
    /// reconnects by itself, to any server of the list and to those the cluster announces.
    async fn connect(&mut self) -> Option<async_nats::Client> {
        let mut delay = BACKOFF_MIN;
        loop {
            let link = self.connected.clone();
            let options = async_nats::ConnectOptions::new()
                .name("phygate-hq")
                .max_reconnects(None)
                .event_callback(move |e| {
                    let link = link.clone();
                    async move {
                        match e {
                            async_nats::Event::Connected => link.store(true, Ordering::Relaxed),
                            async_nats::Event::Disconnected => link.store(false, Ordering::Relaxed),
                            // A reconnect refused (a login revoked, a certificate expired).
                            async_nats::Event::ClientError(_)
                            | async_nats::Event::ServerError(_) => {
                                return warn!(event = %e, "NATS connection")
                            }
                            _ => {}
                        }
                        info!(event = %e, "NATS connection")
                    }
                });
            let options = match self.config.security.apply(options) {
                Ok(o) => o,
                Err(e) => {
                    error!(error = %e, "NATS client could not start");
                    return None;
                }
            };
            tokio::select! {
                // Dropping an unfinished connect leaves nothing behind.
                connected = options.connect(self.config.servers.clone()) => match connected {
                    Ok(client) => return Some(client),
                    Err(e) => warn!(
                        error = %e,
                        hint = hint(e.kind()),
                        security = %self.config.security.describe(),
                        retry_in = ?delay,
                        "could not connect to NATS"
                    ),
                },
                _ = self.shutdown.changed() => return None,
            }
            if self.pause(delay).await {
                return None;
            }
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }

    /// Pulls messages to the writer and acks each once settled, until shutdown or the pull
    /// fails for good.
    async fn consume(&mut self, consumer: &jetstream::consumer::Consumer<pull::Config>) -> Ended {
        let mut messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => return Ended::Failed(format!("pull: {e}")),
        };
        loop {
            tokio::select! {
                // Cancel-safe: the pull stream keeps what it has buffered.
                next = messages.next() => match next {
                    Some(Ok(message)) => self.deliver(message).await,
                    // Missed heartbeats, a leadership change while a node dies: the pull is
                    // made anew on the consumer's current leader instead of trusting the old
                    // stream to ask again (a CI run saw both workers store nothing more after
                    // a node kill). Nothing is lost: unacked messages come back after ack_wait,
                    // and what the writer holds is still acked as it settles.
                    Some(Err(e)) => return Ended::Failed(format!("pull interrupted: {e}")),
                    None => return Ended::Failed("the pull stream ended".into()),
                },
                // Cancel-safe: an unfinished future stays in the set.
                Some((settled, message)) = self.pending.next(), if !self.pending.is_empty() => {
                    settle(settled, &message).await;
                }
                _ = self.shutdown.changed() => return Ended::Shutdown,
            }
        }
    }

    async fn deliver(&mut self, message: jetstream::Message) {
        let Some(writer) = &self.writer else { return };
        let (done, settled) = oneshot::channel();
        let delivery = Delivery {
            topic: phygate_proto::topic::topic_of_nats_subject(message.subject.as_str()),
            payload: message.payload.to_vec(),
            done,
        };
        // The writer's queue holds `max_ack_pending` messages and more: waiting here when it
        // is full only slows the pull. A closed queue (shutdown) drops the receipt.
        let _ = writer.send_async(delivery).await;
        self.pending
            .push(Box::pin(async move { (settled.await, message) }));
    }

    async fn pause(&mut self, d: Duration) -> bool {
        // In [d/2, d]: workers do not come back in step.
        let d = d.mul_f64(0.5 + fastrand::f64() / 2.0);
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = self.shutdown.changed() => true,
        }
    }

    /// Lets the writer commit what it was given (its queue closes when this input's sender
    /// drops), acks all of it, and flushes the acks out: nothing committed is sent again.
    async fn shut_down(&mut self, client: &async_nats::Client) {
        self.writer = None;
        while let Some((settled, message)) = self.pending.next().await {
            settle(settled, &message).await;
        }
        if let Err(e) = client.flush().await {
            warn!(error = %e, "the last acks may not have reached NATS; those messages come again");
        }
        debug!("JetStream input stopped");
    }
}

/// What an engineer should look at for a failed connect, by its kind.
fn hint(kind: async_nats::ConnectErrorKind) -> &'static str {
    use async_nats::ConnectErrorKind as Kind;
    match kind {
        Kind::AuthorizationViolation | Kind::Authentication => {
            "the server refused the login: check [input]'s creds_file, nkey_file, username and \
             password, or token against the server's authorization"
        }
        Kind::Tls => "TLS failed: check ca_file, cert_file and key_file",
        // A server that verifies clients closes the TLS session of one without a certificate
        // it trusts: the client sees that as an I/O error after the handshake.
        Kind::Io => {
            "the connection failed or the server closed it (for a TLS server that \
             verifies clients: check cert_file and key_file)"
        }
        _ => "check [input] servers and that the servers run",
    }
}

/// The stream (created if missing) and the shared durable consumer.
async fn attach(
    c: &JetStreamConfig,
    js: &jetstream::Context,
) -> Result<jetstream::consumer::Consumer<pull::Config>, String> {
    let subjects: Vec<String> = vec![
        phygate_proto::topic::ALL_EVENTS_SUBJECT.into(),
        phygate_proto::topic::ALL_STATUS_SUBJECT.into(),
    ];
    let mut stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: c.stream.clone(),
            subjects: subjects.clone(),
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            storage: jetstream::stream::StorageType::File,
            num_replicas: c.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("stream {}: {e}", c.stream))?;
    // A stream made by an older phygate-hq captures the events alone: add the status subjects
    // (their `seq` report shows the holes at either end of what HQ received).
    let config = &stream.cached_info().config;
    if !subjects.iter().all(|s| config.subjects.contains(s)) {
        let mut config = config.clone();
        for s in subjects {
            if !config.subjects.contains(&s) {
                config.subjects.push(s);
            }
        }
        js.update_stream(&config)
            .await
            .map_err(|e| format!("stream {}: adding the status subjects: {e}", c.stream))?;
        stream = js
            .get_stream(&c.stream)
            .await
            .map_err(|e| format!("stream {}: {e}", c.stream))?;
        info!(stream = %c.stream, subjects = ?config.subjects, "stream now captures the stores' status too");
    }
    let consumer = stream
        .get_or_create_consumer(
            &c.durable,
            pull::Config {
                durable_name: Some(c.durable.clone()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: c.ack_wait,
                max_ack_pending: c.max_ack_pending as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer {}: {e}", c.durable))?;
    info!(stream = %c.stream, durable = %c.durable, "consuming from JetStream");
    Ok(consumer)
}

/// Acks a committed message; NAKs one whose commit failed, so it comes again at once. A lost
/// ack only makes the message come again after `ack_wait`: the store drops the repeat.
async fn settle(settled: Result<(), oneshot::error::RecvError>, message: &jetstream::Message) {
    let result = match settled {
        Ok(()) => message.ack().await,
        Err(_) => {
            warn!(subject = %message.subject, "batch not committed; asking JetStream to send it again");
            message.ack_with(AckKind::Nak(None)).await
        }
    };
    if let Err(e) = result {
        warn!(error = %e, "could not send an ack; the message will come again");
    }
}
