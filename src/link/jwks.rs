//! Token signing keys: the gateway's set of Ed25519 public keys by key id, read from a JWKS
//! (RFC 7517 / RFC 8037, docs/protocols.md §5), and the key generation the CLI and tests use.
//!
//! Keys arrive on the retained `keys` topic and in config. A JWKS is validated whole: one bad key
//! rejects the document, so a half-applied rotation can never leave the gateway with a key set
//! nobody sent.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey, PUBLIC_KEY_LENGTH, SECRET_KEY_LENGTH};
use rand_core::{OsRng, RngCore};
use serde_json::{json, Map, Value};

/// Most keys one JWKS may carry. A rotation needs two or three at once; the cap only bounds
/// what a broken or hostile `keys` message can make the gateway hold.
pub const MAX_KEYS: usize = 32;

/// Why a JWKS (or a stored private key) was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// Not JSON at all. Keep the previous key set and report the message as rejected.
    #[error("JWKS is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not `{"keys":[…]}`. Keep the previous key set.
    #[error("JWKS has no \"keys\" array")]
    NoKeysArray,
    /// More keys than [`MAX_KEYS`]. Keep the previous key set.
    #[error("JWKS has {0} keys, more than the {MAX_KEYS} allowed")]
    TooManyKeys(usize),
    /// One key is unusable; the whole set is refused. Keep the previous key set and report
    /// which key, so HQ can fix its JWKS.
    #[error("JWKS key {index}: {problem}")]
    Key { index: usize, problem: KeyProblem },
    /// A stored private key is not 32 bytes of base64url. Fix or regenerate the key file.
    #[error("signing key is not {SECRET_KEY_LENGTH} bytes of unpadded base64url")]
    SigningKey,
}

/// What is wrong with one JWK in a set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    #[error("not a JSON object")]
    NotObject,
    #[error("kty must be \"OKP\", found {0}")]
    WrongKty(String),
    #[error("crv must be \"Ed25519\", found {0}")]
    WrongCrv(String),
    #[error("missing or empty kid")]
    MissingKid,
    #[error("kid {0:?} appears twice")]
    DuplicateKid(String),
    #[error("x is not {PUBLIC_KEY_LENGTH} bytes of unpadded base64url")]
    XNotBase64,
    #[error("x is not a usable Ed25519 public key")]
    XNotAKey,
    /// A private key (`d`) on a distribution channel is a leak on HQ's side; refusing it makes
    /// the leak loud instead of silently working.
    #[error("contains a private key (\"d\")")]
    PrivateKey,
    #[error("use must be \"sig\" when present")]
    WrongUse,
    #[error("alg must be \"EdDSA\" when present")]
    WrongAlg,
}

/// Public keys that may sign app tokens, by key id. Several kids are valid at once during a
/// rotation. Sorted by kid so `kids()` is stable for status pages and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: BTreeMap<String, VerifyingKey>,
}

