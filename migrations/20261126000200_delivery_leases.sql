-- Delivery workers claim a delivery by moving it to `sending` with a lease;
-- a delivery still `sending` after its lease belongs to a worker that died,
-- and the sweeper hands it out again. `enqueued_at` is when a queue job was
-- last made for the delivery (or when a delayed job falls due), so the
-- sweeper re-enqueues only what the queue has plainly lost.
ALTER TABLE deliveries ADD COLUMN lease_until BIGINT;
ALTER TABLE deliveries ADD COLUMN enqueued_at BIGINT;
