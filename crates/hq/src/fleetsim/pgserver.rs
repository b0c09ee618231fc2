//! A throwaway PostgreSQL server for the fleet benchmark (`--store postgres`) and the tests:
//! `initdb` and `postgres` from Debian's `postgresql` package, in a temp dir, on a free
//! loopback port, shut down when dropped. `initdb` refuses to run as root, so as root (CI) both
//! run as the `postgres` user that the package creates, and the temp dir is handed to it.
//! Production runs its own server; this one trades durability for speed (`fsync=off`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use phygate::sim::broker::free_port;

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The uid and gid to run as when we are root.
    user: Option<(u32, u32)>,
    pub port: u16,
    child: Option<Child>,
}

/// The newest `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|v| v.1)
        .context("no PostgreSQL server under /usr/lib/postgresql: apt-get install postgresql")
}

impl Postgres {
    pub fn start() -> anyhow::Result<Postgres> {
        let bin = bin_dir()?;
        let dir = tempfile::Builder::new().prefix("phygate-pg").tempdir()?;
        let user = if nix::unistd::geteuid().is_root() {
            let u = nix::unistd::User::from_name("postgres")?.context(
                "running as root: the postgres user (from the postgresql package) runs the server",
            )?;
            nix::unistd::chown(dir.path(), Some(u.uid), Some(u.gid))?;
            Some((u.uid.as_raw(), u.gid.as_raw()))
        } else {
            None
        };
        let mut pg = Postgres {
            dir,
            bin,
            user,
            port: free_port()?,
            child: None,
        };
        let out = pg
            .command("initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(pg.data())
            .output()
            .context("running initdb")?;
        ensure!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.restart()?;
        Ok(pg)
    }

    /// The postmaster's pid, while the server runs (its backends are its children).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(self.bin.join(tool));
        c.env("LC_ALL", "C").current_dir(self.dir.path());
        if let Some((uid, gid)) = self.user {
            c.uid(uid).gid(gid);
        }
        c
    }

    /// Starts the server (again) on the same port and data, and waits until it accepts.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        ensure!(self.child.is_none(), "PostgreSQL is running already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("pg.log"))?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ))
            // A test cuts no power: fsync only slows the shared machine down.
            .args(["-c", "fsync=off", "-c", "max_connections=100"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting postgres")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .context("running pg_isready")?
                .success();
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "PostgreSQL did not start: see {}",
                    self.dir.path().join("pg.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An immediate shutdown (SIGQUIT): the server and every backend end at once, nothing is
    /// checkpointed, and the next start recovers from the WAL, as after a crash. (A SIGKILL
    /// of the postmaster alone would leave its backends holding the shared memory.)
    pub fn crash(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::SIGQUIT,
            );
            let _ = c.wait();
        }
    }

    /// A client tool (`createdb`, `psql`) pointed at this server as its superuser.
    fn client(&self, tool: &str) -> Command {
        let mut c = self.command(tool);
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ]);
        c
    }

    /// A new, empty database; its URL.
    pub fn database(&self, name: &str) -> anyhow::Result<String> {
        let out = self
            .client("createdb")
            .arg(name)
            .output()
            .context("running createdb")?;
        ensure!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(self.url(name))
    }

    /// Runs `sql` in database `db` with `psql`; the rows, fields separated by `|`.
    pub fn query(&self, db: &str, sql: &str) -> anyhow::Result<Vec<String>> {
        let out = self
            .client("psql")
            .args(["-At", "-d", db, "-c", sql])
            .output()
            .context("running psql")?;
        ensure!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect())
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.crash();
    }
}
