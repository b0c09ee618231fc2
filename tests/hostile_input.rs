//! Hostile input for every parser that sees outside bytes, in the normal test run: scanner
//! framing, the config file, HTTP ingest bodies and receipts, QR payload classification, JWKS
//! documents, and the device framings' memory use under endless noise. No input may panic, and
//! no parser may hold more than its stated limit however much garbage arrives.
//!
//! The same parsers have `cargo fuzz` targets in `fuzz/` for long runs (README "Reliability").

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;

use phygate::config::Config;
use phygate::ingest::counts::{parse_counts, MAX_COUNT};
use phygate::ingest::receipt::Receipt;
use phygate::link::{classify_code, CodeKind};
use phygate::sources::scanner::{decode_line, Framing, Line, LineSplitter, Terminator};
use proptest::prelude::*;

// ------------------------------------------------------------------------------------------
// Memory: a per-thread count of live heap bytes, to bound what a parser holds.

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn bump(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: forwards to the system allocator and only counts sizes on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            bump(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        bump(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            bump(new_size as isize - layout.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The most heap `f` held at once on this thread beyond what was live before it.
fn peak_heap(f: impl FnOnce()) -> usize {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    f();
    (PEAK.with(Cell::get) - base).max(0) as usize
}

/// A mebibyte of noise in 4 KiB reads, as a babbling device sends it.
fn noise_mib(no: &[u8]) -> Vec<Vec<u8>> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..256)
        .map(|_| {
            (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let b = x as u8;
                    if no.contains(&b) {
                        b'x'
                    } else {
                        b
                    }
                })
                .collect()
        })
        .collect()
}

#[test]
fn endless_noise_holds_bounded_memory_in_every_framing() {
    // Scanner: a line never terminated is dropped at max_line, not buffered.
    let framing = Framing {
        max_line: 4096,
        ..Framing::default()
    };
    let mut splitter = LineSplitter::new(&framing);
    let mut lines = Vec::new();
    let noise = noise_mib(b"\r");
    let held = peak_heap(|| {
        for chunk in &noise {
            splitter.push(chunk, &mut lines);
            lines.clear();
        }
    });
    assert!(held <= 2 * 4096 + 1024, "scanner framing held {held} bytes");

    // SKN1 analyzer: lines over 16 KiB are discarded.
    let mut skin = phygate::sources::skin::skn1::LineReader::new();
    let noise = noise_mib(b"\n");
    let held = peak_heap(|| {
        for chunk in &noise {
            skin.push(chunk);
            while skin.next().is_some() {}
        }
    });
    assert!(
        held <= 2 * 16 * 1024 + 1024,
        "SKN1 framing held {held} bytes"
    );

    // PN532 reader: noise between frames is skipped as it is read.
    let mut nfc = phygate::sources::nfc::pn532::FrameDecoder::new();
    let noise = noise_mib(&[]);
    let held = peak_heap(|| {
        for chunk in &noise {
            nfc.push(chunk);
            while nfc.next().is_some() {}
        }
    });
    assert!(held <= 64 * 1024, "PN532 framing held {held} bytes");

    // Modbus: a response reader gives up at its frame's length; a request reader at 8 bytes.
    let req = phygate::sources::gate::modbus::Request::read_holding(1, 0, 5).unwrap();
    let mut response = phygate::sources::gate::modbus::ResponseReader::new(req);
    let mut requests = phygate::sources::gate::modbus::RequestReader::new();
    let held = peak_heap(|| {
        for chunk in &noise {
            let _ = response.push(chunk);
            requests.push(chunk);
            while requests.next().is_some() {}
        }
    });
    assert!(held <= 64 * 1024, "Modbus framing held {held} bytes");
}

// ------------------------------------------------------------------------------------------
// Scanner framing.

fn arb_framing() -> impl Strategy<Value = Framing> {
    (
        0usize..3,
        proptest::collection::vec(any::<u8>(), 0..3),
        proptest::collection::vec(any::<u8>(), 0..3),
        any::<bool>(),
        1usize..600,
    )
        .prop_map(|(t, prefix, suffix, aim, max_line)| Framing {
            terminator: [Terminator::Cr, Terminator::Lf, Terminator::Crlf][t],
            prefix,
            suffix,
            aim,
            max_line,
        })
}

fn terminator(t: Terminator) -> &'static [u8] {
    match t {
        Terminator::Cr => b"\r",
        Terminator::Lf => b"\n",
        Terminator::Crlf => b"\r\n",
    }
}

