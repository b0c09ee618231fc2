//! The wiring, top to bottom as the flow goes, and the shutdown in the same order: the
//! input (MQTT or JetStream) stops taking messages (acknowledging what was committed), its
//! sender drops, the
//! writer commits what it holds and ends. The sinks stop at the same signal, each once its
//! request out (if any) is answered.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tracing::info;

use crate::config::Config;
use crate::consumer::Consumer;
use crate::input::Input;
use crate::jetstream::JetStreamInput;
use crate::metrics::Stats;
use crate::sink::runner::SinkRunner;
use crate::writer::{Member, Writer};

pub async fn run(config: Config) -> anyhow::Result<()> {
    let stats = Arc::new(std::sync::Mutex::new(Stats::default()));
    // Holds what the broker may have in flight to us, twice over (a reconnect's redeliveries
    // while the old ones are still queued): the consumer rarely waits on it.
    let (tx, rx) = flume::bounded(2 * config.input.in_flight());
    // Opening the store and loading the accounting block (PostgreSQL's client even runs a
    // runtime of its own, which tokio refuses on its workers): off the async workers.
    let (store_config, grace, writer_stats) =
        (config.store.clone(), config.loss_grace, stats.clone());
    let connected = Arc::new(AtomicBool::new(false));
    let member = Member {
        id: config.input.member_id(),
        holds: config.input.holds(),
        connected: connected.clone(),
    };
    let (stop, stopped) = watch::channel(false);
    // Replay requests for holes: the writer picks them, this task publishes them.
    let (repairer, repair) = match &config.repair {
        Some(r) => {
            let (repairer, requests) =
                crate::repair::Repairer::new(r.clone(), stats.clone(), stopped.clone());
            info!(broker = %r.broker, security = %r.security.describe(), after_ms = r.rule.after_ms, "replay requests on");
            (Some(repairer), Some((r.rule, requests)))
        }
        None => (None, None),
    };
    let writer = tokio::task::spawn_blocking(move || {
        let store = crate::store::open_journey(&store_config)
            .with_context(|| format!("opening the journey store {}", store_config.describe()))?;
        let writer = Writer::new(store, rx, grace, writer_stats, member)
            .context("loading the seq accounting")?;
        anyhow::Ok(match repair {
            Some((rule, requests)) => writer.with_repair(rule, requests),
            None => writer,
        })
    })
    .await
    .context("opening the journey store")??;
    info!(store = %config.store.describe(), "journey store open");
    let writer = std::thread::Builder::new()
        .name("writer".into())
        .spawn(move || writer.run())
        .context("starting the writer thread")?;
    let repairer = repairer.map(|r| tokio::spawn(r.run()));
    let status = config.status.map(|listen| {
        let fleet = crate::fleet::Source::of(&config);
        tokio::spawn(crate::status::serve(
            listen,
            stats.clone(),
            fleet,
            stopped.clone(),
        ))
    });
    let consumer = match &config.input {
        Input::Mqtt(m) => {
            info!(broker = %format!("{}:{}", m.host, m.port), security = %m.security.describe(), "MQTT input");
            let consumer = Consumer::new(m, tx, connected, stopped.clone())
                .context("setting up the MQTT input's connection")?;
            tokio::spawn(consumer.run())
        }
        Input::JetStream(j) => {
            let servers: Vec<String> = j
                .servers
                .iter()
                .map(|s| format!("{}://{}:{}", s.scheme(), s.host(), s.port()))
                .collect();
            info!(servers = %servers.join(","), security = %j.security.describe(), "JetStream input");
            tokio::spawn(JetStreamInput::new(j, tx, connected, stopped.clone()).run())
        }
    };
    // Each sink reads the store through its own connection (WAL: readers do not block the
    // writer), at its own pace: a throttled engine slows only its sink. With PostgreSQL, the
    // connection also holds the sink's claim: one consumer of the group drives it at a time.
    let mut sinks = Vec::new();
    for sink in &config.sinks {
        let store_config = config.store.clone();
        let ledger = tokio::task::spawn_blocking(move || crate::store::open_ledger(&store_config))
            .await
            .context("opening the journey store")?
            .with_context(|| format!("opening the journey store for sink {}", sink.name))?;
        let runner = SinkRunner::new(sink, ledger, stats.clone(), stopped.clone())?;
        info!(sink = %sink.name, kind = ?sink.kind, url = %sink.url, "sink configured");
        sinks.push(tokio::spawn(runner.run()));
    }

    shutdown_signal().await;
    info!("stopping");
    let _ = stop.send(true);
    consumer.await.context("consumer task")?;
    for sink in sinks {
        sink.await.context("sink task")??;
    }
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .context("writer thread")?
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?;
    if let Some(repairer) = repairer {
        repairer.await.context("repair task")?;
    }
    if let Some(status) = status {
        status
            .await
            .context("status task")?
            .context("status endpoint")?;
    }
    info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
