//! Per gateway `seq` accounting: which sequence numbers HQ has not seen, and which of those
//! are lost. Pure: the caller passes the time; the writer persists the state with the events.
//!
//! `seq` is dense per gateway (docs/events.md), so after de-duplication a missing number is an
//! eviction the gateway announced (`store.outbox.evicted` names its ranges), an event still on
//! its way, or a loss. Events can arrive out of `seq` order (a share group splits a store's
//! batches between consumers; a killed consumer's batches come back when its session resumes),
//! so a hole is not a loss at once:
//!
//! - A hole opens when an event above it is committed, and is *pending* from that moment.
//! - It is declared **lost** once it has stayed open for `grace` (the gateway's later events
//!   have been committed for that long): [`GatewaySeq::expire`]. The grace bounds how late an
//!   out-of-order batch may be and still not raise the alarm; a batch that arrives later still
//!   is stored, and its numbers move from lost to `late` (the loss is retracted and counted).
//! - An announced eviction closes the matching part of a hole, pending or lost, at any time.
//! - Numbers below the first one HQ ever saw from a gateway are not HQ's to miss (the gateway
//!   ran before HQ subscribed) unless an event below it arrives: then the span grows down and
//!   the numbers between become a pending hole like any other.
//! - The ends of the span: no received event shows the last events before a gateway goes
//!   quiet missing, nor the first ones of a gateway HQ never heard from. The gateway's status
//!   report does ([`GatewaySeq::reported`]: acknowledged by the broker through `acked`, held
//!   from `held_from`): what lies beyond either end becomes a pending hole.
//!
//! **Repair.** A broker may acknowledge an event (PUBACK) and then lose it before HQ has it
//! (mosquitto restarted without persistence, a NATS stream leader killed before it stored),
//! and the gateway keeps acknowledged rows for its `[outbox] replay_window`. So a hole pending
//! for `repair.after` (well under the grace) is asked for again: [`GatewaySeq::repairs`] picks
//! the holes due, at most [`RepairRule::max_ranges`] per gateway and sweep, each range at most
//! [`RepairRule::max_seqs`] (a larger hole is split), and records the request in the hole
//! (`asks`, `asked_ms`), which is stored with the accounting: consumers that share the work
//! see one another's requests and do not ask for the same hole again before `retry`. A hole
//! asked for `max_asks` times waits for the grace like any other. Numbers that then arrive
//! out of an asked hole count as `recovered`; the sub-ranges the gateway answers it no longer
//! holds are declared lost at once ([`GatewaySeq::not_held`]).
//!
//! **The group's lag.** A fixed grace is not enough when the consumers of a share group lag:
//! the broker queues each consumer's share of a store's messages separately, so a consumer
//! that is minutes behind still holds numbers that another has long passed. So the grace is
//! counted on top of the group's worst lag ([`group_lag_ms`]): each consumer records, about
//! once a second, how old (by the gateways' clocks) the freshest event it committed since its
//! previous record is at the record, or 0 when it is connected and nothing came (its queue is drained).
//! A missing number was published before the event that opened its hole; if a consumer holds
//! it, that consumer is busy since then, and its queue is first in, first out, so every record
//! it made since shows a lag at least as old as that number. A consumer that stops recording
//! (killed, or cut off from the broker) may hold anything published since its last record, so
//! its lag grows with the time since: [`ConsumerBeat::lag_at`]. It counts until the broker
//! would no longer give its messages back to it: `holds_ms` after its last record (MQTT: the
//! session expiry, after which the broker drops what it queued for it; JetStream: `ack_wait`,
//! after which its unacknowledged messages go to the other workers).

use std::collections::BTreeMap;

/// A run of missing numbers, `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hole {
    pub first: u64,
    pub last: u64,
    /// When the hole opened (an event above it was committed), ms since the Unix epoch.
    pub since_ms: u64,
    pub lost: bool,
    /// How often a replay of it was asked for, and when last (ms; 0: never).
    pub asks: u32,
    pub asked_ms: u64,
}

impl Hole {
    fn len(&self) -> u64 {
        self.last - self.first + 1
    }
}

