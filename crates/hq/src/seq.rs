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
            let mut cut = self.overlapping(a, b);
            cut.retain(|h| !h.lost);
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

    /// The holes that overlap `a..=b`, last first.
    fn overlapping(&self, a: u64, b: u64) -> Vec<Hole> {
        self.holes
            .range(..=b)
            .rev()
            .map(|(_, h)| *h)
            .take_while(|h| h.last >= a)
            .collect()
    }

    /// Removes `a..=b` from the holes, splitting those it cuts.
    fn take(&mut self, a: u64, b: u64) -> Taken {
        let cut = self.overlapping(a, b);
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
#[path = "seq_tests.rs"]
mod tests;
