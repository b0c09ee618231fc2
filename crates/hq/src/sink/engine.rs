//! What every journey engine has in common, as plain data: the request to send, the answer
//! read back, and the [`Verdict`] the engine's rules draw from it. No I/O here; the runner
//! sends and waits.

use std::time::{Duration, SystemTime};

use super::mapping::Mapped;

/// A request ready to go out.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// An answer read back in full.
#[derive(Debug, Clone, Default)]
pub struct HttpResponse {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `Retry-After` in seconds (the form engines use), as a point in time.
    pub fn retry_after(&self, now: SystemTime) -> Option<SystemTime> {
        let secs: u64 = self.header("retry-after")?.trim().parse().ok()?;
        Some(now + Duration::from_secs(secs))
    }

    /// The body's start, for a log line or a park reason.
    pub fn excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(300).collect()
    }
}

/// What an answer means for the batch that was sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The engine took the request; the events at these indexes were refused for good (park
    /// them), the others are done.
    Done { refused: Vec<(usize, String)> },
    /// The engine took nothing and named the events it refuses for good: park them and send
    /// the rest again.
    Resend { refused: Vec<(usize, String)> },
    /// The engine took nothing and may take the same later: at `at` when it says so (a reset
    /// header), else after the backoff. `throttled`: a rate limit, not a failure.
    Retry {
        at: Option<SystemTime>,
        throttled: bool,
        reason: String,
    },
    /// The engine refuses us, not the events (an API key or URL in our config): retry with
    /// the backoff, and log an error each time, until an operator fixes it.
    Misconfigured(String),
    /// The engine refused the request as a whole, without naming events (malformed, too
    /// large): split it in half; a single event refused so is parked with the reason.
    Split(String),
}

/// One journey engine's rules.
pub trait Engine: Send + Sync {
    /// Most events in one request.
    fn max_events(&self) -> usize;
    /// A request body must stay below this many bytes.
    fn max_bytes(&self) -> usize;
    /// Whether the engine takes this event at all (Braze: only identified users).
    fn accepts(&self, e: &Mapped) -> bool;
    fn request(&self, batch: &[Mapped]) -> HttpRequest;
    /// Reads the answer to the request made of `batch`.
    fn verdict(&self, r: &HttpResponse, batch: &[Mapped], now: SystemTime) -> Verdict;
}

/// The verdict every engine shares for the statuses its docs do not give a special meaning.
pub fn common_verdict(r: &HttpResponse, now: SystemTime) -> Verdict {
    match r.status {
        401 | 403 | 404 => Verdict::Misconfigured(format!("HTTP {}: {}", r.status, r.excerpt())),
        413 => Verdict::Split(format!("HTTP 413: {}", r.excerpt())),
        429 => Verdict::Retry {
            at: r.retry_after(now),
            throttled: true,
            reason: "HTTP 429".into(),
        },
        // Timeouts and conflicts at a proxy are passing, like the 5xx.
        408 | 409 | 500..=599 => Verdict::Retry {
            at: r.retry_after(now),
            throttled: false,
            reason: format!("HTTP {}: {}", r.status, r.excerpt()),
        },
        s => Verdict::Split(format!("HTTP {s}: {}", r.excerpt())),
    }
}
