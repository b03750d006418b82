//! The notification centre.
//!
//! Entries are listed newest first by their per-recipient sequence number.
//! The cursor is the last sequence number a page returned; the next page
//! holds entries strictly below it. Entries committed later always have
//! higher numbers (see [`crate::events`]), so paging backwards while new
//! notifications arrive never skips or repeats one.
//!
//! An entry of a scheduled event (`in_inbox = 2`) is nobody's to see, read
//! or delete until the event is released ([`crate::scheduling`]).

use herald_core::{DeliveryId, NotificationId, UserId};
use sqlx::{AssertSqlSafe, Row};

use crate::records::{DeliveryRecord, Notification, TraceEntry};
use crate::{Error, Result, Store, now_ms, parse_id, parse_named};

// Queries below are assembled only from constants and numbered placeholders
// (hence `AssertSqlSafe`); values always travel as bound parameters.
const COLUMNS: &str = "n.id, n.seq, n.event_id, n.kind, n.category, n.title, n.body, \
                       e.payload, n.read_at, n.created_at";

/// Which entries to list.
#[derive(Debug, Clone, Copy, Default)]
pub struct InboxQuery {
    pub unread_only: bool,
    /// Only entries with a sequence number below this (the previous page's cursor).
    pub before: Option<i64>,
    pub limit: u32,
}

impl Store {
    /// A page of `user`'s inbox, newest first.
    pub async fn inbox(&self, user: &UserId, query: InboxQuery) -> Result<Vec<Notification>> {
        let mut sql = format!(
            "SELECT {COLUMNS} FROM notifications n JOIN events e ON e.id = n.event_id \
             WHERE n.recipient_id = $1 AND n.in_inbox = 1 AND n.deleted_at IS NULL AND n.seq < $2"
        );
        if query.unread_only {
            sql.push_str(" AND n.read_at IS NULL");
        }
        sql.push_str(" ORDER BY n.seq DESC LIMIT $3");
        let rows = sqlx::query_as::<_, NotificationRow>(AssertSqlSafe(sql))
            .bind(user.as_str())
            .bind(query.before.unwrap_or(i64::MAX))
            .bind(i64::from(query.limit))
            .fetch_all(&self.read)
            .await?;
        rows.into_iter().map(Notification::try_from).collect()
    }

