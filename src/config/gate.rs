//! `kind = "gate"`: a turnstile through a Modbus RTU I/O module (docs/protocols.md §3a). Defaults are
//! the protocol's; `hw/profiles/gate-modbus-io.toml` documents them and how to remap.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{DeviceConfig, DeviceKind, Validator};
use crate::sources::gate::modbus::{DEFAULT_MAX_PLAUSIBLE, GATE_REGISTER_COUNT};
use crate::sources::gate::settings::{frame_silence, GateConfig, Parity, StopBits};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGate {
    id: String,
    station: String,
    port: PathBuf,
    #[serde(default = "default_baud")]
    baud: u32,
    #[serde(default)]
    parity: Parity,
    #[serde(default = "default_stop_bits")]
    stop_bits: u8,
    /// Wider than a unit address, so that 300 is reported as out of 1-247 like 0 is.
    #[serde(default = "default_unit")]
    unit: u32,
    #[serde(default)]
    first_register: u16,
    #[serde(default)]
    unlock_coil: u16,
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    poll_interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default, with = "humantime_serde")]
    gap: Option<Duration>,
    #[serde(default = "default_max_plausible")]
    max_plausible: u32,
    #[serde(default, with = "humantime_serde")]
    silent_after: Option<Duration>,
}

/// docs/protocols.md §3a defaults: unit 1, 9600 8N1, timeout 200 ms, poll every 250 ms.
fn default_baud() -> u32 {
    9600
}
fn default_stop_bits() -> u8 {
    1
}
fn default_unit() -> u32 {
    1
}
fn default_poll_interval() -> Duration {
    Duration::from_millis(250)
}
fn default_timeout() -> Duration {
    Duration::from_millis(200)
}
fn default_max_plausible() -> u32 {
    DEFAULT_MAX_PLAUSIBLE
}

