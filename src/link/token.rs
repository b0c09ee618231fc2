//! App entry / check-in tokens (docs/protocols.md §5): finding the token in a scanned code, verifying
//! it offline against the [`KeySet`], and minting for the CLI and tests.
//!
//! Pure logic, no I/O: the caller supplies the clock, the keys and the replay memory.
//!
//! # What is a token attempt
//!
//! A scanned code that contains [`JWT_PREFIX`] (`eyJ`, the base64url of `{"` that begins almost
//! every compact JWT) anywhere, or that has the compact JWS shape with a header opening a JSON
//! object after whitespace (`{ "alg"…`), is an app-token attempt ([`extract_token`]): it gets a verdict, and its
//! text never leaves the gateway, whatever else is wrong with it. Only codes without it may be
//! forwarded to HQ. Deciding on the prefix, not on the full shape, is what keeps a real token
//! with a bit of junk around it (a suffix, a scanner prefix left on, a second copy) from being
//! taken for an ordinary code and published in clear. The full shape is checked once, by
//! [`has_jwt_shape`], as the first step of [`verify`].
//!
//! # Check order
//!
//! [`verify`] stops at the first failing check, in this order:
//!
//! 1. `malformed`: longer than [`MAX_TOKEN_LEN`], not the shape of [`has_jwt_shape`] (three
//!    strict base64url segments), header not exactly `{"alg":"EdDSA","kid":…}` (+ optional
//!    `"typ":"JWT"`, a `kid` within [`KID_LEN`]), header or payload not a JSON object with unique
//!    member names (see `json.rs`), signature not 64 bytes. Structure first, because nothing
//!    else can be read without it.
//! 2. `unknown_key`: the kid is not in the key set.
//! 3. `bad_signature`: `verify_strict` over the ASCII `header.payload`. Claims are judged only
//!    after this, so nothing below ever looks at content HQ did not sign.
//! 4. `malformed`: the signed claims break §5 as the gateway reads it (types, `sub` printable
//!    text of [`SUB_LEN`] characters, `jti` of [`JTI_LEN`] visible ASCII characters,
//!    `0 < exp − iat ≤ 300`, unknown `pur`). That is an HQ/app bug, not an attack.
//! 5. `wrong_audience`, then 6. `wrong_store`: before time, because a token for another tenant or
//!    store is wrong whatever the clock says, and saying so helps whoever debugs the app.
//! 7. `not_yet_valid` (`iat` or `nbf` later than now + skew), 8. `expired` (now ≥ exp + skew).
//!
//! `replayed` is decided afterwards by the `replay` module (or the caller's SQLite replay
//! cache), only for tokens that passed everything else, so invalid tokens cannot fill the
//! replay memory.
//!
//! `Checked::kid` / `jti` are filled whenever they could be read and meet their own rule, even
//! for failures (the `store.qr.scanned` event records them, so they must be short printable
//! text even when nobody signed them); `Checked::claims` is `Some` only for `valid`, so nobody
//! links a user from a token that failed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, SIGNATURE_LENGTH};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::jwks::KeySet;

mod json;

/// Longest token looked at. A §5 token is ~400 bytes; the cap bounds the work an arbitrary
/// scanned code can cause before any decoding.
pub const MAX_TOKEN_LEN: usize = 2048;
/// Longest allowed lifetime, `exp − iat` (§5: apps rotate the code).
pub const MAX_LIFETIME_S: i64 = 300;
/// How every compact JWT begins: `eyJ` is the base64url (and base64) of `{"`, the start of its
/// JSON header. A scanned code containing it anywhere is treated as an app-token attempt (see
/// the module doc): product codes are digits, and ordinary URLs and text almost never hold it.
pub const JWT_PREFIX: &str = "eyJ";
/// `sub` (the app user id) length bounds in characters (§5). It must also be printable text
/// ([`is_printable_text`]): it is shown in events, logs and the status page.
pub const SUB_LEN: std::ops::RangeInclusive<usize> = 1..=64;
/// `jti` length bounds (§5). A jti is a nonce and a storage key, so only visible ASCII
/// (`!`..=`~`: no space, no control or non-ASCII character) is accepted, and characters are bytes.
pub const JTI_LEN: std::ops::RangeInclusive<usize> = 16..=32;
/// `kid` (header) length bounds in characters; printable text like `sub`. §5 sets no limit;
/// HQ's key ids are short names (`2026-01`) or thumbprints (43 chars).
pub const KID_LEN: std::ops::RangeInclusive<usize> = 1..=128;

