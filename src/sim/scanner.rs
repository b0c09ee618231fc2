//! Serial scanner simulator: writes codes in line mode (docs/protocols.md §1).

use std::io::Write;
use std::time::Duration;

use crate::sources::scanner::{Framing, Terminator};

/// The bytes a scanner with `framing` sends for one code.
pub fn encode_line(framing: &Framing, aim: &str, payload: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&framing.prefix);
    if framing.aim {
        out.extend_from_slice(aim.as_bytes());
    }
    out.extend_from_slice(payload.as_bytes());
    out.extend_from_slice(&framing.suffix);
    out.extend_from_slice(match framing.terminator {
        Terminator::Cr => b"\r",
        Terminator::Lf => b"\n",
        Terminator::Crlf => b"\r\n",
    });
    out
}

/// Writes codes to a port, one every `interval`.
pub struct ScannerSim<W: Write> {
    pub port: W,
    pub framing: Framing,
}

impl<W: Write> ScannerSim<W> {
    pub fn scan(&mut self, payload: &str) -> std::io::Result<()> {
        let line = encode_line(&self.framing, "]Q1", payload);
        self.port.write_all(&line)?;
        self.port.flush()
    }

    pub fn scan_all<'a>(
        &mut self,
        codes: impl IntoIterator<Item = &'a str>,
        interval: Duration,
    ) -> std::io::Result<usize> {
        let mut n = 0;
        for code in codes {
            self.scan(code)?;
            n += 1;
            if !interval.is_zero() {
                std::thread::sleep(interval);
            }
        }
        Ok(n)
    }
}

/// `phygate simulate scanner`: a pty at `link`, fed from stdin lines or generated codes.
pub fn run_cli(
    link: &std::path::Path,
    terminator: &str,
    aim: bool,
    rate: f64,
    stdin: bool,
) -> anyhow::Result<()> {
    let terminator = match terminator {
        "cr" => Terminator::Cr,
        "lf" => Terminator::Lf,
        "crlf" => Terminator::Crlf,
        other => anyhow::bail!("--terminator must be cr, lf or crlf, not {other:?}"),
    };
    let pty = super::Pty::open(link)?;
    eprintln!(
        "simulated scanner on {} (-> {}); set `port = \"{}\"` in the device's config",
        pty.link.display(),
        pty.slave_path.display(),
        pty.link.display()
    );
    let mut sim = ScannerSim {
        port: pty.master.try_clone()?,
        framing: Framing {
            terminator,
            aim,
            ..Framing::default()
        },
    };
    if stdin {
        for line in std::io::stdin().lines() {
            sim.scan(&line?)?;
        }
        return Ok(());
    }
    let interval = Duration::from_secs_f64(1.0 / rate.clamp(0.01, 10_000.0));
    for i in 1u64.. {
        sim.scan(&format!("SIM-{i:08}"))?;
        std::thread::sleep(interval);
    }
    Ok(())
}
