//! When to subscribe again after a broker refused a subscription. A refusal is not always for
//! good: a clustered broker refuses while the stream behind its MQTT sessions elects a leader
//! (nats-server logs "Unable to add JetStream consumer for subscription … timeout"), and an ACL
//! may be fixed. A broker keeps no subscription it refused, so a client that never asks again
//! gets nothing on that filter for its connection's life. Shared by the gateway's downlink,
//! HQ's consumer and the fleet simulator's commands session.

use std::time::Duration;

use tokio::time::Instant;

/// The gateway's and HQ's schedule: 5 s after a first refusal, doubling up to 5 minutes.
pub const FIRST_WAIT: Duration = Duration::from_secs(5);
pub const LONGEST_WAIT: Duration = Duration::from_secs(300);

/// The next try, if one is due, and the wait before the one after.
#[derive(Debug)]
pub struct Resubscribe {
    at: Option<Instant>,
    first: Duration,
    longest: Duration,
    wait: Duration,
}

impl Resubscribe {
    /// Waits `first` after a first refusal, twice as long after each further one, up to
    /// `longest`.
    pub fn new(first: Duration, longest: Duration) -> Self {
        Resubscribe {
            at: None,
            first,
            longest,
            wait: first,
        }
    }

    /// A SUBACK refused a filter: schedules the next try; the wait until it.
    pub fn refused(&mut self) -> Duration {
        let wait = self.wait;
        self.at = Some(Instant::now() + wait);
        self.wait = (wait * 2).min(self.longest);
        wait
    }

    /// A SUBACK granted everything: the next refusal waits `first` again.
    pub fn granted(&mut self) {
        self.wait = self.first;
    }

    /// Resolves when the scheduled try is due; never while none is. It borrows nothing, so a
    /// `select!` arm can hold it beside arms that use the owner; call [`Resubscribe::taken`]
    /// when it fires. Cancel-safe: a plain timer.
    pub fn due(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let at = self.at;
        async move {
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        }
    }

    /// The scheduled try is being made.
    pub fn taken(&mut self) {
        self.at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_longest_and_start_over_after_a_grant() {
        let mut r = Resubscribe::new(Duration::from_secs(5), Duration::from_secs(12));
        let waits: Vec<_> = (0..4).map(|_| r.refused().as_secs()).collect();
        assert_eq!(waits, [5, 10, 12, 12]);
        r.granted();
        assert_eq!(r.refused().as_secs(), 5);
    }

    #[tokio::test]
    async fn due_once_scheduled_and_never_after_it_was_taken() {
        let mut r = Resubscribe::new(Duration::from_millis(1), Duration::from_millis(1));
        let never = tokio::time::timeout(Duration::from_millis(50), r.due()).await;
        assert!(never.is_err(), "nothing scheduled yet");
        r.refused();
        let due = tokio::time::timeout(Duration::from_secs(10), r.due()).await;
        assert!(due.is_ok(), "the scheduled try comes");
        r.taken();
        let never = tokio::time::timeout(Duration::from_millis(50), r.due()).await;
        assert!(never.is_err(), "taken: not due again");
    }
}
