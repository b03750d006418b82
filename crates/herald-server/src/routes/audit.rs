//! The admin audit log over REST (`GET /v1/admin/audit`), and who counts
//! as an auditable actor.
//!
//! The rows are written by the store in the transaction of each change
//! ([`herald_store::audit`]); the handlers that make the changes decide
//! whether a change is audited with [`auditor`]: an admin or a service
//! changing another user's data is, a user changing their own is not.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use herald_core::{Role, ValidationError};
use herald_store::audit::{Actor, AuditCursor, AuditEntry, AuditFilter, AuditKind};
use serde::Serialize;

use crate::auth::Caller;
use crate::extract::{ApiQuery, page_limit, unknown_parameter};
use crate::problem::ApiError;
use crate::redrive::{self, DEFAULT_LIMIT, MAX_LIMIT, parse_time};
use crate::startup::AppState;

/// The caller as an audit row names them.
pub fn actor(caller: &Caller) -> Actor {
    Actor::new(caller.0.user_id.as_str(), caller.0.role.as_str())
}

/// The actor to audit a change of `user`'s data under: an admin or a
/// service acting on someone else's; `None` for a user's own change.
pub fn auditor(caller: &Caller, user: &str) -> Option<Actor> {
    let me = &caller.0;
    (matches!(me.role, Role::Admin | Role::Service) && me.user_id.as_str() != user)
        .then(|| actor(caller))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    items: Vec<AuditEntry>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    next_cursor: Option<String>,
}

/// `GET /v1/admin/audit?actor=&target=&kind=&from=&to=&cursor=&limit=`:
/// newest first. `actor` is a token subject, `target` a user id, `kind`
/// one of `preferences`, `contact`, `devices`, `routing`; `from` and `to`
/// bound the time (RFC 3339, or epoch milliseconds). Admins only.
#[tracing::instrument(skip_all, fields(principal = %caller.0.user_id))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
) -> Result<Json<Page>, ApiError> {
    caller.require(&[Role::Admin])?;
    let mut filter = AuditFilter::default();
    let (mut cursor, mut limit) = (None, DEFAULT_LIMIT);
    for (key, value) in params {
        let value = value.trim().to_owned();
        if value.is_empty() {
            continue;
        }
        match key.as_str() {
            "actor" => filter.actor = Some(value),
            "target" => filter.target = Some(value),
            "kind" => {
                filter.kind = Some(AuditKind::parse(&value).ok_or_else(|| {
                    ValidationError::new(
                        "kind",
                        format!(
                            "`{value}` is not a kind of change (preferences, contact, devices, routing)"
                        ),
                    )
                })?);
            }
            "from" => filter.from = Some(parse_time("from", &value)?),
            "to" => filter.to = Some(parse_time("to", &value)?),
            "cursor" => cursor = Some(decode_cursor(&value)?),
            "limit" => {
                limit = page_limit(&value, MAX_LIMIT)?;
            }
            _ => {
                return Err(unknown_parameter(&key).into());
            }
        }
    }
    if let (Some(from), Some(to)) = (filter.from, filter.to)
        && from > to
    {
        return Err(ValidationError::new("to", "is before `from`").into());
    }
    let (items, next) = state
        .store
        .list_audit(&filter, cursor.as_ref(), limit)
        .await?;
    Ok(Json(Page {
        items,
        next_cursor: next.as_ref().map(encode_cursor),
    }))
}

fn encode_cursor(cursor: &AuditCursor) -> String {
    redrive::encode_position(cursor.at, &cursor.id)
}

fn decode_cursor(text: &str) -> Result<AuditCursor, ValidationError> {
    let (at, id) = redrive::decode_position(text)?;
    Ok(AuditCursor { at, id })
}
