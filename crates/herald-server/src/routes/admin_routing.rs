//! The routing table over REST: read it, replace it, go back to the file.
//! Admins only.
//!
//! `GET /v1/admin/routing` answers the table in force on this node, in the
//! routing file's shape, with its `version` (also the `ETag`) and where it
//! came from. `PUT` replaces it with a JSON document of the same shape,
//! checked by the file's own rules (422 naming the field's path; nothing
//! changes); `DELETE` goes back to the routing file. Both take `If-Match`
//! with the version read, and answer 412 if someone changed the table
//! since, so two admins do not overwrite each other. Every change is
//! audited and in force on every node without a restart
//! ([`crate::routing`]).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use herald_core::Role;
use serde_json::Value;

use crate::auth::Caller;
use crate::extract::ApiJson;
use crate::problem::{ApiError, Code};
use crate::routes::audit::actor;
use crate::routing::{ChangeError, RoutingState};
use crate::startup::AppState;

/// `GET /v1/admin/routing`: the table in force, its version and source.
#[tracing::instrument(skip_all, fields(principal = %caller.0.user_id))]
pub async fn get(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    Ok(answer(&state, &state.routing.current()))
}

/// `PUT /v1/admin/routing` with the table as JSON: 200 with the new
/// version; 422 naming the path at fault; 412 if `If-Match` names another
/// version than the newest.
#[tracing::instrument(skip_all, fields(principal = %caller.0.user_id))]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(table): ApiJson<Value>,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let expected = if_match(&headers)?;
    let changed = state
        .routing
        .replace(table, expected, &actor(&caller))
        .await
        .map_err(change_error)?;
    Ok(answer(&state, &changed))
}

/// `DELETE /v1/admin/routing`: back to the routing file (`routing.file`),
/// as a new version; 200 with it. Nothing changes when the file is in
/// force already.
#[tracing::instrument(skip_all, fields(principal = %caller.0.user_id))]
pub async fn revert(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(&[Role::Admin])?;
    let expected = if_match(&headers)?;
    let changed = state
        .routing
        .revert(expected, &actor(&caller))
        .await
        .map_err(change_error)?;
    Ok(answer(&state, &changed))
}

fn answer(state: &AppState, current: &RoutingState) -> Response {
    let mut res = Json(state.routing.view(current)).into_response();
    if let Ok(etag) = HeaderValue::from_str(&current.etag()) {
        res.headers_mut().insert(header::ETAG, etag);
    }
    res
}

/// The version `If-Match` names: `None` when absent or `*`. A value that
/// names no version (not `"7"`, `W/"7"` or `7`) can match none: 412.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(None);
    }
    let bare = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
    bare.parse::<i64>().map(Some).map_err(|_| {
        ApiError::new(
            Code::PreconditionFailed,
            format!("If-Match `{text}` names no version of the routing table (send the ETag of GET /v1/admin/routing)"),
        )
        .field("If-Match")
    })
}

fn change_error(e: ChangeError) -> ApiError {
    match e {
        ChangeError::Invalid(v) => ApiError::from(v),
        ChangeError::Changed { current } => ApiError::new(
            Code::PreconditionFailed,
            format!(
                "the routing table is at version {current} now: read it again (GET /v1/admin/routing) and send its ETag in If-Match"
            ),
        )
        .field("If-Match"),
        ChangeError::Store(s) => ApiError::from(s),
    }
}
