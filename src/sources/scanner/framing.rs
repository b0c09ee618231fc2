//! Scanner line framing (docs/protocols.md §1), pure: bytes in, lines and rejections out.
//!
//! `[prefix] [AIM id] payload [suffix] terminator`, one code per line.

use serde::Deserialize;

/// What ends a line, as set in the scanner's profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Terminator {
    /// Most scanners' factory default.
    #[default]
    Cr,
    Lf,
    Crlf,
}

impl Terminator {
    /// "CR", "LF", "CRLF": as a scanner manual names them.
    pub fn as_str(self) -> &'static str {
        match self {
            Terminator::Cr => "CR",
            Terminator::Lf => "LF",
            Terminator::Crlf => "CRLF",
        }
    }
}

/// A scanner profile's framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framing {
    pub terminator: Terminator,
    pub prefix: Vec<u8>,
    pub suffix: Vec<u8>,
    /// AIM symbology identifiers are enabled in the scanner (never guessed from a leading `]`).
    pub aim: bool,
    /// Bytes before the terminator, prefix/AIM/suffix included.
    pub max_line: usize,
}

impl Default for Framing {
    fn default() -> Self {
        Framing {
            terminator: Terminator::Cr,
            prefix: Vec::new(),
            suffix: Vec::new(),
            aim: false,
            max_line: 4096,
        }
    }
}

/// Why a line is not a code. The string is the `reason` in `store.device.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    TooLong,
    Empty,
    InvalidUtf8,
    Partial,
    BadPrefix,
    BadSuffix,
    MissingAim,
    ControlChars,
}

impl Rejection {
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::TooLong => "too_long",
            Rejection::Empty => "empty",
            Rejection::InvalidUtf8 => "invalid_utf8",
            Rejection::Partial => "partial",
            Rejection::BadPrefix => "bad_prefix",
            Rejection::BadSuffix => "bad_suffix",
            Rejection::MissingAim => "missing_aim",
            Rejection::ControlChars => "control_chars",
        }
    }
}

/// A code as the scanner read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedCode {
    pub payload: String,
    pub symbology: &'static str,
    /// The raw three AIM characters, when the profile enables them.
    pub aim: Option<String>,
}

/// Splits a byte stream into lines, discarding over-long ones without buffering them.
#[derive(Debug)]
pub struct LineSplitter {
    terminator: Terminator,
    max_line: usize,
    buf: Vec<u8>,
    /// Inside an over-long line: drop bytes until the next terminator.
    discarding: bool,
    /// CRLF mode saw a CR that may be the first half of the terminator.
    pending_cr: bool,
}

/// One complete line, or the fact that one was too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Complete(Vec<u8>),
    TooLong,
}

impl LineSplitter {
    pub fn new(framing: &Framing) -> Self {
        LineSplitter {
            terminator: framing.terminator,
            max_line: framing.max_line,
            buf: Vec::with_capacity(256),
            discarding: false,
            pending_cr: false,
        }
    }

    /// Feeds bytes; complete lines are appended to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Line>) {
        for &b in bytes {
            match (self.terminator, b) {
                (Terminator::Cr, b'\r') | (Terminator::Lf, b'\n') => self.end_line(out),
                (Terminator::Crlf, b'\n') if self.pending_cr => {
                    self.pending_cr = false;
                    self.end_line(out);
                }
                (Terminator::Crlf, b'\r') => {
                    if self.pending_cr {
                        self.data(b'\r', out);
                    }
                    self.pending_cr = true;
                }
                _ => {
                    if self.pending_cr {
                        self.pending_cr = false;
                        self.data(b'\r', out);
                    }
                    self.data(b, out);
                }
            }
        }
    }

    fn data(&mut self, b: u8, _out: &mut [Line]) {
        if self.discarding {
            return;
        }
        if self.buf.len() >= self.max_line {
            // Over the limit: forget what we have and skip to the next terminator.
            self.buf.clear();
            self.buf.shrink_to(256);
            self.discarding = true;
            return;
        }
        self.buf.push(b);
    }

    fn end_line(&mut self, out: &mut Vec<Line>) {
        if self.discarding {
            self.discarding = false;
            out.push(Line::TooLong);
        } else {
            out.push(Line::Complete(std::mem::take(&mut self.buf)));
        }
    }

    /// True while bytes of an unterminated line are held.
    pub fn has_partial(&self) -> bool {
        self.discarding || self.pending_cr || !self.buf.is_empty()
    }

    /// Drops an unterminated line (port closed, or no terminator in time) and says why.
    pub fn discard_partial(&mut self) -> Option<Rejection> {
        if !self.has_partial() {
            return None;
        }
        let why = if self.discarding {
            Rejection::TooLong
        } else {
            Rejection::Partial
        };
        self.buf.clear();
        self.discarding = false;
        self.pending_cr = false;
        Some(why)
    }
}

