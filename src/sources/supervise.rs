//! One supervision loop for every device kind: open the port, serve it until it is lost, report
//! `down` once per outage, back off (capped and jittered), reopen; until the source stops.
//!
//! A kind says how to open and serve its port, and how it words and de-duplicates its `up` and
//! `down` reports ([`Supervised`]); the loop ([`supervise`]) is the same for all. Line-oriented
//! serial kinds (scanner, skin analyzer) need only a session function: [`serve_serial_port`].

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::{DeviceState, ReadingSink, SourceError};
use crate::backoff::Backoff;
use crate::shutdown::Shutdown;

/// How long a blocking read waits before a source checks its stop flag and timers.
pub const READ_TICK: Duration = Duration::from_millis(100);
/// Reopening a lost port: quick at first (a replug takes a moment), at most every 5 s.
const REOPEN_MIN: Duration = Duration::from_millis(200);
const REOPEN_MAX: Duration = Duration::from_secs(5);

/// How a port session ended.
pub enum Ended {
    Stopped,
    Lost(io::Error),
}

/// Why a device is down.
pub enum Outage {
    /// The port (or file, or device) would not open.
    CannotOpen(io::Error),
    /// An open port failed (an unplug).
    Lost(io::Error),
}

impl Outage {
    /// A serial port's `down` reason: `cannot open PATH: …` or `port lost: …`.
    pub fn reason(&self, port: &Path) -> String {
        match self {
            Outage::CannotOpen(e) => format!("cannot open {}: {e}", port.display()),
            Outage::Lost(e) => format!("port lost: {e}"),
        }
    }
}

/// A device kind's part in [`supervise`].
pub trait Supervised {
    /// What an open yields: the port itself, or for a camera the first frames.
    type Port;

    fn open(&mut self) -> io::Result<Self::Port>;

    /// The port opened, before it is served: the kinds that report `up` on open do it here
    /// (others, like the gate and the NFC reader, only once the device answers).
    fn opened(&mut self) -> Result<(), SourceError>;

    /// Reads (and writes) the open port until it is lost or the source stops.
    fn serve(&mut self, port: Self::Port) -> Result<Ended, SourceError>;

    /// The device is down: report it once per outage, not once per retry.
    fn down(&mut self, outage: Outage) -> Result<(), SourceError>;

    /// Waits `delay` before the next open; true when the source stopped meanwhile.
    fn wait(&mut self, stop: &Shutdown, delay: Duration) -> bool {
        stop.sleep(delay)
    }
}

/// The open → serve → down → back off → reopen loop, until stopped or the pipeline closes.
pub fn supervise(device: &mut impl Supervised, stop: &Shutdown) -> Result<(), SourceError> {
    let mut backoff = Backoff::new(REOPEN_MIN, REOPEN_MAX);
    while !stop.is_stopped() {
        let outage = match device.open() {
            Ok(port) => {
                device.opened()?;
                backoff.reset();
                match device.serve(port)? {
                    Ended::Stopped => break,
                    Ended::Lost(e) => Outage::Lost(e),
                }
            }
            Err(e) => Outage::CannotOpen(e),
        };
        device.down(outage)?;
        if device.wait(stop, backoff.next_delay()) {
            break;
        }
    }
    Ok(())
}

/// A line-oriented serial source: `up` when the port opens, `down` once per outage (an unplug,
/// or a port that will not open). `session` reads the open port until it is lost.
pub fn serve_serial_port(
    sink: &ReadingSink,
    stop: &Shutdown,
    path: &Path,
    baud: u32,
    session: impl FnMut(Box<dyn serialport::SerialPort>) -> Result<Ended, SourceError>,
) -> Result<(), SourceError> {
    let mut port = SerialLines {
        sink,
        path: path.to_path_buf(),
        baud,
        session,
        reported_down: false,
    };
    supervise(&mut port, stop)
}

struct SerialLines<'a, F> {
    sink: &'a ReadingSink,
    path: PathBuf,
    baud: u32,
    session: F,
    reported_down: bool,
}

