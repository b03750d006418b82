//! The data lifecycle: retention purges, a user's erase and export.
//!
//! **Purge.** Each kind of record is kept for its own time ([`Retention`])
//! and then deleted, a small batch at a time: every batch is its own short
//! transaction that picks at most `limit` rows through an index (see the
//! `lifecycle` migration) and deletes them with what depends on them, and
//! [`Store::purge`] pauses between batches. On SQLite, where one writer
//! holds the database at a time, ingest's writer lanes therefore wait at
//! most one batch, never a whole purge. Deletes are idempotent: two nodes
//! purging at once delete each row once, and a batch another node emptied
//! first simply deletes less.
//!
//! What goes, and what never does:
//!
//! - a delivery once it is finished (`sent`, `delivered`, `bounced`,
//!   `failed`, `expired`, `suppressed`, `cancelled`) and untouched for
//!   `deliveries`, with its trace; an open one (`pending`, `sending`,
//!   `retrying`, `deferred`) never;
//! - an inbox entry `inbox_read` after the user read or deleted it, or
//!   `inbox_unread` after it arrived if they never did, with its finished
//!   deliveries; an entry that still owes an open delivery stays;
//! - an event `events` after it arrived, once no inbox entry refers to it
//!   (its id stops being a duplicate then: the idempotency window is this);
//! - a provider's status report `deliveries` after it arrived;
//! - an `action_confirm` record `actions` after it was made, once relayed,
//!   refused by the platform for good (`rejected`) or recorded with no
//!   webhook to relay to; a pending one never;
//! - an audit row ([`crate::audit`]) `audit` after it was written.
//!
//! Inbox counters (each user's last sequence number) are never purged, so a
//! sequence number is never handed out twice; unread counts are counted
//! from the entries, so they stay right as entries go.
//!
//! **Erase.** [`Store::erase_user`] deletes everything Herald keeps about a
//! person: contact, preferences, devices, inbox entries with their
//! deliveries (rows deleted, not anonymised), traces and provider reports,
//! the events only their entries referred to, their `action_confirm`
//! records, their inbox counter, and the realtime log's rows for their
//! rooms (`user:{id}`, `guest:{id}`); and it empties the values (`before`,
//! `after`) of the audit rows about them, keeping who changed what kind of
//! record when. Inbox entries go in batches as a purge
//! does; the rest in one last transaction. An erase that stops half way is
//! finished by asking again: the user is still known until the end.
//!
//! **Export.** [`Store::export_user`] gathers the same records, as JSON,
//! with the audit rows about the user.

use std::time::Duration;

use herald_core::UserId;
use serde::Serialize;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};

use crate::records::{ContactRecord, Device};
use crate::{Error, Result, Store, placeholders};

/// Delivery statuses nothing more happens to: the only ones a purge deletes.
pub const FINISHED: &str =
    "'sent', 'delivered', 'bounced', 'failed', 'expired', 'suppressed', 'cancelled'";

/// How long each kind of record is kept, in milliseconds; `None` keeps it
/// forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    pub inbox_read: Option<i64>,
    pub inbox_unread: Option<i64>,
    pub events: Option<i64>,
    /// Finished deliveries, and provider status reports.
    pub deliveries: Option<i64>,
    pub actions: Option<i64>,
    /// Audit rows, from when they were written.
    pub audit: Option<i64>,
}

/// One step of a purge: a kind of record and the rule that picks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeStep {
    Deliveries,
    InboxRead,
    InboxUnread,
    Events,
    ProviderEvents,
    Actions,
    Audit,
}

impl PurgeStep {
    /// In the order a purge runs them: deliveries first (they hold inbox
    /// entries), events after the entries (which hold them).
    pub const ALL: [PurgeStep; 7] = [
        PurgeStep::Deliveries,
        PurgeStep::InboxRead,
        PurgeStep::InboxUnread,
        PurgeStep::Events,
        PurgeStep::ProviderEvents,
        PurgeStep::Actions,
        PurgeStep::Audit,
    ];

