//! The identity rules, as plain state: who a reading belongs to, which station session and
//! visit it joins, what journey stage it marks, and whether it opens a gate. No I/O: the link
//! stage feeds readings and time in and stores what comes out.
//!
//! - An app token (docs/protocols.md §5) is verified offline; a valid one identifies its user, opens a
//!   session at the station and, at an entry gate with purpose `entry` (or none), opens the gate.
//!   Any other verdict is still an event and links to nobody.
//! - A tap of a member card (hash → user pushed by HQ) identifies its user the same way. A card
//!   tapped during a `pur: link` session at the same station is registered to that user.
//! - Anonymous readings at a station (a diagnosis, a product scan) during a session there belong
//!   to the session's user. A new identification at the station ends the previous session.
//! - An identified entry at a gate starts a visit; an exit (a scan or tap at an `out` gate) or no
//!   sighting for `visit_idle` ends it with its dwell time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use self::members::scope_index;
use super::jwks::KeySet;
use super::replay::{apply_replay, ReplayGuard};
use super::settings::JourneySettings;
use super::stage::StageRules;
use super::token::{extract_token, verify, Purpose, Verdict, VerifyContext};
use super::{classify_code, CodeKind};
use crate::clock::unix_ms;
use crate::downlink::MemberScope;
use crate::event::*;
use crate::outbox::StateWrite;
use crate::sources::skin::skn1::SkinReading;
use crate::sources::{Observation, Reading};
use crate::station::Direction;
use crate::station::StationRole;

/// State keys the identity rules persist (in the outbox's state table).
pub use crate::outbox::keys::{
    JTI_PREFIX, KEYS_JWKS, MEMBERS_VERSION, MEMBER_PREFIX, VISIT_PREFIX,
};

/// What one reading (or one tick) produced.
#[derive(Debug, Default)]
pub struct Linked {
    /// In order; the reading's own event first.
    pub events: Vec<Event>,
    /// Committed with the events, in the same transaction.
    pub state: Vec<StateWrite>,
    /// The gate at this station should open for `events[0]` (a valid entry token).
    pub unlock: Option<Arc<str>>,
}

struct Session {
    user: String,
    purpose: Option<Purpose>,
    until: Instant,
}

#[derive(Serialize, Deserialize)]
struct Visit {
    id: String,
    anonid: String,
    station: String,
    started_ms: u64,
    #[serde(skip, default = "Instant::now")]
    last_seen: Instant,
}

pub struct Journey {
    tenant: String,
    store: String,
    card_key: Option<[u8; 32]>,
    skew: Duration,
    session_window: Duration,
    visit_idle: Duration,
    stages: StageRules,
    stations: HashMap<String, (StationRole, Direction)>,
    config_keys: KeySet,
    keys: KeySet,
    replay: ReplayGuard,
    /// Card hash → user, per scope: this store's map, then the tenant's fleet-wide one.
    members: [HashMap<String, String>; 2],
    members_version: [u64; 2],
    sessions: HashMap<Arc<str>, Session>,
    visits: HashMap<String, Visit>,
}

impl Journey {
    pub fn new(settings: JourneySettings) -> Journey {
        let id = &settings.identity;
        Journey {
            tenant: settings.tenant.clone(),
            store: settings.store.clone(),
            card_key: id.card_key,
            skew: id.token_skew,
            session_window: id.session_window,
            visit_idle: id.visit_idle,
            stages: id.stages.clone(),
            stations: settings
                .stations
                .iter()
                .map(|s| (s.id.clone(), (s.role, s.direction)))
                .collect(),
            config_keys: id.keys.clone(),
            keys: id.keys.clone(),
            replay: ReplayGuard::new(id.token_skew.as_secs() as i64),
            members: Default::default(),
            members_version: [0; 2],
            sessions: HashMap::new(),
            visits: HashMap::new(),
        }
    }

    /// Takes back what was persisted before a restart (every state key under this module's
    /// prefixes). Entries that no longer parse are skipped.
    pub fn restore(&mut self, entries: Vec<(String, Vec<u8>)>) {
        for (key, value) in entries {
            let text = String::from_utf8_lossy(&value);
            if let Some(jti) = key.strip_prefix(JTI_PREFIX) {
                if let Ok(exp) = text.parse() {
                    self.replay.restore(jti.to_owned(), exp);
                }
            } else if let Some(rest) = key.strip_prefix(MEMBER_PREFIX) {
                if let Some((scope, hash)) = rest
                    .split_once('/')
                    .and_then(|(s, h)| Some((scope_index(s)?, h)))
                {
                    self.members[scope].insert(hash.to_owned(), text.into_owned());
                }
            } else if let Some(scope) = key.strip_prefix(MEMBERS_VERSION).and_then(scope_index) {
                self.members_version[scope] = text.parse().unwrap_or(0);
            } else if key == KEYS_JWKS {
                if let Ok(keys) = KeySet::from_jwks_json(&text) {
                    self.set_downlink_keys(keys);
                }
            } else if let Some(user) = key.strip_prefix(VISIT_PREFIX) {
                if let Ok(v) = serde_json::from_slice::<Visit>(&value) {
                    self.visits.insert(user.to_owned(), v);
                }
            }
        }
    }