/// One gateway's accounting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewaySeq {
    /// `(lowest, highest)` number seen; `None` before the first event.
    pub span: Option<(u64, u64)>,
    /// Open holes by their first number; never overlapping, never adjacent to a seen number.
    pub holes: BTreeMap<u64, Hole>,
    /// Numbers announced as evicted within the span.
    pub evicted: u64,
    /// Numbers that arrived (or were announced) after being declared lost.
    pub late: u64,
    /// Announced ranges below the span, kept until the span grows down to them.
    pub early: Vec<[u64; 2]>,
    /// Numbers that arrived out of a hole after a replay of it was asked for.
    pub recovered: u64,
}

/// What removing numbers from the holes found there.
#[derive(Debug, Default, PartialEq, Eq)]
struct Taken {
    pending: u64,
    lost: u64,
    /// Of the pending ones, those in holes a replay was asked for.
    asked: u64,
}

/// When and how much to ask a gateway to replay (`[repair]` in hq.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairRule {
    /// A hole is asked for once it has been pending this long (ms).
    pub after_ms: u64,
    /// Between the first two asks for the same hole (ms); it doubles with each ask after, so
    /// the asks reach a store whose command link is down for a while and do not hammer one
    /// that will never answer.
    pub retry_ms: u64,
    /// Asks per hole at most; then it waits for the grace.
    pub max_asks: u32,
    /// Seqs per request at most (the gateway refuses more than `MAX_REPLAY_SEQS`).
    pub max_seqs: u64,
    /// Requests per gateway and sweep at most.
    pub max_ranges: usize,
}

impl RepairRule {
    /// The wait after a hole's `asks`-th ask (1 or more) before the next.
    pub fn retry_after(&self, asks: u32) -> u64 {
        self.retry_ms
            .saturating_mul(1 << asks.saturating_sub(1).min(16))
    }
}

impl GatewaySeq {
    /// Event `seq` was committed at `now_ms` (a duplicate changes nothing). Returns how many
    /// numbers this retracted from the lost ones (0 or 1).
    pub fn receive(&mut self, seq: u64, now_ms: u64) -> u64 {
        let Some((low, high)) = self.span else {
            self.span = Some((seq, seq));
            return 0;
        };
        if seq > high {
            self.open(high + 1, seq - 1, now_ms);
            self.span = Some((low, seq));
            0
        } else if seq < low {
            self.open(seq + 1, low - 1, now_ms);
            self.span = Some((seq, high));
            let early = std::mem::take(&mut self.early);
            self.announce(&early)
        } else {
            let t = self.take(seq, seq);
            self.late += t.lost;
            self.recovered += t.asked;
            t.lost
        }
    }

    /// The gateway reported (the `seq` report of its status message) that the broker
    /// acknowledged every number up to `acked`, and that it still holds those from
    /// `held_from`. Numbers beyond either end of the span, which no received event could show
    /// missing, become a pending hole opened at `now_ms`, asked for and, failing that, lost
    /// like any other. Inside the span nothing changes.
    pub fn reported(&mut self, acked: u64, held_from: Option<u64>, now_ms: u64) {
        let held_from = held_from.filter(|&f| f >= 1 && f <= acked);
        let (mut low, mut high) = match (self.span, held_from) {
            (Some(span), _) => span,
            (None, Some(from)) => {
                // Never heard from it: all it holds up to `acked` is missing.
                self.open(from, acked, now_ms);
                (from, acked)
            }
            (None, None) => return,
        };
        if acked > high {
            self.open(high + 1, acked, now_ms);
            high = acked;
        }
        if let Some(from) = held_from.filter(|&f| f < low) {
            self.open(from, low - 1, now_ms);
            low = from;
        }
        let grew_down = self.span.is_none_or(|(l, _)| low < l);
        self.span = Some((low, high));
        if grew_down {
            let early = std::mem::take(&mut self.early);
            self.announce(&early);
        }
    }

