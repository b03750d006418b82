//! The admin audit log: who changed what of someone else's, when, from
//! what to what.
//!
//! A row is written for every change an admin or a service makes to
//! another user's preferences, contact details or devices, and for every
//! routing change (`kind` = `preferences`, `contact`, `devices`,
//! `routing`). It is written in the same transaction as the change
//! ([`Store::put_contact_by`], [`Store::put_preferences_by`],
//! [`Store::add_device_by`], [`Store::delete_device_by`],
//! [`Store::store_routing`]), so a change without its row cannot exist, nor
//! a row without its change. A user changing their own data is not audited:
//! the callers pass no [`Actor`] then.
//!
//! `before` and `after` hold what an auditor needs: emails and phone numbers
//! as they were (logs mask them; the audit must not), devices with their
//! token or endpoint masked as Herald masks them in logs ([`mask_device`]),
//! never a Web Push subscription's keys. The values are personal data of the
//! row's target: an erase of that user empties them ([`erase_in`]) and an
//! export lists the rows ([`Store::audit_of`]). Rows go after
//! `retention.audit` (see [`crate::lifecycle`]).
//!
//! Listing pages newest first by `(at, id)` as the delivery list does: a
//! [`AuditCursor`] is the last row of a page.

use herald_core::UserId;
use serde::Serialize;
use serde_json::Value;
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Row, Transaction};

use crate::records::Device;
use crate::{Error, Result, Store};

/// Who made a change: the token's subject and role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    pub subject: String,
    pub role: String,
}

impl Actor {
    pub fn new(subject: impl Into<String>, role: impl Into<String>) -> Actor {
        Actor {
            subject: subject.into(),
            role: role.into(),
        }
    }
}

/// What kind of record changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    Preferences,
    Contact,
    Devices,
    Routing,
}

impl AuditKind {
    pub const ALL: [AuditKind; 4] = [
        AuditKind::Preferences,
        AuditKind::Contact,
        AuditKind::Devices,
        AuditKind::Routing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Preferences => "preferences",
            AuditKind::Contact => "contact",
            AuditKind::Devices => "devices",
            AuditKind::Routing => "routing",
        }
    }

    pub fn parse(s: &str) -> Option<AuditKind> {
        AuditKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One row of the audit log, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: String,
    /// When (epoch ms).
    pub at: i64,
    pub actor: Actor,
    /// The user whose data changed; `None` for routing.
    pub target: Option<String>,
    pub kind: String,
    /// `update`, `add`, `remove`, `replace`, `revert`.
    pub action: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    /// When an erase of the target emptied `before` and `after`.
    pub erased_at: Option<i64>,
}

/// Which rows to list. `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// The actor's subject, exactly.
    pub actor: Option<String>,
    /// The target user's id, exactly.
    pub target: Option<String>,
    pub kind: Option<AuditKind>,
    /// At or after (epoch ms).
    pub from: Option<i64>,
    /// At or before (epoch ms).
    pub to: Option<i64>,
}

/// Where a page ended: the last row's time and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCursor {
    pub at: i64,
    pub id: String,
}

/// A device as the audit log keeps it: its token (the FCM registration
/// token, or the Web Push endpoint) masked as Herald's logs mask it — the
/// first 8 characters of a token, 24 of an endpoint — and no subscription
/// keys. Enough to tell two devices apart, not to send to one.
pub fn mask_device(device: &Device) -> Value {
    let keep = match device.kind {
        crate::DeviceKind::Fcm => 8,
        crate::DeviceKind::Webpush => 24,
    };
    let head: String = device.token.chars().take(keep).collect();
    serde_json::json!({
        "id": device.id,
        "kind": device.kind.as_str(),
        "token": format!("{head}***"),
        "createdAt": device.created_at,
    })
}

/// One change, as an audit row records it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Change<'a> {
    pub target: Option<&'a UserId>,
    pub kind: AuditKind,
    pub action: &'a str,
    pub before: Option<&'a Value>,
    pub after: Option<&'a Value>,
}

