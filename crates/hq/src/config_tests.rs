//! Tests of `phygate-hq`'s config: its defaults, and the problems it names.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/phygate/hq.toml"))
}

#[test]
fn the_smallest_config_takes_the_defaults() {
    let c = parse("[mqtt]\n").unwrap();
    let Input::Mqtt(m) = &c.input else {
        panic!("MQTT is the default input")
    };
    assert_eq!(m.group, "journey");
    assert!(
        matches!(&c.store.backend, StoreBackend::Sqlite { path, .. } if path == Path::new("/etc/phygate/hq.db"))
    );
    assert_eq!(c.loss_grace, Duration::from_secs(60));
    assert!(c.status.is_none());
}

#[test]
fn an_unknown_key_is_named_with_its_line() {
    let e = parse("[mqtt]\nhost = \"h\"\ngroupe = \"g\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("hq.toml") && e.contains("line 3") && e.contains("groupe"),
        "{e}"
    );
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let e = parse("[mqtt]\ngroup = \"a/b\"\nclient_id = \"\"\n[store]\nsynchronous = \"off\"\n[status]\nlisten = \"nowhere\"\n")
        .unwrap_err()
        .to_string();
    for key in [
        "mqtt.group",
        "mqtt.client_id",
        "store.synchronous",
        "status.listen",
    ] {
        assert!(e.contains(key), "{key} missing from {e}");
    }
}

#[test]
fn a_sink_takes_its_key_from_a_file_and_never_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("braze.key"), "s3cret\n").unwrap();
    let text = "[mqtt]\n[[sink]]\nname = \"braze\"\nkind = \"braze\"\nurl = \"https://rest.iad-01.braze.com\"\n\
                api_key_file = \"braze.key\"\n[sink.map.\"store.visit.started\"]\nevent = \"Store Visit\"\n";
    let c = Config::parse(text, &dir.path().join("hq.toml")).unwrap();
    let s = &c.sinks[0];
    assert_eq!(s.api_key.0, "s3cret");
    assert_eq!(s.mapping.rule("store.visit.started").event, "Store Visit");
    assert_eq!(s.mapping.rule("store.visit.ended").event, "visit_ended");
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "check-config would print the key"
    );
}

#[test]
fn a_sink_without_a_key_or_with_two_is_refused() {
    let e = parse("[mqtt]\n[[sink]]\nname = \"a\"\nkind = \"amplitude\"\nurl = \"https://api2.amplitude.com\"\n\
                   api_key_env = \"PHYGATE_HQ_TEST_UNSET_VARIABLE\"\n\
                   [[sink]]\nname = \"b\"\nkind = \"mixpanel\"\nurl = \"ftp://x\"\napi_key_env = \"A\"\napi_key_file = \"k\"\n")
        .unwrap_err()
        .to_string();
    for needle in [
        "PHYGATE_HQ_TEST_UNSET_VARIABLE is not set",
        "mixpanel",
        "ftp://x",
        "exactly one of",
    ] {
        assert!(e.contains(needle), "{needle} missing from {e}");
    }
}

#[test]
fn a_postgres_store_takes_its_password_from_a_file_and_refuses_one_in_the_url() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pg.password"), "pw\n").unwrap();
    let text = "[mqtt]\n[store]\nkind = \"postgres\"\nurl = \"postgresql://hq@127.0.0.1:5432/journey\"\npassword_file = \"pg.password\"\n";
    let c = Config::parse(text, &dir.path().join("hq.toml")).unwrap();
    let StoreBackend::Postgres(pg) = &c.store.backend else {
        panic!("{c:?}")
    };
    assert_eq!(pg.password.as_ref().unwrap().0, "pw");
    assert!(
        !format!("{c:?}").contains("pw\""),
        "check-config would print it"
    );
    let e = parse("[mqtt]\n[store]\nkind = \"postgres\"\nurl = \"postgresql://hq:pw@h/j\"\nsynchronous = \"full\"\n")
        .unwrap_err()
        .to_string();
    for needle in ["holds a password", "path and synchronous are SQLite's"] {
        assert!(e.contains(needle), "{needle} missing from {e}");
    }
    let e = parse("[mqtt]\n[store]\nkind = \"mysql\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("store.kind"), "{e}");
}

#[test]
fn anonymous_is_the_webhooks_choice_only() {
    let sink = |kind: &str, extra: &str| {
        format!("[mqtt]\n[[sink]]\nname = \"x\"\nkind = \"{kind}\"\nurl = \"http://h/in\"\napi_key_env = \"PATH\"\n{extra}")
    };
    let c = parse(&sink("webhook", "anonymous = true\n")).unwrap();
    assert!(c.sinks[0].anonymous);
    assert!(
        !parse(&sink("webhook", "")).unwrap().sinks[0].anonymous,
        "off unless asked"
    );
    let e = parse(&sink("braze", "anonymous = true\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("anonymous is the webhook's choice"), "{e}");
}

#[test]
fn the_mqtt_login_reaches_the_consumer_and_the_repairer_and_is_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), "pem").unwrap();
    std::fs::write(dir.path().join("mqtt.password"), "s3cret\n").unwrap();
    let text =
        "[mqtt]\nca_file = \"ca.pem\"\nusername = \"hq\"\npassword_file = \"mqtt.password\"\n\
                [repair]\nbroker = \"commands.example:8883\"\n";
    let c = Config::parse(text, &dir.path().join("hq.toml")).unwrap();
    let Input::Mqtt(m) = &c.input else {
        panic!("MQTT is the default input")
    };
    assert_eq!(m.security.password.as_ref().unwrap().0, "s3cret");
    assert_eq!(m.security.ca, Some(dir.path().join("ca.pem")));
    let repair = c.repair.as_ref().unwrap();
    assert_eq!(repair.broker, "commands.example:8883");
    assert_eq!(repair.security.username.as_deref(), Some("hq"));
    assert!(
        !format!("{c:#?}").contains("s3cret"),
        "check-config would print it"
    );
    let e = parse("[mqtt]\ncert_file = \"hq.pem\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("mqtt.cert_file"), "{e}");
    assert!(e.contains("cert_file and key_file go together"), "{e}");
}
