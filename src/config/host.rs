//! What `run` needs of the machine besides a well-formed file, checked before it starts: the
//! TLS files parse the way the uplink will read them, and the outbox directory can be created
//! and written. Checking never leaves anything behind.

use std::path::Path;
use std::sync::Arc;

use super::TlsConfig;

/// Why the broker's TLS could not be set up from these files, per key (`ca`, `cert`, `key`).
/// rumqttc reads them with rustls-pemfile when it connects, which is too late: a gateway
/// that cannot connect still runs, buffering to an outbox nobody will ever drain.
pub(super) fn tls_problems(t: &TlsConfig) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let ca = certificates(&t.ca).map_err(|e| problems.push(("ca", e)));
    if let Ok(ca) = ca {
        let mut roots = rustls::RootCertStore::empty();
        if roots.add_parsable_certificates(ca).0 == 0 {
            problems.push((
                "ca",
                format!("{} holds no usable CA certificate", t.ca.display()),
            ));
        }
    }
    let cert = t
        .cert
        .as_deref()
        .map(|p| certificates(p).map_err(|e| problems.push(("cert", e))));
    let key = t
        .key
        .as_deref()
        .map(|p| private_key(p).map_err(|e| problems.push(("key", e))));
    if let (Some(Ok(cert)), Some(Ok(key))) = (cert, key) {
        // What the uplink's connector does with them: refuses a key of an unsupported type or
        // one that is not the certificate's.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let built = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.with_root_certificates(rustls::RootCertStore::empty())
                    .with_client_auth_cert(cert, key)
            });
        if let Ok(Err(e)) | Err(e) = built.map(|r| r.map(drop)) {
            let key_path = t.key.as_deref().unwrap_or(Path::new("")).display();
            problems.push((
                "key",
                format!("{key_path} cannot be used with the certificate: {e}"),
            ));
        }
    }
    problems
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn certificates(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    let bytes = read(path)?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, String> {
    let bytes = read(path)?;
    match rustls_pemfile::private_key(&mut bytes.as_slice()) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(format!(
            "{} holds no PEM private key (-----BEGIN PRIVATE KEY-----)",
            path.display()
        )),
        Err(e) => Err(format!("{} is not PEM: {e}", path.display())),
    }
}

/// Whether the outbox at `db` can be opened for writing, as `Outbox::open` will: its directory
/// created where missing, a file written in it. Probed with a temporary file in the deepest
/// directory that exists, removed at once; no missing directory is created.
pub(super) fn outbox_writable(db: &Path) -> Result<(), String> {
    if db.is_dir() {
        return Err(format!(
            "{} is a directory, not a database file",
            db.display()
        ));
    }
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    if !existing.is_dir() {
        return Err(format!(
            "cannot create the directory {}: {} is not a directory",
            dir.display(),
            existing.display()
        ));
    }
    let what = if existing == dir {
        format!("cannot write in {}", dir.display())
    } else {
        format!(
            "cannot create the directory {} in {}",
            dir.display(),
            existing.display()
        )
    };
    tempfile::Builder::new()
        .prefix(".phygate-check-")
        .tempfile_in(existing)
        .map_err(|e| format!("{what}: {e}"))?;
    if db.exists() {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(db)
            .map_err(|e| format!("cannot open {} for writing: {e}", db.display()))?;
    }
    Ok(())
}