/// The outcome of checking a token, as recorded in `store.qr.scanned` (`verdict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Valid,
    Expired,
    NotYetValid,
    BadSignature,
    UnknownKey,
    WrongAudience,
    WrongStore,
    Replayed,
    Malformed,
}

impl Verdict {
    /// Every verdict, in the order docs/protocols.md §5 lists them.
    pub const ALL: [Verdict; 9] = [
        Verdict::Valid,
        Verdict::Expired,
        Verdict::NotYetValid,
        Verdict::BadSignature,
        Verdict::UnknownKey,
        Verdict::WrongAudience,
        Verdict::WrongStore,
        Verdict::Replayed,
        Verdict::Malformed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Expired => "expired",
            Verdict::NotYetValid => "not_yet_valid",
            Verdict::BadSignature => "bad_signature",
            Verdict::UnknownKey => "unknown_key",
            Verdict::WrongAudience => "wrong_audience",
            Verdict::WrongStore => "wrong_store",
            Verdict::Replayed => "replayed",
            Verdict::Malformed => "malformed",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the token is for (`pur`). The verifier does not enforce it; the station's rules do
/// (e.g. a gate opens only for `entry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    Entry,
    Checkin,
    Link,
}

impl Purpose {
    /// As the claim spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Entry => "entry",
            Purpose::Checkin => "checkin",
            Purpose::Link => "link",
        }
    }
}

/// The §5 claims. Unknown claims are ignored so HQ can add some without breaking old gateways.
/// Times are integer Unix seconds; a fractional NumericDate is `malformed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    /// RFC 7519 allows one audience as a string or several as an array; both are read, and one
    /// audience is written as a string.
    #[serde(deserialize_with = "one_or_many", serialize_with = "string_if_one")]
    pub aud: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    /// Not in §5, but standard (RFC 7519); honoured if HQ ever sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pur: Option<Purpose>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stores: Option<Vec<String>>,
}

impl Claims {
    /// Claims for a code an app shows now: valid for `ttl` (at most 5 min), a random `jti`.
    pub fn fresh(
        user: &str,
        tenant: &str,
        pur: Option<Purpose>,
        stores: Option<Vec<String>>,
        ttl: std::time::Duration,
    ) -> Claims {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Claims {
            sub: user.into(),
            aud: vec![tenant.into()],
            iat: now,
            exp: now + ttl.as_secs() as i64,
            nbf: None,
            jti: format!("{:032x}", fastrand::u128(..)),
            pur,
            stores,
        }
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(aud) => vec![aud],
        OneOrMany::Many(auds) => auds,
    })
}

fn string_if_one<S: Serializer>(aud: &[String], s: S) -> Result<S::Ok, S::Error> {
    match aud {
        [one] => s.serialize_str(one),
        many => many.serialize(s),
    }
}

/// Where and when a token is being checked.
#[derive(Debug, Clone, Copy)]
pub struct VerifyContext<'a> {
    /// Must appear in `aud`.
    pub tenant: &'a str,
    /// Must appear in `stores` when the token has that claim.
    pub store: &'a str,
    pub now_unix: i64,
    /// Clock-skew allowance in seconds on `exp`, `iat` and `nbf` (default 30, §5). Negative
    /// values count as 0.
    pub skew_s: i64,
}

