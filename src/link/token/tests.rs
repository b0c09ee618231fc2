use super::super::jwks::{generate_key, jwks_json};
use super::super::replay::{apply_replay, ReplayGuard};
use super::*;
use proptest::prelude::*;
use serde_json::json;

pub(super) const NOW: i64 = 1_790_000_000;
pub(super) const KID: &str = "k1";
pub(super) const CTX: VerifyContext<'static> = VerifyContext {
    tenant: "acme",
    store: "s042",
    now_unix: NOW,
    skew_s: 30,
};

pub(super) fn fixture() -> (SigningKey, KeySet) {
    let (key, jwk) = generate_key(KID);
    let keys = KeySet::from_jwks_value(&jwks_json(&[jwk])).expect("fresh key is valid");
    (key, keys)
}

pub(super) fn claims() -> Claims {
    Claims {
        sub: "user-123".into(),
        aud: vec!["acme".into()],
        iat: NOW - 10,
        exp: NOW + 290,
        nbf: None,
        jti: "0123456789abcdef".into(),
        pur: Some(Purpose::Entry),
        stores: Some(vec!["s041".into(), "s042".into()]),
    }
}

fn at(now_unix: i64) -> VerifyContext<'static> {
    VerifyContext { now_unix, ..CTX }
}

/// Verdict of a properly signed token with these claims, checked at `ctx`.
pub(super) fn verdict(claims: &Claims, ctx: &VerifyContext<'_>) -> Verdict {
    let (key, keys) = fixture();
    verify(&mint(&key, KID, claims), &keys, ctx).verdict
}

/// A token with any header and payload, correctly signed by `key`.
fn sign_raw(key: &SigningKey, header: &Value, payload: &Value) -> String {
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let signature = URL_SAFE_NO_PAD.encode(key.sign(signed.as_bytes()).to_bytes());
    format!("{signed}.{signature}")
}

fn claims_json() -> Value {
    serde_json::to_value(claims()).expect("claims serialise")
}

#[test]
fn good_token_is_valid_with_everything_filled() {
    let (key, keys) = fixture();
    let token = mint(&key, KID, &claims());
    assert!(token.len() < 600, "a §5 token stays small: {}", token.len());
    let checked = verify(&token, &keys, &CTX);
    assert_eq!(checked.verdict, Verdict::Valid);
    assert_eq!(checked.kid.as_deref(), Some(KID));
    assert_eq!(checked.jti.as_deref(), Some("0123456789abcdef"));
    assert_eq!(checked.claims, Some(claims()));
}

#[test]
fn expired_and_not_yet_valid_keep_kid_and_jti_but_no_claims() {
    let (key, keys) = fixture();
    let token = mint(&key, KID, &claims());
    let late = verify(&token, &keys, &at(NOW + 1000));
    assert_eq!(late.verdict, Verdict::Expired);
    assert_eq!(late.kid.as_deref(), Some(KID));
    assert_eq!(late.jti.as_deref(), Some("0123456789abcdef"));
    assert_eq!(late.claims, None);
    assert_eq!(
        verify(&token, &keys, &at(NOW - 1000)).verdict,
        Verdict::NotYetValid
    );
}

#[test]
fn skew_boundaries() {
    let c = claims(); // iat = NOW - 10, exp = NOW + 290, skew 30
    assert_eq!(verdict(&c, &at(c.exp + 29)), Verdict::Valid);
    assert_eq!(verdict(&c, &at(c.exp + 30)), Verdict::Expired);
    assert_eq!(verdict(&c, &at(c.iat - 30)), Verdict::Valid);
    assert_eq!(verdict(&c, &at(c.iat - 31)), Verdict::NotYetValid);
    let nbf = Claims {
        nbf: Some(NOW + 100),
        ..claims()
    };
    assert_eq!(verdict(&nbf, &at(NOW + 70)), Verdict::Valid);
    assert_eq!(verdict(&nbf, &at(NOW + 69)), Verdict::NotYetValid);
    let no_skew = VerifyContext {
        skew_s: -5,
        ..at(c.exp)
    };
    assert_eq!(
        verdict(&c, &no_skew),
        Verdict::Expired,
        "negative skew counts as 0"
    );
    let no_skew = VerifyContext {
        skew_s: 0,
        ..at(c.exp - 1)
    };
    assert_eq!(verdict(&c, &no_skew), Verdict::Valid);
}

