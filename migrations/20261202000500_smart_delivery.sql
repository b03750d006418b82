-- Smart delivery (digests, throttles, holds, escalation): more reasons a
-- delivery falls due later, on the same rows and the same due index.
--
-- digest_key  the digest a delivery waits for: `quiet` (what quiet hours
--             held back) or a category (`points`). With the recipient and
--             the channel it names one digest.
-- digest_at   when that digest goes out: the window's end. A delivery joins
--             a digest once this has passed, whatever its own due time (a
--             delivery handed back keeps its place in the digest).
-- digest_id   on a delivery folded into a digest (status `digested`), the
--             delivery that carried the digest; on that carrier, its own id.
-- sent_at     when the message went out: what throttles count.
-- seen_check  `recipient` (a hold: skip if the recipient has seen the
--             event) or `anyone` (an escalation step: skip once anyone the
--             event reached has read it); NULL for no such check.
ALTER TABLE deliveries ADD COLUMN digest_key TEXT;
ALTER TABLE deliveries ADD COLUMN digest_at BIGINT;
ALTER TABLE deliveries ADD COLUMN digest_id TEXT;
ALTER TABLE deliveries ADD COLUMN sent_at BIGINT;
ALTER TABLE deliveries ADD COLUMN seen_check TEXT;
CREATE INDEX deliveries_digest ON deliveries (recipient_id, channel, digest_key)
 WHERE digest_key IS NOT NULL;
CREATE INDEX deliveries_digest_id ON deliveries (digest_id) WHERE digest_id IS NOT NULL;
CREATE INDEX deliveries_sent ON deliveries (recipient_id, channel, sent_at)
 WHERE sent_at IS NOT NULL;

-- When the recipient acknowledged an event on a socket (`seen`) without
-- opening it: enough to skip a held push, not to mark the entry read.
ALTER TABLE notifications ADD COLUMN seen_at BIGINT;
