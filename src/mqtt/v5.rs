//! MQTT 5 through rumqttc's `v5` client: reason codes in, properties out.

use rumqttc::v5::mqttbytes::v5::{
    Filter, LastWill, LastWillProperties, Packet, PubAck, Publish, PublishProperties,
    SubscribeReasonCode,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use rumqttc::Outgoing;

use super::brokers::BrokerTurns;
use super::{reason, LinkError, LinkEvent, Received, SessionOptions, JSON};
use crate::uplink::settings::{BrokerAddr, MqttConfig};

/// Payload format indicator 1: the payload is UTF-8 (every phygate payload is JSON).
const UTF8: u8 = 1;

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
        let ev = self.eventloop.poll().await.map_err(LinkError::V5)?;
        Ok(match ev {
            Event::Incoming(Packet::ConnAck(c)) => LinkEvent::Connected {
                session_present: c.session_present,
                max_packet: c.properties.and_then(|p| p.max_packet_size),
            },
            Event::Outgoing(Outgoing::Publish(pkid)) => LinkEvent::PublishSent(pkid),
            Event::Incoming(Packet::PubAck(PubAck {
                pkid,
                reason: code,
                properties,
            })) => LinkEvent::PubAck {
                pkid,
                refused: reason::puback(code, properties.and_then(|p| p.reason_string)),
            },
            Event::Incoming(Packet::Publish(p)) => LinkEvent::Message(Received::V5(p)),
            Event::Incoming(Packet::SubAck(s))
                if s.return_codes
                    .iter()
                    .any(|c| !matches!(c, SubscribeReasonCode::Success(_))) =>
            {
                LinkEvent::SubscribeRefused(format!("{:?}", s.return_codes))
            }
            Event::Incoming(Packet::SubAck(_)) => LinkEvent::Subscribed,
            Event::Outgoing(Outgoing::Disconnect) => LinkEvent::DisconnectSent,
            _ => LinkEvent::Other,
        })
    }

    pub fn try_publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        content_type: &str,
    ) -> Result<(), String> {
        let properties = PublishProperties {
            content_type: Some(content_type.to_owned()),
            payload_format_indicator: Some(UTF8),
            ..PublishProperties::default()
        };
        self.client
            .try_publish_with_properties(topic, QoS::AtLeastOnce, retain, payload, properties)
            .map_err(|e| e.to_string())
    }

    pub fn try_subscribe_many(&self, topics: Vec<String>) -> Result<(), String> {
        let filters = topics.into_iter().map(|t| Filter::new(t, QoS::AtLeastOnce));
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
        self.eventloop.options = self.brokers.advance()?;
        Some(self.broker_address())
    }

    pub fn broker_address(&self) -> (String, u16) {
        self.eventloop.options.broker_address()
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
    x.set_clean_start(!o.persistent);
    if o.persistent {
        // Without it (0, the default) an MQTT 5 broker ends the session at disconnect, and
        // what HQ sends while the store is offline would never arrive. The config keeps it
        // within u32 seconds.
        x.set_session_expiry_interval(Some(m.session_expiry.as_secs() as u32));
    }
    x.set_manual_acks(o.manual_acks);
    // Without an upper limit the v5 client sizes its in-flight table for 65,535 publishes;
    // the broker's Receive Maximum (CONNACK) may lower it further.
    x.set_outgoing_inflight_upper_limit(o.inflight);
    // Tells the broker, too, not to send anything larger (it drops such a message for this
    // client instead of breaking the connection). The outgoing limit is the broker's, from
    // its CONNACK.
    x.set_max_packet_size(Some(o.max_incoming as u32));
    if let Some(w) = &o.will {
        x.set_last_will(LastWill::new(
            &w.topic,
            w.payload.clone(),
            QoS::AtLeastOnce,
            true,
            Some(LastWillProperties {
                delay_interval: None,
                payload_format_indicator: Some(UTF8),
                message_expiry_interval: None,
                content_type: Some(JSON.to_owned()),
                response_topic: None,
                correlation_data: None,
                user_properties: Vec::new(),
            }),
        ));
    }
    Ok(x)
}
