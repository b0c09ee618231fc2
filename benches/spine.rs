//! Spine benchmark: phygate's own paths against bare library baselines, on the same machine, in
//! the same run, with the same rows. Prints ratios (absolute numbers vary on a shared machine).
//!
//! Fair by construction: both sides run `synchronous = FULL` in WAL mode, write the same rows
//! (the same seq, id, priority, time and JSON body bytes), and run long enough (200,000 events by
//! default) for start-up costs not to count.
//!
//! 1. Durable ingest: events submitted to the outbox by a source task (group commit, at most
//!    2,048 per transaction) vs a bare rusqlite insert of the same rows in transactions of 500
//!    and of 2,048 rows. phygate serialises each event (JSON, UUID, time) inside the timed run;
//!    the bare loop is handed the finished bodies.
//! 2. Backlog drain: buffered events published by the uplink to a local mosquitto until every
//!    batch is acknowledged (the outbox's depth is 0), vs a bare rumqttc QoS 1 publisher sending
//!    the same batch payloads with the same in-flight window.
//!
//! Run: `cargo bench --bench spine` (needs mosquitto installed). Sizes: PHYGATE_BENCH_INGEST,
//! PHYGATE_BENCH_BACKLOG (both 200,000 by default).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use phygate::config::Config;
use phygate::event::{Event, EventData, Origin, QrScanned};
use phygate::outbox::{Outbox, Store};
use phygate::sim::broker::Mosquitto;
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn origin() -> Origin {
    Origin {
        store: "bench-store".into(),
        gateway: "bench-gw".into(),
    }
}

fn event(i: usize) -> Event {
    Event::new(
        "gate-1".into(),
        SystemTime::now(),
        EventData::QrScanned(QrScanned {
            kind: "url",
            symbology: "qr",
            aim: Some("]Q1".into()),
            payload: Some(format!("https://shop.example/p/{i:08}?utm=store")),
            kid: None,
            jti: None,
            verdict: None,
            gate_opened: None,
        }),
    )
}

fn config(dir: &Path, port: u16) -> Config {
    let text = format!(
        "tenant = \"bench\"\nstore = \"bench-store\"\ngateway = \"bench-gw\"\n\
         [outbox]\npath = \"{}\"\nmax_bytes = 4294967296\nsynchronous = \"full\"\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n",
        dir.join("phygate.db").display()
    );
    Config::parse(&text, &dir.join("bench.toml")).expect("bench config")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let n_ingest = env_usize("PHYGATE_BENCH_INGEST", 200_000);
    let n_backlog = env_usize("PHYGATE_BENCH_BACKLOG", 200_000);
    println!("phygate spine bench (ingest {n_ingest} events, backlog {n_backlog} events)\n");
    runtime.block_on(ingest(n_ingest));
    runtime.block_on(drain(n_backlog));
}

async fn ingest(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1883);
    let (outbox, handle) = Outbox::open(&cfg.outbox, origin()).unwrap();
    let thread = outbox.spawn().unwrap();
    let events: Vec<Event> = (0..n).map(event).collect();
    let mut committed = handle.committed();

    // phygate: a source submitting as fast as it can; accepted = committed.
    let start = Instant::now();
    let producer = {
        let handle = handle.clone();
        tokio::spawn(async move {
            for e in events {
                handle.submit(e).await.unwrap();
            }
        })
    };
    while *committed.borrow_and_update() < n as u64 {
        committed.changed().await.unwrap();
    }
    let phygate_s = start.elapsed().as_secs_f64();
    producer.await.unwrap();

    // One at a time, each awaited until durable: the idle-store latency.
    let idle_n = 200;
    let start = Instant::now();
    for i in 0..idle_n {
        handle.append(event(i)).await.unwrap();
    }
    let idle_ms = start.elapsed().as_secs_f64() * 1000.0 / idle_n as f64;
    drop(handle);
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();

    // Bare rusqlite: the same rows, WAL + synchronous FULL, in transactions of 500 and 2,048.
    let rows: Vec<BareRow> = (0..n).map(|i| bare_row(&event(i), i as u64 + 1)).collect();
    let rows = std::sync::Arc::new(rows);
    let mut bare = Vec::new();
    for batch in [500, 2048] {
        let rows = rows.clone();
        let s = tokio::task::spawn_blocking(move || bare_insert(&rows, batch))
            .await
            .unwrap();
        bare.push((batch, s));
    }

    println!("durable ingest (WAL, synchronous=FULL, {n} events)");
    println!("  phygate outbox : {:>9.0} events/s", n as f64 / phygate_s);
    for (batch, s) in &bare {
        println!(
            "  bare rusqlite  : {:>9.0} events/s ({batch}-row transactions), ratio {:.2}",
            n as f64 / s,
            s / phygate_s
        );
    }
    println!("  idle append    : {idle_ms:>9.2} ms per event, one transaction each\n");
}

/// A row as the outbox stores it: seq, id, priority, created_ms, body.
type BareRow = (i64, String, i64, i64, String);

