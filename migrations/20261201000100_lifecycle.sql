-- Data lifecycle: the indexes the retention purge and a user's erase read
-- by. Each purge batch finds its rows through one of them instead of
-- scanning a table, so a batch stays short however large the table is.
--
-- Inbox entries the user has read or deleted, by when they did. Partial:
-- a fresh (unread, undeleted) entry is not in it, so ingest does not pay
-- for it.
CREATE INDEX notifications_done ON notifications (COALESCE(read_at, deleted_at))
 WHERE read_at IS NOT NULL OR deleted_at IS NOT NULL;
-- Unread entries, oldest first.
CREATE INDEX notifications_unread_created ON notifications (created_at)
 WHERE read_at IS NULL AND deleted_at IS NULL;
-- Events by age (an event goes once no inbox entry refers to it).
CREATE INDEX events_received ON events (received_at);
-- Action records by state and age (the purge takes finished ones only).
CREATE INDEX action_confirms_done ON action_confirms (status, created_at);
-- Provider reports by age, and by the message they are about (a user's
-- erase removes the reports about their messages).
CREATE INDEX provider_events_received ON provider_events (received_at);
CREATE INDEX provider_events_message ON provider_events (message_id);
