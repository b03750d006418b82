//! Delivery state, moved only by compare-and-set.
//!
//! ```text
//!   pending ─┐                      ┌─▶ sent
//!   deferred ┼─claim─▶ sending ─────┼─▶ retrying ─claim─▶ sending …
//!   retrying ┘   (attempts + 1,     ├─▶ failed
//!                 lease)            ├─▶ suppressed   (preferences changed)
//!                                   └─▶ deferred     (quiet hours began)
//! ```
//!
//! A claim succeeds for one caller only, so two jobs for the same delivery
//! (a duplicate from the sweeper, a replayed queue) send it once. Every
//! transition out of `sending` names the attempt it finishes; if the lease
//! ran out and another worker claimed the delivery meanwhile, the late
//! finish changes nothing.
//!
//! After `sent`, the provider may report more (a status webhook):
//! `sent → delivered | bounced | failed`, and `delivered → bounced | failed`
//! (a late bounce). Each report is applied once, by its event id.

use herald_core::{DeliveryId, EventId, EventKind, NotificationId, UserId};
use sqlx::{AssertSqlSafe, Row};

use crate::inbox::parse_id;
use crate::{Error, Result, Store, placeholders};

/// Statuses a worker may claim from.
const CLAIMABLE: &str = "'pending', 'deferred', 'retrying'";

/// A delivery a worker now owns until `lease_until`.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub id: DeliveryId,
    /// This attempt's number, from 1.
    pub attempt: i64,
    pub channel: String,
    /// The reason the delivery was scheduled (`routing_default`, `mandatory`, …).
    pub reason: String,
    pub notification_id: NotificationId,
    pub recipient: UserId,
    pub event_id: EventId,
    pub kind: EventKind,
    pub payload: serde_json::Value,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Sent {
        provider_message_id: Option<String>,
    },
    /// Preferences or a missing address say no, now.
    Suppressed {
        reason: String,
    },
    /// Quiet hours: not before `until` (epoch ms).
    Deferred {
        until: i64,
    },
    /// A transient failure; try again at `next_attempt_at`.
    Retry {
        error: String,
        next_attempt_at: i64,
    },
    /// A permanent failure, or retries exhausted.
    Failed {
        error: String,
    },
}

/// The columns a [`Finish`] writes; `None` leaves a column as it was,
/// except `next_attempt_at`, which is always written.
#[derive(Debug, Default)]
struct Transition<'a> {
    status: &'a str,
    reason: Option<&'a str>,
    error: Option<&'a str>,
    next_attempt_at: Option<i64>,
    provider_message_id: Option<&'a str>,
    enqueued_at: Option<i64>,
    /// 1 when the claim sent nothing (deferred, suppressed): it does not
    /// count as an attempt.
    refund: i64,
}

impl<'a> From<&'a Finish> for Transition<'a> {
    fn from(finish: &'a Finish) -> Self {
        match finish {
            Finish::Sent {
                provider_message_id,
            } => Transition {
                status: "sent",
                provider_message_id: provider_message_id.as_deref(),
                ..Transition::default()
            },
            Finish::Suppressed { reason } => Transition {
                status: "suppressed",
                reason: Some(reason),
                refund: 1,
                ..Transition::default()
            },
            Finish::Deferred { until } => Transition {
                status: "deferred",
                next_attempt_at: Some(*until),
                enqueued_at: Some(*until),
                refund: 1,
                ..Transition::default()
            },
            Finish::Retry {
                error,
                next_attempt_at,
            } => Transition {
                status: "retrying",
                error: Some(error),
                next_attempt_at: Some(*next_attempt_at),
                enqueued_at: Some(*next_attempt_at),
                ..Transition::default()
            },
            Finish::Failed { error } => Transition {
                status: "failed",
                error: Some(error),
                ..Transition::default()
            },
        }
    }
}

