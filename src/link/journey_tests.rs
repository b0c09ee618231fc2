use super::*;
// The journey is built here as the wiring builds it: from a config file's text.
use crate::config::Config;
use crate::downlink::Members;
use crate::link::jwks::generate_key;
use crate::link::token::{mint, Claims};
use crate::sources::nfc::NfcTap;
use crate::sources::scanner::ScannedCode;
use ed25519_dalek::SigningKey;

const CARD_KEY: [u8; 32] = [9; 32];

struct T {
    j: Journey,
    key: SigningKey,
    t0: Instant,
    wall0: SystemTime,
}

fn setup() -> T {
    let (key, jwk) = generate_key("k1");
    let dir = std::env::temp_dir().join(format!("phygate-journey-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("keys.json"),
        crate::link::jwks::jwks_json(&[jwk]).to_string(),
    )
    .unwrap();
    let card_key =
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, CARD_KEY);
    let text = format!(
        r#"tenant = "acme"
store = "s1"
[[station]]
id = "in"
role = "gate"
[[station]]
id = "out"
role = "gate"
direction = "out"
[[station]]
id = "kiosk"
role = "kiosk"
[[station]]
id = "shelf"
role = "shelf"
[mqtt]
host = "x"
[identity]
jwks_file = "keys.json"
card_key = "{card_key}"
session_window = "60s"
visit_idle = "10m"
"#
    );
    let config = Config::parse(&text, &dir.join("c.toml")).unwrap();
    T {
        j: Journey::new(config.journey_settings()),
        key,
        t0: Instant::now(),
        wall0: SystemTime::now(),
    }
}

impl T {
    fn token(&self, sub: &str, pur: Option<Purpose>, jti: &str) -> String {
        self.token_at(sub, pur, jti, 0)
    }

    /// A token the app showed `secs` after the test's start.
    fn token_at(&self, sub: &str, pur: Option<Purpose>, jti: &str, secs: i64) -> String {
        let now = unix_s(self.wall0) + secs;
        let claims = Claims {
            sub: sub.into(),
            aud: vec!["acme".into()],
            iat: now,
            exp: now + 120,
            nbf: None,
            jti: jti.into(),
            pur,
            stores: None,
        };
        mint(&self.key, "k1", &claims)
    }

    fn at(&mut self, station: &str, secs: u64, observation: Observation) -> Linked {
        let reading = Reading {
            device: "dev".into(),
            station: station.into(),
            at: self.wall0 + Duration::from_secs(secs),
            observation,
        };
        self.j.link(reading, self.t0 + Duration::from_secs(secs))
    }

    fn scan(&mut self, station: &str, secs: u64, payload: &str) -> Linked {
        let code = ScannedCode {
            payload: payload.into(),
            symbology: "qr",
            aim: None,
        };
        self.at(station, secs, Observation::Code(code))
    }

    fn tap(&mut self, station: &str, secs: u64, uid: &[u8]) -> Linked {
        self.at(
            station,
            secs,
            Observation::NfcTap(NfcTap::new(uid.to_vec(), 0x08)),
        )
    }

    fn skin(&mut self, station: &str, secs: u64) -> Linked {
        let line = br#"{"v":1,"model":"AX-200","measures":{"moisture":41.5}}"#;
        let reading = crate::sources::skin::skn1::parse_json_body(line).unwrap();
        self.at(station, secs, Observation::Skin(reading))
    }
}

fn data(e: &Event) -> serde_json::Value {
    serde_json::to_value(&e.data).unwrap()
}

const JTI: &str = "jti-0000000000000001";

