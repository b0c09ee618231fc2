//! [`super`]'s rules, by example and by property.

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
