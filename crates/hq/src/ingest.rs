//! Reading one MQTT message: a batch (a JSON array of CloudEvents) from a store's events topic,
//! checked event by event. Pure. An event that fails a check is *parked* (kept with its reason,
//! counted, never retried: a redelivery would fail the same way); the others go on.

use phygate_proto::envelope::{self, types, Envelope, Evicted};
use phygate_proto::topic;
use serde_json::Value;

/// Longest gateway id accepted (the gateway's config allows far less).
const MAX_GATEWAY_ID: usize = 128;

/// Who sent an event: a gateway is named within its store, and the store within its tenant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GatewayKey {
    pub tenant: String,
    pub store: String,
    pub gateway: String,
}

impl std::fmt::Display for GatewayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.store, self.gateway)
    }
}

/// A checked event.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub gateway: GatewayKey,
    /// The de-duplication key within the gateway: the `id` in canonical form (lower-case,
    /// hyphenated), so two spellings of one UUID are one event.
    pub id: String,
    pub seq: u64,
    pub ty: String,
    pub time: String,
    pub userid: Option<String>,
    pub stage: Option<String>,
    /// The ranges a `store.outbox.evicted` announces.
    pub evicted: Option<Vec<[u64; 2]>>,
    pub data: Value,
    /// The event as received (re-serialised).
    pub body: String,
}

/// Something HQ keeps aside instead of storing: why, and what.
#[derive(Debug, Clone, PartialEq)]
pub struct Parked {
    pub reason: String,
    pub body: String,
}

/// A gateway's `seq` report, from its status message ([`phygate_proto::status::SeqReport`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    pub gateway: GatewayKey,
    pub acked: u64,
    pub held_from: Option<u64>,
}

/// The `seq` report of a message on a store's status topic: `Ok(None)` when it carries none
/// (the Last Will, a gateway older than the report), `Err` with the reason when it does not
/// read. Not an event: nothing of it is stored or parked.
pub fn read_status(topic_name: &str, payload: &[u8]) -> Result<Option<Reported>, String> {
    let (tenant, store) = topic::parse_status(topic_name)
        .ok_or_else(|| format!("{topic_name:?} is not a store's status topic"))?;
    let status: phygate_proto::status::Status =
        serde_json::from_slice(payload).map_err(|e| format!("not a phygate status: {e}"))?;
    if status.gateway.is_empty() || status.gateway.len() > MAX_GATEWAY_ID {
        return Err(format!("gateway must be 1-{MAX_GATEWAY_ID} characters"));
    }
    Ok(status.report.and_then(|r| r.seq).map(|s| Reported {
        gateway: GatewayKey {
            tenant: tenant.to_owned(),
            store: store.to_owned(),
            gateway: status.gateway,
        },
        acked: s.acked,
        held_from: s.held_from,
    }))
}

/// Reads one message from `topic`. The whole message is parked when it is not a batch from a
/// store's events topic; otherwise each event is accepted or parked on its own.
pub fn read_batch(topic_name: &str, payload: &[u8]) -> Vec<Result<Accepted, Parked>> {
    let whole = |reason: String| {
        vec![Err(Parked {
            reason,
            body: String::from_utf8_lossy(payload).into_owned(),
        })]
    };
    let Some((tenant, store)) = topic::parse_events(topic_name) else {
        return whole(format!("{topic_name:?} is not a store's events topic"));
    };
    let items: Vec<Value> = match serde_json::from_slice(payload) {
        Ok(items) => items,
        Err(e) => return whole(format!("not a JSON array of events: {e}")),
    };
    items
        .into_iter()
        .map(|item| {
            let body = item.to_string();
            check(tenant, store, item)
                .map_err(|reason| Parked {
                    reason,
                    body: body.clone(),
                })
                .map(|a| Accepted { body, ..a })
        })
        .collect()
}

