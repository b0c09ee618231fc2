//! What the stores answer: the events their gateways publish on `…/{store}/events`, read back
//! by a control that waits for a `store.command.result` or a `store.config.applied`/`rejected`.

use serde_json::Value;

/// One event from a store, reduced to what a control reads.
#[derive(Debug, Clone)]
pub struct Answer {
    pub store: String,
    pub kind: String,
    pub data: Value,
}

/// The events of one message on an events topic: a CloudEvents batch (a JSON array), or one
/// event. Anything else is not an answer and is skipped: the control is only a reader here.
pub fn parse(topic: &str, payload: &[u8]) -> Vec<Answer> {
    let Some((_, store)) = phygate_proto::topic::parse_events(topic) else {
        return Vec::new();
    };
    let events = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Array(events)) => events,
        Ok(event @ Value::Object(_)) => vec![event],
        _ => return Vec::new(),
    };
    events
        .into_iter()
        .filter_map(|mut e| {
            Some(Answer {
                store: store.to_owned(),
                kind: e.get("type")?.as_str()?.to_owned(),
                data: e.get_mut("data").map(Value::take).unwrap_or(Value::Null),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_gives_each_event_with_its_store() {
        let batch = br#"[{"type":"store.command.result","data":{"command_id":"c1","outcome":"done"}},{"type":"store.qr.scanned"}]"#;
        let got = parse("phygate/v1/acme/paris-01/events", batch);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].store, "paris-01");
        assert_eq!(got[0].data["command_id"], "c1");
        assert!(parse("phygate/v1/acme/paris-01/status", batch).is_empty());
        assert!(parse("phygate/v1/acme/paris-01/events", b"not json").is_empty());
    }
}