#[test]
fn tampered_payload_is_bad_signature() {
    let (key, keys) = fixture();
    let token = mint(&key, KID, &claims());
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged_claims = Claims {
        sub: "someone-else".into(),
        ..claims()
    };
    let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap());
    parts[1] = &forged;
    let checked = verify(&parts.join("."), &keys, &CTX);
    assert_eq!(checked.verdict, Verdict::BadSignature);
    assert_eq!(checked.jti.as_deref(), Some("0123456789abcdef"));
    assert_eq!(checked.claims, None);
}

#[test]
fn wrong_key_under_a_known_kid_is_bad_signature() {
    let (_, keys) = fixture();
    let (impostor, _) = generate_key(KID);
    let checked = verify(&mint(&impostor, KID, &claims()), &keys, &CTX);
    assert_eq!(checked.verdict, Verdict::BadSignature);
}

#[test]
fn unknown_kid() {
    let (key, keys) = fixture();
    let checked = verify(&mint(&key, "k9", &claims()), &keys, &CTX);
    assert_eq!(checked.verdict, Verdict::UnknownKey);
    assert_eq!(checked.kid.as_deref(), Some("k9"));
    assert_eq!(
        verify(&mint(&key, KID, &claims()), &KeySet::new(), &CTX).verdict,
        Verdict::UnknownKey
    );
}

#[test]
fn rotation_two_kids_valid_at_once() {
    let (old, old_jwk) = generate_key("2026-01");
    let (new, new_jwk) = generate_key("2026-02");
    let both = KeySet::from_jwks_value(&jwks_json(&[old_jwk, new_jwk.clone()])).unwrap();
    let old_token = mint(&old, "2026-01", &claims());
    assert_eq!(verify(&old_token, &both, &CTX).verdict, Verdict::Valid);
    assert_eq!(
        verify(&mint(&new, "2026-02", &claims()), &both, &CTX).verdict,
        Verdict::Valid
    );
    // The old key signing under the new kid is still a forgery.
    assert_eq!(
        verify(&mint(&old, "2026-02", &claims()), &both, &CTX).verdict,
        Verdict::BadSignature
    );
    let new_only = KeySet::from_jwks_value(&jwks_json(&[new_jwk])).unwrap();
    assert_eq!(
        verify(&old_token, &new_only, &CTX).verdict,
        Verdict::UnknownKey
    );
}

#[test]
fn audience_as_string_or_array() {
    let many = Claims {
        aud: vec!["other".into(), "acme".into()],
        ..claims()
    };
    assert_eq!(verdict(&many, &CTX), Verdict::Valid);
    let wrong = Claims {
        aud: vec!["other".into()],
        ..claims()
    };
    assert_eq!(verdict(&wrong, &CTX), Verdict::WrongAudience);
    let none = Claims {
        aud: vec![],
        ..claims()
    };
    assert_eq!(verdict(&none, &CTX), Verdict::WrongAudience);
    // One audience is written as a plain string, as HQ's signer does.
    assert_eq!(claims_json()["aud"], json!("acme"));
    assert!(serde_json::to_value(&many).unwrap()["aud"].is_array());
}

#[test]
fn wrong_audience_wins_over_expiry_and_store() {
    let c = Claims {
        aud: vec!["other".into()],
        stores: Some(vec![]),
        ..claims()
    };
    assert_eq!(verdict(&c, &at(NOW + 9999)), Verdict::WrongAudience);
}

#[test]
fn store_list() {
    let elsewhere = Claims {
        stores: Some(vec!["s001".into()]),
        ..claims()
    };
    assert_eq!(verdict(&elsewhere, &CTX), Verdict::WrongStore);
    let anywhere = Claims {
        stores: None,
        pur: None,
        ..claims()
    };
    assert_eq!(verdict(&anywhere, &CTX), Verdict::Valid);
}