impl KeySet {
    /// The set as a JWKS document (public keys only), e.g. to persist it.
    pub fn to_jwks_json(&self) -> String {
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|(kid, key)| public_jwk(kid, key))
            .collect();
        jwks_json(&keys).to_string()
    }

    /// An empty set: every token verifies as `unknown_key`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses and validates a JWKS document.
    pub fn from_jwks_json(text: &str) -> Result<Self, JwksError> {
        Self::from_jwks_value(&serde_json::from_str(text)?)
    }

    /// Validates an already parsed JWKS (e.g. one nested in the config file).
    pub fn from_jwks_value(jwks: &Value) -> Result<Self, JwksError> {
        let list = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NoKeysArray)?;
        if list.len() > MAX_KEYS {
            return Err(JwksError::TooManyKeys(list.len()));
        }
        let mut set = Self::new();
        for (index, jwk) in list.iter().enumerate() {
            let (kid, key) = parse_jwk(jwk).map_err(|problem| JwksError::Key { index, problem })?;
            if set.keys.contains_key(&kid) {
                let problem = KeyProblem::DuplicateKid(kid);
                return Err(JwksError::Key { index, problem });
            }
            set.keys.insert(kid, key);
        }
        Ok(set)
    }

    /// Adds or replaces one key.
    pub fn insert(&mut self, kid: impl Into<String>, key: VerifyingKey) {
        self.keys.insert(kid.into(), key);
    }

    /// Adds every key of `other`; on the same kid, `other` wins (it is the newer source, e.g.
    /// the `keys` topic over the config file). To drop old keys instead, assign a new set.
    pub fn merge(&mut self, other: KeySet) {
        self.keys.extend(other.keys);
    }

    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> + '_ {
        self.keys.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn parse_jwk(jwk: &Value) -> Result<(String, VerifyingKey), KeyProblem> {
    let obj = jwk.as_object().ok_or(KeyProblem::NotObject)?;
    let field = |name: &str| obj.get(name).and_then(Value::as_str);
    // Show what was found (e.g. `"RSA"`, `null`) so HQ can see its mistake in the log.
    let found = |name: &str| {
        obj.get(name)
            .map_or_else(|| "nothing".into(), Value::to_string)
    };
    if field("kty") != Some("OKP") {
        return Err(KeyProblem::WrongKty(found("kty")));
    }
    if field("crv") != Some("Ed25519") {
        return Err(KeyProblem::WrongCrv(found("crv")));
    }
    if obj.contains_key("d") {
        return Err(KeyProblem::PrivateKey);
    }
    if obj.get("use").is_some_and(|u| u != "sig") {
        return Err(KeyProblem::WrongUse);
    }
    if obj.get("alg").is_some_and(|a| a != "EdDSA") {
        return Err(KeyProblem::WrongAlg);
    }
    let kid = field("kid")
        .filter(|k| !k.is_empty())
        .ok_or(KeyProblem::MissingKid)?;
    let x = field("x")
        .and_then(decode_fixed::<PUBLIC_KEY_LENGTH>)
        .ok_or(KeyProblem::XNotBase64)?;
    let key = VerifyingKey::from_bytes(&x).map_err(|_| KeyProblem::XNotAKey)?;
    // A small-order key would verify forged signatures under plain `verify`; `verify_strict`
    // refuses it anyway, but refusing at load time says so where HQ can see it.
    if key.is_weak() {
        return Err(KeyProblem::XNotAKey);
    }
    Ok((kid.to_owned(), key))
}

/// Strict unpadded base64url of exactly `N` bytes.
fn decode_fixed<const N: usize>(text: &str) -> Option<[u8; N]> {
    URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()
}

/// The public JWK (`kty`, `crv`, `kid`, `x`) for a verifying key.
pub fn public_jwk(kid: &str, key: &VerifyingKey) -> Value {
    json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(key.as_bytes()),
    })
}

