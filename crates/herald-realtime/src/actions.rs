//! `action_confirm {actionId, action, amount}`: recorded in the database
//! before the client's ack, then relayed to the platform's webhook.
//!
//! The ack means *durably recorded*: the row is committed when it is sent.
//! Relaying is the outbox's job: a worker claims due rows (with a lease, so
//! nodes never double-post) and POSTs each one. A 2xx ends it `relayed`.
//! A 4xx other than 408 and 429 is the platform saying no for good: the row
//! ends `rejected` with the answer's status and first bytes, counted and
//! logged, and is never sent again. Anything else — no answer, a 5xx, 408,
//! 429 — is tried again after Herald's one backoff
//! ([`herald_core::retry`]: full jitter, doubling from
//! `webhook_retry_base_ms` up to `webhook_retry_max_ms`, a `Retry-After` on
//! 429 or 503 as a floor), across restarts, since the row stays `pending`.
//!
//! The request is JSON, signed: `X-Herald-Signature: sha256=<hex>` is
//! HMAC-SHA256 with `webhook_secret` over `"{X-Herald-Timestamp}.{body}"`
//! (the timestamp in Unix seconds), and `X-Herald-Idempotency-Key` is the
//! same for every attempt of one confirmation.
//!
//! With no `webhook_url` the confirmation is recorded (status
//! `unrelayed`) and acked with `relay: "disabled"`.

use std::sync::Arc;
use std::time::Duration;

use herald_core::auth::Principal;
use herald_core::retry::{self, Backoff};
use herald_store::Store;
use herald_store::actions::{
    ANSWER_BODY_BYTES, ActionRecord, ActionStatus, Recorded, WebhookAnswer,
};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::hub::{Hub, now_ms};
use crate::protocol::{ActionConfirm, ErrorCode, Refusal};
use crate::{Error, RealtimeConfig};

#[derive(Debug)]
struct Webhook {
    url: String,
    secret: Vec<u8>,
    client: reqwest::Client,
    retry: Backoff,
    timeout: Duration,
}

/// Records confirmations and relays them.
#[derive(Debug, Clone)]
pub(crate) struct Actions {
    store: Store,
    webhook: Option<Arc<Webhook>>,
    wake: Arc<Notify>,
}

impl Actions {
    pub fn new(store: Store, config: &RealtimeConfig) -> Result<Actions, Error> {
        let webhook = if config.webhook_url.is_empty() {
            None
        } else {
            let timeout = Duration::from_millis(config.webhook_timeout_ms.max(1));
            // reqwest's rustls needs a process-wide crypto provider; the
            // first caller installs ring's, later calls find it in place.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .map_err(|e| Error::Config {
                    key: "webhook_url".into(),
                    message: e.to_string(),
                })?;
            Some(Arc::new(Webhook {
                url: config.webhook_url.clone(),
                secret: config.webhook_secret.as_bytes().to_vec(),
                client,
                retry: config.webhook_retry(),
                timeout,
            }))
        };
        Ok(Actions {
            store,
            webhook,
            wake: Arc::new(Notify::new()),
        })
    }

    /// Records a confirmation; the answer is the client's ack.
    pub async fn record(
        &self,
        principal: &Principal,
        action: &ActionConfirm,
    ) -> Result<Value, Refusal> {
        let new = ActionRecord {
            user_id: principal.user_id.as_str().to_owned(),
            action_id: action.action_id.clone(),
            role: principal.role.as_str().to_owned(),
            restaurant_id: principal.restaurant_id.clone(),
            action: action.action.clone(),
            amount: action.amount.to_string(),
            status: ActionStatus::Pending,
            attempts: 0,
            created_at: 0,
            last_error: None,
            response: None,
        };
        let (record, duplicate) = match self.store.record_action(&new, self.webhook.is_some()).await
        {
            Ok(Recorded::New(r)) => {
                self.wake.notify_one();
                (r, false)
            }
            Ok(Recorded::Duplicate(r)) => (r, true),
            Err(herald_store::Error::ActionConflict { .. }) => {
                return Err(Refusal::bad_request(
                    "this actionId was already confirmed with a different action or amount",
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "action_confirm: could not record");
                return Err(Refusal::new(
                    ErrorCode::ServerError,
                    "the confirmation could not be recorded; retry",
                ));
            }
        };
        tracing::info!(
            user = %record.user_id,
            action_id = %record.action_id,
            action = %record.action,
            duplicate,
            "action_confirm recorded"
        );
        let relay = match record.status {
            ActionStatus::Pending => "pending",
            ActionStatus::Relayed => "relayed",
            ActionStatus::Unrelayed => "disabled",
            ActionStatus::Rejected => "rejected",
        };
        Ok(json!({
            "ok": true,
            "actionId": record.action_id,
            "status": "recorded",
            "relay": relay,
            "duplicate": duplicate,
            "recordedAt": record.created_at,
        }))
    }

    /// Starts the relay worker when a webhook is configured.
    pub fn spawn_relay(&self, hub: Hub) {
        if let Some(webhook) = self.webhook.clone() {
            tokio::spawn(relay(hub, self.clone(), webhook));
        }
    }
}

