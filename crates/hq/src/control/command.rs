//! `command open-gate`: one command to one store, with a fresh id and an expiry, then the
//! store's `store.command.result` for that id, read from the store's events topic (subscribed
//! before publishing, so the answer cannot come first).
//!
//! Run again with the same `--id`, it is the same command: the store does not run it twice and
//! answers `duplicate`.

use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use phygate_proto::downlink::CommandMessage;
use phygate_proto::envelope::types;
use serde_json::Value;

use super::mqtt::Link;
use super::{answers, Target};

/// Extra time for the answer after the command's expiry: it may have run just before it, and
/// the result then travels through the store's outbox and uplink.
const ANSWER_MARGIN: Duration = Duration::from_secs(15);

/// The store's answer: `done`, `failed`, `refused`, `expired` or `duplicate`, and its detail.
pub type Result = Option<(String, Value)>;

/// Publishes the command and waits for its result (`None`: no answer in time).
pub async fn open_gate(
    target: &Target,
    store: &str,
    station: &str,
    expires: Duration,
    id: Option<String>,
) -> anyhow::Result<Result> {
    let id = id.unwrap_or_else(|| format!("cmd-{:016x}", fastrand::u64(..)));
    let message = CommandMessage {
        id: id.clone(),
        expires_at: phygate_proto::envelope::format_time(SystemTime::now() + expires),
        command: "open_gate".into(),
        station: Some(station.to_owned()),
        from_seq: None,
        to_seq: None,
    };
    let body = serde_json::to_vec(&message)?;
    let topic = phygate_proto::topic::commands(&target.tenant, store);
    if let Err(e) = phygate::downlink::parse(&target.tenant, store, &topic, &body) {
        bail!("the store would refuse this command: {e}");
    }
    let mut link = Link::to(target).await?;
    link.subscribe(&phygate_proto::topic::events(&target.tenant, store))
        .await?;
    // Without a PUBACK the command may still have reached the broker: the same id makes a
    // retry safe (the store runs an id once), a fresh one would not.
    link.publish(&topic, body, false).await.with_context(|| {
        format!("command {id}: to retry it without running it twice, use --id {id}")
    })?;
    println!(
        "{store}: published command {id} (open_gate at {station}, expires at {})",
        message.expires_at
    );
    let deadline = tokio::time::Instant::now() + expires + ANSWER_MARGIN;
    let answer = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(p) = link.next_message(left).await? else {
            break None;
        };
        let found = answers::parse(&p.topic, &p.payload).into_iter().find(|a| {
            a.kind == types::COMMAND_RESULT && a.data["command_id"].as_str() == Some(id.as_str())
        });
        if let Some(a) = found {
            let outcome = a.data["outcome"].as_str().unwrap_or("?").to_owned();
            break Some((outcome, a.data));
        }
    };
    link.close().await;
    Ok(answer)
}