    pub async fn unread_count(&self, user: &UserId) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS unread FROM notifications \
             WHERE recipient_id = $1 AND in_inbox = 1 AND deleted_at IS NULL AND read_at IS NULL",
        )
        .bind(user.as_str())
        .fetch_one(&self.read)
        .await?;
        Ok(row.try_get("unread")?)
    }

    /// One of `user`'s entries, unless deleted.
    pub async fn notification(
        &self,
        user: &UserId,
        id: NotificationId,
    ) -> Result<Option<Notification>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM notifications n JOIN events e ON e.id = n.event_id \
             WHERE n.id = $1 AND n.recipient_id = $2 AND n.deleted_at IS NULL AND n.in_inbox <> 2"
        );
        sqlx::query_as::<_, NotificationRow>(AssertSqlSafe(sql))
            .bind(id.to_string())
            .bind(user.as_str())
            .fetch_optional(&self.read)
            .await?
            .map(Notification::try_from)
            .transpose()
    }

    /// Marks one entry read (keeping the first read time). `None` if `user`
    /// has no such entry.
    #[tracing::instrument(level = "debug", skip_all, fields(user = %user, notification = %id))]
    pub async fn mark_read(
        &self,
        user: &UserId,
        id: NotificationId,
    ) -> Result<Option<Notification>> {
        sqlx::query(
            "UPDATE notifications SET read_at = $1 \
             WHERE id = $2 AND recipient_id = $3 AND deleted_at IS NULL AND read_at IS NULL \
               AND in_inbox <> 2",
        )
        .bind(now_ms())
        .bind(id.to_string())
        .bind(user.as_str())
        .execute(&self.write)
        .await?;
        // Each read pool query starts a fresh snapshot, so it sees this commit.
        self.notification(user, id).await
    }

    /// Marks every unread entry read; returns how many changed.
    #[tracing::instrument(level = "debug", skip_all, fields(user = %user))]
    pub async fn mark_all_read(&self, user: &UserId) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE notifications SET read_at = $1 \
             WHERE recipient_id = $2 AND deleted_at IS NULL AND read_at IS NULL AND in_inbox <> 2",
        )
        .bind(now_ms())
        .bind(user.as_str())
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected())
    }

    /// Hides an entry from the inbox; its delivery history stays. `false`
    /// if `user` has no such entry (a scheduled one not shown yet is none).
    /// The caller cancels the entry's open deliveries.
    #[tracing::instrument(level = "debug", skip_all, fields(user = %user, notification = %id))]
    pub async fn delete_notification(&self, user: &UserId, id: NotificationId) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE notifications SET deleted_at = $1 \
             WHERE id = $2 AND recipient_id = $3 AND deleted_at IS NULL AND in_inbox <> 2",
        )
        .bind(now_ms())
        .bind(id.to_string())
        .bind(user.as_str())
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Who a notification belongs to, deleted or not.
    pub async fn notification_owner(&self, id: NotificationId) -> Result<Option<UserId>> {
        let row = sqlx::query("SELECT recipient_id FROM notifications WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.read)
            .await?;
        Ok(row
            .map(|r| r.try_get::<String, _>("recipient_id").map(UserId))
            .transpose()?)
    }

    /// Every delivery of a notification, in channel order, each with its
    /// trace. Two queries, however many deliveries.
    pub async fn deliveries(&self, id: NotificationId) -> Result<Vec<DeliveryRecord>> {
        let rows = sqlx::query(
            "SELECT id, recipient_id, channel, status, reason, attempts, last_error, \
                    next_attempt_at, provider_message_id, provider, created_at, updated_at, \
                    digest_key, digest_id \
             FROM deliveries WHERE notification_id = $1 ORDER BY channel",
        )
        .bind(id.to_string())
        .fetch_all(&self.read)
        .await?;
        let mut deliveries = rows
            .iter()
            .map(|r| {
                Ok(DeliveryRecord {
                    id: parse_named::<DeliveryId>(r, "id")?,
                    recipient: r.try_get("recipient_id")?,
                    channel: r.try_get("channel")?,
                    status: r.try_get("status")?,
                    reason: r.try_get("reason")?,
                    attempts: r.try_get("attempts")?,
                    last_error: r.try_get("last_error")?,
                    next_attempt_at: r.try_get("next_attempt_at")?,
                    provider_message_id: r.try_get("provider_message_id")?,
                    provider: r.try_get("provider")?,
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                    digest_key: r.try_get("digest_key")?,
                    digest_id: r
                        .try_get::<Option<String>, _>("digest_id")?
                        .map(|id| crate::parse_id(&id))
                        .transpose()?,
                    trace: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if deliveries.is_empty() {
            return Ok(deliveries);
        }
        let steps = sqlx::query(
            "SELECT t.delivery_id, t.at, t.attempt, t.step, t.provider, t.outcome, t.detail, t.actor \
             FROM delivery_trace t JOIN deliveries d ON d.id = t.delivery_id \
             WHERE d.notification_id = $1 ORDER BY t.at, t.attempt, t.n",
        )
        .bind(id.to_string())
        .fetch_all(&self.read)
        .await?;
        for row in &steps {
            let delivery: DeliveryId = parse_named(row, "delivery_id")?;
            if let Some(d) = deliveries.iter_mut().find(|d| d.id == delivery) {
                d.trace.push(TraceEntry {
                    at: row.try_get("at")?,
                    attempt: row.try_get("attempt")?,
                    step: row.try_get("step")?,
                    provider: row.try_get("provider")?,
                    outcome: row.try_get("outcome")?,
                    detail: row.try_get("detail")?,
                    actor: row.try_get("actor")?,
                });
            }
        }
        Ok(deliveries)
    }
}

/// An inbox entry as [`COLUMNS`] reads it.
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
    read_at: Option<i64>,
    created_at: i64,
}

impl TryFrom<NotificationRow> for Notification {
    type Error = Error;

    fn try_from(row: NotificationRow) -> Result<Notification> {
        Ok(Notification {
            id: parse_id(&row.id)?,
            seq: row.seq,
            event_id: parse_id(&row.event_id)?,
            event: row.kind,
            category: row.category,
            title: row.title,
            body: row.body,
            data: serde_json::from_str(&row.payload)
                .map_err(|e| Error::Corrupt(format!("event payload: {e}")))?,
            read: row.read_at.is_some(),
            read_at: row.read_at,
            created_at: row.created_at,
        })
    }
}
