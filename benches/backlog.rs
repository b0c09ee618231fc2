//! Backlog growth bench: what a week offline costs at the next start (issue 14, §3). For each
//! backlog size it fills an outbox (broker down: nothing is drained), then, in a fresh process
//! per size so the RSS is the outbox's own, measures:
//!
//! - start-up, cold (the file's pages dropped from the page cache) and warm: from opening the
//!   outbox to its first durable append answered, with a state read and a batch fetch, which
//!   is what devices and the gate decision wait for. Beside it, what the open used to cost:
//!   `PRAGMA quick_check` and a `count(*)`/`sum(octet_length(body))` over the table, cold;
//! - append p50 (durable, `synchronous = FULL`, one at a time) and fetch p50 (a batch of 100
//!   after a random seq), through the outbox's handle;
//! - RSS (peak, VmHWM) of that process;
//! - eviction of 10 %: µs per evicted row, its commits, and the longest one (the stall).
//!
//! Run: `cargo bench --bench backlog` (sizes `PHYGATE_BENCH_ROWS`, default `10000,1000000`; the
//! files go under `PHYGATE_BENCH_DIR`, default the temp dir, and are deleted after). Set
//! `PHYGATE_BENCH_OLD=0` to skip the old open's cold scan (64 s at 5M rows).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use phygate::config::{OutboxConfig, Synchronous};
use phygate::event::{Event, EventData, Origin, QrScanned};
use phygate::outbox::{Outbox, Store};

fn origin() -> Origin {
    Origin {
        store: "bench-store".into(),
        gateway: "bench-gw".into(),
    }
}

/// A scanned code (about 420 bytes of JSON); one in ten identified.
fn event(i: u64) -> Event {
    let mut e = Event::new(
        "scanner-1".into(),
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
    );
    if i % 10 == 0 {
        e.userid = Some(format!("user-{}", i % 997));
    }
    e
}

fn config(path: &Path, sync: Synchronous, max_bytes: u64) -> OutboxConfig {
    OutboxConfig {
        path: path.to_owned(),
        synchronous: sync,
        max_bytes,
        max_age: Duration::from_secs(30 * 24 * 3600),
        max_file_bytes: None,
        replay_window: std::time::Duration::ZERO,
    }
}

fn open_store(path: &Path, sync: Synchronous, max_bytes: u64) -> Store {
    Store::open(
        path,
        sync,
        origin(),
        max_bytes,
        Duration::from_secs(30 * 24 * 3600),
    )
    .unwrap()
    .store
}

/// Fills an outbox with `rows` events, as an outage does (groups of 2,048).
fn fill(path: &Path, rows: u64) {
    let mut s = open_store(path, Synchronous::Off, u64::MAX / 2);
    let mut i = 0;
    while i < rows {
        let n = (rows - i).min(2048);
        let group: Vec<Event> = (i..i + n).map(event).collect();
        s.commit_group(&group, &[]).unwrap();
        i += n;
    }
}