#[test]
fn valid_entry_token_at_gate_opens_it_and_starts_a_visit() {
    let mut t = setup();
    let token = t.token("user-1", None, JTI);
    let out = t.scan("in", 0, &token);
    assert_eq!(out.unlock.as_deref(), Some("in"));
    let scan = &out.events[0];
    assert_eq!(scan.userid.as_deref(), Some("user-1"));
    assert_eq!(scan.idsource, IdSource::QrToken);
    assert_eq!(scan.stage, Some("entry"));
    let d = data(scan);
    assert_eq!(d["verdict"], "valid");
    assert_eq!(d["kid"], "k1");
    assert_eq!(d["jti"], JTI);
    assert!(
        d.get("payload").is_none(),
        "a token is never forwarded: {d}"
    );
    assert_eq!(out.events[1].data.type_name(), "store.visit.started");
    assert_eq!(out.events[1].userid.as_deref(), Some("user-1"));
    assert!(out.events[1].anonid.is_some());
    assert_eq!(scan.anonid, out.events[1].anonid);
    assert!(out
        .state
        .iter()
        .any(|(k, _)| k == &format!("{JTI_PREFIX}{JTI}")));
}

#[test]
fn bad_tokens_link_nobody_and_keep_the_gate_shut() {
    let mut t = setup();
    let token = t.token("user-1", None, JTI);
    assert!(t.scan("in", 0, &token).unlock.is_some());
    // The same code again: replayed.
    let again = t.scan("in", 1, &token);
    assert!(again.unlock.is_none());
    assert_eq!(again.events.len(), 1);
    assert_eq!(data(&again.events[0])["verdict"], "replayed");
    assert_eq!(data(&again.events[0])["gate_opened"], false);
    assert!(again.events[0].userid.is_none());
    // Tampered: one character of the payload changed.
    let other = t.token("user-2", None, "jti-0000000000000002");
    // The same signature over a payload naming someone else.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts: Vec<String> = other.split('.').map(str::to_owned).collect();
    let payload = String::from_utf8(b64.decode(&parts[1]).unwrap())
        .unwrap()
        .replace("user-2", "user-3");
    parts[1] = b64.encode(payload);
    let out = t.scan("in", 2, &parts.join("."));
    assert_eq!(data(&out.events[0])["verdict"], "bad_signature");
    assert!(out.unlock.is_none() && out.events[0].userid.is_none());
    // Garbage that looks like a token.
    let out = t.scan("in", 3, "eyJhbGciOiJFZERTQSJ9.eyJ.AAAA");
    assert_eq!(data(&out.events[0])["verdict"], "malformed");
}

#[test]
fn checkin_purpose_at_the_gate_identifies_but_does_not_open() {
    let mut t = setup();
    let token = t.token("user-1", Some(Purpose::Checkin), JTI);
    let out = t.scan("in", 0, &token);
    assert!(out.unlock.is_none());
    assert_eq!(out.events[0].userid.as_deref(), Some("user-1"));
    assert_eq!(data(&out.events[0])["gate_opened"], false);
}

#[test]
fn diagnosis_after_a_scan_at_the_kiosk_belongs_to_that_user_within_the_window() {
    let mut t = setup();
    let token = t.token("user-1", None, JTI);
    t.scan("kiosk", 0, &token);
    let out = t.skin("kiosk", 30);
    assert_eq!(out.events[0].userid.as_deref(), Some("user-1"));
    assert_eq!(out.events[0].idsource, IdSource::Session);
    assert_eq!(out.events[0].stage, Some("engage"));
    // Elsewhere, or after the window: anonymous.
    assert!(t.skin("shelf", 31).events[0].userid.is_none());
    assert!(t.skin("kiosk", 61).events[0].userid.is_none());
}

#[test]
fn a_new_identification_ends_the_previous_session() {
    let mut t = setup();
    let a = t.token("user-a", None, "jti-a000000000000001");
    let b = t.token("user-b", None, "jti-b000000000000001");
    t.scan("kiosk", 0, &a);
    t.scan("kiosk", 5, &b);
    let out = t.scan("kiosk", 6, "4006381333931");
    assert_eq!(out.events[0].userid.as_deref(), Some("user-b"));
    assert_eq!(data(&out.events[0])["payload"], "4006381333931");
}

