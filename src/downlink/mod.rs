//! Downlink: what HQ sends the store (docs/architecture.md §3). Every message is checked here
//! (size cap, schema, version) before anything is applied; a bad one is logged, counted and
//! changes nothing. [`session::Downlink`] owns the downlink's own MQTT connection (a persistent
//! session) and hands each message over with a [`Receipt`]; the link (keys, members, commands)
//! or the config applier (`daemon::reload`) applies it and settles the receipt once the effect
//! is committed, and only then is the message acknowledged to the broker.
//!
//! | topic | payload |
//! |---|---|
//! | `…/{tenant}/keys` (retained) | a JWKS: `{"keys":[{"kty":"OKP","crv":"Ed25519","kid":…,"x":…}]}` |
//! | `…/{tenant}/{store}/members`, `…/{tenant}/all/members` | `{"type":"snapshot","version":N,"members":[{"card_hash":…,"userid":…}]}` or `{"type":"delta","version":N,"base":N-1,"upsert":[…],"delete":[card_hash…]}` |
//! | `…/{tenant}/{store}/commands` | `{"id":…,"expires_at":"…Z","command":"open_gate","station":…}` or `{"id":…,"expires_at":"…Z","command":"replay","from_seq":N,"to_seq":M}` |
//! | `…/{tenant}/{store}/config` (retained) | a phygate TOML config, checked like a local one |

pub mod session;
pub mod settings;

use std::time::SystemTime;

use phygate_proto::downlink::{CommandMessage as RawCommand, MembersMessage as RawMembers};
use tokio::sync::oneshot;

use crate::link::jwks::KeySet;

/// Largest downlink message accepted, per kind (the client's packet limit is the largest).
pub use phygate_proto::downlink::{
    MAX_COMMAND_BYTES, MAX_CONFIG_BYTES, MAX_KEYS_BYTES, MAX_MEMBERS_BYTES, MAX_REPLAY_SEQS,
};

/// Which member map a message edits: this store's, or the tenant's fleet-wide one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberScope {
    Store = 0,
    Fleet = 1,
}

impl MemberScope {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberScope::Store => "store",
            MemberScope::Fleet => "all",
        }
    }
}

/// A checked downlink message.
#[derive(Debug)]
pub enum Update {
    Keys(KeySet),
    Members(Members),
    Command(Command),
    Config(String),
}

/// A checked message on its way to whoever applies it.
#[derive(Debug)]
pub struct Delivery<T = Update> {
    pub update: T,
    pub receipt: Receipt,
}

/// The broker's copy of a message is released only through this: [`Receipt::settle`] once the
/// message is handled for good (its effect committed to disk, or refused for a reason a
/// redelivery would not change). Dropping it unsettled (the commit failed, or the daemon is
/// stopping) leaves the message un-acknowledged, and the broker sends it again on the next
/// connection of the downlink's persistent session.
#[derive(Debug)]
pub struct Receipt(oneshot::Sender<()>);

