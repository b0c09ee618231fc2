//! The thin MQTT shell both of the store's sessions stand on (the uplink's clean session, the
//! downlink's persistent one): one rumqttc client, its 3.1.1 flavour or its v5 one as
//! `[mqtt] protocol` says, behind one small API. What the sessions decide (the in-flight book,
//! the settle queue, the backoff) knows nothing of the version; this module turns each
//! version's packets into [`LinkEvent`]s and back.
//!
//! What MQTT 5 adds, and where it shows:
//! - a PUBACK may refuse: [`LinkEvent::PubAck`] carries the broker's [`Refusal`] (an ACL
//!   denial, a quota), and the uplink keeps those rows (3.1.1 brokers acknowledge and drop);
//! - a CONNACK refusal and a server DISCONNECT carry a reason code, named in [`LinkError`];
//! - the downlink's persistent session has an expiry (`[mqtt] session_expiry`): clean start
//!   off and `session_expiry_interval` set, or the broker would end the session at disconnect;
//! - each publish says its media type (`content_type`) and that it is UTF-8 (payload format
//!   indicator 1), as does the Last Will.

pub mod brokers;
pub mod reason;
mod v311;
mod v5;

use std::fmt;

pub use reason::Refusal;

use crate::uplink::settings::{MqttConfig, Protocol};

/// What a session asks of its connection (the rest comes from `[mqtt]`).
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub client_id: String,
    /// Keep the session on the broker across connections (the downlink): 3.1.1's
    /// `clean_session = false`, MQTT 5's clean start off plus `[mqtt] session_expiry`.
    pub persistent: bool,
    /// Acknowledge received messages only when told ([`Session::try_ack`]).
    pub manual_acks: bool,
    /// Publishes on the wire unacknowledged at most.
    pub inflight: u16,
    /// The largest packet accepted from the broker.
    pub max_incoming: usize,
    /// The largest packet sent (3.1.1; an MQTT 5 broker states its own in the CONNACK).
    pub max_outgoing: usize,
    /// The retained Last Will (QoS 1, JSON).
    pub will: Option<Will>,
    /// Requests the client may queue before `try_*` refuses.
    pub requests: usize,
}

#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Media type of the status message and the Last Will.
pub const JSON: &str = "application/json";

/// What the connection reports, the same for both versions.
#[derive(Debug)]
pub enum LinkEvent {
    /// CONNACK (accepted; a refusal is a [`LinkError`]).
    Connected {
        session_present: bool,
        /// The largest packet the broker accepts, when it says (MQTT 5's CONNACK property;
        /// 3.1.1 has no way to tell, and a broker's limit there shows as a disconnect).
        max_packet: Option<u32>,
    },
    /// The oldest queued publish went on the wire with this packet id.
    PublishSent(u16),
    /// A PUBACK; `refused` when the broker said no (MQTT 5 only: 3.1.1 has no reason code).
    PubAck {
        pkid: u16,
        refused: Option<Refusal>,
    },
    /// A message from the broker (the downlink's subscriptions).
    Message(Received),
    /// A SUBACK refusing some filter, with the broker's codes.
    SubscribeRefused(String),
    /// A SUBACK granting every filter.
    Subscribed,
    /// The DISCONNECT went out (shutdown).
    DisconnectSent,
    Other,
}

/// A message received, of either version; acknowledged through [`Session::try_ack`].
#[derive(Debug)]
pub enum Received {
    V311(rumqttc::Publish),
    V5(rumqttc::v5::mqttbytes::v5::Publish),
}

impl Received {
    pub fn topic(&self) -> String {
        match self {
            Received::V311(p) => p.topic.clone(),
            Received::V5(p) => String::from_utf8_lossy(&p.topic).into_owned(),
        }
    }

    pub fn payload(&self) -> &[u8] {
        match self {
            Received::V311(p) => &p.payload,
            Received::V5(p) => &p.payload,
        }
    }
}

/// The connection failed or was refused; its text names the broker's reason code when the
/// protocol carries one.
#[derive(Debug)]
pub enum LinkError {
    V311(rumqttc::ConnectionError),
    V5(rumqttc::v5::ConnectionError),
    /// The connection stayed up (keep-alives answered) but no PUBACK came for this long while
    /// publishes were in flight: the uplink drops it, and resends on the next.
    NoAck(std::time::Duration),
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use rumqttc::v5::{ConnectionError as E5, StateError};
        match self {
            LinkError::V311(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                write!(f, "the broker refused the connection: {code:?}")
            }
            LinkError::V311(e) => e.fmt(f),
            LinkError::V5(E5::ConnectionRefused(code))
            | LinkError::V5(E5::MqttState(StateError::ConnFail { reason: code })) => write!(
                f,
                "the broker refused the connection: {}",
                reason::connack(*code)
            ),
            LinkError::V5(E5::MqttState(StateError::ServerDisconnect {
                reason_code,
                reason_string,
            })) => write!(
                f,
                "the broker closed the connection: {}",
                reason::disconnect(*reason_code, reason_string.clone())
            ),
            LinkError::V5(e) => e.fmt(f),
            LinkError::NoAck(d) => write!(
                f,
                "the broker acknowledged no publish for {d:?} while batches were in flight \
                 (`[uplink] ack_timeout`); reconnecting to send them again"
            ),
        }
    }
}