    /// How long this step's records are kept.
    fn keep(self, retention: &Retention) -> Option<i64> {
        match self {
            PurgeStep::Deliveries | PurgeStep::ProviderEvents => retention.deliveries,
            PurgeStep::InboxRead => retention.inbox_read,
            PurgeStep::InboxUnread => retention.inbox_unread,
            PurgeStep::Events => retention.events,
            PurgeStep::Actions => retention.actions,
            PurgeStep::Audit => retention.audit,
        }
    }
}

/// Rows a purge deleted, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Purged {
    /// Inbox entries that were read or deleted.
    pub inbox_read: u64,
    /// Inbox entries never read.
    pub inbox_unread: u64,
    pub events: u64,
    pub deliveries: u64,
    pub delivery_trace: u64,
    pub provider_events: u64,
    pub actions: u64,
    pub audit: u64,
}

impl Purged {
    /// Each kind with its count, named as the metric labels them.
    pub fn by_kind(&self) -> [(&'static str, u64); 8] {
        [
            ("inbox_read", self.inbox_read),
            ("inbox_unread", self.inbox_unread),
            ("events", self.events),
            ("deliveries", self.deliveries),
            ("delivery_trace", self.delivery_trace),
            ("provider_events", self.provider_events),
            ("actions", self.actions),
            ("audit", self.audit),
        ]
    }

    pub fn total(&self) -> u64 {
        self.by_kind().iter().map(|(_, n)| n).sum()
    }

    fn add(&mut self, other: &Purged) {
        self.inbox_read += other.inbox_read;
        self.inbox_unread += other.inbox_unread;
        self.events += other.events;
        self.deliveries += other.deliveries;
        self.delivery_trace += other.delivery_trace;
        self.provider_events += other.provider_events;
        self.actions += other.actions;
        self.audit += other.audit;
    }
}

/// What an erase deleted, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Erased {
    pub contact: u64,
    pub preferences: u64,
    pub devices: u64,
    pub notifications: u64,
    pub deliveries: u64,
    pub delivery_trace: u64,
    pub provider_events: u64,
    /// Events that only this user's inbox entries referred to.
    pub events: u64,
    pub actions: u64,
    pub inbox_counter: u64,
    /// Realtime log entries sent to this user's rooms alone.
    pub realtime_log: u64,
    /// Audit rows about this user whose values were emptied (the rows
    /// stay: who changed what kind of record, when).
    pub audit: u64,
}

/// An erase's outcome: the counts, and the deliveries it deleted (their
/// ids name the messages a transport may have kept, such as outbox files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erasure {
    pub erased: Erased,
    pub deliveries: Vec<String>,
}

/// Everything Herald keeps about one user.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserExport {
    pub user_id: String,
    pub contact: Option<ContactRecord>,
    /// The preferences document as the user (or an admin) set it; `None`
    /// when never set (the defaults apply).
    pub preferences: Option<serde_json::Value>,
    pub devices: Vec<Device>,
    /// Every inbox entry: read, unread and deleted, newest first.
    pub notifications: Vec<ExportedNotification>,
    pub deliveries: Vec<ExportedDelivery>,
    pub actions: Vec<ExportedAction>,
    /// Changes admins and services made to the user's data, newest first.
    pub audit: Vec<crate::audit::AuditEntry>,
}

/// An inbox entry as an export shows it: its event's payload included.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportedNotification {
    pub id: String,
    pub seq: i64,
    pub event_id: String,
    pub event: String,
    pub category: String,
    pub title: String,
    pub body: String,
    pub data: serde_json::Value,
    /// False when the user opted out of the inbox for it (it was owed
    /// other channels only).
    pub in_inbox: bool,
    pub read_at: Option<i64>,
    pub deleted_at: Option<i64>,
    pub created_at: i64,
}

/// An inbox entry as the export reads it.
#[derive(Debug, sqlx::FromRow)]
struct NotificationRow {
    id: String,
    seq: i64,
    event_id: String,
    kind: String,
    category: String,
    title: String,
    body: String,
    payload: String,
    in_inbox: i64,
    read_at: Option<i64>,
    deleted_at: Option<i64>,
    created_at: i64,
}

