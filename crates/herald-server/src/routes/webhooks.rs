//! Providers reporting back: what became of a message after Herald handed
//! it over. Requests are authenticated by the provider's signature, not a
//! token; a bad or missing signature gets 403 and changes nothing. Each
//! report is applied once (by the provider's event id), so the retries
//! providers make when an answer is slow are harmless. A report naming
//! something no message of Herald's carries (a NUL character) is skipped.

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
    if stores_nul(&[Some(sid), error.as_deref()]) {
        tracing::warn!("twilio status callback with a NUL character ignored");
        return Ok(StatusCode::NO_CONTENT);
    }
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

/// `POST /v1/webhooks/sendgrid`: SendGrid's Event Webhook, a JSON array of
/// events signed with ECDSA (`X-Twilio-Email-Event-Webhook-Signature` over
/// `X-Twilio-Email-Event-Webhook-Timestamp` and the raw body). `delivered`,
/// `bounce` and `dropped` move deliveries; other events (processed,
/// deferred, open, click …) are acknowledged and ignored. Each event is
/// applied once, by its `sg_event_id`.
pub async fn sendgrid(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let key = &state.settings.channels.sendgrid.webhook_public_key;
    if key.is_empty() {
        return Err(ApiError::not_found(
            "the SendGrid Event Webhook is not configured (channels.sendgrid.webhook_public_key)",
        ));
    }
    let key = herald_channels::sendgrid::EventWebhookKey::parse(key).map_err(ApiError::internal)?;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    if !key.verify(
        header("x-twilio-email-event-webhook-signature"),
        header("x-twilio-email-event-webhook-timestamp"),
        &body,
    ) {
        tracing::warn!("sendgrid event webhook with a bad signature refused");
        return Err(ApiError::forbidden(
            "X-Twilio-Email-Event-Webhook-Signature does not match",
        ));
    }
    let events: Vec<serde_json::Value> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("not a JSON array of events: {e}")))?;
    let now = chrono::Utc::now().timestamp_millis();
    for event in &events {
        let status = match event["event"].as_str() {
            Some("delivered") => ProviderStatus::Delivered,
            Some("bounce") => ProviderStatus::Bounced,
            Some("dropped") => ProviderStatus::Failed,
            _ => continue,
        };
        let (Some(event_id), Some(message)) = (
            event["sg_event_id"].as_str(),
            event["sg_message_id"].as_str(),
        ) else {
            continue;
        };
        let error = event["reason"].as_str().map(|r| format!("sendgrid: {r}"));
        if stores_nul(&[Some(event_id), Some(message), error.as_deref()]) {
            tracing::warn!("sendgrid event with a NUL character ignored");
            continue;
        }
        let outcome = state
            .store
            .record_provider_event(
                &ProviderEvent {
                    provider: "sendgrid",
                    event_id,
                    message_id: herald_channels::sendgrid::message_id_of(message),
                    status,
                    error: error.as_deref(),
                },
                now,
            )
            .await?;
        tracing::info!(
            event_id,
            status = status.as_str(),
            ?outcome,
            "sendgrid event"
        );
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Whether a value Herald would store holds a NUL character, which no
/// message Herald sent carries and PostgreSQL cannot store. Such a report
/// is about no delivery of Herald's; it is skipped rather than refused, so
/// that the provider does not retry it, nor the rest of its batch, for days.
fn stores_nul(values: &[Option<&str>]) -> bool {
    values.iter().flatten().any(|v| v.contains('\0'))
}