impl std::error::Error for LinkError {}

/// One MQTT connection of the chosen version, moving through `[mqtt]`'s brokers in turn.
pub struct Session(Link);

/// One of the two, boxed: a session holds one for its life, and the event loops differ in
/// size by half a kilobyte.
enum Link {
    V311(Box<v311::Link>),
    V5(Box<v5::Link>),
}

impl Session {
    /// Builds the options of every broker (TLS files read now: an error says which).
    pub fn new(mqtt: &MqttConfig, options: &SessionOptions) -> Result<Session, String> {
        Ok(Session(match mqtt.protocol {
            Protocol::V311 => Link::V311(Box::new(v311::Link::new(mqtt, options)?)),
            Protocol::V5 => Link::V5(Box::new(v5::Link::new(mqtt, options)?)),
        }))
    }

    /// The next event; connects first when there is no connection. Cancel-safe: rumqttc
    /// keeps partial reads in the event loop's buffers.
    pub async fn poll(&mut self) -> Result<LinkEvent, LinkError> {
        match &mut self.0 {
            Link::V311(l) => l.poll().await,
            Link::V5(l) => l.poll().await,
        }
    }

    /// Queues a QoS 1 publish of `payload`, a UTF-8 document of media type `content_type`
    /// (sent as properties on MQTT 5). Ok means queued in the client, not delivered.
    pub fn try_publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
        content_type: &str,
    ) -> Result<(), String> {
        match &self.0 {
            Link::V311(l) => l.try_publish(topic, payload, retain),
            Link::V5(l) => l.try_publish(topic, payload, retain, content_type),
        }
    }

    /// Subscribes to every topic at QoS 1.
    pub fn try_subscribe_many(&self, topics: Vec<String>) -> Result<(), String> {
        match &self.0 {
            Link::V311(l) => l.try_subscribe_many(topics),
            Link::V5(l) => l.try_subscribe_many(topics),
        }
    }

    /// Acknowledges a received message (manual acks).
    pub fn try_ack(&self, message: &Received) -> Result<(), String> {
        match (&self.0, message) {
            (Link::V311(l), Received::V311(p)) => l.try_ack(p),
            (Link::V5(l), Received::V5(p)) => l.try_ack(p),
            _ => Err("a message of the other MQTT version".into()),
        }
    }

    pub fn try_disconnect(&self) -> Result<(), String> {
        match &self.0 {
            Link::V311(l) => l.try_disconnect(),
            Link::V5(l) => l.try_disconnect(),
        }
    }

    /// Drops the connection now; the next [`Session::poll`] connects again.
    pub fn clean(&mut self) {
        match &mut self.0 {
            Link::V311(l) => l.clean(),
            Link::V5(l) => l.clean(),
        }
    }

    /// Points the next connect at the next broker of the list, and says which (`None` with
    /// one broker).
    pub fn next_broker(&mut self) -> Option<(String, u16)> {
        match &mut self.0 {
            Link::V311(l) => l.next_broker(),
            Link::V5(l) => l.next_broker(),
        }
    }

    /// The broker the current (or next) connection goes to.
    pub fn broker_address(&self) -> (String, u16) {
        match &self.0 {
            Link::V311(l) => l.broker_address(),
            Link::V5(l) => l.broker_address(),
        }
    }
}

/// TLS from `[mqtt.tls]`, the same for both versions; an error says which file could not be
/// read.
fn transport(m: &MqttConfig) -> Result<Option<rumqttc::Transport>, String> {
    let Some(tls) = &m.tls else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let ca = read(&tls.ca)?;
    let client_auth = match (&tls.cert, &tls.key) {
        (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
        _ => None,
    };
    Ok(Some(rumqttc::Transport::tls(ca, client_auth, None)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, DisconnectReasonCode};
    use rumqttc::v5::{ConnectionError as E5, StateError};

    #[test]
    fn a_refused_or_closed_connection_names_the_brokers_reason() {
        let refused = LinkError::V5(E5::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword,
        ));
        assert_eq!(
            refused.to_string(),
            "the broker refused the connection: BadUserNamePassword (0x86)"
        );
        let closed = LinkError::V5(E5::MqttState(StateError::ServerDisconnect {
            reason_code: DisconnectReasonCode::NotAuthorized,
            reason_string: Some("ACL changed".into()),
        }));
        assert_eq!(
            closed.to_string(),
            "the broker closed the connection: NotAuthorized (0x87): ACL changed"
        );
        let old = LinkError::V311(rumqttc::ConnectionError::ConnectionRefused(
            rumqttc::ConnectReturnCode::NotAuthorized,
        ));
        assert_eq!(
            old.to_string(),
            "the broker refused the connection: NotAuthorized"
        );
    }
}
