-- The realtime log: every event fanned out to sockets, by its offset, with
-- the rooms it went to. Redis keeps the same for a fast resume; this copy
-- outlives Redis, so a client is recovered even after Redis lost its data.
-- Kept for the resume window (realtime.history_max_age_seconds).
CREATE TABLE realtime_log (
    rt_offset BIGINT PRIMARY KEY,
    frame     TEXT NOT NULL,
    at        BIGINT NOT NULL
);
CREATE INDEX realtime_log_at ON realtime_log (at);
CREATE TABLE realtime_log_rooms (
    room      TEXT NOT NULL,
    rt_offset BIGINT NOT NULL,
    PRIMARY KEY (room, rt_offset)
);

-- Epochs of the realtime history, in order. `kind` says why one began:
-- `start` (the first), `restart` (Redis restarted: its history is gone or
-- stale, but every event of the epochs before is in realtime_log) or
-- `resync` (a node delivered events while it could not reach Redis: they
-- have no place in the offset order, so no resume may cross it).
-- `start_offset`: every event of this epoch has a larger offset.
CREATE TABLE realtime_epochs (
    epoch        TEXT PRIMARY KEY,
    start_offset BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    at           BIGINT NOT NULL
);
CREATE INDEX realtime_log_rooms_offset ON realtime_log_rooms (rt_offset);
