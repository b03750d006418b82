//! The notification centre.
//!
//! Entries are listed newest first by their per-recipient sequence number.
//! The cursor is the last sequence number a page returned; the next page
//! holds entries strictly below it. Entries committed later always have
//! higher numbers (see [`crate::events`]), so paging backwards while new
//! notifications arrive never skips or repeats one.

use herald_core::{DeliveryId, EventId, NotificationId, UserId};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::records::{DeliveryRecord, Notification, TraceEntry};
use crate::redrive::parse_named;
use crate::{Error, Result, Store, now_ms};

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
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(user.as_str())
            .bind(query.before.unwrap_or(i64::MAX))
            .bind(i64::from(query.limit))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(notification).collect()
    }

    pub async fn unread_count(&self, user: &UserId) -> Result<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM notifications \
             WHERE recipient_id = $1 AND in_inbox = 1 AND deleted_at IS NULL AND read_at IS NULL",
        )
        .bind(user.as_str())
        .fetch_one(&self.read)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// One of `user`'s entries, unless deleted.
    pub async fn notification(
        &self,
        user: &UserId,
        id: NotificationId,
    ) -> Result<Option<Notification>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM notifications n JOIN events e ON e.id = n.event_id \
             WHERE n.id = $1 AND n.recipient_id = $2 AND n.deleted_at IS NULL"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.to_string())
            .bind(user.as_str())
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(notification).transpose()
    }

    /// Marks one entry read (keeping the first read time). `None` if `user`
    /// has no such entry.
    pub async fn mark_read(
        &self,
        user: &UserId,
        id: NotificationId,
    ) -> Result<Option<Notification>> {
        sqlx::query(
            "UPDATE notifications SET read_at = $1 \
             WHERE id = $2 AND recipient_id = $3 AND deleted_at IS NULL AND read_at IS NULL",
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
    pub async fn mark_all_read(&self, user: &UserId) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE notifications SET read_at = $1 \
             WHERE recipient_id = $2 AND deleted_at IS NULL AND read_at IS NULL",
        )
        .bind(now_ms())
        .bind(user.as_str())
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected())
    }

    /// Hides an entry from the inbox; its delivery history stays. `false`
    /// if `user` has no such entry.
    pub async fn delete_notification(&self, user: &UserId, id: NotificationId) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE notifications SET deleted_at = $1 \
             WHERE id = $2 AND recipient_id = $3 AND deleted_at IS NULL",
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
            .map(|r| r.try_get::<String, _>(0).map(UserId))
            .transpose()?)
    }

    /// Every delivery of a notification, in channel order, each with its
    /// trace. Two queries, however many deliveries.
    pub async fn deliveries(&self, id: NotificationId) -> Result<Vec<DeliveryRecord>> {
        let rows = sqlx::query(
            "SELECT id, recipient_id, channel, status, reason, attempts, last_error, \
                    next_attempt_at, provider_message_id, provider, created_at, updated_at \
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

fn notification(row: &AnyRow) -> Result<Notification> {
    let read_at: Option<i64> = row.try_get(8)?;
    let payload: String = row.try_get(7)?;
    Ok(Notification {
        id: parse_id::<NotificationId>(row, 0)?,
        seq: row.try_get(1)?,
        event_id: parse_id::<EventId>(row, 2)?,
        event: row.try_get(3)?,
        category: row.try_get(4)?,
        title: row.try_get(5)?,
        body: row.try_get(6)?,
        data: serde_json::from_str(&payload)
            .map_err(|e| Error::Corrupt(format!("event payload: {e}")))?,
        read: read_at.is_some(),
        read_at,
        created_at: row.try_get(9)?,
    })
}

pub(crate) fn parse_id<T: std::str::FromStr>(row: &AnyRow, index: usize) -> Result<T> {
    let text: String = row.try_get(index)?;
    text.parse()
        .map_err(|_| Error::Corrupt(format!("`{text}` is not an id")))
}
