//! `phygate-hq demo` beside the store's `phygate demo`, as the README tells a newcomer: with no
//! argument it finds the store demo's broker, consumes its events and prints each one as the
//! journey engine (a signed webhook) receives it, identified users included; Ctrl-C stops it
//! cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn hq_demo_shows_the_store_demos_journey_as_the_engine_receives_it() {
    if phygate::sim::broker::find_mosquitto().is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mosquitto is required in CI (apt-get install mosquitto)"
        );
        eprintln!("skipped: mosquitto is not installed");
        return;
    }
    let hq_config = phygate_hq::demo::demo_config_path();
    let _ = std::fs::remove_file(&hq_config);
    // The store demo, in this process, from the gateway's library (what `phygate demo` runs).
    let store = std::thread::spawn(|| {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(phygate::demo::run(Some(20), 4.0))
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !hq_config.exists() {
        assert!(
            Instant::now() < deadline,
            "the store demo wrote no HQ config"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut hq = Command::new(env!("CARGO_BIN_EXE_phygate-hq"))
        .arg("demo")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(hq.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let wanted = [
        "store.visit.started",
        "store.skin.diagnosed",
        "store.visit.ended",
    ];
    while !wanted.iter().all(|t| {
        seen.iter()
            .any(|l: &String| l.contains(t) && l.contains("user=app-user-"))
    }) {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("phygate-hq demo ended; it printed:\n{}", seen.join("\n")))
            .unwrap();
        assert!(line.starts_with("engine ← "), "{line}");
        seen.push(line);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(hq.id() as i32),
        nix::sys::signal::SIGINT,
    )
    .unwrap();
    assert!(
        hq.wait().unwrap().success(),
        "Ctrl-C ends phygate-hq demo cleanly"
    );
    store.join().unwrap().unwrap();
    assert!(
        !hq_config.exists(),
        "the store demo removes its HQ config at the end"
    );
}
