//! The uplink's in-flight book: which outbox rows are on their way to the broker, and which
//! PUBACK settles which of them. Pure state (no I/O, no clock, no runtime): the MQTT shell in
//! [`super`] feeds it what the client and the broker said and acts on what it answers, in the
//! style of rumqttc's own `state.rs`.
//!
//! Two facts about rumqttc shape it (docs/architecture.md §6):
//!
//! - `publish` does not return the packet id. The client reports `Outgoing::Publish(pkid)` in
//!   the order the publishes were queued, so the book keeps a queue of publishes still waiting
//!   for their id ([`Book::assigned`] pops its front) and a map from id to publish.
//! - With a clean session the client forgets every unacknowledged publish at each CONNACK.
//!   The outbox still holds exactly those rows, so on [`Book::connected`] the book forgets too
//!   and the next batch is read from the oldest unacknowledged row (`after == 0`).
//!
//! - An MQTT 5 broker may refuse a publish (a PUBACK with a failure reason code: an ACL denial,
//!   a quota). Its rows are not delivered and stay in the outbox. The book then holds
//!   ([`Book::refused`]): no new batch goes out, the batches already on the wire are settled by
//!   their own PUBACKs, and once none is left and the shell's backoff has passed,
//!   [`Book::resume`] starts again from the oldest unacknowledged row, which is the refused
//!   batch's first (PUBACKs come in publish order, so every batch before it is settled).
//!   Waiting for the window to empty is what keeps the resend from publishing a later batch
//!   twice while its PUBACK is still on the way.
//!
//! What a refusal means for the outbox's in-order watermark: a batch published after the
//! refused one and accepted is acknowledged out of order. The watermark stays below the refused
//! batch (it only moves over a prefix), and the outbox deletes the accepted batch's rows one by
//! one instead (`outbox::watermark`, `AckStep::Delete`): correct, slower, and only until the
//! refused rows are accepted. HQ then receives that later batch before the refused one: its
//! first arrivals are not in `seq` order for the span of the refusal, and its seq tracking sees
//! a hole that the retry fills (a refusal that lasts is visible on the store's status page).
//!
//! The invariants, checked by the proptest below against a model of the client, the broker
//! and the outbox: a batch's rows are acknowledged only by the PUBACK of the publish that
//! carried them (never a row the broker did not get), and every row is eventually published
//! again until one is (none is lost).

use std::collections::{HashMap, VecDeque};

/// A publish queued in the client, waiting for its packet id or its PUBACK. `T` is what the
/// shell wants back with a batch's PUBACK (the time it was queued, for the latency metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent<T> {
    /// Outbox rows `first..=last`, `count` of them.
    Batch {
        first: u64,
        last: u64,
        count: usize,
        tag: T,
    },
    /// The retained status message: nothing to acknowledge in the outbox.
    Status,
    /// Events published again for a `replay` command (`crate::replay`): nothing to
    /// acknowledge in the outbox either, and no part of the window of outbox batches.
    Replay { count: usize },
}

/// The book of one connection's publishes (see the module doc).
#[derive(Debug)]
pub struct Book<T> {
    /// Queued publishes not yet given a packet id, in queue order.
    unassigned: VecDeque<Sent<T>>,
    /// Publishes on the wire, by packet id.
    inflight: HashMap<u16, Sent<T>>,
    /// Highest seq handed to a publish on this connection: the next batch starts after it.
    sent_through: u64,
    /// A batch was refused: nothing new goes out until [`Book::resume`].
    held: bool,
}

impl<T> Default for Book<T> {
    fn default() -> Self {
        Book {
            unassigned: VecDeque::new(),
            inflight: HashMap::new(),
            sent_through: 0,
            held: false,
        }
    }
}

