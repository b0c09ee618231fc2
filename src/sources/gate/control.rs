//! Opening a gate: the cloneable [`GateControl`] handle others hold (the link's entry-token
//! decisions, HQ commands), and the [`GateRegistry`] that finds a gate by station. The gate thread
//! owns the port; a handle only queues a request and waits for the thread's receipt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::modbus::ModbusError;
use crate::shutdown::Shutdown;

/// Unlocks waiting for one gate's thread; more are refused (`Busy`), not queued for later.
const QUEUE: usize = 4;
/// An unlock not on the wire this long after it was asked for is dropped (`Expired`): a gate
/// that opens seconds late opens for whoever stands there then, not for the person it was for.
pub const UNLOCK_DEADLINE: Duration = Duration::from_secs(1);
/// How often a waiting gate thread looks at the stop flag.
const STOP_TICK: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    /// The gate's port is closed (unplugged, reopening): the gate did not open. Say so to the
    /// person (and in the decision's event); retrying within the next seconds rarely helps.
    #[error("gate {0} is not connected")]
    NotConnected(String),
    /// Unlocks are already waiting for this gate: this one was refused and will not happen later.
    #[error("gate {0} has too many unlocks waiting")]
    Busy(String),
    /// The line stayed busy past [`UNLOCK_DEADLINE`]: dropped without opening.
    #[error("gate {device}: unlock dropped after waiting {waited:?}")]
    Expired { device: String, waited: Duration },
    /// Writing the request failed: the port was lost mid-write; the gate most likely did not open.
    #[error("gate {device}: writing the unlock failed: {error}")]
    Write { device: String, error: String },
    /// The gate's thread has stopped (shutdown).
    #[error("gate {0} is stopped")]
    Stopped(String),
}

/// What happened to an unlock that went on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnlockReceipt {
    /// When [`GateControl::unlock`] was called.
    pub requested: Instant,
    /// When the request's last byte was handed to the line (after `tcdrain`).
    pub on_wire: Instant,
    /// The module's answer: `Ok` when it echoed the write (Modbus's confirmation). An error
    /// (timeout, CRC, exception) means the relay may or may not have pulsed.
    pub echo: Result<(), ModbusError>,
}

impl UnlockReceipt {
    /// From the request to the bytes on the wire (docs/architecture.md §5: within 100 ms of the scan).
    pub fn latency(&self) -> Duration {
        self.on_wire.saturating_duration_since(self.requested)
    }

    pub fn confirmed(&self) -> bool {
        self.echo.is_ok()
    }
}

/// One unlock waiting for the gate thread.
pub struct UnlockRequest {
    pub requested: Instant,
    reply: oneshot::Sender<Result<UnlockReceipt, GateError>>,
}

impl UnlockRequest {
    /// The caller stopped waiting (its future was dropped): do not open for nobody.
    pub fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    pub fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.requested) > UNLOCK_DEADLINE
    }

    pub fn answer(self, result: Result<UnlockReceipt, GateError>) {
        // The caller may have stopped waiting; the outcome is logged by the gate thread.
        let _ = self.reply.send(result);
    }
}

/// A gate's unlock handle: cheap to clone, typed, never the raw channel.
#[derive(Clone)]
pub struct GateControl {
    device: Arc<str>,
    tx: flume::Sender<UnlockRequest>,
    /// The longest an answer can take: the deadline, then the echo's timeout, plus slack.
    patience: Duration,
}

impl GateControl {
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Asks the gate thread to pulse the unlock relay (coil write `FF00`) before its next poll,
    /// and waits for the module's echo (at most the request timeout after the write).
    /// Cancel-safe: dropping the future before the write means the gate does not open.
    pub async fn unlock(&self) -> Result<UnlockReceipt, GateError> {
        let requested = Instant::now();
        let (reply, wait) = oneshot::channel();
        let request = UnlockRequest { requested, reply };
        self.tx.try_send(request).map_err(|e| match e {
            flume::TrySendError::Full(_) => GateError::Busy(self.device.to_string()),
            flume::TrySendError::Disconnected(_) => GateError::Stopped(self.device.to_string()),
        })?;
        // Bounded even if the thread never answers (stuck on a full reading queue, or gone with
        // the request still queued): the thread skips a request whose caller left.
        match tokio::time::timeout(self.patience, wait).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(GateError::Stopped(self.device.to_string())),
            Err(_) => Err(GateError::Expired {
                device: self.device.to_string(),
                waited: requested.elapsed(),
            }),
        }
    }
}

