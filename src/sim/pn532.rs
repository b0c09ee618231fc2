//! PN532 simulator (docs/protocols.md §2): a reader on the master side of a pty, answering the host
//! with the codec's device side. Like a real one it sleeps until the HSU wake-up, ACKs every
//! well-formed command and ignores damaged ones, resends its last response on NACK, answers "no
//! card" quickly only once MaxRetries is set, and keeps an activated card silent until
//! InRelease. Tests script it: place or remove a card, inject faults, read its counters.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::sources::nfc::pn532::{self, FirmwareVersion, HostCommand, Pn532Frame, Target};

/// A PN532 v1.6, the common module.
const FIRMWARE: FirmwareVersion = FirmwareVersion {
    ic: 0x32,
    ver: 1,
    rev: 6,
    support: 7,
};
/// How often the device thread looks at its stop flag and hang timer when the line is quiet.
const TICK: Duration = Duration::from_millis(5);

/// A card (or phone) in the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimCard {
    pub uid: Vec<u8>,
    pub sens_res: [u8; 2],
    pub sel_res: u8,
    /// For ISO 14443-4 cards: the ATS, TL byte first.
    pub ats: Option<Vec<u8>>,
}

impl SimCard {
    /// A card with `uid` (4, 7 or 10 bytes) and `sel_res` (`08` Classic 1K, `18` Classic 4K,
    /// `00` Ultralight/NTAG, `20` ISO 14443-4, which also gets an ATS).
    pub fn new(uid: &[u8], sel_res: u8) -> SimCard {
        // SENS_RES announces the UID size in bits 7-6 (single, double, triple).
        let size = match uid.len() {
            4 => 0x00,
            7 => 0x40,
            _ => 0x80,
        };
        SimCard {
            uid: uid.to_vec(),
            sens_res: [0x00, size | 0x04],
            sel_res,
            ats: (sel_res == 0x20).then(|| vec![0x05, 0x78, 0x80, 0x70, 0x02]),
        }
    }

    /// A phone in card emulation: a random 4-byte UID (`08 xx xx xx`), fixed while it stays
    /// in the field, new each time it is placed.
    pub fn random() -> SimCard {
        let uid = [0x08, fastrand::u8(..), fastrand::u8(..), fastrand::u8(..)];
        SimCard::new(&uid, 0x20)
    }

    fn target(&self) -> Target {
        Target::new(
            self.sens_res,
            self.sel_res,
            self.uid.clone(),
            self.ats.clone(),
        )
    }
}

/// A one-shot misbehaviour, applied in order: `DropAck` to the next command, the others to the
/// next response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The next response goes out with a wrong DCS; after the host's NACK it is resent intact.
    BadChecksum,
    /// The next command is lost: no ACK, no response (the host should resend it).
    DropAck,
    /// The next response stops halfway and the reader ignores everything for this long, then
    /// comes back as after a reset: asleep and unconfigured.
    Hang(Duration),
    /// These bytes go out before the next response.
    Garbage(Vec<u8>),
}

/// What the simulated reader saw and did, for tests to assert on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Wake-ups from sleep (after power-up and after each hang).
    pub wakeups: u64,
    /// Well-formed commands ACKed.
    pub commands: u64,
    pub polls: u64,
    pub polls_with_card: u64,
    pub releases: u64,
    /// NACKs from the host (each answered with the last response).
    pub nacks: u64,
    /// ACKs from the host (aborts).
    pub host_acks: u64,
    /// Commands received again after their ACK was dropped.
    pub resends: u64,
    /// Damaged or unknown frames from the host (not ACKed).
    pub bad_frames: u64,
    /// Reads ignored while asleep or hung.
    pub ignored: u64,
    pub faults_applied: u64,
    pub faults_pending: usize,
}

/// What tests change while the device thread runs.
#[derive(Default)]
struct Control {
    card: Option<SimCard>,
    faults: VecDeque<Fault>,
    stats: SimStats,
}

struct Shared {
    control: Mutex<Control>,
    stop: AtomicBool,
}

/// A running simulated reader. Dropping it unplugs it: the pty closes and its link disappears.
pub struct Pn532Sim {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    link: PathBuf,
}