impl Receipt {
    pub fn new() -> (Receipt, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Receipt(tx), rx)
    }

    pub fn settle(self) {
        // Gone when the connection that received the message dropped: its acknowledgement
        // would be meaningless on a new one, and the broker redelivers the message instead.
        let _ = self.0.send(());
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Members {
    pub scope: MemberScope,
    pub version: u64,
    /// A snapshot replaces the map; a delta edits it and applies only on top of `base`.
    pub base: Option<u64>,
    pub upsert: Vec<(String, String)>,
    pub delete: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: String,
    pub expires_at: SystemTime,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    OpenGate {
        station: String,
    },
    /// Publish seqs `from..=to` again, from what the outbox still holds (`crate::replay`).
    Replay {
        from: u64,
        to: u64,
    },
}

/// Why a downlink message was refused. Nothing of it was applied.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refused {
    #[error("{topic}: {size} bytes is over the {max}-byte limit")]
    TooLarge {
        topic: &'static str,
        size: usize,
        max: usize,
    },
    #[error("{topic}: {0}", topic = .1)]
    Schema(String, &'static str),
    #[error("not a downlink topic of this store: {0}")]
    UnknownTopic(String),
}

/// The topics this store subscribes to, all QoS 1.
pub fn topics(tenant: &str, store: &str) -> Vec<String> {
    phygate_proto::topic::downlink(tenant, store)
}

/// Checks one message from `topic`.
pub fn parse(tenant: &str, store: &str, topic: &str, payload: &[u8]) -> Result<Update, Refused> {
    let p = format!("{}/{tenant}/", phygate_proto::topic::ROOT);
    let rest = topic
        .strip_prefix(&p)
        .ok_or_else(|| Refused::UnknownTopic(topic.into()))?;
    let cap = |name: &'static str, max: usize| {
        if payload.len() > max {
            Err(Refused::TooLarge {
                topic: name,
                size: payload.len(),
                max,
            })
        } else {
            Ok(())
        }
    };
    let store_topic = rest.strip_prefix(store).and_then(|r| r.strip_prefix('/'));
    match (rest, store_topic) {
        ("keys", _) => {
            cap("keys", MAX_KEYS_BYTES)?;
            let text = std::str::from_utf8(payload)
                .map_err(|_| Refused::Schema("not UTF-8".into(), "keys"))?;
            KeySet::from_jwks_json(text)
                .map(Update::Keys)
                .map_err(|e| Refused::Schema(e.to_string(), "keys"))
        }
        ("all/members", _) => {
            cap("members", MAX_MEMBERS_BYTES)?;
            members(MemberScope::Fleet, payload).map(Update::Members)
        }
        (_, Some("members")) => {
            cap("members", MAX_MEMBERS_BYTES)?;
            members(MemberScope::Store, payload).map(Update::Members)
        }
        (_, Some("commands")) => {
            cap("commands", MAX_COMMAND_BYTES)?;
            command(payload).map(Update::Command)
        }
        (_, Some("config")) => {
            cap("config", MAX_CONFIG_BYTES)?;
            let text = std::str::from_utf8(payload)
                .map_err(|_| Refused::Schema("not UTF-8".into(), "config"))?;
            Ok(Update::Config(text.to_owned()))
        }
        _ => Err(Refused::UnknownTopic(topic.into())),
    }
}

/// A card hash is base64url of 32 bytes (43 characters); a user id is 1-64 characters.
fn check_member(hash: &str, user: Option<&str>) -> Result<(), String> {
    if hash.len() != 43
        || !hash
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "{hash:?} is not a card hash (base64url of 32 bytes)"
        ));
    }
    match user {
        Some(u) if u.is_empty() || u.chars().count() > 64 => {
            Err(format!("user id {u:?} must be 1-64 characters"))
        }
        _ => Ok(()),
    }
}

fn members(scope: MemberScope, payload: &[u8]) -> Result<Members, Refused> {
    let schema = |e: String| Refused::Schema(e, "members");
    let raw: RawMembers = serde_json::from_slice(payload).map_err(|e| schema(e.to_string()))?;
    let (version, base, upsert, delete) = match raw {
        RawMembers::Snapshot { version, members } => (version, None, members, Vec::new()),
        RawMembers::Delta {
            version,
            base,
            upsert,
            delete,
        } => {
            if version <= base {
                return Err(schema(format!(
                    "delta version {version} is not after its base {base}"
                )));
            }
            (version, Some(base), upsert, delete)
        }
    };
    for m in &upsert {
        check_member(&m.card_hash, Some(&m.userid)).map_err(schema)?;
    }
    for h in &delete {
        check_member(h, None).map_err(schema)?;
    }
    Ok(Members {
        scope,
        version,
        base,
        upsert: upsert
            .into_iter()
            .map(|m| (m.card_hash, m.userid))
            .collect(),
        delete,
    })
}

