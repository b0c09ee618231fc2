//! Reading a seq range again for a `replay` command (`crate::replay`): the rows of the range
//! the file still holds, live or acknowledged and kept by the replay window, as batches in the
//! uplink's format, and the sub-ranges it no longer holds (reclaimed after the window, evicted
//! for the quota or the age, or never acknowledged in order). Nothing here touches the
//! watermark or the sizes the uplink's batches were handed with: a replay is a read.

use rusqlite::params;

use super::{Batch, Store, StoreError};

/// What the file holds of a range.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// The rows found, in seq order, cut into batches.
    pub batches: Vec<Batch>,
    /// How many rows the batches carry.
    pub rows: u64,
    /// The sub-ranges (inclusive) with no row in the file.
    pub missing: Vec<[u64; 2]>,
}

impl Store {
    /// The rows of `from..=to` still in the file, in batches of at most `max_events` events
    /// and about `max_bytes` bytes, and the sub-ranges it no longer holds.
    pub fn replay_range(
        &self,
        from: u64,
        to: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Replay, StoreError> {
        let mut q = self.conn.prepare_cached(
            "SELECT seq, body FROM outbox WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
        )?;
        let mut rows = q.query(params![from as i64, to as i64])?;
        let mut out = Replay::default();
        let mut batch = Cutter::new(max_events, max_bytes);
        let mut seqs = Vec::new();
        while let Some(row) = rows.next()? {
            let seq = row.get::<_, i64>(0)? as u64;
            let body = row.get_ref(1)?.as_bytes().map_err(rusqlite::Error::from)?;
            if let Some(full) = batch.push(seq, body) {
                out.batches.push(full);
            }
            seqs.push(seq);
        }
        out.batches.extend(batch.finish());
        out.rows = seqs.len() as u64;
        out.missing = missing_ranges(from, to, &seqs);
        Ok(out)
    }
}

/// The sub-ranges of `from..=to` that `present` (increasing, within the range) leaves out.
pub(super) fn missing_ranges(from: u64, to: u64, present: &[u64]) -> Vec<[u64; 2]> {
    let mut out = Vec::new();
    let mut next = from;
    for &seq in present {
        if seq > next {
            out.push([next, seq - 1]);
        }
        next = seq + 1;
    }
    if next <= to {
        out.push([next, to]);
    }
    out
}

/// Cuts rows into batches as the uplink's reads do (`[` bodies `]`; a single larger row still
/// goes alone).
struct Cutter {
    max_events: usize,
    max_bytes: usize,
    current: Option<Batch>,
}

impl Cutter {
    fn new(max_events: usize, max_bytes: usize) -> Cutter {
        Cutter {
            max_events: max_events.max(1),
            max_bytes,
            current: None,
        }
    }

    /// Adds a row; returns the batch it closed, if it did not fit.
    fn push(&mut self, seq: u64, body: &[u8]) -> Option<Batch> {
        let full = match &self.current {
            Some(b)
                if b.count >= self.max_events
                    || b.payload.len() + body.len() + 1 > self.max_bytes =>
            {
                self.finish()
            }
            _ => None,
        };
        let b = self.current.get_or_insert_with(|| Batch {
            first: seq,
            last: seq,
            count: 0,
            payload: vec![b'['],
        });
        if b.count > 0 {
            b.payload.push(b',');
        }
        b.payload.extend_from_slice(body);
        b.last = seq;
        b.count += 1;
        full
    }

    fn finish(&mut self) -> Option<Batch> {
        let mut b = self.current.take()?;
        b.payload.push(b']');
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn gaps_at_the_edges_and_between_are_named() {
        assert_eq!(missing_ranges(1, 10, &[]), vec![[1, 10]]);
        assert_eq!(missing_ranges(1, 10, &[1, 2, 3]), vec![[4, 10]]);
        assert_eq!(missing_ranges(1, 10, &[5, 6, 10]), vec![[1, 4], [7, 9]]);
        assert!(missing_ranges(3, 4, &[3, 4]).is_empty());
    }

    #[test]
    fn batches_are_json_arrays_within_the_limits() {
        let mut c = Cutter::new(2, 1024);
        assert!(c.push(1, b"{\"a\":1}").is_none());
        assert!(c.push(2, b"{\"a\":2}").is_none());
        let full = c.push(3, b"{\"a\":3}").unwrap();
        assert_eq!((full.first, full.last, full.count), (1, 2, 2));
        let v: serde_json::Value = serde_json::from_slice(&full.payload).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        let last = c.finish().unwrap();
        assert_eq!((last.first, last.last, last.count), (3, 3, 1));
        assert_eq!(last.payload, b"[{\"a\":3}]");
    }

    proptest! {
        /// The missing ranges and the present seqs partition the asked range exactly.
        #[test]
        fn present_and_missing_partition_the_range(
            from in 1u64..50,
            len in 0u64..80,
            present in proptest::collection::btree_set(1u64..140, 0..60),
        ) {
            let to = from + len;
            let present: Vec<u64> = present.into_iter().filter(|s| (from..=to).contains(s)).collect();
            let missing = missing_ranges(from, to, &present);
            let mut all: BTreeSet<u64> = present.iter().copied().collect();
            for [a, b] in &missing {
                prop_assert!(a <= b);
                for s in *a..=*b {
                    prop_assert!(all.insert(s), "{} twice", s);
                }
            }
            prop_assert_eq!(all, (from..=to).collect::<BTreeSet<u64>>());
            // Ranges are separated by a present seq: never adjacent.
            for w in missing.windows(2) {
                prop_assert!(w[0][1] + 1 < w[1][0]);
            }
        }
    }
}
