use super::*;
use proptest::prelude::*;

/// The example of docs/protocols.md §4 (its `\t` and `\n` written as the real bytes). The CRC
/// `d6db35eb` in the doc is correct: python3 `zlib.crc32` of the JSON gives the same.
const EXAMPLE: &[u8] = b"{\"v\":1,\"model\":\"AX-200\",\"seq\":812,\"ts\":\"2026-11-23T05:01:02Z\",\"measures\":{\"moisture\":41.5,\"sebum\":22.0,\"pores\":3,\"wrinkles\":2,\"pigmentation\":18.2,\"redness\":7.1},\"skin_type\":\"combination\"}\td6db35eb\n";

fn json_of(line: &[u8]) -> &[u8] {
    &line[..line.len() - 10]
}

fn reading(json: &str) -> Result<SkinReading, Reject> {
    parse_line(&encode_line(json.as_bytes()))
}

fn measures(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn spec_example_parses() {
    let r = parse_line(EXAMPLE).unwrap();
    assert_eq!(r.model, "AX-200");
    assert_eq!(r.seq, Some(812));
    assert_eq!(r.device_time.as_deref(), Some("2026-11-23T05:01:02Z"));
    let m = [
        ("moisture", 41.5),
        ("sebum", 22.0),
        ("pores", 3.0),
        ("wrinkles", 2.0),
    ];
    let m = measures(&[&m[..], &[("pigmentation", 18.2), ("redness", 7.1)]].concat());
    assert_eq!(r.measures, m);
    assert!(r.extra.is_empty());
    assert_eq!(r.skin_type, Some(SkinType::Combination));
    assert_eq!(crc32fast::hash(json_of(EXAMPLE)), 0xd6db35eb);
    assert_eq!(encode_line(json_of(EXAMPLE)), EXAMPLE);
    // Without its LF, and with the CRC in upper case.
    assert_eq!(parse_line(&EXAMPLE[..EXAMPLE.len() - 1]), Ok(r.clone()));
    let upper = [json_of(EXAMPLE), b"\tD6DB35EB\n"].concat();
    assert_eq!(parse_line(&upper), Ok(r.clone()));
    assert_eq!(parse_json_body(json_of(EXAMPLE)), Ok(r));
}

#[test]
fn framing_rejects() {
    assert_eq!(parse_line(b""), Err(Reject::Empty));
    assert_eq!(parse_line(b"\n"), Err(Reject::Empty));
    assert_eq!(parse_line(b"{\"v\":1} d6db35eb\n"), Err(Reject::NoTab));
    assert_eq!(parse_line(b"{}\td6db35e\n"), Err(Reject::BadCrcField));
    assert_eq!(parse_line(b"{}\t+d6db35e\n"), Err(Reject::BadCrcField));
    assert_eq!(parse_line(b"{}\td6db35eb\r\n"), Err(Reject::BadCrcField));
    assert_eq!(parse_line(b"{}\td6db35eg\n"), Err(Reject::BadCrcField));
    let mut flipped = EXAMPLE.to_vec();
    flipped[10] = b'Y';
    assert_eq!(parse_line(&flipped), Err(Reject::BadCrc));
    assert_eq!(parse_line(&encode_line(b"[1,2]")), Err(Reject::BadJson));
    assert_eq!(parse_line(&encode_line(b"{\"v\":1")), Err(Reject::BadJson));
    assert_eq!(parse_line(&encode_line(b"\xff")), Err(Reject::BadJson));
}

#[test]
fn tab_whitespace_inside_json_is_allowed() {
    let r = reading("{\"v\":1,\t\"model\":\"m\",\"measures\":{\"sebum\":1}}").unwrap();
    assert_eq!(r.measures, measures(&[("sebum", 1.0)]));
}

#[test]
fn the_16_kib_limit_counts_the_lf() {
    let json_for = |line_len: usize| {
        let pad = line_len - 10 - r#"{"v":1,"model":"m","measures":{"sebum":1},"p":""}"#.len();
        format!(
            r#"{{"v":1,"model":"m","measures":{{"sebum":1}},"p":"{}"}}"#,
            "x".repeat(pad)
        )
    };
    let max = encode_line(json_for(MAX_LINE).as_bytes());
    assert_eq!(max.len(), MAX_LINE);
    assert!(parse_line(&max).is_ok());
    assert!(parse_line(&max[..MAX_LINE - 1]).is_ok());
    let over = encode_line(json_for(MAX_LINE + 1).as_bytes());
    assert_eq!(parse_line(&over), Err(Reject::TooLong));
    assert_eq!(
        parse_line(&over[..MAX_LINE]),
        Err(Reject::TooLong),
        "no LF still counts one"
    );
    assert_eq!(
        parse_json_body(&vec![b' '; MAX_JSON_BODY + 1]),
        Err(Reject::TooLong)
    );
}

#[test]
fn content_rejects() {
    let m = r#""measures":{"sebum":1}"#;
    let cases: &[(String, Reject)] = &[
        (format!(r#"{{"model":"m",{m}}}"#), Reject::BadVersion),
        (format!(r#"{{"v":2,"model":"m",{m}}}"#), Reject::BadVersion),
        (
            format!(r#"{{"v":"1","model":"m",{m}}}"#),
            Reject::BadVersion,
        ),
        (format!(r#"{{"v":1,{m}}}"#), Reject::BadModel),
        (format!(r#"{{"v":1,"model":"",{m}}}"#), Reject::BadModel),
        (
            format!(r#"{{"v":1,"model":"{}",{m}}}"#, "é".repeat(65)),
            Reject::BadModel,
        ),
        (format!(r#"{{"v":1,"model":7,{m}}}"#), Reject::BadModel),
        (
            format!(r#"{{"v":1,"model":"m","seq":-1,{m}}}"#),
            Reject::BadSeq,
        ),
        (
            format!(r#"{{"v":1,"model":"m","seq":1.5,{m}}}"#),
            Reject::BadSeq,
        ),
        (
            format!(r#"{{"v":1,"model":"m","ts":5,{m}}}"#),
            Reject::BadTs,
        ),
        (
            format!(r#"{{"v":1,"model":"m","skin_type":"greasy",{m}}}"#),
            Reject::BadSkinType,
        ),
        (
            format!(r#"{{"v":1,"model":"m","skin_type":null,{m}}}"#),
            Reject::BadSkinType,
        ),
        (r#"{"v":1,"model":"m"}"#.into(), Reject::NoMeasures),
        (
            r#"{"v":1,"model":"m","measures":{}}"#.into(),
            Reject::NoMeasures,
        ),
        (
            r#"{"v":1,"model":"m","measures":[1]}"#.into(),
            Reject::NoMeasures,
        ),
        (
            r#"{"v":1,"model":"m","measures":{"sebum":"1"}}"#.into(),
            Reject::NotANumber {
                name: "sebum".into(),
            },
        ),
        (
            r#"{"v":1,"model":"m","measures":{"glow":null}}"#.into(),
            Reject::NotANumber {
                name: "glow".into(),
            },
        ),
        (
            r#"{"v":1,"model":"m","measures":{"sebum":1,"pores":10.5}}"#.into(),
            Reject::OutOfRange {
                name: "pores".into(),
                value: 10.5,
            },
        ),
        (
            r#"{"v":1,"model":"m","measures":{"moisture":-0.1}}"#.into(),
            Reject::OutOfRange {
                name: "moisture".into(),
                value: -0.1,
            },
        ),
    ];
    for (json, want) in cases {
        assert_eq!(&reading(json).unwrap_err(), want, "{json}");
        assert_eq!(
            &parse_json_body(json.as_bytes()).unwrap_err(),
            want,
            "{json}"
        );
    }
    let e = Reject::OutOfRange {
        name: "pores".into(),
        value: 11.0,
    };
    assert_eq!(e.reason(), "out_of_range");
    assert!(e.to_string().contains("pores"));
}

#[test]
fn bounds_unknown_names_and_unknown_keys() {
    let j = r#"{"v":1,"model":"m","measures":{"moisture":100,"pores":0,"elasticity":0,"sensitivity":10,"glow":-5e3},"fw":"1.2"}"#;
    let r = reading(j).unwrap();
    let want = [
        ("moisture", 100.0),
        ("pores", 0.0),
        ("elasticity", 0.0),
        ("sensitivity", 10.0),
    ];
    assert_eq!(r.measures, measures(&want));
    assert_eq!(r.extra, measures(&[("glow", -5000.0)]));
    assert_eq!((r.seq, r.device_time, r.skin_type), (None, None, None));
}

#[test]
fn line_reader_splits_rejects_and_recovers() {
    let mut lr = LineReader::new();
    let good = parse_line(EXAMPLE).unwrap();
    lr.push(&EXAMPLE[..50]);
    assert_eq!(lr.next(), None);
    lr.push(&[&EXAMPLE[50..], b"\n", EXAMPLE].concat());
    assert_eq!(lr.next(), Some(Ok(good.clone())));
    assert_eq!(lr.next(), Some(Err(Reject::Empty)));
    assert_eq!(lr.next(), Some(Ok(good.clone())));
    // An endless line is reported once, as soon as it is too long, then skipped to its LF.
    lr.push(&vec![b'x'; MAX_LINE]);
    assert_eq!(lr.next(), Some(Err(Reject::TooLong)));
    lr.push(&vec![b'x'; 3 * MAX_LINE]);
    assert_eq!(lr.next(), None);
    lr.push(&[b"xx\n", EXAMPLE].concat());
    assert_eq!(lr.next(), Some(Ok(good)));
    lr.push(b"{\"v\"");
    assert!(lr.reset());
    assert!(!lr.reset());
    assert_eq!(lr.next(), None);
}

#[test]
fn seq_dedup_window_and_cap() {
    let mut d = SeqDeduper::default();
    assert!(d.is_new("AX-200", 812, 1_000));
    assert!(!d.is_new("AX-200", 812, 1_000 + DEDUP_WINDOW_MS - 1));
    assert!(d.is_new("AX-300", 812, 2_000), "seq is per model");
    assert!(d.is_new("AX-200", 813, 2_000));
    assert!(
        d.is_new("AX-200", 812, 1_000 + DEDUP_WINDOW_MS),
        "window runs from first sighting"
    );
    assert!(
        !d.is_new("AX-200", 812, 500),
        "clock stepping back stays a repeat"
    );
    assert_eq!(d.len(), 3);

    let mut small = SeqDeduper::new(DEDUP_WINDOW_MS, 3);
    for seq in 0..10 {
        assert!(small.is_new("m", seq, 0));
    }
    assert_eq!(small.len(), 3);
    assert!(small.is_new("m", 0, 0), "evicted by the cap");
}

#[test]
fn forgotten_entries_are_handed_out_once_and_never_a_live_one() {
    let mut d = SeqDeduper::default();
    assert!(d.is_new("AX", 1, 1_000));
    assert!(d.is_new("AX", 2, 2_000));
    d.forget_expired(1_000 + DEDUP_WINDOW_MS);
    assert_eq!(d.take_forgotten(), vec![("AX".to_string(), 1)]);
    assert!(d.take_forgotten().is_empty(), "handed out once");
    // Seq 2 leaves the window inside is_new, then comes again: its saved key is the new one.
    assert!(d.is_new("AX", 2, 2_000 + DEDUP_WINDOW_MS));
    assert!(d.take_forgotten().is_empty());
    assert_eq!(d.len(), 1);

    let mut small = SeqDeduper::new(DEDUP_WINDOW_MS, 2);
    for seq in 0..3 {
        assert!(small.is_new("m", seq, 0));
    }
    assert_eq!(
        small.take_forgotten(),
        vec![("m".to_string(), 0)],
        "past the cap"
    );
}

fn arb_reading() -> impl Strategy<Value = SkinReading> {
    // Values of k/100 print and parse back exactly with serde_json's default float parser.
    let score = (0u32..=10_000).prop_map(|k| f64::from(k) / 100.0);
    let grade = (0u32..=1_000).prop_map(|k| f64::from(k) / 100.0);
    let known = (
        proptest::option::of(score.clone()),
        proptest::option::of(score),
        proptest::option::of(grade),
    )
        .prop_map(|(m, s, p)| {
            let names = [("moisture", m), ("sebum", s), ("pores", p)];
            names
                .iter()
                .filter_map(|(n, v)| Some((n.to_string(), (*v)?)))
                .collect::<Measures>()
        });
    let extra = proptest::collection::btree_map(
        "[a-z_]{1,12}",
        (-100_000i32..100_000).prop_map(|k| f64::from(k) / 100.0),
        0..4,
    )
    .prop_map(|m| {
        m.into_iter()
            .filter(|(k, _)| !KNOWN_MEASURES.iter().any(|(n, ..)| n == k))
            .collect::<Measures>()
    });
    let skin = proptest::option::of(proptest::sample::select(SkinType::ALL.to_vec()));
    (
        "\\PC{1,64}",
        proptest::option::of(any::<u64>()),
        proptest::option::of("\\PC{0,30}"),
        known,
        extra,
        skin,
    )
        .prop_filter("measures must not be empty", |t| {
            !t.3.is_empty() || !t.4.is_empty()
        })
        .prop_map(
            |(model, seq, device_time, measures, extra, skin_type)| SkinReading {
                model,
                seq,
                device_time,
                measures,
                extra,
                skin_type,
            },
        )
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = parse_line(&bytes);
        let _ = parse_json_body(&bytes);
        let mut lr = LineReader::new();
        lr.push(&bytes);
        while lr.next().is_some() {}
    }

    #[test]
    fn arbitrary_json_ish_never_panics(s in r#"[\{\}\[\]":,0-9a-z\.\-e ]{0,200}"#) {
        let _ = parse_line(&encode_line(s.as_bytes()));
    }

    #[test]
    fn readings_round_trip(r in arb_reading()) {
        prop_assert_eq!(parse_line(&r.to_line()), Ok(r.clone()));
        prop_assert_eq!(parse_json_body(&r.to_json()), Ok(r));
    }

    #[test]
    fn reader_resyncs_after_garbage(garbage in proptest::collection::vec(any::<u8>(), 0..500), split in 0usize..1000) {
        let wire = [&garbage[..], b"\n", EXAMPLE].concat();
        let at = split.min(wire.len());
        let mut lr = LineReader::new();
        lr.push(&wire[..at]);
        lr.push(&wire[at..]);
        let items: Vec<_> = std::iter::from_fn(|| lr.next()).collect();
        prop_assert_eq!(items.last(), Some(&parse_line(EXAMPLE)));
    }
}
