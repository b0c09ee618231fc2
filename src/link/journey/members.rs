//! The journey's member maps (card hash → user, per scope), updated by HQ's snapshots and
//! deltas: checked and planned as state writes first, applied to memory once those are durable.

use super::Journey;
use crate::downlink::{MemberScope, Members};
use crate::outbox::keys;
use crate::outbox::StateWrite;

impl Journey {
    pub fn members_version(&self, scope: MemberScope) -> u64 {
        self.members_version[scope as usize]
    }

    /// Checks a member snapshot (newer than what is held) or delta (on top of exactly what is
    /// held) and returns the state to persist, all or nothing, or why it was refused. Memory is
    /// not touched: call [`Self::commit_members`] once the writes are durable, so a disk that
    /// refuses them leaves the map as the disk has it and the redelivered update applies then.
    pub fn plan_members(&self, m: &Members) -> Result<Vec<StateWrite>, String> {
        let i = m.scope as usize;
        let held = self.members_version[i];
        match m.base {
            None if m.version <= held => {
                return Err(format!(
                    "stale snapshot version {} (holding {held})",
                    m.version
                ))
            }
            Some(base) if base != held => {
                return Err(format!(
                    "delta {} is based on {base}, holding {held}: waiting for a snapshot",
                    m.version
                ))
            }
            _ => {}
        }
        let scope = m.scope.as_str();
        let key = |hash: &str| keys::member(scope, hash);
        let mut writes = Vec::new();
        if m.base.is_none() {
            writes.extend(self.members[i].keys().map(|hash| (key(hash), None)));
        }
        writes.extend(m.delete.iter().map(|hash| (key(hash), None)));
        writes.extend(
            m.upsert
                .iter()
                .map(|(hash, user)| (key(hash), Some(user.clone().into_bytes()))),
        );
        writes.push((
            keys::members_version(scope),
            Some(m.version.to_string().into_bytes()),
        ));
        Ok(writes)
    }

    /// Applies to memory an update whose [`Self::plan_members`] writes were committed.
    pub fn commit_members(&mut self, m: &Members) {
        let i = m.scope as usize;
        let map = &mut self.members[i];
        if m.base.is_none() {
            map.clear();
        }
        for hash in &m.delete {
            map.remove(hash);
        }
        for (hash, user) in &m.upsert {
            map.insert(hash.clone(), user.clone());
        }
        self.members_version[i] = m.version;
    }

    /// The member a card belongs to: this store's map first, then the fleet-wide one.
    pub fn member(&self, card_hash: &str) -> Option<&str> {
        self.members
            .iter()
            .find_map(|m| m.get(card_hash))
            .map(String::as_str)
    }
}

pub(super) fn scope_index(s: &str) -> Option<usize> {
    match s {
        "store" => Some(MemberScope::Store as usize),
        "all" => Some(MemberScope::Fleet as usize),
        _ => None,
    }
}
