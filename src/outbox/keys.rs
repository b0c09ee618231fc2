//! Every saved-state key format, in one place next to the outbox's key–value API: who writes
//! and who reads a key agree by calling the same function. Keys are prefixed by their owner so
//! a prefix scan (`state(prefix)`) finds one owner's keys; a prefix ends in `/` where a longer
//! id could share its start (`gate/g1` is exact-matched by its reader, as `gate/g10` starts
//! the same).

/// Journey: a token id seen within its lifetime (replay guard).
pub const JTI_PREFIX: &str = "jti/";
/// Journey: a member card hash → user, per scope (`member/{scope}/{hash}`).
pub const MEMBER_PREFIX: &str = "member/";
/// Journey: the member map's version, per scope (`members.version/{scope}`).
pub const MEMBERS_VERSION: &str = "members.version/";
/// Journey: the token keys HQ sent last (JWKS).
pub const KEYS_JWKS: &str = "keys.jwks";
/// Journey: an open visit, per user.
pub const VISIT_PREFIX: &str = "visit/";
/// Link: an HQ command already carried out (`cmd/{id}`), so a redelivery is not run twice.
pub const COMMAND_PREFIX: &str = "cmd/";

/// A member's key.
pub fn member(scope: &str, hash: &str) -> String {
    format!("{MEMBER_PREFIX}{scope}/{hash}")
}

/// The member map's version key of a scope.
pub fn members_version(scope: &str) -> String {
    format!("{MEMBERS_VERSION}{scope}")
}

/// A gate's counter baseline (written by the link with each passage, read by the gate source
/// at start).
pub fn gate(device: &str) -> String {
    format!("gate/{device}")
}

/// The prefix of one serial skin analyzer's de-duplication sightings.
pub fn skin_seen_prefix(device: &str) -> String {
    format!("skin/seen/{device}/")
}

/// One sighting of a skin reading (`model` + `seq`), written by the link with its event.
pub fn skin_seen(device: &str, model: &str, seq: u64) -> String {
    format!("{}{model}/{seq}", skin_seen_prefix(device))
}

/// The `model` + `seq` of one of `device`'s sighting keys ([`skin_seen`]); `None` when it is
/// not one. A model may hold `/`: the seq is after the last one.
pub fn parse_skin_seen(device: &str, key: &str) -> Option<(String, u64)> {
    let (model, seq) = key
        .strip_prefix(&skin_seen_prefix(device))?
        .rsplit_once('/')?;
    Some((model.to_owned(), seq.parse().ok()?))
}

/// The prefix of one HTTP device's idempotency receipts.
pub fn ingest_prefix(device: &str) -> String {
    format!("ingest/{device}/")
}

/// A people counter's receipt for one counting interval.
pub fn ingest_counts(device: &str, from: &str, to: &str) -> String {
    format!("{}counts/{from}/{to}", ingest_prefix(device))
}

/// A tablet analyzer's receipt for one reading.
pub fn ingest_skin(device: &str, model: &str, seq: u64) -> String {
    format!("{}skin/{model}/{seq}", ingest_prefix(device))
}
