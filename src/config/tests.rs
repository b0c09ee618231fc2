use std::time::Duration;

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
    assert!(c
        .to_string()
        .contains("nfc reader (PN532) on /dev/phygate/nfc0 @ 115200 baud, polled every 100 ms"));
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
fn the_replay_window_defaults_to_half_an_hour_and_is_bounded() {
    let c = Config::parse(GOOD, Path::new("/etc/phygate/phygate.toml")).unwrap();
    assert_eq!(c.outbox.replay_window, Duration::from_secs(30 * 60));
    let none = GOOD.replace(
        "path = \"state/phygate.db\"",
        "path = \"state/phygate.db\"\nreplay_window = \"0s\"",
    );
    let c = Config::parse(&none, Path::new("/etc/phygate/phygate.toml")).unwrap();
    assert_eq!(c.outbox.replay_window, Duration::ZERO);
    let long = GOOD.replace(
        "path = \"state/phygate.db\"",
        "path = \"state/phygate.db\"\nreplay_window = \"2d\"",
    );
    let err = Config::parse(&long, Path::new("/etc/phygate/phygate.toml")).unwrap_err();
    assert!(
        err.problems
            .iter()
            .any(|p| p.field == "outbox.replay_window" && p.message.contains("24h")),
        "{err}"
    );
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
        include_str!("../../hw/profiles/scanner-serial.toml"),
        include_str!("../../hw/profiles/nfc-pn532-hsu.toml"),
        include_str!("../../hw/profiles/skin-skn1.toml"),
        include_str!("../../hw/profiles/gate-modbus-io.toml"),
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

#[test]
fn mqtt_protocol_is_3_1_1_unless_5_is_asked_for_and_says_what_it_accepts() {
    let path = Path::new("/etc/phygate/phygate.toml");
    let c = Config::parse(GOOD, path).unwrap();
    assert_eq!(c.mqtt.protocol, Protocol::V311);
    for five in ["protocol = \"5\"", "protocol = 5", "protocol = \"5.0\""] {
        let c = Config::parse(&format!("{GOOD}{five}\n"), path).unwrap();
        assert_eq!(c.mqtt.protocol, Protocol::V5, "{five}");
        assert_eq!(c.mqtt.session_expiry, Duration::from_secs(7 * 24 * 3600));
        assert!(c.to_string().contains("MQTT 5 127.0.0.1:1883"), "{c}");
    }
    let c = Config::parse(
        &format!("{GOOD}protocol = \"5\"\nsession_expiry = \"2d\"\n"),
        path,
    )
    .unwrap();
    assert_eq!(c.mqtt.session_expiry, Duration::from_secs(2 * 24 * 3600));
    for (bad, says) in [
        (
            "protocol = \"3\"",
            "must be \"3.1.1\" (the default) or \"5\"",
        ),
        ("protocol = 4", "must be \"3.1.1\""),
        ("session_expiry = \"1d\"", "is an MQTT 5 setting"),
        (
            "protocol = \"5\"\nsession_expiry = \"10s\"",
            "must be between 1m",
        ),
    ] {
        let err = Config::parse(&format!("{GOOD}{bad}\n"), path).unwrap_err();
        let p = err
            .problems
            .iter()
            .find(|p| p.field.starts_with("mqtt."))
            .unwrap_or_else(|| panic!("{bad}: {err}"));
        assert!(p.message.contains(says), "{bad}: {err}");
    }
}