impl<F> Supervised for SerialLines<'_, F>
where
    F: FnMut(Box<dyn serialport::SerialPort>) -> Result<Ended, SourceError>,
{
    type Port = Box<dyn serialport::SerialPort>;

    fn open(&mut self) -> io::Result<Self::Port> {
        Ok(serialport::new(self.path.to_string_lossy(), self.baud)
            .timeout(READ_TICK)
            .open()?)
    }

    fn opened(&mut self) -> Result<(), SourceError> {
        let sink = self.sink;
        info!(device = sink.device(), port = %self.path.display(), "{} up", sink.kind);
        sink.status(DeviceState::Up, "opened", None)
    }

    fn serve(&mut self, port: Self::Port) -> Result<Ended, SourceError> {
        (self.session)(port)
    }

    fn down(&mut self, outage: Outage) -> Result<(), SourceError> {
        let sink = self.sink;
        let reason = outage.reason(&self.path);
        match outage {
            Outage::Lost(e) => {
                warn!(device = sink.device(), error = %e, "{} port lost", sink.kind);
            }
            // One report per outage, not one per retry.
            Outage::CannotOpen(_) if self.reported_down => {
                debug!(device = sink.device(), "{reason}");
                return Ok(());
            }
            Outage::CannotOpen(_) => warn!(device = sink.device(), "{reason}"),
        }
        self.reported_down = true;
        sink.status(DeviceState::Down, reason, None)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use tokio::sync::mpsc;

    use super::*;
    use crate::sources::Observation;

    /// A device that opens and loses its port as scripted, and records what the loop did.
    #[derive(Default)]
    struct Scripted {
        /// Each open: `None` fails, `Some(stopped)` opens, then the session ends stopped or lost.
        opens: VecDeque<Option<bool>>,
        calls: Vec<&'static str>,
        delays: Vec<Duration>,
    }

    impl Supervised for Scripted {
        type Port = bool;

        fn open(&mut self) -> io::Result<bool> {
            match self.opens.pop_front().flatten() {
                Some(stopped) => Ok(stopped),
                None => Err(io::ErrorKind::NotFound.into()),
            }
        }

        fn opened(&mut self) -> Result<(), SourceError> {
            self.calls.push("opened");
            Ok(())
        }

        fn serve(&mut self, stopped: bool) -> Result<Ended, SourceError> {
            self.calls.push("serve");
            Ok(match stopped {
                true => Ended::Stopped,
                false => Ended::Lost(io::ErrorKind::BrokenPipe.into()),
            })
        }

        fn down(&mut self, outage: Outage) -> Result<(), SourceError> {
            self.calls.push(match outage {
                Outage::CannotOpen(_) => "cannot open",
                Outage::Lost(_) => "lost",
            });
            Ok(())
        }

        fn wait(&mut self, _stop: &Shutdown, delay: Duration) -> bool {
            self.delays.push(delay);
            self.opens.is_empty()
        }
    }

    #[test]
    fn the_loop_reopens_with_backoff_reset_by_each_open() {
        let mut d = Scripted {
            opens: [None, None, None, Some(false), None, Some(true)].into(),
            ..Default::default()
        };
        supervise(&mut d, &Shutdown::new()).unwrap();
        assert_eq!(
            d.calls,
            [
                "cannot open",
                "cannot open",
                "cannot open",
                "opened",
                "serve",
                "lost",
                "cannot open",
                "opened",
                "serve"
            ]
        );
        // Growing while the port stays away (jittered in [d/2, d]), from the minimum again
        // after an open.
        assert!(d.delays[0] <= REOPEN_MIN);
        assert!(d.delays[2] >= REOPEN_MIN * 2);
        assert!(d.delays[3] <= REOPEN_MIN);
        assert!(d.delays.iter().all(|d| *d <= REOPEN_MAX));
    }

    #[test]
    fn a_stopped_source_does_not_open() {
        let stop = Shutdown::new();
        stop.stop();
        let mut d = Scripted {
            opens: [Some(true)].into(),
            ..Default::default()
        };
        supervise(&mut d, &stop).unwrap();
        assert!(d.calls.is_empty());
    }

    fn downs(rx: &mut mpsc::Receiver<crate::sources::Reading>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|r| match r.observation {
                Observation::Status(s) if s.state == DeviceState::Down => Some(s.reason),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_serial_port_is_down_once_per_outage() {
        let (tx, mut rx) = mpsc::channel(16);
        let sink = ReadingSink::new("s1", "st1", "scanner", tx);
        let mut port = SerialLines {
            sink: &sink,
            path: "/dev/ttyNONE".into(),
            baud: 9600,
            session: |_| Ok(Ended::Stopped),
            reported_down: false,
        };
        let gone = || io::Error::from(io::ErrorKind::NotFound);
        port.down(Outage::CannotOpen(gone())).unwrap();
        port.down(Outage::CannotOpen(gone())).unwrap();
        assert_eq!(
            downs(&mut rx),
            ["cannot open /dev/ttyNONE: entity not found"]
        );
        // An unplug after it was up is a new outage; the failed reopens after it are not.
        port.down(Outage::Lost(io::ErrorKind::BrokenPipe.into()))
            .unwrap();
        port.down(Outage::CannotOpen(gone())).unwrap();
        assert_eq!(downs(&mut rx), ["port lost: broken pipe"]);
    }
}
