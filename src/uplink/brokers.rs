//! The brokers of `[mqtt]`, tried in turn: after a failed connect or a lost connection the
//! session's next attempt goes to the next address of the list, round and round. A node of a
//! cluster that dies takes its connections with it; the others serve the same sessions (NATS
//! keeps MQTT sessions in replicated JetStream streams), so the store moves on instead of
//! waiting for the dead node. One address (the `host` form) keeps every attempt on it.
//!
//! rumqttc has one broker address per `MqttOptions` and no setter for it, but its event loop
//! reads `mqtt_options` afresh at every connect: the options are built once per address (TLS
//! files read and checked at start) and swapped in between attempts.

use rumqttc::{EventLoop, MqttOptions};

use super::settings::BrokerAddr;

pub struct BrokerTurns {
    options: Vec<MqttOptions>,
    current: usize,
}

impl BrokerTurns {
    /// One set of options per address, each made by `build`; `brokers` is never empty
    /// (the config guarantees it).
    pub fn new(
        brokers: &[BrokerAddr],
        build: impl Fn(&BrokerAddr) -> Result<MqttOptions, String>,
    ) -> Result<BrokerTurns, String> {
        let options = brokers.iter().map(build).collect::<Result<Vec<_>, _>>()?;
        assert!(!options.is_empty(), "validated config: at least one broker");
        Ok(BrokerTurns {
            options,
            current: 0,
        })
    }

    /// The options of the first broker, for the client's construction.
    pub fn first(&self) -> MqttOptions {
        self.options[0].clone()
    }

    /// Points `eventloop` at the next broker for its next connect, and says which.
    pub fn advance(&mut self, eventloop: &mut EventLoop) -> Option<(String, u16)> {
        if self.options.len() == 1 {
            return None;
        }
        self.current = (self.current + 1) % self.options.len();
        eventloop.mqtt_options = self.options[self.current].clone();
        Some(self.options[self.current].broker_address())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> BrokerAddr {
        BrokerAddr {
            host: "127.0.0.1".into(),
            port,
        }
    }

    #[test]
    fn the_addresses_come_round_in_turn() {
        let build = |a: &BrokerAddr| Ok(MqttOptions::new("c", &a.host, a.port));
        let mut turns = BrokerTurns::new(&[addr(1), addr(2), addr(3)], build).unwrap();
        let (_, mut eventloop) = rumqttc::AsyncClient::new(turns.first(), 1);
        assert_eq!(eventloop.mqtt_options.broker_address().1, 1);
        let ports: Vec<u16> = (0..4)
            .map(|_| turns.advance(&mut eventloop).unwrap().1)
            .collect();
        assert_eq!(ports, [2, 3, 1, 2]);
        assert_eq!(eventloop.mqtt_options.broker_address().1, 2);
    }

    #[test]
    fn one_address_stays_put() {
        let build = |a: &BrokerAddr| Ok(MqttOptions::new("c", &a.host, a.port));
        let mut turns = BrokerTurns::new(&[addr(7)], build).unwrap();
        let (_, mut eventloop) = rumqttc::AsyncClient::new(turns.first(), 1);
        assert!(turns.advance(&mut eventloop).is_none());
        assert_eq!(eventloop.mqtt_options.broker_address().1, 7);
    }
}
