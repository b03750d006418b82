//! Liveness and readiness.

use std::future::Future;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::startup::AppState;

/// The process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// How long `/readyz` waits for any check: the checks run at once, so
/// the answer comes within this (plus a little), whatever is down. A load
/// balancer's probe typically gives up after a second.
pub const READY_WITHIN: Duration = Duration::from_millis(800);

/// Runs one check, bounded by [`READY_WITHIN`]: a dependency that does not
/// answer in time is as unavailable as one that refuses.
async fn bounded<E: std::fmt::Display>(
    check: impl Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(READY_WITHIN, check).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {READY_WITHIN:?}")),
    }
}

/// Herald can do its job: the database answers, the delivery queue
/// answers, and realtime fan-out works (with Redis: the bus is connected).
/// 503 otherwise, naming the failing check and why. Each transport's own
/// check is listed under `channels`, and each provider's circuit breaker
/// under `providers`, for information. Every check runs at once and is
/// bounded by [`READY_WITHIN`], so the answer comes within a second even
/// while a dependency hangs; once it is back the next probe answers 200
/// (the database pool and the Redis connections reconnect by themselves).
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (database, queue, realtime, channels) = tokio::join!(
        bounded(state.store.ping()),
        bounded(state.queue.ping()),
        bounded(state.realtime.ready()),
        state.delivery.check_channels(READY_WITHIN),
    );
    let mut ready = true;
    let mut check = |name: &str, result: Result<(), String>| match result {
        Ok(()) => "ok".to_owned(),
        Err(e) => {
            tracing::warn!(check = name, error = %e, "not ready");
            ready = false;
            format!("unavailable: {e}")
        }
    };
    let checks = json!({
        "database": check("database", database),
        "queue": check("queue", queue),
        "realtime": check("realtime", realtime),
    });
    // Transports are reported but do not decide readiness: a provider
    // outage is what delivery retries are for, and taking the node out of
    // rotation would stop ingest too.
    let channels: serde_json::Map<String, Value> = channels
        .into_iter()
        .map(|(kind, result)| {
            let word = match result {
                Ok(()) => "ok".to_owned(),
                Err(e) => {
                    tracing::warn!(channel = %kind, error = %e, "transport not working");
                    format!("unavailable: {e}")
                }
            };
            (kind.to_string(), Value::String(word))
        })
        .collect();
    let mut checks = checks;
    checks["channels"] = Value::Object(channels);
    // Each provider's circuit breaker (closed, open, half_open): also
    // informational, the chain routes around an open one.
    let breakers: serde_json::Map<String, Value> = state
        .delivery
        .dispatcher
        .channels
        .values()
        .flat_map(|chain| chain.breakers())
        .map(|(provider, state)| (provider, Value::String(state.to_owned())))
        .collect();
    checks["providers"] = Value::Object(breakers);
    let (status, word) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    (status, Json(json!({ "status": word, "checks": checks })))
}
