//! Each stage's settings, from the validated config: the one place where the config's shape
//! meets the stages' own (the stages import nothing of the config).

use super::{Config, DeviceKind};
use crate::downlink::settings::DownlinkSettings;
use crate::ingest::settings::{Endpoint, HttpDevice, IngestSettings};
use crate::link::settings::JourneySettings;
use crate::status::settings::{BoardDevice, OpsSettings, ReportSettings};
use crate::uplink::settings::UplinkSettings;

impl Config {
    pub fn journey_settings(&self) -> JourneySettings {
        JourneySettings {
            tenant: self.tenant.clone(),
            store: self.store.clone(),
            identity: self.identity.clone(),
            stations: self.stations.clone(),
        }
    }

    pub fn uplink_settings(&self) -> UplinkSettings {
        UplinkSettings {
            mqtt: self.mqtt.clone(),
            batching: self.uplink.clone(),
            events_topic: self.events_topic(),
            status_topic: self.status_topic(),
            gateway: self.gateway.clone(),
        }
    }

    pub fn downlink_settings(&self) -> DownlinkSettings {
        DownlinkSettings {
            mqtt: self.mqtt.clone(),
            tenant: self.tenant.clone(),
            store: self.store.clone(),
            backoff_min: self.uplink.backoff_min,
            backoff_max: self.uplink.backoff_max,
        }
    }

    /// `None` when no device posts to the listener.
    pub fn ingest_settings(&self) -> Option<IngestSettings> {
        let ingest = self.ingest.as_ref()?;
        let devices = self
            .devices
            .iter()
            .filter_map(|d| {
                let endpoint = match &d.kind {
                    DeviceKind::PeopleCounter(_) => Endpoint::Counts,
                    DeviceKind::SkinHttp(_) => Endpoint::Skin,
                    _ => return None,
                };
                Some(HttpDevice {
                    id: d.id.clone(),
                    station: d.station.clone(),
                    endpoint,
                    token: d.kind.http()?.token.clone(),
                })
            })
            .collect();
        Some(IngestSettings {
            listen: ingest.listen,
            stations: self.stations.iter().map(|s| s.id.clone()).collect(),
            devices,
        })
    }

    /// Every configured device, in config order, for the status board.
    pub fn board_devices(&self) -> Vec<BoardDevice> {
        self.devices
            .iter()
            .map(|d| BoardDevice {
                id: d.id.clone(),
                kind: d.kind.name(),
                station: d.station.clone(),
            })
            .collect()
    }

    pub fn ops_settings(&self) -> OpsSettings {
        OpsSettings {
            log: self.log.clone(),
            status: self.status.clone(),
            report: ReportSettings {
                store: self.store.clone(),
                gateway: self.gateway.clone(),
                broker: format!(
                    "{}{}",
                    self.mqtt
                        .brokers
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    if self.mqtt.tls.is_some() {
                        " (TLS)"
                    } else {
                        ""
                    }
                ),
                quota_bytes: self.outbox.max_bytes,
            },
        }
    }
}
