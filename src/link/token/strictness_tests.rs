//! Token strictness (issue 10, item 6): the prefix rule for token attempts, printable `sub` /
//! `jti`, unique member names. The regression tests are named after what the old code did.

use super::tests::{claims, fixture, verdict, CTX, KID};
use super::*;
use proptest::prelude::*;

/// A token signed over exactly these header and payload texts (to write duplicate members,
/// which no `Value` can hold).
fn sign_text(key: &SigningKey, header: &str, payload: &str) -> String {
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = URL_SAFE_NO_PAD.encode(key.sign(signed.as_bytes()).to_bytes());
    format!("{signed}.{signature}")
}

#[test]
fn regression_duplicate_claim_was_accepted() {
    let (key, keys) = fixture();
    let header = r#"{"alg":"EdDSA","typ":"JWT","kid":"k1"}"#;
    let rest = r#""aud":"acme","iat":1789999990,"exp":1790000290,"jti":"0123456789abcdef""#;
    let good = format!(r#"{{"sub":"alice",{rest}}}"#);
    assert_eq!(
        verify(&sign_text(&key, header, &good), &keys, &CTX).verdict,
        Verdict::Valid
    );
    for payload in [
        format!(r#"{{"sub":"alice","sub":"bob",{rest}}}"#),
        // The same name spelled with an escape is the same name.
        format!(r#"{{"sub":"alice","s\u0075b":"bob",{rest}}}"#),
        format!(r#"{{"sub":"alice",{rest},"exp":1790000290}}"#),
        // Nested: nobody reads `x`, but the signed document is still ambiguous.
        format!(r#"{{"sub":"alice",{rest},"x":{{"a":1,"a":2}}}}"#),
    ] {
        let checked = verify(&sign_text(&key, header, &payload), &keys, &CTX);
        assert_eq!(checked.verdict, Verdict::Malformed, "{payload}");
        assert_eq!(checked.claims, None);
    }
    for header in [
        r#"{"alg":"EdDSA","kid":"k1","kid":"k2"}"#,
        r#"{"alg":"none","alg":"EdDSA","kid":"k1"}"#,
    ] {
        assert_eq!(
            verify(&sign_text(&key, header, &good), &keys, &CTX).verdict,
            Verdict::Malformed,
            "{header}"
        );
    }
}

#[test]
fn regression_sub_with_control_characters_was_valid() {
    for sub in [
        "alice\0",
        "ali\nce",
        "alice\r",
        "\u{1b}[31mred",
        "tab\there",
        "del\u{7f}",
        "c1\u{85}",
        "\u{202e}ecila",
        "zero\u{200b}width",
        "line\u{2028}sep",
        "\u{feff}bom",
        " alice",
        "alice ",
        "\u{3000}alice",
    ] {
        let c = Claims {
            sub: sub.into(),
            ..claims()
        };
        assert_eq!(verdict(&c, &CTX), Verdict::Malformed, "sub {sub:?}");
    }
    for jti in [
        "0123456789abcde\0",
        "0123456789abcde\n",
        " 0123456789abcdef",
        "0123456789abcdef ",
        "0123456789 abcdef",
        "0123456789abcdeé",
    ] {
        let c = Claims {
            jti: jti.into(),
            ..claims()
        };
        let (key, keys) = fixture();
        let checked = verify(&mint(&key, KID, &c), &keys, &CTX);
        assert_eq!(checked.verdict, Verdict::Malformed, "jti {jti:?}");
        assert_eq!(checked.jti, None, "a jti outside the rule is not recorded");
    }
    // Printable text inside is fine: spaces between words, accents, symbols.
    for sub in ["user 7", "Zoë-42", "山田", "a", "mail@example.com"] {
        let c = Claims {
            sub: sub.into(),
            ..claims()
        };
        assert_eq!(verdict(&c, &CTX), Verdict::Valid, "sub {sub:?}");
    }
}

/// Codes that begin like (or carry) a signed, valid token but fail the shape check.
fn near_misses(jwt: &str) -> Vec<String> {
    let (signed, _) = jwt.rsplit_once('.').unwrap();
    let mut codes = vec![
        format!("{jwt}.x"),
        format!("{jwt}."),
        format!("{jwt}.{jwt}"),
        format!("{jwt}=="),
        format!("{jwt}x"),
        format!("{jwt} trailing words"),
        format!("{jwt}\u{1d}01"),
        signed.to_string(),
        format!("{signed}."),
        format!("]Q1{jwt}"),
        format!("token:{jwt}"),
        format!("https://app.example/e?t=nope&t={jwt}"),
        format!("https://app.example/e#t={jwt}"),
        format!("https://app.example/e/{jwt}"),
        format!("https://app.example/e?token={jwt}"),
    ];
    let std_alphabet = jwt.replace('-', "+").replace('_', "/");
    if std_alphabet != jwt {
        codes.push(std_alphabet);
    }
    codes
}

#[test]
fn regression_jwt_like_codes_failing_the_shape_were_forwarded_as_other() {
    use super::super::{classify_code, CodeKind};
    let (key, keys) = fixture();
    let jwt = mint(&key, KID, &claims());
    for code in near_misses(&jwt) {
        assert_eq!(classify_code(&code), CodeKind::AppToken, "{code:?}");
        let token = extract_token(&code).unwrap_or_else(|| panic!("an attempt: {code:?}"));
        let checked = verify(token, &keys, &CTX);
        assert_eq!(checked.verdict, Verdict::Malformed, "{code:?}");
        assert_eq!(checked.claims, None);
    }
}

proptest! {
    #[test]
    fn a_code_containing_the_jwt_prefix_is_always_a_token_attempt(
        before in "\\PC{0,40}",
        after in "\\PC{0,200}",
    ) {
        use super::super::{classify_code, CodeKind};
        let code = format!("{before}eyJ{after}");
        prop_assert_eq!(classify_code(&code), CodeKind::AppToken);
        let (_, keys) = fixture();
        let token = extract_token(&code);
        prop_assert!(token.is_some());
        prop_assert_ne!(verify(token.unwrap(), &keys, &CTX).verdict, Verdict::Valid);
    }

    #[test]
    fn any_suffix_on_a_valid_token_is_malformed(suffix in "\\PC{1,40}") {
        let (key, keys) = fixture();
        let jwt = mint(&key, KID, &claims());
        let code = format!("{jwt}{suffix}");
        prop_assume!(code.trim() != jwt);
        let token = extract_token(&code);
        prop_assert!(token.is_some());
        prop_assert_eq!(verify(token.unwrap(), &keys, &CTX).verdict, Verdict::Malformed);
    }
}
