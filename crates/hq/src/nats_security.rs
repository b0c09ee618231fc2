//! TLS and login for the JetStream input's NATS connection (`[input] kind = "jetstream"`), the
//! counterpart of [`crate::mqtt_security`] for a NATS cluster. [`RawNatsSecurity::validate`]
//! checks the `[input]` keys that name them; [`NatsSecurity::apply`] hands them to async-nats's
//! own `ConnectOptions`, which speaks the protocol (nonce signing, TLS upgrade).
//!
//! One way to log in, at most: a `.creds` file (a user JWT and its NKey seed: what an
//! operator-mode cluster, the usual production setup, issues), an NKey seed file, a username
//! and password, or a token. Secrets come only from files or the environment, never from the
//! config itself or the command line, so that they show in no process list or `check-config`.

use std::path::{Path, PathBuf};

use crate::sink::config::Secret;

/// How HQ proves itself to the NATS servers. The default: no TLS unless a server asks for it,
/// anonymous.
#[derive(Debug, Clone, Default)]
pub struct NatsSecurity {
    /// `Some`: TLS is required of every server (the client refuses a plain connection).
    pub tls: Option<Tls>,
    pub login: Login,
}

#[derive(Debug, Clone)]
pub struct Tls {
    /// The CA of the servers' certificates (PEM); `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// A client certificate and its private key (PEM files), for servers that verify clients.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The one way HQ logs in. Each secret is held as read at start (its `Debug` hides it).
#[derive(Debug, Clone, Default)]
pub enum Login {
    #[default]
    Anonymous,
    /// A `.creds` file's contents: the user JWT and the NKey seed that signs the server's nonce.
    Creds {
        file: PathBuf,
        creds: Secret,
    },
    /// A user NKey seed; `public` is its public key (`U…`), which the server's config names.
    NKey {
        public: String,
        seed: Secret,
    },
    User {
        name: String,
        password: Secret,
    },
    Token(Secret),
}

impl NatsSecurity {
    /// `options` with this login and TLS. Fails only on a `.creds` file async-nats cannot read,
    /// which [`RawNatsSecurity::validate`] already refused.
    pub fn apply(
        &self,
        options: async_nats::ConnectOptions,
    ) -> std::io::Result<async_nats::ConnectOptions> {
        let mut options = match &self.login {
            Login::Anonymous => options,
            Login::Creds { creds, .. } => options.credentials(&creds.0)?,
            Login::NKey { seed, .. } => options.nkey(seed.0.clone()),
            Login::User { name, password } => {
                options.user_and_password(name.clone(), password.0.clone())
            }
            Login::Token(token) => options.token(token.0.clone()),
        };
        if let Some(tls) = &self.tls {
            // Required of every server, also of those the cluster announces (they come without
            // a scheme): otherwise a node that offers plain TCP would get the login in the
            // clear. The files are read at each connection: a renewed certificate is taken at
            // the next reconnect.
            options = options.require_tls(true);
            if let Some(ca) = &tls.ca {
                options = options.add_root_certificates(ca.clone());
            }
            if let Some((cert, key)) = &tls.client {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
            // async-nats's rustls needs a process-wide provider: ring, as everywhere in HQ (a
            // second install is refused harmlessly).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        Ok(options)
    }

    /// For log lines: TLS, a client certificate and who HQ logs in as (never a secret).
    pub fn describe(&self) -> String {
        let mut parts = vec![match &self.tls {
            Some(_) => "tls",
            None => "no tls unless the server asks",
        }
        .to_owned()];
        if self.tls.as_ref().is_some_and(|t| t.client.is_some()) {
            parts.push("client certificate".into());
        }
        parts.push(match &self.login {
            Login::Anonymous => "anonymous".into(),
            Login::Creds { file, .. } => format!("creds {}", file.display()),
            Login::NKey { public, .. } => format!("nkey {public}"),
            Login::User { name, .. } => format!("user {name}"),
            Login::Token(_) => "token".into(),
        });
        parts.join(", ")
    }
}

/// The security keys of `[input]`, as written.
#[derive(Debug, Default)]
pub(crate) struct RawNatsSecurity {
    pub creds_file: Option<PathBuf>,
    pub nkey_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub tls_required: Option<bool>,
}

impl RawNatsSecurity {
    /// The keys that are set, for a table that does not take them (`kind = "mqtt"`).
    pub fn keys_set(&self) -> Vec<&'static str> {
        [
            ("creds_file", self.creds_file.is_some()),
            ("nkey_file", self.nkey_file.is_some()),
            ("username", self.username.is_some()),
            ("password_file", self.password_file.is_some()),
            ("password_env", self.password_env.is_some()),
            ("token_file", self.token_file.is_some()),
            ("token_env", self.token_env.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("cert_file", self.cert_file.is_some()),
            ("key_file", self.key_file.is_some()),
            ("tls_required", self.tls_required.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }

    /// Resolves the files against `base` (the config's directory), reads the secrets and checks
    /// that each file can be read now, rather than at the first connection; pushes what is wrong
    /// onto `problems`. `tls_scheme`: a server of the list is written `tls://`.
    pub fn validate(
        self,
        base: &Path,
        tls_scheme: bool,
        problems: &mut Vec<String>,
    ) -> NatsSecurity {
        let tls = self.tls(base, tls_scheme, problems);
        let login = self.login(base, problems);
        NatsSecurity { tls, login }
    }

    fn tls(&self, base: &Path, tls_scheme: bool, problems: &mut Vec<String>) -> Option<Tls> {
        let mut file = |key: &str, path: &Option<PathBuf>| {
            crate::config::readable_file(base, &format!("input.{key}"), path.clone(), problems)
        };
        let ca = file("ca_file", &self.ca_file);
        let client = match (
            file("cert_file", &self.cert_file),
            file("key_file", &self.key_file),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                problems.push(
                    "input: cert_file and key_file go together (a client certificate and its key)"
                        .into(),
                );
                None
            }
        };
        let implied = ca.is_some() || client.is_some() || tls_scheme;
        match self.tls_required {
            Some(false) if implied => {
                problems.push(
                    "input.tls_required = false: ca_file, cert_file and tls:// servers mean TLS; \
                     remove one or the other"
                        .into(),
                );
                None
            }
            Some(true) => Some(Tls { ca, client }),
            _ => implied.then_some(Tls { ca, client }),
        }
    }

    fn login(self, base: &Path, problems: &mut Vec<String>) -> Login {
        let chosen: Vec<&str> = [
            ("creds_file", self.creds_file.is_some()),
            ("nkey_file", self.nkey_file.is_some()),
            (
                "username/password",
                self.username.is_some()
                    || self.password_file.is_some()
                    || self.password_env.is_some(),
            ),
            (
                "token",
                self.token_file.is_some() || self.token_env.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(way, set)| set.then_some(way))
        .collect();
        if chosen.len() > 1 {
            problems.push(format!(
                "input: {} are set; log in one way only (creds_file, nkey_file, username with \
                 password_file/password_env, or token_file/token_env)",
                chosen.join(" and ")
            ));
            return Login::Anonymous;
        }
        let secret = |at: &str, file: Option<&Path>, env: Option<&str>, p: &mut Vec<String>| {
            crate::config::read_secret(file, env, base, at).unwrap_or_else(|e| {
                p.push(e);
                None
            })
        };
        if let Some(file) = self.creds_file {
            let path = base.join(file);
            // Read whole, not through `read_secret`: a .creds file is a framed document, and
            // async-nats's parser wants the line end after its last frame, which a trim drops.
            // Parsed by async-nats itself, so a file it would refuse is refused now.
            let parsed = std::fs::read_to_string(&path).and_then(|text| {
                async_nats::ConnectOptions::new().credentials(&text)?;
                Ok(text)
            });
            return match parsed {
                Ok(text) => Login::Creds {
                    file: path,
                    creds: Secret(text),
                },
                Err(e) => {
                    problems.push(format!("input.creds_file: {}: {e}", path.display()));
                    Login::Anonymous
                }
            };
        }
        if let Some(file) = self.nkey_file {
            let path = base.join(&file);
            let Some(seed) = secret("input.nkey_file", Some(&file), None, problems) else {
                return Login::Anonymous;
            };
            return match nkeys::KeyPair::from_seed(&seed.0) {
                Ok(pair) if pair.key_pair_type() == nkeys::KeyPairType::User => Login::NKey {
                    public: pair.public_key(),
                    seed,
                },
                Ok(pair) => {
                    problems.push(format!(
                        "input.nkey_file: {}: a {:?} seed; a client logs in with a user seed (SU…)",
                        path.display(),
                        pair.key_pair_type()
                    ));
                    Login::Anonymous
                }
                Err(e) => {
                    problems.push(format!(
                        "input.nkey_file: {}: not an NKey seed ({e})",
                        path.display()
                    ));
                    Login::Anonymous
                }
            };
        }
        if self.token_file.is_some() || self.token_env.is_some() {
            let token = secret(
                "input.token",
                self.token_file.as_deref(),
                self.token_env.as_deref(),
                problems,
            );
            return token.map_or(Login::Anonymous, Login::Token);
        }
        let has_password = self.password_file.is_some() || self.password_env.is_some();
        match &self.username {
            Some(name) if name.is_empty() => {
                problems.push("input.username: must not be empty".into())
            }
            Some(_) if !has_password => problems
                .push("input.username: needs its password in password_file or password_env".into()),
            None if has_password => problems.push("input: a password needs a username".into()),
            _ => {}
        }
        let password = secret(
            "input.password",
            self.password_file.as_deref(),
            self.password_env.as_deref(),
            problems,
        );
        match (self.username, password) {
            (Some(name), Some(password)) if !name.is_empty() => Login::User { name, password },
            _ => Login::Anonymous,
        }
    }
}
