//! From a stored event to what a journey engine receives: its event name, its properties and
//! the user attributes it sets. Pure. The defaults below are overridden per sink and per event
//! type in `hq.toml` (`[sink.map."<type>"]`), so a campaign can trigger on a stable name.
//!
//! Every forwarded event also carries the context `store`, `station` and `stage` as properties
//! (a property of the same name from `data` wins).

use std::collections::BTreeMap;

use phygate_proto::envelope::types;
use serde_json::{Map, Value};

/// How one event type is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `false`: not sent to this sink at all (the cursor passes over it).
    pub forward: bool,
    /// The engine's event name.
    pub event: String,
    /// JSON pointer into `data` to the object whose fields become the properties ("" = all
    /// of `data`).
    pub properties: String,
    /// User attribute name → JSON pointer into `data`; set on the user with the event.
    pub user_attributes: Vec<(String, String)>,
}

/// The types that describe the store's machinery, not a customer's journey: not forwarded
/// unless a sink's config says so.
const OPERATIONAL: [&str; 5] = [
    types::DEVICE_STATUS,
    types::OUTBOX_EVICTED,
    types::COMMAND_RESULT,
    types::CONFIG_APPLIED,
    types::CONFIG_REJECTED,
];

impl Rule {
    /// The default for `ty`: `store.visit.started` → `visit_started` with all of `data`;
    /// `store.skin.diagnosed` → `skin_diagnosed` with the measures as properties and the skin
    /// type as the user attribute `skin_type`; operational types off.
    pub fn default_for(ty: &str) -> Rule {
        let event = ty.strip_prefix("store.").unwrap_or(ty).replace('.', "_");
        let mut rule = Rule {
            forward: !OPERATIONAL.contains(&ty),
            event,
            properties: String::new(),
            user_attributes: Vec::new(),
        };
        if ty == types::SKIN_DIAGNOSED {
            rule.properties = "/measures".into();
            rule.user_attributes = vec![("skin_type".into(), "/skin_type".into())];
        }
        rule
    }
}

/// A sink's mapping: the defaults with its overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mapping {
    pub overrides: BTreeMap<String, Rule>,
}

/// An event ready for an engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// Its place in the journey store's commit order.
    pub n: u64,
    /// The CloudEvents `id` (Amplitude's `insert_id`, the webhook's idempotency key).
    pub id: String,
    pub name: String,
    /// As in the envelope: RFC 3339, UTC, milliseconds.
    pub time: String,
    pub time_ms: u64,
    pub userid: Option<String>,
    /// The visit's anonymous id when there is one, else the station (`store/station`): what
    /// an analytics engine counts an anonymous device by.
    pub device: String,
    pub properties: Map<String, Value>,
    pub user_attributes: Map<String, Value>,
    /// The stored event, unchanged (the webhook forwards it as is).
    pub body: Value,
}

impl Mapping {
    pub fn rule(&self, ty: &str) -> Rule {
        self.overrides
            .get(ty)
            .cloned()
            .unwrap_or_else(|| Rule::default_for(ty))
    }

    /// Maps the stored event `body` (committed as number `n`); `None` when its type is not
    /// forwarded or the body is not an envelope (the writer checked it, so that is a foreign
    /// row).
    pub fn map(&self, n: u64, body: &str) -> Option<Mapped> {
        let v: Value = serde_json::from_str(body).ok()?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let rule = self.rule(&s("type")?);
        if !rule.forward {
            return None;
        }
        let time = s("time")?;
        let time_ms = humantime::parse_rfc3339_weak(&time)
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_millis() as u64;
        let data = v.get("data").cloned().unwrap_or(Value::Null);
        let mut properties = match data.pointer(&rule.properties) {
            Some(Value::Object(m)) => m.clone(),
            Some(Value::Null) | None => Map::new(),
            Some(other) => Map::from_iter([("value".to_owned(), other.clone())]),
        };
        for (prop, key) in [
            ("store", "storeid"),
            ("station", "stationid"),
            ("stage", "stage"),
        ] {
            if let Some(x) = v.get(key).filter(|x| !x.is_null()) {
                properties.entry(prop).or_insert_with(|| x.clone());
            }
        }
        let user_attributes = rule
            .user_attributes
            .iter()
            .filter_map(|(name, ptr)| Some((name.clone(), data.pointer(ptr)?.clone())))
            .collect();
        let device = s("anonid").unwrap_or_else(|| {
            format!(
                "{}/{}",
                s("storeid").unwrap_or_default(),
                s("stationid").unwrap_or_default()
            )
        });
        Some(Mapped {
            n,
            id: s("id")?,
            name: rule.event,
            time,
            time_ms,
            userid: s("userid"),
            device,
            properties,
            user_attributes,
            body: v,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIAGNOSED: &str = r#"{"specversion":"1.0","id":"0193b6a6-55e0-7123-9abc-def012345678","source":"/stores/paris-01/stations/beauty-kiosk","type":"store.skin.diagnosed","time":"2026-11-23T05:09:30.777Z","datacontenttype":"application/json","storeid":"paris-01","stationid":"beauty-kiosk","gatewayid":"paris-01-gw1","seq":66,"userid":"u-8812","anonid":"5f1c9a0b3e7d2c48","idsource":"session","stage":"engage","clocksync":true,"data":{"model":"AX-200","measures":{"moisture":41.5,"pigmentation":18.2,"pores":3.0,"redness":7.1,"sebum":22.0,"wrinkles":2.0},"skin_type":"combination","device_seq":812,"device_time":"2026-11-23T05:01:02Z"}}"#;

    #[test]
    fn a_diagnosis_becomes_a_custom_event_with_the_measures_and_the_skin_type_attribute() {
        let m = Mapping::default().map(7, DIAGNOSED).unwrap();
        assert_eq!(m.name, "skin_diagnosed");
        assert_eq!(m.n, 7);
        assert_eq!(m.userid.as_deref(), Some("u-8812"));
        assert_eq!(m.properties["moisture"], 41.5);
        assert_eq!(m.properties["store"], "paris-01");
        assert_eq!(m.properties["stage"], "engage");
        assert!(!m.properties.contains_key("skin_type"));
        assert_eq!(m.user_attributes["skin_type"], "combination");
        assert_eq!(m.time_ms, 1_795_410_570_777);
        assert_eq!(m.device, "5f1c9a0b3e7d2c48");
    }

    #[test]
    fn operational_types_are_not_forwarded_unless_configured() {
        let body = r#"{"id":"x","type":"store.device.status","time":"2026-11-23T05:09:30.777Z","storeid":"s","stationid":"k","data":{"state":"ok"}}"#;
        let mut mapping = Mapping::default();
        assert!(mapping.map(1, body).is_none());
        mapping.overrides.insert(
            "store.device.status".into(),
            Rule {
                forward: true,
                event: "kiosk_health".into(),
                properties: String::new(),
                user_attributes: vec![],
            },
        );
        let m = mapping.map(1, body).unwrap();
        assert_eq!(m.name, "kiosk_health");
        assert_eq!(m.properties["state"], "ok");
        assert_eq!(
            m.device, "s/k",
            "an event without a visit counts by its station"
        );
    }
}
