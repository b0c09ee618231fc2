//! `phygate status`: the page's facts on a terminal, for a technician over SSH. Reads
//! `/status.json` from the running gateway with a plain HTTP/1.0 GET (loopback, no TLS: the
//! listener is local), so the command needs nothing but the binary.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::report::Report;

/// A status endpoint that does not answer within this is reported as down.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StatusCliError {
    /// Only `http://host:port[/]` is understood.
    #[error("{0:?} is not an http://host:port URL")]
    BadUrl(String),
    /// Nothing answers there: the gateway is not running, or listens elsewhere (`[status] listen`).
    #[error("cannot reach {url}: {source} (is phygate running? is [status] listen this address?)")]
    Unreachable { url: String, source: std::io::Error },
    #[error("{url} answered something that is not a phygate status: {detail}")]
    BadAnswer { url: String, detail: String },
}

/// Fetches and decodes `{url}/status.json`.
pub fn fetch(url: &str) -> Result<Report, StatusCliError> {
    let hostport = url
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|hp| !hp.is_empty() && !hp.contains('/'))
        .ok_or_else(|| StatusCliError::BadUrl(url.into()))?;
    let unreachable = |source| StatusCliError::Unreachable {
        url: url.into(),
        source,
    };
    let addr = hostport
        .to_socket_addrs()
        .map_err(unreachable)?
        .next()
        .ok_or_else(|| StatusCliError::BadUrl(url.into()))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(unreachable)?;
    write!(
        stream,
        "GET /status.json HTTP/1.0\r\nHost: {hostport}\r\n\r\n"
    )
    .map_err(unreachable)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(unreachable)?;
    let bad = |detail: String| StatusCliError::BadAnswer {
        url: url.into(),
        detail,
    };
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no HTTP answer".into()))?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        return Err(bad(head.lines().next().unwrap_or_default().into()));
    }
    serde_json::from_str(body).map_err(|e| bad(e.to_string()))
}
