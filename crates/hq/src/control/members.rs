//! `members push`: a member map (card hash → app user) from a CSV or JSON file, published as a
//! versioned snapshot, or as a delta from a version pushed before. Every map pushed is kept in
//! `--state-dir` (`members-{tenant}-{target}.json`: the last version and each version's map), so
//! a delta is computed from exactly the map the stores hold at its base.
//!
//! Checked with the edge's own parser (`phygate::downlink::parse`) on the very bytes published.
//! Each store reports the member versions it holds in its retained status; with `--wait` the
//! push reads them back ([`super::applied`]). A delta a store cannot apply (a gap) leaves it at
//! its version, waiting for a snapshot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use phygate_proto::downlink::{MemberEntry, MembersMessage, MAX_MEMBERS_BYTES};
use serde::{Deserialize, Serialize};

use super::applied::{self, MembersAt, Targets};
use super::mqtt::Link;
use super::{state, Target};

/// Which map: one store's, or the tenant's fleet-wide one.
#[derive(Debug, Clone)]
pub enum Scope {
    Store(String),
    Fleet,
}

impl Scope {
    fn name(&self) -> &str {
        match self {
            Scope::Store(s) => s,
            Scope::Fleet => phygate_proto::topic::FLEET,
        }
    }

    fn topic(&self, tenant: &str) -> String {
        match self {
            Scope::Store(s) => phygate_proto::topic::members(tenant, s),
            Scope::Fleet => phygate_proto::topic::fleet_members(tenant),
        }
    }
}

/// Every version pushed for one map.
#[derive(Debug, Default, Serialize, Deserialize)]
struct MembersState {
    version: u64,
    /// version → the whole map at that version.
    maps: BTreeMap<u64, BTreeMap<String, String>>,
}

/// Pushes the map in `file` as version `version` (default: the last one + 1), as a delta on
/// top of `delta_from` when given. The same map as the last push is sent again with the same
/// version: stores that have it refuse it as not newer, one that missed it applies it.
/// With `wait`, reads back the stores' reports; returns whether every targeted store holds the
/// version (always true without `wait`).
pub async fn push(
    target: &Target,
    scope: &Scope,
    file: &Path,
    version: Option<u64>,
    delta_from: Option<u64>,
    wait: Option<std::time::Duration>,
) -> anyhow::Result<bool> {
    let map = read_map(file)?;
    let path = state_path(target, scope);
    let mut st: MembersState = state::load(&path)?;
    let last_same = st.maps.get(&st.version) == Some(&map) && st.version > 0;
    let version = match version {
        Some(v) => v,
        None if last_same => st.version,
        None => st.version + 1,
    };
    let message = match delta_from {
        None => MembersMessage::Snapshot {
            version,
            members: entries(&map),
        },
        Some(base) => {
            let Some(old) = st.maps.get(&base) else {
                bail!(
                    "--delta-from {base}: no map of version {base} was pushed from this state dir ({}); push a snapshot",
                    path.display()
                );
            };
            delta(old, &map, base, version)
        }
    };
    let body = serde_json::to_vec(&message)?;
    let topic = scope.topic(&target.tenant);
    if body.len() > MAX_MEMBERS_BYTES {
        bail!(
            "{} bytes is over the stores' {MAX_MEMBERS_BYTES}-byte limit for a member update: split it into a snapshot and deltas",
            body.len()
        );
    }
    phygate::downlink::parse(&target.tenant, scope.name(), &topic, &body)
        .map_err(|e| anyhow::anyhow!("the stores would refuse this update: {e}"))?;
    let mut link = Link::to(target).await?;
    // Listening before publishing: no report can come before we read.
    let known = match wait {
        Some(_) => Some(applied::listen(&mut link, &target.tenant).await?),
        None => None,
    };
    let start = tokio::time::Instant::now();
    link.publish(&topic, body, false).await?;
    st.maps.insert(version, map.clone());
    st.version = st.version.max(version);
    state::save(&path, &st)?;
    let kind = match delta_from {
        None => "snapshot".to_owned(),
        Some(base) => format!("delta from {base}"),
    };
    println!(
        "published members {kind} version {version} ({} cards) to {topic}; the broker acknowledged it. Each store reports the version it holds in its status (`--wait` reads them). A store that holds another version than the delta's base refuses it and waits for a snapshot.",
        map.len(),
    );
    let (Some(wait), Some(known)) = (wait, known) else {
        link.close().await;
        return Ok(true);
    };
    let targets = match scope {
        Scope::Store(s) => Targets::One(s.clone()),
        Scope::Fleet => Targets::All,
    };
    let wanted = MembersAt {
        fleet: matches!(scope, Scope::Fleet),
        version,
    };
    let outcome = applied::wait(
        &mut link,
        &target.tenant,
        known,
        &targets,
        &wanted,
        start,
        wait,
    )
    .await?;
    link.close().await;
    applied::print(&outcome, &wanted);
    Ok(outcome.all_hold())
}