/// Drops the outbox's files from the page cache (this process's view of a cold boot; other
/// files and other processes are left alone).
fn drop_cache(path: &Path) {
    use std::os::fd::AsRawFd;
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        if let Ok(f) = std::fs::File::open(&p) {
            // Dirty pages are not dropped: write them first.
            let _ = f.sync_all();
            // SAFETY: a valid open descriptor; advice only.
            unsafe {
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
    }
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn rss_peak_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Opens the outbox and waits for what a device's first reading needs. Returns the time.
async fn start_up(path: &Path) -> Duration {
    let t = Instant::now();
    let (outbox, handle) =
        Outbox::open(&config(path, Synchronous::Full, u64::MAX / 2), origin()).expect("open");
    let thread = outbox.spawn().unwrap();
    handle.state("").await.unwrap();
    handle.append(event(0)).await.unwrap();
    handle.fetch_after(0, 100, 256 * 1024).await.unwrap();
    let took = t.elapsed();
    drop(handle);
    thread.join().unwrap();
    took
}

/// What opening cost before: the full check and the full count, cold.
fn old_open(path: &Path) -> Duration {
    drop_cache(path);
    let t = Instant::now();
    let conn = rusqlite::Connection::open(path).unwrap();
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let _: (i64, i64) = conn
        .query_row(
            "SELECT count(*), coalesce(sum(octet_length(body)), 0) FROM outbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    t.elapsed()
}

/// The measures of one backlog, in this (fresh) process. Prints one tab-separated line.
fn measure(path: &Path, rows: u64, old: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let old = if old {
        format!("{:.2}", old_open(path).as_secs_f64())
    } else {
        "-".into()
    };
    drop_cache(path);
    let cold = rt.block_on(start_up(path));
    let warm = rt.block_on(start_up(path));
    let (append, fetch) = rt.block_on(async {
        let (outbox, handle) =
            Outbox::open(&config(path, Synchronous::Full, u64::MAX / 2), origin()).unwrap();
        let thread = outbox.spawn().unwrap();
        let mut appends = Vec::new();
        for i in 0..200 {
            let t = Instant::now();
            handle.append(event(rows + i)).await.unwrap();
            appends.push(t.elapsed());
        }
        let mut fetches = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let t = Instant::now();
            handle
                .fetch_after(x % rows, 100, 256 * 1024)
                .await
                .unwrap()
                .unwrap();
            fetches.push(t.elapsed());
        }
        drop(handle);
        thread.join().unwrap();
        (p50(appends), p50(fetches))
    });
    // Eviction of 10 %: the quota set to what is held, then one more event.
    let bytes = open_store(path, Synchronous::Full, u64::MAX / 2)
        .stats()
        .unwrap()
        .bytes;
    let mut s = open_store(path, Synchronous::Full, bytes);
    let depth = s.stats().unwrap().depth;
    let t = Instant::now();
    let mut longest = Duration::ZERO;
    let mut commits = 0;
    let c = Instant::now();
    s.commit_group(&[event(0)], &[]).unwrap();
    longest = longest.max(c.elapsed());
    commits += 1;
    while s.evicting() {
        let c = Instant::now();
        s.evict_step().unwrap();
        longest = longest.max(c.elapsed());
        commits += 1;
    }
    let evicted = depth + 1 - s.stats().unwrap().depth + commits;
    let per_row = t.elapsed().as_secs_f64() * 1e6 / evicted as f64;
    println!(
        "{rows}\t{old}\t{:.3}\t{:.3}\t{:.2}\t{:.2}\t{}\t{per_row:.1}\t{commits}\t{:.0}",
        cold.as_secs_f64(),
        warm.as_secs_f64(),
        append.as_secs_f64() * 1e3,
        fetch.as_secs_f64() * 1e3,
        rss_peak_kb() / 1024,
        longest.as_secs_f64() * 1e3,
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--measure") {
        let path = PathBuf::from(&args[at + 1]);
        let rows: u64 = args[at + 2].parse().unwrap();
        measure(&path, rows, args[at + 3] == "1");
        return;
    }
    let sizes: Vec<u64> = std::env::var("PHYGATE_BENCH_ROWS")
        .unwrap_or_else(|_| "10000,1000000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .replace('_', "")
                .parse()
                .expect("PHYGATE_BENCH_ROWS")
        })
        .collect();
    let old = std::env::var("PHYGATE_BENCH_OLD").map_or(true, |v| v != "0");
    let base = std::env::var_os("PHYGATE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!(
        "backlog growth (issue 14 §3): times in s unless said, RSS = peak of the measuring process"
    );
    println!(
        "rows\told open cold\tstart-up cold\tstart-up warm\tappend p50 ms\tfetch p50 ms\tRSS MB\tevict µs/row\tevict commits\tlongest commit ms"
    );
    for rows in sizes {
        let dir = tempfile::tempdir_in(&base).unwrap();
        let path = dir.path().join("outbox.db");
        let t = Instant::now();
        fill(&path, rows);
        eprintln!("filled {rows} rows in {:.1} s", t.elapsed().as_secs_f64());
        let status = Command::new(std::env::current_exe().unwrap())
            .args(["--measure", path.to_str().unwrap(), &rows.to_string()])
            .arg(if old { "1" } else { "0" })
            .status()
            .unwrap();
        assert!(status.success());
    }
}
