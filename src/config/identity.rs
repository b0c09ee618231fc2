//! `[identity]` and `[[stage]]`: how readings are linked to app users (docs/protocols.md §5–6).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::Validator;
use crate::link::cardhash::{parse_card_key, CardKeyError};
use crate::link::jwks::KeySet;
use crate::link::settings::IdentityConfig;
use crate::link::stage;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    /// base64url (no padding) of 32 bytes.
    card_key: Option<String>,
    /// A JWKS file with the token public keys.
    jwks_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    token_skew: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    session_window: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    visit_idle: Option<Duration>,
}

/// docs/protocols.md §5: 30 s of clock skew between the app's phone and the gateway.
const DEFAULT_TOKEN_SKEW: Duration = Duration::from_secs(30);
/// Long enough to scan at a kiosk and then sit through a skin diagnosis.
const DEFAULT_SESSION_WINDOW: Duration = Duration::from_secs(180);
/// Longer than any shopping trip; an exit scan usually ends a visit well before.
const DEFAULT_VISIT_IDLE: Duration = Duration::from_secs(2 * 3600);

impl Validator<'_> {
    pub(super) fn identity(&mut self, raw: RawIdentity) -> IdentityConfig {
        let card_key = raw.card_key.and_then(|k| match parse_card_key(&k) {
            Ok(key) => Some(key),
            Err(e) => {
                let message = match e {
                    CardKeyError::Hex => e.to_string(),
                    e => format!("{e} (expected base64url of 32 bytes)"),
                };
                self.problem("identity.card_key", message);
                None
            }
        });
        let keys = match raw.jwks_file.map(|p| self.path(p)) {
            None => KeySet::default(),
            Some(p) => match std::fs::read_to_string(&p) {
                Err(e) => {
                    self.problem(
                        "identity.jwks_file",
                        format!("cannot read {}: {e}", p.display()),
                    );
                    Default::default()
                }
                Ok(text) => KeySet::from_jwks_json(&text).unwrap_or_else(|e| {
                    self.problem("identity.jwks_file", format!("{}: {e}", p.display()));
                    Default::default()
                }),
            },
        };
        let token_skew = raw.token_skew.unwrap_or(DEFAULT_TOKEN_SKEW);
        if token_skew > Duration::from_secs(300) {
            self.problem("identity.token_skew", "must be at most 5m (tokens live 5m)");
        }
        let session_window = raw.session_window.unwrap_or(DEFAULT_SESSION_WINDOW);
        if session_window.is_zero() || session_window > Duration::from_secs(3600) {
            self.problem("identity.session_window", "must be between 1s and 1h");
        }
        let visit_idle = raw.visit_idle.unwrap_or(DEFAULT_VISIT_IDLE);
        if visit_idle < Duration::from_secs(60) {
            self.problem("identity.visit_idle", "must be at least 1m");
        }
        IdentityConfig {
            card_key,
            keys,
            token_skew,
            session_window,
            visit_idle,
            stages: Default::default(),
        }
    }

    /// The `[[stage]]` rule table, into `identity` (the built-in one when the file has none).
    pub(super) fn stage_rules(&mut self, identity: &mut Option<IdentityConfig>) {
        let stage_tables = self.tables("stage");
        let doc = self.doc;
        let before = self.problems.len();
        let stages: Vec<Option<stage::StageRule>> = stage_tables
            .iter()
            .map(|(path, node)| doc.take(path, node, &mut self.problems))
            .collect();
        // Rules with mistakes (and stand-ins for them) are not checked against each other.
        if !stages.is_empty() && self.problems.len() == before {
            match stage::StageRules::new(stages.into_iter().flatten().collect()) {
                Ok(rules) => {
                    if let Some(identity) = identity {
                        identity.stages = rules;
                    }
                }
                Err(e) => self.problem("stage", e),
            }
        }
    }
}
