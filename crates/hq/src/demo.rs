//! `phygate-hq demo`: HQ beside a running `phygate demo`, showing the journey engine's view.
//!
//! The store demo writes the HQ config for its broker to [`demo_config_path`] while it runs;
//! this reads it, adds a webhook sink pointing at a small receiver in this process, and runs
//! the real consumer (shared subscription, journey store, seq accounting, sink with its durable
//! cursor). The receiver checks each request's signature and prints each event as the engine
//! receives it: what a Braze campaign or a CDP would act on.

use std::path::PathBuf;

use anyhow::Context;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Config;

/// The signing secret of the demo's webhook; not a secret, the demo's receiver is local.
const DEMO_SECRET: &str = "phygate-demo-webhook";
const SECRET_ENV: &str = "PHYGATE_HQ_DEMO_WEBHOOK_SECRET";

/// Where `phygate demo` leaves the HQ config for its broker while it runs (a fixed name in
/// the temp dir, so that `phygate-hq demo` needs no argument).
pub fn demo_config_path() -> PathBuf {
    std::env::temp_dir().join("phygate-demo-hq.toml")
}

pub async fn run(config: Option<PathBuf>) -> anyhow::Result<()> {
    let path = config.unwrap_or_else(demo_config_path);
    let base = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no running store demo found ({} is missing): start `cargo run -- demo` first, \
             in another terminal",
            path.display()
        )
    })?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let engine = listener.local_addr()?;
    let app = axum::Router::new().route("/events", axum::routing::post(receive));
    tokio::spawn(async move { axum::serve(listener, app).await });
    // Sinks take secrets from the environment or a file, never from config text; this
    // process's own environment is the simplest place for the demo's.
    std::env::set_var(SECRET_ENV, DEMO_SECRET);
    let text = format!(
        "{base}\n[[sink]]\nname = \"engine\"\nkind = \"webhook\"\nurl = \"http://{engine}/events\"\n\
         api_key_env = \"{SECRET_ENV}\"\nanonymous = true\npoll = \"100ms\"\n"
    );
    let config = Config::parse(&text, &path)?;
    eprintln!(
        "phygate-hq demo: consuming the store demo's events (config {}); the journey engine's view:",
        path.display()
    );
    crate::run::run(config).await
}

/// The engine: checks the signature as docs/hq.md tells receivers to, prints the event.
async fn receive(headers: HeaderMap, body: Bytes) -> StatusCode {
    let signed = headers
        .get("x-phygate-signature")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("sha256="))
        .unwrap_or_default()
        .to_owned();
    let mut mac = Hmac::<Sha256>::new_from_slice(DEMO_SECRET.as_bytes()).expect("any key length");
    mac.update(&body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if signed != expected {
        eprintln!("engine: refused a request with a wrong signature");
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(e) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let s = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
    println!(
        "engine ← {:<22} user={:<8} store={} station={} {}",
        s("type"),
        e["userid"].as_str().unwrap_or("(anonymous)"),
        s("storeid"),
        s("stationid"),
        e["data"]
    );
    StatusCode::OK
}