fn command(payload: &[u8]) -> Result<Command, Refused> {
    let schema = |e: String| Refused::Schema(e, "commands");
    let raw: RawCommand = serde_json::from_slice(payload).map_err(|e| schema(e.to_string()))?;
    if raw.id.is_empty() || raw.id.len() > 64 || raw.id.contains('/') {
        return Err(schema("id must be 1-64 characters without '/'".into()));
    }
    let expires_at: SystemTime = chrono::DateTime::parse_from_rfc3339(&raw.expires_at)
        .map_err(|e| schema(format!("expires_at {:?}: {e}", raw.expires_at)))?
        .with_timezone(&chrono::Utc)
        .into();
    let replay_range = raw.from_seq.is_some() || raw.to_seq.is_some();
    let action = match (raw.command.as_str(), raw.station) {
        ("open_gate", _) if replay_range => {
            return Err(schema("open_gate takes no from_seq or to_seq".into()))
        }
        ("open_gate", Some(station)) => Action::OpenGate { station },
        ("open_gate", None) => return Err(schema("open_gate needs a station".into())),
        ("replay", Some(_)) => return Err(schema("replay takes no station".into())),
        ("replay", None) => {
            let (from, to) = replay_bounds(raw.from_seq, raw.to_seq).map_err(schema)?;
            Action::Replay { from, to }
        }
        (other, _) => {
            return Err(schema(format!(
                "unknown command {other:?} (known: open_gate, replay)"
            )))
        }
    };
    Ok(Command {
        id: raw.id,
        expires_at,
        action,
    })
}

