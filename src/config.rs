//! Configuration: TOML parsed into raw structs that reject unknown keys, then validated into
//! types the pipeline can trust (no `Option` checks deep in the flow).
//!
//! Every problem is reported with the file, the line and the field, and validation collects all
//! of them at once so a technician fixes a config in one pass.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

mod camera;
mod gate;
mod ingest;
mod ops;
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
    pub line: Option<usize>,
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
            write!(f, ": field `{}`: {}", p.field, p.message)?;
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
    pub host: String,
    pub port: u16,
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
        format!("phygate/v1/{}/{}", self.tenant, self.store)
    }

    pub fn events_topic(&self) -> String {
        format!("{}/events", self.topic_prefix())
    }

    pub fn status_topic(&self) -> String {
        format!("{}/status", self.topic_prefix())
    }

    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
            file: path.to_owned(),
            problems: vec![Problem {
                line: None,
                field: "-".into(),
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates config text; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let fail = |problems| ConfigErrors {
            file: path.to_owned(),
            problems,
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| fail(vec![parse_problem(text, &e)]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut v = Validator {
            text,
            base,
            problems: Vec::new(),
        };
        let config = v.config(raw);
        if v.problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(v.problems))
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
            "mqtt {}:{} as {}{}, events to {}",
            self.mqtt.host,
            self.mqtt.port,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    tenant: Spanned<String>,
    store: Spanned<String>,
    gateway: Option<Spanned<String>>,
    #[serde(default)]
    station: Vec<Spanned<RawStation>>,
    /// Each device is parsed on its own (into `RawDevice`) so that an error names its own
    /// table: serde reports every error in an array of tagged tables at the array's first one.
    #[serde(default)]
    device: Vec<Spanned<toml::Table>>,
    #[serde(default)]
    outbox: RawOutbox,
    mqtt: Spanned<RawMqtt>,
    #[serde(default)]
    uplink: RawUplink,
    #[serde(default)]
    identity: RawIdentity,
    ingest: Option<ingest::RawIngest>,
    /// The journey-stage rule table; the built-in one when absent.
    #[serde(default)]
    stage: Vec<crate::link::stage::StageRule>,
    #[serde(default)]
    status: ops::RawStatus,
    #[serde(default)]
    log: ops::RawLog,
    #[serde(default)]
    clock: RawClock,
}

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
#[serde(tag = "kind", rename_all = "snake_case")]
enum RawDevice {
    Scanner(RawScanner),
    Skin(ingest::RawSkin),
    SkinHttp(ingest::RawHttpDevice),
    PeopleCounter(ingest::RawHttpDevice),
    Gate(gate::RawGate),
    Nfc(RawNfc),
    Camera(camera::RawCamera),
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
    host: String,
    #[serde(default = "default_mqtt_port")]
    port: u16,
    client_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
    #[serde(default = "default_keepalive", with = "humantime_serde")]
    keepalive: Duration,
    tls: Option<RawTls>,
}

fn default_mqtt_port() -> u16 {
    1883
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
    batch_max_events: Spanned<usize>,
    #[serde(default = "default_batch_bytes")]
    batch_max_bytes: Spanned<usize>,
    #[serde(default = "default_inflight")]
    inflight: Spanned<usize>,
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

fn default_batch_events() -> Spanned<usize> {
    Spanned::new(0..0, 500)
}
/// 256 KiB keeps a batch well under every broker's default packet limit.
fn default_batch_bytes() -> Spanned<usize> {
    Spanned::new(0..0, 256 * 1024)
}
fn default_inflight() -> Spanned<usize> {
    Spanned::new(0..0, 8)
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
    text: &'a str,
    base: &'a Path,
    problems: Vec<Problem>,
}

/// Ids end up in MQTT topics and CloudEvents `source` paths: no wildcards, slashes or spaces.
fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

const ID_RULE: &str = "must be 1-64 characters of letters, digits, '-', '_' or '.'";

impl Validator<'_> {
    fn line_of(&self, span: &std::ops::Range<usize>) -> Option<usize> {
        line_of(self.text, span.start, span.end)
    }

    fn problem(
        &mut self,
        span: &std::ops::Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        let line = self.line_of(span);
        self.problems.push(Problem {
            line,
            field: field.into(),
            message: message.into(),
        });
    }

    fn id(&mut self, s: &Spanned<String>, field: &str) -> String {
        if !valid_id(s.get_ref()) {
            self.problem(&s.span(), field, format!("{:?} {ID_RULE}", s.get_ref()));
        }
        s.get_ref().clone()
    }

    fn path(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let tenant = self.id(&raw.tenant, "tenant");
        let store = self.id(&raw.store, "store");
        let gateway = match &raw.gateway {
            Some(g) => self.id(g, "gateway"),
            None => format!("{store}-gw"),
        };

        let mut stations: Vec<Station> = Vec::new();
        for (i, s) in raw.station.iter().enumerate() {
            let span = s.span();
            let s = s.get_ref();
            let field = format!("station[{i}].id");
            if !valid_id(&s.id) {
                self.problem(&span, &field, format!("{:?} {ID_RULE}", s.id));
            } else if stations.iter().any(|o| o.id == s.id) {
                self.problem(
                    &span,
                    &field,
                    format!("station {:?} is declared twice", s.id),
                );
            }
            if s.direction.is_some() && s.role != StationRole::Gate {
                self.problem(
                    &span,
                    format!("station[{i}].direction"),
                    "only a gate station has a direction",
                );
            }
            stations.push(Station {
                id: s.id.clone(),
                role: s.role,
                direction: s.direction.unwrap_or(crate::sources::Direction::In),
            });
        }

        let mut devices: Vec<DeviceConfig> = Vec::new();
        for (i, d) in raw.device.into_iter().enumerate() {
            let span = d.span();
            let d = match toml::Value::Table(d.into_inner()).try_into::<RawDevice>() {
                Ok(d) => d,
                Err(e) => {
                    let problem = problem_at(self.text, e.message(), Some(span));
                    self.problems.push(problem);
                    continue;
                }
            };
            let s = match d {
                RawDevice::Scanner(s) => s,
                RawDevice::Skin(r) => {
                    devices.push(self.skin_device(i, &span, r, &stations, &devices));
                    continue;
                }
                RawDevice::SkinHttp(r) => {
                    let kind = DeviceKind::SkinHttp;
                    devices.push(self.http_device(i, &span, r, kind, &stations, &devices));
                    continue;
                }
                RawDevice::PeopleCounter(r) => {
                    let kind = DeviceKind::PeopleCounter;
                    devices.push(self.http_device(i, &span, r, kind, &stations, &devices));
                    continue;
                }
                RawDevice::Gate(g) => {
                    self.device_identity(i, &span, (&g.id, &g.station), &stations, &devices);
                    let gate = self.gate(&span, i, g, &devices);
                    devices.push(gate);
                    continue;
                }
                RawDevice::Nfc(n) => {
                    let device = self.nfc(i, &span, n, &devices, &stations);
                    devices.push(device);
                    continue;
                }
                RawDevice::Camera(c) => {
                    let device = self.camera(&span, i, c, &stations, &devices);
                    devices.push(device);
                    continue;
                }
            };
            let at = |f: &str| format!("device[{i}].{f}");
            self.device_identity(i, &span, (&s.id, &s.station), &stations, &devices);
            self.serial_port(&span, i, &s.port, s.baud, "scanner0");
            if !(16..=1024 * 1024).contains(&s.max_line) {
                self.problem(
                    &span,
                    at("max_line"),
                    "must be between 16 and 1048576 bytes",
                );
            }
            if s.dedupe_window > Duration::from_secs(60) {
                self.problem(&span, at("dedupe_window"), "must be at most 60s");
            }
            for (name, v) in [("prefix", &s.prefix), ("suffix", &s.suffix)] {
                if v.contains(['\r', '\n']) {
                    self.problem(
                        &span,
                        at(name),
                        "must not contain CR or LF (those are terminators)",
                    );
                }
            }
            devices.push(DeviceConfig {
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
            });
        }

        let outbox = OutboxConfig {
            path: self.path(raw.outbox.path),
            synchronous: raw.outbox.synchronous,
            max_bytes: raw.outbox.max_bytes,
            max_age: raw.outbox.max_age,
            max_file_bytes: raw.outbox.max_file_bytes,
        };
        if outbox.max_file_bytes.is_some_and(|b| b < MIN_FILE_BYTES) {
            self.problems.push(Problem {
                line: find_key_line(self.text, "max_file_bytes"),
                field: "outbox.max_file_bytes".into(),
                message: format!("must be at least {MIN_FILE_BYTES} (256 KiB)"),
            });
        }
        if outbox.max_bytes < 1024 * 1024 {
            self.problems.push(Problem {
                line: find_key_line(self.text, "max_bytes"),
                field: "outbox.max_bytes".into(),
                message: "must be at least 1048576 (1 MiB)".into(),
            });
        }
        if outbox.max_age < Duration::from_secs(60) {
            self.problems.push(Problem {
                line: find_key_line(self.text, "max_age"),
                field: "outbox.max_age".into(),
                message: "must be at least 1m".into(),
            });
        }

        let mspan = raw.mqtt.span();
        let m = raw.mqtt.into_inner();
        if m.host.trim().is_empty() {
            self.problem(&mspan, "mqtt.host", "must name the HQ broker");
        }
        if m.port == 0 {
            self.problem(&mspan, "mqtt.port", "must be 1-65535");
        }
        if !(Duration::from_secs(5)..=Duration::from_secs(65_535)).contains(&m.keepalive) {
            self.problem(&mspan, "mqtt.keepalive", "must be between 5s and 65535s");
        }
        let client_id = m
            .client_id
            .unwrap_or_else(|| format!("phygate-{tenant}-{gateway}"));
        if client_id.is_empty() || client_id.len() > 128 {
            self.problem(&mspan, "mqtt.client_id", "must be 1-128 characters");
        }
        if m.password.is_some() && m.username.is_none() {
            self.problem(&mspan, "mqtt.password", "a password needs a username");
        }
        let tls = m.tls.map(|t| TlsConfig {
            ca: self.path(t.ca),
            cert: t.cert.map(|p| self.path(p)),
            key: t.key.map(|p| self.path(p)),
        });
        if let Some(t) = &tls {
            if t.cert.is_some() != t.key.is_some() {
                self.problem(
                    &mspan,
                    "mqtt.tls",
                    "a client certificate needs its key, and a key its certificate",
                );
            }
            for (f, p) in [
                ("ca", Some(&t.ca)),
                ("cert", t.cert.as_ref()),
                ("key", t.key.as_ref()),
            ] {
                if let Some(p) = p {
                    if !p.is_file() {
                        self.problem(
                            &mspan,
                            format!("mqtt.tls.{f}"),
                            format!("{} is not a readable file", p.display()),
                        );
                    }
                }
            }
        }

        let u = raw.uplink;
        if !(1..=10_000).contains(u.batch_max_events.get_ref()) {
            self.problem(
                &u.batch_max_events.span(),
                "uplink.batch_max_events",
                "must be 1-10000",
            );
        }
        if !(1024..=16 * 1024 * 1024).contains(u.batch_max_bytes.get_ref()) {
            self.problem(
                &u.batch_max_bytes.span(),
                "uplink.batch_max_bytes",
                "must be 1 KiB - 16 MiB",
            );
        }
        if !(1..=64).contains(u.inflight.get_ref()) {
            self.problem(&u.inflight.span(), "uplink.inflight", "must be 1-64");
        }
        if u.backoff_min.is_zero() || u.backoff_min > u.backoff_max {
            self.problems.push(Problem {
                line: find_key_line(self.text, "backoff_min"),
                field: "uplink.backoff_min".into(),
                message: "must be above zero and not above backoff_max".into(),
            });
        }

        let mut identity = self.identity(raw.identity);
        if !raw.stage.is_empty() {
            match crate::link::stage::StageRules::new(raw.stage) {
                Ok(rules) => identity.stages = rules,
                Err(e) => self.keyed("stage", "stage", e),
            }
        }
        let ingest = self.ingest(raw.ingest, &devices);
        let status = self.status(raw.status, &devices);
        let log = self.log(raw.log);

        Config {
            tenant,
            store,
            gateway,
            stations,
            devices,
            identity,
            ingest,
            status,
            log,
            clock_sync: raw.clock.sync,
            outbox,
            mqtt: MqttConfig {
                host: m.host,
                port: m.port,
                client_id,
                username: m.username,
                password: m.password,
                keepalive: m.keepalive,
                tls,
            },
            uplink: UplinkConfig {
                batch_max_events: *u.batch_max_events.get_ref(),
                batch_max_bytes: *u.batch_max_bytes.get_ref(),
                inflight: *u.inflight.get_ref(),
                backoff_min: u.backoff_min,
                backoff_max: u.backoff_max,
            },
        }
    }
}

impl Validator<'_> {
    /// The id and station every device has: a valid, unique id at a declared station.
    pub(super) fn device_identity(
        &mut self,
        i: usize,
        span: &std::ops::Range<usize>,
        (id, station): (&str, &str),
        stations: &[Station],
        devices: &[DeviceConfig],
    ) {
        if !valid_id(id) {
            self.problem(span, format!("device[{i}].id"), format!("{id:?} {ID_RULE}"));
        } else if devices.iter().any(|o| o.id == id) {
            self.problem(
                span,
                format!("device[{i}].id"),
                format!("device {id:?} is declared twice"),
            );
        }
        if !stations.iter().any(|st| st.id == station) {
            let known: Vec<&str> = stations.iter().map(|s| s.id.as_str()).collect();
            self.problem(
                span,
                format!("device[{i}].station"),
                format!(
                    "no station {station:?} is declared (known: {})",
                    known.join(", ")
                ),
            );
        }
    }

    /// Checks every serial device shares: a port named, a real speed.
    fn serial_port(
        &mut self,
        span: &std::ops::Range<usize>,
        i: usize,
        port: &Path,
        baud: u32,
        example: &str,
    ) {
        let at = |f: &str| format!("device[{i}].{f}");
        if port.as_os_str().is_empty() {
            self.problem(
                span,
                at("port"),
                format!("must name the serial device, e.g. /dev/phygate/{example}"),
            );
        }
        if !(300..=4_000_000).contains(&baud) {
            self.problem(
                span,
                at("baud"),
                format!("{baud} is not a serial speed (300-4000000)"),
            );
        }
    }

    fn nfc(
        &mut self,
        i: usize,
        span: &std::ops::Range<usize>,
        n: RawNfc,
        devices: &[DeviceConfig],
        stations: &[Station],
    ) -> DeviceConfig {
        self.device_identity(i, span, (&n.id, &n.station), stations, devices);
        self.serial_port(span, i, &n.port, n.baud, "nfc0");
        if !(NFC_POLL_MIN..=NFC_POLL_MAX).contains(&n.poll_interval) {
            self.problem(
                span,
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
        let card_key = raw
            .card_key
            .and_then(|k| match crate::link::cardhash::parse_card_key(&k) {
                Ok(key) => Some(key),
                Err(e) => {
                    self.keyed(
                        "card_key",
                        "identity.card_key",
                        format!("{e} (expected base64url of 32 bytes)"),
                    );
                    None
                }
            });
        let keys = match raw.jwks_file.map(|p| self.path(p)) {
            None => crate::link::jwks::KeySet::default(),
            Some(p) => match std::fs::read_to_string(&p) {
                Err(e) => {
                    self.keyed(
                        "jwks_file",
                        "identity.jwks_file",
                        format!("cannot read {}: {e}", p.display()),
                    );
                    Default::default()
                }
                Ok(text) => crate::link::jwks::KeySet::from_jwks_json(&text).unwrap_or_else(|e| {
                    self.keyed(
                        "jwks_file",
                        "identity.jwks_file",
                        format!("{}: {e}", p.display()),
                    );
                    Default::default()
                }),
            },
        };
        let token_skew = raw.token_skew.unwrap_or(DEFAULT_TOKEN_SKEW);
        if token_skew > Duration::from_secs(300) {
            self.keyed(
                "token_skew",
                "identity.token_skew",
                "must be at most 5m (tokens live 5m)",
            );
        }
        let session_window = raw.session_window.unwrap_or(DEFAULT_SESSION_WINDOW);
        if session_window.is_zero() || session_window > Duration::from_secs(3600) {
            self.keyed(
                "session_window",
                "identity.session_window",
                "must be between 1s and 1h",
            );
        }
        let visit_idle = raw.visit_idle.unwrap_or(DEFAULT_VISIT_IDLE);
        if visit_idle < Duration::from_secs(60) {
            self.keyed("visit_idle", "identity.visit_idle", "must be at least 1m");
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

    /// A problem on the line where `key = …` is written.
    fn keyed(&mut self, key: &str, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            line: find_key_line(self.text, key),
            field: field.into(),
            message: message.into(),
        });
    }
}

/// 1-based line of a byte offset; None for the synthetic spans of defaults.
fn line_of(text: &str, start: usize, end: usize) -> Option<usize> {
    if start == 0 && end == 0 {
        return None;
    }
    let start = start.min(text.len());
    Some(
        text.as_bytes()[..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1,
    )
}

/// The line where `key = …` is first written (for values serde gives no span for).
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

/// Turns a TOML/serde error into a problem naming the line and, where the line shows it, the key.
fn parse_problem(text: &str, e: &toml::de::Error) -> Problem {
    problem_at(text, e.message(), e.span())
}

/// A problem `message` about the TOML at `span` (a whole table, or a key or value).
fn problem_at(text: &str, message: &str, span: Option<std::ops::Range<usize>>) -> Problem {
    let message = message.trim().replace('\n', " ");
    let mut line = span.and_then(|s| line_of(text, s.start, s.end.max(s.start + 1)));
    // Tagged tables (devices) are buffered before serde sees them, so the span is the whole
    // table: find the line of the key or value the message names inside it.
    if let (Some(start), Some(word)) = (line, message.split('`').nth(1)) {
        let inside = text
            .lines()
            .enumerate()
            .skip(start)
            .take_while(|(_, l)| !l.trim_start().starts_with('['));
        for (i, l) in inside {
            let (key, value) = l.split_once('=').unwrap_or((l, ""));
            if key.trim() == word || value.contains(&format!("\"{word}\"")) {
                line = Some(i + 1);
                break;
            }
        }
    }
    let field = line
        .and_then(|l| text.lines().nth(l - 1))
        .and_then(|l| {
            let l = l.trim();
            if l.starts_with('[') {
                Some(l.trim_matches(['[', ']']).to_string())
            } else {
                l.split_once('=').map(|(k, _)| k.trim().to_string())
            }
        })
        .unwrap_or_else(|| "-".into());
    Problem {
        line,
        field,
        message,
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
        assert_eq!(c.mqtt.port, 1883);
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
        let fields: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "device[1].id",
                "device[1].port",
                "device[1].baud",
                "device[1].poll_interval"
            ],
            "{err}"
        );
        assert!(err.problems.iter().all(|p| p.line == Some(27)), "{err}");

        let unknown = format!("{GOOD}{NFC}").replace(
            "port = \"/dev/phygate/nfc0\"",
            "port = \"/dev/phygate/nfc0\"\nterminator = \"cr\"",
        );
        let err = Config::parse(&unknown, Path::new("x.toml")).unwrap_err();
        assert_eq!(err.problems[0].line, Some(32), "{err}");
        assert_eq!(err.problems[0].field, "terminator", "{err}");
        assert!(err.problems[0].message.contains("unknown field"), "{err}");
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
        assert_eq!((p.line, p.field.as_str()), (Some(28), "parity"), "{err}");
    }

    #[test]
    fn bad_value_type_names_line_and_field() {
        let bad = GOOD.replace("terminator = \"crlf\"", "terminator = \"semicolon\"");
        let err = Config::parse(&bad, Path::new("x.toml")).unwrap_err();
        let p = &err.problems[0];
        assert_eq!(p.line, Some(14), "{err}");
        assert_eq!(p.field, "terminator");
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
        assert_eq!(
            station.line,
            Some(9),
            "the device table starts on line 9: {err}"
        );
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
