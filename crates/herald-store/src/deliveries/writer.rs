//! Group commit for delivery claims and outcomes.
//!
//! Every attempt starts with a claim and ends with a finish; at a few
//! thousand deliveries a second, a transaction (and a disk flush) for each
//! would set the pace, as it did for ingest. So claims and finishes queue
//! for writer lanes, like ingest's ([`crate::events::writer`]): a lane takes
//! what waits and writes
//!
//! - every waiting finish as one `UPDATE … FROM (VALUES …)` (the
//!   compare-and-set on `status = 'sending'` and the attempt, per row; a
//!   delivery named twice goes in a statement after it) plus one multi-row
//!   insert of their trace, in one transaction;
//! - then every waiting claim as one `UPDATE … WHERE id IN (…) RETURNING`,
//!   in another.
//!
//! Finishes and claims never share a transaction: a finish touches only
//! rows its worker holds, so a finish group cannot wait on another node's
//! claim, and a failed claim group cannot take recorded outcomes down with
//! it. When a merged group fails, its requests are written again one by
//! one, so each caller gets the answer it would have got alone.
//!
//! Statements come in power-of-two shapes (padded by repeating the last
//! row, which changes nothing) so PostgreSQL keeps them prepared.

use std::collections::HashMap;

use herald_core::DeliveryId;
use sqlx::{AnyPool, AssertSqlSafe, Row};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{CLAIMABLE, Finished, TraceStep, Transition};
use crate::events::backend_of;
use crate::{Result, parse_named, placeholders};

/// Requests that may wait for a lane before callers wait to queue.
const QUEUE_CAPACITY: usize = 4_096;
/// Most ids one claim statement names.
const CLAIM_ROWS: usize = 256;
/// Most rows one finish statement (and one trace insert) writes.
const FINISH_ROWS: usize = 128;
/// Most items a lane merges into one group.
const MAX_GROUP: usize = 2_048;

/// A claimed row, before its event is read.
#[derive(Debug, Clone)]
pub(crate) struct ClaimedRow {
    pub(crate) id: DeliveryId,
    pub(crate) attempt: i64,
    pub(crate) channel: String,
    pub(crate) reason: String,
    pub(crate) notification_id: String,
    pub(crate) recipient: String,
    pub(crate) created_at: i64,
    pub(crate) redriven_at: Option<i64>,
    pub(crate) lease_until: i64,
    pub(crate) digest_key: Option<String>,
    pub(crate) seen_check: Option<String>,
}

#[derive(Debug)]
pub(crate) enum Request {
    Claim {
        ids: Vec<DeliveryId>,
        now: i64,
        lease_ms: i64,
        reply: oneshot::Sender<Result<Vec<ClaimedRow>>>,
    },
    Finish {
        items: Vec<Finished>,
        reply: oneshot::Sender<Result<Vec<bool>>>,
    },
}

impl Request {
    fn size(&self) -> usize {
        match self {
            Request::Claim { ids, .. } => ids.len(),
            Request::Finish { items, .. } => items.len(),
        }
    }
}

/// Starts `lanes` writers on `pool`; they end when every sender is dropped.
pub(crate) fn spawn(pool: &AnyPool, lanes: usize) -> mpsc::Sender<Request> {
    let (tx, rx) = mpsc::channel::<Request>(QUEUE_CAPACITY);
    let rx = std::sync::Arc::new(Mutex::new(rx));
    for _ in 0..lanes.max(1) {
        let (pool, rx) = (pool.clone(), std::sync::Arc::clone(&rx));
        tokio::spawn(async move {
            loop {
                let group = {
                    let mut rx = rx.lock().await;
                    let Some(first) = rx.recv().await else { return };
                    let mut size = first.size();
                    let mut group = vec![first];
                    while size < MAX_GROUP {
                        let Ok(next) = rx.try_recv() else { break };
                        size += next.size();
                        group.push(next);
                    }
                    group
                };
                let pool = pool.clone();
                // A group is written in a task of its own, so a bug that
                // panics fails that group's callers, not the lane.
                if let Err(error) = tokio::spawn(write_group(pool, group)).await {
                    tracing::error!(%error, "a delivery write group failed");
                }
            }
        });
    }
    tx
}

async fn write_group(pool: AnyPool, group: Vec<Request>) {
    let mut finishes = Vec::new();
    let mut claims = Vec::new();
    for request in group {
        match request {
            Request::Finish { items, reply } => finishes.push((items, reply)),
            Request::Claim {
                ids,
                now,
                lease_ms,
                reply,
            } => claims.push((ids, now, lease_ms, reply)),
        }
    }
    if !finishes.is_empty() {
        finish_group(&pool, finishes).await;
    }
    if !claims.is_empty() {
        claim_group(&pool, claims).await;
    }
}

type FinishRequest = (Vec<Finished>, oneshot::Sender<Result<Vec<bool>>>);