proptest! {
    #[test]
    fn scanner_framing_survives_any_bytes_in_any_chunks(
        framing in arb_framing(),
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..30),
    ) {
        let mut splitter = LineSplitter::new(&framing);
        let mut lines = Vec::new();
        for c in &chunks {
            splitter.push(c, &mut lines);
        }
        let _ = splitter.discard_partial();
        for line in lines {
            if let Line::Complete(bytes) = line {
                prop_assert!(bytes.len() <= framing.max_line);
                if let Ok(code) = decode_line(&framing, &bytes) {
                    prop_assert!(!code.payload.is_empty());
                    prop_assert!(code.payload.len() <= bytes.len());
                    prop_assert!(!code.payload.contains(['\r', '\n', '\0']));
                }
            }
        }
    }

    #[test]
    fn codes_come_through_garbage_lines_and_any_split(
        t in 0usize..3,
        codes in proptest::collection::vec("[ -~]{1,60}", 1..20),
        garbage in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 0..20),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..10),
    ) {
        let framing = Framing {
            terminator: [Terminator::Cr, Terminator::Lf, Terminator::Crlf][t],
            aim: true,
            ..Framing::default()
        };
        let end = terminator(framing.terminator);
        let mut wire = Vec::new();
        for (i, code) in codes.iter().enumerate() {
            if let Some(g) = garbage.get(i) {
                // A garbage line: any bytes, then a terminator, so it cannot swallow the code.
                wire.extend(g.iter().filter(|b| !end.contains(b)));
                wire.extend_from_slice(end);
            }
            wire.extend_from_slice(b"]Q1");
            wire.extend_from_slice(code.as_bytes());
            wire.extend_from_slice(end);
        }
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        at.sort_unstable();
        let mut splitter = LineSplitter::new(&framing);
        let mut lines = Vec::new();
        let mut from = 0;
        for cut in at.into_iter().chain([wire.len()]) {
            splitter.push(&wire[from..cut], &mut lines);
            from = cut;
        }
        let decoded: Vec<String> = lines
            .into_iter()
            .filter_map(|l| match l {
                Line::Complete(b) => decode_line(&framing, &b).ok().map(|c| c.payload),
                Line::TooLong => None,
            })
            .collect();
        // Every code arrives intact and in order, whatever garbage decoded around it.
        let mut rest = decoded.iter();
        for code in &codes {
            prop_assert!(rest.any(|d| d == code), "{:?} missing from {:?}", code, decoded);
        }
    }
}

// ------------------------------------------------------------------------------------------
// The config file.

const BASE_CONFIG: &str = r#"tenant = "acme"
store = "paris-01"

[[station]]
id = "entrance"
role = "gate"

[[device]]
kind = "scanner"
id = "scanner-1"
station = "entrance"
port = "/dev/phygate/scanner0"

[[device]]
kind = "people_counter"
id = "pc-1"
station = "entrance"
token = "counter-token-0123456789"

[outbox]
path = "phygate.db"

[mqtt]
host = "127.0.0.1"

[uplink]
inflight = 8
"#;

const KEYS: &[&str] = &[
    "tenant",
    "store",
    "gateway",
    "id",
    "role",
    "kind",
    "station",
    "port",
    "baud",
    "terminator",
    "prefix",
    "suffix",
    "aim",
    "max_line",
    "dedupe_window",
    "silent_after",
    "token",
    "unit",
    "poll_interval",
    "path",
    "synchronous",
    "max_bytes",
    "max_age",
    "max_file_bytes",
    "host",
    "client_id",
    "keepalive",
    "username",
    "password",
    "ca",
    "cert",
    "key",
    "batch_max_events",
    "batch_max_bytes",
    "inflight",
    "backoff_min",
    "backoff_max",
    "card_key",
    "jwks_file",
    "token_skew",
    "session_window",
    "listen",
    "sync",
    "timeout",
    "register",
];

