//! Scheduled events and cancellation.
//!
//! A scheduled event (`sendAt`) is an ordinary event whose pending
//! deliveries fall due at `sendAt` — the delivery scheduler needs nothing
//! more — plus a row in `event_releases`: its inbox entries (written with
//! `in_inbox = 2`) and its realtime fan-out wait for that row to be
//! released. Any node may release it: [`Store::claim_releases`] takes due
//! rows with a lease (a compare-and-set, so one node wins), the node shows
//! the entries ([`Store::show_released`]), fans the event out, and deletes
//! the row ([`Store::finish_release`]). A node that dies half way leaves a
//! leased row that another takes over once the lease ends: the inbox step
//! finds nothing left to show, and the fan-out may happen twice, never not
//! at all.
//!
//! A released entry takes the next inbox sequence number of its recipient
//! then, not at publish: entries become visible in sequence order, as the
//! inbox's cursor expects.
//!
//! Cancellation ([`Store::cancel`]) ends every open delivery of an event
//! (or of one inbox entry) `cancelled`, with its reason and actor in the
//! trace. A delivery in flight (`sending`) belongs to its worker; the
//! cancel leaves its reason in `cancel_requested`, which the worker checks
//! before sending and which turns any finish that would reopen the
//! delivery into `cancelled` (see `deliveries::writer`). What was sent is
//! reported, not undone.

use herald_core::{DeliveryId, EventId, EventKind, NotificationId, UserId};
use sqlx::{Any, AssertSqlSafe, Row, Transaction};

use crate::deliveries::CLAIMABLE;
use crate::events::{IN_INBOX_NO, IN_INBOX_SCHEDULED, IN_INBOX_YES, backend_of, values};
use crate::{Error, Result, Store, parse_named};

/// What a cancel applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelScope<'a> {
    /// Every recipient's deliveries of an event, its inbox entries not yet
    /// shown, and its realtime release.
    Event(EventId),
    /// One user's deliveries of one inbox entry.
    Notification(NotificationId, &'a UserId),
}

/// What a cancel found, by delivery.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CancelReport {
    /// Open deliveries it ended `cancelled`.
    pub cancelled: u64,
    /// Deliveries a worker held: told to stop; if the send already went
    /// out they end `sent`, otherwise `cancelled`.
    pub in_flight: u64,
    /// Deliveries that had left Herald (`sent`, `delivered`, `bounced`).
    pub already_sent: u64,
    /// Deliveries already over otherwise (suppressed, failed, expired,
    /// cancelled before).
    pub already_final: u64,
    /// Inbox entries of a scheduled event that will now never be shown.
    pub inbox_hidden: u64,
    /// Whether a scheduled realtime release was called off.
    pub release_cancelled: bool,
}

/// A scheduled event whose time has come, claimed by this node.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub event_id: EventId,
    pub kind: EventKind,
    pub payload: serde_json::Map<String, serde_json::Value>,
    pub rooms: Vec<String>,
    /// `sendAt` (epoch ms).
    pub due_at: i64,
}

