//! Configuration: TOML parsed into raw structs that reject unknown keys, then validated into
//! types the pipeline can trust (no `Option` checks deep in the flow).
//!
//! Every problem is reported with the file, the line and column of its key, and the key's full
//! path (`device[2].baud`, `mqtt.tls.ca`), and validation collects all of them at once so a
//! technician fixes a config in one pass. `load` (what `run` and `check-config` use) also checks
//! what `run` needs of the machine: the TLS files parse, the outbox directory can be written.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::de::DeValue;

mod brokers;
mod camera;
mod doc;
mod gate;
mod host;
mod ingest;
mod ops;
pub use brokers::BrokerAddr;
pub use camera::CameraConfig;
pub use gate::{GateConfig, Parity, StopBits};
pub use ingest::{HttpDeviceConfig, IngestConfig, SkinConfig, Token};
pub use ops::{LogConfig, StatusConfig, DEFAULT_STATUS_LISTEN};

/// Everything wrong with one config file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

/// One problem: where it is and what is wrong.
#[derive(Debug, Clone)]
pub struct Problem {
    /// 1-based line of the key (or of the table that lacks it); None when not in the file.
    pub line: Option<usize>,
    /// 1-based column, in characters, on `line`.
    pub col: Option<usize>,
    /// The key's path: `device[2].baud`, `mqtt.tls.ca`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{} has {n} error{}:",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {}", self.file.display())?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
            }
            if let Some(col) = p.col {
                write!(f, ":{col}")?;
            }
            match p.field.as_str() {
                "-" => write!(f, ": {}", p.message)?,
                field => write!(f, ": field `{field}`: {}", p.message)?,
            }
        }
        Ok(())
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub tenant: String,
    pub store: String,
    pub gateway: String,
    pub stations: Vec<Station>,
    pub devices: Vec<DeviceConfig>,
    pub outbox: OutboxConfig,
    pub mqtt: MqttConfig,
    pub uplink: UplinkConfig,
    pub identity: IdentityConfig,
    /// The local HTTP ingest listener; `None` when no device posts to it.
    pub ingest: Option<IngestConfig>,
    /// The local status listener (page, `/metrics`, `/healthz`).
    pub status: StatusConfig,
    pub log: LogConfig,
    /// Where events' `clocksync` comes from.
    pub clock_sync: crate::clock::ClockSync,
}

/// How readings are linked to app users (docs/protocols.md §5–6).
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// The tenant's NFC card key; taps carry no card hash until it is known (config or HQ).
    pub card_key: Option<[u8; 32]>,
    /// Token public keys from config; HQ may add more on the keys topic.
    pub keys: crate::link::jwks::KeySet,
    /// Clock-skew allowance for token `iat`/`exp`.
    pub token_skew: Duration,
    /// How long an identification at a station links that station's anonymous readings.
    pub session_window: Duration,
    /// A visit with no sighting of its user for this long ends (`end_reason: idle`).
    pub visit_idle: Duration,
    /// The journey-stage rule table (`[[stage]]`, or the built-in one).
    pub stages: crate::link::stage::StageRules,
}

#[derive(Debug, Clone)]
pub struct Station {
    pub id: String,
    pub role: StationRole,
    /// Which way people pass a gate station's readers: a scan at an `out` gate ends a visit.
    pub direction: crate::sources::Direction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StationRole {
    Gate,
    Kiosk,
    Counter,
    Shelf,
}

impl StationRole {
    /// As the config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            StationRole::Gate => "gate",
            StationRole::Kiosk => "kiosk",
            StationRole::Counter => "counter",
            StationRole::Shelf => "shelf",
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub id: String,
    pub station: String,
    pub kind: DeviceKind,
}

#[derive(Debug, Clone)]
pub enum DeviceKind {
    Scanner(ScannerConfig),
    /// A serial SKN1 skin analyzer.
    Skin(SkinConfig),
    /// A tablet skin analyzer posting to the ingest listener.
    SkinHttp(HttpDeviceConfig),
    /// A network people counter posting to the ingest listener.
    PeopleCounter(HttpDeviceConfig),
    /// A turnstile through a Modbus RTU I/O module.
    Gate(GateConfig),
    Nfc(NfcConfig),
    /// A camera read for QR codes (`sources::camera`).
    Camera(CameraConfig),
}

impl DeviceKind {
    pub fn name(&self) -> &'static str {
        match self {
            DeviceKind::Scanner(_) => "scanner",
            DeviceKind::Skin(_) => "skin",
            DeviceKind::SkinHttp(_) => "skin_http",
            DeviceKind::PeopleCounter(_) => "people_counter",
            DeviceKind::Gate(_) => crate::sources::gate::KIND,
            DeviceKind::Nfc(_) => "nfc",
            DeviceKind::Camera(_) => crate::sources::camera::KIND,
        }
    }
}

/// A serial barcode / QR scanner in line mode (docs/protocols.md §1).
#[derive(Debug, Clone)]
pub struct ScannerConfig {
    pub port: PathBuf,
    pub baud: u32,
    pub framing: crate::sources::scanner::Framing,
    pub dedupe_window: Duration,
    /// Report the device `silent` after this long without a code (None: scanners may idle).
    pub silent_after: Option<Duration>,
}