#[test]
fn card_registered_with_a_link_token_then_taps_as_a_member_anywhere() {
    let mut t = setup();
    let uid = [0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66];
    // Unknown card: anonymous.
    let out = t.tap("shelf", 0, &uid);
    assert!(out.events[0].userid.is_none());
    assert_eq!(data(&out.events[0])["member"], false);
    // pur: link token, then the tap at the same kiosk.
    let token = t.token("user-1", Some(Purpose::Link), JTI);
    t.scan("kiosk", 1, &token);
    let out = t.tap("kiosk", 3, &uid);
    let hash = crate::link::cardhash::card_hash(&CARD_KEY, &uid);
    let linked = out
        .events
        .iter()
        .find(|e| e.data.type_name() == "store.nfc.linked")
        .expect("linked");
    assert_eq!(linked.userid.as_deref(), Some("user-1"));
    assert_eq!(data(linked)["card_hash"], hash);
    assert!(out
        .state
        .iter()
        .any(|(k, v)| k == &format!("{MEMBER_PREFIX}store/{hash}")
            && v.as_deref() == Some(b"user-1".as_slice())));
    // Now the card is a member at another station.
    let out = t.tap("shelf", 10, &uid);
    assert_eq!(out.events[0].userid.as_deref(), Some("user-1"));
    assert_eq!(out.events[0].idsource, IdSource::NfcMember);
    assert_eq!(data(&out.events[0])["member"], true);
}

#[test]
fn exit_ends_the_visit_with_dwell_and_idle_ends_it_too() {
    let mut t = setup();
    let a = t.token("user-a", None, "jti-a000000000000001");
    t.scan("in", 0, &a);
    let out_token = t.token_at("user-a", None, "jti-a000000000000002", 590);
    let out = t.scan("out", 600, &out_token);
    assert!(
        out.unlock.is_none(),
        "an exit reader does not open the entry gate"
    );
    let ended = out
        .events
        .iter()
        .find(|e| e.data.type_name() == "store.visit.ended")
        .expect("ended");
    assert_eq!(data(ended)["dwell_s"], 600);
    assert_eq!(data(ended)["end_reason"], "exit");
    assert_eq!(ended.stage, Some("exit"));

    let b = t.token("user-b", None, "jti-b000000000000001");
    t.scan("in", 0, &b);
    assert!(t
        .j
        .tick(t.t0 + Duration::from_secs(60), t.wall0)
        .events
        .is_empty());
    let idle = t.j.tick(
        t.t0 + Duration::from_secs(601),
        t.wall0 + Duration::from_secs(601),
    );
    assert_eq!(idle.events.len(), 1);
    assert_eq!(data(&idle.events[0])["end_reason"], "idle");
    assert_eq!(idle.events[0].userid.as_deref(), Some("user-b"));
}

/// What the link does with a member update whose writes the disk took: plan, then commit.
fn apply_members(j: &mut Journey, m: &Members) -> Result<Vec<StateWrite>, String> {
    let writes = j.plan_members(m)?;
    j.commit_members(m);
    Ok(writes)
}

#[test]
fn a_member_update_the_disk_refused_changes_nothing_and_applies_when_redelivered() {
    let mut t = setup();
    let h = |c: char| c.to_string().repeat(43);
    let snap = Members {
        scope: MemberScope::Store,
        version: 5,
        base: None,
        upsert: vec![(h('a'), "u-a".into())],
        delete: vec![],
    };
    // Planned, but the commit failed: nothing of it is held.
    assert!(t.j.plan_members(&snap).is_ok());
    assert_eq!(t.j.member(&h('a')), None);
    assert_eq!(t.j.members_version(MemberScope::Store), 0);
    // The broker's redelivery is not refused as stale: it applies.
    assert!(apply_members(&mut t.j, &snap).is_ok());
    assert_eq!(t.j.member(&h('a')), Some("u-a"));
    assert_eq!(t.j.members_version(MemberScope::Store), 5);
}

