//! The broker's reason codes, named for people: what a CONNACK refusal, a PUBACK with a failure
//! code and a server DISCONNECT say, in the log and on the status page. Pure mapping (rumqttc
//! keeps its own code tables private); the numbers are MQTT 5 §2.4 "Reason Code".
//!
//! Only MQTT 5 has reason codes on PUBACK and DISCONNECT. On 3.1.1 a broker that refuses a
//! publish (an ACL denial) still acknowledges it, or closes the connection without a word:
//! the store cannot tell, which is why an ACL that denies the events topic loses events on
//! 3.1.1 (docs/fleet.md, the durability boundary).

use std::fmt;

use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, DisconnectReasonCode, PubAckReason};

/// A broker's "no": which code, its name, and the broker's own words when it sent any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: u8,
    pub name: &'static str,
    /// MQTT 5's reason string property, when the broker gave one.
    pub reason: Option<String>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:02x})", self.name, self.code)?;
        if let Some(r) = &self.reason {
            write!(f, ": {r}")?;
        }
        Ok(())
    }
}

/// A PUBACK's verdict: `None` when the broker took the message. `NoMatchingSubscribers`
/// (0x10) is a success: the broker accepted it, nobody listens right now.
pub fn puback(reason: PubAckReason, reason_string: Option<String>) -> Option<Refusal> {
    let (code, name) = match reason {
        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => return None,
        PubAckReason::UnspecifiedError => (0x80, "UnspecifiedError"),
        PubAckReason::ImplementationSpecificError => (0x83, "ImplementationSpecificError"),
        PubAckReason::NotAuthorized => (0x87, "NotAuthorized"),
        PubAckReason::TopicNameInvalid => (0x90, "TopicNameInvalid"),
        PubAckReason::PacketIdentifierInUse => (0x91, "PacketIdentifierInUse"),
        PubAckReason::QuotaExceeded => (0x97, "QuotaExceeded"),
        PubAckReason::PayloadFormatInvalid => (0x99, "PayloadFormatInvalid"),
    };
    Some(Refusal {
        code,
        name,
        reason: reason_string,
    })
}

/// A CONNACK refusal of MQTT 5.
pub fn connack(code: ConnectReturnCode) -> Refusal {
    use ConnectReturnCode as C;
    let (code, name) = match code {
        C::Success => (0x00, "Success"),
        C::UnspecifiedError => (0x80, "UnspecifiedError"),
        C::MalformedPacket => (0x81, "MalformedPacket"),
        C::ProtocolError => (0x82, "ProtocolError"),
        C::ImplementationSpecificError => (0x83, "ImplementationSpecificError"),
        C::UnsupportedProtocolVersion | C::RefusedProtocolVersion => {
            (0x84, "UnsupportedProtocolVersion")
        }
        C::ClientIdentifierNotValid | C::BadClientId => (0x85, "ClientIdentifierNotValid"),
        C::BadUserNamePassword => (0x86, "BadUserNamePassword"),
        C::NotAuthorized => (0x87, "NotAuthorized"),
        C::ServerUnavailable | C::ServiceUnavailable => (0x88, "ServerUnavailable"),
        C::ServerBusy => (0x89, "ServerBusy"),
        C::Banned => (0x8a, "Banned"),
        C::BadAuthenticationMethod => (0x8c, "BadAuthenticationMethod"),
        C::TopicNameInvalid => (0x90, "TopicNameInvalid"),
        C::PacketTooLarge => (0x95, "PacketTooLarge"),
        C::QuotaExceeded => (0x97, "QuotaExceeded"),
        C::PayloadFormatInvalid => (0x99, "PayloadFormatInvalid"),
        C::RetainNotSupported => (0x9a, "RetainNotSupported"),
        C::QoSNotSupported => (0x9b, "QoSNotSupported"),
        C::UseAnotherServer => (0x9c, "UseAnotherServer"),
        C::ServerMoved => (0x9d, "ServerMoved"),
        C::ConnectionRateExceeded => (0x9f, "ConnectionRateExceeded"),
    };
    Refusal {
        code,
        name,
        reason: None,
    }
}

