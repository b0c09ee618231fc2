//! SKN1 skin-analyzer protocol (docs/protocols.md §4): one JSON result per line, TAB, CRC-32 (IEEE)
//! of the JSON bytes as 8 hex digits, LF. The same JSON arrives over HTTP from tablet analyzers
//! (`parse_json_body`). Also an incremental line reader, encoders for simulators and the
//! `model` + `seq` de-duplication rule. No I/O, no clock.

use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use thiserror::Error;

/// Whole line, LF included.
pub const MAX_LINE: usize = 16 * 1024;
/// §4 gives no cap for the HTTP body; the line's cap keeps every HTTP reading sendable as a line.
pub const MAX_JSON_BODY: usize = MAX_LINE;
pub const MAX_MODEL_CHARS: usize = 64;

/// Known measures and their inclusive ranges: percent scores 0–100, grades 0–10.
const KNOWN_MEASURES: [(&str, f64, f64); 8] = [
    ("moisture", 0.0, 100.0),
    ("sebum", 0.0, 100.0),
    ("pigmentation", 0.0, 100.0),
    ("redness", 0.0, 100.0),
    ("elasticity", 0.0, 100.0),
    ("pores", 0.0, 10.0),
    ("wrinkles", 0.0, 10.0),
    ("sensitivity", 0.0, 10.0),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkinType {
    Dry,
    Oily,
    Combination,
    Normal,
    Sensitive,
}

impl SkinType {
    const ALL: [SkinType; 5] = [
        Self::Dry,
        Self::Oily,
        Self::Combination,
        Self::Normal,
        Self::Sensitive,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Dry => "dry",
            Self::Oily => "oily",
            Self::Combination => "combination",
            Self::Normal => "normal",
            Self::Sensitive => "sensitive",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SkinReading {
    pub model: String,
    pub seq: Option<u64>,
    /// The analyzer's `ts`, kept verbatim; the event's `time` is the gateway's clock.
    pub device_time: Option<String>,
    /// Known measures only, each within its range.
    pub measures: BTreeMap<String, f64>,
    /// Any other measure names, unchecked beyond being numbers.
    pub extra: BTreeMap<String, f64>,
    pub skin_type: Option<SkinType>,
}

/// Why a line or body was rejected. It is reported (`store.device.status`, `reason()`), never
/// sent as a diagnosis.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum Reject {
    #[error("line or body exceeds 16 KiB")]
    TooLong,
    #[error("empty line")]
    Empty,
    #[error("no TAB before the CRC")]
    NoTab,
    #[error("CRC field is not 8 hex digits")]
    BadCrcField,
    #[error("CRC mismatch")]
    BadCrc,
    #[error("not a JSON object")]
    BadJson,
    #[error("`v` is not 1")]
    BadVersion,
    #[error("`model` is not a string of 1-64 characters")]
    BadModel,
    #[error("`seq` is not a non-negative integer")]
    BadSeq,
    #[error("`ts` is not a string")]
    BadTs,
    #[error("`measures` is missing, not an object, or empty")]
    NoMeasures,
    #[error("measure `{name}` is not a number")]
    NotANumber { name: String },
    #[error("measure `{name}` = {value} is out of range")]
    OutOfRange { name: String, value: f64 },
    #[error("unknown `skin_type`")]
    BadSkinType,
}

impl Reject {
    /// Short machine reason for the status event and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::Empty => "empty",
            Self::NoTab => "no_tab",
            Self::BadCrcField => "bad_crc_field",
            Self::BadCrc => "bad_crc",
            Self::BadJson => "bad_json",
            Self::BadVersion => "bad_version",
            Self::BadModel => "bad_model",
            Self::BadSeq => "bad_seq",
            Self::BadTs => "bad_ts",
            Self::NoMeasures => "no_measures",
            Self::NotANumber { .. } => "not_a_number",
            Self::OutOfRange { .. } => "out_of_range",
            Self::BadSkinType => "bad_skin_type",
        }
    }
}

