//! `POST /v1/events`: one event or an array of them (each may carry
//! `sendAt`); `POST /v1/events/{id}/cancel`: call off what an event still
//! owes.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_core::Role;
use herald_core::ValidationError;
use serde_json::Value;

use crate::auth::Caller;
use crate::extract::{ApiJson, ApiPath};
use crate::problem::{ApiError, Code};
use crate::startup::AppState;

/// 202 with `{id, event, receivedAt}` per event (an array for an array).
/// Publishing an id again with the same payload answers the same way and
/// writes nothing.
#[tracing::instrument(skip_all, fields(principal = %caller.0.user_id, role = caller.0.role.as_str()))]
pub async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Service, Role::Admin])?;
    let (items, batch) = match body {
        Value::Array(items) => (items, true),
        single => (vec![single], false),
    };
    if items.is_empty() {
        return Err(ValidationError::new("", "an array must hold at least one event").into());
    }
    let max = state.settings.server.max_batch;
    if items.len() > max {
        return Err(ApiError::new(
            Code::BatchTooLarge,
            format!("{} events in one request; the limit is {max}", items.len()),
        ));
    }
    let outcomes = state.publisher.publish(items, batch).await?;
    let records: Vec<_> = outcomes.iter().map(|o| o.record()).collect();
    let body = if batch {
        serde_json::to_value(&records)
    } else {
        serde_json::to_value(records[0])
    }
    .map_err(ApiError::internal)?;
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// `POST /v1/events/{id}/cancel` (`id`: the event id or the idempotency
/// key it was published with): every delivery of the event not yet sent
/// ends `cancelled` (reason `cancelled_by_publisher`, the caller in the
/// trace); a scheduled event's inbox entries are never shown and its
/// realtime fan-out never happens. What was sent is reported, not undone.
/// Idempotent: a second call cancels nothing and reports the same. 404 for
/// an event Herald does not know.
#[tracing::instrument(skip_all, fields(principal = %caller.0.user_id, event = %raw))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Service, Role::Admin])?;
    if raw.is_empty() || raw.len() > herald_core::ids::MAX_KEY_LEN {
        return Err(ApiError::not_found("no such event"));
    }
    let id = herald_core::EventId::from_key(&raw);
    let actor = format!("{}:{}", caller.0.role.as_str(), caller.0.user_id);
    let now = state.delivery.dispatcher.clock.now().timestamp_millis();
    let report = state
        .store
        .cancel(
            herald_store::scheduling::CancelScope::Event(id),
            CANCELLED_BY_PUBLISHER,
            &actor,
            now,
        )
        .await?
        .ok_or_else(|| ApiError::not_found("no such event"))?;
    state
        .scheduling
        .cancelled
        .with_label_values(&[CANCELLED_BY_PUBLISHER])
        .inc_by(report.cancelled + report.in_flight);
    tracing::info!(
        cancelled = report.cancelled,
        in_flight = report.in_flight,
        already_sent = report.already_sent,
        "event cancelled"
    );
    Ok(Json(serde_json::json!({
        "eventId": id,
        "cancelled": report.cancelled,
        "inFlight": report.in_flight,
        "alreadySent": report.already_sent,
        "alreadyFinal": report.already_final,
        "inboxHidden": report.inbox_hidden,
        "releaseCancelled": report.release_cancelled,
    })))
}

/// The reason a publisher's cancel gives its deliveries.
pub const CANCELLED_BY_PUBLISHER: &str = "cancelled_by_publisher";
