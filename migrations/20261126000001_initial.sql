-- Herald's schema, one file for SQLite and PostgreSQL: ids are UUID text,
-- times are milliseconds since the epoch, flags are 0/1 integers, so the
-- same DDL and every query run unchanged on both. A migration that needs a
-- backend's own SQL would split this directory per backend.

-- One row per accepted event: the idempotency record and the outbox's source.
CREATE TABLE events (
    id              TEXT PRIMARY KEY,
    idempotency_key TEXT,
    kind            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    payload_hash    TEXT NOT NULL,
    received_at     BIGINT NOT NULL
);

-- The last inbox sequence number handed to each user. Taking the next number
-- locks the row until commit, so one user's entries commit in sequence order.
CREATE TABLE inbox_counters (
    user_id  TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);

-- The inbox: an event as it concerns one recipient. The payload stays on the
-- event row; `in_inbox` is 0 when the user opted out of in_app but is still
-- owed deliveries on other channels.
CREATE TABLE notifications (
    id           TEXT PRIMARY KEY,
    recipient_id TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    event_id     TEXT NOT NULL REFERENCES events (id),
    kind         TEXT NOT NULL,
    category     TEXT NOT NULL,
    title        TEXT NOT NULL,
    body         TEXT NOT NULL,
    in_inbox     BIGINT NOT NULL,
    read_at      BIGINT,
    deleted_at   BIGINT,
    created_at   BIGINT NOT NULL,
    UNIQUE (recipient_id, seq),
    UNIQUE (event_id, recipient_id)
);

-- One row per notification and external channel, suppressed ones included,
-- so every decision can be explained.
CREATE TABLE deliveries (
    id                  TEXT PRIMARY KEY,
    notification_id     TEXT NOT NULL REFERENCES notifications (id),
    recipient_id        TEXT NOT NULL,
    channel             TEXT NOT NULL,
    status              TEXT NOT NULL,
    reason              TEXT NOT NULL,
    attempts            BIGINT NOT NULL DEFAULT 0,
    last_error          TEXT,
    next_attempt_at     BIGINT,
    provider_message_id TEXT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    UNIQUE (notification_id, channel)
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);

-- How to reach a user, and who they are for group recipients (admins, staff).
CREATE TABLE contacts (
    user_id       TEXT PRIMARY KEY,
    role          TEXT,
    restaurant_id TEXT,
    email         TEXT,
    phone         TEXT,
    locale        TEXT,
    timezone      TEXT,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX contacts_role ON contacts (role, restaurant_id);

-- A user's preferences document (JSON, see herald_core::Preferences).
CREATE TABLE preferences (
    user_id    TEXT PRIMARY KEY,
    document   TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Push targets: FCM tokens and Web Push subscriptions (token = endpoint).
CREATE TABLE devices (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    kind         TEXT NOT NULL,
    token        TEXT NOT NULL,
    subscription TEXT,
    created_at   BIGINT NOT NULL,
    UNIQUE (user_id, token)
);
