//! `config push`: a phygate TOML config for one store or for every store, on each store's
//! retained `…/{store}/config` topic. Checked first with the edge's own validator
//! (`phygate::config::hq::check_for`), for every target store: one invalid config
//! refuses the whole push and nothing is published. Then each store's answer is awaited: a
//! `store.config.applied` or `store.config.rejected` event carrying the version (the digest of
//! the text, computed here the same way).
//!
//! A config names its store. For `--all` the file leaves `store` out and each store gets the
//! file with its own `store = "…"` line first; for `--store S` either form works.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use phygate::config::hq as hqconfig;
use phygate_proto::envelope::types;

use super::mqtt::Link;
use super::{answers, Target};

/// Where the stores keep HQ's config: relative paths in it resolve against this directory,
/// on the store box, as the package lays it out.
const STORE_STATE_DIR: &str = "/var/lib/phygate";

/// How long the broker's retained statuses get to arrive when listing the stores.
const RETAINED_QUIET: Duration = Duration::from_millis(700);

/// Which stores to configure.
pub enum Stores {
    One(String),
    /// Every store that has a retained status on the broker.
    All,
}

/// What a store answered.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Applied(String),
    Rejected(Vec<String>),
}

/// Validates, publishes, waits up to `wait` for the answers, prints one line per store.
/// Returns whether every store answered `applied`.
pub async fn push(
    target: &Target,
    stores: Stores,
    file: &Path,
    wait: Duration,
) -> anyhow::Result<bool> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let names_store = toml::from_str::<toml::Table>(&text)
        .map(|t| t.contains_key("store"))
        .unwrap_or(false);
    let mut link = Link::to(target).await?;
    let stores = match stores {
        Stores::One(s) => vec![s],
        Stores::All if names_store => {
            bail!("{}: for --all, leave `store` out of the file: each store gets its own `store` line", file.display())
        }
        Stores::All => known_stores(&mut link, &target.tenant).await?,
    };
    if stores.is_empty() {
        bail!(
            "no store of tenant {} has a status on the broker: nothing to configure",
            target.tenant
        );
    }
    let mut texts = BTreeMap::new();
    let mut refused = Vec::new();
    for store in &stores {
        let text = if names_store {
            text.clone()
        } else {
            format!("store = {}\n{text}", toml::Value::from(store.as_str()))
        };
        let stored = Path::new(STORE_STATE_DIR).join(hqconfig::STORED_NAME);
        if text.len() > phygate_proto::downlink::MAX_CONFIG_BYTES {
            refused.push(format!(
                "{store}: {} bytes is over the stores' limit",
                text.len()
            ));
        } else if let Err(problems) = hqconfig::check_for(&text, &stored, &target.tenant, store) {
            refused.extend(problems.into_iter().map(|p| format!("{store}: {p}")));
        }
        texts.insert(store.clone(), text);
    }
    if !refused.is_empty() {
        link.close().await;
        bail!(
            "the config is not valid; nothing was published:\n  {}",
            refused.join("\n  ")
        );
    }
    // Subscribed before publishing, so no answer can come before we listen.
    link.subscribe(&phygate_proto::topic::events(&target.tenant, "+"))
        .await?;
    let mut waiting: BTreeMap<String, String> = BTreeMap::new();
    let start = tokio::time::Instant::now();
    let topics: Vec<(String, String, String)> = texts
        .into_iter()
        .map(|(store, text)| {
            let topic = phygate_proto::topic::config(&target.tenant, &store);
            (store, topic, text)
        })
        .collect();
    let messages: Vec<(&str, &[u8])> = topics
        .iter()
        .map(|(_, topic, text)| (topic.as_str(), text.as_bytes()))
        .collect();
    // A window of publishes at once: one round trip per store made a fleet push wait ~40 ms
    // a store. Each config is whole and retained, so a push cut short is finished by running
    // it again (a store does not apply the same version twice).
    link.publish_all(&messages, true).await?;
    for (store, _, text) in topics {
        let version = hqconfig::version(&text);
        println!("{store}: published config {version} (retained)");
        waiting.insert(store, version);
    }
    let answers = await_answers(&mut link, &waiting, wait).await?;
    link.close().await;
    let mut all_applied = true;
    let applied = answers
        .values()
        .filter(|a| matches!(a, Outcome::Applied(_)))
        .count();
    let same = waiting.values().collect::<std::collections::BTreeSet<_>>();
    let which = match same.len() {
        1 => format!("config {}", same.first().expect("one")),
        _ => "their config (each with its own `store` line)".to_owned(),
    };
    println!(
        "{applied} of {} stores applied {which} (waited {:.1} s)",
        waiting.len(),
        start.elapsed().as_secs_f64()
    );
    for (store, version) in &waiting {
        match answers.get(store) {
            Some(Outcome::Applied(detail)) => println!("{store}: applied {version} ({detail})"),
            Some(Outcome::Rejected(reasons)) => {
                all_applied = false;
                println!("{store}: REJECTED {version}: {}", reasons.join("; "));
            }
            None => {
                all_applied = false;
                println!("{store}: no answer within {wait:?} (offline? the retained config reaches it when it is back)");
            }
        }
    }
    Ok(all_applied)
}

/// The stores with a retained status (`online` or `offline`) on the broker.
pub async fn known_stores(link: &mut Link, tenant: &str) -> anyhow::Result<Vec<String>> {
    let filter = phygate_proto::topic::status(tenant, "+");
    let mut stores: Vec<String> = link
        .retained(&filter, RETAINED_QUIET)
        .await?
        .into_iter()
        .filter_map(|p| {
            let rest = p
                .topic
                .strip_prefix(&format!("{}/{tenant}/", phygate_proto::topic::ROOT))?;
            Some(rest.strip_suffix("/status")?.to_owned())
        })
        .collect();
    stores.sort();
    stores.dedup();
    Ok(stores)
}

/// Reads the events topics until each store answered about its version, or `wait` passed.
async fn await_answers(
    link: &mut Link,
    waiting: &BTreeMap<String, String>,
    wait: Duration,
) -> anyhow::Result<BTreeMap<String, Outcome>> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut got = BTreeMap::new();
    while got.len() < waiting.len() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(p) = link.next_message(left).await? else {
            break;
        };
        for a in answers::parse(&p.topic, &p.payload) {
            if waiting.get(&a.store).map(String::as_str) != a.data["version"].as_str() {
                continue;
            }
            let outcome = match a.kind.as_str() {
                types::CONFIG_APPLIED => Outcome::Applied(format!(
                    "live: {}; at the next restart: {}",
                    a.data["live"], a.data["restart"]
                )),
                types::CONFIG_REJECTED => Outcome::Rejected(
                    a.data["reasons"]
                        .as_array()
                        .map(|r| {
                            r.iter()
                                .map(|v| v.as_str().unwrap_or("?").to_owned())
                                .collect()
                        })
                        .unwrap_or_default(),
                ),
                _ => continue,
            };
            got.insert(a.store, outcome);
        }
    }
    Ok(got)
}