/// The result of [`verify`]. `claims` is `Some` exactly when `verdict` is `Valid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub verdict: Verdict,
    pub kid: Option<String>,
    pub jti: Option<String>,
    pub claims: Option<Claims>,
}

impl Checked {
    /// Turns a valid result into `replayed`, dropping the claims so no user is linked. Used by
    /// `replay::apply_replay`, and by a caller with its own (SQLite) replay cache.
    pub fn into_replayed(self) -> Checked {
        Checked {
            verdict: Verdict::Replayed,
            claims: None,
            ..self
        }
    }
}

/// The app-token attempt a scanned code carries, as the text to hand to [`verify`]; `None`
/// when the code is no attempt (a product code, an ordinary URL…), and only then may the code's
/// text leave the gateway. The classifier (`classify_code`) calls this, so the two cannot
/// disagree.
///
/// The code is an attempt when it contains [`JWT_PREFIX`] anywhere, or when it (or its URL's
/// `t` parameter) has the compact JWS shape with a header that opens a JSON object after
/// whitespace ([`is_jws_header`]: `{ "alg"…` is `eyAi…`, a pretty-printed `{\n` is `ewo…`;
/// RFC 7515 allows both, and such a token must neither be forwarded in clear nor go unchecked).
/// The text to verify, on the code with surrounding whitespace trimmed (scanners may leave a CR
/// or spaces):
/// - the code itself when it begins with the prefix or has the JWS shape;
/// - for a URL (`https://…?t=…`, `app:…?x=1&t=…#frag`), the first `t` query parameter when
///   it begins with the prefix or has the JWS shape (where §5 puts the token);
/// - otherwise the whole code, which fails [`has_jwt_shape`] and so is `malformed`: a token in
///   the fragment, behind another `t`, in the path, or with junk before it is refused, not
///   guessed at.
pub fn extract_token(qr_text: &str) -> Option<&str> {
    let text = qr_text.trim();
    if text.starts_with(JWT_PREFIX) || has_jwt_shape(text) {
        return Some(text);
    }
    if let Some(token) = token_in_url(text) {
        return Some(token);
    }
    text.contains(JWT_PREFIX).then_some(text)
}

/// The first `t` query parameter of a URL, if it begins with [`JWT_PREFIX`] or has the JWS shape.
fn token_in_url(text: &str) -> Option<&str> {
    let (scheme, rest) = text.split_once(':')?;
    if !is_url_scheme(scheme) {
        return None;
    }
    // The fragment goes first: a `?` after `#` belongs to the fragment, not to the query.
    let before_fragment = rest.split_once('#').map_or(rest, |(before, _)| before);
    let (_, query) = before_fragment.split_once('?')?;
    // base64url needs no percent-encoding, so the raw value is the token. Only the first `t`
    // counts: a code with two would otherwise be ambiguous.
    let value = query.split('&').find_map(|pair| pair.strip_prefix("t="))?;
    (value.starts_with(JWT_PREFIX) || has_jwt_shape(value)).then_some(value)
}

/// RFC 3986 scheme: a letter, then letters, digits, `+`, `-`, `.`.
fn is_url_scheme(scheme: &str) -> bool {
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// The one JWT shape rule: exactly three segments of the strict base64url alphabet
/// (`A–Z a–z 0–9 - _`, no padding `=`, no `+` `/`, no whitespace), the header a JSON object's
/// opening ([`is_jws_header`]), the payload non-empty. The signature may be empty so that
/// `alg: none` tokens get as far as their header, which refuses them. [`verify`] calls this
/// first; a code that fails it is `malformed`.
pub fn has_jwt_shape(s: &str) -> bool {
    if s.len() > MAX_TOKEN_LEN {
        // Bounds the header decoding below; `verify` refuses such a code on its length anyway.
        return s.starts_with(JWT_PREFIX);
    }
    let is_b64url = |seg: &str| {
        seg.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let mut segments = s.split('.');
    match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some(header), Some(payload), Some(signature), None) => {
            !payload.is_empty()
                && [header, payload, signature].into_iter().all(is_b64url)
                && is_jws_header(header)
        }
        _ => false,
    }
}

