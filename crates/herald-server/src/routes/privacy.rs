//! A person's data: the erase (`DELETE /v1/users/{userId}`) and the export
//! (`GET /v1/users/{userId}/export`) of everything Herald keeps about them.
//!
//! An erase is irreversible and belongs to whoever runs the account: an
//! admin, or the platform's `service` relaying the person's request; a
//! user's own token may export but not erase. Both answer 404 for a user
//! Herald knows nothing about, so a second erase is a 404 too.

use axum::Json;
use axum::extract::State;
use herald_core::{Role, UserId};
use herald_store::lifecycle::UserExport;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::extract::ApiPath;
use crate::lifecycle::{self, LifecycleError};
use crate::problem::ApiError;
use crate::startup::AppState;

/// `DELETE /v1/users/{userId}`: 200 with what was erased, by kind.
pub async fn erase(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin, Role::Service])?;
    // Checked at start; typed again here, which is cheap.
    let policy = state.settings.retention().map_err(ApiError::internal)?;
    let report = lifecycle::erase_user(
        &state.store,
        &state.settings.channels.outbox_dir,
        &policy,
        &UserId(user.clone()),
    )
    .await
    .map_err(api_error)?
    .ok_or_else(unknown)?;
    Ok(Json(json!({ "userId": user, "erased": report })))
}

/// `GET /v1/users/{userId}/export`: contact, preferences, devices, every
/// inbox entry, deliveries and action records, as JSON.
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<UserExport>, ApiError> {
    caller.require_self_or_operator(&user)?;
    let export = state
        .store
        .export_user(&UserId(user))
        .await?
        .ok_or_else(unknown)?;
    Ok(Json(export))
}

fn unknown() -> ApiError {
    ApiError::not_found("Herald keeps nothing about this user")
}

fn api_error(e: LifecycleError) -> ApiError {
    match e {
        LifecycleError::Store(e) => e.into(),
        other => ApiError::internal(other),
    }
}
