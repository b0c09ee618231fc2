//! The ingest listener's settings, as the config validates them (`[ingest]` and the devices that
//! post to it): plain values.

use std::fmt;
use std::net::SocketAddr;

/// A device that posts to the ingest listener (a tablet analyzer or a people counter).
#[derive(Debug, Clone)]
pub struct HttpDeviceConfig {
    pub token: Token,
}

/// The local HTTP ingest listener.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub listen: SocketAddr,
}

/// A device's bearer token. A secret: never printed, compared in constant time.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// A token the config has checked (length, characters).
    pub fn new(token: String) -> Token {
        Token(token)
    }

    /// True when `presented` is this token. Constant time in the token's content, so a client
    /// cannot guess it byte by byte from response times.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        if mine.len() != presented.len() {
            return false;
        }
        mine.iter()
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(redacted)")
    }
}

/// Everything the ingest listener is given.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub listen: SocketAddr,
    /// Every declared station id: a post names one.
    pub stations: Vec<String>,
    pub devices: Vec<HttpDevice>,
}

/// A device that posts to the listener.
#[derive(Debug, Clone)]
pub struct HttpDevice {
    pub id: String,
    pub station: String,
    pub endpoint: Endpoint,
    pub token: Token,
}

/// Which endpoint a device may post to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// A people counter.
    Counts,
    /// A tablet skin analyzer.
    Skin,
}
