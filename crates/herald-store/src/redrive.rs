//! Re-driving failed and expired deliveries: the admin's view of what was
//! given up, and the one way back into the queue.
//!
//! Listing pages newest first by `(updated_at, id)`, both descending; a
//! [`Cursor`] is the last row a page returned, and the next page holds the
//! rows strictly after it in that order. A delivery that changes while an
//! admin pages (a re-drive moves its `updated_at`) may leave a page or join
//! an earlier one; the others are neither skipped nor repeated.
//!
//! A re-drive is a compare-and-set per delivery: only a `failed` or
//! `expired` row moves, back to `pending` with its attempts reset and due
//! now, and each row moved gains a `redrive` step in its trace, all in one
//! transaction. Re-driving the same delivery twice therefore moves it once:
//! the second call finds it open (or already sent) and changes nothing, so
//! the message goes out once. The caller hands the moved ids to the queue
//! after the commit; a delivery whose job is lost is found by the sweeper,
//! since its `enqueued_at` is cleared.
//!
//! Filters match exactly except `error`, which is a case-insensitive
//! substring of `last_error` (the provider's words vary; the routing
//! `reason` is a fixed vocabulary and matches exactly).

use std::collections::HashMap;

use herald_core::{DeliveryId, EventId, NotificationId};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::{Result, Store, parse_named, placeholders};

/// Every state a delivery row can be in (contract §7, and `sending`, the
/// state of a claimed row).
pub const DELIVERY_STATES: &[&str] = &[
    "pending",
    "claimed",
    "sending",
    "sent",
    "delivered",
    "bounced",
    "retrying",
    "deferred",
    "digested",
    "skipped",
    "throttled",
    "cancelled",
    "expired",
    "suppressed",
    "failed",
];

/// The states a re-drive moves a delivery out of.
pub const RETRYABLE_STATES: &[&str] = &["failed", "expired"];

/// States in which a delivery is still owed an attempt: re-driving it has
/// nothing to do.
pub const OPEN_STATES: &[&str] = &[
    "pending",
    "claimed",
    "sending",
    "retrying",
    "deferred",
    "throttled",
];

/// Most ids bound in one statement.
const CHUNK: usize = 500;

/// Which deliveries to list, count or re-drive. `None` (or an empty list)
/// matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    /// Any of these states.
    pub statuses: Vec<String>,
    pub channel: Option<String>,
    /// The provider that handled the last attempt (`deliveries.provider`).
    pub provider: Option<String>,
    /// The routing reason, exactly (`routing_default`, `mandatory`, …).
    pub reason: Option<String>,
    /// A case-insensitive substring of the last error.
    pub error: Option<String>,
    /// The recipient's user id.
    pub recipient: Option<String>,
    /// The event's kind (`points_added`, …).
    pub event: Option<String>,
    /// The event's id.
    pub event_id: Option<String>,
    /// Last changed at or after (epoch ms).
    pub from: Option<i64>,
    /// Last changed at or before (epoch ms).
    pub to: Option<i64>,
}

/// Where a page ended: the last row's `updated_at` and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub updated_at: i64,
    pub id: String,
}

/// A delivery as an admin sees it in the re-drive list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminDelivery {
    pub id: DeliveryId,
    pub notification_id: NotificationId,
    pub event_id: EventId,
    /// The event's kind.
    pub event: String,
    pub recipient: String,
    pub channel: String,
    pub provider: Option<String>,
    pub status: String,
    pub reason: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<i64>,
    /// When an admin last re-drove it.
    pub redriven_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A delivery a re-drive left alone because it cannot be retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NotRetryable {
    pub id: DeliveryId,
    pub status: String,
}

/// What [`Store::redrive`] did with each id it was given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RedriveReport {
    /// Moved back to `pending`: the caller enqueues these.
    pub requeued: Vec<DeliveryId>,
    /// Still owed an attempt (pending, retrying, being sent …): nothing to do.
    pub already_queued: Vec<DeliveryId>,
    /// Sent, delivered, suppressed … with the state they are in.
    pub not_retryable: Vec<NotRetryable>,
    /// No such delivery.
    pub unknown: Vec<DeliveryId>,
}

const SELECT: &str = "SELECT d.id, d.notification_id, n.event_id, n.kind, d.recipient_id, \
                             d.channel, d.provider, d.status, d.reason, d.attempts, d.last_error, \
                             d.next_attempt_at, d.redriven_at, d.created_at, d.updated_at \
                      FROM deliveries d JOIN notifications n ON n.id = d.notification_id";

/// A `WHERE` clause and the values its placeholders stand for, in order:
/// the `n`th value is `$n`.
#[derive(Debug, Default)]
struct Conditions {
    sql: Vec<String>,
    values: Vec<Value>,
}