impl Validator<'_> {
    pub(super) fn gate(&mut self, i: usize, g: RawGate, devices: &[DeviceConfig]) -> DeviceConfig {
        let at = |f: &str| format!("device[{i}].{f}");
        self.serial_port(i, &g.port, g.baud, "gate0");
        let stop_bits = match g.stop_bits {
            2 => StopBits::Two,
            1 => StopBits::One,
            n => {
                self.problem(at("stop_bits"), format!("{n} is not 1 or 2"));
                StopBits::One
            }
        };
        // 0 is broadcast (never answered), 248-255 are reserved.
        let unit = match u8::try_from(g.unit) {
            Ok(unit @ 1..=247) => unit,
            _ => {
                self.problem(
                    at("unit"),
                    format!("{} is not a Modbus unit address (1-247)", g.unit),
                );
                1
            }
        };
        if g.first_register > u16::MAX - (GATE_REGISTER_COUNT - 1) {
            self.problem(
                at("first_register"),
                format!("the {GATE_REGISTER_COUNT}-register block must fit below 65536"),
            );
        }
        let ms = Duration::from_millis;
        if !(ms(10)..=ms(60_000)).contains(&g.poll_interval) {
            self.problem(at("poll_interval"), "must be between 10ms and 60s");
        }
        if !(ms(10)..=ms(5_000)).contains(&g.timeout) {
            self.problem(at("timeout"), "must be between 10ms and 5s");
        }
        if g.gap.is_some_and(|gap| gap > ms(1_000)) {
            self.problem(at("gap"), "must be at most 1s");
        }
        // A busy gate sees a few people a second; 1e6 per poll is no gate, and far from the
        // 2^31 where a wrap and a reset could no longer be told apart.
        if !(1..=1_000_000).contains(&g.max_plausible) {
            self.problem(at("max_plausible"), "must be 1-1000000");
        }
        if g.silent_after.is_some_and(|d| d < Duration::from_secs(1)) {
            self.problem(at("silent_after"), "must be at least 1s");
        }
        // The registry of gates is by station: an entry token at a station opens its gate.
        if let Some(other) = devices
            .iter()
            .find(|d| d.station == g.station && matches!(d.kind, DeviceKind::Gate(_)))
        {
            self.problem(
                at("station"),
                format!(
                    "station {:?} already has gate {:?}; give each gate its own station",
                    g.station, other.id
                ),
            );
        }
        let silence = frame_silence(g.baud);
        DeviceConfig {
            id: g.id,
            station: g.station,
            kind: DeviceKind::Gate(GateConfig {
                port: g.port,
                baud: g.baud,
                parity: g.parity,
                stop_bits,
                unit,
                first_register: g.first_register,
                unlock_coil: g.unlock_coil,
                poll_interval: g.poll_interval,
                timeout: g.timeout,
                gap: g.gap.unwrap_or_default().max(silence),
                max_plausible: g.max_plausible,
                silent_after: g.silent_after,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;
    use std::path::Path;

    fn config(device: &str) -> String {
        format!(
            r#"tenant = "acme"
store = "s1"

[[station]]
id = "gate-1"
role = "gate"

[[device]]
kind = "gate"
id = "gate-a"
station = "gate-1"
port = "/dev/phygate/gate0"
{device}

[mqtt]
host = "127.0.0.1"
"#
        )
    }

    fn gate(c: &Config) -> &GateConfig {
        match &c.devices[0].kind {
            DeviceKind::Gate(g) => g,
            other => panic!("not a gate: {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_protocols() {
        let c = Config::parse(&config(""), Path::new("x.toml")).unwrap();
        let g = gate(&c);
        assert_eq!(
            (g.baud, g.parity, g.stop_bits, g.unit),
            (9600, Parity::None, StopBits::One, 1)
        );
        assert_eq!(g.poll_interval, Duration::from_millis(250));
        assert_eq!(g.timeout, Duration::from_millis(200));
        assert_eq!(g.max_plausible, 1000);
        // 3.5 characters of 11 bits at 9600 baud.
        assert_eq!(g.gap, Duration::from_micros(4010));
        let summary = c.to_string();
        assert!(
            summary.contains("gate (Modbus RTU unit 1) on /dev/phygate/gate0 @ 9600 8N1"),
            "{summary}"
        );
    }

    #[test]
    fn profile_settings_parse() {
        let c = Config::parse(
            &config(
                "baud = 19200\nparity = \"even\"\nstop_bits = 1\nunit = 7\npoll_interval = \"100ms\"\n\
                 timeout = \"50ms\"\ngap = \"10ms\"\nmax_plausible = 50\nsilent_after = \"10m\"\n\
                 first_register = 256\nunlock_coil = 2",
            ),
            Path::new("x.toml"),
        )
        .unwrap();
        let g = gate(&c);
        assert_eq!((g.baud, g.parity, g.unit), (19200, Parity::Even, 7));
        assert_eq!(g.gap, Duration::from_millis(10));
        assert_eq!((g.first_register, g.unlock_coil), (256, 2));
        assert_eq!(g.silent_after, Some(Duration::from_secs(600)));
        assert!(c
            .to_string()
            .contains("19200 8E1, holding 256-260, unlock coil 2"));
    }

    #[test]
    fn bad_values_are_each_reported() {
        let err = Config::parse(
            &config("unit = 0\nstop_bits = 3\ntimeout = \"9s\"\nmax_plausible = 0"),
            Path::new("x.toml"),
        )
        .unwrap_err();
        let fields: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
        for f in ["unit", "stop_bits", "timeout", "max_plausible"] {
            assert!(fields.contains(&format!("device[0].{f}").as_str()), "{err}");
        }
        let unknown = Config::parse(&config("parity_bits = 1"), Path::new("x.toml")).unwrap_err();
        assert!(unknown.to_string().contains("parity_bits"), "{unknown}");
    }

    #[test]
    fn the_hw_profile_is_a_valid_gate() {
        let profile = include_str!("../../hw/profiles/gate-modbus-io.toml");
        let text = format!(
            "tenant = \"acme\"\nstore = \"s1\"\n\n[[station]]\nid = \"entrance\"\nrole = \"gate\"\n\n\
             [mqtt]\nhost = \"127.0.0.1\"\n\n{profile}"
        );
        let c = Config::parse(&text, Path::new("profile.toml")).unwrap();
        let g = gate(&c);
        let defaults = Config::parse(&config(""), Path::new("x.toml")).unwrap();
        assert_eq!(
            format!("{g:?}").replace("/dev/phygate/gate0", ""),
            format!("{:?}", gate(&defaults)).replace("/dev/phygate/gate0", ""),
            "the profile spells out the protocol's defaults"
        );
    }

    #[test]
    fn one_gate_per_station() {
        let text = config("").replace(
            "[mqtt]",
            "[[device]]\nkind = \"gate\"\nid = \"gate-b\"\nstation = \"gate-1\"\nport = \"/dev/x\"\n\n[mqtt]",
        );
        let err = Config::parse(&text, Path::new("x.toml")).unwrap_err();
        assert!(
            err.to_string().contains("already has gate \"gate-a\""),
            "{err}"
        );
    }
}
