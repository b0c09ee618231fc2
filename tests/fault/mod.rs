//! Fault-injection harness shared by the fault tests: a store with a scanner on a pty, a people
//! counter and a tablet skin analyzer posting over HTTP, optionally a misbehaving TCP proxy in
//! front of the broker, and the bookkeeping to say what phygate accepted and what HQ got.
//!
//! "Accepted" is defined by what the device was told or what is on disk, never by what phygate
//! logged: an HTTP post answered `202` (phygate answers it only once its events are durable),
//! or a scanned code whose event is in the outbox file or already at HQ.
#![allow(dead_code)]

pub mod proxy;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use phygate::sim::broker::free_port;
use serde_json::{json, Value};

use crate::common::{Gateway, Hq, Rig};

pub const TABLET: &str = "tablet-token-0123456789";
pub const COUNTER: &str = "counter-token-0123456789";
pub const SKIN_PATH: &str = "/v1/stations/kiosk-1/skin";
pub const COUNTS_PATH: &str = "/v1/stations/door/counts";

/// The config knobs a fault test turns; everything else is the store every fault test uses.
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    /// `[outbox]` lines besides `path` (e.g. `max_bytes = …`).
    pub outbox: String,
    /// `[uplink]` lines.
    pub uplink: String,
    /// Where the outbox lives (default: the rig's `db_path()`).
    pub db: Option<PathBuf>,
    /// Top-level lines (before the first table).
    pub top: String,
}

/// A store for fault tests: [`Rig`]'s broker, pty and binary, with its own config (ingest
/// devices, an optional proxy in front of the broker).
pub struct Store {
    pub rig: Rig,
    pub ingest_port: u16,
    pub proxy: Option<proxy::Proxy>,
}

impl Store {
    pub fn new(knobs: &Knobs) -> Store {
        Self::build(knobs, false)
    }

    /// As [`Store::new`], with phygate reaching the broker through a [`proxy::Proxy`].
    pub fn with_proxy(knobs: &Knobs) -> Store {
        Self::build(knobs, true)
    }

    fn build(knobs: &Knobs, with_proxy: bool) -> Store {
        let rig = Rig::new();
        let proxy = with_proxy.then(|| proxy::Proxy::start(rig.broker.port));
        let store = Store {
            rig,
            ingest_port: free_port().unwrap(),
            proxy,
        };
        store.configure(knobs);
        store
    }

    pub fn db(&self) -> PathBuf {
        self.rig.db_path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.rig.dir.path().join("phygate.log")
    }

    /// Writes the config: changes apply at the next (re)start of the gateway.
    pub fn configure(&self, knobs: &Knobs) {
        let mqtt_port = self.proxy.as_ref().map_or(self.rig.broker.port, |p| p.port);
        let db = knobs.db.clone().unwrap_or_else(|| self.db());
        let text = format!(
            r#"tenant = "acme"
store = "s1"
gateway = "gw1"
{top}

[[station]]
id = "gate-1"
role = "gate"

[[station]]
id = "door"
role = "gate"

[[station]]
id = "kiosk-1"
role = "kiosk"

[[device]]
kind = "scanner"
id = "scanner-1"
station = "gate-1"
port = "{scanner}"
terminator = "cr"
aim = true

[[device]]
kind = "people_counter"
id = "pc-1"
station = "door"
token = "{COUNTER}"

[[device]]
kind = "skin_http"
id = "tablet-1"
station = "kiosk-1"
token = "{TABLET}"

[ingest]
listen = "127.0.0.1:{ingest}"

[outbox]
path = "{db}"
{outbox}

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
keepalive = "5s"

[uplink]
{uplink}
"#,
            top = knobs.top,
            scanner = self.rig.scanner_link.display(),
            ingest = self.ingest_port,
            db = db.display(),
            outbox = knobs.outbox,
            uplink = knobs.uplink,
        );
        std::fs::write(&self.rig.config, text).unwrap();
    }

    pub fn start_gateway(&self) -> Gateway {
        self.rig.start_gateway()
    }

    pub fn hq(&self, name: &str) -> Hq {
        self.rig.hq(name)
    }

