//! Spine benchmark: phygate's own paths against bare library baselines, on the same machine, in
//! the same run, with the same rows. Prints ratios (absolute numbers vary on a shared machine).
//!
//! Fair by construction: both sides run `synchronous = FULL` in WAL mode, write the same rows
//! (the same seq, id, priority, time and JSON body bytes), use the same batch sizes (ingest:
//! transactions of 500 and of 2,048 rows against phygate's groups of at most 2,048; drain: the
//! same batches of up to 500 events and the same in-flight window), and run long enough
//! (200,000 events each by default) for start-up costs not to count. On a machine shared with
//! other work the load drifts and comes in bursts, so each side runs in rounds (6 by default,
//! `PHYGATE_BENCH_ROUNDS`) in alternating order, A B C then C B A: a drift or a burst falls on
//! every side alike.
//!
//! 1. Durable ingest: events submitted to the outbox by a source task (queue, group commit of
//!    at most 2,048 per transaction, seq given and spliced into each body, totals and seq in
//!    `meta`, each submitter answered) vs a bare rusqlite insert of the same rows in
//!    transactions of 500 and of 2,048 rows. What each side is handed: the serialised events.
//!    The bare loop gets the finished rows; phygate gets each event as its source hands it to
//!    the outbox, serialised on the source's own thread (`OutboxHandle::prepare`: JSON, id
//!    and time, all but the seq). Serialising is the same work for both (the bare rows are
//!    made by the same code), so it is in neither figure; it is measured on its own and
//!    printed under them, as the cost a source pays per event.
//! 2. Backlog drain: buffered events published by the uplink to a local mosquitto until every
//!    batch is acknowledged (the outbox's depth gauge is 0, looked at every millisecond), vs
//!    two bare drains with the same batches and in-flight window: (a) a bare rumqttc QoS 1
//!    publisher handed the batch payloads in memory (issue 14's baseline), and (b) the same
//!    publisher fed by a bare rusqlite SELECT of the rows on a thread of its own. phygate
//!    reads its batches from the file inside its timed run: work every durable drain does,
//!    which (a) leaves out and (b) does too. So (b) is phygate's own overhead, and (a) also
//!    counts the reading, which on two cores shared with mosquitto competes with the MQTT
//!    work. The fetch figure printed before the drain is what reading costs the outbox alone.
//!
//! Run: `cargo bench --bench spine` (needs mosquitto installed). Sizes: PHYGATE_BENCH_INGEST,
//! PHYGATE_BENCH_BACKLOG (both 200,000 by default), PHYGATE_BENCH_ROUNDS.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use phygate::config::Config;
use phygate::event::{Event, EventData, Origin, Prepared, QrScanned};
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

/// Each side's events in this many rounds, run in alternating order (A B C, C B A, …): a load
/// that drifts or comes in bursts during the run falls on every side alike.
fn rounds(n: usize) -> Vec<std::ops::Range<usize>> {
    let k = env_usize("PHYGATE_BENCH_ROUNDS", 6).clamp(2, n.max(2));
    (0..k).map(|r| r * n / k..(r + 1) * n / k).collect()
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
    let rows: Vec<BareRow> = events
        .iter()
        .enumerate()
        .map(|(i, e)| bare_row(e, i as u64 + 1))
        .collect();
    // Each source serialises its events on its own thread before they queue: not the outbox's
    // work, and not the bare loop's either (its rows come finished). Timed here on its own.
    let start = Instant::now();
    let mut events: Vec<Prepared> = events.iter().map(|e| handle.prepare(e)).collect();
    let prepare_s = start.elapsed().as_secs_f64();
    let rows = std::sync::Arc::new(rows);
    let bare_dir = tempfile::tempdir().unwrap();
    let mut bare = [
        (500, bare_db(bare_dir.path(), 500), 0.0),
        (2048, bare_db(bare_dir.path(), 2048), 0.0),
    ];
    let mut committed = handle.committed();
    let mut phygate_s = 0.0;
    // Rounds in alternating order, A B C then C B A: phygate, bare 500, bare 2,048.
    for (round, range) in rounds(n).into_iter().enumerate() {
        let mut order = [None, Some(0), Some(1)];
        if round % 2 == 1 {
            order.reverse();
        }
        for side in order {
            if let Some(i) = side {
                let (batch, conn, s) = &mut bare[i];
                *s += bare_round(conn, &rows, range.clone(), *batch).await;
                continue;
            }
            // phygate: a source submitting as fast as it can; accepted = committed.
            let round_events: Vec<Prepared> = events.drain(..range.len()).collect();
            let target = range.end as u64;
            let start = Instant::now();
            let producer = {
                let handle = handle.clone();
                tokio::spawn(async move {
                    for e in round_events {
                        handle.submit_prepared(e, Vec::new()).await.unwrap();
                    }
                })
            };
            while *committed.borrow_and_update() < target {
                committed.changed().await.unwrap();
            }
            phygate_s += start.elapsed().as_secs_f64();
            producer.await.unwrap();
        }
    }

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

    println!(
        "durable ingest (WAL, synchronous=FULL, {n} events each, in {} rounds A B C, C B A, …)",
        rounds(n).len()
    );
    println!(
        "  phygate outbox : {:>9.0} events/s (groups of up to 2048)",
        n as f64 / phygate_s
    );
    for (batch, _, s) in &bare {
        println!(
            "  bare rusqlite  : {:>9.0} events/s ({batch}-row transactions), ratio {:.2}",
            n as f64 / s,
            s / phygate_s
        );
    }
    println!("  idle append    : {idle_ms:>9.2} ms per event, one transaction each");
    println!(
        "  serialising    : {:>9.0} events/s on one thread ({:.2} µs per event; the source's \
         work, before either side above)\n",
        n as f64 / prepare_s,
        prepare_s * 1e6 / n as f64
    );
}

