//! Skin analyzer simulator: writes SKN1 lines (docs/protocols.md §4), good ones and, on purpose,
//! each kind of bad one the gateway must survive.

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use crate::sources::skin::skn1::{self, SkinReading, SkinType};

/// A plausible reading for analyzer `model` with counter `seq`.
pub fn sample(model: &str, seq: u64) -> SkinReading {
    // One decimal, as analyzers print them.
    let tenth = |v: f64| (v * 10.0).round() / 10.0;
    let f = seq as f64;
    SkinReading {
        model: model.into(),
        seq: Some(seq),
        device_time: Some("2026-11-23T05:01:02Z".into()),
        measures: [
            ("moisture", tenth(30.0 + (f * 7.3) % 50.0)),
            ("sebum", tenth(10.0 + (f * 3.1) % 40.0)),
            ("pores", (seq % 11) as f64),
            ("wrinkles", (seq % 7) as f64),
            ("pigmentation", 18.25),
            ("redness", 7.5),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        extra: [("uv_spots".to_string(), 4.0)].into(),
        skin_type: Some([SkinType::Combination, SkinType::Dry, SkinType::Oily][seq as usize % 3]),
    }
}

/// The bad lines a real analyzer (or its cable) can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// One byte of the JSON changed after the CRC was computed.
    BadCrc,
    /// A measure outside its range (moisture 140), with a correct CRC.
    OutOfRange,
    /// A line over the 16 KiB cap.
    Oversize,
    /// Binary noise, then LF.
    Garbage,
    /// The line cut before its CRC, but terminated.
    Truncated,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::BadCrc,
        Fault::OutOfRange,
        Fault::Oversize,
        Fault::Garbage,
        Fault::Truncated,
    ];

    /// The `reason` the gateway reports for it.
    pub fn reason(self) -> &'static str {
        match self {
            Fault::BadCrc => "bad_crc",
            Fault::OutOfRange => "out_of_range",
            Fault::Oversize => "too_long",
            // The noise holds a TAB, so what follows it is taken for the CRC field.
            Fault::Garbage => "bad_crc_field",
            Fault::Truncated => "no_tab",
        }
    }

    /// The bytes of the bad line, built around `good`.
    pub fn line(self, good: &SkinReading) -> Vec<u8> {
        match self {
            Fault::BadCrc => {
                let mut line = good.to_line();
                // Inside the model's value: still JSON, no longer the CRC's JSON.
                let at = line.iter().position(|&b| b == b'X').unwrap_or(2);
                line[at] = if line[at] == b'Y' { b'Z' } else { b'Y' };
                line
            }
            Fault::OutOfRange => {
                let mut bad = good.clone();
                bad.measures.insert("moisture".into(), 140.0);
                bad.to_line()
            }
            Fault::Oversize => {
                let mut big = good.clone();
                let pad = "x".repeat(skn1::MAX_LINE);
                big.device_time = Some(pad);
                big.to_line()
            }
            Fault::Garbage => {
                let mut noise: Vec<u8> = (0u8..=255).filter(|b| *b != b'\n').collect();
                noise.push(b'\n');
                noise
            }
            Fault::Truncated => {
                let json = good.to_json();
                [&json[..json.len() / 2], b"\n"].concat()
            }
        }
    }
}

/// Writes SKN1 lines to a port.
pub struct SkinSim<W: Write> {
    pub port: W,
}

impl<W: Write> SkinSim<W> {
    pub fn send(&mut self, reading: &SkinReading) -> std::io::Result<()> {
        self.raw(&reading.to_line())
    }

    /// Frames any JSON (valid for SKN1 or not) with its correct CRC.
    pub fn send_json(&mut self, json: &[u8]) -> std::io::Result<()> {
        self.raw(&skn1::encode_line(json))
    }

    /// A good line with its CRC in upper-case hex (the protocol accepts either case).
    pub fn send_upper_crc(&mut self, reading: &SkinReading) -> std::io::Result<()> {
        let line = reading.to_line();
        let tab = line.iter().rposition(|&b| b == b'\t').unwrap_or(0);
        let (json, crc) = line.split_at(tab);
        self.raw(&[json, &crc.to_ascii_uppercase()].concat())
    }

    pub fn send_fault(&mut self, fault: Fault, around: &SkinReading) -> std::io::Result<()> {
        self.raw(&fault.line(around))
    }

    pub fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.port.write_all(bytes)?;
        self.port.flush()
    }
}

/// `phygate simulate skin`: a pty at `link`, fed from stdin JSON lines (framed with their CRC)
/// or with generated readings; `faults` mixes in one bad line of each kind in turn.
pub fn run_cli(link: &Path, rate: f64, stdin: bool, faults: bool) -> anyhow::Result<()> {
    let pty = super::Pty::open(link)?;
    eprintln!(
        "simulated skin analyzer (SKN1) on {} (-> {}); set `port = \"{}\"` in a `kind = \"skin\"` device",
        pty.link.display(),
        pty.slave_path.display(),
        pty.link.display()
    );
    let mut sim = SkinSim {
        port: pty.master.try_clone()?,
    };
    if stdin {
        for line in std::io::stdin().lock().lines() {
            sim.send_json(line?.trim_end().as_bytes())?;
        }
        return Ok(());
    }
    let interval = Duration::from_secs_f64(1.0 / rate.clamp(0.01, 1000.0));
    let mut bad = Fault::ALL.iter().cycle();
    for seq in 1u64.. {
        let reading = sample("SIM-AX", seq);
        sim.send(&reading)?;
        if faults && seq % 5 == 0 {
            if let Some(&fault) = bad.next() {
                sim.send_fault(fault, &reading)?;
            }
        }
        std::thread::sleep(interval);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_valid_and_each_fault_is_rejected_for_its_reason() {
        for seq in 0..20 {
            let r = sample("AX-200", seq);
            assert_eq!(skn1::parse_line(&r.to_line()), Ok(r.clone()));
            for fault in Fault::ALL {
                let mut reader = skn1::LineReader::new();
                reader.push(&fault.line(&r));
                let got = reader.next().expect("a line").unwrap_err();
                assert_eq!(got.reason(), fault.reason(), "{fault:?}");
            }
        }
    }

    #[test]
    fn upper_case_crc_is_sent_as_such() {
        let mut sim = SkinSim { port: Vec::new() };
        sim.send_upper_crc(&sample("AX-200", 1)).unwrap();
        let crc = &sim.port[sim.port.len() - 9..sim.port.len() - 1];
        assert!(crc.iter().all(|b| !b.is_ascii_lowercase()), "{crc:?}");
        assert!(skn1::parse_line(&sim.port).is_ok());
    }
}