/// Parses one serial line, with or without its trailing LF.
pub fn parse_line(line: &[u8]) -> Result<SkinReading, Reject> {
    let (body, has_lf) = match line.strip_suffix(b"\n") {
        Some(b) => (b, true),
        None => (line, false),
    };
    // The cap counts the LF even when the caller already stripped it.
    if body.len() + 1 > MAX_LINE || (has_lf && line.len() > MAX_LINE) {
        return Err(Reject::TooLong);
    }
    if body.is_empty() {
        return Err(Reject::Empty);
    }
    // Split at the last TAB: JSON may use TAB as whitespace, the hex field never does.
    let tab = body
        .iter()
        .rposition(|&b| b == b'\t')
        .ok_or(Reject::NoTab)?;
    let (json, crc_field) = (&body[..tab], &body[tab + 1..]);
    // from_str_radix alone would accept a leading '+', so check the digits first.
    if crc_field.len() != 8 || !crc_field.iter().all(u8::is_ascii_hexdigit) {
        return Err(Reject::BadCrcField);
    }
    let want = std::str::from_utf8(crc_field)
        .ok()
        .and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or(Reject::BadCrcField)?;
    if crc32fast::hash(json) != want {
        return Err(Reject::BadCrc);
    }
    parse_json(json)
}

/// Validates the JSON posted by tablet analyzers (same rules, no CRC).
pub fn parse_json_body(body: &[u8]) -> Result<SkinReading, Reject> {
    if body.len() > MAX_JSON_BODY {
        return Err(Reject::TooLong);
    }
    parse_json(body)
}

fn parse_json(json: &[u8]) -> Result<SkinReading, Reject> {
    // serde_json caps nesting depth (128), so hostile input cannot exhaust the stack.
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(json) else {
        return Err(Reject::BadJson);
    };
    // Unknown top-level keys are ignored so analyzers can add fields without breaking us.
    if obj.get("v").and_then(Value::as_u64) != Some(1) {
        return Err(Reject::BadVersion);
    }
    let model = match obj.get("model") {
        Some(Value::String(m)) if (1..=MAX_MODEL_CHARS).contains(&m.chars().count()) => m.clone(),
        _ => return Err(Reject::BadModel),
    };
    let seq = match obj.get("seq") {
        None => None,
        Some(v) => Some(v.as_u64().ok_or(Reject::BadSeq)?),
    };
    let device_time = match obj.get("ts") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(Reject::BadTs),
    };
    let skin_type = match obj.get("skin_type") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .and_then(SkinType::from_name)
                .ok_or(Reject::BadSkinType)?,
        ),
    };
    let (measures, extra) = match obj.get("measures") {
        Some(Value::Object(m)) if !m.is_empty() => split_measures(m)?,
        _ => return Err(Reject::NoMeasures),
    };
    Ok(SkinReading {
        model,
        seq,
        device_time,
        measures,
        extra,
        skin_type,
    })
}

type Measures = BTreeMap<String, f64>;

fn split_measures(m: &Map<String, Value>) -> Result<(Measures, Measures), Reject> {
    let (mut known, mut extra) = (BTreeMap::new(), BTreeMap::new());
    for (name, v) in m {
        let value = v
            .as_f64()
            .ok_or_else(|| Reject::NotANumber { name: name.clone() })?;
        match KNOWN_MEASURES.iter().find(|(n, ..)| n == name) {
            Some(&(_, lo, hi)) if !(lo..=hi).contains(&value) => {
                return Err(Reject::OutOfRange {
                    name: name.clone(),
                    value,
                });
            }
            Some(_) => known.insert(name.clone(), value),
            None => extra.insert(name.clone(), value),
        };
    }
    Ok((known, extra))
}

/// Frames raw JSON as an SKN1 line: `json TAB crc LF` (for simulators; no validation, so a
/// simulator can send bad JSON on purpose).
pub fn encode_line(json: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(json.len() + 10);
    line.extend_from_slice(json);
    line.extend_from_slice(format!("\t{:08x}\n", crc32fast::hash(json)).as_bytes());
    line
}

impl SkinReading {
    /// The reading as SKN1 JSON (`measures` and `extra` merged back into one object).
    pub fn to_json(&self) -> Vec<u8> {
        let num = |v: f64| serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number);
        let measures: Map<String, Value> = self
            .measures
            .iter()
            .chain(&self.extra)
            .map(|(k, v)| (k.clone(), num(*v)))
            .collect();
        let mut obj = Map::new();
        obj.insert("v".into(), 1.into());
        obj.insert("model".into(), self.model.clone().into());
        if let Some(seq) = self.seq {
            obj.insert("seq".into(), seq.into());
        }
        if let Some(ts) = &self.device_time {
            obj.insert("ts".into(), ts.clone().into());
        }
        obj.insert("measures".into(), Value::Object(measures));
        if let Some(t) = self.skin_type {
            obj.insert("skin_type".into(), t.as_str().into());
        }
        // Display of a Value cannot fail, unlike to_vec's Result.
        Value::Object(obj).to_string().into_bytes()
    }

    pub fn to_line(&self) -> Vec<u8> {
        encode_line(&self.to_json())
    }
}