fn check(tenant: &str, store: &str, item: Value) -> Result<Accepted, String> {
    let e: Envelope<'static, Value> =
        serde_json::from_value(item).map_err(|e| format!("not a phygate event: {e}"))?;
    if e.specversion != envelope::SPECVERSION {
        return Err(format!("specversion {:?} is not 1.0", e.specversion));
    }
    // The broker's ACL lets a store publish only under its own prefix: the topic is the
    // store's proven identity, and an event claiming another store is refused.
    if e.storeid != store {
        return Err(format!(
            "storeid {:?} does not match the topic's store {store:?}",
            e.storeid
        ));
    }
    if e.gatewayid.is_empty() || e.gatewayid.len() > MAX_GATEWAY_ID {
        return Err(format!("gatewayid must be 1-{MAX_GATEWAY_ID} characters"));
    }
    let id = uuid::Uuid::parse_str(&e.id)
        .map_err(|err| format!("id {:?} is not a UUID: {err}", e.id))?
        .hyphenated()
        .to_string();
    if e.seq == 0 {
        return Err("seq 0: a gateway's seq starts at 1".into());
    }
    // Times compare as strings (the user view orders by them): only the one documented shape.
    if !envelope::is_event_time(&e.time) {
        return Err(format!(
            "time {:?} is not RFC 3339 UTC with three fractional digits",
            e.time
        ));
    }
    let evicted = if e.ty == types::OUTBOX_EVICTED {
        let d: Evicted = serde_json::from_value(e.data.clone())
            .map_err(|err| format!("store.outbox.evicted data: {err}"))?;
        if let Some([a, b]) = d.ranges.iter().find(|[a, b]| a > b || *b >= e.seq) {
            return Err(format!(
                "store.outbox.evicted range [{a}, {b}] is not below its own seq {}",
                e.seq
            ));
        }
        Some(d.ranges)
    } else {
        None
    };
    Ok(Accepted {
        gateway: GatewayKey {
            tenant: tenant.to_owned(),
            store: store.to_owned(),
            gateway: e.gatewayid.into_owned(),
        },
        id,
        seq: e.seq,
        ty: e.ty.into_owned(),
        time: e.time.into_owned(),
        userid: e.userid.map(|u| u.into_owned()),
        stage: e.stage.map(|s| s.into_owned()),
        evicted,
        data: e.data,
        body: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_yields_its_seq_report_and_a_last_will_none() {
        let topic = topic::status("acme", "s1");
        let online = br#"{"state":"online","gateway":"gw1","version":"0.1.0","since":"2026-12-07T00:00:00.000Z","report":{"seq":{"acked":42,"held_from":7}}}"#;
        assert_eq!(
            read_status(&topic, online),
            Ok(Some(Reported {
                gateway: GatewayKey {
                    tenant: "acme".into(),
                    store: "s1".into(),
                    gateway: "gw1".into()
                },
                acked: 42,
                held_from: Some(7)
            }))
        );
        let will = br#"{"state":"offline","gateway":"gw1","version":"0.1.0","since":"2026-12-07T00:00:00.000Z"}"#;
        assert_eq!(read_status(&topic, will), Ok(None));
        assert!(read_status(&topic, b"[]").is_err());
        assert!(read_status(&topic::events("acme", "s1"), online).is_err());
    }
    use serde_json::json;

    fn event(seq: u64) -> Value {
        json!({"specversion":"1.0","id":"0193B6A2-7C1E-7A3D-9F21-5B8E2C4D6A10","source":"/stores/s1/stations/k","type":"store.skin.diagnosed","time":"2026-11-23T05:01:02.123Z","datacontenttype":"application/json","storeid":"s1","stationid":"k","gatewayid":"gw1","seq":seq,"userid":"u1","idsource":"session","stage":"engage","clocksync":true,"data":{"model":"AX"}})
    }

    const TOPIC: &str = "phygate/v1/acme/s1/events";

    #[test]
    fn a_good_batch_is_accepted_with_a_canonical_id() {
        let payload = json!([event(1), event(2)]).to_string();
        let out = read_batch(TOPIC, payload.as_bytes());
        let a = out[0].as_ref().unwrap();
        assert_eq!(a.id, "0193b6a2-7c1e-7a3d-9f21-5b8e2c4d6a10");
        assert_eq!(a.gateway.to_string(), "acme/s1/gw1");
        assert_eq!((a.seq, a.userid.as_deref()), (1, Some("u1")));
        assert_eq!(out[1].as_ref().unwrap().seq, 2);
    }

    #[test]
    fn each_bad_event_is_parked_with_its_reason() {
        let mut other_store = event(3);
        other_store["storeid"] = json!("s2");
        let mut bad_time = event(4);
        bad_time["time"] = json!("2026-11-23T05:01:02Z");
        let mut bad_evicted = event(5);
        bad_evicted["type"] = json!("store.outbox.evicted");
        bad_evicted["data"] = json!({"ranges":[[2, 9]],"count":8,"policy":"bytes"});
        let payload = json!([event(1), other_store, bad_time, bad_evicted, {"x":1}]).to_string();
        let out = read_batch(TOPIC, payload.as_bytes());
        assert!(out[0].is_ok());
        let reasons: Vec<String> = out[1..]
            .iter()
            .map(|r| r.as_ref().unwrap_err().reason.clone())
            .collect();
        assert!(
            reasons[0].contains("does not match the topic's store"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].contains("three fractional digits"),
            "{reasons:?}"
        );
        assert!(reasons[2].contains("not below its own seq"), "{reasons:?}");
        assert!(reasons[3].contains("not a phygate event"), "{reasons:?}");
    }

    #[test]
    fn a_message_that_is_not_a_batch_is_parked_whole() {
        let out = read_batch(TOPIC, b"{\"not\":\"an array\"}");
        assert_eq!(out.len(), 1);
        assert!(out[0].as_ref().unwrap_err().reason.contains("JSON array"));
        let out = read_batch("phygate/v1/acme/s1/status", b"[]");
        assert!(out[0].as_ref().unwrap_err().reason.contains("events topic"));
    }
}
