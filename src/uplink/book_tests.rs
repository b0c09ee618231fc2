use std::collections::{BTreeSet, VecDeque};

use proptest::prelude::*;

use super::*;

fn batch(first: u64, last: u64) -> Sent<()> {
    Sent::Batch {
        first,
        last,
        count: (last - first + 1) as usize,
        tag: (),
    }
}

#[test]
fn pubacks_settle_publishes_by_the_order_they_were_queued() {
    let mut b = Book::new();
    b.connected();
    b.queued_status();
    b.queued_batch(1, 3, 3, ());
    b.queued_batch(4, 4, 1, ());
    // Ids come in queue order, whatever their values.
    b.assigned(7);
    b.assigned(2);
    b.assigned(5);
    assert_eq!(b.acked(5), Some(batch(4, 4)));
    assert_eq!(b.acked(2), Some(batch(1, 3)));
    assert_eq!(b.acked(7), Some(Sent::Status));
    assert!(b.is_empty());
}

#[test]
fn reads_start_with_one_batch_and_double_up_to_the_window_then_read_a_window_ahead() {
    let targets: Vec<usize> = [0, 1, 2, 3, 4, 7, 8, 12, 16, 20]
        .iter()
        .map(|covered| read_target(8, *covered))
        .collect();
    assert_eq!(targets, [1, 2, 4, 6, 8, 8, 16, 16, 16, 16]);
    assert_eq!(read_target(1, 0), 1);
    assert_eq!(read_target(1, 1), 2);
}

#[test]
fn a_puback_for_no_publish_of_this_connection_settles_nothing() {
    let mut b = Book::new();
    b.connected();
    b.queued_batch(1, 2, 2, ());
    b.assigned(1);
    assert_eq!(b.acked(9), None);
    assert_eq!(b.acked(1), Some(batch(1, 2)));
    // The same PUBACK twice: the second finds nothing.
    assert_eq!(b.acked(1), None);
}

#[test]
fn connack_starts_again_from_the_oldest_unacknowledged_row() {
    let mut b = Book::new();
    b.connected();
    assert_eq!(b.next_fetch(8), Some((0, 8)));
    b.queued_batch(1, 10, 10, ());
    b.queued_batch(11, 20, 20, ());
    assert_eq!(b.next_fetch(8), Some((20, 6)));
    b.assigned(1);
    b.disconnected();
    assert!(b.is_empty());
    // A packet id of the old connection names nothing on the new one.
    b.connected();
    assert_eq!(b.acked(1), None);
    assert_eq!(b.next_fetch(8), Some((0, 8)));
}

#[test]
fn the_window_counts_batches_queued_or_on_the_wire_not_status() {
    let mut b = Book::new();
    b.connected();
    b.queued_status();
    b.queued_batch(1, 1, 1, ());
    b.queued_batch(2, 2, 1, ());
    b.assigned(1);
    b.assigned(2);
    assert_eq!(b.batches_in_flight(), 2);
    assert_eq!(b.next_fetch(2), None);
    assert_eq!(b.acked(2), Some(batch(1, 1)));
    assert_eq!(b.next_fetch(2), Some((2, 1)));
}

#[test]
fn a_refused_batch_holds_the_book_until_the_window_empties_then_resends_from_the_oldest_row() {
    let mut b = Book::new();
    b.connected();
    b.queued_batch(1, 10, 10, ());
    b.queued_batch(11, 20, 10, ());
    b.assigned(1);
    b.assigned(2);
    // 0x87 NotAuthorized on the first: its rows stay in the outbox.
    assert_eq!(b.refused(1), Some(batch(1, 10)));
    assert!(b.is_held());
    assert_eq!(b.next_fetch(8), None, "nothing new while held");
    assert!(!b.resume(), "the second batch is still on the wire");
    assert_eq!(b.acked(2), Some(batch(11, 20)));
    assert!(b.resume());
    assert_eq!(
        b.next_fetch(8),
        Some((0, 8)),
        "again from the oldest unacknowledged row"
    );
}

#[test]
fn a_refused_status_message_does_not_hold_the_events() {
    let mut b = Book::<()>::new();
    b.connected();
    b.queued_status();
    b.assigned(3);
    assert_eq!(b.refused(3), Some(Sent::Status));
    assert!(!b.is_held());
    assert_eq!(b.next_fetch(8), Some((0, 8)));
}