#[test]
fn signed_claims_outside_the_limits_are_malformed() {
    let cases = [
        Claims {
            sub: String::new(),
            ..claims()
        },
        Claims {
            sub: "é".repeat(65),
            ..claims()
        },
        Claims {
            jti: "a".repeat(15),
            ..claims()
        },
        Claims {
            jti: "a".repeat(33),
            ..claims()
        },
        Claims {
            exp: NOW - 10 + 301,
            ..claims()
        },
        Claims {
            exp: NOW - 10,
            ..claims()
        },
        Claims {
            iat: i64::MIN,
            exp: i64::MAX,
            ..claims()
        },
    ];
    for c in cases {
        assert_eq!(verdict(&c, &CTX), Verdict::Malformed, "{c:?}");
    }
    // Multi-byte characters count as one: 64 of them is fine.
    assert_eq!(
        verdict(
            &Claims {
                sub: "é".repeat(64),
                ..claims()
            },
            &CTX
        ),
        Verdict::Valid
    );
    let (key, keys) = fixture();
    let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": KID});
    for (field, value) in [
        ("exp", json!(1.79e9)),
        ("pur", json!("exit")),
        ("sub", json!(5)),
    ] {
        let mut payload = claims_json();
        payload[field] = value;
        let checked = verify(&sign_raw(&key, &header, &payload), &keys, &CTX);
        assert_eq!(checked.verdict, Verdict::Malformed, "{field}");
        assert_eq!(checked.jti.as_deref(), Some("0123456789abcdef"));
    }
}

#[test]
fn headers_other_than_eddsa_with_kid_are_malformed() {
    let (key, keys) = fixture();
    let payload = claims_json();
    let cases = [
        json!({"alg": "none", "kid": KID}),
        json!({"alg": "HS256", "typ": "JWT", "kid": KID}),
        json!({"alg": "EdDSA", "typ": "JWT"}),
        json!({"alg": "EdDSA", "kid": ""}),
        json!({"alg": "EdDSA", "kid": 1}),
        json!({"alg": "EdDSA", "typ": "JWE", "kid": KID}),
        json!({"alg": "EdDSA", "kid": KID, "crit": ["exp"]}),
        json!({"alg": "EdDSA", "kid": KID, "jku": "https://evil.example/jwks"}),
        json!(["alg", "EdDSA"]),
    ];
    for header in &cases {
        let checked = verify(&sign_raw(&key, header, &payload), &keys, &CTX);
        assert_eq!(checked.verdict, Verdict::Malformed, "{header}");
    }
    // alg none carries no signature at all; it is recognised as a token and refused.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(cases[0].to_string()),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    assert_eq!(extract_token(&none), Some(none.as_str()));
    let checked = verify(&none, &keys, &CTX);
    assert_eq!(
        (checked.verdict, checked.kid.as_deref()),
        (Verdict::Malformed, Some(KID))
    );
    // typ is optional and case-insensitive.
    for header in [
        json!({"alg": "EdDSA", "kid": KID}),
        json!({"alg": "EdDSA", "typ": "jwt", "kid": KID}),
    ] {
        assert_eq!(
            verify(&sign_raw(&key, &header, &payload), &keys, &CTX).verdict,
            Verdict::Valid
        );
    }
}

#[test]
fn every_truncation_is_malformed() {
    let (key, keys) = fixture();
    let token = mint(&key, KID, &claims());
    for end in 0..token.len() {
        assert_eq!(
            verify(&token[..end], &keys, &CTX).verdict,
            Verdict::Malformed,
            "{end}"
        );
    }
}

#[test]
fn oversized_and_garbage_input_is_malformed() {
    let (key, keys) = fixture();
    let garbage = "x".repeat(10 * 1024);
    assert_eq!(verify(&garbage, &keys, &CTX), verify("", &keys, &CTX));
    assert_eq!(verify(&garbage, &keys, &CTX).verdict, Verdict::Malformed);
    // Even a genuinely signed token is refused past the cap, before any decoding.
    let long = Claims {
        stores: Some(vec!["s".repeat(40); 40]),
        ..claims()
    };
    let token = mint(&key, KID, &long);
    assert!(token.len() > MAX_TOKEN_LEN);
    let checked = verify(&token, &keys, &CTX);
    assert_eq!((checked.verdict, checked.kid), (Verdict::Malformed, None));
}

#[test]
fn base64_must_be_strict() {
    let (key, keys) = fixture();
    let token = mint(&key, KID, &claims());
    // The last character of a 64-byte signature carries 4 unused bits; setting one would
    // decode to the same bytes under a lax decoder and give the token a second spelling.
    let last = token.as_bytes()[token.len() - 1];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let index = alphabet.iter().position(|&c| c == last).unwrap();
    let respelled = format!(
        "{}{}",
        &token[..token.len() - 1],
        alphabet[index | 1] as char
    );
    assert_eq!(verify(&respelled, &keys, &CTX).verdict, Verdict::Malformed);
    let padded = format!("{token}==");
    assert_eq!(verify(&padded, &keys, &CTX).verdict, Verdict::Malformed);
    let std_alphabet = token.replace('-', "+").replace('_', "/");
    if std_alphabet != token {
        assert_eq!(
            verify(&std_alphabet, &keys, &CTX).verdict,
            Verdict::Malformed
        );
    }
}