    /// Token keys from HQ, valid together with the config's (rotation keeps several kids).
    pub fn set_downlink_keys(&mut self, keys: KeySet) {
        let mut all = self.config_keys.clone();
        all.merge(keys);
        self.keys = all;
    }

    /// One reading → its event(s), state and gate decision.
    pub fn link(&mut self, reading: Reading, now: Instant) -> Linked {
        let mut out = Linked::default();
        let station = reading.station.clone();
        let at = reading.at;
        match reading.observation {
            Observation::Code(code) => match extract_token(&code.payload) {
                Some(token) => {
                    let token = token.to_owned();
                    self.token_scan(&mut out, station, at, code, &token, now);
                }
                None => {
                    let kind = classify_code(&code.payload);
                    let data = EventData::QrScanned(QrScanned {
                        kind: kind.as_str(),
                        symbology: code.symbology,
                        aim: code.aim,
                        // classify_code says app_token exactly when extract_token finds an
                        // attempt, so this branch never has one; the check keeps a token's
                        // text off the wire even if that ever changed.
                        payload: (kind != CodeKind::AppToken).then_some(code.payload),
                        kid: None,
                        jti: None,
                        verdict: None,
                        gate_opened: None,
                    });
                    out.events
                        .push(self.in_session(Event::new(station, at, data), now));
                }
            },
            Observation::NfcTap(tap) => self.tap(&mut out, station, at, &tap, now),
            Observation::Skin(skin) => {
                out.state
                    .extend(skin_seen_state(&reading.device, &skin, at));
                let data = EventData::SkinDiagnosed(SkinDiagnosed {
                    model: skin.model,
                    measures: skin.measures,
                    extra: skin.extra,
                    skin_type: skin.skin_type.map(|t| t.as_str()),
                    device_seq: skin.seq,
                    device_time: skin.device_time,
                });
                out.events
                    .push(self.in_session(Event::new(station, at, data), now));
            }
            Observation::Status(s) => out.events.push(Event::new(
                station,
                at,
                EventData::DeviceStatus(DeviceStatusData {
                    device: reading.device.to_string(),
                    kind: s.kind,
                    state: s.state,
                    reason: s.reason,
                    count: s.count,
                }),
            )),
            Observation::GatePassed {
                direction,
                count,
                counters,
            } => {
                out.state.push((
                    crate::outbox::keys::gate(&reading.device),
                    Some(counters.encode()),
                ));
                out.events.push(Event::new(
                    station,
                    at,
                    passed(&reading.device, direction, u64::from(count), None),
                ));
            }
            Observation::GateBaseline(counters) => {
                out.state.push((
                    crate::outbox::keys::gate(&reading.device),
                    Some(counters.encode()),
                ));
            }
            Observation::SkinForgotten(sightings) => {
                out.state.extend(sightings.iter().map(|(model, seq)| {
                    (
                        crate::outbox::keys::skin_seen(&reading.device, model, *seq),
                        None,
                    )
                }));
            }
            Observation::Passed(p) => {
                out.events.push(Event::new(
                    station,
                    at,
                    passed(&reading.device, p.direction, p.count, p.interval),
                ));
            }
        }
        self.stage_all(&mut out.events);
        out
    }

    /// Ends idle visits and forgets expired sessions and token ids. Call every few seconds.
    pub fn tick(&mut self, now: Instant, wall: SystemTime) -> Linked {
        let mut out = Linked::default();
        self.sessions.retain(|_, s| s.until > now);
        let idle: Vec<String> = self
            .visits
            .iter()
            .filter(|(_, v)| now.saturating_duration_since(v.last_seen) >= self.visit_idle)
            .map(|(u, _)| u.clone())
            .collect();
        for user in idle {
            self.end_visit(&mut out, &user, None, wall, "idle");
        }
        for jti in self.replay.take_expired(unix_s(wall)) {
            out.state.push((format!("{JTI_PREFIX}{jti}"), None));
        }
        self.stage_all(&mut out.events);
        out
    }

