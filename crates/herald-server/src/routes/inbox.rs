//! The caller's own notification centre.
//!
//! **Read state follows the user.** Marking an entry read, marking all read
//! and deleting one are announced to the user's own room (`user:{id}`, which
//! every socket of theirs joins on connect) on every node, through the hub
//! as any event goes: [`NOTIFICATIONS_READ`] and [`NOTIFICATION_DELETED`],
//! each with the unread count after the change. Another tab or device
//! clears the entry at once; one that was away gets them on resume, in
//! order, like any event. They are not catalog events: never in an inbox,
//! never delivered by email, SMS or push.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use herald_core::{NotificationId, Role, UserId, ValidationError};
use herald_realtime::receipts::{self, InboxChange};
use herald_store::inbox::InboxQuery;
use herald_store::{DeliveryRecord, Notification};
use serde::Serialize;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::extract::{ApiPath, ApiQuery, page_limit, unknown_parameter};
use crate::problem::ApiError;
use crate::startup::AppState;

pub use herald_realtime::receipts::{NOTIFICATION_DELETED, NOTIFICATIONS_READ};

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    items: Vec<Notification>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    next_cursor: Option<String>,
}

/// `GET /v1/notifications?unread=&cursor=&limit=`, newest first.
#[tracing::instrument(skip_all, fields(principal = %me.user_id))]
pub async fn list(
    State(state): State<AppState>,
    Caller(me): Caller,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
) -> Result<Json<Page>, ApiError> {
    let query = parse_query(&params)?;
    let items = state.store.inbox(&me.user_id, query).await?;
    let next_cursor = (items.len() == query.limit as usize)
        .then(|| items.last().map(|n| n.seq.to_string()))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

fn parse_query(params: &HashMap<String, String>) -> Result<InboxQuery, ApiError> {
    let mut query = InboxQuery {
        limit: DEFAULT_LIMIT,
        ..InboxQuery::default()
    };
    for (key, value) in params {
        match key.as_str() {
            "unread" => {
                query.unread_only = match value.as_str() {
                    "true" | "1" => true,
                    "false" | "0" | "" => false,
                    _ => return Err(ValidationError::new("unread", "must be true or false").into()),
                }
            }
            "cursor" if !value.is_empty() => {
                query.before =
                    Some(value.parse().ok().filter(|c: &i64| *c > 0).ok_or_else(|| {
                        ApiError::from(ValidationError::new(
                            "cursor",
                            "is not a cursor this API returned",
                        ))
                    })?);
            }
            "cursor" => {}
            "limit" => {
                query.limit = page_limit(value, MAX_LIMIT)?;
            }
            other => {
                return Err(unknown_parameter(other).into());
            }
        }
    }
    Ok(query)
}

/// `GET /v1/notifications/unread-count`.
#[tracing::instrument(skip_all, fields(principal = %me.user_id))]
pub async fn unread_count(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<Value>, ApiError> {
    let count = state.store.unread_count(&me.user_id).await?;
    Ok(Json(json!({ "count": count })))
}

/// `GET /v1/notifications/{id}`.
#[tracing::instrument(skip_all, fields(principal = %me.user_id, notification = %id))]
pub async fn get_one(
    State(state): State<AppState>,
    Caller(me): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Notification>, ApiError> {
    let id = notification_id(&id)?;
    found(state.store.notification(&me.user_id, id).await?)
}

/// `POST /v1/notifications/{id}/read`: idempotent; answers the entry.
#[tracing::instrument(skip_all, fields(principal = %me.user_id, notification = %id))]
pub async fn read(
    State(state): State<AppState>,
    Caller(me): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Notification>, ApiError> {
    let id = notification_id(&id)?;
    let entry = found(state.store.mark_read(&me.user_id, id).await?)?;
    announce(&state, &me.user_id, InboxChange::Read(&[id])).await?;
    Ok(entry)
}

/// `POST /v1/notifications/read-all`.
#[tracing::instrument(skip_all, fields(principal = %me.user_id))]
pub async fn read_all(
    State(state): State<AppState>,
    Caller(me): Caller,
) -> Result<Json<Value>, ApiError> {
    let updated = state.store.mark_all_read(&me.user_id).await?;
    if updated > 0 {
        announce(&state, &me.user_id, InboxChange::ReadAll).await?;
    }
    Ok(Json(json!({ "updated": updated })))
}

/// `DELETE /v1/notifications/{id}`: 204, then 404 for it. The entry's
/// deliveries not yet sent are cancelled (reason `inbox_deleted`): a user
/// who threw the notification away does not want it by push an hour later.
#[tracing::instrument(skip_all, fields(principal = %me.user_id, notification = %id))]
pub async fn delete(
    State(state): State<AppState>,
    Caller(me): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = notification_id(&id)?;
    if !state.store.delete_notification(&me.user_id, id).await? {
        return Err(no_such_notification());
    }
    let now = state.delivery.dispatcher.clock.now().timestamp_millis();
    let report = state
        .store
        .cancel(
            herald_store::scheduling::CancelScope::Notification(id, &me.user_id),
            INBOX_DELETED,
            &format!("user:{}", me.user_id),
            now,
        )
        .await?;
    if let Some(report) = report {
        state
            .scheduling
            .cancelled
            .with_label_values(&[INBOX_DELETED])
            .inc_by(report.cancelled + report.in_flight);
    }
    announce(&state, &me.user_id, InboxChange::Deleted(id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The reason deleting an inbox entry gives its deliveries.
pub const INBOX_DELETED: &str = "inbox_deleted";

/// `GET /v1/notifications/{id}/deliveries`: the owner or an admin. Someone
/// else's notification is 404, so ids cannot be probed.
#[tracing::instrument(skip_all, fields(principal = %me.user_id, notification = %id))]
pub async fn deliveries(
    State(state): State<AppState>,
    Caller(me): Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let id = notification_id(&id)?;
    let owner = state.store.notification_owner(id).await?;
    match owner {
        Some(owner) if me.role == Role::Admin || owner == me.user_id => {
            let items: Vec<DeliveryRecord> = state.store.deliveries(id).await?;
            Ok(Json(json!({ "notificationId": id, "items": items })))
        }
        _ => Err(no_such_notification()),
    }
}

/// Announces `change` to the user's sockets (see the module's notes).
async fn announce(
    state: &AppState,
    user: &UserId,
    change: InboxChange<'_>,
) -> Result<(), ApiError> {
    receipts::announce(&state.realtime, &state.store, user, change).await?;
    Ok(())
}

fn notification_id(raw: &str) -> Result<NotificationId, ApiError> {
    raw.parse().map_err(|_| no_such_notification())
}

fn found(entry: Option<Notification>) -> Result<Json<Notification>, ApiError> {
    entry.map(Json).ok_or_else(no_such_notification)
}

fn no_such_notification() -> ApiError {
    ApiError::not_found("no such notification")
}
