//! CPU time and memory of a process, from /proc (Linux). Hand-read rather than a crate: two
//! fields of two files, and the figures are the kernel's own.

use std::time::Duration;

/// A process's cumulative CPU time (user + system) and its memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu: Duration,
    /// Resident set now, in KiB.
    pub rss_kib: u64,
    /// Peak resident set, in KiB.
    pub peak_kib: u64,
    pub threads: u64,
}

/// `pid`'s usage, or `None` when it has exited (or there is no /proc).
pub fn usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Usage {
        cpu: Duration::from_millis(ticks * 1000 / hz),
        rss_kib: status_field(pid, "VmRSS:").unwrap_or(0),
        peak_kib: status_field(pid, "VmHWM:").unwrap_or(0),
        threads: status_field(pid, "Threads:").unwrap_or(0),
    })
}

/// The number at the start of a `/proc/<pid>/status` line, e.g. `VmRSS:` (in KiB).
pub fn status_field(pid: u32, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// The usage of `pid` and its direct children together (PostgreSQL: the postmaster and its
/// backends, one per connection). CPU and memory are summed; a child that has exited since
/// the last sample takes its CPU time with it, so this is a floor.
pub fn tree_usage(pid: u32) -> Option<Usage> {
    let mut total = usage(pid)?;
    for child in children(pid) {
        if let Some(u) = usage(child) {
            total.cpu += u.cpu;
            total.rss_kib += u.rss_kib;
            total.peak_kib += u.peak_kib;
            total.threads += u.threads;
        }
    }
    Some(total)
}

/// The pids whose parent is `pid` (field 4 of `/proc/<pid>/stat`).
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: u32 = stat[stat.rfind(')')? + 2..]
                .split(' ')
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        let u = usage(std::process::id()).expect("/proc/self");
        assert!(u.cpu >= Duration::from_millis(10), "{u:?}");
        assert!(u.rss_kib > 0 && u.peak_kib >= u.rss_kib, "{u:?}");
        assert!(u.threads >= 1);
    }

    #[test]
    fn a_tree_counts_the_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let own = std::process::id();
        let found = children(own);
        let tree = tree_usage(own).unwrap();
        let child_threads = usage(child.id()).map_or(0, |u| u.threads);
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?}");
        assert!(
            child_threads >= 1 && tree.threads > child_threads,
            "{tree:?}"
        );
    }
}
