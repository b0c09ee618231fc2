//! NFC card → member key (docs/protocols.md §6): the raw UID never leaves the gateway; only
//! `base64url_nopad(HMAC-SHA256(tenant_card_key, uid_bytes))` does. The key is the same in every
//! store of a tenant, so a card hashes the same everywhere and HQ can map it to one member.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of the tenant card key in bytes (§6).
pub const CARD_KEY_LEN: usize = 32;

/// Why a configured card key was refused. The caller keeps the previous key (or, at startup,
/// refuses the config) — hashing with a wrong key would silently unlink every member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardKeyError {
    #[error("card key is not unpadded base64url")]
    NotBase64,
    #[error("card key is {0} bytes, expected {CARD_KEY_LEN}")]
    WrongLength(usize),
    /// 64 hex digits decode as base64url too, to 48 bytes: say what was meant instead.
    #[error("this looks like hex; give base64url (the same 32 bytes as 43 characters)")]
    Hex,
}

/// The card hash of a UID, over its raw bytes as read (4, 7 or 10 bytes).
pub fn card_hash(key: &[u8; CARD_KEY_LEN], uid: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail; the type system just doesn't know.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(uid);
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// Reads the key as written in config and on the keys topic; surrounding whitespace is ignored.
pub fn parse_card_key(text: &str) -> Result<[u8; CARD_KEY_LEN], CardKeyError> {
    let text = text.trim();
    if text.len() == 2 * CARD_KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CardKeyError::Hex);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| CardKeyError::NotBase64)?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| CardKeyError::WrongLength(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key bytes 0x00..=0x1f.
    const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

    #[test]
    fn known_answer_from_python_hmac() {
        // Pinned with python3: base64.urlsafe_b64encode(hmac.new(bytes(range(32)), uid,
        // hashlib.sha256).digest()).rstrip(b'=')
        let key = parse_card_key(KEY_B64).expect("valid key");
        assert_eq!(key, core::array::from_fn(|i| i as u8));
        let uid7 = [0x04, 0xa2, 0x2b, 0x19, 0x3c, 0x5e, 0x80];
        assert_eq!(
            card_hash(&key, &uid7),
            "Jzag_ZOFVBSfvlxB9un5O9E7IYrzVYbB0jwSEQ3LWQo"
        );
        let uid4 = [0xde, 0xad, 0xbe, 0xef];
        assert_eq!(
            card_hash(&key, &uid4),
            "UAujdZEDEPbv9949akLfXRzoOrdlvRdMXWXKFHu-qvU"
        );
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(parse_card_key("AAAA"), Err(CardKeyError::WrongLength(3)));
        assert_eq!(parse_card_key("%%%"), Err(CardKeyError::NotBase64));
        // Padding is not part of the format; accepting it would allow two spellings of one key.
        assert_eq!(
            parse_card_key(&format!("{KEY_B64}=")),
            Err(CardKeyError::NotBase64)
        );
        assert!(parse_card_key(&format!(" {KEY_B64}\n")).is_ok());
    }

    /// Regression: a key written as 64 hex digits was refused as "48 bytes", which tells a
    /// technician nothing about what to write instead.
    #[test]
    fn a_hex_key_is_named_as_hex() {
        let hex: String = (0..32u8).map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_card_key(&hex), Err(CardKeyError::Hex));
        assert!(CardKeyError::Hex
            .to_string()
            .contains("looks like hex; give base64url"));
    }
}