    /// Picks the pending holes due for a replay request by `now_ms` and records the request
    /// in them; returns the ranges to ask for (see the module doc).
    pub fn repairs(&mut self, now_ms: u64, rule: &RepairRule) -> Vec<[u64; 2]> {
        let due = |h: &Hole| {
            !h.lost
                && now_ms.saturating_sub(h.since_ms) >= rule.after_ms
                && h.asks < rule.max_asks
                && (h.asks == 0 || now_ms.saturating_sub(h.asked_ms) >= rule.retry_after(h.asks))
        };
        let picked: Vec<Hole> = self
            .holes
            .values()
            .filter(|h| due(h))
            .take(rule.max_ranges)
            .copied()
            .collect();
        let mut out = Vec::with_capacity(picked.len());
        for h in picked {
            let last = h.last.min(h.first + rule.max_seqs.max(1) - 1);
            if last < h.last {
                // The rest is a hole of its own, asked for on its own turn.
                self.holes.insert(
                    last + 1,
                    Hole {
                        first: last + 1,
                        ..h
                    },
                );
            }
            self.holes.insert(
                h.first,
                Hole {
                    last,
                    asks: h.asks + 1,
                    asked_ms: now_ms,
                    ..h
                },
            );
            out.push([h.first, last]);
        }
        out
    }

    /// The gateway answered that it no longer holds `ranges`: their pending numbers are lost
    /// now, without waiting for the grace. Returns the ranges newly declared lost.
    pub fn not_held(&mut self, ranges: &[[u64; 2]]) -> Vec<[u64; 2]> {
        let mut out = Vec::new();
        for &[a, b] in ranges.iter().filter(|[a, b]| a <= b) {
            let cut: Vec<Hole> = self
                .holes
                .range(..=b)
                .rev()
                .map(|(_, h)| *h)
                .take_while(|h| h.last >= a)
                .filter(|h| !h.lost)
                .collect();
            for h in cut.into_iter().rev() {
                let (x, y) = (h.first.max(a), h.last.min(b));
                self.holes.remove(&h.first);
                if h.first < x {
                    self.holes.insert(h.first, Hole { last: x - 1, ..h });
                }
                if h.last > y {
                    self.holes.insert(y + 1, Hole { first: y + 1, ..h });
                }
                self.holes.insert(
                    x,
                    Hole {
                        first: x,
                        last: y,
                        lost: true,
                        ..h
                    },
                );
                out.push([x, y]);
            }
        }
        out
    }

    /// The gateway announced `ranges` (inclusive) as evicted by its quota policy: they are not
    /// losses. Returns how many numbers this retracted from the lost ones.
    pub fn announce(&mut self, ranges: &[[u64; 2]]) -> u64 {
        let Some((low, high)) = self.span else {
            self.early.extend(ranges.iter().filter(|[a, b]| a <= b));
            return 0;
        };
        let mut retracted = 0;
        for &[a, b] in ranges.iter().filter(|[a, b]| a <= b) {
            if a < low {
                self.early.push([a, b.min(low - 1)]);
            }
            let (a, b) = (a.max(low), b.min(high));
            if a <= b {
                let t = self.take(a, b);
                self.evicted += t.pending + t.lost;
                self.late += t.lost;
                retracted += t.lost;
            }
        }
        retracted
    }

    /// Declares lost every pending hole open for `grace_ms` or more by `now_ms`; returns the
    /// newly lost ranges.
    pub fn expire(&mut self, now_ms: u64, grace_ms: u64) -> Vec<[u64; 2]> {
        let mut out = Vec::new();
        for h in self.holes.values_mut() {
            if !h.lost && now_ms.saturating_sub(h.since_ms) >= grace_ms {
                h.lost = true;
                out.push([h.first, h.last]);
            }
        }
        out
    }

    /// How many numbers are lost now.
    pub fn lost(&self) -> u64 {
        self.holes.values().filter(|h| h.lost).map(Hole::len).sum()
    }

    /// How many numbers are missing but not yet lost.
    pub fn pending(&self) -> u64 {
        self.holes.values().filter(|h| !h.lost).map(Hole::len).sum()
    }

    /// The lost ranges, in order.
    pub fn lost_ranges(&self) -> Vec<[u64; 2]> {
        self.ranges(true)
    }

