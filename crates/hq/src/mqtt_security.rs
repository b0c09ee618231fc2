//! TLS and credentials for HQ's MQTT connections: the consumer's MQTT 5 session, the
//! repairer's replay requests and the fleet controls (both MQTT 3.1.1). One [`Security`] turns
//! them into rumqttc options for either protocol version, so every connection to a broker
//! authenticates the same way; [`RawSecurity::validate`] checks the `[mqtt]` keys that name
//! them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rumqttc::Transport;

use crate::sink::config::Secret;

/// How HQ proves itself to the broker. The default: plain TCP, anonymous.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// The CA of the broker's certificate (PEM): TLS when set.
    pub ca: Option<PathBuf>,
    /// A client certificate and its private key (PEM files), for a broker that requires one.
    pub client: Option<(PathBuf, PathBuf)>,
    pub username: Option<String>,
    /// Never from the command line or the config file itself: a file or the environment.
    pub password: Option<Secret>,
}

impl Security {
    /// For MQTT 3.1.1 options (the controls and the repairer).
    pub fn apply(&self, options: &mut rumqttc::MqttOptions) -> anyhow::Result<()> {
        if let Some((user, password)) = self.credentials() {
            options.set_credentials(user, password);
        }
        if let Some(transport) = self.transport()? {
            options.set_transport(transport);
        }
        Ok(())
    }

    /// For MQTT 5 options (the consumer).
    pub fn apply_v5(&self, options: &mut rumqttc::v5::MqttOptions) -> anyhow::Result<()> {
        if let Some((user, password)) = self.credentials() {
            options.set_credentials(user, password);
        }
        if let Some(transport) = self.transport()? {
            options.set_transport(transport);
        }
        Ok(())
    }

    /// For log lines: which of TLS, a client certificate and a username are in use (never the
    /// password).
    pub fn describe(&self) -> String {
        let mut parts = vec![if self.ca.is_some() {
            "tls"
        } else {
            "plain tcp"
        }];
        if self.client.is_some() {
            parts.push("client certificate");
        }
        if self.username.is_some() {
            parts.push("username");
        }
        parts.join(", ")
    }

    fn credentials(&self) -> Option<(String, String)> {
        let user = self.username.clone()?;
        // A username alone is legal MQTT; rumqttc sends the login as a pair.
        let password = self
            .password
            .as_ref()
            .map(|p| p.0.clone())
            .unwrap_or_default();
        Some((user, password))
    }

    fn transport(&self) -> anyhow::Result<Option<Transport>> {
        let Some(ca) = &self.ca else {
            return Ok(None);
        };
        let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
        let client = match &self.client {
            Some((cert, key)) => Some((read(cert)?, read(key)?)),
            None => None,
        };
        // rumqttc's rustls needs a process-wide provider: ring, as the gateway uses (a second
        // install is refused harmlessly).
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Some(Transport::tls(read(ca)?, client, None)))
    }
}

/// The security keys of a config table, as written; `at` names the table in errors.
#[derive(Debug, Default)]
pub(crate) struct RawSecurity {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
}

impl RawSecurity {
    /// No key set: the table leaves the security to its default.
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none()
            && self.cert_file.is_none()
            && self.key_file.is_none()
            && self.username.is_none()
            && self.password_file.is_none()
            && self.password_env.is_none()
    }

    /// Resolves the files against `base` (the config's directory) and checks that each can be
    /// read now, rather than at the first connection; pushes what is wrong onto `problems`.
    pub fn validate(self, base: &Path, at: &str, problems: &mut Vec<String>) -> Security {
        let mut file = |key: &str, path: Option<PathBuf>| {
            crate::config::readable_file(base, &format!("{at}.{key}"), path, problems)
        };
        let ca = file("ca_file", self.ca_file);
        let client = match (
            file("cert_file", self.cert_file),
            file("key_file", self.key_file),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                problems.push(format!(
                    "{at}: cert_file and key_file go together (a client certificate and its key)"
                ));
                None
            }
        };
        if client.is_some() && ca.is_none() {
            problems.push(format!(
                "{at}: a client certificate needs TLS; set ca_file (the broker certificate's CA)"
            ));
        }
        let password = crate::config::read_secret(
            self.password_file.as_deref(),
            self.password_env.as_deref(),
            base,
            &format!("{at}.password"),
        )
        .unwrap_or_else(|e| {
            problems.push(e);
            None
        });
        match &self.username {
            Some(u) if u.is_empty() => problems.push(format!("{at}.username: must not be empty")),
            None if password.is_some() => problems.push(format!(
                "{at}: a password needs a username (MQTT sends no password alone)"
            )),
            _ => {}
        }
        Security {
            ca,
            client,
            username: self.username,
            password,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate(raw: RawSecurity, base: &Path) -> Result<Security, String> {
        let mut problems = Vec::new();
        let s = raw.validate(base, "mqtt", &mut problems);
        if problems.is_empty() {
            Ok(s)
        } else {
            Err(problems.join("\n"))
        }
    }

    #[test]
    fn files_are_found_next_to_the_config_and_the_password_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "hq.pem", "hq.key"] {
            std::fs::write(dir.path().join(f), "pem").unwrap();
        }
        std::fs::write(dir.path().join("mqtt.password"), "s3cret\n").unwrap();
        let s = validate(
            RawSecurity {
                ca_file: Some("ca.pem".into()),
                cert_file: Some("hq.pem".into()),
                key_file: Some("hq.key".into()),
                username: Some("hq".into()),
                password_file: Some("mqtt.password".into()),
                password_env: None,
            },
            dir.path(),
        )
        .unwrap();
        assert_eq!(s.ca.as_deref(), Some(dir.path().join("ca.pem").as_path()));
        assert_eq!(s.credentials(), Some(("hq".into(), "s3cret".into())));
        assert!(
            !format!("{s:?}").contains("s3cret"),
            "the config display would show it"
        );
        assert_eq!(s.describe(), "tls, client certificate, username");
    }

    #[test]
    fn a_missing_file_half_a_client_pair_or_a_password_without_a_user_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hq.pem"), "pem").unwrap();
        let e = validate(
            RawSecurity {
                ca_file: Some("nowhere.pem".into()),
                cert_file: Some("hq.pem".into()),
                password_env: Some("PATH".into()),
                ..Default::default()
            },
            dir.path(),
        )
        .unwrap_err();
        for needle in [
            "mqtt.ca_file",
            "nowhere.pem",
            "cert_file and key_file go together",
            "a password needs a username",
        ] {
            assert!(e.contains(needle), "{needle:?} not in {e}");
        }
        let e = validate(
            RawSecurity {
                cert_file: Some("hq.pem".into()),
                key_file: Some("hq.pem".into()),
                username: Some("hq".into()),
                password_file: Some("pw".into()),
                password_env: Some("PATH".into()),
                ..Default::default()
            },
            dir.path(),
        )
        .unwrap_err();
        for needle in ["needs TLS; set ca_file", "mqtt.password: exactly one"] {
            assert!(e.contains(needle), "{needle:?} not in {e}");
        }
    }

    #[test]
    fn nothing_set_is_plain_and_anonymous() {
        let s = validate(RawSecurity::default(), Path::new(".")).unwrap();
        assert!(s.ca.is_none() && s.client.is_none() && s.credentials().is_none());
        assert_eq!(s.describe(), "plain tcp");
    }
}
