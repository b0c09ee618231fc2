//! Each identified user's journey as HQ knows it: the latest stage, the current (or last)
//! visit, the latest skin diagnosis. Pure: [`UserView::apply`] folds one event in.
//!
//! Events reach HQ out of order (several gateways, late batches), so every field keeps the
//! newest by the event's [`Stamp`] (`time`, then `id`), never the last to arrive: folding the
//! same events in any order gives the same view. A visit's `started` and `ended` are merged
//! by visit id, whichever comes first; a visit replaces another only if it is newer.

use phygate_proto::envelope::types;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ingest::Accepted;

/// When an event happened: its `time` (RFC 3339 with milliseconds, which compares as a string),
/// then its id (UUIDv7, time-ordered) to break ties.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamp {
    pub time: String,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub stage: String,
    pub store: String,
    pub at: Stamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Visit {
    pub visit: String,
    pub store: String,
    pub started: Option<Stamp>,
    pub ended: Option<Ended>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ended {
    pub at: Stamp,
    pub dwell_s: Option<u64>,
    pub end_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    pub store: String,
    pub at: Stamp,
    /// The event's `data` (model, measures, skin type, …).
    pub data: Value,
}

/// One user's view (stored as JSON, one row per tenant and user id).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserView {
    pub last_seen: Option<Stamp>,
    pub last_store: Option<String>,
    pub stage: Option<Stage>,
    pub visit: Option<Visit>,
    pub diagnosis: Option<Diagnosis>,
}

impl Visit {
    /// What orders two visits: their start, or their end while the start is unknown.
    fn key(&self) -> Option<&Stamp> {
        self.started.as_ref().or(self.ended.as_ref().map(|e| &e.at))
    }
}

impl UserView {
    /// Folds in one event of this user.
    pub fn apply(&mut self, e: &Accepted) {
        let at = Stamp {
            time: e.time.clone(),
            id: e.id.clone(),
        };
        let store = &e.gateway.store;
        if self.last_seen.as_ref().is_none_or(|s| at > *s) {
            self.last_seen = Some(at.clone());
            self.last_store = Some(store.clone());
        }
        if let Some(stage) = &e.stage {
            if self.stage.as_ref().is_none_or(|s| at > s.at) {
                self.stage = Some(Stage {
                    stage: stage.clone(),
                    store: store.clone(),
                    at: at.clone(),
                });
            }
        }
        match e.ty.as_str() {
            types::SKIN_DIAGNOSED if self.diagnosis.as_ref().is_none_or(|d| at > d.at) => {
                self.diagnosis = Some(Diagnosis {
                    store: store.clone(),
                    at,
                    data: e.data.clone(),
                });
            }
            types::VISIT_STARTED | types::VISIT_ENDED => {
                let Some(id) = e.data.get("visit").and_then(Value::as_str) else {
                    return;
                };
                let mut part = Visit {
                    visit: id.to_owned(),
                    store: store.clone(),
                    started: None,
                    ended: None,
                };
                if e.ty == types::VISIT_STARTED {
                    part.started = Some(at);
                } else {
                    part.ended = Some(Ended {
                        at,
                        dwell_s: e.data.get("dwell_s").and_then(Value::as_u64),
                        end_reason: e
                            .data
                            .get("end_reason")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                    });
                }
                self.merge_visit(part);
            }
            _ => {}
        }
    }

    fn merge_visit(&mut self, part: Visit) {
        match &mut self.visit {
            Some(v) if v.visit == part.visit => {
                if v.started.is_none() {
                    v.started = part.started;
                }
                if v.ended.is_none() {
                    v.ended = part.ended;
                }
            }
            Some(v) if v.key() >= part.key() => {}
            _ => self.visit = Some(part),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::GatewayKey;
    use proptest::prelude::*;
    use serde_json::json;

    fn ev(ty: &str, ms: u64, stage: Option<&str>, data: Value) -> Accepted {
        let time = format!(
            "2026-11-23T05:{:02}:{:02}.{:03}Z",
            ms / 60_000,
            ms / 1000 % 60,
            ms % 1000
        );
        Accepted {
            gateway: GatewayKey {
                tenant: "t".into(),
                store: "s1".into(),
                gateway: "gw".into(),
            },
            id: format!("id-{ms:08}"),
            seq: ms,
            ty: ty.into(),
            time,
            userid: Some("u1".into()),
            stage: stage.map(Into::into),
            evicted: None,
            data,
            body: String::new(),
        }
    }

    /// Two visits with a diagnosis in the second, as a gateway would make them.
    fn journey() -> Vec<Accepted> {
        vec![
            ev(
                types::VISIT_STARTED,
                1_000,
                Some("entry"),
                json!({"visit":"v1"}),
            ),
            ev(types::QR_SCANNED, 2_000, Some("browse"), json!({})),
            ev(
                types::VISIT_ENDED,
                3_000,
                Some("exit"),
                json!({"visit":"v1","dwell_s":2,"end_reason":"exit"}),
            ),
            ev(
                types::VISIT_STARTED,
                10_000,
                Some("entry"),
                json!({"visit":"v2"}),
            ),
            ev(
                types::SKIN_DIAGNOSED,
                11_000,
                Some("engage"),
                json!({"skin_type":"dry"}),
            ),
            ev(
                types::SKIN_DIAGNOSED,
                12_000,
                Some("engage"),
                json!({"skin_type":"oily"}),
            ),
            ev(types::DEVICE_STATUS, 13_000, None, json!({})),
        ]
    }

    #[test]
    fn in_order_the_view_is_the_latest_of_each() {
        let mut v = UserView::default();
        for e in journey() {
            v.apply(&e);
        }
        assert_eq!(v.stage.as_ref().unwrap().stage, "engage");
        let visit = v.visit.as_ref().unwrap();
        assert_eq!(visit.visit, "v2");
        assert!(visit.ended.is_none(), "v2 is open");
        assert_eq!(v.diagnosis.as_ref().unwrap().data["skin_type"], "oily");
        assert_eq!(v.last_seen.as_ref().unwrap().id, "id-00013000");
    }

    proptest! {
        /// Any arrival order, with repeats, folds to the in-order view.
        #[test]
        fn arrival_order_does_not_matter(order in Just(journey()).prop_shuffle(), repeat in 0usize..7) {
            let mut expected = UserView::default();
            for e in journey() {
                expected.apply(&e);
            }
            let mut v = UserView::default();
            for e in &order {
                v.apply(e);
            }
            v.apply(&order[repeat]);
            prop_assert_eq!(v, expected);
        }
    }
}