/// A replay's range: both ends given, `1 <= from <= to`, at most [`MAX_REPLAY_SEQS`] seqs.
fn replay_bounds(from: Option<u64>, to: Option<u64>) -> Result<(u64, u64), String> {
    let (Some(from), Some(to)) = (from, to) else {
        return Err("replay needs from_seq and to_seq".into());
    };
    if from == 0 || from > to {
        return Err(format!(
            "replay range {from}..={to}: seqs start at 1 and from_seq <= to_seq"
        ));
    }
    if to - from >= MAX_REPLAY_SEQS {
        return Err(format!(
            "replay range {from}..={to}: at most {MAX_REPLAY_SEQS} seqs at once"
        ));
    }
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    #[test]
    fn members_snapshot_and_delta() {
        let snap = format!(
            r#"{{"type":"snapshot","version":3,"members":[{{"card_hash":"{H}","userid":"u1"}}]}}"#
        );
        let Update::Members(m) =
            parse("t", "s", "phygate/v1/t/s/members", snap.as_bytes()).unwrap()
        else {
            panic!()
        };
        assert_eq!((m.scope, m.version, m.base), (MemberScope::Store, 3, None));
        assert_eq!(m.upsert, vec![(H.to_string(), "u1".to_string())]);
        let delta = format!(r#"{{"type":"delta","version":4,"base":3,"delete":["{H}"]}}"#);
        let Update::Members(m) =
            parse("t", "s", "phygate/v1/t/all/members", delta.as_bytes()).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (m.scope, m.base, m.delete.len()),
            (MemberScope::Fleet, Some(3), 1)
        );
    }

    #[test]
    fn bad_members_are_refused_whole() {
        let bad_hash =
            r#"{"type":"snapshot","version":3,"members":[{"card_hash":"short","userid":"u1"}]}"#;
        assert!(matches!(
            parse("t", "s", "phygate/v1/t/s/members", bad_hash.as_bytes()),
            Err(Refused::Schema(..))
        ));
        let backwards = format!(
            r#"{{"type":"delta","version":3,"base":3,"upsert":[{{"card_hash":"{H}","userid":"u"}}]}}"#
        );
        assert!(parse("t", "s", "phygate/v1/t/s/members", backwards.as_bytes()).is_err());
        let extra = r#"{"type":"snapshot","version":1,"members":[],"admin":true}"#;
        assert!(parse("t", "s", "phygate/v1/t/s/members", extra.as_bytes()).is_err());
        let big = vec![b' '; MAX_COMMAND_BYTES + 1];
        assert!(matches!(
            parse("t", "s", "phygate/v1/t/s/commands", &big),
            Err(Refused::TooLarge { .. })
        ));
    }

    #[test]
    fn commands() {
        let ok = r#"{"id":"c1","expires_at":"2026-11-23T05:01:02.000Z","command":"open_gate","station":"gate-1"}"#;
        let Update::Command(c) = parse("t", "s", "phygate/v1/t/s/commands", ok.as_bytes()).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            c.action,
            Action::OpenGate {
                station: "gate-1".into()
            }
        );
        let unknown =
            r#"{"id":"c1","expires_at":"2026-11-23T05:01:02Z","command":"self_destruct"}"#;
        assert!(parse("t", "s", "phygate/v1/t/s/commands", unknown.as_bytes()).is_err());
        assert!(matches!(
            parse("t", "s", "phygate/v1/t/other/commands", ok.as_bytes()),
            Err(Refused::UnknownTopic(_))
        ));
    }

    #[test]
    fn replay_commands_carry_a_bounded_range() {
        let cmd = |body: &str| {
            parse(
                "t",
                "s",
                "phygate/v1/t/s/commands",
                format!(
                    r#"{{"id":"r1","expires_at":"2026-11-23T05:01:02Z","command":"replay"{body}}}"#
                )
                .as_bytes(),
            )
        };
        let Update::Command(c) = cmd(r#","from_seq":5,"to_seq":9"#).unwrap() else {
            panic!()
        };
        assert_eq!(c.action, Action::Replay { from: 5, to: 9 });
        for bad in [
            "",
            r#","from_seq":5"#,
            r#","from_seq":0,"to_seq":3"#,
            r#","from_seq":9,"to_seq":5"#,
            r#","from_seq":1,"to_seq":10001"#,
            r#","from_seq":1,"to_seq":2,"station":"g""#,
            r#","from_seq":-1,"to_seq":2"#,
        ] {
            assert!(
                matches!(cmd(bad), Err(Refused::Schema(..))),
                "{bad} was accepted"
            );
        }
        assert!(cmd(r#","from_seq":1,"to_seq":10000"#).is_ok());
    }

    proptest! {
        /// Any replay command either parses into a range within the limits or is refused.
        #[test]
        fn replay_ranges_are_valid_or_refused(from in proptest::option::of(0u64..30_000), to in proptest::option::of(0u64..30_000)) {
            let mut m = phygate_proto::downlink::CommandMessage::replay("r".into(), "2030-01-01T00:00:00Z".into(), 0, 0);
            (m.from_seq, m.to_seq) = (from, to);
            let body = serde_json::to_vec(&m).unwrap();
            match parse("t", "s", "phygate/v1/t/s/commands", &body) {
                Ok(Update::Command(Command { action: Action::Replay { from: a, to: b }, .. })) => {
                    prop_assert_eq!((Some(a), Some(b)), (from, to));
                    prop_assert!(a >= 1 && a <= b && b - a < MAX_REPLAY_SEQS);
                }
                Ok(other) => prop_assert!(false, "{:?}", other),
                Err(Refused::Schema(..)) => {
                    let valid = matches!((from, to), (Some(a), Some(b)) if a >= 1 && a <= b && b - a < MAX_REPLAY_SEQS);
                    prop_assert!(!valid, "{:?}..{:?} refused", from, to);
                }
                Err(e) => prop_assert!(false, "{}", e),
            }
        }

        #[test]
        fn arbitrary_downlink_never_panics(topic in "phygate/v1/t/(s|all|keys|x)(/(members|commands|config))?", payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse("t", "s", &topic, &payload);
        }
    }
}
