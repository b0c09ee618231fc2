//! `[mqtt]`'s broker addresses: the single `host` (+ `port`) of a store that talks to one
//! broker, or `brokers = ["host:port", …]` for a clustered one (every node of a NATS, EMQX or
//! HiveMQ cluster takes the store's connection). Both sessions try them in turn
//! (`mqtt::brokers`).

use crate::uplink::settings::BrokerAddr;

/// Reads `mqtt.host`/`mqtt.port` or `mqtt.brokers` into a list that is never empty; each
/// problem comes with the key it is about.
pub fn addresses(
    host: Option<String>,
    port: Option<u16>,
    brokers: Option<Vec<String>>,
) -> Result<Vec<BrokerAddr>, Vec<(String, String)>> {
    let mut problems: Vec<(String, String)> = Vec::new();
    let mut say = |key: String, message: &str| problems.push((key, message.to_owned()));
    let list = match (host, brokers) {
        (Some(_), Some(_)) => {
            say(
                "mqtt.brokers".into(),
                "give either host (and port) or brokers, not both",
            );
            Vec::new()
        }
        (None, None) => {
            say(
                "mqtt.host".into(),
                "must name the HQ broker (or list a cluster's nodes in mqtt.brokers)",
            );
            Vec::new()
        }
        (Some(host), None) => {
            let port = port.unwrap_or(DEFAULT_PORT);
            if host.trim().is_empty() {
                say("mqtt.host".into(), "must name the HQ broker");
            }
            if port == 0 {
                say("mqtt.port".into(), "must be 1-65535");
            }
            vec![BrokerAddr { host, port }]
        }
        (None, Some(list)) => {
            if port.is_some() {
                say(
                    "mqtt.port".into(),
                    "each entry of mqtt.brokers carries its own port (\"host:port\")",
                );
            }
            if list.is_empty() {
                say(
                    "mqtt.brokers".into(),
                    "must list at least one \"host:port\"",
                );
            }
            let mut out = Vec::new();
            for (i, entry) in list.iter().enumerate() {
                match parse_one(entry) {
                    Ok(a) if out.contains(&a) => {
                        say(format!("mqtt.brokers[{i}]"), "is listed twice")
                    }
                    Ok(a) => out.push(a),
                    Err(why) => say(format!("mqtt.brokers[{i}]"), &why),
                }
            }
            out
        }
    };
    if problems.is_empty() {
        Ok(list)
    } else {
        Err(problems)
    }
}

pub const DEFAULT_PORT: u16 = 1883;

/// `host:port`, `[v6]:port`; the port is required so that a list never mixes a guessed port
/// with written ones.
fn parse_one(entry: &str) -> Result<BrokerAddr, String> {
    let example = "\"host:port\", e.g. \"nats-1.hq.example:1883\"";
    let Some((host, port)) = entry.rsplit_once(':') else {
        return Err(format!("{entry:?} has no port: write {example}"));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{entry:?} has no host name: write {example}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(BrokerAddr {
            host: host.to_owned(),
            port: p,
        }),
        _ => Err(format!("{entry:?}: the port must be 1-65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(r: Result<Vec<BrokerAddr>, Vec<(String, String)>>) -> Vec<String> {
        r.unwrap_err().into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn the_single_form_keeps_its_default_port() {
        let a = addresses(Some("hq".into()), None, None).unwrap();
        assert_eq!(
            a,
            vec![BrokerAddr {
                host: "hq".into(),
                port: 1883
            }]
        );
    }

    #[test]
    fn a_list_keeps_its_order() {
        let a = addresses(
            None,
            None,
            Some(vec!["n1:1883".into(), "[::1]:1884".into()]),
        )
        .unwrap();
        assert_eq!(a[0].to_string(), "n1:1883");
        assert_eq!(a[1].host, "::1");
        assert_eq!(a[1].port, 1884);
    }

    #[test]
    fn every_bad_entry_is_named_by_its_index() {
        let k = keys(addresses(
            None,
            Some(1883),
            Some(vec![
                "n1:1883".into(),
                "n2".into(),
                ":1883".into(),
                "n3:0".into(),
                "n1:1883".into(),
            ]),
        ));
        assert_eq!(
            k,
            [
                "mqtt.port",
                "mqtt.brokers[1]",
                "mqtt.brokers[2]",
                "mqtt.brokers[3]",
                "mqtt.brokers[4]"
            ]
        );
    }

    #[test]
    fn both_forms_or_neither_are_refused() {
        assert_eq!(
            keys(addresses(Some("h".into()), None, Some(vec!["h:1".into()]))),
            ["mqtt.brokers"]
        );
        assert_eq!(keys(addresses(None, None, None)), ["mqtt.host"]);
        assert_eq!(keys(addresses(None, None, Some(vec![]))), ["mqtt.brokers"]);
    }

    #[test]
    fn check_config_places_a_bad_entry_on_its_line() {
        let text = "tenant = \"acme\"\nstore = \"s1\"\n[mqtt]\nbrokers = [\"n1:1883\", \"n2\"]\n";
        let err = crate::config::Config::parse(text, std::path::Path::new("x.toml")).unwrap_err();
        let p = err
            .problems
            .iter()
            .find(|p| p.field == "mqtt.brokers[1]")
            .unwrap_or_else(|| panic!("{err}"));
        assert_eq!(p.line, Some(4), "{err}");
        assert!(p.message.contains("has no port"), "{err}");
        let good = text.replace("\"n2\"", "\"n2:1884\"");
        let c = crate::config::Config::parse(&good, std::path::Path::new("x.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.mqtt.brokers.len(), 2);
        assert!(c.to_string().contains("n1:1883 then n2:1884"), "{c}");
    }
}
