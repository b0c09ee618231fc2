//! The fleet benchmark's short profile, as CI runs it: `phygate-hq fleet-bench` with its real
//! parts (a mosquitto it starts, `phygate-hq run` as a child process, the simulated gateways'
//! own outboxes and uplinks, Braze- and Amplitude-like servers), a consumer SIGKILLed and
//! restarted mid-run; and the same on a three-node NATS cluster with a node SIGKILLed. Asserts
//! the verdict line, not timings.

use std::process::Command;

fn figure(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
        .parse()
        .unwrap()
}

fn have_mosquitto() -> bool {
    if phygate::sim::broker::find_mosquitto().is_some() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "mosquitto is required in CI (apt-get install mosquitto)"
    );
    eprintln!("skipped: mosquitto is not installed");
    false
}

#[test]
fn a_small_fleet_loses_nothing_and_repeats_only_announced_events_across_a_consumer_kill() {
    if !have_mosquitto() {
        return;
    }
    run_and_check(&[]);
}

/// The same fleet with the stores on MQTT 5 (their uplink's v5 shell; HQ's consumers as before).
#[test]
fn a_small_fleet_on_mqtt_5_loses_nothing_and_repeats_only_announced_events() {
    if !have_mosquitto() {
        return;
    }
    run_and_check(&["--mqtt", "5"]);
}

/// The setup in small: two consumers in one share group, one PostgreSQL journey store
/// (started by the bench), one of them SIGKILLed mid-run.
#[test]
fn two_consumers_sharing_postgres_lose_nothing_and_repeat_only_announced_events() {
    if !have_mosquitto() {
        return;
    }
    let stdout = run_and_check(&["--consumers", "2", "--store", "postgres"]);
    assert!(stdout.contains("process phygate-hq#2: cpu "), "{stdout}");
}

/// The NATS profile in small: the three-node cluster (stores spread over its nodes'
/// MQTT listeners), two consumers on its JetStream stream sharing PostgreSQL, node n1 made the
/// events stream's leader, then SIGKILLed mid-run and restarted. Every store's reconnect is
/// measured. nats-server 2.9 PUBACKs before its stream stores (docs/fleet.md), so events
/// PUBACKed while the stream elects a leader are lost by the broker and come back by replay;
/// what must hold, whatever the machine's load, is that each is stored once or reported lost.
#[test]
fn a_small_fleet_on_the_nats_cluster_stores_or_reports_every_event_across_a_node_kill() {
    if phygate::sim::broker::find_program("nats-server").is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nats-server is required in CI (apt-get install nats-server)"
        );
        eprintln!("skipped: nats-server is not installed");
        return;
    }
    let (stdout, stderr, _verdict_ok) = run_bench(
        &["--broker", "nats", "--kill-node-at", "5s"],
        &["--consumers", "2", "--store", "postgres"],
    );
    // The kill hits the worst case: the node leading the events stream.
    assert!(
        stdout.contains("events stream leader: n1 "),
        "{stdout}\n{stderr}"
    );
    let line = verdict_line(&stdout, &stderr);
    let published = figure(line, "published");
    assert!(published > 600, "{line}");
    assert_eq!(
        figure(line, "stored_unique") + figure(line, "lost"),
        published,
        "an event neither stored nor reported lost: {line}\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("HQ settled") && !stdout.contains("NOT within the timeout"),
        "{stdout}"
    );
    assert_eq!(
        figure(line, "forwarded_twice"),
        figure(line, "ambiguous"),
        "{line}"
    );
    // The spread is printed. How many stores sat on n1 at the kill is not fixed: nodes close
    // early MQTT connections while they start, so a store may have moved off its first node
    // (a CI run saw none left on n1); the 1,000-store runs in docs/fleet.md measure it.
    let spread = stdout
        .lines()
        .find(|l| l.starts_with("reconnects="))
        .unwrap_or_else(|| panic!("no reconnect spread:\n{stdout}"));
    assert!(figure(spread, "reconnects") <= 20, "{spread}");
    assert!(stdout.contains("process nats-n3: cpu "), "{stdout}");
}

/// Runs the short profile with `extra` flags and a consumer SIGKILLed mid-run, checks the
/// verdict; its stdout.
fn run_and_check(extra: &[&str]) -> String {
    run_profile(&["--kill-consumer-at", "6s"], extra)
}

/// Runs the short profile with `fault` and `extra` flags, checks the verdict; its stdout.
fn run_profile(fault: &[&str], extra: &[&str]) -> String {
    let (stdout, stderr, success) = run_bench(fault, extra);
    let line = verdict_line(&stdout, &stderr);
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
    assert!(success, "{stdout}\n{stderr}");
    stdout
}

/// The bench's `stores=… published=…` line.
fn verdict_line<'a>(stdout: &'a str, stderr: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with("stores="))
        .unwrap_or_else(|| panic!("no verdict line:\n{stdout}\n{stderr}"))
}

/// Runs the short profile with `fault` and `extra` flags; its stdout, stderr and whether the
/// bench exited with its verdict held. The settle timeout is an upper bound (the bench stops
/// waiting once every event is stored or reported lost): 60 s was once too short for a replay
/// after a NATS node kill while a CI build shared the two cores.
fn run_bench(fault: &[&str], extra: &[&str]) -> (String, String, bool) {
    let out = Command::new(env!("CARGO_BIN_EXE_phygate-hq"))
        .args(["fleet-bench", "--stores", "20", "--rate", "5"])
        .args(["--duration", "12s"])
        .args(fault)
        .args(["--throttle", "0.1", "--settle-timeout", "120s"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// Ctrl-C in the middle of a run stops every process the bench started (simulator, consumers,
/// broker, PostgreSQL) instead of leaving them running.
#[test]
fn an_interrupted_bench_leaves_no_process_behind() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut bench = Command::new(env!("CARGO_BIN_EXE_phygate-hq"))
        .args([
            "fleet-bench",
            "--stores",
            "5",
            "--rate",
            "2",
            "--duration",
            "60s",
        ])
        .args(["--consumers", "2", "--store", "postgres", "--dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let running = |needle: &str| -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(needle))
            .collect()
    };
    // Up: the simulator runs once the consumers and the broker do.
    let needle = dir.path().join("stores").display().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while running(&needle).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the fleet never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bench.id() as i32),
        nix::sys::signal::SIGINT,
    )
    .unwrap();
    let status = bench.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut bench.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "an interrupted run has no verdict");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let dir_text = dir.path().display().to_string();
    let left = running(&dir_text);
    // PostgreSQL's temp dir is its own; its server is found by the bench's database port
    // in the consumers' configs, which are in `dir`.
    let pg_port = std::fs::read_to_string(dir.path().join("hq-1.toml"))
        .unwrap()
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .map(str::to_owned)
        .unwrap();
    let pg_left = running(&format!("-p {pg_port} "));
    assert!(
        left.is_empty() && pg_left.is_empty(),
        "left running: {left:?} {pg_left:?}"
    );
}
