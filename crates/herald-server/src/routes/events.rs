//! `POST /v1/events`: one event or an array of them.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_core::Role;
use herald_core::ValidationError;
use serde_json::Value;

use crate::auth::Caller;
use crate::extract::ApiJson;
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
