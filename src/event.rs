//! Journey events: each type's `data`, put into the CloudEvents 1.0 envelope (docs/events.md)
//! that `phygate_proto::envelope` defines for both the gateway and HQ.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use phygate_proto::envelope::{self as wire, types, Envelope};
use serde::Serialize;
use uuid::Uuid;

pub use phygate_proto::envelope::{format_time, IdSource};

/// Eviction priority when the outbox is over quota: lowest goes first. Never the publish order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Device health and anonymous footfall.
    Telemetry = 0,
    /// Journey events without a known user.
    Anonymous = 1,
    /// Journey events of a known app user, and the outbox's own loss reports.
    Identified = 2,
}

/// An event before the outbox gives it its `seq`.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: Uuid,
    pub time: SystemTime,
    pub station: Arc<str>,
    pub userid: Option<String>,
    pub anonid: Option<String>,
    pub idsource: IdSource,
    pub stage: Option<&'static str>,
    /// The wall clock was synchronised when the event was made (`clocksync`): when false,
    /// `time` may be far off; ordering is by `seq` either way.
    pub clocksync: bool,
    pub data: EventData,
}

/// The `data` of each event type; the variant decides `type`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum EventData {
    QrScanned(QrScanned),
    DeviceStatus(DeviceStatusData),
    OutboxEvicted(OutboxEvicted),
    SkinDiagnosed(SkinDiagnosed),
    GatePassed(GatePassed),
    NfcTapped(NfcTapped),
    NfcLinked(NfcLinked),
    VisitStarted(VisitStarted),
    VisitEnded(VisitEnded),
    CommandResult(CommandResult),
    ConfigApplied(ConfigApplied),
    ConfigRejected(ConfigRejected),
}

/// `store.config.applied`: HQ's config (the `config` topic) is stored and in force; `live`
/// sections changed at once, `restart` ones change at the next start.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigApplied {
    /// `sha256:` and the first 16 hex digits of the config text's digest.
    pub version: String,
    pub live: Vec<String>,
    pub restart: Vec<String>,
}

/// `store.config.rejected`: HQ's config was refused whole; nothing of it applies.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigRejected {
    pub version: String,
    /// Every problem, as `line N: field `f`: message`.
    pub reasons: Vec<String>,
}

/// `store.nfc.linked`: a member registered a card at a kiosk (the user is in the envelope).
#[derive(Debug, Clone, Serialize)]
pub struct NfcLinked {
    pub card_hash: String,
}

/// `store.visit.started`: an identified entry.
#[derive(Debug, Clone, Serialize)]
pub struct VisitStarted {
    pub visit: String,
}

/// `store.visit.ended`: the paired exit, or no sighting for the idle time.
#[derive(Debug, Clone, Serialize)]
pub struct VisitEnded {
    pub visit: String,
    pub dwell_s: u64,
    /// `exit` or `idle`.
    pub end_reason: &'static str,
}

/// `store.command.result`: what a downlink command did.
#[derive(Debug, Clone, Serialize)]
pub struct CommandResult {
    pub command_id: String,
    /// `done`, `failed`, `refused`, `expired` or `duplicate`.
    pub outcome: &'static str,
    pub detail: String,
    /// `replay`: how many events were queued to be published again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub republished: Option<u64>,
    /// `replay`: the sub-ranges of the asked range the store no longer holds (inclusive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<Vec<[u64; 2]>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QrScanned {
    /// `app_token`, `url`, `product` or `other`.
    pub kind: &'static str,
    pub symbology: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aim: Option<String>,
    /// The code's text, for every kind but `app_token`. A token is a bearer credential, so a
    /// code that is any attempt at one (it contains `eyJ`, `link::token::JWT_PREFIX`) never has
    /// its text here, whatever its verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate_opened: Option<bool>,
}

