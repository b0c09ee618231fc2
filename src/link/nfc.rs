//! NFC taps → `store.nfc.tapped` (docs/protocols.md §2, §6). The raw UID ends here: the event carries
//! its keyed hash, never the bytes, and a random UID is not hashed at all (it is no identity).

use super::cardhash::{card_hash, CARD_KEY_LEN};
use crate::event::NfcTapped;
use crate::sources::nfc::{CardType, NfcTap};

/// A tap's event data, and the member (app user id) the card belongs to, if any, from
/// `member_of` (the member map HQ pushes).
pub fn tapped(
    card_key: Option<&[u8; CARD_KEY_LEN]>,
    tap: &NfcTap,
    member_of: impl Fn(&str) -> Option<String>,
) -> (NfcTapped, Option<String>) {
    let card_hash = match card_key {
        Some(key) if !tap.random_uid => Some(card_hash(key, tap.uid.as_bytes())),
        _ => None,
    };
    let member = card_hash.as_deref().and_then(member_of);
    let data = NfcTapped {
        card_hash,
        card_type: tap.card_type.as_str(),
        sel_res: matches!(tap.card_type, CardType::Unknown(_)).then_some(tap.sel_res),
        uid_len: tap.uid.as_bytes().len(),
        random_uid: tap.random_uid,
        member: member.is_some(),
    };
    (data, member)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::nfc::CardUid;

    fn tap(uid: &[u8], sel_res: u8) -> NfcTap {
        NfcTap::new(uid.to_vec(), sel_res)
    }

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn hash_type_and_length_but_never_the_uid() {
        let uid = [0x04, 0xA2, 0x2B, 0x19, 0x3C, 0x5E, 0x80];
        let (data, member) = tapped(Some(&KEY), &tap(&uid, 0x00), |_| None);
        assert_eq!(
            data.card_hash.as_deref(),
            Some(card_hash(&KEY, &uid).as_str())
        );
        assert_eq!(data.card_type, "ultralight_ntag");
        assert_eq!(
            (data.uid_len, data.random_uid, data.member),
            (7, false, false)
        );
        assert_eq!(member, None);
        let json = serde_json::to_string(&data).unwrap();
        assert!(!json.to_lowercase().contains("04a22b19"), "{json}");
        assert!(
            !json.contains("sel_res"),
            "only unknown types show it: {json}"
        );
        assert_eq!(
            format!("{:?}", CardUid::new(uid.to_vec())),
            "CardUid(7 bytes)",
            "Debug cannot leak the UID into a log line"
        );
    }

    #[test]
    fn random_uid_and_missing_key_mean_no_hash() {
        let (data, _) = tapped(Some(&KEY), &tap(&[0x08, 1, 2, 3], 0x20), |_| None);
        assert!(data.random_uid);
        assert_eq!(data.card_hash, None);
        let (data, _) = tapped(None, &tap(&[0x04, 1, 2, 3], 0x08), |_| None);
        assert!(!data.random_uid);
        assert_eq!(data.card_hash, None);
        assert_eq!(data.card_type, "mifare_classic_1k");
    }

    #[test]
    fn unknown_card_type_carries_the_raw_byte() {
        let (data, _) = tapped(
            Some(&KEY),
            &tap(&[0x04, 1, 2, 3, 4, 5, 6, 7, 8, 9], 0x41),
            |_| None,
        );
        assert_eq!((data.card_type, data.sel_res), ("unknown", Some(0x41)));
        assert_eq!(data.uid_len, 10);
    }
}
