//! Ingest: the one transaction that makes an event durable.
//!
//! A batch is all or nothing. Within it, each event is inserted with
//! `ON CONFLICT DO NOTHING`; an event id seen before is a duplicate (same
//! payload hash: nothing more is written) or a conflict (different hash: the
//! whole batch rolls back). Concurrent publishes of one id serialise on the
//! primary key, so exactly one of them writes inbox entries.
//!
//! Inbox sequence numbers are taken per recipient after all events are in,
//! one counter update per recipient in user-id order: two batches touching
//! the same users lock their counters in the same order and cannot deadlock.

use std::collections::BTreeMap;

use herald_core::{EventId, EventKind, UserId};
use sqlx::{Any, Row, Transaction};

use crate::records::{DeliveryStatus, EventRecord, Ingested, NewEvent, NewNotification};
use crate::{Error, Result, Store};

impl Store {
    /// Writes a batch of events with their inbox entries and deliveries, in
    /// one transaction. Returns one outcome per event, in batch order.
    pub async fn ingest(&self, batch: &[NewEvent]) -> Result<Vec<Ingested>> {
        let mut tx = self.write.begin().await?;
        // Insert in id order, so concurrent batches sharing ids wait on each
        // other instead of deadlocking.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        order.sort_by_key(|&i| batch[i].id);
        let mut outcomes: Vec<Option<Ingested>> = vec![None; batch.len()];
        let mut fresh = Vec::new();
        for i in order {
            let ev = &batch[i];
            let inserted = sqlx::query(
                "INSERT INTO events (id, idempotency_key, kind, payload, payload_hash, received_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
            )
            .bind(ev.id.to_string())
            .bind(ev.key.clone())
            .bind(ev.kind.as_str())
            .bind(ev.payload.clone())
            .bind(ev.hash.clone())
            .bind(ev.received_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let outcome = if inserted == 1 {
                fresh.push(i);
                Ingested::Accepted(EventRecord {
                    id: ev.id,
                    event: ev.kind,
                    received_at: ev.received_at,
                })
            } else {
                let (record, hash) = existing(&mut tx, ev.id).await?;
                if hash != ev.hash {
                    return Err(Error::IdempotencyConflict {
                        index: i,
                        event_id: ev.id.to_string(),
                    });
                }
                Ingested::Duplicate(record)
            };
            outcomes[i] = Some(outcome);
        }

        // Sequence numbers: one counter bump per recipient, in user order;
        // within a recipient, in batch order.
        fresh.sort_unstable();
        let mut per_user: BTreeMap<&UserId, Vec<(&NewEvent, &NewNotification)>> = BTreeMap::new();
        for &i in &fresh {
            for n in &batch[i].notifications {
                per_user
                    .entry(&n.recipient)
                    .or_default()
                    .push((&batch[i], n));
            }
        }
        for (user, entries) in per_user {
            let count = entries.len() as i64;
            let last: i64 = sqlx::query(
                "INSERT INTO inbox_counters (user_id, last_seq) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO UPDATE SET last_seq = inbox_counters.last_seq + $2 \
                 RETURNING last_seq",
            )
            .bind(user.as_str())
            .bind(count)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
            for (k, (ev, n)) in entries.into_iter().enumerate() {
                insert_notification(&mut tx, ev, n, last - count + 1 + k as i64).await?;
            }
        }
        tx.commit().await?;
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every event has an outcome"))
            .collect())
    }
}

async fn existing(tx: &mut Transaction<'_, Any>, id: EventId) -> Result<(EventRecord, String)> {
    let row = sqlx::query("SELECT kind, payload_hash, received_at FROM events WHERE id = $1")
        .bind(id.to_string())
        .fetch_one(&mut **tx)
        .await?;
    Ok((
        EventRecord {
            id,
            event: kind(&row.try_get::<String, _>(0)?)?,
            received_at: row.try_get(2)?,
        },
        row.try_get(1)?,
    ))
}

async fn insert_notification(
    tx: &mut Transaction<'_, Any>,
    ev: &NewEvent,
    n: &NewNotification,
    seq: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO notifications \
         (id, recipient_id, seq, event_id, kind, category, title, body, in_inbox, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(n.id.to_string())
    .bind(n.recipient.as_str())
    .bind(seq)
    .bind(ev.id.to_string())
    .bind(ev.kind.as_str())
    .bind(ev.kind.category())
    .bind(n.title.clone())
    .bind(n.body.clone())
    .bind(i64::from(n.in_inbox))
    .bind(ev.received_at)
    .execute(&mut **tx)
    .await?;
    for d in &n.deliveries {
        sqlx::query(
            "INSERT INTO deliveries \
             (id, notification_id, recipient_id, channel, status, reason, next_attempt_at, \
              enqueued_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(d.id.to_string())
        .bind(n.id.to_string())
        .bind(n.recipient.as_str())
        .bind(d.channel.as_str())
        .bind(d.status.as_str())
        .bind(d.reason.clone())
        .bind(d.next_attempt_at)
        // The publisher enqueues a job for each open delivery once this
        // commits, due now or when the deferral ends.
        .bind(match d.status {
            DeliveryStatus::Pending => Some(ev.received_at),
            DeliveryStatus::Deferred => d.next_attempt_at,
            DeliveryStatus::Suppressed => None,
        })
        .bind(ev.received_at)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

pub(crate) fn kind(name: &str) -> Result<EventKind> {
    EventKind::parse(name).ok_or_else(|| Error::Corrupt(format!("unknown event kind `{name}`")))
}

#[cfg(test)]
mod tests;