/// A device's state in `store.device.status` (its sources report it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    Up,
    Down,
    Silent,
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceStatusData {
    pub device: String,
    pub kind: &'static str,
    pub state: DeviceState,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// `store.nfc.tapped`: never the raw UID, only its keyed hash (docs/protocols.md §6).
#[derive(Debug, Clone, Serialize)]
pub struct NfcTapped {
    /// Absent for a random UID, and while the gateway has no card key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card_hash: Option<String>,
    /// `mifare_classic_1k`, `mifare_classic_4k`, `ultralight_ntag`, `iso14443_4` or `unknown`.
    pub card_type: &'static str,
    /// The raw SEL_RES byte, only for an `unknown` card type (docs/protocols.md §2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sel_res: Option<u8>,
    pub uid_len: usize,
    pub random_uid: bool,
    /// The card is mapped to a member (the event then carries `userid`).
    pub member: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutboxEvicted {
    pub ranges: Vec<[u64; 2]>,
    pub count: u64,
    /// `bytes` (over the byte quota) or `age` (older than the retention).
    pub policy: &'static str,
}

/// `store.skin.diagnosed`: no identity of its own; a kiosk session may link it to a user.
#[derive(Debug, Clone, Serialize)]
pub struct SkinDiagnosed {
    pub model: String,
    /// Known measures, each within its range (docs/protocols.md §4).
    pub measures: std::collections::BTreeMap<String, f64>,
    /// Measures of other names, passed on unchecked.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub extra: std::collections::BTreeMap<String, f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skin_type: Option<&'static str>,
    /// The analyzer's own counter (`seq`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_seq: Option<u64>,
    /// The analyzer's `ts`, verbatim; the envelope's `time` is the gateway's clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_time: Option<String>,
}

/// `store.gate.passed`: anonymous footfall through a gate or a counted doorway.
#[derive(Debug, Clone, Serialize)]
pub struct GatePassed {
    /// The device that counted (turnstile module or people counter).
    pub gate: String,
    pub direction: crate::station::Direction,
    pub count: u64,
    /// A network counter's own interval (RFC 3339 UTC), beyond the original design (docs/architecture.md §10): a count
    /// posted late (counter offline) still says when the people passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

impl EventData {
    pub fn type_name(&self) -> &'static str {
        match self {
            EventData::QrScanned(_) => types::QR_SCANNED,
            EventData::DeviceStatus(_) => types::DEVICE_STATUS,
            EventData::OutboxEvicted(_) => types::OUTBOX_EVICTED,
            EventData::SkinDiagnosed(_) => types::SKIN_DIAGNOSED,
            EventData::GatePassed(_) => types::GATE_PASSED,
            EventData::NfcTapped(_) => types::NFC_TAPPED,
            EventData::NfcLinked(_) => types::NFC_LINKED,
            EventData::VisitStarted(_) => types::VISIT_STARTED,
            EventData::VisitEnded(_) => types::VISIT_ENDED,
            EventData::CommandResult(_) => types::COMMAND_RESULT,
            EventData::ConfigApplied(_) => types::CONFIG_APPLIED,
            EventData::ConfigRejected(_) => types::CONFIG_REJECTED,
        }
    }
}

impl Event {
    /// A new anonymous event with a fresh, time-ordered id (UUIDv7).
    pub fn new(station: Arc<str>, time: SystemTime, data: EventData) -> Self {
        Event {
            id: Uuid::now_v7(),
            time,
            station,
            userid: None,
            anonid: None,
            idsource: IdSource::None,
            stage: None,
            clocksync: crate::clock::synced(),
            data,
        }
    }

    pub fn priority(&self) -> Priority {
        match (&self.data, &self.userid) {
            (EventData::OutboxEvicted(_), _) | (_, Some(_)) => Priority::Identified,
            // Anonymous footfall goes first when over quota: HQ keeps totals, not people.
            (EventData::DeviceStatus(_) | EventData::GatePassed(_), None) => Priority::Telemetry,
            (_, None) => Priority::Anonymous,
        }
    }

    /// The structured-mode CloudEvents JSON, with the gateway's identity and the event's `seq`.
    pub fn to_json(&self, origin: &Origin, seq: u64) -> String {
        let mut out = Vec::with_capacity(JSON_ROOM);
        self.write_json(origin, seq, &IdText::new(&self.id), &mut out);
        // serde_json writes UTF-8 only.
        String::from_utf8(out).unwrap_or_default()
    }

    /// As [`Event::to_json`], appended to `out`, with the id already in text. The id, the
    /// time and the source are borrowed from stack buffers: no allocation for any of them.
    fn write_json(&self, origin: &Origin, seq: u64, id: &IdText, out: &mut Vec<u8>) {
        let mut time = [0; wire::TIME_LEN];
        let time = match wire::format_time_into(self.time, &mut time) {
            Some(text) => Cow::Borrowed(text),
            None => Cow::Owned(format_time(self.time)),
        };
        let mut source = [0; SOURCE_ROOM];
        let source = match source_into(&origin.store, &self.station, &mut source) {
            Some(text) => Cow::Borrowed(text),
            None => Cow::Owned(wire::source(&origin.store, &self.station)),
        };
        let envelope = Envelope {
            specversion: wire::SPECVERSION.into(),
            id: id.as_str().into(),
            source,
            ty: self.data.type_name().into(),
            time,
            datacontenttype: wire::DATACONTENTTYPE.into(),
            storeid: origin.store.as_str().into(),
            stationid: (*self.station).into(),
            gatewayid: origin.gateway.as_str().into(),
            seq,
            userid: self.userid.as_deref().map(Into::into),
            anonid: self.anonid.as_deref().map(Into::into),
            idsource: self.idsource,
            stage: self.stage.map(Into::into),
            clocksync: self.clocksync,
            data: &self.data,
        };
        // Serializing plain strings and numbers into memory cannot fail.
        let _ = serde_json::to_writer(out, &envelope);
    }
}

/// Room on the stack for an event's `source`: store and station ids are short names, so every
/// real one fits; a longer one is allocated as before.
const SOURCE_ROOM: usize = 128;

/// [`wire::source`] written into `buf`; `None` when it does not fit.
fn source_into<'b>(store: &str, station: &str, buf: &'b mut [u8; SOURCE_ROOM]) -> Option<&'b str> {
    let parts = ["/stores/", store, "/stations/", station];
    let mut len = 0;
    for part in parts {
        buf.get_mut(len..len + part.len())?
            .copy_from_slice(part.as_bytes());
        len += part.len();
    }
    // Whole `str`s copied end to end.
    std::str::from_utf8(&buf[..len]).ok()
}

