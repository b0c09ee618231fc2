//! The HQ engineer's fleet controls: each publishes what the stores' downlink consumes
//! (docs/downlink.md), after the check the stores would apply, run with the edge's own code on
//! the very bytes to be published, and says what the stores answered.
//!
//! - [`keys`]: `keys rotate`, `keys retire` (the tenant's retained JWKS).
//! - [`members`]: `members push` (a versioned snapshot or delta).
//! - [`config`]: `config push` (a store's retained TOML config; waits for applied/rejected).
//! - [`command`]: `command open-gate` (waits for the store's `store.command.result`).
//!
//! Each is idempotent: run again, it publishes the same thing (same kid set, same member
//! version, same config digest, same command id with `--id`), which the stores take as already
//! applied.

pub mod answers;
pub mod applied;
pub mod command;
pub mod config;
pub mod keys;
pub mod members;
pub mod mqtt;
pub mod state;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};

/// Where and for whom a control publishes.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The broker, `host:port` (MQTT 3.1.1; TLS with --ca).
    #[arg(long, env = "PHYGATE_HQ_BROKER", default_value = "127.0.0.1:1883")]
    pub broker: String,
    /// TLS: the CA that signed the broker's certificate (PEM). Without it, plain TCP.
    #[arg(long, env = "PHYGATE_HQ_CA")]
    pub ca: Option<PathBuf>,
    /// TLS client certificate (PEM), for a broker that requires one; with --key.
    #[arg(long, env = "PHYGATE_HQ_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "PHYGATE_HQ_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// MQTT username; the password comes from PHYGATE_HQ_MQTT_PASSWORD, never the command line.
    #[arg(long, env = "PHYGATE_HQ_MQTT_USERNAME")]
    pub username: Option<String>,
    /// The tenant whose stores are addressed.
    #[arg(long, env = "PHYGATE_HQ_TENANT")]
    pub tenant: String,
    /// The controls' local state: published kids, pushed member versions, private keys.
    #[arg(long, env = "PHYGATE_HQ_STATE", default_value = ".")]
    pub state_dir: PathBuf,
}

/// The fleet control subcommands, flattened into `phygate-hq`'s.
#[derive(Subcommand, Debug)]
pub enum Control {
    /// The tenant's token signing keys (the retained JWKS).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Member maps (card hash → app user).
    #[command(subcommand)]
    Members(MembersCommand),
    /// Store configs (a phygate TOML config per store).
    #[command(subcommand, name = "config")]
    StoreConfig(ConfigCommand),
    /// Commands to a store.
    #[command(subcommand)]
    Command(CommandCommand),
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Adds a new signing key and publishes the key set with the old kids and the new one.
    Rotate {
        #[command(flatten)]
        target: Target,
        /// The new kid (default `hq-` and the Unix time).
        #[arg(long)]
        kid: Option<String>,
        /// Where the private key goes (default `{state-dir}/{kid}.key`, mode 0600).
        #[arg(long)]
        key_out: Option<PathBuf>,
        /// Wait this long for every store to report the new key set, and say which did.
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<Duration>,
    },
    /// Publishes the key set without `--kid`, once no token it signed can still be valid.
    Retire {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        kid: String,
        /// Wait this long for every store to report the key set without it.
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<Duration>,
    },
}