/// A header segment opens a JSON object: base64url of optional JSON whitespace, then `{`.
/// [`JWT_PREFIX`] (`{"`) is the common case and needs no decoding. Only the first bytes are
/// decoded, with trailing bits allowed, so a forged header with a sloppy tail still counts as
/// a token attempt (and is then refused by the strict decoding in [`verify`]).
fn is_jws_header(header: &str) -> bool {
    use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone),
    );
    if header.starts_with(JWT_PREFIX) {
        return true;
    }
    // 64 characters are 48 bytes: more leading whitespace than that is no JSON encoder's output.
    // A 4n+1 tail holds no whole byte; any other length decodes.
    let n = header.len().min(64);
    let head = &header[..if n % 4 == 1 { n - 1 } else { n }];
    let Ok(bytes) = LENIENT.decode(head) else {
        return false;
    };
    bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|&b| b == b'{')
}

/// Text a person may be shown (an event, a log line, the status page) and compare by eye:
/// `len` characters; no control character (Unicode Cc: C0, DEL, C1); none of the invisible
/// format characters that hide text or reorder how the rest displays ([`is_invisible`]); no
/// whitespace at either end, so two ids that look the same are the same. Spaces inside are fine.
pub fn is_printable_text(s: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&s.chars().count())
        && !s.starts_with(char::is_whitespace)
        && !s.ends_with(char::is_whitespace)
        && !s.chars().any(|c| c.is_control() || is_invisible(c))
}

/// Invisible format characters (Unicode Cf, Zl, Zp) that spoof text: soft hyphen, zero-width
/// characters and joiners, bidirectional marks, embeddings, overrides and isolates, line and
/// paragraph separators, word joiner and invisible operators, BOM, interlinear annotation, tags.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{ad}' | '\u{61c}' | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}'
        | '\u{e0000}'..='\u{e007f}')
}

/// A `jti` as [`JTI_LEN`] says: visible ASCII only.
pub fn is_valid_jti(jti: &str) -> bool {
    JTI_LEN.contains(&jti.len()) && jti.bytes().all(|b| b.is_ascii_graphic())
}

/// Verifies a token; see the module doc for the check order. Never panics.
pub fn verify(token: &str, keys: &KeySet, ctx: &VerifyContext<'_>) -> Checked {
    let mut checked = Checked {
        verdict: Verdict::Malformed,
        kid: None,
        jti: None,
        claims: None,
    };
    match check(token, keys, ctx, &mut checked) {
        Ok(claims) => {
            checked.verdict = Verdict::Valid;
            checked.claims = Some(claims);
        }
        Err(verdict) => checked.verdict = verdict,
    }
    checked
}

