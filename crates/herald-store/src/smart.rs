//! Smart delivery's reads and writes: folding a digest, counting what a
//! throttle caps, and whether an event was seen.
//!
//! ## Digests, exactly once
//!
//! Deliveries headed for one digest share a key (recipient, channel,
//! `digest_key`) and a time (`digest_at`, the window's end); each is an
//! ordinary row with its own queue job. When one of them is claimed, its
//! worker calls [`Store::fold_digest`], which in one transaction
//!
//! 1. picks the digest's carrier among the key's open rows that are due: a
//!    row that already carries it (a retry) first, else the earliest
//!    (`digest_at`, id). Every worker picks the same row, so if the claimed
//!    row is not the carrier its worker hands it back and the carrier folds it;
//! 2. moves every other row of the key to `digested` with `digest_id` =
//!    the carrier (a row another worker holds too: that worker's finish is a
//!    compare-and-set on `sending` and changes nothing), with a trace step;
//! 3. marks the carrier (`digest_id` = its own id) and reads back every
//!    item it carries, this attempt's and earlier ones'.
//!
//! The carrier is then sent by the ordinary path (retries, provider chain,
//! trace). A worker that dies after the fold leaves the carrier `sending`;
//! its lease hands it back and the next attempt finds the same items, so the
//! digest goes out once with all of them. A digest of one is just the
//! message itself.

use herald_core::{DeliveryId, EventKind, NotificationId, UserId};
use sqlx::{AssertSqlSafe, Row};

use crate::{Result, Store, parse_id, parse_named, placeholders};

/// Open states a digest folds from (`sending`: claimed, by its carrier's
/// worker or another).
const FOLDABLE: &str = "'pending', 'deferred', 'retrying', 'sending'";

/// One event a digest carries.
#[derive(Debug, Clone, PartialEq)]
pub struct DigestItem {
    pub delivery: DeliveryId,
    pub kind: EventKind,
    /// The inbox entry's text, already in the recipient's locale.
    pub title: String,
    pub body: String,
    pub payload: serde_json::Value,
    pub created_at: i64,
}

/// What [`Store::fold_digest`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Fold {
    /// The claimed delivery carries the digest. `items` are every event it
    /// carries, its own included, oldest first; empty when there was
    /// nothing to fold (it goes out as itself). `folded` are the
    /// deliveries this call moved to `digested`.
    Carrier {
        items: Vec<DigestItem>,
        folded: Vec<DeliveryId>,
    },
    /// Another delivery carries the digest; hand this one back.
    Follower { carrier: DeliveryId },
    /// The claim was lost (its lease ran out): nothing was done.
    Lost,
}