    /// The pending ranges (missing, not yet lost), in order.
    pub fn pending_ranges(&self) -> Vec<[u64; 2]> {
        self.ranges(false)
    }

    fn ranges(&self, lost: bool) -> Vec<[u64; 2]> {
        self.holes
            .values()
            .filter(|h| h.lost == lost)
            .map(|h| [h.first, h.last])
            .collect()
    }

    fn open(&mut self, first: u64, last: u64, now_ms: u64) {
        if first <= last {
            self.holes.insert(
                first,
                Hole {
                    first,
                    last,
                    since_ms: now_ms,
                    lost: false,
                    asks: 0,
                    asked_ms: 0,
                },
            );
        }
    }

    /// Removes `a..=b` from the holes, splitting those it cuts.
    fn take(&mut self, a: u64, b: u64) -> Taken {
        let cut: Vec<Hole> = self
            .holes
            .range(..=b)
            .rev()
            .map(|(_, h)| *h)
            .take_while(|h| h.last >= a)
            .collect();
        let mut taken = Taken::default();
        for h in cut {
            self.holes.remove(&h.first);
            let n = h.last.min(b) - h.first.max(a) + 1;
            if h.lost {
                taken.lost += n;
            } else {
                taken.pending += n;
                if h.asks > 0 {
                    taken.asked += n;
                }
            }
            if h.first < a {
                self.holes.insert(h.first, Hole { last: a - 1, ..h });
            }
            if h.last > b {
                self.holes.insert(b + 1, Hole { first: b + 1, ..h });
            }
        }
        taken
    }
}

/// One consumer's progress, as it records it (its heartbeat) in the journey store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerBeat {
    /// When it was recorded, ms since the Unix epoch.
    pub at_ms: u64,
    /// How old, at `at_ms`, the freshest event committed since the previous record is
    /// (`at_ms` minus the event's `time`); 0 when nothing came while connected (drained).
    pub lag_ms: u64,
    /// How long after `at_ms` the broker may still hold messages for this consumer.
    pub holds_ms: u64,
}

impl ConsumerBeat {
    /// The consumer's lag at `now_ms`: what it recorded plus the time since, or `None` once
    /// the broker no longer holds anything for it. The time since counts for a live consumer
    /// too (at most a second or two): it covers what it took in since its record.
    pub fn lag_at(&self, now_ms: u64) -> Option<u64> {
        let since = now_ms.saturating_sub(self.at_ms);
        (since < self.holds_ms).then_some(self.lag_ms.saturating_add(since))
    }
}