/// An NFC reader: NXP PN532 over HSU (docs/protocols.md §2).
#[derive(Debug, Clone)]
pub struct NfcConfig {
    pub port: PathBuf,
    pub baud: u32,
    /// Time between the starts of two InListPassiveTarget polls.
    pub poll_interval: Duration,
    /// Report the reader `silent` after this long without a tap (None: readers may idle).
    pub silent_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    Off,
    Normal,
    Full,
    Extra,
}

impl Synchronous {
    pub fn pragma(self) -> &'static str {
        match self {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    }
}

#[derive(Debug, Clone)]
pub struct OutboxConfig {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    pub max_bytes: u64,
    pub max_age: Duration,
    /// Hard cap on the database file (SQLite `max_page_count`): at the cap, appends are refused
    /// as on a full disk, while deletes of acknowledged rows still commit (the WAL is outside
    /// the cap) and make room. None: the file system is the limit.
    pub max_file_bytes: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Never empty: `host` (+ `port`), or a cluster's `brokers`, tried in turn on each failed
    /// connect or lost connection (`uplink::brokers`).
    pub brokers: Vec<BrokerAddr>,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub keepalive: Duration,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct UplinkConfig {
    pub batch_max_events: usize,
    pub batch_max_bytes: usize,
    /// Batches published and not yet acknowledged at once.
    pub inflight: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Config {
    pub fn topic_prefix(&self) -> String {
        phygate_proto::topic::store_prefix(&self.tenant, &self.store)
    }

    pub fn events_topic(&self) -> String {
        phygate_proto::topic::events(&self.tenant, &self.store)
    }

    pub fn status_topic(&self) -> String {
        phygate_proto::topic::status(&self.tenant, &self.store)
    }

    /// Reads and validates a config file, and checks the machine can run it (the outbox
    /// directory can be created and written): what `run` and `check-config` do.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: path.to_owned(),
            problems: vec![Problem {
                line: None,
                col: None,
                field: "-".into(),
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        Config::validate(&text, path, true)
    }

    /// Parses and validates config text; `path` names the file in errors and anchors relative
    /// paths. Files the config names are read (TLS, JWKS); nothing is written.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        Config::validate(text, path, false)
    }

    fn validate(text: &str, path: &Path, host: bool) -> Result<Config, ConfigErrors> {
        let fail = |mut problems: Vec<Problem>| {
            // In the file's order; problems with no place in it (a missing table) last.
            problems.sort_by_key(|p| (p.line.is_none(), p.line, p.col));
            ConfigErrors {
                file: path.to_owned(),
                problems,
            }
        };
        let doc = doc::Doc::parse(text).map_err(fail)?;
        let mut v = Validator {
            doc: &doc,
            base: path.parent().unwrap_or(Path::new(".")),
            host,
            problems: Vec::new(),
        };
        match v.config() {
            Some(config) if v.problems.is_empty() => Ok(config),
            _ => Err(fail(v.problems)),
        }
    }
}

impl fmt::Display for Config {
    /// The summary `check-config` prints: what `run` would start.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "tenant {} / store {} / gateway {}",
            self.tenant, self.store, self.gateway
        )?;
        for s in &self.stations {
            writeln!(f, "station {} ({})", s.id, s.role.as_str())?;
        }
        for d in &self.devices {
            match &d.kind {
                DeviceKind::Scanner(s) => writeln!(
                    f,
                    "device {} at station {}: scanner on {} @ {} baud, terminator {}, AIM ids {}",
                    d.id,
                    d.station,
                    s.port.display(),
                    s.baud,
                    s.framing.terminator.as_str(),
                    if s.framing.aim { "on" } else { "off" }
                )?,
                DeviceKind::Skin(s) => writeln!(
                    f,
                    "device {} at station {}: skin analyzer (SKN1) on {} @ {} baud",
                    d.id,
                    d.station,
                    s.port.display(),
                    s.baud
                )?,
                DeviceKind::Gate(g) => {
                    writeln!(f, "device {} at station {}: {g}", d.id, d.station)?
                }
                DeviceKind::Camera(c) => {
                    writeln!(f, "device {} at station {}: {c}", d.id, d.station)?
                }
                DeviceKind::SkinHttp(_) | DeviceKind::PeopleCounter(_) => writeln!(
                    f,
                    "device {} at station {}: {} posting to the ingest listener (token set)",
                    d.id,
                    d.station,
                    d.kind.name()
                )?,
                DeviceKind::Nfc(n) => writeln!(
                    f,
                    "device {} at station {}: nfc reader (PN532) on {} @ {} baud, polled every {}",
                    d.id,
                    d.station,
                    n.port.display(),
                    n.baud,
                    crate::words::duration(n.poll_interval)
                )?,
            }
        }
        if let Some(ingest) = &self.ingest {
            writeln!(f, "ingest listener on {}", ingest.listen)?;
        }
        writeln!(f, "status page on http://{}/", self.status.listen)?;
        writeln!(
            f,
            "outbox {} (synchronous {}, quota {}, max age {}{})",
            self.outbox.path.display(),
            self.outbox.synchronous.pragma().to_ascii_lowercase(),
            crate::words::bytes(self.outbox.max_bytes),
            crate::words::duration(self.outbox.max_age),
            self.outbox
                .max_file_bytes
                .map(|b| format!(", file capped at {}", crate::words::bytes(b)))
                .unwrap_or_default()
        )?;
        writeln!(
            f,
            "mqtt {} as {}{}, events to {}",
            self.mqtt
                .brokers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" then "),
            self.mqtt.client_id,
            if self.mqtt.tls.is_some() {
                " over TLS"
            } else {
                ""
            },
            self.events_topic()
        )?;
        write!(
            f,
            "batches of up to {} events / {}, {} in flight",
            self.uplink.batch_max_events,
            crate::words::bytes(self.uplink.batch_max_bytes as u64),
            self.uplink.inflight
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Raw, as written in the file.

// Each top-level table, and each `[[device]]` and `[[station]]`, is deserialized on its own
// (`Validator::config`), so a mistake in one hides nothing in the others.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawClock {
    #[serde(default)]
    sync: crate::clock::ClockSync,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    /// base64url (no padding) of 32 bytes.
    card_key: Option<String>,
    /// A JWKS file with the token public keys.
    jwks_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    token_skew: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    session_window: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    visit_idle: Option<Duration>,
}

/// docs/protocols.md §5: 30 s of clock skew between the app's phone and the gateway.
const DEFAULT_TOKEN_SKEW: Duration = Duration::from_secs(30);
/// Long enough to scan at a kiosk and then sit through a skin diagnosis.
const DEFAULT_SESSION_WINDOW: Duration = Duration::from_secs(180);
/// Longer than any shopping trip; an exit scan usually ends a visit well before.
const DEFAULT_VISIT_IDLE: Duration = Duration::from_secs(2 * 3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStation {
    id: String,
    role: StationRole,
    #[serde(default)]
    direction: Option<crate::sources::Direction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScanner {
    id: String,
    station: String,
    port: PathBuf,
    #[serde(default = "default_scanner_baud")]
    baud: u32,
    #[serde(default)]
    terminator: crate::sources::scanner::Terminator,
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    suffix: String,
    #[serde(default)]
    aim: bool,
    #[serde(default = "default_max_line")]
    max_line: usize,
    #[serde(default = "default_dedupe", with = "humantime_serde")]
    dedupe_window: Duration,
    #[serde(default, with = "humantime_serde")]
    silent_after: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNfc {
    id: String,
    station: String,
    port: PathBuf,
    #[serde(default = "default_nfc_baud")]
    baud: u32,
    #[serde(default = "default_nfc_poll", with = "humantime_serde")]
    poll_interval: Duration,
    #[serde(default, with = "humantime_serde")]
    silent_after: Option<Duration>,
}

/// The PN532's HSU speed after power-up (the gateway never sends SetSerialBaudRate).
fn default_nfc_baud() -> u32 {
    115_200
}
/// docs/protocols.md §2: a poll every 100 ms feels instant to a customer holding out a card.
fn default_nfc_poll() -> Duration {
    Duration::from_millis(100)
}
/// A card left on the reader must be seen again within the 500 ms tap window (docs/protocols.md §2),
/// and a poll with its InRelease can take up to ~2 × 180 ms: slower polling would count it twice.
const NFC_POLL_MAX: Duration = Duration::from_millis(300);
/// Faster than this only loads the UART and the reader's RF front end.
const NFC_POLL_MIN: Duration = Duration::from_millis(20);

fn default_scanner_baud() -> u32 {
    115_200
}
fn default_max_line() -> usize {
    4096
}
fn default_dedupe() -> Duration {
    Duration::from_millis(1500)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbox {
    #[serde(default = "default_db_path")]
    path: PathBuf,
    #[serde(default = "default_synchronous")]
    synchronous: Synchronous,
    #[serde(default = "default_max_bytes")]
    max_bytes: u64,
    #[serde(default = "default_max_age", with = "humantime_serde")]
    max_age: Duration,
    #[serde(default)]
    max_file_bytes: Option<u64>,
}

impl Default for RawOutbox {
    fn default() -> Self {
        RawOutbox {
            path: default_db_path(),
            synchronous: default_synchronous(),
            max_bytes: default_max_bytes(),
            max_age: default_max_age(),
            max_file_bytes: None,
        }
    }
}

/// The smallest file cap: a few dozen SQLite pages, room for the schema and a batch.
pub const MIN_FILE_BYTES: u64 = 256 * 1024;

fn default_db_path() -> PathBuf {
    PathBuf::from("/var/lib/phygate/phygate.db")
}
/// FULL: a commit is on the platter before a reading counts as accepted (power-cut safe in WAL).
fn default_synchronous() -> Synchronous {
    Synchronous::Full
}
/// 256 MiB holds days of a busy store's events on a small SD card.
fn default_max_bytes() -> u64 {
    256 * 1024 * 1024
}
/// A week: after that HQ's journeys no longer care.
fn default_max_age() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    host: Option<String>,
    port: Option<u16>,
    /// A cluster's nodes, `"host:port"` each, instead of `host` and `port`.
    brokers: Option<Vec<String>>,
    client_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    keepalive: Duration,
    tls: Option<RawTls>,
}

fn default_keepalive() -> Duration {
    Duration::from_secs(30)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUplink {
    #[serde(default = "default_batch_events")]
    batch_max_events: usize,
    #[serde(default = "default_batch_bytes")]
    batch_max_bytes: usize,
    #[serde(default = "default_inflight")]
    inflight: usize,
    #[serde(default = "default_backoff_min", with = "humantime_serde")]
    backoff_min: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    backoff_max: Duration,
}

impl Default for RawUplink {
    fn default() -> Self {
        RawUplink {
            batch_max_events: default_batch_events(),
            batch_max_bytes: default_batch_bytes(),
            inflight: default_inflight(),
            backoff_min: default_backoff_min(),
            backoff_max: default_backoff_max(),
        }
    }
}

fn default_batch_events() -> usize {
    500
}
/// 256 KiB keeps a batch well under every broker's default packet limit.
fn default_batch_bytes() -> usize {
    256 * 1024
}
fn default_inflight() -> usize {
    8
}
fn default_backoff_min() -> Duration {
    Duration::from_millis(500)
}
/// A fleet reconnecting after an outage spreads over up to a minute.
fn default_backoff_max() -> Duration {
    Duration::from_secs(60)
}

// ---------------------------------------------------------------------------------------------
// Validation.

struct Validator<'a> {
    doc: &'a doc::Doc<'a>,
    base: &'a Path,
    /// Also check the machine: the outbox directory can be created and written. `load` does;
    /// `parse` (tests, reloads, configs from HQ) checks only the file and the files it names.
    host: bool,
    problems: Vec<Problem>,
}

/// The keys a config file may have at its top level.
const TOP_LEVEL: [&str; 14] = [
    "tenant", "store", "gateway", "station", "device", "outbox", "mqtt", "uplink", "identity",
    "ingest", "stage", "status", "log", "clock",
];

/// The values of a device's `kind`.
const KINDS: [&str; 7] = [
    "scanner",
    "skin",
    "skin_http",
    "people_counter",
    "gate",
    "nfc",
    "camera",
];

/// What the file declares, whether or not its table parsed: cross-references are checked
/// against these, so a station or device with a mistake of its own causes no second error
/// ("no device X is declared") elsewhere.
struct Declared<'a> {
    stations: Vec<&'a str>,
    /// Each `[[device]]`'s id, where it is a string.
    devices: Vec<Option<&'a str>>,
}

/// Ids end up in MQTT topics and CloudEvents `source` paths: no wildcards, slashes or spaces.
fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

const ID_RULE: &str = "must be 1-64 characters of letters, digits, '-', '_' or '.'";

/// The string at `key` of a table, as written.
fn string_in<'a>(node: &'a doc::Node<'a>, key: &str) -> Option<&'a str> {
    match node.get_ref() {
        DeValue::Table(t) => t.get(key)?.get_ref().as_str(),
        _ => None,
    }
}

impl<'a> Validator<'a> {
    /// A problem at the key `field` (a path such as `device[2].baud`). One problem per key:
    /// a key whose value did not parse has a stand-in value, and checks of it say nothing.
    fn problem(&mut self, field: impl AsRef<str>, message: impl Into<String>) {
        if self.problems.iter().any(|p| p.field == field.as_ref()) {
            return;
        }
        let problem = self.doc.problem(field.as_ref(), message);
        self.problems.push(problem);
    }

    /// The table (or value) at `key`, or its default when the file does not have it; `None`
    /// when it has mistakes that leave nothing to check (they are reported).
    fn part<T: DeserializeOwned + Default>(&mut self, key: &str) -> Option<T> {
        let doc = self.doc;
        match doc.get(key) {
            None => Some(T::default()),
            Some(node) => doc.take(key, node, &mut self.problems),
        }
    }

    fn required<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        let doc = self.doc;
        match doc.get(key) {
            None => {
                self.problem(key, "is required");
                None
            }
            Some(node) => doc.take(key, node, &mut self.problems),
        }
    }

    /// The tables written as `[[key]]`, each with its path (`device[2]`).
    fn tables(&mut self, key: &str) -> Vec<(String, &'a doc::Node<'a>)> {
        match self.doc.get(key).map(|n| n.get_ref()) {
            None => Vec::new(),
            Some(DeValue::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("{key}[{i}]"), n))
                .collect(),
            Some(_) => {
                self.problem(key, format!("expected tables, each under a [[{key}]] line"));
                Vec::new()
            }
        }
    }

    fn id(&mut self, key: &str) -> Option<String> {
        let id: String = self.required(key)?;
        if !valid_id(&id) {
            self.problem(key, format!("{id:?} {ID_RULE}"));
        }
        Some(id)
    }

    fn path(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    /// Checks the whole file; `None` only when mistakes (all reported) leave no config.
    fn config(&mut self) -> Option<Config> {
        if let DeValue::Table(root) = self.doc.root.get_ref() {
            for key in root.keys().map(|k| k.get_ref()) {
                if !TOP_LEVEL.contains(&key.as_ref()) {
                    self.problem(key, doc::unknown(key, &TOP_LEVEL, "key"));
                }
            }
        }
        let tenant = self.id("tenant");
        let store = self.id("store");
        let gateway = match self.doc.get("gateway") {
            Some(_) => self.id("gateway"),
            None => store.as_ref().map(|s| format!("{s}-gw")),
        };

        let station_tables = self.tables("station");
        let device_tables = self.tables("device");
        let declared = Declared {
            stations: station_tables
                .iter()
                .filter_map(|(_, n)| string_in(n, "id"))
                .collect(),
            devices: device_tables
                .iter()
                .map(|(_, n)| string_in(n, "id"))
                .collect(),
        };

        let mut stations: Vec<Station> = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for (path, node) in &station_tables {
            let field = format!("{path}.id");
            if let Some(id) = string_in(node, "id") {
                if !valid_id(id) {
                    self.problem(&field, format!("{id:?} {ID_RULE}"));
                } else if seen.contains(&id) {
                    self.problem(&field, format!("station {id:?} is declared twice"));
                }
                seen.push(id);
            }
            let doc = self.doc;
            let Some(s) = doc.take::<RawStation>(path, node, &mut self.problems) else {
                continue;
            };
            if s.direction.is_some() && s.role != StationRole::Gate {
                self.problem(
                    format!("{path}.direction"),
                    "only a gate station has a direction",
                );
            }
            stations.push(Station {
                id: s.id,
                role: s.role,
                direction: s.direction.unwrap_or(crate::sources::Direction::In),
            });
        }

        let mut devices: Vec<DeviceConfig> = Vec::new();
        for (i, (path, node)) in device_tables.iter().enumerate() {
            if let Some(device) = self.device(i, path, node, &declared, &devices) {
                devices.push(device);
            }
        }

        let outbox = self.part::<RawOutbox>("outbox").map(|o| self.outbox(o));
        let mqtt = self.required::<RawMqtt>("mqtt").map(|m| {
            let client_id = m.client_id.clone().unwrap_or_else(|| {
                format!(
                    "phygate-{}-{}",
                    tenant.as_deref().unwrap_or_default(),
                    gateway.as_deref().unwrap_or_default()
                )
            });
            self.mqtt(m, client_id)
        });
        let uplink = self.part::<RawUplink>("uplink").map(|u| self.uplink(u));
        let mut identity = self
            .part::<RawIdentity>("identity")
            .map(|i| self.identity(i));
        let stage_tables = self.tables("stage");
        let doc = self.doc;
        let before = self.problems.len();
        let stages: Vec<Option<crate::link::stage::StageRule>> = stage_tables
            .iter()
            .map(|(path, node)| doc.take(path, node, &mut self.problems))
            .collect();
        // Rules with mistakes (and stand-ins for them) are not checked against each other.
        if !stages.is_empty() && self.problems.len() == before {
            match crate::link::stage::StageRules::new(stages.into_iter().flatten().collect()) {
                Ok(rules) => {
                    if let Some(identity) = &mut identity {
                        identity.stages = rules;
                    }
                }
                Err(e) => self.problem("stage", e),
            }
        }
        let ingest = match doc.get("ingest") {
            None => self.ingest(None, &devices),
            Some(node) => {
                let raw = doc.take::<ingest::RawIngest>("ingest", node, &mut self.problems);
                raw.and_then(|raw| self.ingest(Some(raw), &devices))
            }
        };
        let status = self
            .part::<ops::RawStatus>("status")
            .map(|s| self.status(s, &devices, &declared));
        let log = self.part::<ops::RawLog>("log").map(|l| self.log(l));
        let clock = self.part::<RawClock>("clock");

        Some(Config {
            tenant: tenant?,
            store: store?,
            gateway: gateway?,
            stations,
            devices,
            identity: identity?,
            ingest,
            status: status?,
            log: log?,
            clock_sync: clock?.sync,
            outbox: outbox?,
            mqtt: mqtt?,
            uplink: uplink?,
        })
    }

    /// One `[[device]]`: its identity as written, then its kind's keys and values.
    fn device(
        &mut self,
        i: usize,
        path: &str,
        node: &doc::Node<'a>,
        declared: &Declared<'_>,
        devices: &[DeviceConfig],
    ) -> Option<DeviceConfig> {
        if !matches!(node.get_ref(), DeValue::Table(_)) {
            self.problem(path, "expected a table under a [[device]] line");
            return None;
        }
        if let Some(id) = declared.devices[i] {
            if !valid_id(id) {
                self.problem(format!("{path}.id"), format!("{id:?} {ID_RULE}"));
            } else if declared.devices[..i].contains(&Some(id)) {
                self.problem(
                    format!("{path}.id"),
                    format!("device {id:?} is declared twice"),
                );
            }
        }
        if let Some(station) = string_in(node, "station") {
            if !declared.stations.contains(&station) {
                self.problem(
                    format!("{path}.station"),
                    format!(
                        "no station {station:?} is declared (known: {})",
                        declared.stations.join(", ")
                    ),
                );
            }
        }
        let kind_path = format!("{path}.kind");
        let kind = match node.get_ref() {
            DeValue::Table(t) => t.get("kind").map(|k| k.get_ref().as_str()),
            _ => None,
        };
        let kind = match kind {
            None => {
                self.problem(
                    &kind_path,
                    format!("is required: one of {}", KINDS.join(", ")),
                );
                return None;
            }
            Some(None) => {
                self.problem(
                    &kind_path,
                    format!("expected a string: one of {}", KINDS.join(", ")),
                );
                return None;
            }
            Some(Some(kind)) => kind,
        };
        // The kind's own keys, without `kind`: each kind is deserialized straight into its raw
        // struct (not through a tagged enum, which buffers the table and loses every key's span).
        let mut body = node.clone();
        if let DeValue::Table(t) = body.get_mut() {
            t.remove("kind");
        }
        let doc = self.doc;
        let problems = &mut self.problems;
        match kind {
            "scanner" => doc.take(path, &body, problems).map(|s| self.scanner(i, s)),
            "skin" => doc
                .take(path, &body, problems)
                .map(|s| self.skin_device(i, s)),
            "skin_http" => doc
                .take(path, &body, problems)
                .map(|h| self.http_device(i, h, DeviceKind::SkinHttp, devices)),
            "people_counter" => doc
                .take(path, &body, problems)
                .map(|h| self.http_device(i, h, DeviceKind::PeopleCounter, devices)),
            "gate" => doc
                .take(path, &body, problems)
                .map(|g| self.gate(i, g, devices)),
            "nfc" => doc.take(path, &body, problems).map(|n| self.nfc(i, n)),
            "camera" => doc.take(path, &body, problems).map(|c| self.camera(i, c)),
            other => {
                self.problem(&kind_path, doc::unknown(other, &KINDS, "device kind"));
                None
            }
        }
    }

    fn scanner(&mut self, i: usize, s: RawScanner) -> DeviceConfig {
        let at = |f: &str| format!("device[{i}].{f}");
        self.serial_port(i, &s.port, s.baud, "scanner0");
        if !(16..=1024 * 1024).contains(&s.max_line) {
            self.problem(at("max_line"), "must be between 16 and 1048576 bytes");
        }
        if s.dedupe_window > Duration::from_secs(60) {
            self.problem(at("dedupe_window"), "must be at most 60s");
        }
        for (name, v) in [("prefix", &s.prefix), ("suffix", &s.suffix)] {
            if v.contains(['\r', '\n']) {
                self.problem(
                    at(name),
                    "must not contain CR or LF (those are terminators)",
                );
            }
        }
        DeviceConfig {
            id: s.id,
            station: s.station,
            kind: DeviceKind::Scanner(ScannerConfig {
                port: s.port,
                baud: s.baud,
                framing: crate::sources::scanner::Framing {
                    terminator: s.terminator,
                    prefix: s.prefix.into_bytes(),
                    suffix: s.suffix.into_bytes(),
                    aim: s.aim,
                    max_line: s.max_line,
                },
                dedupe_window: s.dedupe_window,
                silent_after: s.silent_after,
            }),
        }
    }

    fn outbox(&mut self, raw: RawOutbox) -> OutboxConfig {
        let outbox = OutboxConfig {
            path: self.path(raw.path),
            synchronous: raw.synchronous,
            max_bytes: raw.max_bytes,
            max_age: raw.max_age,
            max_file_bytes: raw.max_file_bytes,
        };
        if outbox.max_file_bytes.is_some_and(|b| b < MIN_FILE_BYTES) {
            self.problem(
                "outbox.max_file_bytes",
                format!("must be at least {MIN_FILE_BYTES} (256 KiB)"),
            );
        }
        if outbox.max_bytes < 1024 * 1024 {
            self.problem("outbox.max_bytes", "must be at least 1048576 (1 MiB)");
        }
        if outbox.max_age < Duration::from_secs(60) {
            self.problem("outbox.max_age", "must be at least 1m");
        }
        if self.host {
            if let Err(e) = host::outbox_writable(&outbox.path) {
                self.problem("outbox.path", e);
            }
        }
        outbox
    }

    fn mqtt(&mut self, m: RawMqtt, client_id: String) -> MqttConfig {
        let brokers = brokers::addresses(m.host, m.port, m.brokers).unwrap_or_else(|problems| {
            for (key, message) in problems {
                self.problem(key, message);
            }
            Vec::new()
        });
        if !(Duration::from_secs(5)..=Duration::from_secs(65_535)).contains(&m.keepalive) {
            self.problem("mqtt.keepalive", "must be between 5s and 65535s");
        }
        if client_id.is_empty() || client_id.len() > 128 {
            self.problem("mqtt.client_id", "must be 1-128 characters");
        }
        if m.password.is_some() && m.username.is_none() {
            self.problem("mqtt.password", "a password needs a username");
        }
        let tls = m.tls.map(|t| TlsConfig {
            ca: self.path(t.ca),
            cert: t.cert.map(|p| self.path(p)),
            key: t.key.map(|p| self.path(p)),
        });
        if let Some(t) = &tls {
            if t.cert.is_some() != t.key.is_some() {
                self.problem(
                    "mqtt.tls",
                    "a client certificate needs its key, and a key its certificate",
                );
            }
            for (key, message) in host::tls_problems(t) {
                self.problem(format!("mqtt.tls.{key}"), message);
            }
        }
        MqttConfig {
            brokers,
            client_id,
            username: m.username,
            password: m.password,
            keepalive: m.keepalive,
            tls,
        }
    }

    fn uplink(&mut self, u: RawUplink) -> UplinkConfig {
        if !(1..=10_000).contains(&u.batch_max_events) {
            self.problem("uplink.batch_max_events", "must be 1-10000");
        }
        if !(1024..=16 * 1024 * 1024).contains(&u.batch_max_bytes) {
            self.problem("uplink.batch_max_bytes", "must be 1 KiB - 16 MiB");
        }
        if !(1..=64).contains(&u.inflight) {
            self.problem("uplink.inflight", "must be 1-64");
        }
        if u.backoff_min.is_zero() || u.backoff_min > u.backoff_max {
            self.problem(
                "uplink.backoff_min",
                "must be above zero and not above backoff_max",
            );
        }
        UplinkConfig {
            batch_max_events: u.batch_max_events,
            batch_max_bytes: u.batch_max_bytes,
            inflight: u.inflight,
            backoff_min: u.backoff_min,
            backoff_max: u.backoff_max,
        }
    }

    /// Checks every serial device shares: a port named, a real speed.
    fn serial_port(&mut self, i: usize, port: &Path, baud: u32, example: &str) {
        let at = |f: &str| format!("device[{i}].{f}");
        if port.as_os_str().is_empty() {
            self.problem(
                at("port"),
                format!("must name the serial device, e.g. /dev/phygate/{example}"),
            );
        }
        if !(300..=4_000_000).contains(&baud) {
            self.problem(
                at("baud"),
                format!("{baud} is not a serial speed (300-4000000)"),
            );
        }
    }

    fn nfc(&mut self, i: usize, n: RawNfc) -> DeviceConfig {
        self.serial_port(i, &n.port, n.baud, "nfc0");
        if !(NFC_POLL_MIN..=NFC_POLL_MAX).contains(&n.poll_interval) {
            self.problem(
                format!("device[{i}].poll_interval"),
                format!(
                    "must be between {} and {} (a card left on the reader is seen again within the 500ms tap window)",
                    humantime::format_duration(NFC_POLL_MIN),
                    humantime::format_duration(NFC_POLL_MAX)
                ),
            );
        }
        DeviceConfig {
            id: n.id,
            station: n.station,
            kind: DeviceKind::Nfc(NfcConfig {
                port: n.port,
                baud: n.baud,
                poll_interval: n.poll_interval,
                silent_after: n.silent_after,
            }),
        }
    }

    fn identity(&mut self, raw: RawIdentity) -> IdentityConfig {
        use crate::link::cardhash::{parse_card_key, CardKeyError};
        let card_key = raw.card_key.and_then(|k| match parse_card_key(&k) {
            Ok(key) => Some(key),
            Err(e) => {
                let message = match e {
                    CardKeyError::Hex => e.to_string(),
                    e => format!("{e} (expected base64url of 32 bytes)"),
                };
                self.problem("identity.card_key", message);
                None
            }
        });
        let keys = match raw.jwks_file.map(|p| self.path(p)) {
            None => crate::link::jwks::KeySet::default(),
            Some(p) => match std::fs::read_to_string(&p) {
                Err(e) => {
                    self.problem(
                        "identity.jwks_file",
                        format!("cannot read {}: {e}", p.display()),
                    );
                    Default::default()
                }
                Ok(text) => crate::link::jwks::KeySet::from_jwks_json(&text).unwrap_or_else(|e| {
                    self.problem("identity.jwks_file", format!("{}: {e}", p.display()));
                    Default::default()
                }),
            },
        };
        let token_skew = raw.token_skew.unwrap_or(DEFAULT_TOKEN_SKEW);
        if token_skew > Duration::from_secs(300) {
            self.problem("identity.token_skew", "must be at most 5m (tokens live 5m)");
        }
        let session_window = raw.session_window.unwrap_or(DEFAULT_SESSION_WINDOW);
        if session_window.is_zero() || session_window > Duration::from_secs(3600) {
            self.problem("identity.session_window", "must be between 1s and 1h");
        }
        let visit_idle = raw.visit_idle.unwrap_or(DEFAULT_VISIT_IDLE);
        if visit_idle < Duration::from_secs(60) {
            self.problem("identity.visit_idle", "must be at least 1m");
        }
        IdentityConfig {
            card_key,
            keys,
            token_skew,
            session_window,
            visit_idle,
            stages: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
tenant = "acme"
store = "paris-01"

[[station]]
id = "gate-1"
role = "gate"

[[device]]
kind = "scanner"
id = "scanner-1"
station = "gate-1"
port = "/dev/ttyUSB0"
terminator = "crlf"
aim = true

[outbox]
path = "state/phygate.db"

[mqtt]
host = "127.0.0.1"
"#;

    #[test]
    fn good_config_validates_with_defaults() {
        let c = Config::parse(GOOD, Path::new("/etc/phygate/phygate.toml")).unwrap();
        assert_eq!(c.gateway, "paris-01-gw");
        assert_eq!(c.outbox.path, Path::new("/etc/phygate/state/phygate.db"));
        assert_eq!(c.outbox.synchronous, Synchronous::Full);
        assert_eq!(c.mqtt.brokers[0].port, 1883);
        assert_eq!(c.events_topic(), "phygate/v1/acme/paris-01/events");
        let DeviceKind::Scanner(s) = &c.devices[0].kind else {
            panic!("a scanner")
        };
        assert_eq!(s.baud, 115_200);
        assert!(s.framing.aim);
    }

    const NFC: &str = r#"
[[station]]
id = "kiosk-1"
role = "kiosk"

[[device]]
kind = "nfc"
id = "nfc-1"
station = "kiosk-1"
port = "/dev/phygate/nfc0"
"#;

    #[test]
    fn nfc_reader_validates_with_defaults() {
        let c = Config::parse(&format!("{GOOD}{NFC}"), Path::new("x.toml")).unwrap();
        let d = &c.devices[1];
        assert_eq!((d.id.as_str(), d.station.as_str()), ("nfc-1", "kiosk-1"));
        assert_eq!(d.kind.name(), "nfc");
        let DeviceKind::Nfc(n) = &d.kind else {
            panic!("an nfc reader")
        };
        assert_eq!(n.baud, 115_200);
        assert_eq!(n.poll_interval, Duration::from_millis(100));
        assert_eq!(n.silent_after, None);
        assert!(c.to_string().contains(
            "nfc reader (PN532) on /dev/phygate/nfc0 @ 115200 baud, polled every 100 ms"
        ));
    }

    #[test]
    fn nfc_reader_is_checked_like_the_scanner() {
        let bad = format!("{GOOD}{NFC}")
            .replace("id = \"nfc-1\"", "id = \"scanner-1\"")
            .replace(
                "port = \"/dev/phygate/nfc0\"",
                "port = \"\"\npoll_interval = \"600ms\"\nbaud = 5",
            );
        let err = Config::parse(&bad, Path::new("x.toml")).unwrap_err();
        // Each on its own key's line, in the file's order.
        let found: Vec<(&str, Option<usize>)> = err
            .problems
            .iter()
            .map(|p| (p.field.as_str(), p.line))
            .collect();
        assert_eq!(
            found,
            [
                ("device[1].id", Some(29)),
                ("device[1].port", Some(31)),
                ("device[1].poll_interval", Some(32)),
                ("device[1].baud", Some(33)),
            ],
            "{err}"
        );

        let unknown = format!("{GOOD}{NFC}").replace(
            "port = \"/dev/phygate/nfc0\"",
            "port = \"/dev/phygate/nfc0\"\nterminator = \"cr\"",
        );
        let err = Config::parse(&unknown, Path::new("x.toml")).unwrap_err();
        assert_eq!(err.problems[0].line, Some(32), "{err}");
        assert_eq!(err.problems[0].field, "device[1].terminator", "{err}");
        assert!(err.problems[0].message.contains("unknown key"), "{err}");
    }

    #[test]
    fn unknown_key_names_line_and_field() {
        let bad = GOOD.replace("aim = true", "aim = true\nparity = \"even\"");
        let err = Config::parse(&bad, Path::new("x.toml")).unwrap_err();
        let p = &err.problems[0];
        assert_eq!(p.line, Some(16), "{err}");
        assert!(p.message.contains("parity"), "{err}");
    }

    /// Regression: serde reports every error inside an array of tagged tables at the first
    /// table, so a bad key in the second device was reported on the first device's line.
    #[test]
    fn error_in_the_second_device_names_its_own_line() {
        let second = "\n[[device]]\nkind = \"scanner\"\nid = \"scanner-2\"\nstation = \"gate-1\"\nport = \"/dev/ttyUSB1\"\nparity = \"even\"\n";
        let err = Config::parse(&format!("{GOOD}{second}"), Path::new("x.toml")).unwrap_err();
        let p = &err.problems[0];
        assert_eq!(
            (p.line, p.field.as_str()),
            (Some(28), "device[1].parity"),
            "{err}"
        );
    }

    #[test]
    fn bad_value_type_names_line_and_field() {
        let bad = GOOD.replace("terminator = \"crlf\"", "terminator = \"semicolon\"");
        let err = Config::parse(&bad, Path::new("x.toml")).unwrap_err();
        let p = &err.problems[0];
        assert_eq!(p.line, Some(14), "{err}");
        assert_eq!(p.field, "device[0].terminator");
    }

    #[test]
    fn validation_collects_every_problem() {
        let bad = GOOD
            .replace("station = \"gate-1\"", "station = \"gate-9\"")
            .replace("store = \"paris-01\"", "store = \"paris/01\"")
            .replace("host = \"127.0.0.1\"", "host = \"127.0.0.1\"\nport = 0");
        let err = Config::parse(&bad, Path::new("x.toml")).unwrap_err();
        let fields: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert!(fields.contains(&"store"), "{err}");
        assert!(fields.contains(&"device[0].station"), "{err}");
        assert!(fields.contains(&"mqtt.port"), "{err}");
        let station = err
            .problems
            .iter()
            .find(|p| p.field == "device[0].station")
            .unwrap();
        assert_eq!(station.line, Some(12), "the station key's line: {err}");
    }

    #[test]
    fn every_hw_profile_is_a_valid_device() {
        let profiles = [
            include_str!("../hw/profiles/scanner-serial.toml"),
            include_str!("../hw/profiles/nfc-pn532-hsu.toml"),
            include_str!("../hw/profiles/skin-skn1.toml"),
            include_str!("../hw/profiles/gate-modbus-io.toml"),
        ];
        for profile in profiles {
            let text = format!(
                "tenant = \"acme\"\nstore = \"s1\"\n[[station]]\nid = \"entrance\"\nrole = \"gate\"\n\
                 [[station]]\nid = \"beauty-kiosk\"\nrole = \"kiosk\"\n[mqtt]\nhost = \"h\"\n{profile}"
            );
            if let Err(e) = Config::parse(&text, Path::new("profile.toml")) {
                panic!("{e}\n{profile}");
            }
        }
    }
}
