//! The admin's re-drive: list failed and expired deliveries, retry one or
//! a bounded set. Parsing and the re-drive itself are shared with the CLI
//! (`crate::redrive`); this module is the HTTP shape. Each re-drive is
//! traced on the delivery with the admin who asked (`admin:{sub}`).

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use herald_core::{DeliveryId, Role};
use herald_store::redrive::AdminDelivery;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::extract::{ApiJson, ApiPath, ApiQuery, unknown_parameter};
use crate::problem::{ApiError, Code};
use crate::redrive::{self, FilterBody, FilterInput, RedriveError, Selection};
use crate::startup::AppState;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    items: Vec<AdminDelivery>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    next_cursor: Option<String>,
}

/// `GET /v1/admin/deliveries?status=&channel=&provider=&reason=&error=&recipient=&event=&eventId=&from=&to=&cursor=&limit=`:
/// newest first; by default the failed and expired ones.
#[tracing::instrument(skip_all, fields(principal = %caller.0.user_id))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
) -> Result<Json<Page>, ApiError> {
    caller.require(&[Role::Admin])?;
    let mut filter = FilterInput::default();
    let (mut cursor, mut limit) = (None, None);
    for (key, value) in params {
        match key.as_str() {
            "cursor" => cursor = Some(value),
            "limit" => limit = Some(value),
            _ => {
                if !filter.set(&key, value) {
                    return Err(unknown_parameter(&key).into());
                }
            }
        }
    }
    let request = redrive::list_request(&filter, cursor.as_deref(), limit.as_deref())?;
    let (items, next) = state
        .store
        .list_deliveries(&request.filter, request.cursor.as_ref(), request.limit)
        .await?;
    Ok(Json(Page {
        items,
        next_cursor: next.as_ref().map(redrive::encode_cursor),
    }))
}

/// A delivery after `POST …/{id}/retry`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Retried {
    #[serde(flatten)]
    delivery: AdminDelivery,
    /// True when it was still owed an attempt: nothing was done, so
    /// retrying twice sends once.
    already_queued: bool,
}

/// `POST /v1/admin/deliveries/{id}/retry`: 202 with the delivery, now
/// pending; 200 with `alreadyQueued` if it is still owed an attempt; 409
/// if it is not failed or expired (sent, delivered, suppressed …); 404 if
/// there is no such delivery.
#[tracing::instrument(skip_all, fields(principal = %caller.0.user_id, delivery = %id))]
pub async fn retry_one(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let me = &caller.0;
    let id: DeliveryId = id.parse().map_err(|_| no_such_delivery())?;
    let report = run(&state, &me.user_id.0, &Selection::Ids(vec![id])).await?;
    if let Some(d) = report.not_retryable.first() {
        return Err(ApiError::new(
            Code::NotRetryable,
            format!(
                "delivery {} is {}: only failed and expired deliveries can be retried",
                d.id, d.status
            ),
        ));
    }
    if !report.unknown.is_empty() {
        return Err(no_such_delivery());
    }
    let delivery = state
        .store
        .admin_delivery(id)
        .await?
        .ok_or_else(no_such_delivery)?;
    let already_queued = report.requeued.is_empty();
    let status = if already_queued {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        Json(Retried {
            delivery,
            already_queued,
        }),
    )
        .into_response())
}

/// The body of `POST /v1/admin/deliveries/retry`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    ids: Option<Vec<String>>,
    filter: Option<FilterBody>,
    max: Option<i64>,
}

/// `POST /v1/admin/deliveries/retry` with `{"ids": […]}` or `{"filter":
/// {…}, "max": N}`: 202 with what became of each delivery (`requeued`,
/// `alreadyQueued`, `notRetryable`, `unknown`). A filter matching more
/// than `max` is 422 naming `filter`, and changes nothing.
#[tracing::instrument(skip_all, fields(principal = %caller.0.user_id))]
pub async fn retry_many(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<RetryBody>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let me = &caller.0;
    let filter = body.filter.map(FilterInput::from);
    let selection = redrive::selection(body.ids.as_deref(), filter.as_ref(), body.max)?;
    let report = run(&state, &me.user_id.0, &selection).await?;
    Ok((StatusCode::ACCEPTED, Json(report)).into_response())
}

async fn run(
    state: &AppState,
    sub: &str,
    selection: &Selection,
) -> Result<herald_store::redrive::RedriveReport, ApiError> {
    // The delivery side's clock: what it calls "due now".
    let now = state.delivery.dispatcher.clock.now().timestamp_millis();
    redrive::redrive(
        &state.store,
        &state.queue,
        selection,
        &format!("admin:{sub}"),
        now,
    )
    .await
    .map_err(|e| match e {
        RedriveError::Invalid(v) => ApiError::from(v),
        RedriveError::Store(s) => ApiError::from(s),
    })
}

fn no_such_delivery() -> ApiError {
    ApiError::not_found("no such delivery")
}