#[test]
fn a_reconnect_ends_the_hold() {
    let mut b = Book::<()>::new();
    b.connected();
    b.queued_batch(1, 1, 1, ());
    b.assigned(1);
    b.refused(1);
    b.disconnected();
    b.connected();
    assert_eq!(b.next_fetch(8), Some((0, 8)));
}

/// What happens next, in the model of the client, the broker and the outbox.
#[derive(Debug, Clone)]
enum Step {
    /// The link appends rows to the outbox.
    Append(u8),
    /// The shell reads the next batch (at most this many rows) and queues its publish.
    Fetch(u8),
    /// The shell queues a status message.
    Status,
    /// The client writes its oldest queued publish (`Outgoing::Publish(pkid)`).
    Wire,
    /// The broker acknowledges one of the publishes it got (any order).
    Ack(usize),
    /// The broker refuses one of the publishes it got (an MQTT 5 PUBACK with a failure code).
    Refuse(usize),
    /// The shell's backoff after a refusal has passed.
    Resume,
    /// A PUBACK for an id the broker has nothing outstanding under.
    StrayAck(u16),
    /// The connection drops: queued publishes and unsent PUBACKs are gone.
    Disconnect,
    /// A new connection (clean session).
    Connack,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1u8..5).prop_map(Step::Append),
        3 => (1u8..6).prop_map(Step::Fetch),
        1 => Just(Step::Status),
        4 => Just(Step::Wire),
        3 => any::<usize>().prop_map(Step::Ack),
        1 => any::<usize>().prop_map(Step::Refuse),
        1 => Just(Step::Resume),
        1 => (1u16..6).prop_map(Step::StrayAck),
        1 => Just(Step::Disconnect),
        2 => Just(Step::Connack),
    ]
}

/// At most this many batches out at once (the shell's `[uplink] inflight`).
const WINDOW: usize = 3;
/// Packet ids wrap this soon, so that ids are recycled within and across connections.
const PKIDS: u16 = 5;

/// A publish the broker holds: its packet id, the batch's range (`None`: a status message) and
/// the rows it carried.
type OnBroker = (u16, Option<(u64, u64)>, Vec<u64>);

/// The book with everything around it: the outbox's rows, the client's queue, the broker.
struct World {
    book: Book<()>,
    outbox: BTreeSet<u64>,
    next_seq: u64,
    /// Rows the broker has accepted (a PUBACK without a failure code), on any connection.
    delivered: BTreeSet<u64>,
    connected: bool,
    /// Publishes queued in the client: a batch's rows, or `None` for a status message.
    client: VecDeque<Option<(u64, u64)>>,
    /// Publishes the broker got and has not acknowledged yet, with their packet ids and the
    /// rows they carried.
    broker: Vec<OnBroker>,
    next_pkid: u16,
}

impl World {
    fn new() -> Self {
        World {
            book: Book::new(),
            outbox: BTreeSet::new(),
            next_seq: 1,
            delivered: BTreeSet::new(),
            connected: false,
            client: VecDeque::new(),
            broker: Vec::new(),
            next_pkid: 1,
        }
    }

    /// Like rumqttc: the next id, skipping those still awaiting their PUBACK.
    fn pkid(&mut self) -> u16 {
        loop {
            let id = self.next_pkid;
            self.next_pkid = id % PKIDS + 1;
            if !self.broker.iter().any(|(p, ..)| *p == id) {
                return id;
            }
        }
    }