impl TryFrom<NotificationRow> for ExportedNotification {
    type Error = Error;

    fn try_from(r: NotificationRow) -> Result<ExportedNotification> {
        Ok(ExportedNotification {
            data: serde_json::from_str(&r.payload)
                .map_err(|e| Error::Corrupt(format!("event payload: {e}")))?,
            id: r.id,
            seq: r.seq,
            event_id: r.event_id,
            event: r.kind,
            category: r.category,
            title: r.title,
            body: r.body,
            in_inbox: r.in_inbox == 1,
            read_at: r.read_at,
            deleted_at: r.deleted_at,
            created_at: r.created_at,
        })
    }
}

/// A delivery as an export shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct ExportedDelivery {
    pub id: String,
    pub notification_id: String,
    pub channel: String,
    pub status: String,
    pub reason: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub provider: Option<String>,
    pub provider_message_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// An `action_confirm` record as an export shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct ExportedAction {
    pub action_id: String,
    pub action: String,
    /// The JSON number as the client sent it.
    pub amount: String,
    pub role: String,
    pub restaurant_id: Option<String>,
    pub status: String,
    pub created_at: i64,
    pub relayed_at: Option<i64>,
}

/// Every table Herald keeps, for [`Store::table_counts`].
pub const TABLES: [&str; 17] = [
    "events",
    "inbox_counters",
    "notifications",
    "deliveries",
    "delivery_trace",
    "provider_events",
    "contacts",
    "preferences",
    "devices",
    "action_confirms",
    "realtime_log",
    "realtime_log_rooms",
    "realtime_epochs",
    "audit_log",
    "routing_versions",
    "event_releases",
    "preference_changes",
];

/// Most rows one `IN (…)` list names: well within both databases' limits
/// on bind parameters.
const MAX_LIST: usize = 1_000;

