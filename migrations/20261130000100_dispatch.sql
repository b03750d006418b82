-- Dispatch as a scheduler (design.md, "Delivery as a scheduler").
--
-- Every open delivery has a due time, so workers and the sweeper find due
-- rows through one partial index instead of scanning what is already done.
UPDATE deliveries SET next_attempt_at = created_at
 WHERE next_attempt_at IS NULL AND status IN ('pending', 'deferred', 'retrying');
CREATE INDEX deliveries_open_due ON deliveries (next_attempt_at)
 WHERE status IN ('pending', 'deferred', 'retrying');
-- The admin re-drive lists failed and expired deliveries, newest first.
CREATE INDEX deliveries_status_updated ON deliveries (status, updated_at);

-- The provider that sent the message (a channel may have a chain of them),
-- and when an admin last re-drove the delivery: a category's expiry counts
-- from then, not from the event, so a re-driven delivery gets its full time.
ALTER TABLE deliveries ADD COLUMN provider TEXT;
ALTER TABLE deliveries ADD COLUMN redriven_at BIGINT;

-- The trace of a delivery: one row per thing that happened to it, in order.
--   step     attempt | failover | breaker_open | throttled | expired | redrive
--   attempt  the attempt it belongs to (0 for steps outside an attempt)
--   n        its place within that attempt (a failover comes before the send)
--   outcome  sent | retrying | failed | suppressed | deferred | expired | pending
--   detail   the reason, the provider's error, or why a provider was skipped
--   actor    who asked (re-drive): `admin:{sub}`, `cli`
CREATE TABLE delivery_trace (
    delivery_id TEXT NOT NULL,
    at          BIGINT NOT NULL,
    attempt     BIGINT NOT NULL,
    n           BIGINT NOT NULL,
    step        TEXT NOT NULL,
    provider    TEXT,
    outcome     TEXT,
    detail      TEXT,
    actor       TEXT
);
CREATE INDEX delivery_trace_delivery ON delivery_trace (delivery_id, at);