/// Writes one audit row at `at` (epoch ms) inside the caller's transaction.
pub(crate) async fn record(
    tx: &mut Transaction<'_, Any>,
    actor: &Actor,
    change: Change<'_>,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor_id, actor_role, target_id, kind, action, \
                                before_doc, after_doc) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(at)
    .bind(actor.subject.clone())
    .bind(actor.role.clone())
    .bind(change.target.map(|t| t.as_str().to_owned()))
    .bind(change.kind.as_str())
    .bind(change.action.to_owned())
    .bind(change.before.map(Value::to_string))
    .bind(change.after.map(Value::to_string))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Empties the values of every audit row about `user` (an erase), keeping
/// who changed what kind of record when. Returns how many rows it emptied.
pub(crate) async fn erase_in(
    tx: &mut Transaction<'_, Any>,
    user: &UserId,
    now: i64,
) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE audit_log SET before_doc = NULL, after_doc = NULL, erased_at = $2 \
         WHERE target_id = $1 AND erased_at IS NULL",
    )
    .bind(user.as_str())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

const SELECT: &str = "SELECT id, at, actor_id, actor_role, target_id, kind, action, \
                             before_doc, after_doc, erased_at FROM audit_log";

fn entry(row: &AnyRow) -> Result<AuditEntry> {
    let doc = |column: &str| -> Result<Option<Value>> {
        row.try_get::<Option<String>, _>(column)?
            .map(|s| {
                serde_json::from_str(&s).map_err(|e| Error::Corrupt(format!("audit {column}: {e}")))
            })
            .transpose()
    };
    Ok(AuditEntry {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        actor: Actor {
            subject: row.try_get("actor_id")?,
            role: row.try_get("actor_role")?,
        },
        target: row.try_get("target_id")?,
        kind: row.try_get("kind")?,
        action: row.try_get("action")?,
        before: doc("before_doc")?,
        after: doc("after_doc")?,
        erased_at: row.try_get("erased_at")?,
    })
}

impl Store {
    /// A page of the rows `filter` matches, newest first, after `cursor`;
    /// and the cursor of the next page, if there is one.
    #[tracing::instrument(level = "debug", skip_all, fields(limit = limit))]
    pub async fn list_audit(
        &self,
        filter: &AuditFilter,
        cursor: Option<&AuditCursor>,
        limit: u32,
    ) -> Result<(Vec<AuditEntry>, Option<AuditCursor>)> {
        enum Arg {
            Text(String),
            Int(i64),
        }
        let mut sql: Vec<String> = Vec::new();
        let mut args: Vec<Arg> = Vec::new();
        let mut arg = |a: Arg| {
            args.push(a);
            format!("${}", args.len())
        };
        if let Some(actor) = &filter.actor {
            sql.push(format!("actor_id = {}", arg(Arg::Text(actor.clone()))));
        }
        if let Some(target) = &filter.target {
            sql.push(format!("target_id = {}", arg(Arg::Text(target.clone()))));
        }
        if let Some(kind) = filter.kind {
            sql.push(format!("kind = {}", arg(Arg::Text(kind.as_str().into()))));
        }
        if let Some(from) = filter.from {
            sql.push(format!("at >= {}", arg(Arg::Int(from))));
        }
        if let Some(to) = filter.to {
            sql.push(format!("at <= {}", arg(Arg::Int(to))));
        }
        if let Some(c) = cursor {
            let at = arg(Arg::Int(c.at));
            let id = arg(Arg::Text(c.id.clone()));
            sql.push(format!("(at < {at} OR (at = {at} AND id < {id}))"));
        }
        // One more than asked: whether a next page exists.
        let lim = arg(Arg::Int(i64::from(limit) + 1));
        let clause = if sql.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", sql.join(" AND "))
        };
        let text = format!("{SELECT}{clause} ORDER BY at DESC, id DESC LIMIT {lim}");
        let mut query = sqlx::query(AssertSqlSafe(text));
        for a in args {
            query = match a {
                Arg::Text(t) => query.bind(t),
                Arg::Int(i) => query.bind(i),
            };
        }
        let rows = query.fetch_all(&self.read).await?;
        let mut items = rows.iter().map(entry).collect::<Result<Vec<_>>>()?;
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|e| AuditCursor {
                at: e.at,
                id: e.id.clone(),
            })
        } else {
            None
        };
        Ok((items, next))
    }

    /// Every audit row about `user`, newest first: part of their export.
    pub async fn audit_of(&self, user: &UserId) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{SELECT} WHERE target_id = $1 ORDER BY at DESC, id DESC"
        )))
        .bind(user.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(entry).collect()
    }
}

#[cfg(test)]
mod tests;
