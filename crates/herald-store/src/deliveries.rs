//! Delivery state, moved only by compare-and-set.
//!
//! ```text
//!   pending ─┐                      ┌─▶ sent
//!   deferred ┼─claim─▶ sending ─────┼─▶ retrying ─claim─▶ sending …
//!   retrying ┘   (attempts + 1,     ├─▶ failed ──re-drive─▶ pending
//!                 lease)            ├─▶ expired ─re-drive─▶ pending
//!                                   ├─▶ suppressed   (preferences changed)
//!                                   ├─▶ deferred     (quiet hours began; a throttle's overflow, into a digest)
//!                                   ├─▶ throttled    (over a throttle, dropped)
//!                                   ├─▶ skipped      (held, and the event was seen meanwhile)
//!                                   └─▶ pending / retrying (handed back unsent)
//!
//!   pending / deferred / retrying / sending ─fold─▶ digested (into the digest another row carries)
//! ```
//!
//! A claim succeeds for one caller only, so two jobs for the same delivery
//! (a duplicate from the sweeper, a replayed queue) send it once. Every
//! transition out of `sending` names the attempt it finishes; if the lease
//! ran out and another worker claimed the delivery meanwhile, the late
//! finish changes nothing.
//!
//! Workers claim many deliveries with one statement and record outcomes by
//! group commit ([`writer`]): concurrent claims share a transaction, and so
//! do concurrent finishes, each with the trace rows that explain it.
//!
//! After `sent`, the provider may report more (a status webhook):
//! `sent → delivered | bounced | failed`, and `delivered → bounced | failed`
//! (a late bounce). Each report is applied once, by its event id.

pub(crate) mod writer;

use std::collections::HashMap;

use herald_core::{DeliveryId, EventId, EventKind, NotificationId, UserId};
use sqlx::{AssertSqlSafe, Row};
use tokio::sync::oneshot;

use crate::{Error, Result, Store, parse_id, parse_named, placeholders};

/// Statuses a worker may claim from.
pub(crate) const CLAIMABLE: &str = "'pending', 'deferred', 'retrying'";

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
    /// When the delivery was made (epoch ms).
    pub created_at: i64,
    /// When an admin last re-drove it, if ever: expiry counts from then.
    pub redriven_at: Option<i64>,
    /// Until when the claim holds (epoch ms).
    pub lease_until: i64,
    /// The W3C `traceparent` of the publish that made it, if traced.
    pub traceparent: Option<String>,
    /// The digest it goes out in, if any (`quiet`, a category).
    pub digest_key: Option<String>,
    /// `recipient` or `anyone`: skip it if the event was read by then.
    pub seen_check: Option<String>,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    Sent {
        provider: Option<String>,
        provider_message_id: Option<String>,
    },
    /// Preferences or a missing address say no, now.
    Suppressed { reason: String },
    /// Not before `until` (epoch ms): quiet hours, or a throttle's
    /// overflow. With a digest key, it then goes out in that digest.
    Deferred {
        until: i64,
        digest_key: Option<String>,
    },
    /// Over its category's throttle on this channel, and not kept for a digest.
    Throttled { reason: String },
    /// Not sent: the recipient (or, for an escalation step, anyone the
    /// event reached) read or acknowledged it during the hold.
    Seen { reason: String },
    /// A transient failure; try again at `next_attempt_at`. `counted` is
    /// false when no provider was even tried (every breaker open): the
    /// attempt is given back and the retry budget is not spent.
    Retry {
        error: String,
        next_attempt_at: i64,
        provider: Option<String>,
        counted: bool,
    },
    /// A permanent failure, or retries exhausted.
    Failed {
        error: String,
        provider: Option<String>,
    },
    /// Its category's `expire_after` passed before it could be sent.
    Expired { reason: String },
    /// Not attempted: handed back, due again at `at` (epoch ms), without
    /// spending an attempt (the lease would not have covered the send).
    Release { at: i64 },
    /// Not sent: its event (or its inbox entry) was cancelled while it was
    /// claimed, and the worker saw it before sending.
    Cancelled { reason: String },
}

/// One line of a delivery's trace, written with the finish it explains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceStep {
    /// `attempt`, `failover`, `breaker_open`, `throttled`, `expired`, `released`.
    pub step: String,
    pub provider: Option<String>,
    pub outcome: Option<String>,
    pub detail: Option<String>,
}