/// The body the platform receives.
fn body(record: &ActionRecord) -> String {
    let amount: Value = serde_json::from_str(&record.amount).unwrap_or(Value::Null);
    json!({
        "type": "action_confirm",
        "userId": record.user_id,
        "role": record.role,
        "restaurantId": record.restaurant_id,
        "actionId": record.action_id,
        "action": record.action,
        "amount": amount,
        "confirmedAt": record.created_at,
    })
    .to_string()
}

/// `sha256=<hex>` over `"{timestamp}.{body}"`.
pub fn signature(secret: &[u8], timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn idempotency_key(record: &ActionRecord) -> String {
    let mut h = Sha256::new();
    h.update(record.user_id.as_bytes());
    h.update([0]);
    h.update(record.action_id.as_bytes());
    hex::encode(h.finalize())
}

/// What one relay attempt came to.
#[derive(Debug, PartialEq, Eq)]
enum Relayed {
    /// A 2xx: the platform has it.
    Accepted,
    /// No answer, a 5xx, 408 or 429 (or anything else not final): try
    /// again, no sooner than `retry_after` if the platform said so.
    Retry {
        error: String,
        answer: Option<WebhookAnswer>,
        retry_after: Option<Duration>,
    },
    /// A 4xx other than 408 and 429: the platform refuses it for good.
    Rejected {
        error: String,
        answer: WebhookAnswer,
    },
}

impl Relayed {
    /// Classifies an answer. `Retry-After` counts on 429 and 503 only.
    fn of(status: StatusCode, headers: &HeaderMap, body: String) -> Relayed {
        if status.is_success() {
            return Relayed::Accepted;
        }
        let error = format!("webhook answered {status}");
        let answer = WebhookAnswer {
            status: status.as_u16(),
            body,
        };
        let final_refusal = status.is_client_error()
            && status != StatusCode::REQUEST_TIMEOUT
            && status != StatusCode::TOO_MANY_REQUESTS;
        if final_refusal {
            return Relayed::Rejected { error, answer };
        }
        let retry_after = [
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::SERVICE_UNAVAILABLE,
        ]
        .contains(&status)
        .then(|| headers.get(RETRY_AFTER)?.to_str().ok())
        .flatten()
        .and_then(|value| retry::retry_after(value, chrono::Utc::now()));
        Relayed::Retry {
            error,
            answer: Some(answer),
            retry_after,
        }
    }
}

/// Up to [`ANSWER_BODY_BYTES`] of an answer's body, as text; the rest is
/// never read.
async fn first_bytes(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < ANSWER_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    bytes.truncate(ANSWER_BODY_BYTES);
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    let mut end = text.len().min(ANSWER_BODY_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

impl Webhook {
    async fn send(&self, record: &ActionRecord) -> Relayed {
        let body = body(record);
        let timestamp = chrono::Utc::now().timestamp();
        let sent = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-herald-event", "action_confirm")
            .header("x-herald-idempotency-key", idempotency_key(record))
            .header("x-herald-timestamp", timestamp.to_string())
            .header(
                "x-herald-signature",
                signature(&self.secret, timestamp, &body),
            )
            .body(body)
            .send()
            .await;
        match sent {
            Ok(response) => {
                let (status, headers) = (response.status(), response.headers().clone());
                let body = if status.is_success() {
                    String::new()
                } else {
                    first_bytes(response).await
                };
                Relayed::of(status, &headers, body)
            }
            Err(e) => Relayed::Retry {
                error: format!("request failed: {e}"),
                answer: None,
                retry_after: None,
            },
        }
    }
}

/// The relay worker: claim due rows, post them, record the outcome; sleep
/// until the next is due, a new one is recorded, or the hub stops.
async fn relay(hub: Hub, actions: Actions, webhook: Arc<Webhook>) {
    let mut stop = hub.stop_signal();
    let lease_ms = (webhook.timeout.as_millis() as i64) * 2 + 1000;
    // Rows written by other nodes are found by polling at least this often.
    let poll_ms = 5_000;
    loop {
        let claimed = match actions.store.claim_due_actions(32, lease_ms).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "action relay: cannot read the outbox");
                Vec::new()
            }
        };
        for record in &claimed {
            relay_one(&hub, &actions, &webhook, record).await;
        }
        let wait_ms = match actions.store.next_action_due().await {
            Ok(Some(due)) => (due - now_ms()).clamp(0, poll_ms),
            Ok(None) | Err(_) => poll_ms,
        };
        // Something due but not claimable (leased elsewhere): do not spin.
        let wait_ms = if claimed.is_empty() {
            wait_ms.max(250)
        } else {
            wait_ms
        };
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
            () = actions.wake.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One attempt of one claimed confirmation: post it, count and log the
/// outcome, record it.
#[tracing::instrument(
    name = "action_relay",
    skip_all,
    fields(user = %record.user_id, action_id = %record.action_id, attempt = record.attempts + 1)
)]
async fn relay_one(hub: &Hub, actions: &Actions, webhook: &Webhook, record: &ActionRecord) {
    let relays = &hub.metrics().relays;
    let store = &actions.store;
    let (user, action) = (record.user_id.as_str(), record.action_id.as_str());
    let saved = match webhook.send(record).await {
        Relayed::Accepted => {
            relays.with_label_values(&["relayed"]).inc();
            tracing::info!("action_confirm relayed");
            store.action_relayed(user, action).await
        }
        Relayed::Retry {
            error,
            answer,
            retry_after,
        } => {
            relays.with_label_values(&["retrying"]).inc();
            let attempt = u32::try_from(record.attempts + 1).unwrap_or(u32::MAX);
            let delay = webhook.retry.delay(attempt, retry_after, &mut rand::rng());
            let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            tracing::warn!(retry_in_ms = delay_ms, %error, "action_confirm relay failed; will retry");
            store
                .action_retry(
                    user,
                    action,
                    now_ms().saturating_add(delay_ms),
                    &error,
                    answer.as_ref(),
                )
                .await
        }
        Relayed::Rejected { error, answer } => {
            relays.with_label_values(&["rejected"]).inc();
            tracing::warn!(
                status = answer.status,
                body = %answer.body,
                "action_confirm rejected by the platform; it is not retried"
            );
            store.action_rejected(user, action, &error, &answer).await
        }
    };
    if let Err(e) = saved {
        tracing::warn!(error = %e, "action relay: cannot record the outcome; the lease will expire and it is retried");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_are_final_and_the_rest_is_retried() {
        let none = HeaderMap::new();
        assert_eq!(
            Relayed::of(StatusCode::NO_CONTENT, &none, String::new()),
            Relayed::Accepted
        );
        for status in [400, 401, 403, 404, 409, 410, 422] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(
                Relayed::of(status, &none, "no such action".into()),
                Relayed::Rejected {
                    error: format!("webhook answered {status}"),
                    answer: WebhookAnswer {
                        status: status.as_u16(),
                        body: "no such action".into()
                    },
                },
            );
        }
        for status in [408, 429, 500, 502, 503, 504, 302] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(
                matches!(
                    Relayed::of(status, &none, String::new()),
                    Relayed::Retry {
                        retry_after: None,
                        answer: Some(_),
                        ..
                    }
                ),
                "{status}"
            );
        }
    }

    #[test]
    fn retry_after_counts_on_429_and_503() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        let after = |status: u16| match Relayed::of(
            StatusCode::from_u16(status).unwrap(),
            &headers,
            String::new(),
        ) {
            Relayed::Retry { retry_after, .. } => retry_after,
            other => panic!("{other:?}"),
        };
        assert_eq!(after(429), Some(Duration::from_secs(7)));
        assert_eq!(after(503), Some(Duration::from_secs(7)));
        assert_eq!(after(500), None);
    }

    #[test]
    fn signatures_cover_timestamp_and_body() {
        let a = signature(b"secret-secret-secret", 1_700_000_000, "{\"a\":1}");
        assert!(a.starts_with("sha256=") && a.len() == 7 + 64);
        assert_ne!(
            a,
            signature(b"secret-secret-secret", 1_700_000_001, "{\"a\":1}")
        );
        assert_ne!(
            a,
            signature(b"another-secret-here", 1_700_000_000, "{\"a\":1}")
        );
    }
}
