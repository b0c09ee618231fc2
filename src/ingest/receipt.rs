//! Idempotency receipts: what a post created, kept in the outbox's state table under the
//! post's key and written in the same transaction as each of its events. A repeated post finds
//! the receipt and gets the same answer; nothing new is created.
//!
//! Keys, all under the device (ids hold no `/`), so one device's receipts are one prefix:
//! - `ingest/{device}/counts/{from}/{to}`: a counter's interval (canonical RFC 3339 UTC);
//! - `ingest/{device}/skin/{model}/{seq}`: a tablet analyzer's reading (docs/protocols.md §4).

use serde::{Deserialize, Serialize};

use crate::station::Direction;

/// One event a post created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub id: String,
    #[serde(rename = "type")]
    pub ty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub events: Vec<Created>,
    /// After this (Unix ms) the receipt is forgotten: the post would be new again.
    pub keep_until_ms: u64,
    /// A counts post's original counts `[in, out]`: if the gateway stopped between its two
    /// events, a retry completes the post as first sent, whatever the retry says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<[u64; 2]>,
}

impl Receipt {
    pub fn encode(&self) -> Vec<u8> {
        // Strings and integers only: serializing cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `None` for an unreadable value (treated as absent: at worst one duplicate).
    pub fn decode(bytes: &[u8]) -> Option<Receipt> {
        serde_json::from_slice(bytes).ok()
    }

    pub fn live(&self, now_ms: u64) -> bool {
        now_ms < self.keep_until_ms
    }

    /// The directions of a counts post that still need their event, with their counts.
    pub fn pending(&self) -> Vec<(Direction, u64)> {
        let [people_in, people_out] = self.counts.unwrap_or_default();
        [(Direction::In, people_in), (Direction::Out, people_out)]
            .into_iter()
            .filter(|&(d, n)| {
                n > 0
                    && !self
                        .events
                        .iter()
                        .any(|e| e.direction.as_deref() == Some(d.as_str()))
            })
            .collect()
    }
}

// The receipts' key formats live with every other saved-state key.
pub use crate::outbox::keys::{
    ingest_counts as counts_key, ingest_prefix as device_prefix, ingest_skin as skin_key,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_round_trips_and_knows_what_is_pending() {
        let mut r = Receipt {
            events: Vec::new(),
            keep_until_ms: 100,
            counts: Some([3, 1]),
        };
        assert_eq!(r.pending(), vec![(Direction::In, 3), (Direction::Out, 1)]);
        r.events.push(Created {
            id: "a".into(),
            ty: "store.gate.passed".into(),
            direction: Some("in".into()),
        });
        assert_eq!(r.pending(), vec![(Direction::Out, 1)]);
        assert_eq!(Receipt::decode(&r.encode()), Some(r.clone()));
        assert!(r.live(99) && !r.live(100));
        assert_eq!(Receipt::decode(b"not json"), None);
        let zero = Receipt {
            counts: Some([0, 0]),
            ..r
        };
        assert!(zero.pending().is_empty());
    }

    #[test]
    fn keys_of_one_device_share_its_prefix() {
        let p = device_prefix("pc-1");
        assert!(counts_key("pc-1", "a", "b").starts_with(&p));
        assert!(skin_key("pc-1", "AX-200", 7).starts_with(&p));
        assert!(!counts_key("pc-10", "a", "b").starts_with(&p));
    }
}
