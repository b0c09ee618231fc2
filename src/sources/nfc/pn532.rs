//! NXP PN532 over HSU (docs/protocols.md §2, UM0701-02 §6.2): frame encoding, an incremental
//! decoder that resynchronises on garbage, the host commands the gateway sends and the
//! responses it parses, the device side of the same frames (for simulators), and the tap rule.
//! Pure: no I/O, no clock (time is passed in).

use std::time::{Duration, Instant};
use thiserror::Error;

/// Preamble + start code; every frame begins with it and the decoder scans for it.
pub const START: [u8; 3] = [0x00, 0x00, 0xFF];
pub const ACK: [u8; 6] = [0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00];
pub const NACK: [u8; 6] = [0x00, 0x00, 0xFF, 0xFF, 0x00, 0x00];
/// Application-level error frame (PN532 → host): the command was syntactically wrong.
pub const APP_ERROR: [u8; 8] = [0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00];
/// HSU wake-up: the PN532 sleeps until it sees 0x55s followed by a long enough quiet period.
pub const WAKEUP: [u8; 16] = [0x55, 0x55, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
pub const TFI_HOST: u8 = 0xD4;
pub const TFI_DEVICE: u8 = 0xD5;
/// UM0701 §6.2.1.2: the firmware limits packet data to 264 bytes (265 with TFI). Longer
/// lengths can only be corruption, so the decoder never waits for them.
pub const MAX_PD_LEN: usize = 264;
const MAX_BODY_LEN: usize = MAX_PD_LEN + 1;
const APP_ERROR_CODE: u8 = 0x7F;

pub const CMD_GET_FIRMWARE_VERSION: u8 = 0x02;
pub const CMD_SAM_CONFIGURATION: u8 = 0x14;
pub const CMD_RF_CONFIGURATION: u8 = 0x32;
pub const CMD_IN_LIST_PASSIVE_TARGET: u8 = 0x4A;
pub const CMD_IN_RELEASE: u8 = 0x52;

/// One decoded frame, either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pn532Frame {
    Ack,
    Nack,
    /// The syntax-error frame `7F`: re-initialise, the PN532 did not run the command.
    AppError,
    /// `tfi` is `TFI_HOST` or `TFI_DEVICE`; `pd` starts with the command / response code.
    Info {
        tfi: u8,
        pd: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// LEN/LCS mismatch: host sends NACK once (the PN532 resends), then re-initialises.
    #[error("bad length checksum")]
    LengthChecksum,
    /// DCS mismatch: same handling as `LengthChecksum`.
    #[error("bad data checksum")]
    DataChecksum,
    /// Declared length 0 (extended) or above the PN532's limit: treat as corruption.
    #[error("bad frame length {0}")]
    BadLength(usize),
    /// Checksums fine but the TFI is neither D4 nor D5: report, ignore the frame.
    #[error("unknown TFI {0:#04x}")]
    UnknownTfi(u8),
    /// Encoding only: the caller asked for more than `MAX_PD_LEN` bytes.
    #[error("payload of {0} bytes exceeds the PN532 limit")]
    PayloadTooLong(usize),
}

impl FrameError {
    /// A response damaged on the wire: the host answers it with NACK once.
    pub fn is_checksum_error(&self) -> bool {
        matches!(self, Self::LengthChecksum | Self::DataChecksum)
    }
}

/// Errors in the content of a well-formed frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PayloadError {
    /// Not the response (or command) we waited for: report and re-initialise.
    #[error("expected code {expected:#04x}, got {got:?}")]
    UnexpectedCode { expected: u8, got: Option<u8> },
    #[error("frame has the wrong direction (TFI {0:#04x})")]
    WrongDirection(u8),
    #[error("expected ACK / response, got {0}")]
    NotInfo(&'static str),
    #[error("payload truncated")]
    Truncated,
    #[error("{0} unexpected trailing bytes")]
    Trailing(usize),
    /// We ask for one target; more means the reader is not configured as we think.
    #[error("target count {0}")]
    TargetCount(u8),
    /// ISO 14443-3 allows only 4-, 7- and 10-byte UIDs.
    #[error("UID length {0}")]
    UidLength(u8),
    #[error("bad ATS length byte {0}")]
    AtsLength(u8),
    /// Non-zero status byte in a response (UM0701 §7.1 error codes).
    #[error("PN532 status {0:#04x}")]
    Status(u8),
}

/// Encodes `tfi` + `pd`, as a normal frame when it fits, else an extended one.
pub fn encode_frame(tfi: u8, pd: &[u8]) -> Result<Vec<u8>, FrameError> {
    check_pd(pd)?;
    Ok(frame_bytes(tfi, pd, pd.len() + 1 > 255))
}

/// Encodes an extended frame regardless of length (the PN532 accepts both forms).
pub fn encode_extended_frame(tfi: u8, pd: &[u8]) -> Result<Vec<u8>, FrameError> {
    check_pd(pd)?;
    Ok(frame_bytes(tfi, pd, true))
}

fn check_pd(pd: &[u8]) -> Result<(), FrameError> {
    if pd.len() > MAX_PD_LEN {
        return Err(FrameError::PayloadTooLong(pd.len()));
    }
    Ok(())
}

/// Callers guarantee `pd.len() <= MAX_PD_LEN`, so the length fits the header fields.
fn frame_bytes(tfi: u8, pd: &[u8], extended: bool) -> Vec<u8> {
    let len = pd.len() + 1;
    let mut out = Vec::with_capacity(len + 10);
    out.extend_from_slice(&START);
    if extended {
        let (m, l) = ((len >> 8) as u8, len as u8);
        out.extend_from_slice(&[0xFF, 0xFF, m, l, m.wrapping_add(l).wrapping_neg()]);
    } else {
        out.extend_from_slice(&[len as u8, (len as u8).wrapping_neg()]);
    }
    out.push(tfi);
    out.extend_from_slice(pd);
    out.push(checksum(tfi, pd));
    out.push(0x00);
    out
}

fn checksum(tfi: u8, pd: &[u8]) -> u8 {
    pd.iter()
        .fold(tfi, |s, b| s.wrapping_add(*b))
        .wrapping_neg()
}

/// Host → PN532 frame with a fixed, short payload (the builders below).
fn host(pd: &[u8]) -> Vec<u8> {
    frame_bytes(TFI_HOST, pd, false)
}

pub fn get_firmware_version() -> Vec<u8> {
    host(&[CMD_GET_FIRMWARE_VERSION])
}

/// Normal mode, virtual-card timeout 1 s (20 × 50 ms), use IRQ.
pub fn sam_configuration() -> Vec<u8> {
    host(&[CMD_SAM_CONFIGURATION, 0x01, 0x14, 0x01])
}

/// RFConfiguration item 5 (MaxRetries). The gateway sends `(0xFF, 0x01, 0x02)` so that
/// "no card" is the quick `4B 00` instead of an endless wait.
pub fn rf_configuration_max_retries(atr: u8, psl: u8, passive_activation: u8) -> Vec<u8> {
    host(&[CMD_RF_CONFIGURATION, 0x05, atr, psl, passive_activation])
}

/// One target, 106 kbps type A.
pub fn in_list_passive_target() -> Vec<u8> {
    host(&[CMD_IN_LIST_PASSIVE_TARGET, 0x01, 0x00])
}

/// `tg = 0` releases all targets (what the poll cycle uses).
pub fn in_release(tg: u8) -> Vec<u8> {
    host(&[CMD_IN_RELEASE, tg])
}

/// Incremental decoder for either direction. Feed bytes with `push`, then call `next` until
/// it returns `None`. Bytes that cannot start a frame are dropped and counted.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    discarded: u64,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes skipped while resynchronising (for a metric).
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Forget a partial frame, e.g. after a response timeout.
    pub fn reset(&mut self) {
        self.discarded += self.buf.len() as u64;
        self.buf.clear();
    }

    #[allow(clippy::should_implement_trait)] // fallible and resumable, not an Iterator
    pub fn next(&mut self) -> Option<Result<Pn532Frame, FrameError>> {
        let at = find_start(&self.buf);
        self.drop_front(at);
        let b = &self.buf;
        if b.len() < 5 {
            return None;
        }
        let (body_at, len) = match (b[3], b[4]) {
            (0x00, 0xFF) => return self.fixed(6, Pn532Frame::Ack),
            (0xFF, 0x00) => return self.fixed(6, Pn532Frame::Nack),
            (0xFF, 0xFF) => {
                let [m, l, lcs] = match b.get(5..8) {
                    Some(&[m, l, lcs]) => [m, l, lcs],
                    _ => return None,
                };
                if m.wrapping_add(l).wrapping_add(lcs) != 0 {
                    return self.bad_header(FrameError::LengthChecksum);
                }
                (8, usize::from(m) << 8 | usize::from(l))
            }
            (len, lcs) if len.wrapping_add(lcs) == 0 => (5, usize::from(len)),
            _ => return self.bad_header(FrameError::LengthChecksum),
        };
        if len == 0 || len > MAX_BODY_LEN {
            return self.bad_header(FrameError::BadLength(len));
        }
        // Wait for body, DCS and postamble: the PN532 sends a frame in one burst.
        let dcs_at = body_at + len;
        let &postamble = b.get(dcs_at + 1)?;
        let body = &b[body_at..dcs_at];
        let sum = body.iter().fold(b[dcs_at], |s, x| s.wrapping_add(*x));
        let item = if sum != 0 {
            Err(FrameError::DataChecksum)
        } else {
            match body {
                [APP_ERROR_CODE] => Ok(Pn532Frame::AppError),
                [tfi @ (TFI_HOST | TFI_DEVICE), pd @ ..] => Ok(Pn532Frame::Info {
                    tfi: *tfi,
                    pd: pd.to_vec(),
                }),
                [tfi, ..] => Err(FrameError::UnknownTfi(*tfi)),
                [] => Err(FrameError::BadLength(0)),
            }
        };
        // LCS vouched for the length, so the whole frame is skipped even when DCS fails.
        let used = dcs_at + 1 + usize::from(postamble == 0);
        self.buf.drain(..used);
        Some(item)
    }

    /// ACK / NACK: six bytes, the last being the postamble.
    fn fixed(&mut self, len: usize, frame: Pn532Frame) -> Option<Result<Pn532Frame, FrameError>> {
        let &postamble = self.buf.get(len - 1)?;
        self.buf.drain(..len - usize::from(postamble != 0));
        Some(Ok(frame))
    }

    /// A header we cannot trust: skip only the start code and rescan from there.
    fn bad_header(&mut self, e: FrameError) -> Option<Result<Pn532Frame, FrameError>> {
        self.drop_front(START.len());
        Some(Err(e))
    }

    fn drop_front(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        self.discarded += n as u64;
        self.buf.drain(..n);
    }
}