fn bare_row(e: &Event, seq: u64) -> BareRow {
    let created_ms = e
        .time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    (
        seq as i64,
        e.id.hyphenated().to_string(),
        e.priority() as i64,
        created_ms,
        e.to_json(&origin(), seq),
    )
}

/// Inserts `rows` into the outbox's schema in transactions of `batch`; returns the seconds.
fn bare_insert(rows: &[BareRow], batch: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = rusqlite::Connection::open(dir.path().join("bare.db")).unwrap();
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .unwrap();
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE outbox (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, \
         priority INTEGER NOT NULL, created_ms INTEGER NOT NULL, body TEXT NOT NULL);",
    )
    .unwrap();
    let start = Instant::now();
    for chunk in rows.chunks(batch) {
        let tx = conn.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached("INSERT INTO outbox VALUES (?1, ?2, ?3, ?4, ?5)")
                .unwrap();
            for (seq, id, priority, created_ms, body) in chunk {
                st.execute(rusqlite::params![seq, id, priority, created_ms, body])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    start.elapsed().as_secs_f64()
}

async fn drain(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = match Mosquitto::start(&dir.path().join("broker")) {
        Ok(b) => b,
        Err(e) => {
            println!("backlog drain: skipped ({e})");
            return;
        }
    };
    let cfg = config(dir.path(), broker.port);

    // Buffer the backlog straight into the outbox file, as after a long outage.
    let batches = tokio::task::block_in_place(|| {
        let mut store = Store::open(
            &cfg.outbox.path,
            cfg.outbox.synchronous,
            origin(),
            cfg.outbox.max_bytes,
            cfg.outbox.max_age,
        )
        .unwrap()
        .store;
        for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
            let events: Vec<Event> = chunk.iter().map(|i| event(*i)).collect();
            store.commit_group(&events, &[]).unwrap();
        }
        // The same batches the uplink will send, for the bare publisher.
        let mut batches = Vec::new();
        let mut after = 0;
        let start = Instant::now();
        while let Some(b) = store
            .fetch_after(
                after,
                cfg.uplink.batch_max_events,
                cfg.uplink.batch_max_bytes,
            )
            .unwrap()
        {
            after = b.last;
            batches.push(b.payload);
        }
        let fetch_s = start.elapsed().as_secs_f64();
        println!(
            "outbox alone: fetch every batch {:.0} events/s",
            n as f64 / fetch_s
        );
        let copy = dir.path().join("copy.db");
        std::fs::copy(&cfg.outbox.path, &copy).unwrap();
        let mut c = Store::open(
            &copy,
            cfg.outbox.synchronous,
            origin(),
            cfg.outbox.max_bytes,
            cfg.outbox.max_age,
        )
        .unwrap()
        .store;
        let start = Instant::now();
        for first in (1..=n as u64).step_by(500) {
            c.commit_group(&[], &[(first, first + 499)]).unwrap();
        }
        println!(
            "outbox alone: ack every batch {:.0} events/s",
            n as f64 / start.elapsed().as_secs_f64()
        );
        batches
    });

    // phygate: the uplink drains until the outbox is empty.
    let (outbox, handle) = Outbox::open(&cfg.outbox, origin()).unwrap();
    let thread = outbox.spawn().unwrap();
    let stop = phygate::shutdown::Shutdown::new();
    let uplink =
        phygate::uplink::Uplink::new(cfg.uplink_settings(), handle.clone(), stop.clone()).unwrap();
    let start = Instant::now();
    let task = tokio::spawn(uplink.run());
    loop {
        if handle.stats().await.unwrap().depth == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let phygate_s = start.elapsed().as_secs_f64();
    stop.stop();
    task.await.unwrap().unwrap();
    drop(handle);
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();

    // Bare rumqttc: the same payloads, QoS 1, the same in-flight window, until every PUBACK.
    let mut options = MqttOptions::new("bench-bare", "127.0.0.1", broker.port);
    options.set_inflight(cfg.uplink.inflight as u16);
    options.set_max_packet_size(1 << 20, 16 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, cfg.uplink.inflight);
    let count = batches.len();
    let start = Instant::now();
    let publisher = tokio::spawn(async move {
        for payload in batches {
            client
                .publish(
                    "phygate/v1/bench/bench-store/events",
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    while acked < count {
        if let MqttEvent::Incoming(Packet::PubAck(_)) = eventloop.poll().await.unwrap() {
            acked += 1;
        }
    }
    let bare_s = start.elapsed().as_secs_f64();
    drop(publisher.await.unwrap());
    broker.stop(false);

    println!(
        "backlog drain to local mosquitto (synchronous=FULL, {count} batches of up to {} events, \
         {} in flight)",
        cfg.uplink.batch_max_events, cfg.uplink.inflight
    );
    println!(
        "  phygate uplink : {:>9.0} events/s (published and acked, outbox depth 0)",
        n as f64 / phygate_s
    );
    println!(
        "  bare rumqttc   : {:>9.0} events/s (published and acked)",
        n as f64 / bare_s
    );
    println!(
        "  ratio          : {:>9.2} (phygate / bare)",
        bare_s / phygate_s
    );
}