/// A DISCONNECT the broker sent (MQTT 5): why it ended the connection.
pub fn disconnect(code: DisconnectReasonCode, reason_string: Option<String>) -> Refusal {
    Refusal {
        // The enum's discriminants are the wire codes.
        code: code as u8,
        name: disconnect_name(code),
        reason: reason_string,
    }
}

fn disconnect_name(code: DisconnectReasonCode) -> &'static str {
    use DisconnectReasonCode as D;
    match code {
        D::NormalDisconnection => "NormalDisconnection",
        D::DisconnectWithWillMessage => "DisconnectWithWillMessage",
        D::UnspecifiedError => "UnspecifiedError",
        D::MalformedPacket => "MalformedPacket",
        D::ProtocolError => "ProtocolError",
        D::ImplementationSpecificError => "ImplementationSpecificError",
        D::NotAuthorized => "NotAuthorized",
        D::ServerBusy => "ServerBusy",
        D::ServerShuttingDown => "ServerShuttingDown",
        D::KeepAliveTimeout => "KeepAliveTimeout",
        D::SessionTakenOver => "SessionTakenOver",
        D::TopicFilterInvalid => "TopicFilterInvalid",
        D::TopicNameInvalid => "TopicNameInvalid",
        D::ReceiveMaximumExceeded => "ReceiveMaximumExceeded",
        D::TopicAliasInvalid => "TopicAliasInvalid",
        D::PacketTooLarge => "PacketTooLarge",
        D::MessageRateTooHigh => "MessageRateTooHigh",
        D::QuotaExceeded => "QuotaExceeded",
        D::AdministrativeAction => "AdministrativeAction",
        D::PayloadFormatInvalid => "PayloadFormatInvalid",
        D::RetainNotSupported => "RetainNotSupported",
        D::QoSNotSupported => "QoSNotSupported",
        D::UseAnotherServer => "UseAnotherServer",
        D::ServerMoved => "ServerMoved",
        D::SharedSubscriptionNotSupported => "SharedSubscriptionNotSupported",
        D::ConnectionRateExceeded => "ConnectionRateExceeded",
        D::MaximumConnectTime => "MaximumConnectTime",
        D::SubscriptionIdentifiersNotSupported => "SubscriptionIdentifiersNotSupported",
        D::WildcardSubscriptionsNotSupported => "WildcardSubscriptionsNotSupported",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acl_denial_and_a_full_quota_are_refusals_with_their_wire_codes() {
        let denied = puback(PubAckReason::NotAuthorized, None).unwrap();
        assert_eq!(denied.code, 0x87);
        assert_eq!(denied.to_string(), "NotAuthorized (0x87)");
        let quota = puback(PubAckReason::QuotaExceeded, Some("store over quota".into())).unwrap();
        assert_eq!(quota.to_string(), "QuotaExceeded (0x97): store over quota");
    }

    #[test]
    fn no_matching_subscribers_is_delivered_not_refused() {
        // HQ's consumer down for a minute must not stall the store's outbox.
        assert_eq!(puback(PubAckReason::NoMatchingSubscribers, None), None);
        assert_eq!(puback(PubAckReason::Success, None), None);
    }

    #[test]
    fn connack_and_disconnect_codes_are_the_specs() {
        assert_eq!(
            connack(ConnectReturnCode::BadUserNamePassword).to_string(),
            "BadUserNamePassword (0x86)"
        );
        assert_eq!(connack(ConnectReturnCode::NotAuthorized).code, 0x87);
        let d = disconnect(DisconnectReasonCode::SessionTakenOver, None);
        assert_eq!(d.to_string(), "SessionTakenOver (0x8e)");
        assert_eq!(
            disconnect(
                DisconnectReasonCode::AdministrativeAction,
                Some("kicked".into())
            )
            .to_string(),
            "AdministrativeAction (0x98): kicked"
        );
    }
}