async fn finish_group(pool: &AnyPool, group: Vec<FinishRequest>) {
    let merged: Vec<&Finished> = group.iter().flat_map(|(items, _)| items).collect();
    match finish(pool, &merged).await {
        Ok(done) => {
            let mut done = done.into_iter();
            for (items, reply) in group {
                let _ = reply.send(Ok(done.by_ref().take(items.len()).collect()));
            }
        }
        Err(error) if group.len() > 1 => {
            tracing::debug!(%error, "a merged finish failed; writing its requests one by one");
            for (items, reply) in group {
                let items: Vec<&Finished> = items.iter().collect();
                let _ = reply.send(finish(pool, &items).await);
            }
        }
        Err(error) => {
            let (_, reply) = group.into_iter().next().expect("one request");
            let _ = reply.send(Err(error));
        }
    }
}

/// Writes finishes and their trace in one transaction; whether each applied.
#[tracing::instrument(level = "debug", skip_all, fields(deliveries = items.len()))]
async fn finish(pool: &AnyPool, items: &[&Finished]) -> Result<Vec<bool>> {
    let mut tx = pool.begin().await?;
    let backend = backend_of(&tx);
    let mut applied = vec![false; items.len()];
    // Items a cancel ended instead (see below), with its reason.
    let mut overridden: HashMap<usize, String> = HashMap::new();
    // A statement returns the ids it moved, which says which of its items
    // applied only if it names each delivery once. Items naming the same
    // delivery (a finish whose lease ran out beside the attempt that
    // claimed it next, or one finish sent twice) go in statements of their
    // own, in order: the compare-and-set lets at most one of them apply.
    for chunk in rounds(items)
        .iter()
        .flat_map(|round| round.chunks(FINISH_ROWS))
    {
        let shape = chunk.len().next_power_of_two();
        // A cancel that came while the delivery was in flight
        // (`cancel_requested`) turns a finish that would leave it open (a
        // retry, a deferral, a hand-back) into `cancelled`: it is never
        // resurrected. A finish that sent stays `sent`.
        let sql = format!(
            "UPDATE deliveries AS d SET \
                    status = CASE WHEN d.cancel_requested IS NOT NULL AND v.column3 IN ({CLAIMABLE}) \
                                  THEN 'cancelled' ELSE v.column3 END, \
                    reason = CASE WHEN d.cancel_requested IS NOT NULL AND v.column3 IN ({CLAIMABLE}) \
                                  THEN d.cancel_requested ELSE COALESCE(v.column4, d.reason) END, \
                    last_error = COALESCE(v.column5, d.last_error), \
                    next_attempt_at = v.column6, \
                    provider_message_id = COALESCE(v.column7, d.provider_message_id), \
                    enqueued_at = COALESCE(v.column8, d.enqueued_at), \
                    attempts = d.attempts - v.column9, \
                    provider = COALESCE(v.column10, d.provider), \
                    updated_at = v.column11, lease_until = NULL, \
                    digest_key = COALESCE(v.column12, d.digest_key), \
                    digest_at = COALESCE(v.column13, d.digest_at), \
                    sent_at = COALESCE(v.column14, d.sent_at) \
             FROM (VALUES {}) AS v \
             WHERE d.id = v.column1 AND d.status = 'sending' AND d.attempts = v.column2 \
             RETURNING id, status, reason",
            crate::events::values(backend, shape, 14)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        let last = chunk[chunk.len() - 1];
        for &i in chunk
            .iter()
            .chain(std::iter::repeat_n(&last, shape - chunk.len()))
        {
            let item = items[i];
            let t = Transition::of(&item.finish, item.attempt);
            query = query
                .bind(item.id.to_string())
                .bind(item.attempt)
                .bind(t.status)
                .bind(t.reason)
                .bind(t.error)
                .bind(t.next_attempt_at)
                .bind(t.provider_message_id)
                .bind(t.enqueued_at)
                .bind(t.refund)
                .bind(t.provider)
                .bind(item.at)
                .bind(t.digest_key)
                .bind(t.digest_at)
                .bind(t.sent.then_some(item.at));
        }
        let of_id: HashMap<String, usize> = chunk
            .iter()
            .map(|&i| (items[i].id.to_string(), i))
            .collect();
        for row in query.fetch_all(&mut *tx).await? {
            if let Some(&i) = of_id.get(&row.try_get::<String, _>("id")?) {
                applied[i] = true;
                let status: String = row.try_get("status")?;
                if status == "cancelled"
                    && Transition::of(&items[i].finish, 0).status != "cancelled"
                {
                    overridden.insert(i, row.try_get::<String, _>("reason")?);
                }
            }
        }
    }
    // The trace of what was applied: a late finish (its lease lost) did
    // not happen as far as the delivery is concerned.
    // A finish a cancel overrode gets one more line saying so.
    let cancels: HashMap<usize, TraceStep> = overridden
        .into_iter()
        .map(|(i, reason)| {
            let step = TraceStep {
                step: "cancel".to_owned(),
                provider: None,
                outcome: Some("cancelled".to_owned()),
                detail: Some(format!("{reason}: cancelled while in flight")),
            };
            (i, step)
        })
        .collect();
    let rows: Vec<(&Finished, usize, &TraceStep)> = items
        .iter()
        .enumerate()
        .filter(|(i, _)| applied[*i])
        .flat_map(|(i, item)| {
            item.trace
                .iter()
                .chain(cancels.get(&i))
                .enumerate()
                .map(move |(n, step)| (*item, n, step))
        })
        .collect();
    for chunk in rows.chunks(FINISH_ROWS) {
        let sql = format!(
            "INSERT INTO delivery_trace \
             (delivery_id, at, attempt, n, step, provider, outcome, detail) VALUES {}",
            crate::events::values(backend, chunk.len(), 8)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for &(item, n, step) in chunk {
            query = query
                .bind(item.id.to_string())
                .bind(item.at)
                .bind(item.attempt)
                .bind(n as i64)
                .bind(step.step.as_str())
                .bind(step.provider.as_deref())
                .bind(step.outcome.as_deref())
                .bind(step.detail.as_deref());
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(applied)
}

/// The indexes of `items` in rounds that each name a delivery at most once:
/// an item goes in the round after the one holding its delivery's previous
/// item. Almost always a single round.
fn rounds(items: &[&Finished]) -> Vec<Vec<usize>> {
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<DeliveryId, usize> = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let round = seen.entry(item.id).or_default();
        if *round == rounds.len() {
            rounds.push(Vec::new());
        }
        rounds[*round].push(i);
        *round += 1;
    }
    rounds
}

type ClaimRequest = (
    Vec<DeliveryId>,
    i64,
    i64,
    oneshot::Sender<Result<Vec<ClaimedRow>>>,
);

async fn claim_group(pool: &AnyPool, group: Vec<ClaimRequest>) {
    // The earliest clock decides what is due, so nothing is claimed early,
    // and the shortest lease binds every claim of the group.
    let now = group.iter().map(|r| r.1).min().unwrap_or_default();
    let lease_until = group.iter().map(|r| r.1 + r.2).min().unwrap_or_default();
    let mut ids: Vec<&DeliveryId> = group.iter().flat_map(|r| &r.0).collect();
    ids.sort_unstable_by_key(|id| id.to_string());
    ids.dedup();
    match claim(pool, &ids, now, lease_until).await {
        Ok(rows) => {
            // Each claimed row goes to the first request that asked for it.
            let mut rows: HashMap<DeliveryId, ClaimedRow> =
                rows.into_iter().map(|r| (r.id, r)).collect();
            for (ids, _, _, reply) in group {
                let mine = ids.iter().filter_map(|id| rows.remove(id)).collect();
                let _ = reply.send(Ok(mine));
            }
        }
        Err(error) if group.len() > 1 => {
            tracing::debug!(%error, "a merged claim failed; claiming its requests one by one");
            for (ids, now, lease_ms, reply) in group {
                let ids: Vec<&DeliveryId> = ids.iter().collect();
                let _ = reply.send(claim(pool, &ids, now, now + lease_ms).await);
            }
        }
        Err(error) => {
            let (_, _, _, reply) = group.into_iter().next().expect("one request");
            let _ = reply.send(Err(error));
        }
    }
}

/// Claims the due and free ones of `ids` (sorted, so concurrent claims
/// lock rows in one order) in one transaction.
#[tracing::instrument(level = "debug", skip_all, fields(deliveries = ids.len()))]
async fn claim(
    pool: &AnyPool,
    ids: &[&DeliveryId],
    now: i64,
    lease_until: i64,
) -> Result<Vec<ClaimedRow>> {
    let mut tx = pool.begin().await?;
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CLAIM_ROWS) {
        let shape = chunk.len().next_power_of_two();
        // Numbered on both databases: sqlx binds SQLite's anonymous `?` by
        // its own count, which numbered ones beside them would upset.
        let list = placeholders(3, shape);
        let (lease, at) = ("$1", "$2");
        let sql = format!(
            "UPDATE deliveries SET status = 'sending', attempts = attempts + 1, \
                    lease_until = {lease}, updated_at = {at} \
             WHERE id IN ({list}) AND status IN ({CLAIMABLE}) AND COALESCE(next_attempt_at, 0) <= {at} \
             RETURNING id, attempts, channel, reason, notification_id, recipient_id, created_at, \
                       redriven_at, lease_until, digest_key, seen_check"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(lease_until).bind(now);
        let last = chunk[chunk.len() - 1];
        for id in chunk
            .iter()
            .chain(std::iter::repeat_n(&last, shape - chunk.len()))
        {
            query = query.bind(id.to_string());
        }
        for row in query.fetch_all(&mut *tx).await? {
            out.push(ClaimedRow {
                id: parse_named(&row, "id")?,
                attempt: row.try_get("attempts")?,
                channel: row.try_get("channel")?,
                reason: row.try_get("reason")?,
                notification_id: row.try_get("notification_id")?,
                recipient: row.try_get("recipient_id")?,
                created_at: row.try_get("created_at")?,
                redriven_at: row.try_get("redriven_at")?,
                lease_until: row.try_get("lease_until")?,
                digest_key: row.try_get("digest_key")?,
                seen_check: row.try_get("seen_check")?,
            });
        }
    }
    tx.commit().await?;
    Ok(out)
}