/// The group's worst lag at `now_ms`: a hole is declared lost only once it has been open for
/// the grace plus this (see the module's doc).
pub fn group_lag_ms(beats: &[ConsumerBeat], now_ms: u64) -> u64 {
    beats
        .iter()
        .filter_map(|b| b.lag_at(now_ms))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const GRACE: u64 = 1_000;

    fn set(ranges: &[[u64; 2]]) -> BTreeSet<u64> {
        ranges.iter().flat_map(|[a, b]| *a..=*b).collect()
    }

    #[test]
    fn a_hole_is_pending_until_the_grace_then_lost() {
        let mut g = GatewaySeq::default();
        for s in [1, 2, 5, 6] {
            g.receive(s, 0);
        }
        assert_eq!((g.pending(), g.lost()), (2, 0));
        assert!(g.expire(GRACE - 1, GRACE).is_empty());
        assert_eq!(g.expire(GRACE, GRACE), vec![[3, 4]]);
        assert_eq!((g.pending(), g.lost()), (0, 2));
        assert!(g.expire(10 * GRACE, GRACE).is_empty(), "reported once");
    }

    #[test]
    fn a_late_arrival_retracts_its_loss() {
        let mut g = GatewaySeq::default();
        for s in [1, 5] {
            g.receive(s, 0);
        }
        g.expire(GRACE, GRACE);
        assert_eq!(g.receive(3, GRACE + 1), 1);
        assert_eq!(g.lost_ranges(), vec![[2, 2], [4, 4]]);
        assert_eq!(g.late, 1);
    }

    #[test]
    fn an_announced_eviction_is_not_a_loss() {
        let mut g = GatewaySeq::default();
        for s in [1, 2, 9, 10] {
            g.receive(s, 0);
        }
        g.announce(&[[3, 5], [7, 8]]);
        g.expire(GRACE, GRACE);
        assert_eq!(g.lost_ranges(), vec![[6, 6]]);
        assert_eq!(g.evicted, 5);
    }

    #[test]
    fn an_announcement_below_the_first_number_waits_for_the_span() {
        let mut g = GatewaySeq::default();
        g.receive(50, 0);
        g.announce(&[[20, 30]]);
        g.receive(10, 0);
        g.expire(GRACE, GRACE);
        assert_eq!(g.lost_ranges(), vec![[11, 19], [31, 49]]);
    }

    const RULE: RepairRule = RepairRule {
        after_ms: 100,
        retry_ms: 300,
        max_asks: 2,
        max_seqs: 4,
        max_ranges: 2,
    };

    #[test]
    fn a_pending_hole_is_asked_for_after_the_delay_then_again_after_the_retry() {
        let mut g = GatewaySeq::default();
        for s in [1, 4, 10] {
            g.receive(s, 0);
        }
        assert!(g.repairs(99, &RULE).is_empty(), "not before the delay");
        assert_eq!(
            g.repairs(100, &RULE),
            vec![[2, 3], [5, 8]],
            "capped and split"
        );
        assert_eq!(
            g.repairs(150, &RULE),
            vec![[9, 9]],
            "the split's rest, its own turn"
        );
        assert!(
            g.repairs(399, &RULE).is_empty(),
            "asked; waits for the retry"
        );
        assert_eq!(g.repairs(400, &RULE), vec![[2, 3], [5, 8]]);
        assert_eq!(g.repairs(450, &RULE), vec![[9, 9]]);
        assert!(g.repairs(10_000, &RULE).is_empty(), "at most max_asks asks");
        // Replayed numbers arrive: counted as recovered, not as late.
        g.receive(2, 500);
        g.receive(3, 500);
        assert_eq!((g.recovered, g.late), (2, 0));
        // Still lost after the grace if the replay never comes.
        assert_eq!(g.expire(10_000, GRACE), vec![[5, 8], [9, 9]]);
    }

    #[test]
    fn the_wait_between_asks_doubles() {
        let rule = RepairRule {
            max_asks: 4,
            max_ranges: 1,
            ..RULE
        };
        let mut g = GatewaySeq::default();
        g.receive(1, 0);
        g.receive(3, 0);
        let asks: Vec<u64> = (0..5_000)
            .step_by(10)
            .filter(|&t| !g.repairs(t, &rule).is_empty())
            .collect();
        let r = rule.retry_ms;
        let a = rule.after_ms;
        assert_eq!(asks, vec![a, a + r, a + 3 * r, a + 7 * r]);
    }

    #[test]
    fn what_the_gateway_no_longer_holds_is_lost_at_once() {
        let mut g = GatewaySeq::default();
        for s in [1, 10] {
            g.receive(s, 0);
        }
        assert_eq!(g.not_held(&[[4, 6]]), vec![[4, 6]]);
        assert_eq!(g.lost_ranges(), vec![[4, 6]]);
        assert_eq!(g.pending(), 5);
        assert!(g.not_held(&[[4, 6]]).is_empty(), "declared once");
        // A late arrival still retracts it.
        assert_eq!(g.receive(5, 1), 1);
        assert_eq!(g.lost_ranges(), vec![[4, 4], [6, 6]]);
    }

    #[test]
    fn a_report_opens_the_numbers_beyond_the_span_and_nothing_inside() {
        let mut g = GatewaySeq::default();
        g.reported(10, None, 0);
        assert_eq!(g.span, None, "nothing held to ask for: nothing known");
        for s in 5..=8 {
            g.receive(s, 0);
        }
        // The store went quiet after 12 (9..=12 lost by the broker); it holds from 3.
        g.reported(12, Some(3), 100);
        assert_eq!(g.span, Some((3, 12)));
        assert_eq!(set(&g.pending_ranges()), set(&[[3, 4], [9, 12]]));
        // A stale report changes nothing.
        g.reported(7, Some(3), 200);
        assert_eq!(set(&g.pending_ranges()), set(&[[3, 4], [9, 12]]));
        // What arrives fills the holes; the rest is lost after the grace.
        for s in [3, 4, 9, 10] {
            assert_eq!(g.receive(s, 300), 0);
        }
        assert_eq!(g.expire(100 + 5_000, 5_000), vec![[11, 12]]);
        assert_eq!(g.lost(), 2);
    }

    #[test]
    fn a_report_from_a_gateway_never_heard_from_opens_all_it_holds() {
        let mut g = GatewaySeq::default();
        g.announce(&[[1, 4]]);
        g.reported(9, Some(2), 0);
        assert_eq!(g.span, Some((2, 9)));
        // 2..=4 were announced evicted; 5..=9 are pending.
        assert_eq!(g.pending_ranges(), vec![[5, 9]]);
        assert_eq!(g.evicted, 3);
    }

    #[test]
    fn duplicates_change_nothing() {
        let mut g = GatewaySeq::default();
        for s in [1, 3, 3, 1, 3] {
            g.receive(s, 0);
        }
        assert_eq!(g.holes.len(), 1);
        assert_eq!(g.pending(), 1);
    }

    /// An arrival order: each delivered number (some twice), the announcement riding on the
    /// last number as the gateway's evicted event does, and a time for each step.
    /// (highest seq, dropped, announced, arrival steps of (seq, carries the announcement)).
    type Scenario = (u64, BTreeSet<u64>, BTreeSet<u64>, Vec<(u64, bool)>);

    fn scenario() -> impl Strategy<Value = Scenario> {
        (3u64..120).prop_flat_map(|n| {
            let inner = proptest::collection::btree_set(2..n, 0..(n as usize / 2));
            (Just(n), inner.clone(), inner).prop_flat_map(|(n, dropped, announced)| {
                let announced: BTreeSet<u64> = announced.intersection(&dropped).copied().collect();
                let mut steps: Vec<(u64, bool)> = (1..=n)
                    .filter(|s| !dropped.contains(s))
                    .map(|s| (s, false))
                    .collect();
                let dups: Vec<(u64, bool)> = steps.iter().step_by(3).copied().collect();
                steps.extend(dups);
                steps.push((n, true));
                (
                    Just(n),
                    Just(dropped),
                    Just(announced),
                    Just(steps).prop_shuffle(),
                )
            })
        })
    }

    fn ranges(s: &BTreeSet<u64>) -> Vec<[u64; 2]> {
        s.iter().map(|&x| [x, x]).collect()
    }

    proptest! {
        /// Repair requests interleaved with any arrivals: never a number outside a hole, never
        /// more than the caps, and at the end the same numbers are lost as without them; the
        /// numbers asked for that arrived after the ask are counted recovered.
        #[test]
        fn repairs_ask_only_for_missing_numbers_and_change_no_outcome((_n, dropped, announced, steps) in scenario(), every in 1usize..6) {
            let mut g = GatewaySeq::default();
            let mut asked_and_open: BTreeSet<u64> = BTreeSet::new();
            for (i, (seq, announces)) in steps.iter().enumerate() {
                g.receive(*seq, i as u64 * 10);
                if *announces {
                    g.announce(&ranges(&announced));
                }
                if i % every == 0 {
                    let missing: BTreeSet<u64> = g.holes.values().flat_map(|h| h.first..=h.last).collect();
                    let asked = g.repairs(i as u64 * 10, &RULE);
                    prop_assert!(asked.len() <= RULE.max_ranges);
                    for [a, b] in asked {
                        prop_assert!(b - a < RULE.max_seqs);
                        for s in a..=b {
                            prop_assert!(missing.contains(&s));
                            asked_and_open.insert(s);
                        }
                    }
                }
            }
            g.expire(u64::MAX, GRACE);
            prop_assert_eq!(set(&g.lost_ranges()), &dropped - &announced);
            prop_assert!(g.recovered <= asked_and_open.len() as u64);
        }

        /// Whatever the arrival order and the duplicates, once everything has arrived and the
        /// grace has passed, the lost numbers are exactly the dropped ones nobody announced.
        #[test]
        fn lost_is_exactly_dropped_minus_announced((_n, dropped, announced, steps) in scenario()) {
            let mut g = GatewaySeq::default();
            for (i, (seq, announces)) in steps.iter().enumerate() {
                g.receive(*seq, i as u64);
                if *announces {
                    g.announce(&ranges(&announced));
                }
            }
            prop_assert_eq!(g.pending(), (&dropped - &announced).len() as u64);
            g.expire(u64::MAX, GRACE);
            let expected: BTreeSet<u64> = &dropped - &announced;
            prop_assert_eq!(set(&g.lost_ranges()), expected);
            prop_assert_eq!(g.evicted, announced.len() as u64);
            prop_assert_eq!(g.late, 0);
        }

        /// Declaring losses too early (mid-stream) is corrected by the late arrivals: the end
        /// state is the same, and every retraction is counted as late.
        #[test]
        fn early_expiry_is_retracted_by_late_arrivals((_n, dropped, announced, steps) in scenario(), cut in 0usize..200) {
            let mut g = GatewaySeq::default();
            let cut = cut % (steps.len() + 1);
            let mut retracted = 0;
            for (i, (seq, announces)) in steps.iter().enumerate() {
                if i == cut {
                    g.expire(u64::MAX, 0);
                }
                retracted += g.receive(*seq, i as u64);
                if *announces {
                    retracted += g.announce(&ranges(&announced));
                }
            }
            g.expire(u64::MAX, GRACE);
            prop_assert_eq!(set(&g.lost_ranges()), &dropped - &announced);
            prop_assert_eq!(g.late, retracted);
        }
    }

    #[test]
    fn a_lagging_consumer_postpones_the_loss_and_a_dead_one_counts_until_its_session_ends() {
        let live = ConsumerBeat {
            at_ms: 10_000,
            lag_ms: 4_000,
            holds_ms: 60_000,
        };
        let drained = ConsumerBeat { lag_ms: 0, ..live };
        assert_eq!(group_lag_ms(&[drained, live], 10_500), 4_500);
        // A hole opened at 6,000 with a grace of 1,000: at 10,500 the fixed grace alone
        // would declare it; the group's lag keeps it pending.
        let mut g = GatewaySeq::default();
        g.receive(1, 0);
        g.receive(3, 6_000);
        assert!(g
            .expire(10_500, GRACE + group_lag_ms(&[drained, live], 10_500))
            .is_empty());
        // Dead since 10,000: its lag grows with the time since, until its session ends.
        assert_eq!(group_lag_ms(&[live], 69_999), 4_000 + 59_999);
        assert_eq!(group_lag_ms(&[live], 70_000), 0);
        assert_eq!(group_lag_ms(&[], 70_000), 0);
    }

    /// Two consumers share one gateway's messages, each working first in, first out through
    /// its own queue at its own pace (one may be far slower), recording a beat about once a
    /// second after a commit or when idle, one of them killed for a while and then resuming
    /// its session. Ms by ms.
    fn share(
        n: u64,
        gap: u64,
        to: &[u8],
        service: [u64; 2],
        kill: Option<(u64, u64)>,
        grace: u64,
        with_group_lag: bool,
    ) -> (GatewaySeq, BTreeSet<u64>) {
        const BEAT: u64 = 1_000;
        let mut g = GatewaySeq::default();
        let mut queues: [std::collections::VecDeque<u64>; 2] = Default::default();
        let mut busy: [Option<(u64, u64)>; 2] = [None, None];
        let mut lag_since: [Option<u64>; 2] = [None, None];
        let mut next_beat = [0u64; 2];
        // Each joins the group with a beat before it takes a message (`JourneyStore::join`).
        let joined = ConsumerBeat {
            at_ms: 0,
            lag_ms: 0,
            holds_ms: u64::MAX,
        };
        let mut beats: [Option<ConsumerBeat>; 2] = [Some(joined), Some(joined)];
        let publish = |seq: u64| seq * gap;
        let dropped: BTreeSet<u64> = (1..=n)
            .filter(|s| to[*s as usize % to.len()] == 2)
            .collect();
        let mut t = 0u64;
        loop {
            if t % gap == 0 && t / gap >= 1 && t / gap <= n {
                let seq = t / gap;
                let c = to[seq as usize % to.len()];
                if c < 2 {
                    queues[c as usize].push_back(seq);
                }
            }
            for c in 0..2 {
                let frozen = c == 1 && kill.is_some_and(|(at, d)| t >= at && t < at + d);
                if frozen {
                    // Killed: what it was storing comes again, first, when it resumes, to a
                    // new process that has committed nothing yet.
                    if let Some((seq, _)) = busy[c].take() {
                        queues[c].push_front(seq);
                    }
                    lag_since[c] = None;
                    continue;
                }
                if let Some((seq, end)) = busy[c] {
                    if end == t {
                        g.receive(seq, t);
                        lag_since[c] = Some(lag_since[c].unwrap_or(0).max(publish(seq)));
                        busy[c] = None;
                    }
                }
                // As the writer: a beat after a commit, or when nothing is waiting (a
                // waiting message is committed first).
                let idle = queues[c].is_empty() || lag_since[c].is_some();
                if busy[c].is_none() && idle && t >= next_beat[c] {
                    beats[c] = Some(ConsumerBeat {
                        at_ms: t,
                        lag_ms: lag_since[c].take().map_or(0, |p| t - p),
                        holds_ms: u64::MAX,
                    });
                    next_beat[c] = t + BEAT;
                }
                if busy[c].is_none() {
                    if let Some(seq) = queues[c].pop_front() {
                        busy[c] = Some((seq, t + service[c]));
                    }
                }
            }
            if t % BEAT == 500 {
                let all: Vec<ConsumerBeat> = beats.iter().flatten().copied().collect();
                let lag = if with_group_lag {
                    group_lag_ms(&all, t)
                } else {
                    0
                };
                g.expire(t, grace + lag);
            }
            let done = t > n * gap && busy == [None, None] && queues.iter().all(|q| q.is_empty());
            if done {
                return (g, dropped);
            }
            t += 1;
        }
    }

    #[test]
    fn a_slow_consumer_alone_would_raise_a_false_loss_without_the_group_lag() {
        // The check on the simulation itself: with the grace alone, the same run declares
        // numbers lost that then arrive late.
        let to = [0u8, 1, 0, 0];
        let (g, _) = share(300, 10, &to, [2, 60], None, 500, true);
        assert_eq!(
            g.late, 0,
            "with the group lag nothing is declared lost too early"
        );
        let (g, _) = share(300, 10, &to, [2, 60], None, 500, false);
        assert!(
            g.late > 0,
            "the grace alone declared nothing too early: {g:?}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// However slow either consumer is, and across a kill and resume of one of them,
        /// nothing that arrives is ever declared lost first (no late event), and at the end
        /// the lost numbers are exactly the dropped ones.
        #[test]
        fn the_group_lag_rule_declares_no_false_loss(
            n in 20u64..160,
            gap in 1u64..30,
            to in proptest::collection::vec(prop_oneof![8 => Just(0u8), 8 => Just(1u8), 1 => Just(2u8)], 1..12),
            service in [1u64..40, 1u64..400],
            kill in proptest::option::of((0u64..4_000, 1u64..5_000)),
        ) {
            let (mut g, dropped) = share(n, gap, &to, service, kill, 300, true);
            prop_assert_eq!(g.late, 0);
            g.expire(u64::MAX, 0);
            let lost = set(&g.lost_ranges());
            // Only numbers inside the span are HQ's to miss.
            let (low, high) = g.span.unwrap_or((1, 0));
            let expected: BTreeSet<u64> = dropped.into_iter().filter(|s| *s > low && *s < high).collect();
            prop_assert_eq!(lost, expected);
        }
    }
}
