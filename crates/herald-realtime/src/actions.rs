//! `action_confirm {actionId, action, amount}`: recorded in the database
//! before the client's ack, then relayed to the platform's webhook.
//!
//! The ack means *durably recorded*: the row is committed when it is sent.
//! Relaying is the outbox's job: a worker claims due rows (with a lease, so
//! nodes never double-post), POSTs each one, and on anything but a 2xx
//! retries with exponential backoff and jitter, capped at
//! `webhook_retry_max_ms`, until the platform accepts it — across restarts,
//! since the row stays `pending`.
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
use herald_store::Store;
use herald_store::actions::{ActionRecord, ActionStatus, Recorded};
use hmac::{Hmac, Mac};
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
    base_ms: u64,
    max_ms: u64,
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
                base_ms: config.webhook_retry_base_ms,
                max_ms: config.webhook_retry_max_ms,
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

impl Webhook {
    async fn send(&self, record: &ActionRecord) -> Result<(), String> {
        let body = body(record);
        let timestamp = chrono::Utc::now().timestamp();
        let response = self
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
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("webhook answered {}", response.status()))
        }
    }

    /// Delay before attempt `attempts + 1`: doubling, capped, plus up to half again of jitter.
    fn backoff(&self, attempts: i64) -> u64 {
        let exp = self
            .base_ms
            .saturating_mul(1u64 << attempts.clamp(0, 30))
            .min(self.max_ms);
        exp + rand::random_range(0..=exp / 2)
    }
}

/// The relay worker: claim due rows, post them, record the outcome; sleep
/// until the next is due, a new one is recorded, or the hub stops.
async fn relay(hub: Hub, actions: Actions, webhook: Arc<Webhook>) {
    let mut stop = hub.inner.stop.subscribe();
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
            let outcome = webhook.send(record).await;
            let m = &hub.metrics().relays;
            let saved = match &outcome {
                Ok(()) => {
                    m.with_label_values(&["relayed"]).inc();
                    tracing::info!(user = %record.user_id, action_id = %record.action_id, attempts = record.attempts + 1, "action_confirm relayed");
                    actions
                        .store
                        .action_relayed(&record.user_id, &record.action_id)
                        .await
                }
                Err(error) => {
                    m.with_label_values(&["failed"]).inc();
                    let delay = webhook.backoff(record.attempts);
                    tracing::warn!(user = %record.user_id, action_id = %record.action_id, attempts = record.attempts + 1, retry_in_ms = delay, %error, "action_confirm relay failed");
                    actions
                        .store
                        .action_retry(
                            &record.user_id,
                            &record.action_id,
                            now_ms() + delay as i64,
                            error,
                        )
                        .await
                }
            };
            if let Err(e) = saved {
                tracing::warn!(error = %e, "action relay: cannot record the outcome; the lease will expire and it is retried");
            }
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

#[cfg(test)]
mod tests {
    use super::*;

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
