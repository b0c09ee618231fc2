//! Capped, jittered exponential backoff: between reopens of a device's port, and between
//! reconnects of the uplink's and the downlink's MQTT sessions.

use std::time::{Duration, Instant};

/// Capped exponential backoff, with jitter so replugged devices (or a fleet of stores after an
/// HQ outage) do not retry in lockstep.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The next delay: uniformly jittered in [next/2, next], then doubled up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = d / 2;
        half + Duration::from_nanos(fastrand::u64(0..=(d - half).as_nanos() as u64))
    }
}

/// A connection's reconnect backoff: it starts over only after a connection that proved useful
/// (stayed up [`STABLE_CONNECTION`]), so a broker that accepts and drops at once is still
/// retried at the capped pace. Shared by the uplink and the downlink sessions.
#[derive(Debug)]
pub struct ReconnectBackoff {
    backoff: Backoff,
    connected_at: Option<Instant>,
}

/// How long a connection must stay up before the next outage backs off from the minimum again.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(30);

impl ReconnectBackoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        ReconnectBackoff {
            backoff: Backoff::new(min, max),
            connected_at: None,
        }
    }

    /// The link proved useful some other way (the uplink: a batch acknowledged).
    pub fn reset(&mut self) {
        self.backoff.reset();
    }

    /// The connection is up (CONNACK).
    pub fn connected(&mut self) {
        self.connected_at = Some(Instant::now());
    }

    /// The connection is down: how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        if self
            .connected_at
            .take()
            .is_some_and(|t| t.elapsed() >= STABLE_CONNECTION)
        {
            self.backoff.reset();
        }
        self.backoff.next_delay()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        assert!(
            delays[9] >= Duration::from_secs(1),
            "reaches the cap band: {delays:?}"
        );
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn a_short_lived_connection_does_not_reset_the_reconnect_backoff() {
        let mut b = ReconnectBackoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..6 {
            b.next_delay();
        }
        b.connected();
        assert!(
            b.next_delay() >= Duration::from_secs(1),
            "dropped at once: still at the cap"
        );
        b.connected_at = Some(Instant::now() - STABLE_CONNECTION);
        assert!(
            b.next_delay() <= Duration::from_millis(100),
            "after a stable connection: from the minimum"
        );
    }
}