/// An attempt's outcome, to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub id: DeliveryId,
    /// The attempt it finishes (as claimed).
    pub attempt: i64,
    pub finish: Finish,
    /// What happened on the way, in order; the last step is the outcome.
    pub trace: Vec<TraceStep>,
    /// When it finished (epoch ms).
    pub at: i64,
}

/// The columns a [`Finish`] writes; `None` leaves a column as it was,
/// except `next_attempt_at`, which is always written.
#[derive(Debug, Default)]
struct Transition<'a> {
    status: &'static str,
    reason: Option<&'a str>,
    error: Option<&'a str>,
    next_attempt_at: Option<i64>,
    provider_message_id: Option<&'a str>,
    enqueued_at: Option<i64>,
    provider: Option<&'a str>,
    /// Joins (or changes) a digest: its key and when it goes out.
    digest_key: Option<&'a str>,
    digest_at: Option<i64>,
    /// When the message went out (what throttles count).
    sent: bool,
    /// 1 when the claim sent nothing (deferred, suppressed, released, every
    /// breaker open): it does not count as an attempt.
    refund: i64,
}

impl<'a> Transition<'a> {
    fn of(finish: &'a Finish, attempt: i64) -> Self {
        match finish {
            Finish::Sent {
                provider,
                provider_message_id,
            } => Transition {
                status: "sent",
                provider_message_id: provider_message_id.as_deref(),
                provider: provider.as_deref(),
                sent: true,
                ..Transition::default()
            },
            Finish::Suppressed { reason } => Transition {
                status: "suppressed",
                reason: Some(reason),
                refund: 1,
                ..Transition::default()
            },
            Finish::Deferred { until, digest_key } => Transition {
                status: "deferred",
                next_attempt_at: Some(*until),
                enqueued_at: Some(*until),
                digest_key: digest_key.as_deref(),
                digest_at: digest_key.as_ref().map(|_| *until),
                refund: 1,
                ..Transition::default()
            },
            Finish::Throttled { reason } => Transition {
                status: "throttled",
                reason: Some("throttle"),
                error: Some(reason),
                refund: 1,
                ..Transition::default()
            },
            Finish::Seen { reason } => Transition {
                status: "skipped",
                reason: Some("seen"),
                error: Some(reason),
                refund: 1,
                ..Transition::default()
            },
            Finish::Retry {
                error,
                next_attempt_at,
                provider,
                counted,
            } => Transition {
                status: "retrying",
                error: Some(error),
                next_attempt_at: Some(*next_attempt_at),
                enqueued_at: Some(*next_attempt_at),
                provider: provider.as_deref(),
                refund: i64::from(!counted),
                ..Transition::default()
            },
            Finish::Failed { error, provider } => Transition {
                status: "failed",
                error: Some(error),
                provider: provider.as_deref(),
                ..Transition::default()
            },
            Finish::Expired { reason } => Transition {
                status: "expired",
                error: Some(reason),
                refund: 1,
                ..Transition::default()
            },
            Finish::Release { at } => Transition {
                status: if attempt > 1 { "retrying" } else { "pending" },
                next_attempt_at: Some(*at),
                enqueued_at: Some(*at),
                refund: 1,
                ..Transition::default()
            },
            Finish::Cancelled { reason } => Transition {
                status: "cancelled",
                reason: Some(reason),
                refund: 1,
                ..Transition::default()
            },
        }
    }
}

impl Store {
    /// Claims those of `ids` that are due and free, for `lease_ms` each;
    /// the rest (already sent, being sent, not yet due, unknown) are left
    /// alone. Concurrent calls share one statement and one commit.
    #[tracing::instrument(level = "debug", skip_all, fields(deliveries = ids.len()))]
    pub async fn claim_deliveries(
        &self,
        ids: &[DeliveryId],
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<Claimed>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        let request = writer::Request::Claim {
            ids: ids.to_vec(),
            now,
            lease_ms,
            reply,
        };
        self.deliveries
            .send(request)
            .await
            .map_err(|_| Error::WriterStopped)?;
        let rows = answer.await.map_err(|_| Error::WriterStopped)??;
        self.claim_context(rows).await
    }