#[test]
fn members_snapshot_delta_stale_and_gap() {
    let mut t = setup();
    let h = |c: char| c.to_string().repeat(43);
    let snap = Members {
        scope: MemberScope::Store,
        version: 5,
        base: None,
        upsert: vec![(h('a'), "u-a".into()), (h('b'), "u-b".into())],
        delete: vec![],
    };
    assert!(apply_members(&mut t.j, &snap).is_ok());
    assert_eq!(t.j.member(&h('a')), Some("u-a"));
    let stale = Members {
        version: 5,
        ..snap.clone()
    };
    assert!(
        apply_members(&mut t.j, &stale).is_err(),
        "the same version again changes nothing"
    );
    let gap = Members {
        scope: MemberScope::Store,
        version: 8,
        base: Some(7),
        upsert: vec![(h('c'), "u-c".into())],
        delete: vec![],
    };
    assert!(apply_members(&mut t.j, &gap).is_err());
    assert_eq!(t.j.member(&h('c')), None);
    let delta = Members {
        scope: MemberScope::Store,
        version: 6,
        base: Some(5),
        upsert: vec![(h('c'), "u-c".into())],
        delete: vec![h('a')],
    };
    let writes = apply_members(&mut t.j, &delta).unwrap();
    assert_eq!(t.j.member(&h('a')), None);
    assert_eq!(t.j.member(&h('c')), Some("u-c"));
    assert!(writes
        .iter()
        .any(|(k, v)| k == "members.version/store" && v.as_deref() == Some(b"6".as_slice())));
    // A new snapshot replaces the map entirely.
    let snap2 = Members {
        scope: MemberScope::Store,
        version: 9,
        base: None,
        upsert: vec![(h('d'), "u-d".into())],
        delete: vec![],
    };
    apply_members(&mut t.j, &snap2).unwrap();
    assert_eq!(
        (t.j.member(&h('b')), t.j.member(&h('d'))),
        (None, Some("u-d"))
    );
}

#[test]
fn restored_state_still_rejects_a_replay_and_knows_members() {
    let mut t = setup();
    let token = t.token("user-1", None, JTI);
    let first = t.scan("kiosk", 0, &token);
    let mut restarted = setup();
    restarted.key = t.key.clone();
    restarted.j.keys = t.j.keys.clone();
    restarted.j.restore(
        first
            .state
            .into_iter()
            .map(|(k, v)| (k, v.unwrap()))
            .collect(),
    );
    let again = restarted.scan("kiosk", 1, &token);
    assert_eq!(data(&again.events[0])["verdict"], "replayed");
}

#[test]
fn regression_a_valid_token_with_a_suffix_was_forwarded_raw() {
    let mut t = setup();
    let token = t.token("user-1", None, JTI);
    let signature = token.rsplit_once('.').unwrap().1.to_owned();
    for (i, code) in [
        format!("{token}.x"),
        format!("{token}=="),
        format!("]Q1{token}"),
        format!("https://app.example/e#t={token}"),
    ]
    .into_iter()
    .enumerate()
    {
        let out = t.scan("in", i as u64, &code);
        assert!(out.unlock.is_none(), "{code:?}");
        assert_eq!(out.events.len(), 1, "{code:?}");
        let scan = &out.events[0];
        assert!(scan.userid.is_none(), "{code:?}");
        let d = data(scan);
        assert_eq!(d["kind"], "app_token", "{code:?}");
        assert_eq!(d["verdict"], "malformed", "{code:?}");
        assert_eq!(d["gate_opened"], false, "{code:?}");
        // Every field of the event, envelope included.
        let all = format!("{scan:?}");
        assert!(!all.contains(&signature), "{code:?}: {all}");
        // Nothing of it is kept either: no replay entry for a code that was not valid.
        assert!(out.state.is_empty(), "{code:?}: {:?}", out.state);
    }
    // The token itself was never spent: it still opens the gate.
    assert!(t.scan("in", 9, &token).unlock.is_some());
}

#[test]
fn forgotten_skin_sightings_become_deletes_of_their_keys_and_no_event() {
    let mut t = setup();
    let linked = t.at(
        "kiosk",
        1,
        Observation::SkinForgotten(vec![("AX/200".into(), 7), ("B".into(), 8)]),
    );
    assert!(linked.events.is_empty());
    assert_eq!(
        linked.state,
        vec![
            ("skin/seen/dev/AX/200/7".to_string(), None),
            ("skin/seen/dev/B/8".to_string(), None),
        ]
    );
}
