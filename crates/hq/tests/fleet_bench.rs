//! The fleet benchmark's short profile, as CI runs it: `phygate-hq fleet-bench` with its real
//! parts (a mosquitto it starts, `phygate-hq run` as a child process, the simulated gateways'
//! own outboxes and uplinks, Braze- and Amplitude-like servers), a consumer SIGKILLed and
//! restarted mid-run. Asserts the verdict line, not timings.

use std::process::Command;

fn figure(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .parse()
        .unwrap()
}

#[test]
fn a_small_fleet_loses_nothing_and_repeats_only_announced_events_across_a_consumer_kill() {
    if phygate::sim::broker::find_mosquitto().is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mosquitto is required in CI (apt-get install mosquitto)"
        );
        eprintln!("skipped: mosquitto is not installed");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_phygate-hq"))
        .args(["fleet-bench", "--stores", "20", "--rate", "5"])
        .args(["--duration", "12s", "--kill-consumer-at", "6s"])
        .args(["--throttle", "0.1", "--settle-timeout", "60s"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("stores="))
        .unwrap_or_else(|| panic!("no verdict line:\n{stdout}\n{stderr}"));
    let published = figure(line, "published");
    assert!(published > 600, "{line}");
    assert_eq!(figure(line, "stored_unique"), published, "{line}");
    assert_eq!(figure(line, "lost"), 0, "{line}");
    assert!(
        figure(line, "forwarded_twice") <= figure(line, "ambiguous"),
        "an engine got an event twice that no consumer announced: {line}"
    );
    assert!(stdout.contains("engine braze: "), "{stdout}");
    assert!(stdout.contains("process phygate-hq#1: cpu "), "{stdout}");
    assert!(stdout.contains("verdict: ok"), "{stdout}\n{stderr}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
}
