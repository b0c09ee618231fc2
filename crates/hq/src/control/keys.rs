//! `keys rotate` and `keys retire`: the tenant's token keys on the retained `…/{tenant}/keys`
//! topic. A rotation publishes the old kids and a new one; a kid is retired only once every
//! token it may have signed before the new kid was out has expired (the edge's
//! `MAX_LIFETIME_S`), so no customer's code in flight stops opening the gate.
//!
//! The state file (`keys-{tenant}.json`) keeps each published kid, its public key and when it
//! was published: the JWKS is rebuilt from it, never read back from the broker.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use phygate::link::jwks::{generate_key, jwks_json, signing_key_to_base64url};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::applied::{self, KeysAt, Targets};
use super::mqtt::Link;
use super::{state, Target};

/// The longest a token lives (the edge refuses longer ones): the wait before a retirement.
pub const RETIRE_AFTER_S: u64 = phygate::link::token::MAX_LIFETIME_S as u64;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KeysState {
    pub kids: Vec<PublishedKid>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishedKid {
    pub kid: String,
    /// The public JWK as published.
    pub jwk: Value,
    /// When the JWKS carrying this kid was first acknowledged by the broker (Unix seconds).
    pub published_at: u64,
}

fn state_path(target: &Target) -> PathBuf {
    target
        .state_dir
        .join(format!("keys-{}.json", target.tenant))
}

/// Adds `kid` (a fresh key; its private half goes to `key_out`, mode 0600) and publishes the
/// JWKS of every kid still in force. Run again with the same kid, it publishes the same JWKS
/// again and makes no new key.
pub async fn rotate(
    target: &Target,
    kid: &str,
    key_out: Option<&Path>,
    wait: Option<Duration>,
) -> anyhow::Result<bool> {
    if kid.is_empty()
        || kid.len() > 64
        || !kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        bail!("kid {kid:?}: 1-64 characters of A-Z a-z 0-9 - _ . (it also names the key file)");
    }
    std::fs::create_dir_all(&target.state_dir)
        .with_context(|| format!("creating {}", target.state_dir.display()))?;
    let path = state_path(target);
    let mut keys: KeysState = state::load(&path)?;
    if keys.kids.iter().any(|k| k.kid == kid) {
        println!("kid {kid} is already in the key set; publishing the same key set again");
    } else {
        let (signing, jwk) = generate_key(kid);
        let key_file = key_out
            .map(Path::to_owned)
            .unwrap_or_else(|| target.state_dir.join(format!("{kid}.key")));
        write_private_key(&key_file, &signing_key_to_base64url(&signing))?;
        println!(
            "private key of {kid} written to {} (mode 0600)",
            key_file.display()
        );
        // Recorded at once, as not yet published (`published_at` 0): if the broker cannot be
        // reached, running the same rotation again publishes this key instead of failing on
        // its existing file. Its time is set after the broker's PUBACK below.
        keys.kids.push(PublishedKid {
            kid: kid.to_owned(),
            jwk,
            published_at: 0,
        });
        state::save(&path, &keys)?;
    }
    let sent = publish(target, &keys, wait).await?;
    let now = state::now_s();
    for k in keys.kids.iter_mut().filter(|k| k.published_at == 0) {
        k.published_at = now;
    }
    state::save(&path, &keys)?;
    println!(
        "published the key set of {} (retained): {}; the broker acknowledged it. Stores apply it when they receive it (now, or when they are back online); each reports the key set it holds in its status (`--wait` reads them).",
        target.tenant,
        kid_list(&keys),
    );
    if keys.kids.len() > 1 {
        println!("an older kid can be retired ({RETIRE_AFTER_S} s, the longest token lifetime, after {kid} was published): `phygate-hq keys retire --kid …`");
    }
    sent.settle(&target.tenant, wait).await
}