/// Splits a serial stream into lines and parses each. A line growing past `MAX_LINE` is
/// rejected at once (so a device that never sends LF is still reported) and the rest of it is
/// discarded up to the next LF.
#[derive(Debug, Default)]
pub struct LineReader {
    buf: Vec<u8>,
    discarding: bool,
    out: VecDeque<Result<SkinReading, Reject>>,
}

impl LineReader {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, data: &[u8]) {
        let mut rest = data;
        loop {
            let lf = rest.iter().position(|&b| b == b'\n');
            let seg = &rest[..lf.unwrap_or(rest.len())];
            if !self.discarding {
                if self.buf.len() + seg.len() + 1 > MAX_LINE {
                    self.out.push_back(Err(Reject::TooLong));
                    self.discarding = true;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(seg);
                }
            }
            let Some(i) = lf else { break };
            if !std::mem::take(&mut self.discarding) {
                self.out.push_back(parse_line(&self.buf));
            }
            self.buf.clear();
            rest = &rest[i + 1..];
        }
    }

    /// Drops a partial line (port closed or the line timed out); true if one was dropped.
    pub fn reset(&mut self) -> bool {
        let partial = !self.buf.is_empty();
        self.buf.clear();
        self.discarding = false;
        partial
    }

    #[allow(clippy::should_implement_trait)] // mirrors the other decoders' push/next shape
    pub fn next(&mut self) -> Option<Result<SkinReading, Reject>> {
        self.out.pop_front()
    }
}

/// `model` + `seq` seen again within the window (24 h) is the same reading. The window runs
/// from the first sighting, so a device resending forever cannot keep an entry alive. Time is
/// u64 milliseconds (wall clock allowed) so the caller can persist and reload entries, and
/// delete the persisted ones it forgot ([`SeqDeduper::take_forgotten`]).
#[derive(Debug)]
pub struct SeqDeduper {
    window_ms: u64,
    cap: usize,
    seen: HashMap<(String, u64), u64>,
    order: VecDeque<((String, u64), u64)>,
    /// Entries dropped (out of the window, or past the cap) since the last `take_forgotten`.
    forgotten: Vec<(String, u64)>,
}

pub const DEDUP_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;
/// Far above any analyzer's daily output; bounds memory if a device counts wildly.
pub const DEDUP_CAP: usize = 100_000;

impl Default for SeqDeduper {
    fn default() -> Self {
        Self::new(DEDUP_WINDOW_MS, DEDUP_CAP)
    }
}

impl SeqDeduper {
    pub fn new(window_ms: u64, cap: usize) -> Self {
        let cap = cap.max(1);
        Self {
            window_ms,
            cap,
            seen: HashMap::new(),
            order: VecDeque::new(),
            forgotten: Vec::new(),
        }
    }

    /// Returns true for a new reading (and records it), false for a repeat within the window.
    pub fn is_new(&mut self, model: &str, seq: u64, now_ms: u64) -> bool {
        self.expire(now_ms);
        let key = (model.to_owned(), seq);
        if let Some(&t) = self.seen.get(&key) {
            // saturating: a clock stepping back keeps it a repeat.
            if now_ms.saturating_sub(t) < self.window_ms {
                return false;
            }
        }
        // The queue bounds memory: it holds every live entry plus any stale ones.
        while self.order.len() >= self.cap {
            self.pop_oldest();
        }
        self.seen.insert(key.clone(), now_ms);
        self.order.push_back((key, now_ms));
        true
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Forgets the entries that left the window by `now_ms` (`is_new` does it too).
    pub fn forget_expired(&mut self, now_ms: u64) {
        self.expire(now_ms);
    }

    /// The entries forgotten since the last call, except those seen again since (their
    /// persisted copy is the new sighting's).
    pub fn take_forgotten(&mut self) -> Vec<(String, u64)> {
        let mut forgotten = std::mem::take(&mut self.forgotten);
        forgotten.retain(|key| !self.seen.contains_key(key));
        forgotten
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some((_, t)) = self.order.front() {
            if now_ms.saturating_sub(*t) < self.window_ms {
                break;
            }
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((key, t)) = self.order.pop_front() {
            // Only remove the map entry this queue entry created, not a later re-sighting.
            if self.seen.get(&key) == Some(&t) {
                self.seen.remove(&key);
                self.forgotten.push(key);
            }
        }
    }
}

#[cfg(test)]
#[path = "skn1_tests.rs"]
mod tests;