/// Index of the first `00 00 FF`, or of a trailing partial start code, or the end.
fn find_start(b: &[u8]) -> usize {
    if let Some(i) = b.windows(3).position(|w| w == START) {
        return i;
    }
    match b {
        [.., 0, 0] => b.len() - 2,
        [.., 0] => b.len() - 1,
        _ => b.len(),
    }
}

/// PN532 → host PD, checked to be the response to `command`; returns the bytes after the code.
pub fn response_params(frame: &Pn532Frame, command: u8) -> Result<&[u8], PayloadError> {
    info_params(frame, TFI_DEVICE, command.wrapping_add(1))
}

fn info_params(frame: &Pn532Frame, want_tfi: u8, code: u8) -> Result<&[u8], PayloadError> {
    let (tfi, pd) = match frame {
        Pn532Frame::Info { tfi, pd } => (*tfi, pd.as_slice()),
        Pn532Frame::Ack => return Err(PayloadError::NotInfo("ACK")),
        Pn532Frame::Nack => return Err(PayloadError::NotInfo("NACK")),
        Pn532Frame::AppError => return Err(PayloadError::NotInfo("application error")),
    };
    if tfi != want_tfi {
        return Err(PayloadError::WrongDirection(tfi));
    }
    match pd.split_first() {
        Some((&c, rest)) if c == code => Ok(rest),
        other => Err(PayloadError::UnexpectedCode {
            expected: code,
            got: other.map(|(c, _)| *c),
        }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FirmwareVersion {
    pub ic: u8,
    pub ver: u8,
    pub rev: u8,
    pub support: u8,
}

impl FirmwareVersion {
    pub fn is_pn532(&self) -> bool {
        self.ic == 0x32
    }
}

pub fn parse_firmware_version(frame: &Pn532Frame) -> Result<FirmwareVersion, PayloadError> {
    match response_params(frame, CMD_GET_FIRMWARE_VERSION)? {
        &[ic, ver, rev, support] => Ok(FirmwareVersion {
            ic,
            ver,
            rev,
            support,
        }),
        p if p.len() < 4 => Err(PayloadError::Truncated),
        p => Err(PayloadError::Trailing(p.len() - 4)),
    }
}

/// Response with no parameters (SAMConfiguration `15`, RFConfiguration `33`).
pub fn parse_empty_response(frame: &Pn532Frame, command: u8) -> Result<(), PayloadError> {
    match response_params(frame, command)?.len() {
        0 => Ok(()),
        n => Err(PayloadError::Trailing(n)),
    }
}

/// InRelease `53 Status`; a non-zero error code (low 6 bits) is an error.
pub fn parse_in_release(frame: &Pn532Frame) -> Result<(), PayloadError> {
    match response_params(frame, CMD_IN_RELEASE)? {
        &[status] if status & 0x3F == 0 => Ok(()),
        &[status] => Err(PayloadError::Status(status)),
        [] => Err(PayloadError::Truncated),
        p => Err(PayloadError::Trailing(p.len() - 1)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardType {
    MifareClassic1k,
    MifareClassic4k,
    UltralightNtag,
    /// DESFire, bank cards, phones in card emulation.
    Iso14443_4,
    Unknown(u8),
}

impl CardType {
    pub fn from_sel_res(sel_res: u8) -> Self {
        match sel_res {
            0x08 => Self::MifareClassic1k,
            0x18 => Self::MifareClassic4k,
            0x00 => Self::UltralightNtag,
            0x20 => Self::Iso14443_4,
            other => Self::Unknown(other),
        }
    }

    /// Name for the event's `card_type`; for `Unknown` the raw byte comes from `Target::sel_res`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::MifareClassic1k => "mifare_classic_1k",
            Self::MifareClassic4k => "mifare_classic_4k",
            Self::UltralightNtag => "ultralight_ntag",
            Self::Iso14443_4 => "iso14443_4",
            Self::Unknown(_) => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub sens_res: [u8; 2],
    pub sel_res: u8,
    pub uid: Vec<u8>,
    /// The ATS as received, TL byte included.
    pub ats: Option<Vec<u8>>,
    pub card_type: CardType,
}

impl Target {
    pub fn new(sens_res: [u8; 2], sel_res: u8, uid: Vec<u8>, ats: Option<Vec<u8>>) -> Self {
        let card_type = CardType::from_sel_res(sel_res);
        Self {
            sens_res,
            sel_res,
            uid,
            ats,
            card_type,
        }
    }

    /// ISO 14443-3: a single-size UID starting with 08 is random per activation, so it is not
    /// an identity (no card hash, never a member).
    pub fn is_random_uid(&self) -> bool {
        self.uid.len() == 4 && self.uid[0] == 0x08
    }
}

/// InListPassiveTarget: `Ok(None)` for `4B 00`, the target for `4B 01 …`.
pub fn parse_in_list_passive_target(frame: &Pn532Frame) -> Result<Option<Target>, PayloadError> {
    let p = response_params(frame, CMD_IN_LIST_PASSIVE_TARGET)?;
    let (nb, rest) = p.split_first().ok_or(PayloadError::Truncated)?;
    match (*nb, rest) {
        (0, []) => return Ok(None),
        (0, r) => return Err(PayloadError::Trailing(r.len())),
        (1, _) => {}
        (n, _) => return Err(PayloadError::TargetCount(n)),
    }
    // Tg SENS_RES(2) SEL_RES NFCIDLen
    let &[_tg, s0, s1, sel_res, uid_len, ref rest @ ..] = rest else {
        return Err(PayloadError::Truncated);
    };
    if !matches!(uid_len, 4 | 7 | 10) {
        return Err(PayloadError::UidLength(uid_len));
    }
    let (uid, ats) = rest
        .split_at_checked(usize::from(uid_len))
        .ok_or(PayloadError::Truncated)?;
    let ats = match ats.first() {
        None => None,
        Some(&0) => return Err(PayloadError::AtsLength(0)),
        Some(&tl) if usize::from(tl) > ats.len() => return Err(PayloadError::Truncated),
        Some(&tl) if usize::from(tl) < ats.len() => {
            return Err(PayloadError::Trailing(ats.len() - usize::from(tl)));
        }
        Some(_) => Some(ats.to_vec()),
    };
    Ok(Some(Target::new([s0, s1], sel_res, uid.to_vec(), ats)))
}

// ---- Device side (simulators) ----

/// A host command as a simulated PN532 sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostCommand {
    GetFirmwareVersion,
    SamConfiguration {
        params: Vec<u8>,
    },
    RfConfiguration {
        item: u8,
        data: Vec<u8>,
    },
    InListPassiveTarget {
        max_tg: u8,
        brty: u8,
        initiator_data: Vec<u8>,
    },
    InRelease {
        tg: u8,
    },
    /// A command this module does not model; a simulator answers with `APP_ERROR`.
    Other {
        code: u8,
        params: Vec<u8>,
    },
}

pub fn parse_host_command(frame: &Pn532Frame) -> Result<HostCommand, PayloadError> {
    let pd = match frame {
        Pn532Frame::Info { tfi: TFI_HOST, pd } => pd.as_slice(),
        Pn532Frame::Info { tfi, .. } => return Err(PayloadError::WrongDirection(*tfi)),
        Pn532Frame::Ack => return Err(PayloadError::NotInfo("ACK")),
        Pn532Frame::Nack => return Err(PayloadError::NotInfo("NACK")),
        Pn532Frame::AppError => return Err(PayloadError::NotInfo("application error")),
    };
    let (&code, p) = pd.split_first().ok_or(PayloadError::Truncated)?;
    Ok(match (code, p) {
        (CMD_GET_FIRMWARE_VERSION, []) => HostCommand::GetFirmwareVersion,
        (CMD_SAM_CONFIGURATION, [_, ..]) => HostCommand::SamConfiguration { params: p.to_vec() },
        (CMD_RF_CONFIGURATION, [item, data @ ..]) => HostCommand::RfConfiguration {
            item: *item,
            data: data.to_vec(),
        },
        (CMD_IN_LIST_PASSIVE_TARGET, [max_tg, brty, data @ ..]) => {
            HostCommand::InListPassiveTarget {
                max_tg: *max_tg,
                brty: *brty,
                initiator_data: data.to_vec(),
            }
        }
        (CMD_IN_RELEASE, &[tg]) => HostCommand::InRelease { tg },
        _ => HostCommand::Other {
            code,
            params: p.to_vec(),
        },
    })
}

/// PN532 → host response frame: `D5 (command + 1) params…`.
pub fn encode_response(command: u8, params: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut pd = Vec::with_capacity(params.len() + 1);
    pd.push(command.wrapping_add(1));
    pd.extend_from_slice(params);
    encode_frame(TFI_DEVICE, &pd)
}

pub fn firmware_version_response(fw: &FirmwareVersion) -> Vec<u8> {
    frame_bytes(
        TFI_DEVICE,
        &[0x03, fw.ic, fw.ver, fw.rev, fw.support],
        false,
    )
}

/// `4B 00` for no card, `4B 01 01 SENS_RES SEL_RES len UID [ATS]` for one.
pub fn in_list_passive_target_response(target: Option<&Target>) -> Result<Vec<u8>, FrameError> {
    let Some(t) = target else {
        return encode_response(CMD_IN_LIST_PASSIVE_TARGET, &[0x00]);
    };
    let uid_len = u8::try_from(t.uid.len()).map_err(|_| FrameError::PayloadTooLong(t.uid.len()))?;
    let mut p = vec![0x01, 0x01, t.sens_res[0], t.sens_res[1], t.sel_res, uid_len];
    p.extend_from_slice(&t.uid);
    p.extend_from_slice(t.ats.as_deref().unwrap_or_default());
    encode_response(CMD_IN_LIST_PASSIVE_TARGET, &p)
}

// ---- Tap rule ----

/// Per reader: a UID is a new tap when the reader has not seen it in any poll within
/// `window` (default 500 ms). A card left on the reader is one tap.
#[derive(Debug)]
pub struct TapTracker {
    window: Duration,
    seen: Vec<(Vec<u8>, Instant)>,
}

/// More distinct cards than this inside one window is not physical; bounds memory.
const MAX_TRACKED: usize = 32;

impl Default for TapTracker {
    fn default() -> Self {
        Self::new(Duration::from_millis(500))
    }
}

impl TapTracker {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            seen: Vec::new(),
        }
    }

    /// Records that a poll at `now` saw `uid`; returns true when this is a new tap.
    pub fn observe(&mut self, uid: &[u8], now: Instant) -> bool {
        // saturating: a clock that steps back counts as "just seen", never as a new tap.
        let window = self.window;
        self.seen
            .retain(|(_, t)| now.saturating_duration_since(*t) <= window);
        if let Some(entry) = self.seen.iter_mut().find(|(u, _)| u.as_slice() == uid) {
            entry.1 = entry.1.max(now);
            return false;
        }
        if self.seen.len() >= MAX_TRACKED {
            self.seen.remove(0);
        }
        self.seen.push((uid.to_vec(), now));
        true
    }
}

#[cfg(test)]
#[path = "pn532_tests.rs"]
mod tests;
