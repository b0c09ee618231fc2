//! Journey stage (`stage` on every event) from one rule table: the first rule that matches the
//! event's type, its station's role and (for passages) direction gives the stage.

use serde::Deserialize;

use crate::station::{Direction, StationRole};

/// The journey stages HQ's engine knows.
pub const STAGES: &[&str] = &["entry", "browse", "engage", "purchase_intent", "exit"];

/// One row of the table. `None` matches anything.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageRule {
    /// An event type (`store.qr.scanned`), or `*`.
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub role: Option<StationRole>,
    #[serde(default)]
    pub direction: Option<Direction>,
    /// One of [`STAGES`], or `none` for no stage.
    pub stage: String,
}

fn rule(
    event_type: &str,
    role: Option<StationRole>,
    direction: Option<Direction>,
    stage: &str,
) -> StageRule {
    StageRule {
        event_type: event_type.into(),
        role,
        direction,
        stage: stage.into(),
    }
}

/// The table used when the config has no `[[stage]]` rows. Documented in the README.
pub fn default_rules() -> Vec<StageRule> {
    use Direction::*;
    use StationRole::*;
    vec![
        // Gateway and device housekeeping is no step of a journey.
        rule("store.device.status", None, None, "none"),
        rule("store.outbox.evicted", None, None, "none"),
        rule("store.command.result", None, None, "none"),
        rule("store.visit.started", None, None, "entry"),
        rule("store.visit.ended", None, None, "exit"),
        rule("store.gate.passed", None, Some(Out), "exit"),
        rule("store.gate.passed", None, None, "entry"),
        rule("store.skin.diagnosed", None, None, "engage"),
        rule("store.nfc.linked", None, None, "engage"),
        rule("*", Some(Gate), Some(Out), "exit"),
        rule("*", Some(Gate), None, "entry"),
        rule("*", Some(Shelf), None, "browse"),
        rule("*", Some(Kiosk), None, "engage"),
        rule("*", Some(Counter), None, "purchase_intent"),
    ]
}

/// The validated table.
#[derive(Debug, Clone)]
pub struct StageRules(Vec<(StageRule, Option<&'static str>)>);

impl StageRules {
    /// Checks every row; the error names the first bad stage.
    pub fn new(rules: Vec<StageRule>) -> Result<StageRules, String> {
        let mut out = Vec::with_capacity(rules.len());
        for r in rules {
            let stage = match r.stage.as_str() {
                "none" => None,
                s => Some(*STAGES.iter().find(|k| **k == s).ok_or_else(|| {
                    format!("unknown stage {s:?} (known: {}, none)", STAGES.join(", "))
                })?),
            };
            if r.event_type != "*" && !r.event_type.starts_with("store.") {
                return Err(format!(
                    "{:?} is not an event type (store.…) or *",
                    r.event_type
                ));
            }
            out.push((r, stage));
        }
        Ok(StageRules(out))
    }

    pub fn stage(
        &self,
        event_type: &str,
        role: Option<StationRole>,
        direction: Option<Direction>,
    ) -> Option<&'static str> {
        self.0
            .iter()
            .find(|(r, _)| {
                (r.event_type == "*" || r.event_type == event_type)
                    && r.role.is_none_or(|want| Some(want) == role)
                    && r.direction.is_none_or(|want| Some(want) == direction)
            })
            .and_then(|(_, stage)| *stage)
    }
}

impl Default for StageRules {
    fn default() -> Self {
        StageRules::new(default_rules()).expect("the built-in table is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_table() {
        let t = StageRules::default();
        use StationRole::*;
        assert_eq!(
            t.stage("store.qr.scanned", Some(Gate), Some(Direction::In)),
            Some("entry")
        );
        assert_eq!(
            t.stage("store.qr.scanned", Some(Gate), Some(Direction::Out)),
            Some("exit")
        );
        assert_eq!(
            t.stage("store.qr.scanned", Some(Shelf), None),
            Some("browse")
        );
        assert_eq!(
            t.stage("store.skin.diagnosed", Some(Kiosk), None),
            Some("engage")
        );
        assert_eq!(
            t.stage("store.qr.scanned", Some(Counter), None),
            Some("purchase_intent")
        );
        assert_eq!(t.stage("store.device.status", Some(Kiosk), None), None);
        assert_eq!(
            t.stage("store.device.status", Some(Gate), Some(Direction::In)),
            None
        );
        assert_eq!(
            t.stage("store.gate.passed", Some(Gate), Some(Direction::Out)),
            Some("exit")
        );
    }

    #[test]
    fn unknown_stage_is_refused() {
        let err = StageRules::new(vec![rule("*", None, None, "checkout")]).unwrap_err();
        assert!(err.contains("checkout"), "{err}");
    }
}
