//! MQTT topic names (docs/architecture.md, DESIGN.md "MQTT topics"). Everything lives under
//! `phygate/v1/{tenant}`; a store's own topics under `phygate/v1/{tenant}/{store}`.

/// The root of every phygate topic; the version changes only with an incompatible format.
pub const ROOT: &str = "phygate/v1";

/// `phygate/v1/{tenant}/{store}`: the prefix the broker's ACL lets store `store` publish under.
pub fn store_prefix(tenant: &str, store: &str) -> String {
    format!("{ROOT}/{tenant}/{store}")
}

/// Up, QoS 1: the store's event batches (`application/cloudevents-batch+json`).
pub fn events(tenant: &str, store: &str) -> String {
    format!("{}/events", store_prefix(tenant, store))
}

/// Up, QoS 1, retained: the gateway's `online` / `offline` status (also its Last Will).
pub fn status(tenant: &str, store: &str) -> String {
    format!("{}/status", store_prefix(tenant, store))
}

/// Down, QoS 1, retained: the tenant's token public keys (a JWKS).
pub fn keys(tenant: &str) -> String {
    format!("{ROOT}/{tenant}/keys")
}

/// Down, QoS 1: one store's member map updates.
pub fn members(tenant: &str, store: &str) -> String {
    format!("{}/members", store_prefix(tenant, store))
}

/// Down, QoS 1: the tenant's fleet-wide member map updates (`…/all/members`).
pub fn fleet_members(tenant: &str) -> String {
    members(tenant, FLEET)
}

/// Down, QoS 1: commands to one store (e.g. open a gate).
pub fn commands(tenant: &str, store: &str) -> String {
    format!("{}/commands", store_prefix(tenant, store))
}

/// Down, QoS 1, retained: the store's config from HQ (a phygate TOML document).
pub fn config(tenant: &str, store: &str) -> String {
    format!("{}/config", store_prefix(tenant, store))
}

/// The pseudo-store of fleet-wide topics: no store may be named this.
pub const FLEET: &str = "all";

/// Every topic a store subscribes to, all QoS 1.
pub fn downlink(tenant: &str, store: &str) -> Vec<String> {
    vec![
        keys(tenant),
        members(tenant, store),
        fleet_members(tenant),
        commands(tenant, store),
        config(tenant, store),
    ]
}

/// The filter every store's event batches match: `phygate/v1/+/+/events`.
pub const ALL_EVENTS: &str = "phygate/v1/+/+/events";

/// HQ's MQTT 5 shared subscription to every store's events: the members of `group` split the
/// stream between them (`$share/{group}/phygate/v1/+/+/events`).
pub fn shared_events(group: &str) -> String {
    format!("$share/{group}/{ALL_EVENTS}")
}

/// The same group's share of every store's status message, for the `seq` report it carries
/// (`$share/{group}/phygate/v1/+/+/status`).
pub fn shared_status(group: &str) -> String {
    format!("$share/{group}/{ROOT}/+/+/status")
}

/// `(tenant, store)` of an events topic, or `None` for any other topic.
pub fn parse_events(topic: &str) -> Option<(&str, &str)> {
    parse_store_topic(topic, "events")
}

/// `(tenant, store)` of a status topic, or `None` for any other topic.
pub fn parse_status(topic: &str) -> Option<(&str, &str)> {
    parse_store_topic(topic, "status")
}

/// `(tenant, store)` of `phygate/v1/{tenant}/{store}/{leaf}`.
fn parse_store_topic<'a>(topic: &'a str, leaf: &str) -> Option<(&'a str, &'a str)> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let mut parts = rest.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(tenant), Some(store), Some(l), None)
            if l == leaf && !tenant.is_empty() && !store.is_empty() =>
        {
            Some((tenant, store))
        }
        _ => None,
    }
}

/// The NATS subjects of every store's status message: the JetStream stream captures them
/// beside the events, for the `seq` report they carry ([`crate::status::SeqReport`]).
pub const ALL_STATUS_SUBJECT: &str = "phygate.v1.*.*.status";

/// The NATS subjects of every store's event batches, as a NATS server's MQTT listener maps the
/// topics: a JetStream stream captures them (`phygate.v1.*.*.events`).
pub const ALL_EVENTS_SUBJECT: &str = "phygate.v1.*.*.events";

/// The MQTT topic a NATS subject came from, undoing nats-server's mapping of MQTT topics to
/// subjects: `/` became `.`, and a `.` inside a topic level became `//`.
pub fn topic_of_nats_subject(subject: &str) -> String {
    subject
        .split("//")
        .map(|part| part.replace('.', "/"))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_documented_layout() {
        assert_eq!(
            events("acme", "paris-01"),
            "phygate/v1/acme/paris-01/events"
        );
        assert_eq!(
            status("acme", "paris-01"),
            "phygate/v1/acme/paris-01/status"
        );
        assert_eq!(fleet_members("acme"), "phygate/v1/acme/all/members");
        assert_eq!(
            shared_events("journey"),
            "$share/journey/phygate/v1/+/+/events"
        );
    }

    #[test]
    fn events_topics_parse_back() {
        assert_eq!(
            parse_events(&events("acme", "paris-01")),
            Some(("acme", "paris-01"))
        );
        for other in [
            "phygate/v1/acme/paris-01/status",
            "phygate/v1/acme/events",
            "phygate/v1//s/events",
            "phygate/v1/a/s/events/x",
            "phygate/v2/a/s/events",
        ] {
            assert_eq!(parse_events(other), None, "{other}");
        }
        assert_eq!(
            parse_status(&status("acme", "paris-01")),
            Some(("acme", "paris-01"))
        );
        assert_eq!(parse_status(&events("acme", "paris-01")), None);
    }

    #[test]
    fn nats_subjects_map_back_to_the_topics() {
        assert_eq!(
            topic_of_nats_subject("phygate.v1.acme.paris-01.events"),
            "phygate/v1/acme/paris-01/events"
        );
        // nats-server writes a dot inside a level as `//`.
        assert_eq!(
            topic_of_nats_subject("phygate.v1.acme.paris//01.events"),
            "phygate/v1/acme/paris.01/events"
        );
    }
}