    fn token_scan(
        &mut self,
        out: &mut Linked,
        station: Arc<str>,
        at: SystemTime,
        code: crate::sources::scanner::ScannedCode,
        token: &str,
        now: Instant,
    ) {
        let ctx = VerifyContext {
            tenant: &self.tenant,
            store: &self.store,
            now_unix: unix_s(at),
            skew_s: self.skew.as_secs() as i64,
        };
        let checked = apply_replay(
            verify(token, &self.keys, &ctx),
            &mut self.replay,
            ctx.now_unix,
        );
        crate::metrics::TOKEN_VERDICTS.inc(checked.verdict.as_str());
        let (role, direction) = self.station(&station);
        let at_gate = role == Some(StationRole::Gate);
        let mut event = Event::new(
            station.clone(),
            at,
            EventData::QrScanned(QrScanned {
                kind: CodeKind::AppToken.as_str(),
                symbology: code.symbology,
                aim: code.aim,
                payload: None,
                kid: checked.kid,
                jti: checked.jti,
                verdict: Some(checked.verdict.as_str()),
                // Every scan at an entry gate is a decision; the link fills in the unlock's outcome.
                gate_opened: (at_gate && direction == Direction::In).then_some(false),
            }),
        );
        let Some(claims) = checked.claims.filter(|_| checked.verdict == Verdict::Valid) else {
            out.events.push(event);
            return;
        };
        out.state.push((
            format!("{JTI_PREFIX}{}", claims.jti),
            Some(claims.exp.to_string().into_bytes()),
        ));
        let user = claims.sub;
        event.userid = Some(user.clone());
        event.idsource = IdSource::QrToken;
        self.open_session(&station, &user, claims.pur, now);
        let entry_purpose = matches!(claims.pur, None | Some(Purpose::Entry));
        if at_gate && direction == Direction::In && entry_purpose {
            out.unlock = Some(station.clone());
        }
        self.identified(out, event, &user, at_gate.then_some(direction), at, now);
    }

    fn tap(
        &mut self,
        out: &mut Linked,
        station: Arc<str>,
        at: SystemTime,
        tap: &crate::sources::nfc::NfcTap,
        now: Instant,
    ) {
        let (mut data, member) = super::nfc::tapped(self.card_key.as_ref(), tap, |h| {
            self.member(h).map(str::to_owned)
        });
        let (role, direction) = self.station(&station);
        let gate_direction = (role == Some(StationRole::Gate)).then_some(direction);
        if let Some(user) = member {
            let mut event = Event::new(station.clone(), at, EventData::NfcTapped(data));
            event.userid = Some(user.clone());
            event.idsource = IdSource::NfcMember;
            self.open_session(&station, &user, None, now);
            return self.identified(out, event, &user, gate_direction, at, now);
        }
        let registering = self
            .sessions
            .get(&station)
            .filter(|s| s.until > now && s.purpose == Some(Purpose::Link));
        match (registering, data.card_hash.clone()) {
            (Some(session), Some(hash)) => {
                // The member shows a `pur: link` code, then taps the card: register it here at
                // once (HQ pushes the mapping to every store after `store.nfc.linked`).
                let user = session.user.clone();
                data.member = true;
                let mut tapped = Event::new(station.clone(), at, EventData::NfcTapped(data));
                tapped.userid = Some(user.clone());
                tapped.idsource = IdSource::Session;
                let mut linked = Event::new(
                    station.clone(),
                    at,
                    EventData::NfcLinked(NfcLinked {
                        card_hash: hash.clone(),
                    }),
                );
                linked.userid = Some(user.clone());
                linked.idsource = IdSource::Session;
                // Into this store's map, version unchanged: HQ's next snapshot will carry it.
                self.members[MemberScope::Store as usize].insert(hash.clone(), user.clone());
                out.state.push((
                    crate::outbox::keys::member("store", &hash),
                    Some(user.clone().into_bytes()),
                ));
                // The registration is done: the session goes on as an ordinary one.
                self.open_session(&station, &user, None, now);
                self.identified(out, tapped, &user, None, at, now);
                self.touch(&user, now, &mut linked);
                out.events.push(linked);
            }
            _ => out
                .events
                .push(Event::new(station, at, EventData::NfcTapped(data))),
        }
    }