impl Pn532Sim {
    /// Plugs a reader in: a pty whose slave is linked at `link`, served on its own thread.
    pub fn start(link: &Path) -> io::Result<Pn532Sim> {
        let pty = super::Pty::open(link)?;
        let shared = Arc::new(Shared {
            control: Mutex::new(Control::default()),
            stop: AtomicBool::new(false),
        });
        let device = Device::new(pty);
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("sim-pn532".into())
            .spawn(move || device.serve(&for_thread))?;
        Ok(Pn532Sim {
            shared,
            thread: Some(thread),
            link: link.to_owned(),
        })
    }

    pub fn link(&self) -> &Path {
        &self.link
    }

    /// Puts a card in the field (replacing any card there).
    pub fn place(&self, card: SimCard) {
        self.control().card = Some(card);
    }

    /// Takes the card out of the field.
    pub fn remove(&self) {
        self.control().card = None;
    }

    pub fn inject(&self, fault: Fault) {
        self.control().faults.push_back(fault);
    }

    pub fn stats(&self) -> SimStats {
        let c = self.control();
        SimStats {
            faults_pending: c.faults.len(),
            ..c.stats.clone()
        }
    }

    fn control(&self) -> MutexGuard<'_, Control> {
        // A panic in the device thread must not hide its counters from the test.
        self.shared
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Pn532Sim {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reader's own state, owned by its thread.
struct Device {
    pty: super::Pty,
    decoder: pn532::FrameDecoder,
    asleep: bool,
    /// MaxRetries set: "no card" is answered at once instead of waiting for a card.
    max_retries: bool,
    /// A card was activated by the last poll and not released: it does not answer polls.
    selected: bool,
    last_response: Option<Vec<u8>>,
    /// A command whose ACK was dropped, to recognise its resend.
    dropped: Option<Pn532Frame>,
    hung_until: Option<Instant>,
}

impl Device {
    fn new(pty: super::Pty) -> Device {
        Device {
            pty,
            decoder: pn532::FrameDecoder::new(),
            asleep: true,
            max_retries: false,
            selected: false,
            last_response: None,
            dropped: None,
            hung_until: None,
        }
    }

    fn serve(mut self, shared: &Shared) {
        let mut buf = [0u8; 1024];
        while !shared.stop.load(Ordering::SeqCst) {
            if self.hung_until.is_some_and(|t| Instant::now() >= t) {
                self.reset();
            }
            if !self.readable() {
                continue;
            }
            let n = match (&self.pty.master).read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let mut control = shared.control.lock().unwrap_or_else(|e| e.into_inner());
            if self.receive(&buf[..n], &mut control).is_err() {
                return;
            }
        }
    }

    /// Waits up to a tick for bytes from the host.
    fn readable(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(self.pty.master.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(TICK).unwrap_or(PollTimeout::NONE);
        matches!(poll(&mut fds, timeout), Ok(n) if n > 0)
    }

    /// Back to the power-up state, as after a reset.
    fn reset(&mut self) {
        self.decoder.reset();
        self.asleep = true;
        self.max_retries = false;
        self.selected = false;
        self.last_response = None;
        self.dropped = None;
        self.hung_until = None;
    }

    fn receive(&mut self, bytes: &[u8], control: &mut Control) -> io::Result<()> {
        let mut bytes = bytes;
        if self.hung_until.is_some() {
            control.stats.ignored += 1;
            return Ok(());
        }
        if self.asleep {
            // HSU wake-up: a 0x55 ends sleep; what follows it is read normally.
            let Some(at) = bytes.iter().position(|b| *b == 0x55) else {
                control.stats.ignored += 1;
                return Ok(());
            };
            self.asleep = false;
            control.stats.wakeups += 1;
            bytes = &bytes[at..];
        }
        self.decoder.push(bytes);
        while let Some(item) = self.decoder.next() {
            self.handle(item, control)?;
            if self.hung_until.is_some() {
                self.decoder.reset();
                break;
            }
        }
        Ok(())
    }

    fn handle(
        &mut self,
        item: Result<Pn532Frame, pn532::FrameError>,
        control: &mut Control,
    ) -> io::Result<()> {
        let frame = match item {
            Ok(Pn532Frame::Ack) => {
                control.stats.host_acks += 1;
                return Ok(());
            }
            Ok(Pn532Frame::Nack) => {
                control.stats.nacks += 1;
                return match self.last_response.clone() {
                    Some(r) => self.write(&r),
                    None => Ok(()),
                };
            }
            Ok(frame @ Pn532Frame::Info { .. }) => frame,
            // A damaged command gets no ACK (UM0701 §6.2.1.3).
            Ok(Pn532Frame::AppError) | Err(_) => {
                control.stats.bad_frames += 1;
                return Ok(());
            }
        };
        let Ok(command) = pn532::parse_host_command(&frame) else {
            control.stats.bad_frames += 1;
            return Ok(());
        };
        if control.faults.front() == Some(&Fault::DropAck) {
            control.faults.pop_front();
            control.stats.faults_applied += 1;
            self.dropped = Some(frame);
            return Ok(());
        }
        if self.dropped.take().is_some_and(|d| d == frame) {
            control.stats.resends += 1;
        }
        control.stats.commands += 1;
        self.write(&pn532::ACK)?;
        let Some(response) = self.respond(command, control) else {
            return Ok(());
        };
        self.last_response = Some(response.clone());
        let fault = match control.faults.front() {
            Some(Fault::DropAck) | None => None,
            Some(_) => control.faults.pop_front(),
        };
        if fault.is_some() {
            control.stats.faults_applied += 1;
        }
        match fault {
            Some(Fault::BadChecksum) => {
                let mut bad = response;
                let dcs = bad.len() - 2;
                bad[dcs] = bad[dcs].wrapping_add(1);
                self.write(&bad)
            }
            Some(Fault::Garbage(noise)) => self.write(&[noise, response].concat()),
            Some(Fault::Hang(d)) => {
                self.hung_until = Some(Instant::now() + d);
                self.write(&response[..response.len() / 2])
            }
            Some(Fault::DropAck) | None => self.write(&response),
        }
    }

    /// The response frame to a command, or None when the reader would not answer (yet).
    fn respond(&mut self, command: HostCommand, control: &mut Control) -> Option<Vec<u8>> {
        let empty = |code| pn532::encode_response(code, &[]).ok();
        match command {
            HostCommand::GetFirmwareVersion => Some(pn532::firmware_version_response(&FIRMWARE)),
            HostCommand::SamConfiguration { .. } => empty(pn532::CMD_SAM_CONFIGURATION),
            HostCommand::RfConfiguration { item, data } => {
                if let (0x05, &[_, _, passive_activation]) = (item, data.as_slice()) {
                    self.max_retries = passive_activation != 0xFF;
                }
                empty(pn532::CMD_RF_CONFIGURATION)
            }
            HostCommand::InListPassiveTarget { .. } => {
                control.stats.polls += 1;
                match &control.card {
                    Some(card) if !self.selected => {
                        self.selected = true;
                        control.stats.polls_with_card += 1;
                        pn532::in_list_passive_target_response(Some(&card.target())).ok()
                    }
                    // Without MaxRetries a real PN532 waits for a card forever.
                    _ if !self.max_retries => None,
                    _ => pn532::in_list_passive_target_response(None).ok(),
                }
            }
            HostCommand::InRelease { .. } => {
                control.stats.releases += 1;
                self.selected = false;
                pn532::encode_response(pn532::CMD_IN_RELEASE, &[0x00]).ok()
            }
            HostCommand::Other { .. } => Some(pn532::APP_ERROR.to_vec()),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        (&self.pty.master).write_all(bytes)
    }
}

/// A line of `phygate simulate nfc`'s standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliCommand {
    Place(SimCard),
    Remove,
    Fault(Fault),
    Stats,
}

/// Parses `tap UID [SEL_RES]`, `random`, `remove`, `fault bad-checksum|drop-ack|garbage|hang
/// [MS]` and `stats`. UID and SEL_RES are hex.
pub fn parse_cli_line(line: &str) -> Result<CliCommand, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["tap", uid, rest @ ..] => {
            let uid = hex(uid)?;
            if !matches!(uid.len(), 4 | 7 | 10) {
                return Err(format!("a UID has 4, 7 or 10 bytes, not {}", uid.len()));
            }
            let sel_res = match rest {
                [] if uid.len() == 4 => 0x08,
                [] => 0x00,
                [s] => match hex(s)?.as_slice() {
                    &[b] => b,
                    _ => return Err("SEL_RES is one byte, e.g. 08".into()),
                },
                _ => return Err("usage: tap UID [SEL_RES]".into()),
            };
            Ok(CliCommand::Place(SimCard::new(&uid, sel_res)))
        }
        ["random"] => Ok(CliCommand::Place(SimCard::random())),
        ["remove"] => Ok(CliCommand::Remove),
        ["stats"] => Ok(CliCommand::Stats),
        ["fault", "bad-checksum"] => Ok(CliCommand::Fault(Fault::BadChecksum)),
        ["fault", "drop-ack"] => Ok(CliCommand::Fault(Fault::DropAck)),
        ["fault", "garbage"] => Ok(CliCommand::Fault(Fault::Garbage(
            b"\x13\x37\x00\x00\xff\x05\x99 noise \xfe\xff".to_vec(),
        ))),
        ["fault", "hang", rest @ ..] => {
            let ms = match rest {
                [] => 2000,
                [ms] => ms.parse().map_err(|_| format!("{ms:?} is not milliseconds"))?,
                _ => return Err("usage: fault hang [MS]".into()),
            };
            Ok(CliCommand::Fault(Fault::Hang(Duration::from_millis(ms))))
        }
        _ => Err(
            "commands: tap UID [SEL_RES] | random | remove | fault bad-checksum|drop-ack|garbage|hang [MS] | stats"
                .into(),
        ),
    }
}

fn hex(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim_start_matches("0x");
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{s:?} is not hex bytes"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

/// `phygate simulate nfc`: a reader at `link`, driven by commands on standard input.
pub fn run_cli(link: &Path) -> anyhow::Result<()> {
    let sim = Pn532Sim::start(link)?;
    eprintln!(
        "simulated PN532 on {}; set `kind = \"nfc\"` and `port = \"{}\"` in the device's config",
        sim.link().display(),
        sim.link().display()
    );
    eprintln!(
        "type: tap 04A1B2C3 | tap 04A22B193C5E80 00 | random | remove | fault drop-ack | stats"
    );
    for line in io::stdin().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_cli_line(&line) {
            Ok(CliCommand::Place(card)) => sim.place(card),
            Ok(CliCommand::Remove) => sim.remove(),
            Ok(CliCommand::Fault(f)) => sim.inject(f),
            Ok(CliCommand::Stats) => eprintln!("{:?}", sim.stats()),
            Err(e) => eprintln!("{e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_lines() {
        let uid = [0x04, 0xA1, 0xB2, 0xC3];
        assert_eq!(
            parse_cli_line("tap 04A1B2C3"),
            Ok(CliCommand::Place(SimCard::new(&uid, 0x08)))
        );
        let Ok(CliCommand::Place(card)) = parse_cli_line("tap 04a22b193c5e80 20") else {
            panic!("a card")
        };
        assert_eq!((card.uid.len(), card.sel_res), (7, 0x20));
        assert!(card.ats.is_some());
        assert_eq!(
            parse_cli_line(" fault  hang 500 "),
            Ok(CliCommand::Fault(Fault::Hang(Duration::from_millis(500))))
        );
        assert_eq!(parse_cli_line("remove"), Ok(CliCommand::Remove));
        assert!(parse_cli_line("tap 04A1B2").is_err(), "3 bytes");
        assert!(parse_cli_line("tap 04A1B2CZ").is_err());
        assert!(parse_cli_line("explode").is_err());
    }

    #[test]
    fn random_card_is_a_random_uid() {
        let card = SimCard::random();
        assert!(card.target().is_random_uid());
        assert_eq!(card.target().card_type, pn532::CardType::Iso14443_4);
    }
}