/// A UUID as hyphenated text, held inline: the outbox's `id` column and the envelope's `id`
/// without an allocation for either.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct IdText([u8; uuid::fmt::Hyphenated::LENGTH]);

impl IdText {
    pub fn new(id: &Uuid) -> Self {
        let mut text = [0; uuid::fmt::Hyphenated::LENGTH];
        id.hyphenated().encode_lower(&mut text);
        IdText(text)
    }

    pub fn as_str(&self) -> &str {
        // `encode_lower` writes hex digits and hyphens only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for IdText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event serialised for the outbox, all but its `seq`: the JSON, the UUID and the time are
/// formatted by whoever submits it, on its own thread, so the outbox thread's transaction only
/// splices in the seq (they were 18% of that transaction's time). Its JSON buffer is the only
/// allocation serialising makes (the id, the time and the source go through stack buffers).
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The id, hyphenated (the outbox's `id` column).
    pub id: IdText,
    pub priority: Priority,
    /// The event's time in Unix milliseconds (the outbox's `created_ms`, for the retention).
    pub created_ms: i64,
    /// The JSON with [`SEQ_PLACEHOLDER`] as its seq: one allocation, not a head and a tail.
    json: String,
    /// Where the placeholder's digits start in `json`.
    seq_at: usize,
}

/// The seq given while preparing: a value no real seq reaches, so its digits are found once.
const SEQ_PLACEHOLDER: u64 = u64::MAX;
/// `"seq":` and [`SEQ_PLACEHOLDER`]'s digits, as the envelope writes them.
const SEQ_MARK: &str = "\"seq\":18446744073709551615";
/// The placeholder's digits.
const SEQ_DIGITS: usize = 20;
/// Room for a typical event's JSON, so serialising it does not grow the buffer three times.
const JSON_ROOM: usize = 1024;

impl Prepared {
    /// The event's JSON with its seq: the same bytes as [`Event::to_json`].
    pub fn body(&self, seq: u64) -> String {
        let mut body = String::with_capacity(self.json.len());
        self.write_body(seq, &mut body);
        body
    }

    /// As [`Prepared::body`], into `out` (cleared first): the outbox thread reuses one buffer
    /// for every row instead of allocating a body per row.
    pub fn write_body(&self, seq: u64, out: &mut String) {
        out.clear();
        out.push_str(&self.json[..self.seq_at]);
        // Runs once per row on the outbox thread: `itoa`, not the formatting machinery.
        out.push_str(itoa::Buffer::new().format(seq));
        out.push_str(&self.json[self.seq_at + SEQ_DIGITS..]);
    }
}

impl Event {
    /// Serialises the event for the outbox (see [`Prepared`]).
    pub fn prepare(&self, origin: &Origin) -> Prepared {
        let id = IdText::new(&self.id);
        let mut json = Vec::with_capacity(JSON_ROOM);
        self.write_json(origin, SEQ_PLACEHOLDER, &id, &mut json);
        // The envelope's `seq` comes before `data` (field order), and a `"` inside a JSON
        // string is always escaped, so the first `"seq":<placeholder>` is the envelope's.
        // (`memmem` with its searcher built once, not `str::find`: that search was an eighth
        // of serialising an event.)
        static SEQ_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| memchr::memmem::Finder::new(SEQ_MARK.as_bytes()));
        let at = SEQ_FINDER
            .find(&json)
            .expect("the envelope always has a seq");
        // serde_json writes UTF-8 only.
        let json = String::from_utf8(json).unwrap_or_default();
        Prepared {
            id,
            priority: self.priority(),
            created_ms: unix_ms_signed(self.time),
            seq_at: at + SEQ_MARK.len() - SEQ_DIGITS,
            json,
        }
    }
}

/// Milliseconds since the Unix epoch, negative for a clock set before 1970 (a board without a
/// real-time clock, before NTP): the outbox keeps the event's own time either way.
pub fn unix_ms_signed(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// Who is speaking: fixed for the gateway's life.
#[derive(Debug, Clone)]
pub struct Origin {
    pub store: String,
    pub gateway: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_prepared_body_is_the_same_bytes_as_to_json() {
        let origin = Origin {
            store: "paris-01".into(),
            gateway: "gw1".into(),
        };
        let mut e = Event::new(
            "gate-\"seq\":1".into(),
            SystemTime::UNIX_EPOCH - Duration::from_millis(1500),
            EventData::QrScanned(QrScanned {
                kind: "url",
                symbology: "qr",
                aim: None,
                payload: Some("{\"seq\":18446744073709551615}".into()),
                kid: None,
                jti: None,
                verdict: None,
                gate_opened: None,
            }),
        );
        e.userid = Some("u-1".into());
        let p = e.prepare(&origin);
        // One buffer reused from a longer body to a shorter one, as the outbox thread does.
        let mut reused = String::new();
        for seq in [u64::MAX, 1_000_000, 0, 1, 9, 10, 42, u64::MAX - 1] {
            assert_eq!(p.body(seq), e.to_json(&origin, seq), "seq {seq}");
            p.write_body(seq, &mut reused);
            assert_eq!(reused, e.to_json(&origin, seq), "seq {seq}, reused buffer");
        }
        assert_eq!(SEQ_MARK, format!("\"seq\":{SEQ_PLACEHOLDER}"));
        assert_eq!(SEQ_DIGITS, SEQ_PLACEHOLDER.to_string().len());
        assert_eq!(p.id.as_str(), e.id.hyphenated().to_string());
        assert_eq!(p.priority, Priority::Identified);
        assert_eq!(p.created_ms, -1500);
    }

    #[test]
    fn envelope_has_every_required_attribute() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_410_062_123);
        let e = Event::new(
            "gate-1".into(),
            t,
            EventData::QrScanned(QrScanned {
                kind: "product",
                symbology: "ean13",
                aim: Some("]E0".into()),
                payload: Some("4006381333931".into()),
                kid: None,
                jti: None,
                verdict: None,
                gate_opened: None,
            }),
        );
        let origin = Origin {
            store: "paris-01".into(),
            gateway: "gw1".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&e.to_json(&origin, 42)).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "store.qr.scanned");
        assert_eq!(v["source"], "/stores/paris-01/stations/gate-1");
        assert_eq!(v["time"], "2026-11-23T05:01:02.123Z");
        assert_eq!(v["seq"], 42);
        assert_eq!(v["storeid"], "paris-01");
        assert_eq!(v["stationid"], "gate-1");
        assert_eq!(v["gatewayid"], "gw1");
        assert_eq!(v["idsource"], "none");
        assert!(v["clocksync"].is_boolean());
        assert!(v.get("userid").is_none());
        assert_eq!(v["data"]["payload"], "4006381333931");
        assert_eq!(v["id"].as_str().unwrap().len(), 36);
        assert_eq!(
            Uuid::parse_str(v["id"].as_str().unwrap())
                .unwrap()
                .get_version_num(),
            7
        );
    }

    #[test]
    fn the_source_is_written_on_the_stack_or_allocated_when_too_long() {
        let mut buf = [0; SOURCE_ROOM];
        assert_eq!(
            source_into("paris-01", "gate-1", &mut buf),
            Some(wire::source("paris-01", "gate-1").as_str())
        );
        let station = "s".repeat(SOURCE_ROOM);
        assert_eq!(source_into("paris-01", &station, &mut buf), None);
        let e = Event::new(
            station.as_str().into(),
            SystemTime::now(),
            EventData::NfcLinked(NfcLinked {
                card_hash: "h".into(),
            }),
        );
        let origin = Origin {
            store: "paris-01".into(),
            gateway: "gw1".into(),
        };
        let v: serde_json::Value = serde_json::from_str(&e.to_json(&origin, 1)).unwrap();
        assert_eq!(v["source"], wire::source("paris-01", &station));
    }

    #[test]
    fn whole_seconds_still_have_three_digits() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_410_062);
        assert_eq!(format_time(t), "2026-11-23T05:01:02.000Z");
    }

    #[test]
    fn priorities_order_eviction() {
        let status = Event::new(
            "s".into(),
            SystemTime::now(),
            EventData::DeviceStatus(DeviceStatusData {
                device: "d".into(),
                kind: "scanner",
                state: DeviceState::Up,
                reason: String::new(),
                count: None,
            }),
        );
        let mut identified = status.clone();
        identified.userid = Some("u1".into());
        assert!(status.priority() < identified.priority());
    }

    #[test]
    fn hq_reads_what_the_gateway_writes() {
        let mut e = Event::new(
            "gw1".into(),
            SystemTime::now(),
            EventData::OutboxEvicted(OutboxEvicted {
                ranges: vec![[3, 5], [9, 9]],
                count: 4,
                policy: "bytes",
            }),
        );
        e.userid = Some("u1".into());
        let origin = Origin {
            store: "s1".into(),
            gateway: "gw1".into(),
        };
        let back: Envelope<'static, phygate_proto::envelope::Evicted> =
            serde_json::from_str(&e.to_json(&origin, 7)).unwrap();
        assert_eq!(back.ty, types::OUTBOX_EVICTED);
        assert_eq!(back.seq, 7);
        assert_eq!(back.userid.as_deref(), Some("u1"));
        assert_eq!(back.data.ranges, vec![[3, 5], [9, 9]]);
        assert_eq!((back.data.count, back.data.policy.as_str()), (4, "bytes"));
    }
}
