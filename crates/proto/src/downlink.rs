//! HQ → store message bodies (docs/downlink.md), as they are on the wire. The gateway parses
//! them with these types and then applies its own checks (hash shape, id length, expiry); HQ
//! builds them with the same types.
//!
//! | topic | payload |
//! |---|---|
//! | `…/{tenant}/keys` (retained) | a JWKS: `{"keys":[{"kty":"OKP","crv":"Ed25519","kid":…,"x":…}]}` |
//! | `…/{tenant}/{store}/members`, `…/{tenant}/all/members` | [`MembersMessage`] |
//! | `…/{tenant}/{store}/commands` | [`CommandMessage`] |
//! | `…/{tenant}/{store}/config` (retained) | a phygate TOML config, checked like a local one |

use serde::{Deserialize, Serialize};

/// Largest downlink message a store accepts, per kind (the client's packet limit is the largest).
pub const MAX_KEYS_BYTES: usize = 64 * 1024;
pub const MAX_MEMBERS_BYTES: usize = 16 * 1024 * 1024;
pub const MAX_COMMAND_BYTES: usize = 4 * 1024;
pub const MAX_CONFIG_BYTES: usize = 256 * 1024;
/// Most seqs one `replay` command may ask for: a store answers with at most this many events
/// (a few MiB), so a replay never floods its uplink; HQ splits a larger hole.
pub const MAX_REPLAY_SEQS: u64 = 10_000;

/// One card → user mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberEntry {
    /// The card's keyed hash: base64url of 32 bytes (docs/protocols.md §6).
    pub card_hash: String,
    pub userid: String,
}

/// A member map update: a snapshot replaces the map, a delta edits the one at `base`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum MembersMessage {
    Snapshot {
        version: u64,
        members: Vec<MemberEntry>,
    },
    Delta {
        version: u64,
        base: u64,
        #[serde(default)]
        upsert: Vec<MemberEntry>,
        /// Card hashes to forget.
        #[serde(default)]
        delete: Vec<String>,
    },
}

/// A command to one store: run at most once (by `id`), never after `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandMessage {
    pub id: String,
    /// RFC 3339.
    pub expires_at: String,
    /// `open_gate` (with `station`) or `replay` (with `from_seq` and `to_seq`).
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub station: Option<String>,
    /// `replay`: the first seq to publish again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_seq: Option<u64>,
    /// `replay`: the last seq to publish again (inclusive; at most [`MAX_REPLAY_SEQS`] in all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_seq: Option<u64>,
}

impl CommandMessage {
    /// A `replay` of `from..=to`.
    pub fn replay(id: String, expires_at: String, from: u64, to: u64) -> CommandMessage {
        CommandMessage {
            id,
            expires_at,
            command: "replay".into(),
            station: None,
            from_seq: Some(from),
            to_seq: Some(to),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_round_trips_with_its_tag() {
        let m = MembersMessage::Delta {
            version: 3,
            base: 2,
            upsert: vec![MemberEntry {
                card_hash: "h".into(),
                userid: "u".into(),
            }],
            delete: vec![],
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.starts_with(r#"{"type":"delta""#), "{text}");
        assert_eq!(serde_json::from_str::<MembersMessage>(&text).unwrap(), m);
    }

    #[test]
    fn a_replay_round_trips_without_a_station() {
        let c = CommandMessage::replay("r1".into(), "2030-01-01T00:00:00Z".into(), 5, 9);
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(
            text,
            r#"{"id":"r1","expires_at":"2030-01-01T00:00:00Z","command":"replay","from_seq":5,"to_seq":9}"#
        );
        assert_eq!(serde_json::from_str::<CommandMessage>(&text).unwrap(), c);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let c = r#"{"id":"c1","expires_at":"2030-01-01T00:00:00Z","command":"open_gate","station":"g","x":1}"#;
        assert!(serde_json::from_str::<CommandMessage>(c).is_err());
    }
}
