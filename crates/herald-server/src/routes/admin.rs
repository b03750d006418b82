//! Operators' views: realtime stats and connections for admins,
//! Prometheus metrics for scrapers.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use herald_core::Role;
use herald_realtime::Connections;
use prometheus::{Encoder, TextEncoder};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::config::Secret;
use crate::extract::{ApiQuery, page_limit, unknown_parameter};
use crate::problem::ApiError;
use crate::startup::AppState;

/// How long a REST request waits on a dependency before answering 503.
pub const DEPENDENCY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /v1/admin/stats`: this node's realtime sockets (`connectedUsers`,
/// `totalSockets`, `rooms` — the number of rooms with a socket — by
/// transport, and `serverId`), and the delivery backlog shared by all
/// nodes: `queue.jobs` waiting in the queue, `queue.deliveries` owed an
/// attempt by status. Admins only. A queue that does not answer within
/// [`DEPENDENCY_TIMEOUT`] (its Redis is down) makes this a 503.
#[tracing::instrument(skip_all, fields(principal = %caller.0.user_id))]
pub async fn stats(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require(&[Role::Admin])?;
    let mut stats = serde_json::to_value(state.realtime.stats()).map_err(ApiError::internal)?;
    let jobs = match tokio::time::timeout(DEPENDENCY_TIMEOUT, state.queue.depth()).await {
        Ok(Ok(jobs)) => jobs,
        Ok(Err(e)) => return Err(ApiError::unavailable("delivery queue", e)),
        Err(_) => {
            return Err(ApiError::unavailable(
                "delivery queue",
                format!("no answer within {DEPENDENCY_TIMEOUT:?}"),
            ));
        }
    };
    let deliveries: Map<String, Value> = state
        .store
        .delivery_backlog()
        .await?
        .into_iter()
        .map(|(status, n)| (status, Value::from(n)))
        .collect();
    stats["queue"] = json!({ "jobs": jobs, "deliveries": deliveries });
    Ok(Json(stats))
}

/// Users per page of `GET /v1/admin/connections`, by default and at most.
pub const CONNECTIONS_DEFAULT_LIMIT: usize = 100;
pub const CONNECTIONS_MAX_LIMIT: usize = 1_000;

/// `GET /v1/admin/connections?after=&limit=`: this node's connected users
/// by user id, each with their sockets (transport, when connected, rooms),
/// `limit` users a page; `nextAfter` continues. Admins only. In a cluster
/// each node answers for its own sockets (`serverId` says which).
#[tracing::instrument(skip_all, fields(principal = %caller.0.user_id))]
pub async fn connections(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
) -> Result<Json<Connections>, ApiError> {
    caller.require(&[Role::Admin])?;
    let (mut after, mut limit) = (None, CONNECTIONS_DEFAULT_LIMIT);
    for (key, value) in &params {
        match key.as_str() {
            "after" if !value.is_empty() => after = Some(value.as_str()),
            "after" => {}
            "limit" => {
                limit = page_limit(value, CONNECTIONS_MAX_LIMIT as u32)? as usize;
            }
            other => {
                return Err(unknown_parameter(other).into());
            }
        }
    }
    Ok(Json(state.realtime.connections(after, limit)))
}

/// `GET /metrics`: Prometheus text exposition of this process's registry —
/// the realtime gateway, the delivery workers and their providers. With
/// `server.metrics_token` set, only for a scraper that sends it as a Bearer
/// token (401 otherwise).
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    exposition(
        &state.metrics,
        &state.settings.server.metrics_token,
        &headers,
    )
}

/// The Prometheus text of `registry`, for a caller that sent `token` (any
/// caller when it is empty). `herald serve` and `herald worker` answer
/// `/metrics` with it.
pub fn exposition(
    registry: &prometheus::Registry,
    token: &Secret,
    headers: &HeaderMap,
) -> Result<impl IntoResponse + use<>, ApiError> {
    if !token.is_empty() {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .unwrap_or("");
        // Compared as digests, so the time taken says nothing of the token.
        if Sha256::digest(sent.trim().as_bytes()) != Sha256::digest(token.expose().as_bytes()) {
            return Err(ApiError::unauthorized(
                "/metrics needs the metrics token (server.metrics_token) as a Bearer token",
            ));
        }
    }
    let mut body = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut body)
        .map_err(ApiError::internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    ))
}