/// Checks one line against the profile and parses off prefix, AIM id and suffix.
pub fn decode_line(framing: &Framing, line: &[u8]) -> Result<ScannedCode, Rejection> {
    if line.is_empty() {
        return Err(Rejection::Empty);
    }
    let line = line
        .strip_prefix(framing.prefix.as_slice())
        .ok_or(Rejection::BadPrefix)?;
    let line = line
        .strip_suffix(framing.suffix.as_slice())
        .ok_or(Rejection::BadSuffix)?;
    let text = std::str::from_utf8(line).map_err(|_| Rejection::InvalidUtf8)?;
    let (aim, payload) = if framing.aim {
        let id = text
            .get(..3)
            .filter(|id| id.starts_with(']'))
            .ok_or(Rejection::MissingAim)?;
        (Some(id), &text[3..])
    } else {
        (None, text)
    };
    if payload.is_empty() {
        return Err(Rejection::Empty);
    }
    // GS1 and ISO 15434 payloads carry GS/RS/FS/EOT as data; any other control byte is line noise.
    if payload
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\u{1d}' | '\u{1e}' | '\u{1c}' | '\u{04}'))
    {
        return Err(Rejection::ControlChars);
    }
    Ok(ScannedCode {
        payload: payload.to_owned(),
        symbology: aim.map_or("unknown", symbology),
        aim: aim.map(str::to_owned),
    })
}