#[derive(Debug)]
enum Value {
    Text(String),
    Int(i64),
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

impl Conditions {
    /// Takes the next placeholder for `value`.
    fn arg(&mut self, value: Value) -> String {
        self.values.push(value);
        format!("${}", self.values.len())
    }

    fn of(filter: &DeliveryFilter) -> Self {
        let mut c = Conditions::default();
        if !filter.statuses.is_empty() {
            let list: Vec<String> = filter
                .statuses
                .iter()
                .map(|s| c.arg(Value::Text(s.clone())))
                .collect();
            c.sql.push(format!("d.status IN ({})", list.join(", ")));
        }
        let exact = [
            ("d.channel", &filter.channel),
            ("d.provider", &filter.provider),
            ("d.reason", &filter.reason),
            ("d.recipient_id", &filter.recipient),
            ("n.kind", &filter.event),
            ("n.event_id", &filter.event_id),
        ];
        for (column, value) in exact {
            if let Some(v) = value {
                let p = c.arg(Value::Text(v.clone()));
                c.sql.push(format!("{column} = {p}"));
            }
        }
        if let Some(error) = &filter.error {
            let p = c.arg(Value::Text(format!("%{}%", escape_like(error))));
            c.sql
                .push(format!("LOWER(d.last_error) LIKE LOWER({p}) ESCAPE '\\'"));
        }
        if let Some(from) = filter.from {
            let p = c.arg(Value::Int(from));
            c.sql.push(format!("d.updated_at >= {p}"));
        }
        if let Some(to) = filter.to {
            let p = c.arg(Value::Int(to));
            c.sql.push(format!("d.updated_at <= {p}"));
        }
        c
    }

    fn where_clause(&self) -> String {
        if self.sql.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.sql.join(" AND "))
        }
    }

    /// Binds every value in placeholder order.
    fn bind<'q>(&self, mut query: AnyQuery<'q>) -> AnyQuery<'q> {
        for value in &self.values {
            query = match value {
                Value::Text(v) => query.bind(v.clone()),
                Value::Int(v) => query.bind(*v),
            };
        }
        query
    }
}

