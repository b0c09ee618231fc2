//! HQ's config: the retained `…/{store}/config` topic carries a whole phygate TOML config,
//! checked with the same validation as a local file (`Config::parse`).
//!
//! - **Kept:** an accepted one is written (atomically, fsynced) to [`STORED_NAME`] next to the
//!   outbox database: the state directory, the one place the service may write
//!   (`/var/lib/phygate`; `/etc/phygate` is read-only under `ProtectSystem=strict`).
//! - **Precedence:** a stored HQ config is the config in force, over the local file; the local
//!   file is the bootstrap (enough to reach HQ) and the fallback, used when nothing is stored or
//!   when the stored config no longer validates (e.g. after an upgrade), which is logged. To go
//!   back to the local file, delete the stored file and restart. SIGHUP re-reads the stored
//!   file while there is one. Relative paths in HQ's config are relative to the state directory.
//! - **Applied** like a SIGHUP reload (`daemon::reload`): `[status]` and `[log]` at once, every
//!   other section at the next start (the event and the log say which).
//! - **Rejected whole** when it does not validate, or names another tenant or store: nothing of
//!   it is stored or applied.
//! - **Reported** to HQ as `store.config.applied` (`version`, `live`, `restart`) or
//!   `store.config.rejected` (`version`, `reasons`). The version is the text's SHA-256 digest
//!   (`sha256:` and 16 hex digits), which HQ can compute from what it published.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tracing::{error, info};

use super::Config;

/// The stored HQ config's file name, next to the outbox database.
pub const STORED_NAME: &str = "hq-config.toml";

/// Where HQ's config is kept for a daemon whose outbox is at `outbox`.
pub fn stored_path(outbox: &Path) -> PathBuf {
    outbox.with_file_name(STORED_NAME)
}

/// The version HQ's config is reported with: its text's digest.
pub fn version(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Validates HQ's config for the running store; every problem on failure (the file's own, and
/// a tenant or store that is not this gateway's).
pub fn check(text: &str, stored: &Path, running: &Config) -> Result<Config, Vec<String>> {
    check_for(text, stored, &running.tenant, &running.store)
}

/// [`check`] for store `store` of `tenant`, without its running config: what HQ runs before it
/// publishes (`phygate-hq config push`), so the two sides cannot disagree on what is valid.
pub fn check_for(
    text: &str,
    stored: &Path,
    tenant: &str,
    store: &str,
) -> Result<Config, Vec<String>> {
    let parsed = Config::parse(text, stored);
    let mut problems: Vec<String> = match &parsed {
        Ok(_) => Vec::new(),
        Err(e) => e
            .problems
            .iter()
            .map(|p| match p.line {
                Some(line) => format!("line {line}: field `{}`: {}", p.field, p.message),
                None => format!("field `{}`: {}", p.field, p.message),
            })
            .collect(),
    };
    // Read from the TOML as written, so they are reported along with any other problem.
    let table: toml::Table = toml::from_str(text).unwrap_or_default();
    for (field, ours) in [("tenant", tenant), ("store", store)] {
        match table.get(field).and_then(|v| v.as_str()) {
            Some(theirs) if theirs != ours => problems.push(format!(
                "field `{field}`: {theirs:?} is not this gateway's {field} {ours:?}"
            )),
            _ => {}
        }
    }
    match parsed {
        Ok(config) if problems.is_empty() => Ok(config),
        _ => Err(problems),
    }
}

/// Replaces the stored config: a temp file, fsync, rename, fsync of the directory, so a crash
/// leaves the old file or the new one, never half of one.
pub fn persist(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = path.with_extension("toml.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The config to run with and its text: the stored HQ config when there is one that validates
/// for the local file's store, else the local file's.
pub struct Effective {
    pub config: Config,
    pub text: String,
    /// HQ's config's version when it is the one in force.
    pub hq_version: Option<String>,
    /// Where HQ's config is kept: next to the *local* file's outbox, the bootstrap. The running
    /// daemon writes there too, so an HQ config that moves `[outbox] path` is still found at the
    /// next start.
    pub stored: PathBuf,
}

/// Chooses the config in force at start (see the module doc for the precedence).
pub fn effective(local: Config, local_text: String) -> Effective {
    let stored = stored_path(&local.outbox.path);
    let Ok(text) = std::fs::read_to_string(&stored) else {
        return Effective {
            config: local,
            text: local_text,
            hq_version: None,
            stored,
        };
    };
    match check(&text, &stored, &local) {
        Ok(config) => {
            let v = version(&text);
            info!(version = %v, file = %stored.display(), "HQ's config is in force (the local file is the fallback)");
            Effective {
                config,
                text,
                hq_version: Some(v),
                stored,
            }
        }
        Err(problems) => {
            error!(
                file = %stored.display(),
                "the stored HQ config is not valid; running the local file. {}",
                problems.join("; ")
            );
            Effective {
                config: local,
                text: local_text,
                hq_version: None,
                stored,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_a_stable_digest() {
        assert_eq!(version("a"), version("a"));
        assert_ne!(version("a"), version("b"));
        assert_eq!(version("").len(), "sha256:".len() + 16);
    }

    #[test]
    fn stored_next_to_the_database() {
        assert_eq!(
            stored_path(Path::new("/var/lib/phygate/phygate.db")),
            Path::new("/var/lib/phygate/hq-config.toml")
        );
        assert_eq!(stored_path(Path::new("x.db")), Path::new("hq-config.toml"));
    }
}