impl Store {
    /// Purges every kind of record older than `retention` allows at `now`
    /// (epoch ms), `batch` rows at a time, pausing `pause` between batches
    /// (at least a yield, so other tasks run). `on_batch` hears of each
    /// batch as it commits (for metrics). Returns the totals.
    ///
    /// Dropping the future stops the purge; the batch in flight rolls back.
    #[tracing::instrument(level = "debug", skip_all, fields(now = now, batch = batch))]
    pub async fn purge(
        &self,
        retention: &Retention,
        now: i64,
        batch: u32,
        pause: Duration,
        mut on_batch: impl FnMut(&Purged),
    ) -> Result<Purged> {
        let mut total = Purged::default();
        for step in PurgeStep::ALL {
            let Some(keep) = step.keep(retention) else {
                continue;
            };
            let before = now.saturating_sub(keep);
            loop {
                let (purged, more) = self.purge_batch(step, before, batch).await?;
                total.add(&purged);
                on_batch(&purged);
                if !more {
                    break;
                }
                if pause.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(pause).await;
                }
            }
        }
        Ok(total)
    }

    /// One batch of `step`: at most `limit` of its records older than
    /// `before` (epoch ms), in one transaction. Also says whether the batch
    /// was full (more may be waiting).
    #[tracing::instrument(level = "debug", skip_all, fields(step = ?step, before = before))]
    pub async fn purge_batch(
        &self,
        step: PurgeStep,
        before: i64,
        limit: u32,
    ) -> Result<(Purged, bool)> {
        let limit = i64::from(limit.max(1));
        let mut purged = Purged::default();
        let picked = match step {
            PurgeStep::Deliveries => {
                let mut tx = self.write.begin().await?;
                let ids = ids_of(
                    &sqlx::query(AssertSqlSafe(format!(
                        "SELECT id FROM deliveries \
                         WHERE status IN ({FINISHED}) AND updated_at < $1 LIMIT $2"
                    )))
                    .bind(before)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?,
                )?;
                let (deliveries, trace) = delete_finished_deliveries(&mut tx, "id", &ids).await?;
                tx.commit().await?;
                purged.deliveries = deliveries;
                purged.delivery_trace = trace;
                ids.len()
            }
            PurgeStep::InboxRead | PurgeStep::InboxUnread => {
                // Each condition spelled as its partial index's, so both
                // databases use the index.
                let which = if step == PurgeStep::InboxRead {
                    "(n.read_at IS NOT NULL OR n.deleted_at IS NOT NULL) \
                     AND COALESCE(n.read_at, n.deleted_at) < $1"
                } else {
                    "n.read_at IS NULL AND n.deleted_at IS NULL AND n.created_at < $1"
                };
                let mut tx = self.write.begin().await?;
                let ids = ids_of(
                    &                    sqlx::query(AssertSqlSafe(format!(
                        "SELECT n.id FROM notifications n WHERE {which} \
                         AND NOT EXISTS (SELECT 1 FROM deliveries d \
                                         WHERE d.notification_id = n.id AND d.status NOT IN ({FINISHED})) \
                         LIMIT $2"
                    )))
                    .bind(before)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?,
                )?;
                let (deliveries, trace) =
                    delete_finished_deliveries(&mut tx, "notification_id", &ids).await?;
                let entries = delete_entries(&mut tx, &ids).await?;
                tx.commit().await?;
                purged.deliveries = deliveries;
                purged.delivery_trace = trace;
                if step == PurgeStep::InboxRead {
                    purged.inbox_read = entries;
                } else {
                    purged.inbox_unread = entries;
                }
                ids.len()
            }
            PurgeStep::Events => {
                purged.events = self
                    .delete_aged(
                        "DELETE FROM events WHERE id IN (\
                       SELECT e.id FROM events e WHERE e.received_at < $1 \
                       AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.event_id = e.id) \
                       LIMIT $2)",
                        before,
                        limit,
                    )
                    .await?;
                purged.events as usize
            }
            PurgeStep::ProviderEvents => {
                purged.provider_events = self
                    .delete_aged(
                        "DELETE FROM provider_events WHERE (provider, event_id) IN (\
                       SELECT provider, event_id FROM provider_events WHERE received_at < $1 LIMIT $2)",
                        before,
                        limit,
                    )
                    .await?;
                purged.provider_events as usize
            }
            PurgeStep::Actions => {
                purged.actions = self
                    .delete_aged(
                        "DELETE FROM action_confirms WHERE (user_id, action_id) IN (\
                       SELECT user_id, action_id FROM action_confirms \
                       WHERE status IN ('relayed', 'unrelayed', 'rejected') AND created_at < $1 LIMIT $2)",
                        before,
                        limit,
                    )
                    .await?;
                purged.actions as usize
            }
            PurgeStep::Audit => {
                purged.audit = self
                    .delete_aged(
                        "DELETE FROM audit_log WHERE id IN (\
                       SELECT id FROM audit_log WHERE at < $1 LIMIT $2)",
                        before,
                        limit,
                    )
                    .await?;
                purged.audit as usize
            }
        };
        Ok((purged, picked as i64 >= limit))
    }

    /// Runs one purge batch's `DELETE` (its `$1` the cut-off time, its `$2`
    /// the batch size); how many rows went.
    async fn delete_aged(&self, sql: &'static str, before: i64, limit: i64) -> Result<u64> {
        let done = sqlx::query(sql)
            .bind(before)
            .bind(limit)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected())
    }

    /// How many rows each of Herald's tables holds ([`TABLES`], in order):
    /// what `herald purge` reports, and what tests count.
    pub async fn table_counts(&self) -> Result<Vec<(&'static str, i64)>> {
        let mut out = Vec::with_capacity(TABLES.len());
        for table in TABLES {
            let row = sqlx::query(AssertSqlSafe(format!("SELECT COUNT(*) AS n FROM {table}")))
                .fetch_one(&self.read)
                .await?;
            out.push((table, row.try_get("n")?));
        }
        Ok(out)
    }

    /// Whether Herald keeps anything about `user`: a contact, preferences,
    /// a device, an inbox entry or counter, an action record.
    pub async fn user_known(&self, user: &UserId) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 AS known FROM contacts WHERE user_id = $1 \
             UNION ALL SELECT 1 FROM preferences WHERE user_id = $1 \
             UNION ALL SELECT 1 FROM devices WHERE user_id = $1 \
             UNION ALL SELECT 1 FROM inbox_counters WHERE user_id = $1 \
             UNION ALL SELECT 1 FROM notifications WHERE recipient_id = $1 \
             UNION ALL SELECT 1 FROM action_confirms WHERE user_id = $1 \
             LIMIT 1",
        )
        .bind(user.as_str())
        .fetch_optional(&self.read)
        .await?;
        Ok(row.is_some())
    }

    /// The ids of every delivery owed to `user`.
    pub async fn delivery_ids_of(&self, user: &UserId) -> Result<Vec<String>> {
        ids_of(
            &sqlx::query(
                "SELECT d.id FROM notifications n JOIN deliveries d ON d.notification_id = n.id \
                 WHERE n.recipient_id = $1",
            )
            .bind(user.as_str())
            .fetch_all(&self.read)
            .await?,
        )
    }

    /// Deletes everything Herald keeps about `user` (see the module docs),
    /// inbox entries `batch` at a time with `pause` between batches. `None`
    /// when Herald knows nothing about them (an erase done already).
    #[tracing::instrument(level = "debug", skip_all, fields(user = %user))]
    pub async fn erase_user(
        &self,
        user: &UserId,
        batch: u32,
        pause: Duration,
    ) -> Result<Option<Erasure>> {
        if !self.user_known(user).await? {
            return Ok(None);
        }
        let limit = i64::from(batch.max(1));
        let mut out = Erasure::default();
        // The inbox, a batch per transaction.
        loop {
            let mut tx = self.write.begin().await?;
            let more = erase_entries(&mut tx, user, limit, &mut out).await?;
            tx.commit().await?;
            if !more {
                break;
            }
            tokio::time::sleep(pause).await;
        }
        // The realtime log's rows for the user's rooms; an entry goes when
        // no other room received it.
        let rooms = [format!("user:{user}"), format!("guest:{user}")];
        loop {
            let mut tx = self.write.begin().await?;
            let offsets: Vec<i64> = sqlx::query(
                "SELECT rt_offset FROM realtime_log_rooms WHERE room IN ($1, $2) LIMIT $3",
            )
            .bind(rooms[0].as_str())
            .bind(rooms[1].as_str())
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get("rt_offset"))
            .collect::<std::result::Result<_, _>>()?;
            if offsets.is_empty() {
                tx.commit().await?;
                break;
            }
            let list = placeholders(3, offsets.len());
            let mut query = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM realtime_log_rooms WHERE room IN ($1, $2) AND rt_offset IN ({list})"
            )))
            .bind(rooms[0].as_str())
            .bind(rooms[1].as_str());
            for o in &offsets {
                query = query.bind(*o);
            }
            query.execute(&mut *tx).await?;
            let list = placeholders(1, offsets.len());
            let mut query = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM realtime_log WHERE rt_offset IN ({list}) \
                 AND NOT EXISTS (SELECT 1 FROM realtime_log_rooms r \
                                 WHERE r.rt_offset = realtime_log.rt_offset)"
            )));
            for o in &offsets {
                query = query.bind(*o);
            }
            out.erased.realtime_log += query.execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
        }
        // The rest at once. The counter goes first: deleting it waits for
        // an ingest that holds it (PostgreSQL), so the entries that ingest
        // wrote are visible to the loop below, and no entry outlives the
        // counter (the next entry for this id starts again at 1).
        let mut tx = self.write.begin().await?;
        let user_id = user.as_str();
        out.erased.inbox_counter = sqlx::query("DELETE FROM inbox_counters WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        while erase_entries(&mut tx, user, limit, &mut out).await? {}
        for (table, column, count) in [
            ("contacts", "user_id", &mut out.erased.contact),
            ("preferences", "user_id", &mut out.erased.preferences),
            ("devices", "user_id", &mut out.erased.devices),
            ("action_confirms", "user_id", &mut out.erased.actions),
        ] {
            *count = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE {column} = $1"
            )))
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        out.erased.audit = crate::audit::erase_in(&mut tx, user, crate::now_ms()).await?;
        // The preferences' history goes with them.
        out.erased.preferences += sqlx::query("DELETE FROM preference_changes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // Their contact (and so their groups), preferences and devices are
        // gone: every node's directory cache forgets them.
        self.commit_change(tx, &crate::directory::cache::Change::membership(user))
            .await?;
        Ok(Some(out))
    }

    /// Everything Herald keeps about `user`; `None` when it knows nothing.
    pub async fn export_user(&self, user: &UserId) -> Result<Option<UserExport>> {
        if !self.user_known(user).await? {
            return Ok(None);
        }
        let preferences = sqlx::query("SELECT document FROM preferences WHERE user_id = $1")
            .bind(user.as_str())
            .fetch_optional(&self.read)
            .await?
            .map(|r| {
                let doc: String = r.try_get("document")?;
                serde_json::from_str(&doc).map_err(|e| Error::Corrupt(format!("preferences: {e}")))
            })
            .transpose()?;
        let notifications = sqlx::query_as::<_, NotificationRow>(
            "SELECT n.id, n.seq, n.event_id, n.kind, n.category, n.title, n.body, \
                    e.payload, n.in_inbox, n.read_at, n.deleted_at, n.created_at \
             FROM notifications n JOIN events e ON e.id = n.event_id \
             WHERE n.recipient_id = $1 AND n.in_inbox <> 2 ORDER BY n.seq DESC",
        )
        .bind(user.as_str())
        .fetch_all(&self.read)
        .await?
        .into_iter()
        .map(ExportedNotification::try_from)
        .collect::<Result<Vec<_>>>()?;
        let deliveries = sqlx::query_as::<_, ExportedDelivery>(
            "SELECT d.id, d.notification_id, d.channel, d.status, d.reason, d.attempts, \
                    d.last_error, d.provider, d.provider_message_id, d.created_at, d.updated_at \
             FROM notifications n JOIN deliveries d ON d.notification_id = n.id \
             WHERE n.recipient_id = $1 ORDER BY d.created_at DESC, d.id",
        )
        .bind(user.as_str())
        .fetch_all(&self.read)
        .await?;
        let actions = sqlx::query_as::<_, ExportedAction>(
            "SELECT action_id, action, amount, role, restaurant_id, status, created_at, relayed_at \
             FROM action_confirms WHERE user_id = $1 ORDER BY created_at DESC, action_id",
        )
        .bind(user.as_str())
        .fetch_all(&self.read)
        .await?;
        Ok(Some(UserExport {
            user_id: user.as_str().to_owned(),
            contact: self.contact(user).await?,
            preferences,
            devices: self.devices(user).await?,
            notifications,
            deliveries,
            actions,
            audit: self.audit_of(user).await?,
        }))
    }
}