/// Inserts `rows[range]` in transactions of `batch` on a blocking thread; returns the seconds.
async fn bare_round(
    conn: &mut Option<rusqlite::Connection>,
    rows: &std::sync::Arc<Vec<BareRow>>,
    range: std::ops::Range<usize>,
    batch: usize,
) -> f64 {
    let (mut c, rows) = (conn.take().unwrap(), rows.clone());
    let (c, s) = tokio::task::spawn_blocking(move || {
        let s = bare_insert(&mut c, &rows[range], batch);
        (c, s)
    })
    .await
    .unwrap();
    *conn = Some(c);
    s
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

/// A fresh database with the outbox's schema, WAL and synchronous FULL.
fn bare_db(dir: &Path, batch: usize) -> Option<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(dir.join(format!("bare-{batch}.db"))).unwrap();
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .unwrap();
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE outbox (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, \
         priority INTEGER NOT NULL, created_ms INTEGER NOT NULL, body TEXT NOT NULL);",
    )
    .unwrap();
    Some(conn)
}

/// Inserts `rows` in transactions of `batch`; returns the seconds.
fn bare_insert(conn: &mut rusqlite::Connection, rows: &[BareRow], batch: usize) -> f64 {
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
    // The bare reader's copy of the rows: phygate may remove its acknowledged rows before the
    // bare side of the same round reads them.
    let bare_file = dir.path().join("bare-drain.db");
    drop(bare_db_at(&bare_file));
    let (mut phygate_s, mut memory_s, mut read_s, mut count) = (0.0, 0.0, 0.0, 0);
    // Rounds in alternating order: phygate, bare from memory, bare from the file; then back.
    for (round, range) in rounds(n).into_iter().enumerate() {
        let (first, last) = (range.start as u64 + 1, range.end as u64);
        let batches = tokio::task::block_in_place(|| fill(&cfg, range.clone(), round == 0));
        copy_rows(&cfg.outbox.path, &bare_file, first, last);
        count += batches.len();
        let mut order = [0, 1, 2];
        if round % 2 == 1 {
            order.reverse();
        }
        let mut batches = Some(batches);
        for side in order {
            match side {
                0 => phygate_s += drain_round(&cfg, range.len()).await,
                1 => {
                    let batches = batches.take().unwrap();
                    memory_s += bare_publish(&cfg, broker.port, batches, round).await;
                }
                _ => read_s += bare_read_publish(&cfg, broker.port, &bare_file, first, last).await,
            }
        }
    }
    broker.stop(false);

    println!(
        "backlog drain to local mosquitto (synchronous=FULL, {count} batches of up to {} events, \
         {} in flight, in {} rounds A B C, C B A, …)",
        cfg.uplink.batch_max_events,
        cfg.uplink.inflight,
        rounds(n).len()
    );
    println!(
        "  phygate uplink : {:>9.0} events/s (read from the outbox, published and acked, \
         outbox depth 0)",
        n as f64 / phygate_s
    );
    println!(
        "  bare rumqttc   : {:>9.0} events/s (batches handed in memory; published and acked), \
         ratio {:.2}",
        n as f64 / memory_s,
        memory_s / phygate_s
    );
    println!(
        "  bare read+pub  : {:>9.0} events/s (the same batches read by a bare rusqlite SELECT \
         on a thread; published and acked), ratio {:.2}",
        n as f64 / read_s,
        read_s / phygate_s
    );
}