const TABLES: &[&str] = &[
    "[[station]]",
    "[[device]]",
    "[outbox]",
    "[mqtt]",
    "[mqtt.tls]",
    "[uplink]",
    "[identity]",
    "[ingest]",
    "[clock]",
    "[device]",
    "[[mqtt]]",
    "[a.b.c]",
];

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        // Any text, quoted (a JSON string is a valid TOML basic string).
        "\\PC{0,40}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        proptest::sample::select(vec![
            "\"1s\"",
            "\"0s\"",
            "\"-1s\"",
            "\"1ms\"",
            "\"99999999999999d\"",
            "\"7d\"",
            "\"cr\"",
            "\"crlf\"",
            "\"full\"",
            "\"off\"",
            "\"gate\"",
            "\"kiosk\"",
            "\"scanner\"",
            "\"nfc\"",
            "\"gate\"",
            "\"skin\"",
            "\"skin_http\"",
            "\"people_counter\"",
            "\"127.0.0.1:0\"",
            "\"[::1]:8088\"",
            "\"localhost\"",
            "\"/dev/null\"",
            "\"\"",
            "\"assume_synced\"",
            "\"kernel\"",
            "18446744073709551615",
            "-0",
            "nan",
            "inf",
            "[]",
            "[1, \"a\"]",
            "{}",
            "{ a = 1 }",
            "1979-05-27T07:32:00Z",
            "'''\nx\n'''",
            "\"\\u0000\"",
        ])
        .prop_map(String::from),
    ]
}

fn toml_line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (proptest::sample::select(KEYS), toml_value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => proptest::sample::select(TABLES).prop_map(String::from),
        1 => "\\PC{0,30}",
        1 => Just(String::new()),
    ]
}

/// Parses and checks what any outcome must satisfy: errors name lines that exist.
fn check_config(text: &str) -> Result<(), TestCaseError> {
    match Config::parse(text, Path::new("/etc/phygate/phygate.toml")) {
        Ok(config) => {
            let _ = config.to_string();
        }
        Err(e) => {
            let lines = text.lines().count().max(1);
            prop_assert!(!e.problems.is_empty());
            for p in &e.problems {
                prop_assert!(p.line.is_none_or(|l| l >= 1 && l <= lines + 1), "{e}");
            }
            let _ = e.to_string();
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn config_of_any_text_never_panics(text in "\\PC{0,400}") {
        check_config(&text)?;
    }

    #[test]
    fn config_of_random_toml_never_panics(lines in proptest::collection::vec(toml_line(), 0..40)) {
        check_config(&lines.join("\n"))?;
    }

    #[test]
    fn config_with_random_edits_never_panics(
        edits in proptest::collection::vec((any::<proptest::sample::Index>(), 0u8..3, toml_line()), 1..6),
    ) {
        // A valid file with lines replaced, inserted or deleted: reaches the validation.
        let mut lines: Vec<String> = BASE_CONFIG.lines().map(String::from).collect();
        for (at, op, line) in edits {
            let i = at.index(lines.len() + 1);
            match op {
                0 if i < lines.len() => lines[i] = line,
                1 => lines.insert(i, line),
                _ if i < lines.len() => {
                    lines.remove(i);
                }
                _ => {}
            }
        }
        check_config(&lines.join("\n"))?;
    }
}

#[test]
fn the_base_config_is_valid() {
    Config::parse(BASE_CONFIG, Path::new("/etc/phygate/phygate.toml")).unwrap();
}

// ------------------------------------------------------------------------------------------
// HTTP ingest bodies and idempotency receipts.

fn json_ish() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,200}",
        r#"[\{\}\[\]":,0-9a-z\.\-+eTZ ]{0,200}"#,
        (
            prop_oneof![Just("\"pc-1\"".to_string()), toml_value()],
            prop_oneof![
                Just("\"2026-11-23T05:00:00Z\"".to_string()),
                "\\PC{0,30}".prop_map(|s| serde_json::to_string(&s).unwrap())
            ],
            prop_oneof![
                Just("\"2026-11-23T05:05:00+01:00\"".to_string()),
                "\\PC{0,30}".prop_map(|s| serde_json::to_string(&s).unwrap())
            ],
            prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|f| format!("{f:?}")),
                Just("1e308".to_string())
            ],
            prop_oneof![
                any::<u64>().prop_map(|n| n.to_string()),
                Just("null".to_string())
            ],
        )
            .prop_map(|(d, f, t, i, o)| {
                format!(r#"{{"device":{d},"from":{f},"to":{t},"in":{i},"out":{o}}}"#)
            }),
    ]
}