    /// What claimed deliveries need besides their row: the event.
    async fn claim_context(&self, rows: Vec<writer::ClaimedRow>) -> Result<Vec<Claimed>> {
        let mut notifications: Vec<&str> =
            rows.iter().map(|r| r.notification_id.as_str()).collect();
        notifications.sort_unstable();
        notifications.dedup();
        type Context = (EventId, EventKind, serde_json::Value, Option<String>);
        let mut context: HashMap<String, Context> = HashMap::with_capacity(notifications.len());
        for chunk in notifications.chunks(500) {
            let sql = format!(
                "SELECT n.id AS notification_id, n.event_id, n.kind, e.payload, e.traceparent \
                 FROM notifications n JOIN events e ON e.id = n.event_id \
                 WHERE n.id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&self.read).await? {
                let payload: String = row.try_get("payload")?;
                context.insert(
                    row.try_get("notification_id")?,
                    (
                        parse_named(&row, "event_id")?,
                        crate::events::kind(&row.try_get::<String, _>("kind")?)?,
                        serde_json::from_str(&payload)
                            .map_err(|e| Error::Corrupt(format!("event payload: {e}")))?,
                        row.try_get("traceparent")?,
                    ),
                );
            }
        }
        rows.into_iter()
            .map(|r| {
                let (event_id, kind, payload, traceparent) =
                    context.get(&r.notification_id).cloned().ok_or_else(|| {
                        Error::Corrupt(format!("notification {} has no event", r.notification_id))
                    })?;
                Ok(Claimed {
                    id: r.id,
                    attempt: r.attempt,
                    channel: r.channel,
                    reason: r.reason,
                    notification_id: parse_id(&r.notification_id)?,
                    recipient: UserId(r.recipient),
                    event_id,
                    kind,
                    payload,
                    created_at: r.created_at,
                    redriven_at: r.redriven_at,
                    lease_until: r.lease_until,
                    traceparent,
                    digest_key: r.digest_key,
                    seen_check: r.seen_check,
                })
            })
            .collect()
    }

    /// Records how claimed attempts ended, with their trace. One answer per
    /// item, in order: `false` when that claim was lost (the lease ran out
    /// and the delivery moved on), and nothing of it was written.
    /// Concurrent calls share one transaction and one commit.
    #[tracing::instrument(level = "debug", skip_all, fields(deliveries = items.len()))]
    pub async fn finish_deliveries(&self, items: Vec<Finished>) -> Result<Vec<bool>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.deliveries
            .send(writer::Request::Finish { items, reply })
            .await
            .map_err(|_| Error::WriterStopped)?;
        answer.await.map_err(|_| Error::WriterStopped)?
    }

    /// Applies a provider's report about message `message_id` once:
    /// the first time `(provider, event_id)` is seen it moves the delivery
    /// that message belongs to (from `sent`, or from `delivered` to a late
    /// bounce or failure); a repeat changes nothing.
    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(provider = event.provider, status = event.status.as_str())
    )]
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

    /// Why a cancel asked for delivery `id` to stop while it was in flight,
    /// if one did: the worker looks just before it sends.
    pub async fn cancel_requested(&self, id: DeliveryId) -> Result<Option<String>> {
        let row = sqlx::query("SELECT cancel_requested FROM deliveries WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.read)
            .await?;
        Ok(row
            .map(|r| r.try_get::<Option<String>, _>("cancel_requested"))
            .transpose()?
            .flatten())
    }

    /// Hands deliveries whose worker died (still `sending` past their lease)
    /// back for another attempt. Returns how many.
    #[tracing::instrument(level = "debug", skip_all)]
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
        rows.iter().map(|r| parse_named(r, "id")).collect()
    }

    /// Those of `ids` that are owed an attempt but not yet, with when they
    /// fall due (a job that fired early asks this, to come back on time).
    pub async fn due_later(&self, ids: &[DeliveryId], now: i64) -> Result<Vec<(DeliveryId, i64)>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT id, next_attempt_at FROM deliveries \
                 WHERE id IN ({}) AND status IN ({CLAIMABLE}) AND next_attempt_at > $1",
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now);
            for id in chunk {
                query = query.bind(id.to_string());
            }
            for row in query.fetch_all(&self.read).await? {
                out.push((parse_named(&row, "id")?, row.try_get("next_attempt_at")?));
            }
        }
        Ok(out)
    }

    /// Notes that queue jobs were made for `ids` and fall due at `at`.
    #[tracing::instrument(level = "debug", skip_all, fields(deliveries = ids.len()))]
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
            "SELECT status, COUNT(*) AS n FROM deliveries \
             WHERE status IN ('pending', 'deferred', 'retrying', 'sending') GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
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

#[cfg(test)]
mod tests;