    /// Waits until the gateway answers on its ingest port.
    pub fn wait_listening(&self) {
        crate::common::wait_listening(self.ingest_port);
    }

    /// A tablet's diagnosis number `seq` (its `model` + `seq` is its idempotency key).
    pub fn post_skin(&self, seq: u64) -> std::io::Result<Posted> {
        let body = phygate::sim::skin::sample("TAB-F", seq).to_json();
        try_post(self.ingest_port, SKIN_PATH, TABLET, &body)
    }

    /// The counter's interval number `k` (one second each, a day ago): `in` and `out` people.
    pub fn post_counts(&self, k: u64, people_in: u64, people_out: u64) -> std::io::Result<Posted> {
        try_post(
            self.ingest_port,
            COUNTS_PATH,
            COUNTER,
            &counts_body(k, people_in, people_out),
        )
    }
}

/// A counts body for interval `k`: `[base + k s, base + k + 1 s)`, base a day ago at a whole
/// minute, so the intervals of one test run never collide and are never "too old".
pub fn counts_body(k: u64, people_in: u64, people_out: u64) -> Vec<u8> {
    use std::sync::OnceLock;
    static BASE: OnceLock<chrono::DateTime<chrono::Utc>> = OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let day_ago = chrono::Utc::now() - chrono::Duration::days(1);
        day_ago - chrono::Duration::seconds(chrono::Timelike::second(&day_ago) as i64)
    });
    let at = |s: u64| {
        (base + chrono::Duration::seconds(s as i64))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    json!({"device": "pc-1", "from": at(k), "to": at(k + 1), "in": people_in, "out": people_out})
        .to_string()
        .into_bytes()
}

/// An HTTP answer: status, and for a `202` the ids of the post's events.
#[derive(Debug, Clone)]
pub struct Posted {
    pub status: u16,
    pub ids: Vec<String>,
    pub body: Value,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
}

/// POSTs like a device on a plain socket; an error when the gateway is not there (killed,
/// restarting) or hangs up before answering.
pub fn try_post(port: u16, path: &str, token: &str, body: &[u8]) -> std::io::Result<Posted> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status: {head:?}")))?;
    let retry_after = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().to_owned())
    });
    let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let ids = body["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(Posted {
        status,
        ids,
        body,
        retry_after,
    })
}

/// One row of an outbox file, as HQ would get it.
#[derive(Debug, Clone)]
pub struct Row {
    pub seq: u64,
    pub id: String,
    pub priority: i64,
    pub body: Value,
}

/// The acknowledged watermark of an outbox file, as SQL: rows at or below it are acknowledged
/// and wait to be removed (0 in a file from before it existed).
pub const ACKED: &str = "(SELECT coalesce((SELECT value FROM meta WHERE key = 'acked'), 0))";

