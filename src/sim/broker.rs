//! A local Mosquitto broker for tests, the demo and benchmarks: a private config on a free
//! loopback port, persistence on (so HQ's session survives a restart), stoppable and restartable.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Mosquitto {
    pub port: u16,
    dir: PathBuf,
    binary: PathBuf,
    child: Option<Child>,
}

/// Where mosquitto is installed, if it is.
pub fn find_mosquitto() -> Option<PathBuf> {
    find_program("mosquitto")
}

/// Where a broker's binary is installed, if it is (Debian puts mosquitto and nats-server in
/// /usr/sbin, often not on PATH).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A port nobody listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Mosquitto {
    /// Starts mosquitto with its files under `dir` and waits until it accepts connections.
    pub fn start(dir: &Path) -> std::io::Result<Mosquitto> {
        Mosquitto::start_with(dir, "allow_anonymous true\n")
    }

    /// As [`Mosquitto::start`], with `settings` at the end of the config: who may connect
    /// (`allow_anonymous`, `password_file`, `acl_file`) and any further `listener` (e.g. TLS)
    /// with its own options. `port` stays the plain loopback listener.
    pub fn start_with(dir: &Path, settings: &str) -> std::io::Result<Mosquitto> {
        let binary = find_mosquitto().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "mosquitto is not installed (apt-get install mosquitto)",
            )
        })?;
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let config = format!(
            "listener {port} 127.0.0.1\n\
             # Root would otherwise drop to the mosquitto user and fail to save in a root-owned dir.\nuser root\n\
             persistence true\npersistence_location {}/\nautosave_interval 1\n\
             max_queued_messages 0\nmax_inflight_messages 0\nmessage_size_limit 0\n\
             log_dest file {}/mosquitto.log\n{settings}",
            dir.display(),
            dir.display()
        );
        std::fs::write(dir.join("mosquitto.conf"), config)?;
        let mut m = Mosquitto {
            port,
            dir: dir.to_owned(),
            binary,
            child: None,
        };
        m.restart()?;
        Ok(m)
    }

    /// (Re)starts the broker on the same port and waits until it listens.
    pub fn restart(&mut self) -> std::io::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(std::io::Error::other(format!(
            "mosquitto did not listen on {} (see {}/mosquitto.log)",
            self.port,
            self.dir.display()
        )))
    }

    /// Stops the broker: gracefully (SIGTERM, it saves its sessions) or hard (SIGKILL).
    pub fn stop(&mut self, hard: bool) {
        if let Some(mut child) = self.child.take() {
            let signal = if hard {
                nix::sys::signal::SIGKILL
            } else {
                nix::sys::signal::SIGTERM
            };
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            if nix::sys::signal::kill(pid, signal).is_err() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// Makes the broker read its files again (SIGHUP): mosquitto reloads its ACL and password
    /// files without dropping a connection.
    pub fn reload(&self) {
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGHUP);
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop(true);
    }
}
