//! `--wait`: what each store reports it holds, read from the stores' retained statuses
//! (`…/{store}/status`, [`phygate_proto::status`]). A push waits until every targeted store's
//! report holds the version it published, or the time is up, then says how many stores hold it
//! and lists the others with what is known of them (offline since when, the version they hold,
//! no report).
//!
//! State, not answers: a store that already held the version counts at once, so running a push
//! again (it is idempotent) prints the same result instead of "no answer".

use std::collections::BTreeMap;
use std::time::Duration;

use phygate_proto::status::{Report, Status};
use tokio::time::Instant;

use super::mqtt::Link;

/// How long the retained statuses get to arrive before the targets are known.
const RETAINED_QUIET: Duration = Duration::from_millis(700);

/// What a push waits for in a store's report.
pub trait Wanted {
    /// What is waited for, in words (`members all version 3`).
    fn what(&self) -> String;
    /// What the report holds of it, in words (`version 2`).
    fn held(&self, report: &Report) -> String;
    /// Whether the report holds it.
    fn holds(&self, report: &Report) -> bool;
}

/// One store's last status, as the wait saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub status: Option<Status>,
}

/// Which stores: one, or every store with a retained status.
pub enum Targets {
    One(String),
    All,
}

/// The result of a wait: each targeted store and whether it holds the version.
pub struct Outcome {
    pub stores: BTreeMap<String, Seen>,
    pub holding: usize,
    pub waited: Duration,
}

impl Outcome {
    pub fn all_hold(&self) -> bool {
        self.holding == self.stores.len() && !self.stores.is_empty()
    }
}

/// Subscribes to the tenant's statuses (call before publishing, so no report can be missed),
/// and returns the stores with a retained status.
pub async fn listen(link: &mut Link, tenant: &str) -> anyhow::Result<BTreeMap<String, Seen>> {
    let mut seen = BTreeMap::new();
    for p in link
        .retained(&phygate_proto::topic::status(tenant, "+"), RETAINED_QUIET)
        .await?
    {
        if let Some(store) = store_of(&p.topic, tenant) {
            seen.insert(
                store.to_owned(),
                Seen {
                    status: serde_json::from_slice(&p.payload).ok(),
                },
            );
        }
    }
    Ok(seen)
}

/// Reads the statuses until every target holds `wanted` or `wait` passed (from `start`).
pub async fn wait(
    link: &mut Link,
    tenant: &str,
    mut known: BTreeMap<String, Seen>,
    targets: &Targets,
    wanted: &dyn Wanted,
    start: Instant,
    wait: Duration,
) -> anyhow::Result<Outcome> {
    let mut stores: BTreeMap<String, Seen> = match targets {
        Targets::All => known.clone(),
        Targets::One(s) => {
            BTreeMap::from([(s.clone(), known.remove(s).unwrap_or(Seen { status: None }))])
        }
    };
    let holds = |s: &Seen| {
        s.status
            .as_ref()
            .and_then(|s| s.report.as_ref())
            .is_some_and(|r| wanted.holds(r))
    };
    let deadline = start + wait;
    while stores.values().filter(|s| holds(s)).count() < stores.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(p) = link.next_message(left).await? else {
            break;
        };
        let Some(store) = store_of(&p.topic, tenant) else {
            continue;
        };
        if let Some(seen) = stores.get_mut(store) {
            seen.status = serde_json::from_slice(&p.payload).ok();
        }
    }
    Ok(Outcome {
        holding: stores.values().filter(|s| holds(s)).count(),
        stores,
        waited: start.elapsed(),
    })
}

/// Prints `N of M stores hold …`, then each store that does not, with what is known of it.
pub fn print(outcome: &Outcome, wanted: &dyn Wanted) {
    println!(
        "{} of {} stores hold {} (waited {:.1} s)",
        outcome.holding,
        outcome.stores.len(),
        wanted.what(),
        outcome.waited.as_secs_f64()
    );
    for (store, seen) in &outcome.stores {
        let line = match &seen.status {
            None => "no status on the broker (never connected, or not a store of this tenant)"
                .to_owned(),
            Some(s) => match &s.report {
                Some(r) if wanted.holds(r) => continue,
                Some(r) => format!("{} since {}, holds {}", s.state, s.since, wanted.held(r)),
                None => format!(
                    "{} since {}, no report (its Last Will, or a gateway without reports)",
                    s.state, s.since
                ),
            },
        };
        println!("  {store}: {line}");
    }
}

/// The store of `phygate/v1/{tenant}/{store}/status`.
fn store_of<'a>(topic: &'a str, tenant: &str) -> Option<&'a str> {
    topic
        .strip_prefix(phygate_proto::topic::ROOT)?
        .strip_prefix('/')?
        .strip_prefix(tenant)?
        .strip_prefix('/')?
        .strip_suffix("/status")
        .filter(|s| !s.contains('/'))
}

/// A member map version (or newer) in one scope.
pub struct MembersAt {
    pub fleet: bool,
    pub version: u64,
}

impl MembersAt {
    fn of(&self, r: &Report) -> u64 {
        if self.fleet {
            r.members.all
        } else {
            r.members.store
        }
    }
}

impl Wanted for MembersAt {
    fn what(&self) -> String {
        let scope = if self.fleet { "all" } else { "store" };
        format!("members {scope} version {} or newer", self.version)
    }
    fn held(&self, r: &Report) -> String {
        format!("version {}", self.of(r))
    }
    fn holds(&self, r: &Report) -> bool {
        self.of(r) >= self.version
    }
}

/// A key set, by its version (the digest of the JWKS as the stores keep it).
pub struct KeysAt {
    pub version: String,
    pub kids: Vec<String>,
}

impl Wanted for KeysAt {
    fn what(&self) -> String {
        format!("key set {} ({})", self.version, self.kids.join(", "))
    }
    fn held(&self, r: &Report) -> String {
        match &r.keys {
            None => "no key set from HQ".into(),
            Some(k) => format!("key set {} ({})", k.version, k.kids.join(", ")),
        }
    }
    fn holds(&self, r: &Report) -> bool {
        r.keys.as_ref().is_some_and(|k| k.version == self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_count_a_newer_version_as_held_and_topics_name_their_store() {
        let want = MembersAt {
            fleet: true,
            version: 3,
        };
        let mut r = Report::default();
        assert!(!want.holds(&r));
        r.members.all = 4;
        assert!(want.holds(&r));
        r.members = Default::default();
        r.members.store = 9;
        assert!(!want.holds(&r), "the store's map is another scope");
        assert_eq!(store_of("phygate/v1/acme/s1/status", "acme"), Some("s1"));
        assert_eq!(store_of("phygate/v1/acme/s1/events", "acme"), None);
        assert_eq!(store_of("phygate/v1/other/s1/status", "acme"), None);
    }
}