#[test]
fn replay_is_caught_until_exp_plus_skew() {
    let (key, keys) = fixture();
    let token = mint(&key, KID, &claims());
    let mut guard = ReplayGuard::new(CTX.skew_s);
    let first = apply_replay(verify(&token, &keys, &CTX), &mut guard, NOW);
    assert_eq!(first.verdict, Verdict::Valid);
    let again = apply_replay(verify(&token, &keys, &at(NOW + 5)), &mut guard, NOW + 5);
    assert_eq!(again.verdict, Verdict::Replayed);
    assert_eq!(again.jti.as_deref(), Some("0123456789abcdef"));
    assert_eq!(again.claims, None);
    // A failed verdict neither records nor is turned into replayed.
    let expired = verify(&token, &keys, &at(NOW + 9999));
    assert_eq!(
        apply_replay(expired, &mut guard, NOW + 9999).verdict,
        Verdict::Expired
    );
    let exp = claims().exp;
    assert!(!guard.check_and_record("0123456789abcdef", exp, exp + 29));
    guard.prune(exp + 29);
    assert_eq!(guard.len(), 1);
    guard.prune(exp + 30);
    assert!(guard.is_empty());
    assert!(guard.check_and_record("0123456789abcdef", exp, exp + 30));
}

#[test]
fn extract_from_jwt_and_urls() {
    let (key, _) = fixture();
    let jwt = mint(&key, KID, &claims());
    assert_eq!(extract_token(&jwt), Some(jwt.as_str()));
    assert_eq!(extract_token(&format!("{jwt}\r\n")), Some(jwt.as_str()));
    for url in [
        format!("https://app.example.com/e?t={jwt}"),
        format!("http://app.example.com/e?store=s042&t={jwt}&lang=de"),
        format!("https://app.example.com/e?x=1&t={jwt}#section?t=nope"),
        format!("acme-app://enter?v=2&t={jwt}"),
        format!("acme.app+x:enter?t={jwt}"),
    ] {
        assert_eq!(extract_token(&url), Some(jwt.as_str()), "{url}");
    }
    for other in [
        String::new(),
        "4006381333931".into(),
        "https://www.youtube.com/watch?v=abc&t=42".into(),
        "abc.def.ghi".into(),
        "EYJ.a.b".into(),
    ] {
        assert_eq!(extract_token(&other), None, "{other}");
    }
    // Attempts whose token is not where §5 puts it, or not the shape: the whole code is
    // handed to the verifier, which refuses it. Nothing is guessed out of them.
    for attempt in [
        format!("https://app.example.com/e#t={jwt}"),
        format!("https://app.example.com/e?tt={jwt}"),
        format!("https://app.example.com/e?t=nope&t={jwt}"),
        format!("1https://x/?t={jwt}"),
        format!("x{jwt}"),
    ] {
        assert_eq!(extract_token(&attempt), Some(attempt.as_str()), "{attempt}");
        assert!(!has_jwt_shape(&attempt), "{attempt}");
    }
    for attempt in [
        "eyJhbGciOi.eyJzdWIi",
        "eyJ..sig",
        "eyJ.a.b.c",
        "eyJ+.a.b",
        "eyJ",
    ] {
        assert_eq!(extract_token(attempt), Some(attempt), "{attempt}");
        assert!(!has_jwt_shape(attempt), "{attempt}");
    }
}