/// `%`, `_` and the escape character itself stand for themselves.
fn escape_like(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl Store {
    /// A page of the deliveries `filter` matches, newest first, after
    /// `cursor`; and the cursor of the next page, if there is one.
    #[tracing::instrument(skip_all, fields(limit = limit))]
    pub async fn list_deliveries(
        &self,
        filter: &DeliveryFilter,
        cursor: Option<&Cursor>,
        limit: u32,
    ) -> Result<(Vec<AdminDelivery>, Option<Cursor>)> {
        let mut c = Conditions::of(filter);
        if let Some(cursor) = cursor {
            let at = c.arg(Value::Int(cursor.updated_at));
            let id = c.arg(Value::Text(cursor.id.clone()));
            c.sql.push(format!(
                "(d.updated_at < {at} OR (d.updated_at = {at} AND d.id < {id}))"
            ));
        }
        // One more than asked: whether a next page exists.
        let lim = c.arg(Value::Int(i64::from(limit) + 1));
        let sql = format!(
            "{SELECT}{} ORDER BY d.updated_at DESC, d.id DESC LIMIT {lim}",
            c.where_clause()
        );
        let rows = c
            .bind(sqlx::query(AssertSqlSafe(sql)))
            .fetch_all(&self.read)
            .await?;
        let mut items = rows
            .iter()
            .map(admin_delivery)
            .collect::<Result<Vec<_>>>()?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|d| Cursor {
                updated_at: d.updated_at,
                id: d.id.to_string(),
            })
        } else {
            None
        };
        Ok((items, next))
    }

    /// How many deliveries `filter` matches.
    pub async fn count_deliveries(&self, filter: &DeliveryFilter) -> Result<u64> {
        let c = Conditions::of(filter);
        let sql = format!(
            "SELECT COUNT(*) AS n FROM deliveries d JOIN notifications n ON n.id = d.notification_id{}",
            c.where_clause()
        );
        let n: i64 = c
            .bind(sqlx::query(AssertSqlSafe(sql)))
            .fetch_one(&self.read)
            .await?
            .try_get("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The ids of at most `limit` deliveries `filter` matches, newest first.
    pub async fn matching_deliveries(
        &self,
        filter: &DeliveryFilter,
        limit: u32,
    ) -> Result<Vec<DeliveryId>> {
        let mut c = Conditions::of(filter);
        let lim = c.arg(Value::Int(i64::from(limit)));
        let sql = format!(
            "SELECT d.id FROM deliveries d JOIN notifications n ON n.id = d.notification_id{} \
             ORDER BY d.updated_at DESC, d.id DESC LIMIT {lim}",
            c.where_clause()
        );
        let rows = c
            .bind(sqlx::query(AssertSqlSafe(sql)))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| parse_named(r, "id")).collect()
    }

    /// One delivery as the re-drive list shows it.
    pub async fn admin_delivery(&self, id: DeliveryId) -> Result<Option<AdminDelivery>> {
        let row = sqlx::query(AssertSqlSafe(format!("{SELECT} WHERE d.id = $1")))
            .bind(id.to_string())
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(admin_delivery).transpose()
    }

    /// Moves each of `ids` that is failed or expired back to `pending`, due
    /// at `now` with its attempts reset, and records a `redrive` step by
    /// `actor` in its trace; says what became of every id. One transaction.
    #[tracing::instrument(skip_all, fields(deliveries = ids.len(), actor = %actor))]
    pub async fn redrive(
        &self,
        ids: &[DeliveryId],
        actor: &str,
        now: i64,
    ) -> Result<RedriveReport> {
        let mut unique: Vec<DeliveryId> = Vec::with_capacity(ids.len());
        for id in ids {
            if !unique.contains(id) {
                unique.push(*id);
            }
        }
        let mut tx = self.write.begin().await?;
        // Moved rows, with the state and error they had.
        let mut moved: HashMap<DeliveryId, (String, Option<String>)> = HashMap::new();
        for chunk in unique.chunks(CHUNK) {
            // One statement per state a row can leave, so each row moved is
            // known with the state it left; each is a compare-and-set.
            for from in RETRYABLE_STATES {
                let sql = format!(
                    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, \
                            enqueued_at = NULL, lease_until = NULL, redriven_at = $1, updated_at = $1 \
                     WHERE status = $2 AND id IN ({}) RETURNING id, last_error",
                    placeholders(3, chunk.len())
                );
                let mut query = sqlx::query(AssertSqlSafe(sql)).bind(now).bind(*from);
                for id in chunk {
                    query = query.bind(id.to_string());
                }
                for row in query.fetch_all(&mut *tx).await? {
                    let id: DeliveryId = parse_named(&row, "id")?;
                    moved.insert(id, ((*from).to_owned(), row.try_get("last_error")?));
                }
            }
        }
        let mut report = RedriveReport::default();
        let mut left: HashMap<DeliveryId, String> = HashMap::new();
        for chunk in unique.chunks(CHUNK) {
            let rest: Vec<&DeliveryId> =
                chunk.iter().filter(|id| !moved.contains_key(id)).collect();
            if rest.is_empty() {
                continue;
            }
            let sql = format!(
                "SELECT id, status FROM deliveries WHERE id IN ({})",
                placeholders(1, rest.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in &rest {
                query = query.bind(id.to_string());
            }
            for row in query.fetch_all(&mut *tx).await? {
                left.insert(parse_named(&row, "id")?, row.try_get("status")?);
            }
        }
        let mut trace = Vec::with_capacity(moved.len());
        for id in &unique {
            if let Some((was, error)) = moved.get(id) {
                report.requeued.push(*id);
                let detail = match error {
                    Some(e) => format!("was {was}: {e}"),
                    None => format!("was {was}"),
                };
                trace.push((*id, detail));
            } else {
                match left.remove(id) {
                    None => report.unknown.push(*id),
                    Some(status) if OPEN_STATES.contains(&status.as_str()) => {
                        report.already_queued.push(*id);
                    }
                    Some(status) => report.not_retryable.push(NotRetryable { id: *id, status }),
                }
            }
        }
        // Four values a row: well within both databases' parameter limits.
        for chunk in trace.chunks(CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let b = i * 4;
                    format!(
                        "(${}, ${}, 0, 0, 'redrive', NULL, 'pending', ${}, ${})",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO delivery_trace \
                 (delivery_id, at, attempt, n, step, provider, outcome, detail, actor) VALUES {}",
                values.join(", ")
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for (id, detail) in chunk {
                query = query
                    .bind(id.to_string())
                    .bind(now)
                    .bind(detail.clone())
                    .bind(actor);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        tracing::info!(
            requeued = report.requeued.len(),
            already_queued = report.already_queued.len(),
            not_retryable = report.not_retryable.len(),
            unknown = report.unknown.len(),
            "re-drive"
        );
        Ok(report)
    }
}

fn admin_delivery(row: &AnyRow) -> Result<AdminDelivery> {
    Ok(AdminDelivery {
        id: parse_named(row, "id")?,
        notification_id: parse_named(row, "notification_id")?,
        event_id: parse_named(row, "event_id")?,
        event: row.try_get("kind")?,
        recipient: row.try_get("recipient_id")?,
        channel: row.try_get("channel")?,
        provider: row.try_get("provider")?,
        status: row.try_get("status")?,
        reason: row.try_get("reason")?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        redriven_at: row.try_get("redriven_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

#[cfg(test)]
mod tests;
