//! The brokers of `[mqtt]`, tried in turn: after a failed connect or a lost connection the
//! session's next attempt goes to the next address of the list, round and round. A node of a
//! cluster that dies takes its connections with it; the others serve the same sessions (NATS
//! keeps MQTT sessions in replicated JetStream streams), so the store moves on instead of
//! waiting for the dead node. One address (the `host` form) keeps every attempt on it.
//!
//! rumqttc (both its 3.1.1 and its v5 client) has one broker address per set of options and no
//! setter for it, but its event loop reads its options afresh at every connect: the options are
//! built once per address (TLS files read and checked at start) and swapped in between
//! attempts ([`super::Session::next_broker`]).

pub struct BrokerTurns<O> {
    options: Vec<O>,
    current: usize,
}

impl<O: Clone> BrokerTurns<O> {
    /// One set of options per address, each made by `build`; `brokers` is never empty
    /// (the config guarantees it).
    pub fn new<A>(
        brokers: &[A],
        build: impl Fn(&A) -> Result<O, String>,
    ) -> Result<BrokerTurns<O>, String> {
        let options = brokers.iter().map(build).collect::<Result<Vec<_>, _>>()?;
        assert!(!options.is_empty(), "validated config: at least one broker");
        Ok(BrokerTurns {
            options,
            current: 0,
        })
    }

    /// The options of the first broker, for the client's construction.
    pub fn first(&self) -> O {
        self.options[0].clone()
    }

    /// The options of the next broker, for the next connect; `None` with only one broker.
    pub fn advance(&mut self) -> Option<O> {
        if self.options.len() == 1 {
            return None;
        }
        self.current = (self.current + 1) % self.options.len();
        Some(self.options[self.current].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_addresses_come_round_in_turn() {
        let mut turns = BrokerTurns::new(&[1u16, 2, 3], |p| Ok(*p)).unwrap();
        assert_eq!(turns.first(), 1);
        let ports: Vec<u16> = (0..4).map(|_| turns.advance().unwrap()).collect();
        assert_eq!(ports, [2, 3, 1, 2]);
    }

    #[test]
    fn one_address_stays_put() {
        let mut turns = BrokerTurns::new(&[7u16], |p| Ok(*p)).unwrap();
        assert!(turns.advance().is_none());
        assert_eq!(turns.first(), 7);
    }

    #[test]
    fn a_broker_whose_options_cannot_be_built_is_named() {
        let err = BrokerTurns::<u16>::new(&[1u16, 2], |p| {
            if *p == 2 {
                Err("cannot read ca.pem".into())
            } else {
                Ok(*p)
            }
        });
        assert_eq!(err.err().as_deref(), Some("cannot read ca.pem"));
    }
}