impl<T> Book<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// CONNACK: the client has forgotten every earlier publish (clean session), so the book
    /// does too, and the next batch starts again from the oldest unacknowledged row.
    pub fn connected(&mut self) {
        self.forget();
        self.sent_through = 0;
        // The reconnect's own backoff has passed, and this resend starts from the oldest row.
        self.held = false;
    }

    /// The connection is gone: no PUBACK of it will come. What was in flight stays in the
    /// outbox and is sent again after the next CONNACK.
    pub fn disconnected(&mut self) {
        self.forget();
    }

    fn forget(&mut self) {
        self.unassigned.clear();
        self.inflight.clear();
    }

    /// Where the next batches start (`fetch_batches`) and how many the window of `max_batches`
    /// has room for (all of them are read in one request); `None` when the window is full or
    /// the book is held after a refused PUBACK.
    pub fn next_fetch(&self, max_batches: usize) -> Option<(u64, usize)> {
        let room = max_batches.saturating_sub(self.batches_in_flight());
        (!self.held && room > 0).then_some((self.sent_through, room))
    }

    /// Batches queued or on the wire.
    pub fn batches_in_flight(&self) -> usize {
        self.unassigned
            .iter()
            .chain(self.inflight.values())
            .filter(|s| matches!(s, Sent::Batch { .. }))
            .count()
    }

    /// The client accepted the publish of rows `first..=last`.
    pub fn queued_batch(&mut self, first: u64, last: u64, count: usize, tag: T) {
        self.unassigned.push_back(Sent::Batch {
            first,
            last,
            count,
            tag,
        });
        self.sent_through = last;
    }

    /// The client accepted the publish of a status message.
    pub fn queued_status(&mut self) {
        self.unassigned.push_back(Sent::Status);
    }

    /// The client accepted the publish of a replay of `count` events.
    pub fn queued_replay(&mut self, count: usize) {
        self.unassigned.push_back(Sent::Replay { count });
    }

    /// Replays queued or on the wire.
    pub fn replays_in_flight(&self) -> usize {
        self.unassigned
            .iter()
            .chain(self.inflight.values())
            .filter(|s| matches!(s, Sent::Replay { .. }))
            .count()
    }

    /// `Outgoing::Publish(pkid)`: the oldest queued publish went on the wire with this id.
    pub fn assigned(&mut self, pkid: u16) {
        if let Some(sent) = self.unassigned.pop_front() {
            self.inflight.insert(pkid, sent);
        }
    }

    /// A PUBACK: the publish it settles, if it is one of this connection's (a batch's rows may
    /// now be deleted from the outbox).
    pub fn acked(&mut self, pkid: u16) -> Option<Sent<T>> {
        self.inflight.remove(&pkid)
    }

    /// A PUBACK with a failure reason code: the publish it settles, which the broker did not
    /// take. A refused batch's rows stay in the outbox, and the book holds until
    /// [`Book::resume`].
    pub fn refused(&mut self, pkid: u16) -> Option<Sent<T>> {
        let sent = self.inflight.remove(&pkid);
        if matches!(sent, Some(Sent::Batch { .. })) {
            self.held = true;
        }
        sent
    }

    /// The next batch cannot go out at all (one event larger than the broker's packet limit):
    /// hold as after a refusal, so that it is tried again from the oldest unacknowledged row
    /// after a backoff, and nothing after it overtakes it (`seq` order is the watermark's rule).
    pub fn hold(&mut self) {
        self.held = true;
    }

    /// A refused batch holds the book: nothing new is published until [`Book::resume`].
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// After a refusal's backoff: once no batch is in flight any more, starts again from the
    /// oldest unacknowledged row and says true; false while batches are still out (call again
    /// after their PUBACKs).
    pub fn resume(&mut self) -> bool {
        if !self.held {
            return true;
        }
        if self.batches_in_flight() > 0 {
            return false;
        }
        self.held = false;
        self.sent_through = 0;
        true
    }

    /// Nothing queued or on the wire.
    pub fn is_empty(&self) -> bool {
        self.unassigned.is_empty() && self.inflight.is_empty()
    }
}

/// How many batches the next read should bring the uplink to, counting those in flight and
/// read ahead (`covered`): twice what is covered, from one, up to the `window`, then a second
/// window read ahead. The first publish of a connection waits for one batch to be read, not
/// for two windows: at a drain's start, reading 16 batches of 500 took ~6.7 ms before anything
/// went out (a fresh connection's cold cache; slower still from a Pi's SD card), while one
/// batch out lets the next reads overlap the broker's work. The doubling reaches the window in
/// a few reads (1, 2, 4, 8), each one round trip to the outbox thread.
pub fn read_target(window: usize, covered: usize) -> usize {
    if covered < window {
        (2 * covered).clamp(1, window)
    } else {
        2 * window
    }
}

#[cfg(test)]
#[path = "book_tests.rs"]
mod tests;