/// A fresh database at `path` with the outbox's schema, WAL and synchronous FULL.
fn bare_db_at(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .unwrap();
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         CREATE TABLE outbox (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, \
         priority INTEGER NOT NULL, created_ms INTEGER NOT NULL, body TEXT NOT NULL);",
    )
    .unwrap();
    conn
}

/// Copies rows `first..=last` of the outbox file into the bare reader's file.
fn copy_rows(outbox: &Path, bare: &Path, first: u64, last: u64) {
    let conn = rusqlite::Connection::open(bare).unwrap();
    conn.execute("ATTACH DATABASE ?1 AS phygate", [outbox.to_str().unwrap()])
        .unwrap();
    conn.execute(
        "INSERT INTO outbox SELECT seq, id, priority, created_ms, body FROM phygate.outbox \
         WHERE seq BETWEEN ?1 AND ?2",
        [first as i64, last as i64],
    )
    .unwrap();
}

/// A bare drain of rows `first..=last` from `file`: a blocking thread reads them with one
/// SELECT into batches (the uplink's limits: events and bytes) and hands them to a bare
/// rumqttc QoS 1 publisher through a channel as deep as the in-flight window; returns the
/// seconds until every PUBACK.
async fn bare_read_publish(cfg: &Config, port: u16, file: &Path, first: u64, last: u64) -> f64 {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(cfg.uplink.inflight);
    let (max_events, max_bytes) = (cfg.uplink.batch_max_events, cfg.uplink.batch_max_bytes);
    let file = file.to_owned();
    let (client, mut eventloop) = bare_client(cfg, port, "bench-bare-read");
    let start = Instant::now();
    let reader = tokio::task::spawn_blocking(move || {
        let conn = rusqlite::Connection::open(file).unwrap();
        let mut q = conn
            .prepare("SELECT body FROM outbox WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq")
            .unwrap();
        let mut rows = q.query([first as i64, last as i64]).unwrap();
        let mut sent = 0;
        let mut payload = Vec::new();
        let mut events = 0;
        while let Some(row) = rows.next().unwrap() {
            let body = row.get_ref(0).unwrap().as_bytes().unwrap();
            if events > 0 && (events == max_events || payload.len() + body.len() + 2 > max_bytes) {
                payload.push(b']');
                tx.blocking_send(std::mem::take(&mut payload)).unwrap();
                sent += 1;
                events = 0;
            }
            if events == 0 {
                payload = Vec::with_capacity(max_bytes.min(1 << 20));
                payload.push(b'[');
            } else {
                payload.push(b',');
            }
            payload.extend_from_slice(body);
            events += 1;
        }
        if events > 0 {
            payload.push(b']');
            tx.blocking_send(payload).unwrap();
            sent += 1;
        }
        sent
    });
    let publisher = tokio::spawn(async move {
        while let Some(payload) = rx.recv().await {
            client
                .publish(BENCH_TOPIC, QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    // The number of batches is known once the reader is done; until then, every PUBACK counts.
    let mut reader = reader;
    let mut total = None;
    while total.is_none_or(|t| acked < t) {
        tokio::select! {
            // Cancel-safe: rumqttc keeps partial reads in the event loop's buffers.
            ev = eventloop.poll() => {
                if let MqttEvent::Incoming(Packet::PubAck(_)) = ev.unwrap() {
                    acked += 1;
                }
            }
            sent = &mut reader, if total.is_none() => total = Some(sent.unwrap()),
        }
    }
    let s = start.elapsed().as_secs_f64();
    let client = publisher.await.unwrap();
    disconnect(client, eventloop).await;
    s
}

/// Buffers events `range` straight into the outbox file, as after a long outage, and returns
/// the batches the uplink will send (for the bare publisher). With `report`, also prints what
/// reading and acknowledging them costs the outbox alone.
fn fill(cfg: &Config, range: std::ops::Range<usize>, report: bool) -> Vec<Vec<u8>> {
    let open = |path: &Path| {
        Store::open(
            path,
            cfg.outbox.synchronous,
            origin(),
            cfg.outbox.max_bytes,
            cfg.outbox.max_age,
        )
        .unwrap()
        .store
    };
    let mut store = open(&cfg.outbox.path);
    let events: Vec<usize> = range.collect();
    for chunk in events.chunks(5000) {
        let events: Vec<Event> = chunk.iter().map(|i| event(*i)).collect();
        store.commit_group(&events, &[]).unwrap();
    }
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
    if !report {
        return batches;
    }
    println!(
        "outbox alone: fetch every batch {:.0} events/s",
        events.len() as f64 / fetch_s
    );
    let copy = cfg.outbox.path.with_file_name("copy.db");
    drop(store);
    std::fs::copy(&cfg.outbox.path, &copy).unwrap();
    let mut c = open(&copy);
    let (first, last) = (events[0] as u64 + 1, *events.last().unwrap() as u64 + 1);
    let start = Instant::now();
    for from in (first..=last).step_by(500) {
        c.commit_group(&[], &[(from, (from + 499).min(last))])
            .unwrap();
    }
    println!(
        "outbox alone: ack every batch {:.0} events/s",
        events.len() as f64 / start.elapsed().as_secs_f64()
    );
    batches
}

/// The uplink drains the outbox until it is empty; returns the seconds.
async fn drain_round(cfg: &Config, n: usize) -> f64 {
    let (outbox, handle) = Outbox::open(&cfg.outbox, origin()).unwrap();
    let thread = outbox.spawn().unwrap();
    assert_eq!(handle.stats().await.unwrap().depth, n as u64);
    // The open's integrity check reads the whole file once on its own thread: start-up's cost
    // (the daemon's, bounded by the backlog bench), not the drain's, and the bare side has none.
    while handle.stats().await.unwrap().checking {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stop = phygate::shutdown::Shutdown::new();
    let uplink =
        phygate::uplink::Uplink::new(cfg.uplink_settings(), handle.clone(), stop.clone()).unwrap();
    let start = Instant::now();
    let task = tokio::spawn(uplink.run());
    loop {
        // The depth gauge the outbox sets after each commit: watching it costs the outbox
        // thread nothing (a stats request per poll woke it a thousand times a second).
        if phygate::metrics::OUTBOX_DEPTH.get() == 0 && handle.stats().await.unwrap().depth == 0 {
            break;
        }
        // The timer's resolution: the end is seen 0.5 ms late on average (5 ms polls were
        // ~2% of a half-drain, all against phygate).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let s = start.elapsed().as_secs_f64();
    stop.stop();
    task.await.unwrap().unwrap();
    drop(handle);
    tokio::task::spawn_blocking(move || thread.join().unwrap())
        .await
        .unwrap();
    s
}

/// A bare rumqttc QoS 1 publisher sends `batches` with the uplink's in-flight window, until
/// every PUBACK; returns the seconds.
async fn bare_publish(cfg: &Config, port: u16, batches: Vec<Vec<u8>>, round: usize) -> f64 {
    let (client, mut eventloop) = bare_client(cfg, port, &format!("bench-bare-{round}"));
    let count = batches.len();
    let start = Instant::now();
    let publisher = tokio::spawn(async move {
        for payload in batches {
            client
                .publish(BENCH_TOPIC, QoS::AtLeastOnce, false, payload)
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
    let s = start.elapsed().as_secs_f64();
    let client = publisher.await.unwrap();
    disconnect(client, eventloop).await;
    s
}

/// Where the bare publishers send: the uplink's topic shape.
const BENCH_TOPIC: &str = "phygate/v1/bench/bench-store/events";

/// A bare rumqttc client with the uplink's in-flight window and packet limits.
fn bare_client(cfg: &Config, port: u16, id: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_inflight(cfg.uplink.inflight as u16);
    options.set_max_packet_size(1 << 20, 16 << 20);
    AsyncClient::new(options, cfg.uplink.inflight)
}

/// Disconnects a bare client, best effort (after its timed part).
async fn disconnect(client: AsyncClient, mut eventloop: rumqttc::EventLoop) {
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
}
