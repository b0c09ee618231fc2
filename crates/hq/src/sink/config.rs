//! `[[sink]]` tables of `hq.toml`, raw and validated. The API key comes from a file
//! (`api_key_file`) or an environment variable (`api_key_env`), never from the command line
//! or the config itself, and never shows in `check-config`.
//!
//! ```toml
//! [[sink]]
//! name = "braze"                       # the cursor's name: renaming it starts from the beginning
//! kind = "braze"                       # or "amplitude", or "webhook"
//! url = "https://rest.iad-01.braze.com"
//! api_key_file = "/etc/phygate/braze.key"   # or api_key_env = "BRAZE_API_KEY"
//! batch = 75                           # events per request, capped by the engine's limit
//! timeout = "30s"
//! backoff_min = "1s"
//! backoff_max = "5m"
//! poll = "500ms"                       # how often to look for new events when caught up
//! anonymous = false                    # webhook only: also send events without a userid
//!
//! [sink.map."store.skin.diagnosed"]    # overrides the default mapping of one type
//! event = "Skin Diagnosed"
//! properties = "/measures"             # JSON pointer into data ("" = all of data)
//! user_attributes = { skin_type = "/skin_type" }
//! forward = true
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::amplitude::Amplitude;
use super::braze::Braze;
use super::engine::Engine;
use super::mapping::{Mapping, Rule};
use super::webhook::Webhook;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    Braze,
    Amplitude,
    /// Any endpoint, CloudEvents over HTTP, signed; the key is the HMAC secret.
    Webhook,
}

/// An API key; its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    pub url: String,
    pub api_key: Secret,
    pub batch: usize,
    pub timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub poll: Duration,
    /// Webhook: whether events without a `userid` go too (Braze never, Amplitude always).
    pub anonymous: bool,
    pub mapping: Mapping,
}

impl SinkConfig {
    pub fn engine(&self) -> Box<dyn Engine> {
        let (base_url, api_key, batch) = (self.url.clone(), self.api_key.0.clone(), self.batch);
        match self.kind {
            SinkKind::Braze => Box::new(Braze {
                base_url,
                api_key,
                batch,
            }),
            SinkKind::Amplitude => Box::new(Amplitude {
                base_url,
                api_key,
                batch,
            }),
            SinkKind::Webhook => Box::new(Webhook {
                url: base_url,
                secret: api_key,
                anonymous: self.anonymous,
            }),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSink {
    name: String,
    kind: String,
    url: String,
    api_key_file: Option<PathBuf>,
    api_key_env: Option<String>,
    batch: Option<usize>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "default_backoff_min", with = "humantime_serde")]
    backoff_min: Duration,
    #[serde(default = "default_backoff_max", with = "humantime_serde")]
    backoff_max: Duration,
    #[serde(default = "default_poll", with = "humantime_serde")]
    poll: Duration,
    anonymous: Option<bool>,
    #[serde(default)]
    map: BTreeMap<String, RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    forward: Option<bool>,
    event: Option<String>,
    properties: Option<String>,
    user_attributes: Option<BTreeMap<String, String>>,
}

/// Long enough for a 2,000-event request on a slow link; a request that outlives it has an
/// unknown fate (counted as ambiguous when repeated).
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_backoff_min() -> Duration {
    Duration::from_secs(1)
}
fn default_backoff_max() -> Duration {
    Duration::from_secs(300)
}
/// Forwarding latency when idle, against one cheap query per sink.
fn default_poll() -> Duration {
    Duration::from_millis(500)
}

/// Validates the raw sinks; a problem is pushed to `problems` and the sink left out.
/// `base` anchors a relative key file.
pub(crate) fn validate(
    raw: Vec<RawSink>,
    base: &Path,
    problems: &mut Vec<String>,
) -> Vec<SinkConfig> {
    let mut out: Vec<SinkConfig> = Vec::new();
    for r in raw {
        let at = format!("sink {:?}", r.name);
        let before = problems.len();
        if r.name.is_empty() || out.iter().any(|s| s.name == r.name) {
            problems.push(format!(
                "{at}: the name must be non-empty and unique (it names the cursor)"
            ));
        }
        let kind = match r.kind.as_str() {
            "braze" => SinkKind::Braze,
            "amplitude" => SinkKind::Amplitude,
            "webhook" => SinkKind::Webhook,
            other => {
                problems.push(format!(
                    "{at}: kind {other:?}: \"braze\", \"amplitude\" or \"webhook\""
                ));
                SinkKind::Braze
            }
        };
        if r.anonymous.is_some() && kind != SinkKind::Webhook {
            problems.push(format!(
                "{at}: anonymous is the webhook's choice; Braze never takes anonymous events, Amplitude always does"
            ));
        }
        if !(r.url.starts_with("https://") || r.url.starts_with("http://")) {
            problems.push(format!("{at}: url {:?}: an http(s) URL", r.url));
        }
        let key = match crate::config::read_secret(
            r.api_key_file.as_deref(),
            r.api_key_env.as_deref(),
            base,
            &format!("{at}: api_key"),
        ) {
            Ok(Some(k)) => k.0,
            Ok(None) => {
                problems.push(format!("{at}: exactly one of api_key_file or api_key_env"));
                String::new()
            }
            Err(e) => {
                problems.push(e);
                String::new()
            }
        };
        if r.batch == Some(0) || r.backoff_min.is_zero() || r.poll.is_zero() {
            problems.push(format!("{at}: batch, backoff_min and poll must be above 0"));
        }
        let mut mapping = Mapping::default();
        for (ty, rule) in r.map {
            let mut d = Rule::default_for(&ty);
            if let Some(f) = rule.forward {
                d.forward = f;
            }
            if let Some(e) = rule.event {
                d.event = e;
            }
            if let Some(p) = rule.properties {
                if !(p.is_empty() || p.starts_with('/')) {
                    problems.push(format!("{at}: map {ty:?}: properties {p:?} is not a JSON pointer (\"\" or \"/key\")"));
                }
                d.properties = p;
            }
            if let Some(u) = rule.user_attributes {
                d.user_attributes = u.into_iter().collect();
            }
            mapping.overrides.insert(ty, d);
        }
        if problems.len() > before {
            continue;
        }
        out.push(SinkConfig {
            name: r.name,
            kind,
            url: r.url,
            api_key: Secret(key),
            batch: r.batch.unwrap_or(usize::MAX),
            timeout: r.timeout,
            backoff_min: r.backoff_min,
            backoff_max: r.backoff_max,
            poll: r.poll,
            anonymous: r.anonymous.unwrap_or(false),
            mapping,
        });
    }
    out
}
