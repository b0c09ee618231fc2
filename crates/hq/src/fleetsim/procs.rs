//! The benchmark's child processes: the `phygate-hq run` consumers (started, SIGKILLed,
//! restarted) and a CPU/memory meter that follows a role across restarts (a restarted
//! consumer or broker is a new pid; its predecessor's CPU time is kept); and the simulator's
//! output and its end (its report, the totals it prints while online, stdin closed).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::procstat::{tree_usage, usage, Usage};

/// The environment variable the consumers read the engines' API key from (never the command
/// line: `ps` shows it).
pub const KEY_ENV: &str = "FLEET_ENGINE_KEY";

/// One `phygate-hq run`, its config and log in the bench's directory.
pub struct Consumer {
    pub name: String,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Consumer {
    pub fn new(dir: &Path, k: usize) -> Consumer {
        Consumer {
            name: format!("phygate-hq#{k}"),
            config: dir.join(format!("hq-{k}.toml")),
            log: dir.join(format!("hq-{k}.log")),
            child: None,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts it and waits until it subscribed (a new session), resumed its old one, or
    /// attached to the JetStream consumer.
    pub fn start(&mut self, key: &str) -> anyhow::Result<()> {
        let before = self.subscriptions();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(std::env::current_exe()?)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env(KEY_ENV, key)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.subscriptions() <= before {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                anyhow::bail!(
                    "{} exited ({status}); see {}",
                    self.name,
                    self.log.display()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not subscribe within 30 s; see {}",
                self.name,
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn subscriptions(&self) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        // MQTT: a new shared subscription or the resumed session; JetStream: the durable
        // consumer attached.
        log.matches("subscribed").count()
            + log.matches("session_present=true").count()
            + log.matches("consuming from JetStream").count()
    }

    /// SIGKILL: nothing flushed, nothing acknowledged on the way out.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: the clean stop.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGTERM);
            let _ = c.wait();
        }
    }

    /// The events its sinks announced as ambiguous repeats, from its log (which outlives a
    /// SIGKILL, unlike its metrics).
    pub fn ambiguous_events(&self) -> u64 {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("ambiguous: repeating"))
            .filter_map(|l| {
                let at = l.find(" events=")? + " events=".len();
                let digits: String = l[at..].chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u64>().ok()
            })
            .sum()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// CPU and memory of one role (a consumer, the broker, the simulator) over the run.
#[derive(Debug, Default)]
pub struct Meter {
    pid: Option<u32>,
    /// CPU time of the role's earlier processes.
    past_cpu: Duration,
    last: Usage,
    pub peak_kib: u64,
    pub max_threads: u64,
}

impl Meter {
    /// Samples the role's process `pid` now; a new pid starts a new process's count.
    pub fn sample(&mut self, pid: Option<u32>) {
        self.sample_with(pid, usage);
    }

    /// As [`Meter::sample`], counting `pid`'s direct children with it (PostgreSQL's backends).
    pub fn sample_tree(&mut self, pid: Option<u32>) {
        self.sample_with(pid, tree_usage);
    }

    fn sample_with(&mut self, pid: Option<u32>, usage: impl Fn(u32) -> Option<Usage>) {
        if pid != self.pid {
            self.past_cpu += self.last.cpu;
            self.last = Usage::default();
            self.pid = pid;
        }
        if let Some(u) = pid.and_then(usage) {
            self.peak_kib = self.peak_kib.max(u.peak_kib);
            self.max_threads = self.max_threads.max(u.threads);
            self.last = u;
        }
    }

    pub fn cpu(&self) -> Duration {
        self.past_cpu + self.last.cpu
    }

    /// `cpu 12.3 s (41 % of a core), rss 12 MB (peak 30 MB), threads 5`.
    pub fn line(&self, over: Duration) -> String {
        let cpu = self.cpu().as_secs_f64();
        format!(
            "cpu {cpu:.1} s ({:.0} % of a core), rss {} MB (peak {} MB), threads {}",
            100.0 * cpu / over.as_secs_f64().max(0.001),
            self.last.rss_kib / 1024,
            self.peak_kib / 1024,
            self.max_threads
        )
    }
}

/// The pid of the process whose command line names `needle` (the broker's config file: the
/// gateway's test broker does not hand out its child).
pub fn pid_by_cmdline(needle: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains(needle)
            .then_some(pid)
    })
}

/// Reads the simulator's stdout on a thread of its own: its first line (the report) comes
/// through the channel; each later `{"published": N}` (the stores answered replays after the
/// drain, and published the results) is stored in `published`.
pub fn read_sim_output(
    out: std::process::ChildStdout,
    published: Arc<AtomicU64>,
) -> (
    std::sync::mpsc::Receiver<String>,
    std::thread::JoinHandle<()>,
) {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(out).lines();
        if let Some(Ok(first)) = lines.next() {
            let _ = tx.send(first);
        }
        for line in lines.map_while(Result::ok) {
            let said = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .and_then(|v| v["published"].as_u64());
            match said {
                Some(n) => published.store(n, Ordering::Relaxed),
                None => tracing::warn!(%line, "fleet-sim printed a line the bench does not read"),
            }
        }
    });
    (rx, reader)
}

/// Lets the simulated stores go: closes their stdin and waits for them to close their
/// outboxes, killing the process if it takes longer than a drained fleet should.
pub fn take_offline(sim: &mut Child) {
    drop(sim.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match sim.try_wait() {
            Ok(Some(status)) if !status.success() => {
                return tracing::warn!(%status, "fleet-sim ended badly after its report")
            }
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    tracing::warn!("fleet-sim did not stop within 30 s of its stdin closing; killing it");
    let _ = sim.kill();
    let _ = sim.wait();
}