#[derive(Subcommand, Debug)]
pub enum MembersCommand {
    /// Publishes a member map from a CSV (`card_hash,userid`) or JSON file.
    Push {
        #[command(flatten)]
        target: Target,
        /// `store` (one store's map, needs --store) or `all` (the fleet-wide map).
        #[arg(long, value_parser = ["store", "all"])]
        scope: String,
        /// The store, with --scope store.
        #[arg(long)]
        store: Option<String>,
        /// `card_hash,userid` lines (.csv), or JSON (.json): a list of {card_hash, userid}.
        #[arg(long)]
        file: PathBuf,
        /// The version to publish (default: the last pushed + 1).
        #[arg(long)]
        version: Option<u64>,
        /// Send a delta from this previously pushed version instead of a snapshot.
        #[arg(long)]
        delta_from: Option<u64>,
        /// Wait this long for the targeted stores (one, or every store with a status) to
        /// report the version, and say which did.
        #[arg(long, value_parser = humantime::parse_duration)]
        wait: Option<Duration>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validates a config with the stores' validator, publishes it, waits for the answers.
    Push {
        #[command(flatten)]
        target: Target,
        /// The one store to configure.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        store: Option<String>,
        /// Every store with a status on the broker.
        #[arg(long)]
        all: bool,
        /// A phygate TOML config (for --all, without `store`: each store gets its own).
        #[arg(long)]
        file: PathBuf,
        /// How long to wait for the stores' answers.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
}

#[derive(Subcommand, Debug)]
pub enum CommandCommand {
    /// Opens a gate; waits for and prints the store's `store.command.result`.
    OpenGate {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        store: String,
        #[arg(long)]
        station: String,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        expires: Duration,
        /// The command's id (default: a fresh one). The same id is the same command.
        #[arg(long)]
        id: Option<String>,
    },
}

/// Runs one control; the exit code says whether the stores did what was asked.
pub fn dispatch(control: Control) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(control))
}

async fn run(control: Control) -> anyhow::Result<ExitCode> {
    match control {
        Control::Keys(KeysCommand::Rotate {
            target,
            kid,
            key_out,
            wait,
        }) => {
            check_target(&target, None)?;
            let kid = kid.unwrap_or_else(|| format!("hq-{}", state::now_s()));
            if !keys::rotate(&target, &kid, key_out.as_deref(), wait).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Control::Keys(KeysCommand::Retire { target, kid, wait }) => {
            check_target(&target, None)?;
            if !keys::retire(&target, &kid, wait).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Control::Members(MembersCommand::Push {
            target,
            scope,
            store,
            file,
            version,
            delta_from,
            wait,
        }) => {
            let scope = match (scope.as_str(), store) {
                ("store", Some(s)) => members::Scope::Store(s),
                ("store", None) => bail!("--scope store needs --store"),
                (_, Some(_)) => bail!("--scope all is the fleet-wide map: no --store"),
                _ => members::Scope::Fleet,
            };
            if let members::Scope::Store(s) = &scope {
                check_target(&target, Some(s))?;
            }
            check_target(&target, None)?;
            if !members::push(&target, &scope, &file, version, delta_from, wait).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Control::StoreConfig(ConfigCommand::Push {
            target,
            store,
            all: _,
            file,
            wait,
        }) => {
            check_target(&target, store.as_deref())?;
            let stores = store.map_or(config::Stores::All, config::Stores::One);
            if !config::push(&target, stores, &file, wait).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Control::Command(CommandCommand::OpenGate {
            target,
            store,
            station,
            expires,
            id,
        }) => {
            check_target(&target, Some(&store))?;
            let answer = command::open_gate(&target, &store, &station, expires, id).await?;
            return Ok(report_command(&store, answer));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report_command(store: &str, answer: command::Result) -> ExitCode {
    match answer {
        Some((outcome, data)) => {
            println!(
                "{store}: {outcome} {}",
                serde_json::json!({ "store.command.result": data })
            );
            if outcome == "done" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        None => {
            println!("{store}: no store.command.result in time (the store is offline, or the command expired on the way)");
            ExitCode::from(2)
        }
    }
}

/// A tenant and store id usable in a topic: non-empty, no MQTT wildcard or level separator.
fn check_target(target: &Target, store: Option<&str>) -> anyhow::Result<()> {
    let bad = |s: &str| s.is_empty() || s.contains(['/', '+', '#']);
    if bad(&target.tenant) {
        bail!("--tenant (or PHYGATE_HQ_TENANT) must be a tenant id without / + #");
    }
    match store {
        Some(s) if bad(s) || s == phygate_proto::topic::FLEET => {
            bail!("store {s:?} is not a store id (no / + #, not `all`)")
        }
        _ => Ok(()),
    }
}
