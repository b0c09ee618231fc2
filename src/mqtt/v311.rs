//! MQTT 3.1.1 through rumqttc's default client: no properties, no reason codes.

use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode,
};

use super::brokers::BrokerTurns;
use super::{LinkError, LinkEvent, Received, SessionOptions};
use crate::uplink::settings::{BrokerAddr, MqttConfig};

pub struct Link {
    client: AsyncClient,
    eventloop: EventLoop,
    brokers: BrokerTurns<MqttOptions>,
}

impl Link {
    pub fn new(mqtt: &MqttConfig, o: &SessionOptions) -> Result<Link, String> {
        let brokers = BrokerTurns::new(&mqtt.brokers, |b| options(mqtt, b, o))?;
        let (client, eventloop) = AsyncClient::new(brokers.first(), o.requests);
        Ok(Link {
            client,
            eventloop,
            brokers,
        })
    }

    pub async fn poll(&mut self) -> Result<LinkEvent, LinkError> {
        let ev = self.eventloop.poll().await.map_err(LinkError::V311)?;
        Ok(match ev {
            Event::Incoming(Packet::ConnAck(c)) => LinkEvent::Connected {
                session_present: c.session_present,
                max_packet: None,
            },
            Event::Outgoing(Outgoing::Publish(pkid)) => LinkEvent::PublishSent(pkid),
            Event::Incoming(Packet::PubAck(a)) => LinkEvent::PubAck {
                pkid: a.pkid,
                refused: None,
            },
            Event::Incoming(Packet::Publish(p)) => LinkEvent::Message(Received::V311(p)),
            Event::Incoming(Packet::SubAck(s))
                if s.return_codes.contains(&SubscribeReasonCode::Failure) =>
            {
                LinkEvent::SubscribeRefused("Failure (0x80)".into())
            }
            Event::Incoming(Packet::SubAck(_)) => LinkEvent::Subscribed,
            Event::Outgoing(Outgoing::Disconnect) => LinkEvent::DisconnectSent,
            _ => LinkEvent::Other,
        })
    }

    pub fn try_publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), String> {
        self.client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
            .map_err(|e| e.to_string())
    }

    pub fn try_subscribe_many(&self, topics: Vec<String>) -> Result<(), String> {
        let filters = topics
            .into_iter()
            .map(|t| SubscribeFilter::new(t, QoS::AtLeastOnce));
        self.client
            .try_subscribe_many(filters)
            .map_err(|e| e.to_string())
    }

    pub fn try_ack(&self, p: &Publish) -> Result<(), String> {
        self.client.try_ack(p).map_err(|e| e.to_string())
    }

    pub fn try_disconnect(&self) -> Result<(), String> {
        self.client.try_disconnect().map_err(|e| e.to_string())
    }

    pub fn clean(&mut self) {
        self.eventloop.clean();
    }

    pub fn next_broker(&mut self) -> Option<(String, u16)> {
        self.eventloop.mqtt_options = self.brokers.advance()?;
        Some(self.broker_address())
    }

    pub fn broker_address(&self) -> (String, u16) {
        self.eventloop.mqtt_options.broker_address()
    }
}

fn options(m: &MqttConfig, broker: &BrokerAddr, o: &SessionOptions) -> Result<MqttOptions, String> {
    let mut x = MqttOptions::new(&o.client_id, &broker.host, broker.port);
    x.set_keep_alive(m.keepalive);
    if let Some(user) = &m.username {
        x.set_credentials(user, m.password.clone().unwrap_or_default());
    }
    if let Some(t) = super::transport(m)? {
        x.set_transport(t);
    }
    x.set_clean_session(!o.persistent);
    x.set_manual_acks(o.manual_acks);
    x.set_inflight(o.inflight);
    x.set_max_packet_size(o.max_incoming, o.max_outgoing);
    if let Some(w) = &o.will {
        x.set_last_will(LastWill::new(
            &w.topic,
            w.payload.clone(),
            QoS::AtLeastOnce,
            true,
        ));
    }
    Ok(x)
}