    /// An identified event: visits start at entry gates and end at exit gates; else touched.
    fn identified(
        &mut self,
        out: &mut Linked,
        mut event: Event,
        user: &str,
        gate: Option<Direction>,
        at: SystemTime,
        now: Instant,
    ) {
        match gate {
            Some(Direction::In) if !self.visits.contains_key(user) => {
                let visit = Visit {
                    id: uuid::Uuid::now_v7().hyphenated().to_string(),
                    anonid: format!("{:016x}", fastrand::u64(..)),
                    station: event.station.to_string(),
                    started_ms: unix_ms(at),
                    last_seen: now,
                };
                let mut started = Event::new(
                    event.station.clone(),
                    at,
                    EventData::VisitStarted(VisitStarted {
                        visit: visit.id.clone(),
                    }),
                );
                started.userid = Some(user.to_owned());
                started.idsource = event.idsource;
                started.anonid = Some(visit.anonid.clone());
                event.anonid = Some(visit.anonid.clone());
                out.state.push((
                    format!("{VISIT_PREFIX}{user}"),
                    serde_json::to_vec(&visit).ok(),
                ));
                self.visits.insert(user.to_owned(), visit);
                out.events.push(event);
                out.events.push(started);
            }
            Some(Direction::Out) => {
                self.touch(user, now, &mut event);
                let station = event.station.clone();
                out.events.push(event);
                self.end_visit(out, user, Some(station), at, "exit");
            }
            _ => {
                self.touch(user, now, &mut event);
                out.events.push(event);
            }
        }
    }

    fn end_visit(
        &mut self,
        out: &mut Linked,
        user: &str,
        station: Option<Arc<str>>,
        at: SystemTime,
        reason: &'static str,
    ) {
        let Some(v) = self.visits.remove(user) else {
            return;
        };
        let dwell_s = unix_ms(at).saturating_sub(v.started_ms) / 1000;
        let station = station.unwrap_or_else(|| v.station.as_str().into());
        let mut ended = Event::new(
            station,
            at,
            EventData::VisitEnded(VisitEnded {
                visit: v.id,
                dwell_s,
                end_reason: reason,
            }),
        );
        ended.userid = Some(user.to_owned());
        ended.idsource = IdSource::None;
        ended.anonid = Some(v.anonid);
        out.state.push((format!("{VISIT_PREFIX}{user}"), None));
        out.events.push(ended);
    }

    fn touch(&mut self, user: &str, now: Instant, event: &mut Event) {
        if let Some(v) = self.visits.get_mut(user) {
            v.last_seen = now;
            event.anonid = Some(v.anonid.clone());
        }
    }

    fn open_session(
        &mut self,
        station: &Arc<str>,
        user: &str,
        purpose: Option<Purpose>,
        now: Instant,
    ) {
        let session = Session {
            user: user.to_owned(),
            purpose,
            until: now + self.session_window,
        };
        self.sessions.insert(station.clone(), session);
    }

    /// An anonymous reading at a station with a live session belongs to the session's user.
    fn in_session(&mut self, mut event: Event, now: Instant) -> Event {
        let user = match self.sessions.get(&event.station) {
            Some(s) if s.until > now => s.user.clone(),
            _ => return event,
        };
        event.userid = Some(user.clone());
        event.idsource = IdSource::Session;
        self.touch(&user, now, &mut event);
        event
    }

    fn station(&self, id: &str) -> (Option<StationRole>, Direction) {
        match self.stations.get(id) {
            Some((role, dir)) => (Some(*role), *dir),
            None => (None, Direction::In),
        }
    }

    fn stage_all(&self, events: &mut [Event]) {
        for e in events {
            let (role, station_dir) = self.station(&e.station);
            let direction = match &e.data {
                EventData::GatePassed(p) => Some(p.direction),
                _ => (role == Some(StationRole::Gate)).then_some(station_dir),
            };
            e.stage = self.stages.stage(e.data.type_name(), role, direction);
        }
    }
}

fn passed(
    device: &str,
    direction: Direction,
    count: u64,
    interval: Option<(String, String)>,
) -> EventData {
    let (from, to) = interval.unzip();
    EventData::GatePassed(GatePassed {
        gate: device.to_owned(),
        direction,
        count,
        from,
        to,
    })
}

/// The state saved with a skin reading's event so its `model` + `seq` is still known after a
/// restart (`None` when the reading has no `seq`: it cannot repeat). The serial source is handed
/// these back at start; an HTTP device's are pruned by the ingest.
pub fn skin_seen_state(device: &str, reading: &SkinReading, at: SystemTime) -> Option<StateWrite> {
    let seq = reading.seq?;
    let key = crate::outbox::keys::skin_seen(device, &reading.model, seq);
    Some((key, Some(unix_ms(at).to_string().into_bytes())))
}

fn unix_s(t: SystemTime) -> i64 {
    (unix_ms(t) / 1000) as i64
}

mod members;

#[cfg(test)]
#[path = "journey_tests.rs"]
mod tests;
