//! `action_confirm` records: written before the client's ack, relayed to
//! the platform's webhook afterwards (the table is the outbox).
//!
//! The key is (user, actionId): a client that retries a confirmation is
//! answered with the first record; the same id with another action or
//! amount is a conflict. A relay *claims* a row with a lease before sending
//! it, so two nodes never post the same row at once, and a node that dies
//! mid-relay leaves a lease that simply runs out.
//!
//! A relay ends `relayed` (the platform accepted it) or `rejected` (the
//! platform refused it for good, with a 4xx): both are final, and a row
//! keeps the platform's last answer — its status and the body's first
//! bytes — so support can see why.

use sqlx::Row;

use crate::{Error, Result, Store, now_ms};

/// Where a confirmation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionStatus {
    /// Waiting for the webhook to accept it.
    Pending,
    /// The webhook accepted it.
    Relayed,
    /// Recorded only: no webhook is configured.
    Unrelayed,
    /// The webhook refused it for good (a 4xx other than 408 and 429):
    /// never tried again.
    Rejected,
}

impl ActionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Pending => "pending",
            ActionStatus::Relayed => "relayed",
            ActionStatus::Unrelayed => "unrelayed",
            ActionStatus::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Result<ActionStatus> {
        match s {
            "pending" => Ok(ActionStatus::Pending),
            "relayed" => Ok(ActionStatus::Relayed),
            "unrelayed" => Ok(ActionStatus::Unrelayed),
            "rejected" => Ok(ActionStatus::Rejected),
            other => Err(Error::Corrupt(format!("action status `{other}`"))),
        }
    }
}

/// A confirmation as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRecord {
    pub user_id: String,
    pub action_id: String,
    pub role: String,
    pub restaurant_id: Option<String>,
    pub action: String,
    /// The JSON number as sent.
    pub amount: String,
    pub status: ActionStatus,
    pub attempts: i64,
    pub created_at: i64,
    /// Why the last relay attempt failed, if it did.
    pub last_error: Option<String>,
    /// The webhook's last answer: its HTTP status (none if no answer
    /// came) and the first bytes of its body.
    pub response: Option<WebhookAnswer>,
}

/// What the platform's webhook answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookAnswer {
    pub status: u16,
    /// The first bytes of the body (at most [`ANSWER_BODY_BYTES`]).
    pub body: String,
}

/// How much of an answer's body is kept.
pub const ANSWER_BODY_BYTES: usize = 256;

/// The outcome of recording a confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Newly written.
    New(ActionRecord),
    /// Recorded before with the same action and amount.
    Duplicate(ActionRecord),
}

const COLUMNS: &str = "user_id, action_id, role, restaurant_id, action, amount, status, attempts, \
     created_at, last_error, response_status, response_body";

/// A row of `action_confirms` as [`COLUMNS`] reads it.
#[derive(Debug, sqlx::FromRow)]
struct ActionRow {
    user_id: String,
    action_id: String,
    role: String,
    restaurant_id: Option<String>,
    action: String,
    amount: String,
    status: String,
    attempts: i64,
    created_at: i64,
    last_error: Option<String>,
    response_status: Option<i64>,
    response_body: Option<String>,
}

impl TryFrom<ActionRow> for ActionRecord {
    type Error = Error;

