-- The realtime gateway's durable state: `action_confirm` messages from
-- clients, recorded before they are acknowledged and relayed to the
-- platform's webhook from here (an outbox: a relay that fails is retried
-- with backoff until the platform accepts it, across restarts and nodes).
CREATE TABLE action_confirms (
    user_id         TEXT NOT NULL,
    action_id       TEXT NOT NULL,
    role            TEXT NOT NULL,
    restaurant_id   TEXT,
    action          TEXT NOT NULL,
    -- The JSON number exactly as the client sent it.
    amount          TEXT NOT NULL,
    -- pending (waiting to be relayed) | relayed | unrelayed (no webhook configured)
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at BIGINT,
    -- A node relaying the row holds it until then; another may take over after.
    lease_until     BIGINT,
    created_at      BIGINT NOT NULL,
    relayed_at      BIGINT,
    PRIMARY KEY (user_id, action_id)
);
CREATE INDEX action_confirms_due ON action_confirms (status, next_attempt_at);
