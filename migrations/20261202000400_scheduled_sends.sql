-- Scheduled sends, cancellation and one-click unsubscribe.
--
-- A scheduled event (`sendAt`) is written at once, like any other: its
-- deliveries are due at `sendAt` (the scheduler's one mechanism), and its
-- inbox entries wait with `in_inbox = 2` until the event is released.
-- `event_releases` holds one row per scheduled event that has not been
-- released yet: at its due time whichever node claims it (a lease, like a
-- delivery's) shows the inbox entries and fans the event out to its rooms,
-- then deletes the row. A cancel deletes it first; a released or cancelled
-- event has no row.
CREATE TABLE event_releases (
    event_id    TEXT PRIMARY KEY,
    due_at      BIGINT NOT NULL,
    -- The realtime rooms, as routed at publish (JSON array of strings).
    rooms       TEXT NOT NULL,
    lease_until BIGINT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX event_releases_due ON event_releases (due_at);

-- A cancel that finds a delivery in flight (`sending`) cannot take it back
-- from its worker; it leaves the reason here. The worker looks before it
-- sends, and a finish that would leave the delivery open (a retry, a
-- deferral) ends it `cancelled` instead. A finish that sent stays `sent`.
ALTER TABLE deliveries ADD COLUMN cancel_requested TEXT;

-- Changes a user made to their preferences other than by the preferences
-- API: a one-click unsubscribe (`source = 'unsubscribe'`) turns one
-- category × channel off. `delivery_id` is the message whose link it was.
CREATE TABLE preference_changes (
    user_id     TEXT NOT NULL,
    at          BIGINT NOT NULL,
    source      TEXT NOT NULL,
    scope       TEXT NOT NULL,
    channel     TEXT NOT NULL,
    enabled     BIGINT NOT NULL,
    delivery_id TEXT
);
CREATE INDEX preference_changes_user ON preference_changes (user_id, at);