/// Every live row of an outbox file (above the acknowledged watermark), in seq order. Read while phygate is stopped or running (WAL
/// lets a reader in beside the writer); a missing file is an empty outbox.
pub fn outbox_rows(db: &Path) -> Vec<Row> {
    if !db.exists() {
        return Vec::new();
    }
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let mut q = conn
        .prepare(&format!(
            "SELECT seq, id, priority, body FROM outbox WHERE seq > {ACKED} ORDER BY seq"
        ))
        .unwrap();
    let rows = q
        .query_map([], |r| {
            Ok(Row {
                seq: r.get::<_, i64>(0)? as u64,
                id: r.get(1)?,
                priority: r.get(2)?,
                body: serde_json::from_str(&r.get::<_, String>(3)?).unwrap(),
            })
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

/// `PRAGMA integrity_check` of a database file: `"ok"` when healthy.
pub fn integrity(db: &Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows.join("; ")
}

/// What HQ holds, de-duplicated by `id`.
pub struct Delivered {
    /// First arrival of each id.
    pub by_id: HashMap<String, Value>,
    /// Arrivals beyond the first of an id.
    pub duplicates: usize,
}

pub fn delivered(hq: &Hq) -> Delivered {
    let all = hq.all();
    let mut by_id = HashMap::new();
    for e in &all {
        by_id
            .entry(e["id"].as_str().unwrap().to_owned())
            .or_insert_with(|| e.clone());
    }
    Delivered {
        duplicates: all.len() - by_id.len(),
        by_id,
    }
}

impl Delivered {
    /// Seqs missing between 1 and the highest seq HQ has, as `[first, last]` ranges.
    pub fn seq_gaps(&self) -> Vec<[u64; 2]> {
        let seqs: BTreeSet<u64> = self
            .by_id
            .values()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        let max = seqs.iter().next_back().copied().unwrap_or(0);
        ranges((1..=max).filter(|s| !seqs.contains(s)))
    }

    /// Seqs claimed by more than one id: a seq must name one event forever.
    pub fn seq_reuses(&self) -> Vec<u64> {
        let mut ids_of: BTreeMap<u64, usize> = BTreeMap::new();
        for e in self.by_id.values() {
            *ids_of.entry(e["seq"].as_u64().unwrap()).or_default() += 1;
        }
        ids_of
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(s, _)| s)
            .collect()
    }

    /// The ranges every `store.outbox.evicted` event announced, merged.
    pub fn announced_evictions(&self) -> Vec<[u64; 2]> {
        let mut seqs = BTreeSet::new();
        for e in self.by_id.values() {
            if e["type"] == "store.outbox.evicted" {
                for r in e["data"]["ranges"].as_array().unwrap() {
                    let (a, b) = (r[0].as_u64().unwrap(), r[1].as_u64().unwrap());
                    seqs.extend(a..=b);
                }
            }
        }
        ranges(seqs.into_iter())
    }
}

/// Sorted integers → contiguous `[first, last]` ranges.
pub fn ranges(sorted: impl Iterator<Item = u64>) -> Vec<[u64; 2]> {
    let mut out: Vec<[u64; 2]> = Vec::new();
    for s in sorted {
        match out.last_mut() {
            Some(r) if r[1] + 1 == s => r[1] = s,
            _ => out.push([s, s]),
        }
    }
    out
}

/// Waits until `f` holds, polling; `false` after `timeout`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `retry_in` of each "HQ link down" line in a phygate log, in order.
pub fn logged_retry_delays(log: &str) -> Vec<Duration> {
    strip_ansi(log)
        .lines()
        .filter(|l| l.contains("HQ link down"))
        .filter_map(|l| {
            let v = l.split("retry_in=").nth(1)?.split_whitespace().next()?;
            parse_debug_duration(v)
        })
        .collect()
}

/// A log without terminal colour codes (a log written by an older build, or to a terminal).
pub fn strip_ansi(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Parses `Duration`'s `Debug` form (`1.234567s`, `812.5ms`, `40µs`).
pub fn parse_debug_duration(s: &str) -> Option<Duration> {
    let s = s.trim_end_matches([',', '"']);
    let (num, unit) = s.split_at(s.find(|c: char| c.is_alphabetic() || c == 'µ')?);
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "ms" => n / 1e3,
        "µs" | "us" => n / 1e6,
        "ns" => n / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// A small seeded generator (xorshift64*), so a failing run can be replayed from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi` (milliseconds are enough for kill times).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// The seed from `var` when set (to replay a run), else a fresh one; printed either way.
pub fn seed(var: &str) -> u64 {
    let seed = match std::env::var(var) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{var} must be an integer")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    // Past the test harness's capture, so a run that fails later can always be replayed.
    let _ = writeln!(std::io::stderr(), "seed={seed} (replay with {var}={seed})");
    seed
}

/// Rows in an outbox file right now (0 before it exists).
pub fn outbox_depth(db: &Path) -> u64 {
    if !db.exists() {
        return 0;
    }
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.query_row(
        &format!("SELECT count(*) FROM outbox WHERE seq > {ACKED}"),
        [],
        |r| r.get::<_, i64>(0),
    )
    .unwrap_or(0) as u64
}

/// Distinct codes for a scanner: `{prefix}-{i}` padded, so they never repeat within a run.
pub fn codes(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:07}")).collect()
}
