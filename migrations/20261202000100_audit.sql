-- The admin audit log and the routing table's stored versions.
--
-- One row per change an admin or a service made to someone else's
-- preferences, contact details or devices, and per routing change: who
-- (the token's subject and role), when, what (`kind`, `action`), and the
-- value before and after as JSON text (device tokens masked). `target_id`
-- is the user whose data changed; NULL for routing. An erase of that user
-- empties `before_doc` and `after_doc` and sets `erased_at`; the row (who
-- changed what kind of record, when) stays until `retention.audit`.
CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor_id    TEXT NOT NULL,
    actor_role  TEXT NOT NULL,
    target_id   TEXT,
    kind        TEXT NOT NULL,
    action      TEXT NOT NULL,
    before_doc  TEXT,
    after_doc   TEXT,
    erased_at   BIGINT
);
-- Newest first, and the purge by age.
CREATE INDEX audit_log_at ON audit_log (at, id);
-- A user's rows: the filter, the export and the erase.
CREATE INDEX audit_log_target ON audit_log (target_id, at);
CREATE INDEX audit_log_actor ON audit_log (actor_id, at);

-- The routing table as replaced over REST, one row per version; the
-- newest row is in force on every node. `source` is `api` (the table is
-- `document`, JSON in the routing file's shape) or `file` (an admin went
-- back to the routing file; `document` is NULL). No row: the file.
CREATE TABLE routing_versions (
    version     BIGINT PRIMARY KEY,
    source      TEXT NOT NULL,
    document    TEXT,
    actor_id    TEXT NOT NULL,
    actor_role  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