/// The `id` column of each row.
fn ids_of(rows: &[sqlx::any::AnyRow]) -> Result<Vec<String>> {
    rows.iter()
        .map(|r| r.try_get::<String, _>("id").map_err(Error::from))
        .collect()
}

/// Deletes the finished deliveries whose `column` (`id` or
/// `notification_id`) is one of `ids`, with their trace. The status is
/// checked again here, so a delivery re-driven since it was picked stays.
/// Returns (deliveries, trace rows) deleted.
async fn delete_finished_deliveries(
    tx: &mut Transaction<'_, Any>,
    column: &str,
    ids: &[String],
) -> Result<(u64, u64)> {
    let (mut deliveries, mut trace) = (0, 0);
    for chunk in ids.chunks(MAX_LIST) {
        let sql = format!(
            "DELETE FROM deliveries WHERE {column} IN ({}) AND status IN ({FINISHED}) RETURNING id",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(id.as_str());
        }
        let gone = ids_of(&query.fetch_all(&mut **tx).await?)?;
        deliveries += gone.len() as u64;
        trace += delete_trace(tx, &gone).await?;
    }
    Ok((deliveries, trace))
}

/// Deletes the trace of deliveries `ids`.
async fn delete_trace(tx: &mut Transaction<'_, Any>, ids: &[String]) -> Result<u64> {
    let mut n = 0;
    for chunk in ids.chunks(MAX_LIST) {
        let sql = format!(
            "DELETE FROM delivery_trace WHERE delivery_id IN ({})",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(id.as_str());
        }
        n += query.execute(&mut **tx).await?.rows_affected();
    }
    Ok(n)
}

