//! Operators' views: realtime stats for admins, Prometheus metrics for
//! scrapers.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use herald_core::Role;
use herald_realtime::Stats;

use crate::auth::Caller;
use crate::problem::ApiError;
use crate::startup::AppState;

/// `GET /v1/admin/stats`: this node's realtime sockets (`connectedUsers`,
/// `totalSockets`, `rooms` — the number of rooms with a socket — by
/// transport, and `serverId`). Admins only.
pub async fn stats(State(state): State<AppState>, caller: Caller) -> Result<Json<Stats>, ApiError> {
    caller.require(&[Role::Admin])?;
    Ok(Json(state.realtime.stats()))
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.realtime.render_metrics(),
    )
}