/// Publishes the JWKS without `kid`, once the newest other kid has been out for longer than a
/// token lives. Refused for the last kid, and for a kid this state does not know.
pub async fn retire(target: &Target, kid: &str, wait: Option<Duration>) -> anyhow::Result<bool> {
    let path = state_path(target);
    let mut keys: KeysState = state::load(&path)?;
    let Some(index) = keys.kids.iter().position(|k| k.kid == kid) else {
        bail!(
            "kid {kid:?} is not in {} (published kids: {})",
            path.display(),
            kid_list(&keys)
        );
    };
    if let Some(pending) = keys.kids.iter().find(|k| k.published_at == 0) {
        bail!(
            "kid {:?} was never confirmed published: run `keys rotate --kid {}` again first",
            pending.kid,
            pending.kid
        );
    }
    if keys.kids.len() == 1 {
        bail!("kid {kid:?} is the only key: rotate to a new one first (`keys rotate`)");
    }
    let newest = keys
        .kids
        .iter()
        .filter(|k| k.kid != kid)
        .map(|k| k.published_at)
        .max()
        .unwrap_or(0);
    let ready_at = newest + RETIRE_AFTER_S;
    let now = state::now_s();
    if now < ready_at {
        bail!(
            "not yet: tokens signed with {kid:?} may live until {} s from now (the newest key was published {} s ago; tokens live up to {RETIRE_AFTER_S} s). Nothing was published.",
            ready_at - now,
            now.saturating_sub(newest)
        );
    }
    keys.kids.remove(index);
    let sent = publish(target, &keys, wait).await?;
    state::save(&path, &keys)?;
    println!(
        "retired {kid}: published the key set of {} (retained) with {}",
        target.tenant,
        kid_list(&keys)
    );
    sent.settle(&target.tenant, wait).await
}

/// Checks the JWKS with the edge's own parser, then publishes it retained. With `wait`, it
/// listens to the stores' statuses first, so [`Sent::settle`] can read back which hold this key
/// set (by its version: the digest of the set as the stores keep it).
async fn publish(
    target: &Target,
    keys: &KeysState,
    wait: Option<Duration>,
) -> anyhow::Result<Sent> {
    let jwks: Vec<Value> = keys.kids.iter().map(|k| k.jwk.clone()).collect();
    let body = jwks_json(&jwks).to_string().into_bytes();
    let topic = phygate_proto::topic::keys(&target.tenant);
    // The store name does not matter for the keys topic (it is the tenant's).
    let parsed = phygate::downlink::parse(&target.tenant, "-", &topic, &body)
        .map_err(|e| anyhow::anyhow!("the key set would be refused by the stores: {e}"))?;
    let phygate::downlink::Update::Keys(set) = parsed else {
        bail!("the keys topic parsed as something else than a key set");
    };
    let wanted = KeysAt {
        version: phygate::uplink::report::keys_version(&set.to_jwks_json()),
        kids: set.kids().map(str::to_owned).collect(),
    };
    let mut link = Link::to(target).await?;
    let known = match wait {
        Some(_) => Some(applied::listen(&mut link, &target.tenant).await?),
        None => None,
    };
    let start = tokio::time::Instant::now();
    link.publish(&topic, body, true).await?;
    Ok(Sent {
        link,
        known,
        wanted,
        start,
    })
}

/// A key set the broker acknowledged, and how to read back the stores' reports of it.
struct Sent {
    link: Link,
    known: Option<BTreeMap<String, applied::Seen>>,
    wanted: KeysAt,
    start: tokio::time::Instant,
}

impl Sent {
    /// With `wait`: waits for every store with a status to hold the key set and prints the
    /// result; returns whether they all do (true without `wait`).
    async fn settle(self, tenant: &str, wait: Option<Duration>) -> anyhow::Result<bool> {
        let Sent {
            mut link,
            known,
            wanted,
            start,
        } = self;
        let (Some(wait), Some(known)) = (wait, known) else {
            link.close().await;
            return Ok(true);
        };
        let all = Targets::All;
        let outcome = applied::wait(&mut link, tenant, known, &all, &wanted, start, wait).await?;
        link.close().await;
        applied::print(&outcome, &wanted);
        Ok(outcome.all_hold())
    }
}

fn kid_list(keys: &KeysState) -> String {
    let kids: Vec<&str> = keys.kids.iter().map(|k| k.kid.as_str()).collect();
    kids.join(", ")
}

/// Creates the key file readable by its owner only; never overwrites one.
fn write_private_key(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating the private key file {}", path.display()))?;
    f.write_all(format!("{text}\n").as_bytes())?;
    f.sync_all()?;
    Ok(())
}