/// The checks, in order; records kid and jti into `seen` as soon as they are read.
fn check(
    token: &str,
    keys: &KeySet,
    ctx: &VerifyContext<'_>,
    seen: &mut Checked,
) -> Result<Claims, Verdict> {
    use Verdict::*;
    if token.len() > MAX_TOKEN_LEN || !has_jwt_shape(token) {
        return Err(Malformed);
    }
    let (signed, signature_b64) = token.rsplit_once('.').ok_or(Malformed)?;
    let (header_b64, payload_b64) = signed.split_once('.').ok_or(Malformed)?;

    let header = decode_object(header_b64)?;
    seen.kid = string_field(&header, "kid").filter(|kid| is_printable_text(kid, KID_LEN));
    let kid = check_header(&header)?;
    let payload = decode_object(payload_b64)?;
    seen.jti = string_field(&payload, "jti").filter(|jti| is_valid_jti(jti));
    let signature: [u8; SIGNATURE_LENGTH] = decode_b64(signature_b64)?
        .try_into()
        .map_err(|_| Malformed)?;

    let key = keys.get(kid).ok_or(UnknownKey)?;
    // verify_strict also refuses small-order keys and non-canonical signatures, which plain
    // `verify` would accept (malleability).
    key.verify_strict(signed.as_bytes(), &Signature::from_bytes(&signature))
        .map_err(|_| BadSignature)?;

    let claims: Claims = serde_json::from_value(Value::Object(payload)).map_err(|_| Malformed)?;
    check_claims(&claims)?;
    if !claims.aud.iter().any(|aud| aud == ctx.tenant) {
        return Err(WrongAudience);
    }
    if let Some(stores) = &claims.stores {
        if !stores.iter().any(|store| store == ctx.store) {
            return Err(WrongStore);
        }
    }
    let skew = ctx.skew_s.max(0);
    let latest_start = ctx.now_unix.saturating_add(skew);
    if claims.iat > latest_start || claims.nbf.is_some_and(|nbf| nbf > latest_start) {
        return Err(NotYetValid);
    }
    // RFC 7519: valid while now < exp; with the allowance, while now − skew < exp.
    if ctx.now_unix.saturating_sub(skew) >= claims.exp {
        return Err(Expired);
    }
    Ok(claims)
}

/// Only `alg`, `kid` and `typ` are allowed: any other parameter (`crit`, `jku`, `jwk`, `x5u`…)
/// would ask the gateway to trust or fetch something, so the header is refused instead.
fn check_header(header: &Map<String, Value>) -> Result<&str, Verdict> {
    let alg_ok = header.get("alg").is_some_and(|alg| alg == "EdDSA");
    // RFC 7515 §4.1.9 recommends treating typ case-insensitively.
    let typ_ok = match header.get("typ") {
        None => true,
        Some(typ) => typ.as_str().is_some_and(|t| t.eq_ignore_ascii_case("JWT")),
    };
    let only_known = header
        .keys()
        .all(|name| matches!(name.as_str(), "alg" | "kid" | "typ"));
    let kid = header.get("kid").and_then(Value::as_str);
    match kid {
        Some(kid) if alg_ok && typ_ok && only_known && is_printable_text(kid, KID_LEN) => Ok(kid),
        _ => Err(Verdict::Malformed),
    }
}

/// The §5 limits on signed claims, as the gateway reads them.
fn check_claims(claims: &Claims) -> Result<(), Verdict> {
    let lifetime = i128::from(claims.exp) - i128::from(claims.iat);
    let ok = is_printable_text(&claims.sub, SUB_LEN)
        && is_valid_jti(&claims.jti)
        && lifetime > 0
        && lifetime <= i128::from(MAX_LIFETIME_S);
    if ok {
        Ok(())
    } else {
        Err(Verdict::Malformed)
    }
}

/// Strict base64url: no padding, no whitespace, no stray trailing bits (the engine's default),
/// so each token has exactly one spelling.
fn decode_b64(segment: &str) -> Result<Vec<u8>, Verdict> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Verdict::Malformed)
}

/// A header or payload: one JSON object, no duplicate member names at any depth (`json.rs`).
fn decode_object(segment: &str) -> Result<Map<String, Value>, Verdict> {
    json::parse_object(&decode_b64(segment)?).ok_or(Verdict::Malformed)
}

fn string_field(map: &Map<String, Value>, name: &str) -> Option<String> {
    map.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// Signs `claims` into a compact JWT with the §5 header.
pub fn mint(signing_key: &SigningKey, kid: &str, claims: &Claims) -> String {
    let mut header = Map::new();
    header.insert("alg".into(), "EdDSA".into());
    header.insert("typ".into(), "JWT".into());
    header.insert("kid".into(), kid.into());
    // Claims holds only strings, integers and string lists: serialising it cannot fail.
    let payload = serde_json::to_vec(claims).expect("Claims always serialises");
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(Value::Object(header).to_string()),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = signing_key.sign(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

#[cfg(test)]
mod strictness_tests;
#[cfg(test)]
mod tests;