    fn try_from(row: ActionRow) -> Result<ActionRecord> {
        let response = match row.response_status {
            None => None,
            Some(status) => Some(WebhookAnswer {
                status: u16::try_from(status)
                    .map_err(|_| Error::Corrupt(format!("webhook status {status}")))?,
                body: row.response_body.unwrap_or_default(),
            }),
        };
        Ok(ActionRecord {
            user_id: row.user_id,
            action_id: row.action_id,
            role: row.role,
            restaurant_id: row.restaurant_id,
            action: row.action,
            amount: row.amount,
            status: ActionStatus::parse(&row.status)?,
            attempts: row.attempts,
            created_at: row.created_at,
            last_error: row.last_error,
            response,
        })
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Store {
    /// Records a confirmation durably (committed when this returns).
    /// `relay` says whether a webhook will relay it.
    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(user = %new.user_id, action_id = %new.action_id)
    )]
    pub async fn record_action(&self, new: &ActionRecord, relay: bool) -> Result<Recorded> {
        let now = now_ms();
        let status = if relay {
            ActionStatus::Pending
        } else {
            ActionStatus::Unrelayed
        };
        let inserted = sqlx::query(
            "INSERT INTO action_confirms \
             (user_id, action_id, role, restaurant_id, action, amount, status, attempts, next_attempt_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $8) ON CONFLICT (user_id, action_id) DO NOTHING",
        )
        .bind(new.user_id.clone())
        .bind(new.action_id.clone())
        .bind(new.role.clone())
        .bind(new.restaurant_id.clone())
        .bind(new.action.clone())
        .bind(new.amount.clone())
        .bind(status.as_str())
        .bind(now)
        .execute(&self.write)
        .await?
        .rows_affected();
        let stored: ActionRecord = sqlx::query_as::<_, ActionRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM action_confirms WHERE user_id = $1 AND action_id = $2"
        )))
        .bind(new.user_id.clone())
        .bind(new.action_id.clone())
        .fetch_one(&self.write)
        .await?
        .try_into()?;
        if inserted == 1 {
            return Ok(Recorded::New(stored));
        }
        if stored.action != new.action || stored.amount != new.amount {
            return Err(Error::ActionConflict {
                action_id: new.action_id.clone(),
            });
        }
        Ok(Recorded::Duplicate(stored))
    }

    /// Claims up to `limit` pending confirmations that are due, leasing
    /// each for `lease_ms`.
    pub async fn claim_due_actions(&self, limit: i64, lease_ms: i64) -> Result<Vec<ActionRecord>> {
        let now = now_ms();
        let rows = sqlx::query_as::<_, ActionRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM action_confirms \
             WHERE status = 'pending' AND next_attempt_at <= $1 \
             AND (lease_until IS NULL OR lease_until < $1) \
             ORDER BY next_attempt_at LIMIT $2"
        )))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let r = ActionRecord::try_from(row)?;
            let won = sqlx::query(
                "UPDATE action_confirms SET lease_until = $1 \
                 WHERE user_id = $2 AND action_id = $3 AND status = 'pending' \
                 AND (lease_until IS NULL OR lease_until < $4)",
            )
            .bind(now + lease_ms)
            .bind(r.user_id.clone())
            .bind(r.action_id.clone())
            .bind(now)
            .execute(&self.write)
            .await?
            .rows_affected();
            if won == 1 {
                claimed.push(r);
            }
        }
        Ok(claimed)
    }

    /// The webhook accepted a confirmation.
    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(user = %user_id, action_id = %action_id)
    )]
    pub async fn action_relayed(&self, user_id: &str, action_id: &str) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE action_confirms SET status = 'relayed', relayed_at = $1, attempts = attempts + 1, \
             lease_until = NULL, last_error = NULL, response_status = NULL, response_body = NULL \
             WHERE user_id = $2 AND action_id = $3",
        )
        .bind(now)
        .bind(user_id.to_owned())
        .bind(action_id.to_owned())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// A relay attempt failed; try again at `next_attempt_at`. `answer` is
    /// what the webhook said, if it answered at all.
    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(user = %user_id, action_id = %action_id)
    )]
    pub async fn action_retry(
        &self,
        user_id: &str,
        action_id: &str,
        next_attempt_at: i64,
        error: &str,
        answer: Option<&WebhookAnswer>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE action_confirms SET attempts = attempts + 1, next_attempt_at = $1, \
             last_error = $2, response_status = $3, response_body = $4, lease_until = NULL \
             WHERE user_id = $5 AND action_id = $6 AND status = 'pending'",
        )
        .bind(next_attempt_at)
        .bind(prefix(error, 500).to_owned())
        .bind(answer.map(|a| i64::from(a.status)))
        .bind(answer.map(|a| prefix(&a.body, ANSWER_BODY_BYTES).to_owned()))
        .bind(user_id.to_owned())
        .bind(action_id.to_owned())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The webhook refused a confirmation for good: it is `rejected`, with
    /// the answer kept, and no relay claims it again.
    #[tracing::instrument(
        level = "debug",
        skip_all,
        fields(user = %user_id, action_id = %action_id)
    )]
    pub async fn action_rejected(
        &self,
        user_id: &str,
        action_id: &str,
        error: &str,
        answer: &WebhookAnswer,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE action_confirms SET status = 'rejected', attempts = attempts + 1, \
             last_error = $1, response_status = $2, response_body = $3, lease_until = NULL \
             WHERE user_id = $4 AND action_id = $5 AND status = 'pending'",
        )
        .bind(prefix(error, 500).to_owned())
        .bind(i64::from(answer.status))
        .bind(prefix(&answer.body, ANSWER_BODY_BYTES).to_owned())
        .bind(user_id.to_owned())
        .bind(action_id.to_owned())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// When the next pending confirmation falls due, if any.
    pub async fn next_action_due(&self) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MIN(next_attempt_at) AS next_due FROM action_confirms WHERE status = 'pending'",
        )
        .fetch_one(&self.read)
        .await?;
        Ok(row.try_get("next_due")?)
    }

    /// One confirmation, for tests and support.
    pub async fn action(&self, user_id: &str, action_id: &str) -> Result<Option<ActionRecord>> {
        sqlx::query_as::<_, ActionRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM action_confirms WHERE user_id = $1 AND action_id = $2"
        )))
        .bind(user_id.to_owned())
        .bind(action_id.to_owned())
        .fetch_optional(&self.read)
        .await?
        .map(ActionRecord::try_from)
        .transpose()
    }
}
