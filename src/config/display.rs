//! The summary `check-config` prints: what `run` would start.

use std::fmt;

use crate::words;

use super::{Config, DeviceKind};

impl fmt::Display for Config {
    /// The summary `check-config` prints: what `run` would start.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "tenant {} / store {} / gateway {}",
            self.tenant, self.store, self.gateway
        )?;
        for s in &self.stations {
            writeln!(f, "station {} ({})", s.id, s.role.as_str())?;
        }
        for d in &self.devices {
            match &d.kind {
                DeviceKind::Scanner(s) => writeln!(
                    f,
                    "device {} at station {}: scanner on {} @ {} baud, terminator {}, AIM ids {}",
                    d.id,
                    d.station,
                    s.port.display(),
                    s.baud,
                    s.framing.terminator.as_str(),
                    if s.framing.aim { "on" } else { "off" }
                )?,
                DeviceKind::Skin(s) => writeln!(
                    f,
                    "device {} at station {}: skin analyzer (SKN1) on {} @ {} baud",
                    d.id,
                    d.station,
                    s.port.display(),
                    s.baud
                )?,
                DeviceKind::Gate(g) => {
                    writeln!(f, "device {} at station {}: {g}", d.id, d.station)?
                }
                DeviceKind::Camera(c) => {
                    writeln!(f, "device {} at station {}: {c}", d.id, d.station)?
                }
                DeviceKind::SkinHttp(_) | DeviceKind::PeopleCounter(_) => writeln!(
                    f,
                    "device {} at station {}: {} posting to the ingest listener (token set)",
                    d.id,
                    d.station,
                    d.kind.name()
                )?,
                DeviceKind::Nfc(n) => writeln!(
                    f,
                    "device {} at station {}: nfc reader (PN532) on {} @ {} baud, polled every {}",
                    d.id,
                    d.station,
                    n.port.display(),
                    n.baud,
                    words::duration(n.poll_interval)
                )?,
            }
        }
        if let Some(ingest) = &self.ingest {
            writeln!(f, "ingest listener on {}", ingest.listen)?;
        }
        writeln!(f, "status page on http://{}/", self.status.listen)?;
        writeln!(
            f,
            "outbox {} (synchronous {}, quota {}, max age {}, replay window {}{})",
            self.outbox.path.display(),
            self.outbox.synchronous.pragma().to_ascii_lowercase(),
            words::bytes(self.outbox.max_bytes),
            words::duration(self.outbox.max_age),
            words::duration(self.outbox.replay_window),
            self.outbox
                .max_file_bytes
                .map(|b| format!(", file capped at {}", words::bytes(b)))
                .unwrap_or_default()
        )?;
        writeln!(
            f,
            "{} {} as {}{}, events to {}",
            self.mqtt.protocol,
            self.mqtt
                .brokers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" then "),
            self.mqtt.client_id,
            if self.mqtt.tls.is_some() {
                " over TLS"
            } else {
                ""
            },
            self.events_topic()
        )?;
        write!(
            f,
            "batches of up to {} events / {}, {} in flight",
            self.uplink.batch_max_events,
            words::bytes(self.uplink.batch_max_bytes as u64),
            self.uplink.inflight
        )
    }
}
