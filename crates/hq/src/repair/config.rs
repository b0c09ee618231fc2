//! `[repair]` in hq.toml: when HQ asks a store to replay a hole, and through which broker.
//!
//! ```toml
//! [repair]
//! after = "10s"        # a hole pending this long is asked for (well under [loss] grace)
//! retry = "15s"        # between two asks for the same hole
//! max_asks = 3         # then it waits for the grace like any other
//! max_seqs = 10000     # seqs per request (the store refuses more)
//! max_ranges = 4       # requests per store and second, per consumer
//! expires = "60s"      # a request not run by then is not run
//! broker = "127.0.0.1:1883"  # MQTT broker the stores take commands from; default: [mqtt]'s
//! # enabled = false    # no repair: holes wait for the grace only
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::input::Input;
use crate::seq::RepairRule;
use phygate_proto::downlink::MAX_REPLAY_SEQS;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRepair {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "default_after", with = "humantime_serde")]
    after: Duration,
    #[serde(default = "default_retry", with = "humantime_serde")]
    retry: Duration,
    #[serde(default = "default_max_asks")]
    max_asks: u32,
    #[serde(default = "default_max_seqs")]
    max_seqs: u64,
    #[serde(default = "default_max_ranges")]
    max_ranges: usize,
    #[serde(default = "default_expires", with = "humantime_serde")]
    expires: Duration,
    broker: Option<String>,
}

impl Default for RawRepair {
    fn default() -> Self {
        RawRepair {
            enabled: true,
            after: default_after(),
            retry: default_retry(),
            max_asks: default_max_asks(),
            max_seqs: default_max_seqs(),
            max_ranges: default_max_ranges(),
            expires: default_expires(),
            broker: None,
        }
    }
}

fn yes() -> bool {
    true
}
/// Ten seconds: a batch still on its way between two consumers of a group arrives well before
/// (the fleet runs see out-of-order arrivals within a second or two); a replay asked for it
/// anyway only costs a repeat that HQ's de-duplication drops.
fn default_after() -> Duration {
    Duration::from_secs(10)
}
/// Fifteen seconds: time for the store's answer to come back through its outbox and uplink.
fn default_retry() -> Duration {
    Duration::from_secs(15)
}
fn default_max_asks() -> u32 {
    3
}
fn default_max_seqs() -> u64 {
    MAX_REPLAY_SEQS
}
fn default_max_ranges() -> usize {
    4
}
/// A minute: a store offline longer than that is asked again by the retry, with a fresh id.
fn default_expires() -> Duration {
    Duration::from_secs(60)
}

/// The validated `[repair]`.
#[derive(Debug, Clone)]
pub struct RepairConfig {
    pub rule: RepairRule,
    /// `host:port` of the MQTT broker the stores' downlinks subscribe on.
    pub broker: String,
    pub expires: Duration,
}

/// Validates `[repair]` against the input and the loss grace; `None` when repair is off.
pub fn validate(
    raw: Option<RawRepair>,
    input: Option<&Input>,
    grace: Duration,
    problems: &mut Vec<String>,
) -> Option<RepairConfig> {
    let explicit = raw.is_some();
    let r = raw.unwrap_or_default();
    if !r.enabled {
        return None;
    }
    let broker = match (&r.broker, input) {
        (Some(b), _) => b.clone(),
        (None, Some(Input::Mqtt(m))) => format!("{}:{}", m.host, m.port),
        // JetStream input: the stores' MQTT side is another address; without one, no repair
        // unless the table asks for it.
        (None, _) if explicit => {
            problems.push(
                "repair.broker: needed with a JetStream input (the MQTT address the stores take \
                 commands from)"
                    .into(),
            );
            return None;
        }
        (None, _) => return None,
    };
    if r.after >= grace {
        problems.push(format!(
            "repair.after {:?}: must be shorter than [loss] grace {:?}, or a hole is lost before it is asked for",
            r.after, grace
        ));
    }
    if r.retry.is_zero() || r.expires.is_zero() || r.after.is_zero() {
        problems.push("repair.after, repair.retry and repair.expires: more than 0 s".into());
    }
    if r.max_asks == 0 {
        problems.push("repair.max_asks: at least 1".into());
    }
    if r.max_seqs == 0 || r.max_seqs > MAX_REPLAY_SEQS {
        problems.push(format!("repair.max_seqs: between 1 and {MAX_REPLAY_SEQS}"));
    }
    if r.max_ranges == 0 {
        problems.push("repair.max_ranges: at least 1".into());
    }
    Some(RepairConfig {
        rule: RepairRule {
            after_ms: r.after.as_millis() as u64,
            retry_ms: r.retry.as_millis() as u64,
            max_asks: r.max_asks,
            max_seqs: r.max_seqs,
            max_ranges: r.max_ranges,
        },
        broker,
        expires: r.expires,
    })
}
