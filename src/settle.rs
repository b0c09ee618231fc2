//! Manual MQTT acknowledgements in arrival order: a QoS 1 message is acknowledged only once its
//! effect is durable (its receipt settled), and PUBACKs go out in the order the messages came,
//! as MQTT 3.1.1 §4.6 / MQTT 5 §4.6 ask of a receiver. The store's downlink session and HQ's
//! consumer both keep one; each connection's queue is forgotten when the connection ends (a
//! packet id of an old connection could name another message on the new one, and the broker
//! sends the unacknowledged ones again anyway).

use std::collections::VecDeque;

use tokio::sync::oneshot;

/// A message and the receipt its consumer settles once the message's effect is durable.
pub struct SettleQueue<M> {
    pending: VecDeque<(M, oneshot::Receiver<()>)>,
}

impl<M> Default for SettleQueue<M> {
    fn default() -> Self {
        SettleQueue {
            pending: VecDeque::new(),
        }
    }
}

impl<M> SettleQueue<M> {
    pub fn push(&mut self, message: M, settled: oneshot::Receiver<()>) {
        self.pending.push_back((message, settled));
    }

    /// The message pushed last.
    pub fn last(&self) -> Option<&M> {
        self.pending.back().map(|(m, _)| m)
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Forgets every message: the connection they came on ended.
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    /// The oldest message once its receipt is settled (`Ok`) or dropped unsettled (`Err`: its
    /// effect failed, and only a new connection brings the message again). Never resolves while
    /// the queue is empty. Cancel-safe: the receipt is polled in place and the message leaves
    /// the queue in the same poll that sees it settled, so it can sit in a `select!`.
    pub async fn next(&mut self) -> (M, Result<(), oneshot::error::RecvError>) {
        let Some((_, settled)) = self.pending.front_mut() else {
            return std::future::pending().await;
        };
        let outcome = settled.await;
        let (message, _) = self.pending.pop_front().expect("the front was there");
        (message, outcome)
    }

    /// Takes the settled messages at the front, oldest first (at shutdown: acknowledge what is
    /// durable by now; the rest comes again at the next start).
    pub fn take_settled(&mut self) -> Vec<M> {
        let mut done = Vec::new();
        while let Some((_, settled)) = self.pending.front_mut() {
            if settled.try_recv().is_err() {
                break;
            }
            done.push(self.pending.pop_front().expect("the front was there").0);
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_come_out_in_arrival_order_whatever_order_they_settle_in() {
        let mut q = SettleQueue::default();
        let mut receipts = Vec::new();
        for m in 0..3 {
            let (tx, rx) = oneshot::channel();
            q.push(m, rx);
            receipts.push(tx);
        }
        // The last settles first: nothing may be acknowledged before the first is.
        receipts.pop().unwrap().send(()).unwrap();
        assert!(q.take_settled().is_empty());
        let second = receipts.pop().unwrap();
        receipts.pop().unwrap().send(()).unwrap();
        assert_eq!(q.next().await, (0, Ok(())));
        drop(second); // its effect failed
        let (m, outcome) = q.next().await;
        assert_eq!(m, 1);
        assert!(outcome.is_err());
        assert_eq!(q.take_settled(), vec![2]);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn next_is_cancel_safe_in_a_select() {
        let mut q = SettleQueue::default();
        let (tx, rx) = oneshot::channel();
        q.push("a", rx);
        // Cancelled while waiting: the message stays at the front.
        tokio::select! {
            _ = q.next() => panic!("nothing is settled"),
            _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
        }
        assert_eq!(q.last(), Some(&"a"));
        tx.send(()).unwrap();
        assert_eq!(q.next().await, ("a", Ok(())));
    }
}
