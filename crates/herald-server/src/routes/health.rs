//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::startup::AppState;

/// The process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Herald can do its job: the database answers, the delivery queue
/// answers, and realtime fan-out works (with Redis: the bus is connected).
/// 503 otherwise, naming the failing check. Each transport's own check is
/// listed under `channels`, and each provider's circuit breaker under
/// `providers`, for information.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (database, queue, realtime) = tokio::join!(
        state.store.ping(),
        state.queue.ping(),
        state.realtime.ready()
    );
    let mut ready = true;
    let mut check = |name: &str, result: Result<(), String>| match result {
        Ok(()) => "ok",
        Err(e) => {
            tracing::warn!(check = name, error = %e, "not ready");
            ready = false;
            "unavailable"
        }
    };
    let checks = json!({
        "database": check("database", database.map_err(|e| e.to_string())),
        "queue": check("queue", queue.map_err(|e| e.to_string())),
        "realtime": check("realtime", realtime),
    });
    // Transports are reported but do not decide readiness: a provider
    // outage is what delivery retries are for, and taking the node out of
    // rotation would stop ingest too.
    let channels: serde_json::Map<String, Value> = state
        .delivery
        .check_channels(crate::startup::CHANNEL_CHECK_TIMEOUT)
        .await
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
