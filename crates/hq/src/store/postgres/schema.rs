//! The journey store's tables on PostgreSQL: the schema a new database gets, and what a schema
//! made by an older `phygate-hq` gains when it opens (each statement may run again).

/// The tables and indexes of schema version 1 (`super::SCHEMA`).
pub(super) const SCHEMA_SQL: &str = "
CREATE TABLE IF NOT EXISTS phygate_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS gateways (
    gw BIGSERIAL PRIMARY KEY,
    tenant TEXT NOT NULL, store TEXT NOT NULL, gateway TEXT NOT NULL,
    low BIGINT, high BIGINT,
    evicted BIGINT NOT NULL DEFAULT 0, late BIGINT NOT NULL DEFAULT 0,
    early TEXT NOT NULL DEFAULT '[]',
    UNIQUE (tenant, store, gateway)
);
CREATE TABLE IF NOT EXISTS holes (
    gw BIGINT NOT NULL, first BIGINT NOT NULL, last BIGINT NOT NULL,
    since_ms BIGINT NOT NULL, lost BOOLEAN NOT NULL,
    PRIMARY KEY (gw, first)
);
CREATE INDEX IF NOT EXISTS holes_pending ON holes (since_ms) WHERE NOT lost;
-- The last n given: locked by each writer transaction (see the module's doc).
CREATE TABLE IF NOT EXISTS event_counter (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), n BIGINT NOT NULL
);
INSERT INTO event_counter (one, n) VALUES (TRUE, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS events (
    n BIGINT PRIMARY KEY,
    gw BIGINT NOT NULL, id TEXT NOT NULL, seq BIGINT NOT NULL,
    type TEXT NOT NULL, time TEXT NOT NULL, userid TEXT,
    committed_ms BIGINT NOT NULL, body TEXT NOT NULL,
    UNIQUE (gw, id)
);
CREATE INDEX IF NOT EXISTS events_user ON events (userid) WHERE userid IS NOT NULL;
CREATE TABLE IF NOT EXISTS users (
    tenant TEXT NOT NULL, userid TEXT NOT NULL, view TEXT NOT NULL,
    PRIMARY KEY (tenant, userid)
);
CREATE TABLE IF NOT EXISTS parked (
    n BIGSERIAL PRIMARY KEY, topic TEXT NOT NULL, reason TEXT NOT NULL, body TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
-- id: the sink's advisory lock key.
CREATE TABLE IF NOT EXISTS sink_cursors (
    sink TEXT PRIMARY KEY, id SERIAL UNIQUE, n BIGINT NOT NULL, inflight BIGINT
);
CREATE TABLE IF NOT EXISTS sink_parked (
    sink TEXT NOT NULL, n BIGINT NOT NULL, id TEXT NOT NULL, reason TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (sink, n)
);
";

/// Each consumer's last beat (the group's lag, `crate::seq::group_lag_ms`); a schema made
/// before it gets it on open.
pub(super) const CONSUMERS_SQL: &str = "
CREATE TABLE IF NOT EXISTS consumers (
    id TEXT PRIMARY KEY, at_ms BIGINT NOT NULL, lag_ms BIGINT NOT NULL, holds_ms BIGINT NOT NULL
);
";

/// Replay requests recorded in the holes, and the numbers they recovered (`crate::seq`); a
/// schema made before them gets them on open.
pub(super) const REPAIR_SQL: &str = "
ALTER TABLE holes ADD COLUMN IF NOT EXISTS asks INTEGER NOT NULL DEFAULT 0;
ALTER TABLE holes ADD COLUMN IF NOT EXISTS asked_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE gateways ADD COLUMN IF NOT EXISTS recovered BIGINT NOT NULL DEFAULT 0;
";
