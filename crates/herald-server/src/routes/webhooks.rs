//! Providers reporting back: what became of a message after Herald handed
//! it over. Requests are authenticated by the provider's signature, not a
//! token; a bad or missing signature gets 403 and changes nothing. Each
//! report is applied once (by the provider's event id), so the retries
//! providers make when an answer is slow are harmless.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use herald_store::deliveries::{ProviderEvent, ProviderStatus};

use crate::problem::ApiError;
use crate::startup::AppState;

/// `POST /v1/webhooks/twilio`: Twilio's message status callback
/// (form-encoded `MessageSid`, `MessageStatus`, `ErrorCode` …), signed with
/// `X-Twilio-Signature` over the callback URL Herald gave Twilio
/// (`channels.twilio.status_callback`).
pub async fn twilio(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let settings = &state.settings.channels.twilio;
    if settings.auth_token.is_empty() || settings.status_callback.is_empty() {
        return Err(ApiError::not_found(
            "Twilio status callbacks are not configured (channels.twilio.status_callback)",
        ));
    }
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|e| ApiError::bad_request(format!("not a form-encoded body: {e}")))?;
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !herald_channels::twilio::verify_signature(
        settings.auth_token.expose(),
        &settings.status_callback,
        &params,
        signature,
    ) {
        tracing::warn!("twilio status callback with a bad signature refused");
        return Err(ApiError::forbidden("X-Twilio-Signature does not match"));
    }
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some(sid), Some(status)) = (get("MessageSid"), get("MessageStatus")) else {
        return Err(ApiError::bad_request(
            "MessageSid and MessageStatus are required",
        ));
    };
    let status = match status {
        "delivered" => ProviderStatus::Delivered,
        "undelivered" | "failed" => ProviderStatus::Failed,
        // queued, accepted, sending, sent, read …: nothing Herald records.
        _ => return Ok(StatusCode::NO_CONTENT),
    };
    let error = get("ErrorCode").map(|code| format!("twilio error {code}"));
    // A message reaches each status once: the pair is the event's identity.
    let event_id = format!("{sid}:{}", status.as_str());
    let outcome = state
        .store
        .record_provider_event(
            &ProviderEvent {
                provider: "twilio",
                event_id: &event_id,
                message_id: sid,
                status,
                error: error.as_deref(),
            },
            chrono::Utc::now().timestamp_millis(),
        )
        .await?;
    tracing::info!(
        sid,
        status = status.as_str(),
        ?outcome,
        "twilio status callback"
    );
    Ok(StatusCode::NO_CONTENT)
}