/// The gate thread's end of the unlock queue.
#[derive(Clone)]
pub struct UnlockQueue {
    rx: flume::Receiver<UnlockRequest>,
    /// Held so the queue never reads as disconnected: the thread then just waits out its timers.
    _tx: flume::Sender<UnlockRequest>,
}

/// What ended a gate thread's wait.
pub enum Wake {
    Stop,
    /// The deadline passed (time to poll, or the reopen delay is over).
    Due,
    Unlock(UnlockRequest),
}

impl UnlockQueue {
    /// Waits until `deadline`, returning early for an unlock (before the deadline's poll, even
    /// when both are ready) or a stop.
    pub fn wait(&self, deadline: Instant, stop: &Shutdown) -> Wake {
        loop {
            if stop.is_stopped() {
                return Wake::Stop;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left.min(STOP_TICK)) {
                Ok(request) => return Wake::Unlock(request),
                Err(_) if left.is_zero() => return Wake::Due,
                Err(_) => {}
            }
        }
    }
}

/// A gate's handle and its thread's queue; `timeout` is the gate's request timeout.
pub fn channel(device: &str, timeout: Duration) -> (GateControl, UnlockQueue) {
    let (tx, rx) = flume::bounded(QUEUE);
    (
        GateControl {
            device: device.into(),
            tx: tx.clone(),
            patience: UNLOCK_DEADLINE + timeout + Duration::from_millis(100),
        },
        UnlockQueue { rx, _tx: tx },
    )
}

/// Gates by station id, as the daemon wired them.
#[derive(Clone, Default)]
pub struct GateRegistry {
    by_station: Arc<HashMap<String, GateControl>>,
}

impl GateRegistry {
    pub fn new(by_station: HashMap<String, GateControl>) -> Self {
        GateRegistry {
            by_station: Arc::new(by_station),
        }
    }

    /// The gate of `station`, if it has one.
    pub fn get(&self, station: &str) -> Option<&GateControl> {
        self.by_station.get(station)
    }

    pub fn stations(&self) -> impl Iterator<Item = &str> {
        self.by_station.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unlock_is_answered_by_the_thread_and_refused_when_busy_or_stopped() {
        let (control, queue) = channel("gate-a", Duration::from_millis(10));
        let stop = Shutdown::new();
        let thread = std::thread::spawn(move || {
            match queue.wait(Instant::now() + Duration::from_secs(5), &stop) {
                Wake::Unlock(r) => {
                    let on_wire = Instant::now();
                    let requested = r.requested;
                    r.answer(Ok(UnlockReceipt {
                        requested,
                        on_wire,
                        echo: Ok(()),
                    }));
                    queue
                }
                _ => panic!("expected an unlock"),
            }
        });
        let receipt = control.unlock().await.unwrap();
        assert!(receipt.confirmed());
        assert!(receipt.latency() < Duration::from_secs(5));
        let queue = thread.join().unwrap();

        // Nobody reads the queue now: QUEUE requests fit, the next is refused at once.
        let pending: Vec<_> = (0..QUEUE)
            .map(|_| {
                let c = control.clone();
                tokio::spawn(async move { c.unlock().await })
            })
            .collect();
        tokio::task::yield_now().await;
        while queue.rx.len() < QUEUE {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            control.unlock().await,
            Err(GateError::Busy("gate-a".into()))
        );
        // The thread goes away without answering: callers hear so in bounded time, never hang.
        drop(queue);
        for p in pending {
            assert!(matches!(
                p.await.unwrap(),
                Err(GateError::Expired { .. } | GateError::Stopped(_))
            ));
        }
    }

    #[test]
    fn wait_prefers_an_unlock_over_a_due_poll_and_sees_stop() {
        let (control, queue) = channel("g", Duration::from_millis(10));
        let stop = Shutdown::new();
        let (reply, _keep) = oneshot::channel();
        control
            .tx
            .try_send(UnlockRequest {
                requested: Instant::now(),
                reply,
            })
            .unwrap();
        assert!(matches!(queue.wait(Instant::now(), &stop), Wake::Unlock(_)));
        assert!(matches!(queue.wait(Instant::now(), &stop), Wake::Due));
        stop.stop();
        assert!(matches!(
            queue.wait(Instant::now() + Duration::from_secs(60), &stop),
            Wake::Stop
        ));
    }
}
