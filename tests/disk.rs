//! The disk under the outbox: a byte quota reached during an outage, a real full file system,
//! and a corrupt database at start.

mod common;
mod fault;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fault::*;

const LONG: Duration = Duration::from_secs(60);

/// A small tmpfs the test mounts (we run as root), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None`, with the reason, where mounting is impossible (no privilege, no tmpfs).
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Posts tablet diagnoses from `first` until one is refused; returns the accepted ids and the
/// refusal.
fn post_until_refused(store: &Store, first: u64, limit: u64) -> (Vec<String>, u64, Posted) {
    let mut ids = Vec::new();
    for k in first..first + limit {
        let a = store.post_skin(k).unwrap();
        if a.status != 202 {
            return (ids, k, a);
        }
        ids.extend(a.ids);
    }
    panic!("{limit} posts and the disk never filled");
}

#[test]
fn full_filesystem_answers_503_keeps_the_database_whole_and_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small-disk");
    let _fs = match Tmpfs::mount(&mnt, "3m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED: no real full file system here ({why}); the file-size cap test still forces SQLITE_FULL");
            return;
        }
    };
    let db = mnt.join("phygate.db");
    let mut store = Store::new(&Knobs {
        db: Some(db.clone()),
        ..Knobs::default()
    });
    let hq = store.hq("full-disk");
    let (_pty, mut scanner) = store.rig.scanner();
    let gw = store.start_gateway();
    store.wait_listening();
    hq.wait_for(LONG, "the scanner up", |h| !h.statuses().is_empty());

    // HQ unreachable, and the log partition's neighbour has eaten most of the space.
    store.rig.broker.stop(false);
    let ballast = mnt.join("ballast");
    std::fs::write(&ballast, vec![0u8; 1024 * 1024]).unwrap();
    let (mut accepted, next, refused) = post_until_refused(&store, 0, 100_000);
    eprintln!(
        "disk full after {} accepted posts: {refused:?}",
        accepted.len()
    );
    assert_eq!(
        refused.status, 503,
        "a full disk is 'try later', not an error: {refused:?}"
    );
    assert_eq!(refused.body["error"], "not_stored", "{refused:?}");
    // Still full: every post is refused, none half-stored.
    for k in next..next + 5 {
        assert_eq!(store.post_skin(k).unwrap().status, 503);
    }
    // Codes scanned meanwhile are held by phygate until they can be written.
    let held = codes("FULL", 50);
    scanner
        .scan_all(held.iter().map(String::as_str), Duration::ZERO)
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        integrity(&db),
        "ok",
        "a full disk must not corrupt the outbox"
    );
    assert!(strip_ansi(&gw.log()).contains("outbox transaction failed"));

    // Space returns: the same post is accepted again, without a restart.
    std::fs::remove_file(&ballast).unwrap();
    let resumed = Instant::now();
    let again = loop {
        let a = store.post_skin(next).unwrap();
        if a.status == 202 {
            break a;
        }
        assert!(resumed.elapsed() < LONG, "never resumed: {a:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    accepted.extend(again.ids);

    store.rig.broker.restart().unwrap();
    hq.wait_for(LONG, "every accepted diagnosis and every held code", |h| {
        let d = delivered(h);
        accepted.iter().all(|id| d.by_id.contains_key(id))
            && h.scanned_payloads().len() >= held.len()
    });
    assert_eq!(
        hq.scanned_payloads(),
        held,
        "held codes were written, in order"
    );
    assert_eq!(delivered(&hq).seq_gaps(), Vec::<[u64; 2]>::new());
    hq.assert_consistent();
    assert_eq!(integrity(&db), "ok");
}

#[test]
fn file_cap_reached_in_an_outage_answers_503_and_acknowledged_rows_make_room_again() {
    let mut store = Store::new(&Knobs {
        outbox: "max_file_bytes = 1048576\n".into(),
        ..Knobs::default()
    });
    let db = store.db();
    let hq = store.hq("file-cap");
    let (_pty, mut scanner) = store.rig.scanner();
    let gw = store.start_gateway();
    store.wait_listening();
    hq.wait_for(LONG, "the scanner up", |h| !h.statuses().is_empty());

    store.rig.broker.stop(false);
    let (mut accepted, next, refused) = post_until_refused(&store, 0, 100_000);
    eprintln!("file cap reached after {} accepted posts", accepted.len());
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.body["error"], "not_stored", "{refused:?}");
    // More codes than the whole cap holds: phygate keeps them in memory (up to its limit)
    // and writes them as room appears, oldest first.
    let held = codes("CAP", 3000);
    scanner
        .scan_all(held.iter().map(String::as_str), Duration::ZERO)
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(store.post_skin(next).unwrap().status, 503, "still full");
    assert_eq!(integrity(&db), "ok");
    let size = std::fs::metadata(&db).unwrap().len();
    assert!(size <= 1024 * 1024, "the file stays under its cap: {size}");

    // HQ is back: the backlog goes out, its acknowledgements delete rows, and the freed pages
    // take the held codes and new posts. Nobody had to free the disk.
    store.rig.broker.restart().unwrap();
    let resumed = Instant::now();
    let again = loop {
        let a = store.post_skin(next).unwrap();
        if a.status == 202 {
            break a;
        }
        assert!(
            resumed.elapsed() < LONG,
            "never resumed: {a:?}\n{}",
            strip_ansi(&gw.log())
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    accepted.extend(again.ids);
    hq.wait_for(LONG, "every accepted diagnosis and every held code", |h| {
        let d = delivered(h);
        accepted.iter().all(|id| d.by_id.contains_key(id))
            && h.scanned_payloads().len() >= held.len()
    });
    assert_eq!(hq.scanned_payloads(), held);
    assert_eq!(delivered(&hq).seq_gaps(), Vec::<[u64; 2]>::new());
    hq.assert_consistent();
    assert!(
        wait_until(LONG, || outbox_depth(&db) == 0),
        "every row acknowledged and deleted: {} left",
        outbox_depth(&db)
    );
    assert_eq!(integrity(&db), "ok");
}