/// Symbology name from an AIM identifier (ISO/IEC 15424 code character and modifier).
pub fn symbology(aim: &str) -> &'static str {
    let b = aim.as_bytes();
    match (b.get(1), b.get(2)) {
        (Some(b'Q'), _) => "qr",
        (Some(b'd'), _) => "datamatrix",
        (Some(b'C'), _) => "code128",
        (Some(b'E'), Some(b'4')) => "ean8",
        (Some(b'E'), _) => "ean13",
        (Some(b'A'), _) => "code39",
        (Some(b'G'), _) => "code93",
        (Some(b'I'), _) => "itf",
        (Some(b'F'), _) => "codabar",
        (Some(b'e'), _) => "gs1_databar",
        (Some(b'L'), _) => "pdf417",
        (Some(b'z'), _) => "aztec",
        (Some(b'U'), _) => "maxicode",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(f: &Framing, input: &[u8]) -> Vec<Line> {
        let mut s = LineSplitter::new(f);
        let mut out = Vec::new();
        s.push(input, &mut out);
        out
    }

    #[test]
    fn crlf_lines_split_across_pushes() {
        let f = Framing {
            terminator: Terminator::Crlf,
            ..Framing::default()
        };
        let mut s = LineSplitter::new(&f);
        let mut out = Vec::new();
        s.push(b"AB\r", &mut out);
        assert!(out.is_empty() && s.has_partial());
        s.push(b"\nC\rD\r\n", &mut out);
        assert_eq!(
            out,
            vec![
                Line::Complete(b"AB".to_vec()),
                Line::Complete(b"C\rD".to_vec())
            ]
        );
    }

    #[test]
    fn overlong_line_is_dropped_up_to_terminator() {
        let f = Framing {
            max_line: 16,
            ..Framing::default()
        };
        let mut input = vec![b'x'; 100_000];
        input.extend_from_slice(b"\rgood\r");
        assert_eq!(
            split(&f, &input),
            vec![Line::TooLong, Line::Complete(b"good".to_vec())]
        );
        // Exactly at the limit is fine.
        let at_limit = [vec![b'y'; 16], b"\r".to_vec()].concat();
        assert_eq!(split(&f, &at_limit), vec![Line::Complete(vec![b'y'; 16])]);
    }

    #[test]
    fn partial_line_is_reported_once() {
        let f = Framing::default();
        let mut s = LineSplitter::new(&f);
        s.push(b"half", &mut Vec::new());
        assert_eq!(s.discard_partial(), Some(Rejection::Partial));
        assert_eq!(s.discard_partial(), None);
    }

    #[test]
    fn aim_prefix_suffix_are_parsed_off() {
        let f = Framing {
            prefix: b"<".to_vec(),
            suffix: b">".to_vec(),
            aim: true,
            ..Framing::default()
        };
        let c = decode_line(&f, b"<]Q1https://x.example/?t=1>").unwrap();
        assert_eq!(c.payload, "https://x.example/?t=1");
        assert_eq!(c.symbology, "qr");
        assert_eq!(c.aim.as_deref(), Some("]Q1"));
        assert_eq!(decode_line(&f, b"]Q1abc>"), Err(Rejection::BadPrefix));
        assert_eq!(decode_line(&f, b"<]Q1abc"), Err(Rejection::BadSuffix));
        assert_eq!(decode_line(&f, b"<abc>"), Err(Rejection::MissingAim));
        assert_eq!(decode_line(&f, b"<]Q1>"), Err(Rejection::Empty));
    }

    #[test]
    fn leading_bracket_is_payload_without_aim() {
        let c = decode_line(&Framing::default(), b"]C0123").unwrap();
        assert_eq!(c.payload, "]C0123");
        assert_eq!(c.symbology, "unknown");
        assert_eq!(c.aim, None);
    }

    #[test]
    fn bad_bytes_are_rejected() {
        let f = Framing::default();
        assert_eq!(decode_line(&f, b""), Err(Rejection::Empty));
        assert_eq!(decode_line(&f, b"\xff\xfeab"), Err(Rejection::InvalidUtf8));
        assert_eq!(decode_line(&f, b"ab\x00cd"), Err(Rejection::ControlChars));
        // GS1 group separator is data.
        assert!(decode_line(&f, b"0101234\x1d10ABC").is_ok());
    }

    #[test]
    fn aim_symbologies() {
        assert_eq!(symbology("]d2"), "datamatrix");
        assert_eq!(symbology("]E0"), "ean13");
        assert_eq!(symbology("]E4"), "ean8");
        assert_eq!(symbology("]C0"), "code128");
        assert_eq!(symbology("]?0"), "unknown");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                                       cut in 0usize..2048, term in 0u8..3, aim: bool) {
            let f = Framing {
                terminator: [Terminator::Cr, Terminator::Lf, Terminator::Crlf][term as usize],
                aim,
                max_line: 64,
                ..Framing::default()
            };
            let mut s = LineSplitter::new(&f);
            let mut out = Vec::new();
            let cut = cut.min(bytes.len());
            s.push(&bytes[..cut], &mut out);
            s.push(&bytes[cut..], &mut out);
            for line in out {
                if let Line::Complete(l) = line {
                    prop_assert!(l.len() <= 64);
                    let _ = decode_line(&f, &l);
                }
            }
        }

        #[test]
        #[cfg(feature = "sim")]
        fn encode_decode_round_trip(payload in "[ -~]{1,200}", term in 0u8..3) {
            let terminator = [Terminator::Cr, Terminator::Lf, Terminator::Crlf][term as usize];
            let f = Framing { terminator, aim: true, prefix: b"@".to_vec(), ..Framing::default() };
            let wire = crate::sim::scanner::encode_line(&f, "]Q1", &payload);
            let lines = split(&f, &wire);
            prop_assert_eq!(lines.len(), 1);
            let Line::Complete(l) = &lines[0] else { panic!("too long") };
            let code = decode_line(&f, l).unwrap();
            prop_assert_eq!(code.payload, payload);
        }
    }
}
