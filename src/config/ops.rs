//! Config of the operations side: the local status listener (`[status]`) and the log level
//! (`[log]`). Both can change on a SIGHUP reload without a restart (see `daemon::reload`).

use std::net::SocketAddr;

use super::*;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStatus {
    listen: Option<String>,
    required: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    level: Option<String>,
}

/// Loopback: the page is for whoever is on the box or tunnels to it (ssh -L). Opening it to
/// the store LAN is a deliberate `listen = "0.0.0.0:8080"`.
pub const DEFAULT_STATUS_LISTEN: &str = "127.0.0.1:8080";

impl Validator<'_> {
    /// `required` names declared devices: a device with mistakes of its own still counts, so
    /// it is reported once, at its table.
    pub(super) fn status(
        &mut self,
        raw: RawStatus,
        devices: &[DeviceConfig],
        declared: &Declared<'_>,
    ) -> StatusConfig {
        let text = raw.listen.as_deref().unwrap_or(DEFAULT_STATUS_LISTEN);
        let listen = text.parse::<SocketAddr>().unwrap_or_else(|_| {
            self.problem(
                "status.listen",
                format!("{text:?} is not an address:port, e.g. \"127.0.0.1:8080\""),
            );
            DEFAULT_STATUS_LISTEN.parse().expect("a valid default")
        });
        let required = match raw.required {
            None => devices
                .iter()
                .filter(|d| d.kind.http().is_none())
                .map(|d| d.id.clone())
                .collect(),
            Some(ids) => {
                for (i, id) in ids.iter().enumerate() {
                    if !declared.devices.contains(&Some(id.as_str())) {
                        self.problem(
                            format!("status.required[{i}]"),
                            format!("no device {id:?} is declared"),
                        );
                    }
                }
                ids
            }
        };
        StatusConfig { listen, required }
    }

    pub(super) fn log(&mut self, raw: RawLog) -> LogConfig {
        if let Some(level) = &raw.level {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(level) {
                self.problem(
                    "log.level",
                    format!("{level:?} is not a log filter ({e}); e.g. \"info\" or \"phygate=debug,info\""),
                );
            }
        }
        LogConfig { level: raw.level }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
tenant = "acme"
store = "s1"

[[station]]
id = "gate-1"
role = "gate"

[[device]]
kind = "scanner"
id = "scanner-1"
station = "gate-1"
port = "/dev/phygate/scanner0"

[[device]]
kind = "people_counter"
id = "counter-1"
station = "gate-1"
token = "0123456789abcdef0123"

[mqtt]
host = "127.0.0.1"
"#;

    #[test]
    fn status_defaults_to_loopback_and_every_device_with_a_port() {
        let c = Config::parse(BASE, Path::new("x.toml")).unwrap();
        assert_eq!(c.status.listen.to_string(), DEFAULT_STATUS_LISTEN);
        assert_eq!(c.status.required, ["scanner-1"]);
        assert_eq!(c.log.level, None);
    }

    #[test]
    fn status_and_log_are_checked() {
        let bad = format!(
            "{BASE}\n[status]\nlisten = \"8080\"\nrequired = [\"scanner-9\"]\n[log]\nlevel = \"info,=[\"\n"
        );
        let err = Config::parse(&bad, Path::new("x.toml")).unwrap_err();
        let fields: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            ["status.listen", "status.required[0]", "log.level"],
            "{err}"
        );
        assert_eq!(err.problems[0].line, Some(25), "{err}");
    }
}

#[cfg(test)]
mod shipped {
    use super::*;

    /// The config the package installs as /etc/phygate/phygate.toml parses, once the TLS files
    /// it names exist (validation checks they parse as a CA, a certificate and its key).
    #[test]
    fn the_example_config_in_hw_is_valid() {
        let text = include_str!("../../hw/phygate.example.toml");
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["paris-01".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        for (f, pem) in [
            ("ca.pem", cert.pem()),
            ("client.pem", cert.pem()),
            ("client.key", key.serialize_pem()),
        ] {
            std::fs::write(dir.path().join(f), pem).unwrap();
        }
        let here = format!("{}/", dir.path().display());
        let text = text.replace("/etc/phygate/", &here);
        let c = Config::parse(&text, Path::new("/etc/phygate/phygate.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.devices.len(), 4);
        assert_eq!(c.outbox.path, Path::new("/var/lib/phygate/phygate.db"));
        assert!(c.mqtt.tls.as_ref().is_some_and(|t| t.cert.is_some()));
        assert_eq!(c.status.listen.to_string(), DEFAULT_STATUS_LISTEN);
        assert_eq!(c.status.required.len(), 4);
    }
}
