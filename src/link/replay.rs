//! Replay rule for app tokens (docs/protocols.md §5: `replayed` = same `jti` seen before its `exp`).
//!
//! Kept apart from verification because it is the one stateful check: [`ReplayGuard`] is the
//! in-memory version; the daemon can back the same rule with SQLite (docs/architecture.md §4: replay cache in
//! SQLite, pruned after expiry) and use [`Checked::into_replayed`] directly.

use std::collections::HashMap;

use super::token::{Checked, Verdict};

/// Replay entries above which [`ReplayGuard::check_and_record`] prunes by itself. Only valid
/// tokens are recorded and each lives at most 300 s + skew, so this is never reached by real
/// traffic; it keeps memory bounded even if the caller forgets to prune.
pub const REPLAY_PRUNE_AT: usize = 10_000;

/// In-memory replay memory: jti → exp, for "same `jti` seen before its `exp`" (§5). The daemon
/// may back the same rule with SQLite so it survives restarts (see [`Checked::into_replayed`]).
#[derive(Debug, Clone, Default)]
pub struct ReplayGuard {
    seen: HashMap<String, i64>,
    skew_s: i64,
}

impl ReplayGuard {
    /// `skew_s` must be the verifier's: a token is accepted until `exp + skew`, so its jti must
    /// be remembered that long too.
    pub fn new(skew_s: i64) -> Self {
        Self {
            seen: HashMap::new(),
            skew_s: skew_s.max(0),
        }
    }

    /// Returns `true` if `jti` is fresh (it is now recorded until `exp` + skew), `false` if it
    /// is a replay of a token still within its lifetime.
    pub fn check_and_record(&mut self, jti: &str, exp: i64, now: i64) -> bool {
        if self.seen.len() >= REPLAY_PRUNE_AT {
            self.prune(now);
        }
        match self.seen.get(jti) {
            Some(&seen_exp) if now < seen_exp.saturating_add(self.skew_s) => false,
            _ => {
                self.seen.insert(jti.to_owned(), exp);
                true
            }
        }
    }

    /// Forgets jtis whose tokens can no longer be accepted anyway.
    pub fn prune(&mut self, now: i64) {
        let skew = self.skew_s;
        self.seen.retain(|_, exp| now < exp.saturating_add(skew));
    }

    /// Forgets every expired jti and returns them (so their persisted copies can go too).
    pub fn take_expired(&mut self, now: i64) -> Vec<String> {
        let skew = self.skew_s;
        let expired: Vec<String> = self
            .seen
            .iter()
            .filter(|(_, exp)| now >= exp.saturating_add(skew))
            .map(|(jti, _)| jti.clone())
            .collect();
        for jti in &expired {
            self.seen.remove(jti);
        }
        expired
    }

    /// Restores a jti seen before a restart.
    pub fn restore(&mut self, jti: String, exp: i64) {
        self.seen.insert(jti, exp);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Applies the replay rule to a [`verify`](super::token::verify) result: a valid token whose
/// jti was already used becomes `replayed`; a fresh one is recorded. Other verdicts pass
/// through untouched.
pub fn apply_replay(checked: Checked, guard: &mut ReplayGuard, now: i64) -> Checked {
    let fresh = match (&checked.verdict, &checked.claims) {
        (Verdict::Valid, Some(claims)) => guard.check_and_record(&claims.jti, claims.exp, now),
        _ => true,
    };
    if fresh {
        checked
    } else {
        checked.into_replayed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000;

    #[test]
    fn replay_guard_prunes_itself_when_large() {
        let mut guard = ReplayGuard::new(0);
        for i in 0..REPLAY_PRUNE_AT {
            assert!(guard.check_and_record(&format!("jti-{i:012}"), NOW + 10, NOW));
        }
        assert!(guard.check_and_record("fresh-jti-000000", NOW + 400, NOW + 20));
        assert_eq!(guard.len(), 1);
    }

    #[test]
    fn expiry_is_counted_from_the_first_use() {
        let mut guard = ReplayGuard::new(30);
        assert!(guard.check_and_record("abcdefghijklmnop", NOW + 100, NOW));
        // A replay does not extend the memory: the first recorded exp still rules.
        assert!(!guard.check_and_record("abcdefghijklmnop", NOW + 300, NOW + 129));
        assert!(guard.check_and_record("abcdefghijklmnop", NOW + 300, NOW + 130));
    }
}