impl Store {
    /// Folds the digest that claimed delivery `id` (at `attempt`) belongs
    /// to, as of `now`; see the module docs.
    #[tracing::instrument(level = "debug", skip_all, fields(delivery = %id))]
    pub async fn fold_digest(&self, id: DeliveryId, attempt: i64, now: i64) -> Result<Fold> {
        let me = id.to_string();
        let mut tx = self.write.begin().await?;
        let Some(row) = sqlx::query(
            "SELECT recipient_id, channel, digest_key FROM deliveries \
             WHERE id = $1 AND status = 'sending' AND attempts = $2",
        )
        .bind(&me)
        .bind(attempt)
        .fetch_optional(&mut *tx)
        .await?
        else {
            tx.rollback().await?;
            return Ok(Fold::Lost);
        };
        let recipient: String = row.try_get("recipient_id")?;
        let channel: String = row.try_get("channel")?;
        let Some(key) = row.try_get::<Option<String>, _>("digest_key")? else {
            tx.rollback().await?;
            return Ok(Fold::Carrier {
                items: Vec::new(),
                folded: Vec::new(),
            });
        };
        let sql = format!(
            "SELECT id, digest_id, COALESCE(digest_at, 0) AS digest_at FROM deliveries \
             WHERE recipient_id = $1 AND channel = $2 AND digest_key = $3 \
               AND status IN ({FOLDABLE}) AND (COALESCE(digest_at, 0) <= $4 OR id = $5)"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(&recipient)
            .bind(&channel)
            .bind(&key)
            .bind(now)
            .bind(&me)
            .fetch_all(&mut *tx)
            .await?;
        let mut candidates: Vec<(bool, i64, String)> = rows
            .iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                let carrier = r.try_get::<Option<String>, _>("digest_id")?.as_deref() == Some(&id);
                Ok((!carrier, r.try_get::<i64, _>("digest_at")?, id))
            })
            .collect::<Result<_>>()?;
        candidates.sort();
        if let Some((_, _, first)) = candidates.first()
            && *first != me
        {
            tx.rollback().await?;
            return Ok(Fold::Follower {
                carrier: parse_id(first)?,
            });
        }
        let others: Vec<&str> = candidates
            .iter()
            .map(|(_, _, id)| id.as_str())
            .filter(|id| *id != me)
            .collect();
        let mut folded = Vec::new();
        for chunk in others.chunks(500) {
            let sql = format!(
                "UPDATE deliveries SET status = 'digested', reason = 'digest', digest_id = $1, \
                        next_attempt_at = NULL, lease_until = NULL, updated_at = $2 \
                 WHERE id IN ({}) AND status IN ({FOLDABLE}) RETURNING id",
                placeholders(3, chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql)).bind(&me).bind(now);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut *tx).await? {
                folded.push(row.try_get::<String, _>("id")?);
            }
        }
        let detail = format!("folded into digest delivery {me}");
        for id in &folded {
            sqlx::query(
                "INSERT INTO delivery_trace (delivery_id, at, attempt, n, step, outcome, detail) \
                 VALUES ($1, $2, 0, 0, 'digest', 'digested', $3)",
            )
            .bind(id)
            .bind(now)
            .bind(&detail)
            .execute(&mut *tx)
            .await?;
        }
        if !folded.is_empty() {
            sqlx::query("UPDATE deliveries SET digest_id = id WHERE id = $1")
                .bind(&me)
                .execute(&mut *tx)
                .await?;
        }
        let rows = sqlx::query(
            "SELECT d.id, n.kind, n.title, n.body, n.created_at, e.payload \
             FROM deliveries d JOIN notifications n ON n.id = d.notification_id \
             JOIN events e ON e.id = n.event_id \
             WHERE d.digest_id = $1 ORDER BY n.created_at, n.seq",
        )
        .bind(&me)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let items = rows
            .iter()
            .map(|r| {
                let payload: String = r.try_get("payload")?;
                Ok(DigestItem {
                    delivery: parse_named(r, "id")?,
                    kind: crate::events::kind(&r.try_get::<String, _>("kind")?)?,
                    title: r.try_get("title")?,
                    body: r.try_get("body")?,
                    payload: serde_json::from_str(&payload)
                        .map_err(|e| crate::Error::Corrupt(format!("event payload: {e}")))?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Fold::Carrier {
            items,
            folded: folded
                .iter()
                .map(|id| parse_id(id))
                .collect::<Result<_>>()?,
        })
    }

    /// What a throttle counts for claimed delivery `id`: messages of
    /// `category` sent to `recipient` on `channel` since `since`, plus those
    /// claimed before this one and not yet finished (so a burst claimed at
    /// once is capped too: each counts only those ahead of it). A send at
    /// exactly `since` has left the window. Returns the
    /// count and the oldest send counted, if any.
    pub async fn throttle_count(
        &self,
        id: DeliveryId,
        recipient: &UserId,
        category: &str,
        channel: &str,
        since: i64,
    ) -> Result<(i64, Option<i64>)> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(d.sent_at) AS oldest \
             FROM deliveries d JOIN notifications n ON n.id = d.notification_id \
             WHERE d.recipient_id = $1 AND d.channel = $2 AND n.category = $3 AND d.id <> $4 \
               AND (d.sent_at > $5 OR (d.status = 'sending' AND (d.updated_at < $6 \
                    OR (d.updated_at = $6 AND d.id < $4))))",
        )
        .bind(recipient.as_str())
        .bind(channel)
        .bind(category)
        .bind(id.to_string())
        .bind(since)
        .bind(self.claimed_at(id).await?)
        .fetch_one(&self.read)
        .await?;
        Ok((row.try_get("n")?, row.try_get("oldest")?))
    }

    /// When delivery `id` was last claimed (its `updated_at` while `sending`).
    async fn claimed_at(&self, id: DeliveryId) -> Result<i64> {
        let at: Option<i64> = sqlx::query_scalar("SELECT updated_at FROM deliveries WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.read)
            .await?;
        Ok(at.unwrap_or(i64::MAX))
    }

    /// Whether notification `id` was read or acknowledged on a socket by
    /// its recipient, or (`anyone`) by anyone the same event reached.
    pub async fn event_seen(&self, id: NotificationId, anyone: bool) -> Result<bool> {
        let sql = if anyone {
            "SELECT COUNT(*) FROM notifications \
             WHERE event_id = (SELECT event_id FROM notifications WHERE id = $1) \
               AND (read_at IS NOT NULL OR seen_at IS NOT NULL)"
        } else {
            "SELECT COUNT(*) FROM notifications \
             WHERE id = $1 AND (read_at IS NOT NULL OR seen_at IS NOT NULL)"
        };
        let n: i64 = sqlx::query_scalar(sql)
            .bind(id.to_string())
            .fetch_one(&self.read)
            .await?;
        Ok(n > 0)
    }

    /// Records that `user` acknowledged event `event` on a socket without
    /// opening it (the first time counts). `None` if `user` has no inbox
    /// entry for that event; else the entry's id.
    pub async fn mark_seen(
        &self,
        user: &UserId,
        event: &str,
        now: i64,
    ) -> Result<Option<NotificationId>> {
        sqlx::query(
            "UPDATE notifications SET seen_at = $1 \
             WHERE recipient_id = $2 AND event_id = $3 AND seen_at IS NULL",
        )
        .bind(now)
        .bind(user.as_str())
        .bind(event)
        .execute(&self.write)
        .await?;
        self.notification_of_event(user, event).await
    }

    /// `user`'s inbox entry for event `event`, if any (deleted ones too).
    pub async fn notification_of_event(
        &self,
        user: &UserId,
        event: &str,
    ) -> Result<Option<NotificationId>> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT id FROM notifications WHERE recipient_id = $1 AND event_id = $2",
        )
        .bind(user.as_str())
        .bind(event)
        .fetch_optional(&self.read)
        .await?;
        id.map(|id| parse_id(&id)).transpose()
    }
}

#[cfg(test)]
mod tests;
