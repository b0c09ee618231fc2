//! The simulated store's traffic: what a real store's devices produce, in a realistic mix.
//!
//! - 50 % anonymous gate passes (`store.gate.passed`, the entrance counter): analytics only.
//! - 35 % identified app-token scans (`store.qr.scanned`, `userid`, `idsource = qr_token`).
//! - 15 % identified skin diagnoses (`store.skin.diagnosed`, measures and a skin type).
//!
//! Each event's `time` is taken just before its outbox append, and is strictly increasing per
//! gateway (bumped by 1 ms when two events fall in the same millisecond). The engines measure
//! latency from it (store commit → engine request), and the Braze-like server identifies an
//! event by (`external_id`, `time`), since Braze events carry no event id: user ids are unique
//! per store and a store has one gateway, so that pair names one event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use phygate::event::{Event, EventData, GatePassed, QrScanned, SkinDiagnosed};
use phygate::sources::Direction;
use phygate_proto::envelope::IdSource;

/// Customers a store knows at once: each gets a stable user id.
const CUSTOMERS: u64 = 200;
const SKIN_TYPES: [&str; 4] = ["dry", "oily", "combination", "normal"];

/// One store's event source.
pub struct Mix {
    store: String,
    rng: fastrand::Rng,
    last: SystemTime,
    gate: Arc<str>,
    scanner: Arc<str>,
    kiosk: Arc<str>,
}

impl Mix {
    pub fn new(store: &str, seed: u64) -> Mix {
        Mix {
            store: store.to_owned(),
            rng: fastrand::Rng::with_seed(seed),
            last: SystemTime::UNIX_EPOCH,
            gate: "entrance".into(),
            scanner: "checkout-1".into(),
            kiosk: "beauty-kiosk".into(),
        }
    }

    /// The next event, timed now (or 1 ms after the previous one).
    pub fn next_event(&mut self) -> Event {
        let mut now = SystemTime::now();
        if now <= self.last + Duration::from_millis(1) {
            now = self.last + Duration::from_millis(1);
        }
        // The envelope keeps milliseconds: truncate so `last` compares as HQ will see it.
        let ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        now = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        self.last = now;
        let roll = self.rng.u32(0..100);
        if roll < 50 {
            return self.gate_pass(now);
        }
        let user = format!("u-{}-{}", self.store, self.rng.u64(0..CUSTOMERS));
        let mut e = if roll < 85 {
            self.token_scan(now)
        } else {
            self.diagnosis(now)
        };
        e.userid = Some(user);
        e.idsource = IdSource::QrToken;
        e
    }

    fn gate_pass(&mut self, now: SystemTime) -> Event {
        let direction = if self.rng.bool() {
            Direction::In
        } else {
            Direction::Out
        };
        Event::new(
            self.gate.clone(),
            now,
            EventData::GatePassed(GatePassed {
                gate: "door-counter".into(),
                direction,
                count: 1,
                from: None,
                to: None,
            }),
        )
    }

    fn token_scan(&mut self, now: SystemTime) -> Event {
        let mut e = Event::new(
            self.scanner.clone(),
            now,
            EventData::QrScanned(QrScanned {
                kind: "app_token",
                symbology: "qr",
                aim: Some("]Q1".into()),
                payload: None,
                kid: Some("app-2026".into()),
                jti: Some(uuid::Uuid::from_u128(self.rng.u128(..)).to_string()),
                verdict: Some("ok"),
                gate_opened: None,
            }),
        );
        e.stage = Some("browse");
        e
    }

    fn diagnosis(&mut self, now: SystemTime) -> Event {
        let mut measure =
            |lo: f64, hi: f64| ((lo + self.rng.f64() * (hi - lo)) * 10.0).round() / 10.0;
        let measures = BTreeMap::from([
            ("moisture".to_owned(), measure(20.0, 80.0)),
            ("pigmentation".to_owned(), measure(0.0, 40.0)),
            ("pores".to_owned(), measure(0.0, 10.0)),
            ("redness".to_owned(), measure(0.0, 20.0)),
            ("sebum".to_owned(), measure(5.0, 60.0)),
            ("wrinkles".to_owned(), measure(0.0, 10.0)),
        ]);
        let skin_type = SKIN_TYPES[self.rng.usize(..SKIN_TYPES.len())];
        let mut e = Event::new(
            self.kiosk.clone(),
            now,
            EventData::SkinDiagnosed(SkinDiagnosed {
                model: "AX-200".into(),
                measures,
                extra: BTreeMap::new(),
                skin_type: Some(skin_type),
                device_seq: None,
                device_time: None,
            }),
        );
        e.stage = Some("engage");
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_strictly_increase_and_the_mix_has_every_kind() {
        let mut mix = Mix::new("s0001", 7);
        let events: Vec<Event> = (0..2000).map(|_| mix.next_event()).collect();
        assert!(events.windows(2).all(|w| w[0].time < w[1].time));
        let anonymous = events.iter().filter(|e| e.userid.is_none()).count();
        let diagnoses = events
            .iter()
            .filter(|e| matches!(e.data, EventData::SkinDiagnosed(_)))
            .count();
        assert!((800..1200).contains(&anonymous), "{anonymous}");
        assert!((150..450).contains(&diagnoses), "{diagnoses}");
        assert!(events.iter().filter(|e| e.userid.is_some()).all(|e| e
            .userid
            .as_deref()
            .unwrap()
            .starts_with("u-s0001-")));
    }
}