impl Store {
    /// Cancels the open deliveries of `scope` with `reason`, as `actor`
    /// asked, at `now`. `None` when the event (or the user's entry) does
    /// not exist. Idempotent: a second cancel ends nothing and reports the
    /// same sent deliveries.
    #[tracing::instrument(level = "debug", skip_all, fields(reason))]
    pub async fn cancel(
        &self,
        scope: CancelScope<'_>,
        reason: &str,
        actor: &str,
        now: i64,
    ) -> Result<Option<CancelReport>> {
        let mut tx = self.write.begin().await?;
        // The deliveries in scope, as a subquery on `$3` (and `$4`).
        let (exists, of_scope, key, user) = match scope {
            CancelScope::Event(id) => (
                "SELECT 1 FROM events WHERE id = $1",
                "SELECT id FROM notifications WHERE event_id = $3",
                id.to_string(),
                None,
            ),
            CancelScope::Notification(id, user) => (
                "SELECT 1 FROM notifications WHERE id = $1 AND recipient_id = $2",
                "SELECT id FROM notifications WHERE id = $3 AND recipient_id = $4",
                id.to_string(),
                Some(user.as_str()),
            ),
        };
        let mut probe = sqlx::query(exists).bind(&key);
        if let Some(user) = user {
            probe = probe.bind(user);
        }
        if probe.fetch_optional(&mut *tx).await?.is_none() {
            tx.rollback().await?;
            return Ok(None);
        }
        let bind_scope = |sql: String| {
            let query = sqlx::query(AssertSqlSafe(sql))
                .bind(reason)
                .bind(now)
                .bind(key.clone());
            match user {
                Some(user) => query.bind(user),
                None => query,
            }
        };
        let cancelled: Vec<DeliveryId> = bind_scope(format!(
            "UPDATE deliveries SET status = 'cancelled', reason = $1, next_attempt_at = NULL, \
                    lease_until = NULL, updated_at = $2 \
             WHERE notification_id IN ({of_scope}) AND status IN ({CLAIMABLE}) RETURNING id"
        ))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| parse_named(r, "id"))
        .collect::<Result<_>>()?;
        let flagged: Vec<DeliveryId> = bind_scope(format!(
            "UPDATE deliveries SET cancel_requested = $1, updated_at = $2 \
             WHERE notification_id IN ({of_scope}) AND status = 'sending' \
               AND cancel_requested IS NULL RETURNING id"
        ))
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| parse_named(r, "id"))
        .collect::<Result<_>>()?;
        let steps: Vec<(&DeliveryId, &str)> = cancelled
            .iter()
            .map(|id| (id, "cancelled"))
            .chain(flagged.iter().map(|id| (id, "cancel_requested")))
            .collect();
        trace_cancel(&mut tx, &steps, reason, actor, now).await?;

        let mut report = CancelReport {
            cancelled: cancelled.len() as u64,
            ..CancelReport::default()
        };
        // Where everything in scope stands now.
        let of_scope_alone = of_scope.replace("$3", "$1").replace("$4", "$2");
        let mut query = sqlx::query(AssertSqlSafe(format!(
            "SELECT id, status FROM deliveries WHERE notification_id IN ({of_scope_alone})"
        )))
        .bind(key.clone());
        if let Some(user) = user {
            query = query.bind(user);
        }
        let now_cancelled: std::collections::HashSet<&DeliveryId> = cancelled.iter().collect();
        for row in query.fetch_all(&mut *tx).await? {
            let id: DeliveryId = parse_named(&row, "id")?;
            if now_cancelled.contains(&id) {
                continue;
            }
            match row.try_get::<String, _>("status")?.as_str() {
                "sending" => report.in_flight += 1,
                "sent" | "delivered" | "bounced" => report.already_sent += 1,
                _ => report.already_final += 1,
            }
        }
        if let CancelScope::Event(id) = scope {
            report.release_cancelled =
                sqlx::query("DELETE FROM event_releases WHERE event_id = $1")
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    > 0;
            report.inbox_hidden = sqlx::query(
                "UPDATE notifications SET in_inbox = $1 WHERE event_id = $2 AND in_inbox = $3",
            )
            .bind(IN_INBOX_NO)
            .bind(id.to_string())
            .bind(IN_INBOX_SCHEDULED)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(Some(report))
    }

    /// Claims up to `limit` scheduled events due by `now` that no other
    /// node holds, for `lease_ms`. Each is claimed by one node at a time.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn claim_releases(
        &self,
        now: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<Release>> {
        let rows = sqlx::query(
            "UPDATE event_releases SET lease_until = $1 \
             WHERE event_id IN (SELECT event_id FROM event_releases \
                                WHERE due_at <= $2 AND COALESCE(lease_until, 0) < $2 \
                                ORDER BY due_at LIMIT $3) \
               AND due_at <= $2 AND COALESCE(lease_until, 0) < $2 \
             RETURNING event_id, rooms, due_at",
        )
        .bind(now.saturating_add(lease_ms))
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.write)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let event_id: String = row.try_get("event_id")?;
            let rooms: String = row.try_get("rooms")?;
            let event = sqlx::query("SELECT kind, payload FROM events WHERE id = $1")
                .bind(&event_id)
                .fetch_optional(&self.read)
                .await?;
            let Some(event) = event else {
                // Erased or purged meanwhile: nothing to release.
                self.finish_release(parse_named(&row, "event_id")?).await?;
                continue;
            };
            let payload: String = event.try_get("payload")?;
            out.push(Release {
                event_id: parse_named(&row, "event_id")?,
                kind: crate::events::kind(&event.try_get::<String, _>("kind")?)?,
                payload: serde_json::from_str(&payload)
                    .map_err(|e| Error::Corrupt(format!("event payload: {e}")))?,
                rooms: serde_json::from_str(&rooms)
                    .map_err(|e| Error::Corrupt(format!("release rooms: {e}")))?,
                due_at: row.try_get("due_at")?,
            });
        }
        Ok(out)
    }

    /// Shows a released event's inbox entries, each with its recipient's
    /// next sequence number, dated `now`; how many. Nothing when the
    /// release was cancelled meanwhile (`None`).
    #[tracing::instrument(level = "debug", skip_all, fields(event = %event))]
    pub async fn show_released(&self, event: EventId, now: i64) -> Result<Option<u64>> {
        let mut tx = self.write.begin().await?;
        // Locks the release row, so a cancel waits for this (or this for it).
        let held =
            sqlx::query("UPDATE event_releases SET lease_until = lease_until WHERE event_id = $1")
                .bind(event.to_string())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        if held == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let entries = sqlx::query(
            "SELECT id, recipient_id FROM notifications WHERE event_id = $1 AND in_inbox = $2 \
             ORDER BY recipient_id",
        )
        .bind(event.to_string())
        .bind(IN_INBOX_SCHEDULED)
        .fetch_all(&mut *tx)
        .await?;
        for entry in &entries {
            let recipient: String = entry.try_get("recipient_id")?;
            let seq: i64 = sqlx::query(
                "INSERT INTO inbox_counters (user_id, last_seq) VALUES ($1, 1) \
                 ON CONFLICT (user_id) DO UPDATE SET last_seq = inbox_counters.last_seq + 1 \
                 RETURNING last_seq",
            )
            .bind(&recipient)
            .fetch_one(&mut *tx)
            .await?
            .try_get("last_seq")?;
            sqlx::query(
                "UPDATE notifications SET seq = $1, in_inbox = $2, created_at = $3 WHERE id = $4",
            )
            .bind(seq)
            .bind(IN_INBOX_YES)
            .bind(now)
            .bind(entry.try_get::<String, _>("id")?)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(entries.len() as u64))
    }

    /// Forgets a release once its event was fanned out.
    pub async fn finish_release(&self, event: EventId) -> Result<()> {
        sqlx::query("DELETE FROM event_releases WHERE event_id = $1")
            .bind(event.to_string())
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// How many scheduled events wait for their release.
    pub async fn pending_releases(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM event_releases")
            .fetch_one(&self.read)
            .await?;
        Ok(row.try_get("n")?)
    }
}

/// One `cancel` line per delivery, with who asked.
async fn trace_cancel(
    tx: &mut Transaction<'_, Any>,
    steps: &[(&DeliveryId, &str)],
    reason: &str,
    actor: &str,
    now: i64,
) -> Result<()> {
    let backend = backend_of(tx);
    for chunk in steps.chunks(128) {
        let sql = format!(
            "INSERT INTO delivery_trace \
             (delivery_id, at, attempt, n, step, provider, outcome, detail, actor) VALUES {}",
            values(backend, chunk.len(), 9)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (id, outcome) in chunk {
            query = query
                .bind(id.to_string())
                .bind(now)
                .bind(0_i64)
                .bind(0_i64)
                .bind("cancel")
                .bind(None::<&str>)
                .bind(*outcome)
                .bind(reason)
                .bind(actor);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}