fn state_path(target: &Target, scope: &Scope) -> PathBuf {
    target
        .state_dir
        .join(format!("members-{}-{}.json", target.tenant, scope.name()))
}

fn entries(map: &BTreeMap<String, String>) -> Vec<MemberEntry> {
    map.iter()
        .map(|(h, u)| MemberEntry {
            card_hash: h.clone(),
            userid: u.clone(),
        })
        .collect()
}

/// What turns `old` into `new`: the changed or added cards, and the removed ones.
fn delta(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    base: u64,
    version: u64,
) -> MembersMessage {
    let upsert = new
        .iter()
        .filter(|(h, u)| old.get(*h) != Some(*u))
        .map(|(h, u)| MemberEntry {
            card_hash: h.clone(),
            userid: u.clone(),
        })
        .collect();
    let delete = old
        .keys()
        .filter(|h| !new.contains_key(*h))
        .cloned()
        .collect();
    MembersMessage::Delta {
        version,
        base,
        upsert,
        delete,
    }
}

/// A map from `file`: JSON (`[{"card_hash":…,"userid":…}]` or `{"hash":"user"}`), or CSV
/// (`card_hash,userid` per line, an optional header, `#` comments). A card listed twice is an
/// error, not a silent last-one-wins.
pub fn read_map(file: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let pairs: Vec<(String, String)> = if file.extension().is_some_and(|e| e == "json") {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Json {
            List(Vec<MemberEntry>),
            Map(BTreeMap<String, String>),
        }
        match serde_json::from_str::<Json>(&text)
            .with_context(|| format!("{}: not a member list", file.display()))?
        {
            Json::List(l) => l.into_iter().map(|m| (m.card_hash, m.userid)).collect(),
            Json::Map(m) => m.into_iter().collect(),
        }
    } else {
        csv_pairs(&text).with_context(|| format!("{}", file.display()))?
    };
    let mut map = BTreeMap::new();
    for (hash, user) in pairs {
        if map.insert(hash.clone(), user).is_some() {
            bail!("{}: card {hash} is listed twice", file.display());
        }
    }
    Ok(map)
}

/// Hand-split: two columns without quoting (hashes are base64url and user ids are checked for
/// their length only, so a comma in one is refused rather than parsed).
fn csv_pairs(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        if n == 0 && cols == ["card_hash", "userid"] {
            continue;
        }
        match cols.as_slice() {
            [hash, user] => out.push((hash.to_string(), user.to_string())),
            _ => bail!("line {}: expected `card_hash,userid`", n + 1),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_carries_only_the_changes() {
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let old = m(&[("a", "u1"), ("b", "u2"), ("c", "u3")]);
        let new = m(&[("a", "u1"), ("b", "u9"), ("d", "u4")]);
        let MembersMessage::Delta { upsert, delete, .. } = delta(&old, &new, 1, 2) else {
            panic!()
        };
        let up: Vec<&str> = upsert.iter().map(|e| e.card_hash.as_str()).collect();
        assert_eq!(up, ["b", "d"]);
        assert_eq!(delete, ["c"]);
    }

    #[test]
    fn csv_with_a_header_and_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("m.csv");
        std::fs::write(&f, "card_hash,userid\n# note\nh1,u1\nh2, u2\n").unwrap();
        assert_eq!(read_map(&f).unwrap().len(), 2);
        std::fs::write(&f, "h1,u1\nh1,u2\n").unwrap();
        assert!(read_map(&f).unwrap_err().to_string().contains("twice"));
        std::fs::write(&f, "h1,u1,x\n").unwrap();
        assert!(format!("{:#}", read_map(&f).unwrap_err()).contains("line 1"));
    }
}