impl Store {
    /// Claims a delivery that is due, for `lease_ms`. `None` when it is not
    /// claimable: already sent, being sent, not yet due, or unknown.
    pub async fn claim_delivery(
        &self,
        id: DeliveryId,
        now: i64,
        lease_ms: i64,
    ) -> Result<Option<Claimed>> {
        let sql = format!(
            "UPDATE deliveries SET status = 'sending', attempts = attempts + 1, \
                    lease_until = $1, updated_at = $2 \
             WHERE id = $3 AND status IN ({CLAIMABLE}) AND COALESCE(next_attempt_at, 0) <= $2 \
             RETURNING attempts, channel, reason, notification_id, recipient_id"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(now + lease_ms)
            .bind(now)
            .bind(id.to_string())
            .fetch_optional(&self.write)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let notification_id: NotificationId = parse_id(&row, 3)?;
        let context = sqlx::query(
            "SELECT n.event_id, n.kind, e.payload FROM notifications n \
             JOIN events e ON e.id = n.event_id WHERE n.id = $1",
        )
        .bind(notification_id.to_string())
        .fetch_one(&self.write)
        .await?;
        let payload: String = context.try_get(2)?;
        Ok(Some(Claimed {
            id,
            attempt: row.try_get(0)?,
            channel: row.try_get(1)?,
            reason: row.try_get(2)?,
            notification_id,
            recipient: UserId(row.try_get(4)?),
            event_id: parse_id(&context, 0)?,
            kind: crate::events::kind(&context.try_get::<String, _>(1)?)?,
            payload: serde_json::from_str(&payload)
                .map_err(|e| Error::Corrupt(format!("event payload: {e}")))?,
        }))
    }

    /// Records how attempt `attempt` of a claimed delivery ended. `false`
    /// when the claim was lost (the lease ran out and the delivery moved on).
    pub async fn finish_delivery(
        &self,
        id: DeliveryId,
        attempt: i64,
        finish: &Finish,
        now: i64,
    ) -> Result<bool> {
        let t = Transition::from(finish);
        let done = sqlx::query(
            "UPDATE deliveries SET status = $1, reason = COALESCE($2, reason), \
                    last_error = COALESCE($3, last_error), next_attempt_at = $4, \
                    provider_message_id = COALESCE($5, provider_message_id), \
                    enqueued_at = COALESCE($6, enqueued_at), lease_until = NULL, updated_at = $7, \
                    attempts = attempts - $10 \
             WHERE id = $8 AND status = 'sending' AND attempts = $9",
        )
        .bind(t.status)
        .bind(t.reason)
        .bind(t.error)
        .bind(t.next_attempt_at)
        .bind(t.provider_message_id)
        .bind(t.enqueued_at)
        .bind(now)
        .bind(id.to_string())
        .bind(attempt)
        .bind(t.refund)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Applies a provider's report about message `message_id` once:
    /// the first time `(provider, event_id)` is seen it moves the delivery
    /// that message belongs to (from `sent`, or from `delivered` to a late
    /// bounce or failure); a repeat changes nothing.
    pub async fn record_provider_event(
        &self,
        event: &ProviderEvent<'_>,
        now: i64,
    ) -> Result<ProviderEventOutcome> {
        let mut tx = self.write.begin().await?;
        let fresh = sqlx::query(
            "INSERT INTO provider_events (provider, event_id, message_id, status, received_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (provider, event_id) DO NOTHING",
        )
        .bind(event.provider)
        .bind(event.event_id)
        .bind(event.message_id)
        .bind(event.status.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if fresh.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(ProviderEventOutcome::Duplicate);
        }
        let from = match event.status {
            ProviderStatus::Delivered => "'sent'",
            ProviderStatus::Bounced | ProviderStatus::Failed => "'sent', 'delivered'",
        };
        let moved = sqlx::query(AssertSqlSafe(format!(
            "UPDATE deliveries SET status = $1, last_error = COALESCE($2, last_error), updated_at = $3 \
             WHERE provider_message_id = $4 AND status IN ({from})"
        )))
        .bind(event.status.as_str())
        .bind(event.error)
        .bind(now)
        .bind(event.message_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(if moved.rows_affected() > 0 {
            ProviderEventOutcome::Applied
        } else {
            ProviderEventOutcome::NoChange
        })
    }

    /// Hands deliveries whose worker died (still `sending` past their lease)
    /// back for another attempt. Returns how many.
    pub async fn release_expired_leases(&self, now: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE deliveries SET status = 'retrying', next_attempt_at = $1, lease_until = NULL, \
                    enqueued_at = NULL, last_error = 'the worker stopped before finishing', updated_at = $1 \
             WHERE status = 'sending' AND lease_until < $1",
        )
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected())
    }

    /// Deliveries that are due but whose queue job is older than
    /// `stale_ms` (or was never made): the queue has lost them. At most
    /// `limit`, oldest first.
    pub async fn stranded_deliveries(
        &self,
        now: i64,
        stale_ms: i64,
        limit: u32,
    ) -> Result<Vec<DeliveryId>> {
        let sql = format!(
            "SELECT id FROM deliveries \
             WHERE status IN ({CLAIMABLE}) AND COALESCE(next_attempt_at, 0) <= $1 \
               AND COALESCE(enqueued_at, 0) <= $2 \
             ORDER BY updated_at LIMIT $3"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(now)
            .bind(now - stale_ms)
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| parse_id(r, 0)).collect()
    }

    /// When delivery `id` falls due, if it is owed an attempt but not yet
    /// (a job that fired early asks this, to come back on time).
    pub async fn due_later(&self, id: DeliveryId, now: i64) -> Result<Option<i64>> {
        let sql = format!(
            "SELECT next_attempt_at FROM deliveries \
             WHERE id = $1 AND status IN ({CLAIMABLE}) AND next_attempt_at > $2"
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(id.to_string())
            .bind(now)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| r.try_get(0)).transpose().map_err(Into::into)
    }

    /// How many deliveries are owed an attempt, now or later.
    pub async fn open_deliveries(&self) -> Result<u64> {
        let sql = format!("SELECT COUNT(*) FROM deliveries WHERE status IN ({CLAIMABLE})");
        let n: i64 = sqlx::query(AssertSqlSafe(sql))
            .fetch_one(&self.read)
            .await?
            .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Notes that queue jobs were made for `ids` and fall due at `at`.
    pub async fn mark_enqueued(&self, ids: &[DeliveryId], at: i64) -> Result<()> {
        for chunk in ids.chunks(500) {
            let sql = format!(
                "UPDATE deliveries SET enqueued_at = $1 WHERE id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(at);
            for id in chunk {
                query = query.bind(id.to_string());
            }
            query.execute(&self.write).await?;
        }
        Ok(())
    }

    /// How many deliveries wait in each open state: the queue's depth as
    /// the database sees it.
    pub async fn delivery_backlog(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) FROM deliveries \
             WHERE status IN ('pending', 'deferred', 'retrying', 'sending') GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}

/// What a provider says became of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderStatus {
    /// It reached the handset or the mailbox.
    Delivered,
    /// The receiving server refused it (the address does not exist, …).
    Bounced,
    /// The provider gave up (undeliverable, dropped, carrier rejection).
    Failed,
}

impl ProviderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderStatus::Delivered => "delivered",
            ProviderStatus::Bounced => "bounced",
            ProviderStatus::Failed => "failed",
        }
    }
}

/// One report from a provider's status webhook.
#[derive(Debug, Clone)]
pub struct ProviderEvent<'a> {
    /// `twilio`, `sendgrid`.
    pub provider: &'a str,
    /// The provider's id for this report; a repeat is ignored.
    pub event_id: &'a str,
    /// The provider's id for the message (the delivery's `provider_message_id`).
    pub message_id: &'a str,
    pub status: ProviderStatus,
    /// The provider's error, recorded on the delivery.
    pub error: Option<&'a str>,
}

/// What [`Store::record_provider_event`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderEventOutcome {
    /// The delivery moved.
    Applied,
    /// New report, but no delivery to move (unknown message, or the
    /// delivery already says as much or more).
    NoChange,
    /// Seen before: nothing done.
    Duplicate,
}
