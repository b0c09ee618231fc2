//! Device simulators for tests, the demo and bench work: each speaks its device's real bytes on
//! the master side of a pseudo-terminal, whose slave side phygate opens as a serial port.

pub mod broker;
#[cfg(feature = "embedded-broker")]
pub mod embedded;
pub mod modbus_gate;
pub mod nats;
pub mod pn532;
pub mod scanner;
pub mod scripted_broker;
pub mod skin;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// A pty pair. `link` is a stable path (symlink) to the slave, like a udev name.
pub struct Pty {
    pub master: File,
    /// Held open so the terminal keeps its settings and buffered bytes while phygate reopens it.
    _slave: OwnedFd,
    pub slave_path: PathBuf,
    pub link: PathBuf,
}

impl Pty {
    /// Opens a raw-mode pty pair and points `link` at its slave (replacing an old link).
    pub fn open(link: &Path) -> std::io::Result<Pty> {
        use nix::sys::termios;
        let pair = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
        // openpty does not set close-on-exec: without it every child process (phygate, the
        // broker) would inherit the master, and closing ours would not unplug the device.
        for fd in [&pair.master, &pair.slave] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .map_err(std::io::Error::from)?;
        }
        let slave_path = nix::unistd::ttyname(&pair.slave).map_err(std::io::Error::from)?;
        let mut t = termios::tcgetattr(&pair.slave).map_err(std::io::Error::from)?;
        termios::cfmakeraw(&mut t);
        termios::tcsetattr(&pair.slave, termios::SetArg::TCSANOW, &t)
            .map_err(std::io::Error::from)?;
        match std::fs::remove_file(link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        std::os::unix::fs::symlink(&slave_path, link)?;
        Ok(Pty {
            master: File::from(pair.master),
            _slave: pair.slave,
            slave_path,
            link: link.to_owned(),
        })
    }
}

impl Drop for Pty {
    /// Like an unplug: the stable name disappears with the device (only if it is still ours).
    fn drop(&mut self) {
        if std::fs::read_link(&self.link).is_ok_and(|t| t == self.slave_path) {
            let _ = std::fs::remove_file(&self.link);
        }
    }
}