    fn apply(&mut self, step: Step) -> Result<(), TestCaseError> {
        match step {
            Step::Append(n) => {
                for _ in 0..n {
                    self.outbox.insert(self.next_seq);
                    self.next_seq += 1;
                }
            }
            Step::Fetch(n) => {
                if !self.connected {
                    return Ok(());
                }
                // Every free slot of the window in one read, as the uplink does.
                let Some((mut after, room)) = self.book.next_fetch(WINDOW) else {
                    return Ok(());
                };
                for _ in 0..room {
                    let rows: Vec<u64> = self
                        .outbox
                        .range(after + 1..)
                        .take(n as usize)
                        .copied()
                        .collect();
                    let (Some(&first), Some(&last)) = (rows.first(), rows.last()) else {
                        break;
                    };
                    self.client.push_back(Some((first, last)));
                    self.book.queued_batch(first, last, rows.len(), ());
                    after = last;
                }
            }
            Step::Status => {
                if self.connected {
                    self.client.push_back(None);
                    self.book.queued_status();
                }
            }
            Step::Wire => {
                // Like rumqttc's inflight limit: with no id free, the publish waits.
                if !self.connected || self.broker.len() >= PKIDS as usize {
                    return Ok(());
                }
                let Some(publish) = self.client.pop_front() else {
                    return Ok(());
                };
                let pkid = self.pkid();
                self.book.assigned(pkid);
                let rows = match publish {
                    Some((first, last)) => self.outbox.range(first..=last).copied().collect(),
                    None => Vec::new(),
                };
                self.broker.push((pkid, publish, rows));
            }
            Step::Ack(i) => {
                if !self.connected || self.broker.is_empty() {
                    return Ok(());
                }
                let (pkid, publish, rows) = self.broker.remove(i % self.broker.len());
                self.delivered.extend(rows);
                let settled = self.book.acked(pkid);
                match (publish, settled) {
                    (None, Some(Sent::Status)) => {}
                    (
                        Some((first, last)),
                        Some(Sent::Batch {
                            first: f, last: l, ..
                        }),
                    ) => {
                        prop_assert_eq!(
                            (f, l),
                            (first, last),
                            "PUBACK {} settles another publish",
                            pkid
                        );
                        // The outbox deletes the acknowledged range.
                        let gone: Vec<u64> = self.outbox.range(f..=l).copied().collect();
                        for row in gone {
                            prop_assert!(
                                self.delivered.contains(&row),
                                "row {} acked, never delivered",
                                row
                            );
                            self.outbox.remove(&row);
                        }
                    }
                    (publish, settled) => {
                        prop_assert!(
                            false,
                            "PUBACK {} for {:?} settled {:?}",
                            pkid,
                            publish,
                            settled
                        )
                    }
                }
            }
            Step::Refuse(i) => {
                if !self.connected || self.broker.is_empty() {
                    return Ok(());
                }
                let (pkid, publish, _) = self.broker.remove(i % self.broker.len());
                let settled = self.book.refused(pkid);
                // Nothing is deleted: the refused rows stay in the outbox.
                match (publish, settled) {
                    (None, Some(Sent::Status)) => {}
                    (
                        Some((first, last)),
                        Some(Sent::Batch {
                            first: f, last: l, ..
                        }),
                    ) => {
                        prop_assert_eq!((f, l), (first, last));
                    }
                    (publish, settled) => {
                        prop_assert!(
                            false,
                            "refusal {} for {:?} settled {:?}",
                            pkid,
                            publish,
                            settled
                        )
                    }
                }
            }
            Step::Resume => {
                self.book.resume();
            }
            Step::StrayAck(pkid) => {
                if !self.broker.iter().any(|(p, ..)| *p == pkid) {
                    prop_assert_eq!(self.book.acked(pkid), None);
                }
            }
            Step::Disconnect => {
                if self.connected {
                    self.connected = false;
                    self.client.clear();
                    self.broker.clear();
                    self.book.disconnected();
                }
            }
            Step::Connack => {
                if !self.connected {
                    self.connected = true;
                    self.next_pkid = 1;
                    self.book.connected();
                    // The shell's retained `online`.
                    self.client.push_back(None);
                    self.book.queued_status();
                }
            }
        }
        Ok(())
    }

    /// A connection that stays up until the outbox is drained.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        self.apply(Step::Connack)?;
        for _ in 0..10_000 {
            if self.outbox.is_empty() {
                return Ok(());
            }
            self.apply(Step::Resume)?;
            self.apply(Step::Fetch(5))?;
            while !self.client.is_empty() || !self.broker.is_empty() {
                self.apply(Step::Wire)?;
                self.apply(Step::Ack(0))?;
            }
        }
        prop_assert!(false, "rows never acknowledged: {:?}", self.outbox);
        Ok(())
    }
}

proptest! {
    #[test]
    fn no_interleaving_acks_an_undelivered_row_or_loses_one(
        steps in proptest::collection::vec(step(), 0..300),
    ) {
        let mut w = World::new();
        for s in steps {
            w.apply(s)?;
        }
        w.drain()?;
        prop_assert!(w.outbox.is_empty());
        let all: BTreeSet<u64> = (1..w.next_seq).collect();
        prop_assert_eq!(&w.delivered, &all, "every row was accepted by the broker");
    }
}
