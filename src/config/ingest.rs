//! Config of skin analyzers and of the devices that post to the local HTTP ingest listener
//! (docs/protocols.md §3b, §4): serial SKN1 analyzers, tablet analyzers and people counters.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSkin {
    id: String,
    station: String,
    port: PathBuf,
    #[serde(default = "default_skin_baud")]
    baud: u32,
    #[serde(default, with = "humantime_serde")]
    silent_after: Option<Duration>,
}

/// USB-CDC analyzers ignore it; RS-232 ones are set to the same speed as scanners.
fn default_skin_baud() -> u32 {
    115_200
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpDevice {
    id: String,
    station: String,
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIngest {
    listen: Option<String>,
}

/// Loopback unless a technician opens it to the store LAN (network counters live there).
pub const DEFAULT_INGEST_LISTEN: &str = "127.0.0.1:8088";
/// Long enough not to be guessed, short enough for a device's settings page.
const TOKEN_CHARS: std::ops::RangeInclusive<usize> = 16..=256;

impl Validator<'_> {
    pub(super) fn skin_device(&mut self, i: usize, s: RawSkin) -> DeviceConfig {
        self.serial_port(i, &s.port, s.baud, "skin0");
        if s.silent_after.is_some_and(|d| d < Duration::from_secs(1)) {
            self.problem(format!("device[{i}].silent_after"), "must be at least 1s");
        }
        DeviceConfig {
            id: s.id,
            station: s.station,
            kind: DeviceKind::Skin(SkinConfig {
                port: s.port,
                baud: s.baud,
                silent_after: s.silent_after,
            }),
        }
    }

    /// A device posting to the ingest listener; `kind` wraps its validated config.
    pub(super) fn http_device(
        &mut self,
        i: usize,
        d: RawHttpDevice,
        kind: fn(HttpDeviceConfig) -> DeviceKind,
        devices: &[DeviceConfig],
    ) -> DeviceConfig {
        let field = format!("device[{i}].token");
        if !TOKEN_CHARS.contains(&d.token.len()) || !d.token.bytes().all(|b| b.is_ascii_graphic()) {
            self.problem(
                &field,
                "must be 16-256 visible ASCII characters (no spaces)",
            );
        } else if devices
            .iter()
            .filter_map(|o| o.kind.http())
            .any(|o| o.token.matches(d.token.as_bytes()))
        {
            // The token says which device is posting, so two devices cannot share one.
            self.problem(&field, "is already the token of another device");
        }
        DeviceConfig {
            id: d.id,
            station: d.station,
            kind: kind(HttpDeviceConfig {
                token: Token::new(d.token),
            }),
        }
    }

    /// The listener runs when a device posts to it, or when the section asks for it.
    pub(super) fn ingest(
        &mut self,
        raw: Option<RawIngest>,
        devices: &[DeviceConfig],
    ) -> Option<IngestConfig> {
        let wanted = raw.is_some() || devices.iter().any(|d| d.kind.http().is_some());
        let listen = raw.and_then(|r| r.listen);
        let text = listen.as_deref().unwrap_or(DEFAULT_INGEST_LISTEN);
        match text.parse::<SocketAddr>() {
            Ok(listen) => wanted.then_some(IngestConfig { listen }),
            Err(_) => {
                self.problem(
                    "ingest.listen",
                    format!("{text:?} is not an address:port, e.g. \"127.0.0.1:8088\""),
                );
                None
            }
        }
    }
}

impl DeviceKind {
    /// The config of a device that posts to the ingest listener.
    pub fn http(&self) -> Option<&HttpDeviceConfig> {
        match self {
            DeviceKind::SkinHttp(h) | DeviceKind::PeopleCounter(h) => Some(h),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
tenant = "acme"
store = "paris-01"

[[station]]
id = "kiosk-1"
role = "kiosk"

[[station]]
id = "door"
role = "gate"

[[device]]
kind = "skin"
id = "skin-1"
station = "kiosk-1"
port = "/dev/phygate/skin0"
silent_after = "10m"

[[device]]
kind = "skin_http"
id = "tablet-1"
station = "kiosk-1"
token = "tablet-token-0123456789"

[[device]]
kind = "people_counter"
id = "pc-1"
station = "door"
token = "counter-token-0123456789"

[mqtt]
host = "127.0.0.1"
"#;

    #[test]
    fn skin_and_http_devices_validate_with_defaults() {
        let c = Config::parse(BASE, Path::new("x.toml")).unwrap();
        let DeviceKind::Skin(s) = &c.devices[0].kind else {
            panic!("skin")
        };
        assert_eq!(s.baud, 115_200);
        assert_eq!(s.silent_after, Some(Duration::from_secs(600)));
        assert!(c.devices[1].kind.http().is_some());
        assert_eq!(c.devices[2].kind.name(), "people_counter");
        let ingest = c.ingest.as_ref().expect("listener on: devices post to it");
        assert_eq!(ingest.listen.to_string(), DEFAULT_INGEST_LISTEN);
        let shown = c.to_string();
        assert!(
            shown.contains("ingest listener on 127.0.0.1:8088"),
            "{shown}"
        );
        assert!(!shown.contains("token-0123"), "tokens are secrets: {shown}");
    }

    #[test]
    fn no_listener_without_http_devices() {
        let text = BASE
            .split("[[device]]\nkind = \"skin_http\"")
            .next()
            .unwrap()
            .to_owned()
            + "[mqtt]\nhost = \"h\"\n";
        let c = Config::parse(&text, Path::new("x.toml")).unwrap();
        assert!(c.ingest.is_none());
    }

    #[test]
    fn bad_tokens_listen_and_unknown_keys_are_reported() {
        let bad = BASE
            .replace("counter-token-0123456789", "tablet-token-0123456789")
            .replace("[mqtt]", "[ingest]\nlisten = \"localhost\"\n\n[mqtt]");
        let err = Config::parse(&bad, Path::new("x.toml")).unwrap_err();
        let fields: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert!(fields.contains(&"device[2].token"), "{err}");
        assert!(fields.contains(&"ingest.listen"), "{err}");

        let short = BASE.replace("tablet-token-0123456789", "short");
        let err = Config::parse(&short, Path::new("x.toml")).unwrap_err();
        assert_eq!(err.problems[0].field, "device[1].token", "{err}");

        let unknown = BASE.replace("silent_after = \"10m\"", "parity = \"even\"");
        let err = Config::parse(&unknown, Path::new("x.toml")).unwrap_err();
        assert!(err.problems[0].message.contains("parity"), "{err}");
        assert_eq!(err.problems[0].line, Some(18), "{err}");
    }

    #[test]
    fn token_comparison() {
        let t = Token::new("abcdefghijklmnop".into());
        assert!(t.matches(b"abcdefghijklmnop"));
        assert!(!t.matches(b"abcdefghijklmnoq"));
        assert!(!t.matches(b"abcdefghijklmno"));
        assert_eq!(format!("{t:?}"), "Token(redacted)");
    }
}
