//! The handle on the outbox thread: typed requests on its bounded queue. Events are serialised
//! here, on the caller's thread, before they are queued.

use tokio::sync::{oneshot, watch};

use super::{Batch, OutboxError, OutboxHandle, Replay, Request, StateEntries, StateWrite, Stats};
use crate::event::{Event, Prepared};

impl OutboxHandle {
    /// Queues an event; returns once it is queued, not committed (the queue keeps group commit
    /// fed). Waits while the queue is full.
    pub async fn submit(&self, event: Event) -> Result<(), OutboxError> {
        self.submit_with_state(event, Vec::new()).await
    }

    /// As [`OutboxHandle::submit`], with state committed in the same transaction as the event:
    /// after a crash both are there or neither is.
    pub async fn submit_with_state(
        &self,
        event: Event,
        state: Vec<StateWrite>,
    ) -> Result<(), OutboxError> {
        self.submit_prepared(event.prepare(&self.origin), state)
            .await
    }

    /// As [`OutboxHandle::submit_with_state`], with the event already serialised by the caller
    /// ([`OutboxHandle::prepare`]), e.g. on a thread of its own before it queues.
    pub async fn submit_prepared(
        &self,
        event: Prepared,
        state: Vec<StateWrite>,
    ) -> Result<(), OutboxError> {
        self.tx
            .send_async(Request::Append {
                event,
                state,
                done: None,
            })
            .await
            .map_err(|_| OutboxError::Closed)
    }

    /// Serialises an event as this outbox stores it, all but its seq (see [`Prepared`]).
    pub fn prepare(&self, event: &Event) -> Prepared {
        event.prepare(&self.origin)
    }

    /// Appends an event and waits until it is durable; returns its seq.
    pub async fn append(&self, event: Event) -> Result<u64, OutboxError> {
        self.append_with_state(event, Vec::new()).await
    }

    /// As [`OutboxHandle::append`], with state committed in the same transaction.
    pub async fn append_with_state(
        &self,
        event: Event,
        state: Vec<StateWrite>,
    ) -> Result<u64, OutboxError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send_async(Request::Append {
                event: event.prepare(&self.origin),
                state,
                done: Some(done),
            })
            .await
            .map_err(|_| OutboxError::Closed)?;
        wait.await.map_err(|_| OutboxError::Closed)?
    }

    /// Acknowledges `first..=last` (the watermark moves past them; in publish order, as PUBACKs
    /// come): call only on the broker's acknowledgement of their publish.
    pub async fn ack(&self, first: u64, last: u64) -> Result<(), OutboxError> {
        self.tx
            .send_async(Request::Ack { first, last })
            .await
            .map_err(|_| OutboxError::Closed)
    }

    /// The next batch of events after `after`, in seq order.
    pub async fn fetch_after(
        &self,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Option<Batch>, OutboxError> {
        let batches = self.fetch_batches(after, 1, max_events, max_bytes).await?;
        Ok(batches.into_iter().next())
    }

    /// Up to `batches` consecutive batches after `after`, in seq order, in one request (empty
    /// when there is nothing after `after`).
    pub async fn fetch_batches(
        &self,
        after: u64,
        batches: usize,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Batch>, OutboxError> {
        self.fetch(after, batches, max_events, max_bytes, false)
            .await
    }

    /// As [`OutboxHandle::fetch_batches`], but when there is nothing after `after` it waits
    /// until rows are committed, and is answered by the outbox thread right after that commit
    /// (never empty). Cancel-safe: dropping the future drops the request.
    pub async fn next_batches(
        &self,
        after: u64,
        batches: usize,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Batch>, OutboxError> {
        self.fetch(after, batches, max_events, max_bytes, true)
            .await
    }

    async fn fetch(
        &self,
        after: u64,
        batches: usize,
        max_events: usize,
        max_bytes: usize,
        wait: bool,
    ) -> Result<Vec<Batch>, OutboxError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send_async(Request::Fetch {
                after,
                batches,
                max_events,
                max_bytes,
                wait,
                reply,
            })
            .await
            .map_err(|_| OutboxError::Closed)?;
        answer.await.map_err(|_| OutboxError::Closed)?
    }

    /// The rows of `from..=to` the outbox still holds (live, or acknowledged and kept by the
    /// replay window), in batches, and the sub-ranges it no longer holds. A read: the
    /// watermark and the uplink's batches are untouched.
    pub async fn replay(
        &self,
        from: u64,
        to: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Replay, OutboxError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send_async(Request::Replay {
                from,
                to,
                max_events,
                max_bytes,
                reply,
            })
            .await
            .map_err(|_| OutboxError::Closed)?;
        wait.await.map_err(|_| OutboxError::Closed)?
    }

    pub async fn stats(&self) -> Result<Stats, OutboxError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send_async(Request::Stats { reply })
            .await
            .map_err(|_| OutboxError::Closed)?;
        wait.await.map_err(|_| OutboxError::Closed)
    }

    /// Sets (or with `None` deletes) a state key; committed with the next group, in queue order
    /// with the events submitted before it. Blocking: for source threads.
    pub fn put_state_blocking(
        &self,
        key: impl Into<String>,
        value: Option<Vec<u8>>,
    ) -> Result<(), OutboxError> {
        self.tx
            .send(Request::PutState {
                writes: vec![(key.into(), value)],
                done: None,
            })
            .map_err(|_| OutboxError::Closed)
    }

    pub async fn put_state(
        &self,
        key: impl Into<String>,
        value: Option<Vec<u8>>,
    ) -> Result<(), OutboxError> {
        self.tx
            .send_async(Request::PutState {
                writes: vec![(key.into(), value)],
                done: None,
            })
            .await
            .map_err(|_| OutboxError::Closed)
    }

    /// Sets or deletes several state keys in one transaction: after a crash all of them are
    /// there or none (a member map update).
    pub async fn put_states(&self, writes: Vec<StateWrite>) -> Result<(), OutboxError> {
        self.tx
            .send_async(Request::PutState { writes, done: None })
            .await
            .map_err(|_| OutboxError::Closed)
    }

    /// As [`OutboxHandle::put_states`], and waits until the transaction has committed.
    pub async fn put_states_durable(&self, writes: Vec<StateWrite>) -> Result<(), OutboxError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send_async(Request::PutState {
                writes,
                done: Some(done),
            })
            .await
            .map_err(|_| OutboxError::Closed)?;
        wait.await.map_err(|_| OutboxError::Closed)?
    }

    /// Every state entry under `prefix`. Blocking: for source threads at start.
    pub fn state_blocking(&self, prefix: &str) -> Result<StateEntries, OutboxError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(Request::GetState {
                prefix: prefix.into(),
                reply,
            })
            .map_err(|_| OutboxError::Closed)?;
        wait.blocking_recv().map_err(|_| OutboxError::Closed)?
    }

    pub async fn state(&self, prefix: &str) -> Result<StateEntries, OutboxError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send_async(Request::GetState {
                prefix: prefix.into(),
                reply,
            })
            .await
            .map_err(|_| OutboxError::Closed)?;
        wait.await.map_err(|_| OutboxError::Closed)?
    }

    /// One state key's value: an exact lookup, at the cost of one index probe.
    pub async fn state_value(&self, key: &str) -> Result<Option<Vec<u8>>, OutboxError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send_async(Request::GetKey {
                key: key.into(),
                reply,
            })
            .await
            .map_err(|_| OutboxError::Closed)?;
        wait.await.map_err(|_| OutboxError::Closed)?
    }

    /// Watches the last committed seq: changes whenever new events are durable.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }
}