/// A fresh signing key from the OS random source, with its public JWK.
pub fn generate_key(kid: &str) -> (SigningKey, Value) {
    let mut seed = [0u8; SECRET_KEY_LENGTH];
    OsRng.fill_bytes(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let jwk = public_jwk(kid, &key.verifying_key());
    (key, jwk)
}

/// `{"keys":[…]}` around public JWKs, as published on the `keys` topic.
pub fn jwks_json(jwks: &[Value]) -> Value {
    let mut doc = Map::new();
    doc.insert("keys".into(), Value::Array(jwks.to_vec()));
    Value::Object(doc)
}

/// The 32-byte secret seed as unpadded base64url, for a key file.
pub fn signing_key_to_base64url(key: &SigningKey) -> String {
    URL_SAFE_NO_PAD.encode(key.to_bytes())
}

/// Reads a key file's content; surrounding whitespace (the file's newline) is ignored.
pub fn signing_key_from_base64url(text: &str) -> Result<SigningKey, JwksError> {
    let seed = decode_fixed::<SECRET_KEY_LENGTH>(text.trim()).ok_or(JwksError::SigningKey)?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(jwk: Value) -> KeyProblem {
        match KeySet::from_jwks_value(&jwks_json(&[jwk])) {
            Err(JwksError::Key { index: 0, problem }) => problem,
            other => panic!("expected a key problem, got {other:?}"),
        }
    }

    fn good_jwk() -> Value {
        generate_key("k1").1
    }

    fn with(mut jwk: Value, field: &str, value: Value) -> Value {
        jwk[field] = value;
        jwk
    }

    #[test]
    fn generated_jwks_round_trips_with_two_kids() {
        let (a, ja) = generate_key("2026-01");
        let (b, jb) = generate_key("2026-02");
        let text = jwks_json(&[ja, jb]).to_string();
        let set = KeySet::from_jwks_json(&text).expect("valid jwks");
        assert_eq!(set.kids().collect::<Vec<_>>(), ["2026-01", "2026-02"]);
        assert_eq!(set.get("2026-01"), Some(&a.verifying_key()));
        assert_eq!(set.get("2026-02"), Some(&b.verifying_key()));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (
                with(good_jwk(), "kty", json!("RSA")),
                KeyProblem::WrongKty("\"RSA\"".into()),
            ),
            (
                with(good_jwk(), "crv", json!("X25519")),
                KeyProblem::WrongCrv("\"X25519\"".into()),
            ),
            (with(good_jwk(), "kid", json!("")), KeyProblem::MissingKid),
            (with(good_jwk(), "kid", json!(7)), KeyProblem::MissingKid),
            (with(good_jwk(), "x", json!("AAAA")), KeyProblem::XNotBase64),
            (
                with(good_jwk(), "x", json!("not base64!")),
                KeyProblem::XNotBase64,
            ),
            (with(good_jwk(), "d", json!("AAAA")), KeyProblem::PrivateKey),
            (with(good_jwk(), "use", json!("enc")), KeyProblem::WrongUse),
            (
                with(good_jwk(), "alg", json!("ES256")),
                KeyProblem::WrongAlg,
            ),
            (json!("k1"), KeyProblem::NotObject),
        ];
        for (jwk, expected) in cases {
            assert_eq!(problem(jwk), expected);
        }
        let mut no_kid = good_jwk();
        no_kid.as_object_mut().map(|o| o.remove("kid"));
        assert_eq!(problem(no_kid), KeyProblem::MissingKid);
    }

    #[test]
    fn padded_x_and_weak_x_are_refused() {
        let jwk = good_jwk();
        let padded = format!("{}=", jwk["x"].as_str().unwrap_or_default());
        assert_eq!(
            problem(with(jwk, "x", json!(padded))),
            KeyProblem::XNotBase64
        );
        // The identity point: a valid encoding of a small-order point.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let x = URL_SAFE_NO_PAD.encode(identity);
        assert_eq!(
            problem(with(good_jwk(), "x", json!(x))),
            KeyProblem::XNotAKey
        );
    }

    #[test]
    fn error_names_the_key_index() {
        let bad = with(good_jwk(), "crv", json!("P-256"));
        let err = KeySet::from_jwks_value(&jwks_json(&[good_jwk(), bad])).unwrap_err();
        assert!(err.to_string().starts_with("JWKS key 1: crv"), "{err}");
    }

    #[test]
    fn duplicate_kid_and_document_shape_are_refused() {
        let err = KeySet::from_jwks_value(&jwks_json(&[good_jwk(), good_jwk()])).unwrap_err();
        assert!(matches!(
            err,
            JwksError::Key {
                index: 1,
                problem: KeyProblem::DuplicateKid(_)
            }
        ));
        assert!(matches!(
            KeySet::from_jwks_json("[]"),
            Err(JwksError::NoKeysArray)
        ));
        assert!(matches!(
            KeySet::from_jwks_json("{"),
            Err(JwksError::Json(_))
        ));
        let many: Vec<Value> = (0..=MAX_KEYS)
            .map(|i| generate_key(&i.to_string()).1)
            .collect();
        let err = KeySet::from_jwks_value(&jwks_json(&many)).unwrap_err();
        assert!(matches!(err, JwksError::TooManyKeys(n) if n == MAX_KEYS + 1));
        // An empty set is legal: it is how HQ revokes every key.
        assert!(KeySet::from_jwks_json(r#"{"keys":[]}"#).is_ok_and(|s| s.is_empty()));
    }

    #[test]
    fn merge_prefers_the_newer_set() {
        let (old, _) = generate_key("k1");
        let (new, _) = generate_key("k1");
        let (other, _) = generate_key("k2");
        let mut set = KeySet::new();
        set.insert("k1", old.verifying_key());
        let mut newer = KeySet::new();
        newer.insert("k1", new.verifying_key());
        newer.insert("k2", other.verifying_key());
        set.merge(newer);
        assert_eq!(set.len(), 2);
        assert_eq!(set.get("k1"), Some(&new.verifying_key()));
    }

    #[test]
    fn signing_key_file_round_trips_and_rejects_garbage() {
        let (key, _) = generate_key("k");
        let text = format!("{}\n", signing_key_to_base64url(&key));
        let back = signing_key_from_base64url(&text).expect("round trip");
        assert_eq!(back.to_bytes(), key.to_bytes());
        for bad in ["", "AAAA", "!!!!", &format!("{}=", text.trim())] {
            assert!(matches!(
                signing_key_from_base64url(bad),
                Err(JwksError::SigningKey)
            ));
        }
    }
}
