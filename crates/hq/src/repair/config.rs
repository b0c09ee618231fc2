//! `[repair]` in hq.toml: when HQ asks a store to replay a hole, and through which broker.
//!
//! ```toml
//! [repair]
//! after = "10s"        # a hole pending this long is asked for (default: 10 s, or a quarter
//!                      # of [loss] grace when that is shorter; must be under the grace)
//! retry = "15s"        # between two asks for the same hole
//! max_asks = 3         # then it waits for the grace like any other
//! max_seqs = 10000     # seqs per request (the store refuses more)
//! max_ranges = 4       # requests per store and second, per consumer
//! expires = "60s"      # a request not run by then is not run
//! broker = "127.0.0.1:1883"  # MQTT broker the stores take commands from; default: [mqtt]'s
//! # ca_file, cert_file, key_file, username, password_file / password_env: that broker's TLS
//! # and login, as in [mqtt]; default: [mqtt]'s (a JetStream input has none: plain, anonymous)
//! # enabled = false    # no repair: holes wait for the grace only
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::input::Input;
use crate::mqtt_security::{RawSecurity, Security};
use crate::seq::RepairRule;
use phygate_proto::downlink::MAX_REPLAY_SEQS;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRepair {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default, with = "humantime_serde")]
    after: Option<Duration>,
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
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
}

impl Default for RawRepair {
    fn default() -> Self {
        RawRepair {
            enabled: true,
            after: None,
            retry: default_retry(),
            max_asks: default_max_asks(),
            max_seqs: default_max_seqs(),
            max_ranges: default_max_ranges(),
            expires: default_expires(),
            broker: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
            password_env: None,
        }
    }
}

fn yes() -> bool {
    true
}
/// Ten seconds: a batch still on its way between two consumers of a group arrives well before
/// (the fleet runs see out-of-order arrivals within a second or two); a replay asked for it
/// anyway only costs a repeat that HQ's de-duplication drops. A quarter of a shorter grace, so
/// a hole is asked for (and retried) before it is declared lost.
fn default_after(grace: Duration) -> Duration {
    Duration::from_secs(10).min(grace / 4)
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
    /// The TLS and login of `[repair]`'s own keys when it has any; else the `[mqtt]` input's
    /// (with a JetStream input: plain and anonymous).
    pub security: Security,
    pub expires: Duration,
}

/// Validates `[repair]` against the input and the loss grace (files relative to `base`, the
/// config's directory); `None` when repair is off.
pub fn validate(
    raw: Option<RawRepair>,
    input: Option<&Input>,
    grace: Duration,
    base: &Path,
    problems: &mut Vec<String>,
) -> Option<RepairConfig> {
    let explicit = raw.is_some();
    let mut r = raw.unwrap_or_default();
    let own = RawSecurity {
        ca_file: r.ca_file.take(),
        cert_file: r.cert_file.take(),
        key_file: r.key_file.take(),
        username: r.username.take(),
        password_file: r.password_file.take(),
        password_env: r.password_env.take(),
    };
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
    let after = r.after.unwrap_or_else(|| default_after(grace));
    if after >= grace {
        problems.push(format!(
            "repair.after {:?}: must be shorter than [loss] grace {:?}, or a hole is lost before it is asked for",
            after, grace
        ));
    }
    if r.retry.is_zero() || r.expires.is_zero() || after.is_zero() {
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
            after_ms: after.as_millis() as u64,
            retry_ms: r.retry.as_millis() as u64,
            max_asks: r.max_asks,
            max_seqs: r.max_seqs,
            max_ranges: r.max_ranges,
        },
        broker,
        // A JetStream deployment's MQTT listeners may require a login too (nats-server checks
        // the same users on both), and then so do the replay requests.
        security: match input {
            _ if !own.is_empty() => own.validate(base, "repair", problems),
            Some(Input::Mqtt(m)) => m.security.clone(),
            _ => Security::default(),
        },
        expires: r.expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Option<RawRepair> {
        Some(toml::from_str(text).unwrap())
    }

    fn mqtt() -> Input {
        crate::config::Config::parse("[mqtt]\n", std::path::Path::new("/x/hq.toml"))
            .unwrap()
            .input
    }

    #[test]
    fn on_by_default_through_the_input_broker_and_under_the_grace() {
        let mut problems = Vec::new();
        let input = mqtt();
        let r = validate(
            None,
            Some(&input),
            Duration::from_secs(60),
            Path::new("/x"),
            &mut problems,
        )
        .unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(r.broker, "127.0.0.1:1883");
        assert_eq!(r.rule.after_ms, 10_000);
        assert_eq!(r.rule.max_seqs, MAX_REPLAY_SEQS);
        // A short grace shortens the default delay.
        let r = validate(
            None,
            Some(&input),
            Duration::from_secs(8),
            Path::new("/x"),
            &mut problems,
        )
        .unwrap();
        assert_eq!(r.rule.after_ms, 2_000);
        assert!(problems.is_empty());
    }

    #[test]
    fn bad_values_are_named() {
        let input = mqtt();
        let mut problems = Vec::new();
        validate(
            raw("after = \"2m\"\nmax_seqs = 20000\nmax_asks = 0\n"),
            Some(&input),
            Duration::from_secs(60),
            Path::new("/x"),
            &mut problems,
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("repair.after"));
        let mut problems = Vec::new();
        assert!(validate(
            raw("enabled = false\n"),
            Some(&input),
            Duration::from_secs(60),
            Path::new("/x"),
            &mut problems
        )
        .is_none());
        assert!(problems.is_empty());
    }

    #[test]
    fn its_own_login_serves_a_jetstream_deployment_and_is_checked_like_mqtts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "pem").unwrap();
        std::fs::write(dir.path().join("repair.password"), "s3cret\n").unwrap();
        let input = crate::config::Config::parse(
            "[input]\nkind = \"jetstream\"\nservers = [\"nats://n1:4222\"]\n",
            &dir.path().join("hq.toml"),
        )
        .unwrap()
        .input;
        let mut problems = Vec::new();
        let r = validate(
            raw("broker = \"n1:1883\"\nca_file = \"ca.pem\"\nusername = \"hq\"\npassword_file = \"repair.password\"\n"),
            Some(&input),
            Duration::from_secs(60),
            dir.path(),
            &mut problems,
        )
        .unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(r.security.describe(), "tls, username");
        // Without its own keys: plain and anonymous, as before.
        let r = validate(
            raw("broker = \"n1:1883\"\n"),
            Some(&input),
            Duration::from_secs(60),
            dir.path(),
            &mut problems,
        )
        .unwrap();
        assert_eq!(r.security.describe(), "plain tcp");
        // Checked like [mqtt]'s, named under [repair].
        validate(
            raw("broker = \"n1:1883\"\ncert_file = \"missing.pem\"\n"),
            Some(&input),
            Duration::from_secs(60),
            dir.path(),
            &mut problems,
        );
        assert!(
            problems.iter().any(|p| p.contains("repair.cert_file")),
            "{problems:?}"
        );
    }
}