/// Deletes the inbox entries `ids` that no delivery refers to any more.
async fn delete_entries(tx: &mut Transaction<'_, Any>, ids: &[String]) -> Result<u64> {
    let mut n = 0;
    for chunk in ids.chunks(MAX_LIST) {
        let sql = format!(
            "DELETE FROM notifications WHERE id IN ({}) \
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.notification_id = notifications.id)",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(id.as_str());
        }
        n += query.execute(&mut **tx).await?.rows_affected();
    }
    Ok(n)
}

/// Erases up to `limit` of `user`'s inbox entries with all their
/// deliveries (open ones too), traces and provider reports, and the events
/// that only they referred to. Returns whether there may be more.
async fn erase_entries(
    tx: &mut Transaction<'_, Any>,
    user: &UserId,
    limit: i64,
    out: &mut Erasure,
) -> Result<bool> {
    let rows =
        sqlx::query("SELECT id, event_id FROM notifications WHERE recipient_id = $1 LIMIT $2")
            .bind(user.as_str())
            .bind(limit)
            .fetch_all(&mut **tx)
            .await?;
    if rows.is_empty() {
        return Ok(false);
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    for r in &rows {
        ids.push(r.try_get::<String, _>("id")?);
        events.push(r.try_get::<String, _>("event_id")?);
    }
    events.sort_unstable();
    events.dedup();
    for chunk in ids.chunks(MAX_LIST) {
        let list = placeholders(1, chunk.len());
        let mut query = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM deliveries WHERE notification_id IN ({list}) \
             RETURNING id, provider_message_id"
        )));
        for id in chunk {
            query = query.bind(id.as_str());
        }
        let gone = query.fetch_all(&mut **tx).await?;
        let mut deliveries = Vec::with_capacity(gone.len());
        let mut messages = Vec::new();
        for r in &gone {
            deliveries.push(r.try_get::<String, _>("id")?);
            // Several addresses' messages are kept comma-separated.
            if let Some(m) = r.try_get::<Option<String>, _>("provider_message_id")? {
                messages.extend(m.split(',').map(str::to_owned));
            }
        }
        out.erased.deliveries += deliveries.len() as u64;
        out.erased.delivery_trace += delete_trace(tx, &deliveries).await?;
        for chunk in messages.chunks(MAX_LIST) {
            let mut query = sqlx::query(AssertSqlSafe(format!(
                "DELETE FROM provider_events WHERE message_id IN ({})",
                placeholders(1, chunk.len())
            )));
            for m in chunk {
                query = query.bind(m.as_str());
            }
            out.erased.provider_events += query.execute(&mut **tx).await?.rows_affected();
        }
        out.deliveries.extend(deliveries);
        let mut query = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM notifications WHERE id IN ({list})"
        )));
        for id in chunk {
            query = query.bind(id.as_str());
        }
        out.erased.notifications += query.execute(&mut **tx).await?.rows_affected();
    }
    for chunk in events.chunks(MAX_LIST) {
        let mut query = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM events WHERE id IN ({}) \
             AND NOT EXISTS (SELECT 1 FROM notifications n WHERE n.event_id = events.id)",
            placeholders(1, chunk.len())
        )));
        for id in chunk {
            query = query.bind(id.as_str());
        }
        out.erased.events += query.execute(&mut **tx).await?.rows_affected();
    }
    Ok(rows.len() as i64 >= limit)
}

#[cfg(test)]
mod tests;
