//! Configuration: TOML parsed into raw structs that reject unknown keys, then validated into
//! types the pipeline can trust (no `Option` checks deep in the flow).
//!
//! Every problem is reported with the file, the line and column of its key, and the key's full
//! path (`device[2].baud`, `mqtt.tls.ca`), and validation collects all of them at once so a
//! technician fixes a config in one pass. `load` (what `run` and `check-config` use) also checks
//! what `run` needs of the machine: the TLS files parse, the outbox directory can be written.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::de::DeValue;

// One file per area: its raw structs, their defaults, and its part of the validation.
mod brokers;
mod camera;
mod display;
mod doc;
mod gate;
mod host;
pub mod hq;
mod identity;
mod ingest;
mod mqtt;
mod ops;
mod outbox;
mod serial;
mod stages;

pub use ops::DEFAULT_STATUS_LISTEN;
pub use outbox::MIN_FILE_BYTES;

// The validated types are each stage's own settings, defined next to the stage as plain values
// (leaf files that import nothing of the config); named here too for the callers that load a
// config and hand its parts on.
pub use crate::ingest::settings::{HttpDeviceConfig, IngestConfig, Token};
pub use crate::link::settings::IdentityConfig;
pub use crate::outbox::settings::{OutboxConfig, Synchronous};
pub use crate::sources::camera::settings::CameraConfig;
pub use crate::sources::gate::settings::{GateConfig, Parity, StopBits};
pub use crate::sources::nfc::settings::NfcConfig;
pub use crate::sources::scanner::settings::ScannerConfig;
pub use crate::sources::skin::settings::SkinConfig;
pub use crate::station::{Direction, Station, StationRole};
pub use crate::status::settings::{LogConfig, StatusConfig};
pub use crate::uplink::settings::{BrokerAddr, MqttConfig, Protocol, TlsConfig, UplinkConfig};

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStation {
    id: String,
    role: StationRole,
    #[serde(default)]
    direction: Option<crate::station::Direction>,
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

        let stations = self.stations(&station_tables);

        let mut devices: Vec<DeviceConfig> = Vec::new();
        for (i, (path, node)) in device_tables.iter().enumerate() {
            if let Some(device) = self.device(i, path, node, &declared, &devices) {
                devices.push(device);
            }
        }

        let outbox = self
            .part::<outbox::RawOutbox>("outbox")
            .map(|o| self.outbox(o));
        let mqtt = self
            .required::<mqtt::RawMqtt>("mqtt")
            .map(|m| self.mqtt(m, tenant.as_deref(), gateway.as_deref()));
        let uplink = self
            .part::<mqtt::RawUplink>("uplink")
            .map(|u| self.uplink(u));
        let mut identity = self
            .part::<identity::RawIdentity>("identity")
            .map(|i| self.identity(i));
        self.stage_rules(&mut identity);
        let doc = self.doc;
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

    /// Each `[[station]]`: a valid id, declared once; a direction only at a gate.
    fn stations(&mut self, station_tables: &[(String, &'a doc::Node<'a>)]) -> Vec<Station> {
        let mut stations: Vec<Station> = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for (path, node) in station_tables {
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
                direction: s.direction.unwrap_or(crate::station::Direction::In),
            });
        }
        stations
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
}

#[cfg(test)]
mod tests;