proptest! {
    #[test]
    fn counts_bodies_never_panic_and_accepted_ones_are_sane(body in json_ish(), now in any::<u64>()) {
        if let Ok(post) = parse_counts(body.as_bytes(), now) {
            prop_assert!(post.people_in <= MAX_COUNT && post.people_out <= MAX_COUNT);
            prop_assert!(post.from < post.to || post.from.len() != post.to.len());
        }
    }

    #[test]
    fn counts_bodies_of_any_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_counts(&body, 1_795_410_600_000);
        let _ = phygate::sources::skin::skn1::parse_json_body(&body);
        let _ = Receipt::decode(&body);
    }
}

// ------------------------------------------------------------------------------------------
// QR payloads: classification and token extraction, which must agree where a bearer token is
// at stake, and JWKS documents (from a file or HQ's keys topic).

fn qr_payload() -> impl Strategy<Value = String> {
    let b64 = "[A-Za-z0-9_-]{0,24}";
    let jwt = (b64, b64, b64).prop_map(|(h, p, s)| format!("eyJ{h}.{p}.{s}"));
    prop_oneof![
        "\\PC{0,120}",
        jwt.clone(),
        (jwt.clone(), "[ \t\r]{0,2}", "[ \t\r]{0,2}").prop_map(|(j, a, b)| format!("{a}{j}{b}")),
        (
            "(https?|app|HTTPS|x-y\\.z|1a)?",
            "[a-z./]{0,12}",
            "[a-z0-9=&]{0,12}",
            jwt.clone(),
            "[#?&a-z=]{0,10}"
        )
            .prop_map(|(scheme, path, q, j, tail)| format!("{scheme}:{path}?{q}&t={j}{tail}")),
        "[0-9]{6,15}",
        // A token with junk around it: a suffix, a scanner prefix left on, a second segment.
        ("\\PC{0,8}", jwt, "\\PC{0,8}").prop_map(|(a, j, b)| format!("{a}{j}{b}")),
    ]
}

proptest! {
    #[test]
    fn a_payload_carrying_a_token_is_never_forwarded(payload in qr_payload()) {
        let kind = classify_code(&payload);
        let token = phygate::link::token::extract_token(&payload);
        // The link forwards `payload` for every kind but app_token: whatever the verifier
        // would take as a token must be classified as one, or a bearer credential reaches HQ.
        prop_assert!(
            token.is_none() || kind == CodeKind::AppToken,
            "{:?} carries a token but is classified {:?}", payload, kind
        );
        // The rule itself: whatever contains the JWT prefix is a token attempt, never forwarded.
        prop_assert_eq!(
            payload.contains(phygate::link::token::JWT_PREFIX),
            kind == CodeKind::AppToken,
            "{:?} is classified {:?}", payload, kind
        );
    }

    #[test]
    fn jwks_documents_of_any_shape_never_panic(text in json_ish()) {
        let _ = phygate::link::jwks::KeySet::from_jwks_json(&text);
        let wrapped = format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"k","x":{}}}]}}"#,
            serde_json::to_string(&text).unwrap());
        let _ = phygate::link::jwks::KeySet::from_jwks_json(&wrapped);
    }
}
