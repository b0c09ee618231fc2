//! A station as the config declares it: its id, its role and which way people pass it. Plain
//! values shared by the config (which validates them), the sources (a passage's direction), the
//! link (journey rules by role and direction) and the events; a leaf, so none of those imports
//! another to name a station.

use serde::Deserialize;

#[derive(Debug, Clone)]
pub struct Station {
    pub id: String,
    pub role: StationRole,
    /// Which way people pass a gate station's readers: a scan at an `out` gate ends a visit.
    pub direction: Direction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StationRole {
    Gate,
    Kiosk,
    Counter,
    Shelf,
}

impl StationRole {
    /// As the config spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            StationRole::Gate => "gate",
            StationRole::Kiosk => "kiosk",
            StationRole::Counter => "counter",
            StationRole::Shelf => "shelf",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}