/// RFC 7515 lets a JWS header be any JSON object text: one with whitespace after `{` does not
/// begin with `eyJ`, and claims written the same way carry no `eyJ` anywhere. Such a token is
/// still an attempt (never forwarded as a plain code), and a correctly signed one is valid
/// (it used to be `malformed`, or with spaced claims, forwarded in clear).
#[test]
fn a_header_with_whitespace_is_still_a_token() {
    let (key, keys) = fixture();
    let payload = serde_json::to_value(claims()).unwrap();
    for header_text in [
        "{ \"alg\": \"EdDSA\", \"kid\": \"KID\" }",
        "{\n  \"alg\": \"EdDSA\",\n  \"kid\": \"KID\"\n}",
        "\t{\"alg\":\"EdDSA\",\"kid\":\"KID\"}",
    ] {
        let header_text = header_text.replace("KID", KID);
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&header_text),
            URL_SAFE_NO_PAD.encode(serde_json::to_string_pretty(&payload).unwrap())
        );
        let token = format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(key.sign(signed.as_bytes()).to_bytes())
        );
        assert!(!token.contains(JWT_PREFIX), "{token}");
        assert_eq!(
            super::super::classify::classify_code(&token),
            super::super::classify::CodeKind::AppToken
        );
        assert!(has_jwt_shape(&token), "{header_text:?}");
        assert_eq!(extract_token(&token), Some(token.as_str()));
        let url = format!("https://app.example.com/e?t={token}&x=1");
        assert_eq!(extract_token(&url), Some(token.as_str()));
        let checked = verify(&token, &keys, &at(NOW));
        assert_eq!(checked.verdict, Verdict::Valid, "{header_text:?}");
        // Tampered, it is refused, not forwarded.
        let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode([7u8; 64]));
        assert_eq!(extract_token(&forged), Some(forged.as_str()));
        assert_eq!(
            verify(&forged, &keys, &at(NOW)).verdict,
            Verdict::BadSignature
        );
    }
    // Three base64url segments whose first is not a JSON object's start stay ordinary codes.
    for other in ["abc.def.ghi", "www.example.com", "e.x.y", "ew.x"] {
        assert_eq!(extract_token(other), None, "{other}");
    }
}

#[test]
fn verdict_names_match_the_protocol() {
    let all = [
        (Verdict::Valid, "valid"),
        (Verdict::Expired, "expired"),
        (Verdict::NotYetValid, "not_yet_valid"),
        (Verdict::BadSignature, "bad_signature"),
        (Verdict::UnknownKey, "unknown_key"),
        (Verdict::WrongAudience, "wrong_audience"),
        (Verdict::WrongStore, "wrong_store"),
        (Verdict::Replayed, "replayed"),
        (Verdict::Malformed, "malformed"),
    ];
    for (verdict, name) in all {
        assert_eq!(verdict.as_str(), name);
        assert_eq!(verdict.to_string(), name);
        assert_eq!(serde_json::to_value(verdict).unwrap(), json!(name));
    }
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let (_, keys) = fixture();
        let _ = extract_token(&text);
        let checked = verify(&text, &keys, &CTX);
        prop_assert_ne!(checked.verdict, Verdict::Valid);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let (_, keys) = fixture();
        let text = String::from_utf8_lossy(&bytes);
        let _ = extract_token(&text);
        prop_assert_ne!(verify(&text, &keys, &CTX).verdict, Verdict::Valid);
    }

    #[test]
    fn jwt_shaped_noise_never_panics(text in "eyJ[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_=.-]{0,200}") {
        let (_, keys) = fixture();
        prop_assert_eq!(extract_token(&text), Some(text.as_str()));
        prop_assert_ne!(verify(&text, &keys, &CTX).verdict, Verdict::Valid);
    }

    #[test]
    fn mint_verify_round_trip(
        sub in "\\PC{1,64}",
        jti in "[A-Za-z0-9_-]{16,32}",
        life in 1i64..=300,
    ) {
        prop_assume!(is_printable_text(&sub, SUB_LEN));
        let (key, keys) = fixture();
        let c = Claims { sub, jti, exp: NOW - 10 + life, ..claims() };
        let ctx = at(NOW - 10);
        let checked = verify(&mint(&key, KID, &c), &keys, &ctx);
        prop_assert_eq!(checked.verdict, Verdict::Valid);
        prop_assert_eq!(checked.jti.as_deref(), Some(c.jti.as_str()));
        prop_assert_eq!(checked.claims, Some(c));
    }

    #[test]
    fn any_one_character_change_is_never_valid(
        pos in any::<prop::sample::Index>(),
        c in "[A-Za-z0-9_.=-]",
    ) {
        let (key, keys) = fixture();
        let token = mint(&key, KID, &claims());
        let i = pos.index(token.len());
        let mutated = format!("{}{}{}", &token[..i], c, &token[i + 1..]);
        prop_assume!(mutated != token);
        let checked = verify(&mutated, &keys, &CTX);
        prop_assert_ne!(checked.verdict, Verdict::Valid);
        prop_assert!(checked.claims.is_none());
    }
}
