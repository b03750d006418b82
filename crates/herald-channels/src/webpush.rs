//! Push to browsers: Web Push (RFC 8030) with the payload encrypted for the
//! subscription (RFC 8291, `aes128gcm`) and the request signed with VAPID
//! (RFC 8292), both by the `web-push` crate; reqwest sends it.
//!
//! Classification follows RFC 8030 and the push services' documentation:
//! 201 is accepted (its `Location` names the message); 404 and 410 mean
//! the subscription expired or was withdrawn — the address is gone and the
//! device is forgotten; 400 and 413 (a payload the service refuses) and
//! 401/403 (a VAPID key the service does not accept) are permanent; 429
//! and 5xx are transient.

use std::time::Duration;

use async_trait::async_trait;
use herald_core::channel::{Address, Receipt};
use herald_core::{Channel, ChannelError, ChannelKind, RenderedMessage};
use reqwest::StatusCode;
use serde_json::json;
use web_push::{ContentEncoding, SubscriptionInfo, VapidSignatureBuilder, WebPushMessageBuilder};

use crate::mask::mask;
use crate::{Error, http};

/// How to sign and send Web Push messages.
#[derive(Clone)]
pub struct WebPushConfig {
    /// The VAPID private key: the raw P-256 scalar, base64url without padding.
    pub vapid_private_key: String,
    /// Who push services contact about this sender: `mailto:` or `https:`.
    pub subject: String,
    /// How long a push service may hold a message for an offline browser.
    pub ttl: Duration,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for WebPushConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPushConfig")
            .field("vapid_private_key", &"[redacted]")
            .field("subject", &self.subject)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// The Web Push transport.
#[derive(Clone)]
pub struct WebPush {
    client: reqwest::Client,
    key: String,
    subject: String,
    ttl: u32,
}

impl std::fmt::Debug for WebPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPush")
            .field("subject", &self.subject)
            .finish()
    }
}

impl WebPush {
    pub fn new(config: &WebPushConfig) -> Result<WebPush, Error> {
        use base64::Engine as _;
        // The crate panics on a key of the wrong length: check it first.
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(config.vapid_private_key.trim())
            .unwrap_or_default();
        if raw.len() != 32 {
            return Err(Error::new(
                "vapid_private_key",
                "must be a P-256 private key (32 bytes), base64url without padding",
            ));
        }
        VapidSignatureBuilder::from_base64_no_sub(config.vapid_private_key.trim()).map_err(
            |_| {
                Error::new(
                    "vapid_private_key",
                    "must be a P-256 private key, base64url without padding",
                )
            },
        )?;
        if !(config.subject.starts_with("mailto:") || config.subject.starts_with("https://")) {
            return Err(Error::new("subject", "must be a mailto: or https: URL"));
        }
        Ok(WebPush {
            client: http::client(config.timeout, config.connect_timeout)?,
            key: config.vapid_private_key.trim().to_owned(),
            subject: config.subject.clone(),
            ttl: u32::try_from(config.ttl.as_secs()).unwrap_or(u32::MAX),
        })
    }
}

#[async_trait]
impl Channel for WebPush {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Push
    }

    fn provider(&self) -> &str {
        "webpush"
    }

    #[tracing::instrument(skip_all, fields(provider = "webpush", to = %mask(&message.to)))]
    async fn send(&self, message: &RenderedMessage) -> Result<Receipt, ChannelError> {
        let Address::WebPush {
            endpoint,
            p256dh,
            auth,
        } = &message.to
        else {
            return Err(ChannelError::permanent(
                "webpush sends to Web Push subscriptions only",
            ));
        };
        let subscription = SubscriptionInfo::new(endpoint.as_str(), p256dh, auth);
        let mut vapid = VapidSignatureBuilder::from_base64(&self.key, &subscription)
            .map_err(|e| ChannelError::permanent(format!("webpush: VAPID key: {e}")))?;
        vapid.add_claim("sub", self.subject.as_str());
        let signature = vapid
            .build()
            .map_err(|e| ChannelError::permanent(format!("webpush: VAPID signature: {e}")))?;
        let payload = serde_json::to_vec(&json!({
            "title": message.subject,
            "body": message.text,
            "data": message.data,
        }))
        .map_err(|e| ChannelError::permanent(format!("webpush: payload: {e}")))?;
        let mut builder = WebPushMessageBuilder::new(&subscription);
        builder.set_payload(ContentEncoding::Aes128Gcm, &payload);
        builder.set_ttl(self.ttl);
        builder.set_vapid_signature(signature);
        // Bad keys or an endpoint that is not a URI: the subscription itself
        // is broken, and no retry mends it.
        let built = builder
            .build()
            .map_err(|e| ChannelError::gone(format!("webpush: unusable subscription: {e}")))?;
        let mut request = self
            .client
            .post(endpoint)
            .header("TTL", built.ttl.to_string())
            .header("Content-Type", "application/octet-stream");
        let body = match built.payload {
            Some(p) => {
                request = request.header("Content-Encoding", p.content_encoding.to_str());
                for (name, value) in p.crypto_headers {
                    request = request.header(name, value);
                }
                p.content
            }
            None => Vec::new(),
        };
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| http::request_failed("webpush", &e))?;
        let status = response.status();
        if status.is_success() {
            let id = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            return Ok(Receipt {
                provider_message_id: id,
            });
        }
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let reason = format!(
            "webpush: HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        );
        Err(match status {
            StatusCode::NOT_FOUND | StatusCode::GONE => ChannelError::gone(reason),
            _ => http::by_status(status, &headers, reason),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn vapid_key() -> (String, Vec<u8>) {
        let key = p256::ecdsa::SigningKey::from_slice(&[5u8; 32]).unwrap();
        let public = key
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        (URL_SAFE_NO_PAD.encode(key.to_bytes()), public)
    }

    fn transport() -> WebPush {
        WebPush::new(&WebPushConfig {
            vapid_private_key: vapid_key().0,
            subject: "mailto:ops@herald.test".into(),
            ttl: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        })
        .unwrap()
    }

    /// A browser's subscription: its key pair and auth secret.
    fn browser() -> (Box<dyn ece::crypto::LocalKeyPair>, [u8; 16]) {
        ece::generate_keypair_and_auth_secret().unwrap()
    }

    fn push(endpoint: &str, keys: &dyn ece::crypto::LocalKeyPair, auth: &[u8]) -> RenderedMessage {
        RenderedMessage {
            channel: ChannelKind::Push,
            to: Address::WebPush {
                endpoint: endpoint.to_owned(),
                p256dh: URL_SAFE_NO_PAD.encode(keys.pub_as_raw().unwrap()),
                auth: URL_SAFE_NO_PAD.encode(auth),
            },
            subject: Some("+50 баллов".into()),
            text: "Начислено 50 баллов".into(),
            html: None,
            data: json!({"event": "points_added"}),
            idempotency_key: "d-3".into(),
            list_unsubscribe: None,
        }
    }

    #[tokio::test]
    async fn the_payload_is_encrypted_for_the_subscription_and_vapid_signed() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/push/abc"))
            .and(header("content-encoding", "aes128gcm"))
            .and(header("ttl", "3600"))
            .respond_with(
                ResponseTemplate::new(201).insert_header("Location", "https://push.example/m/1"),
            )
            .expect(1)
            .mount(&server)
            .await;
        let (keys, auth) = browser();
        let endpoint = format!("{}/push/abc", server.uri());
        let receipt = transport()
            .send(&push(&endpoint, &*keys, &auth))
            .await
            .unwrap();
        assert_eq!(
            receipt.provider_message_id.as_deref(),
            Some("https://push.example/m/1")
        );

        let request = &server.received_requests().await.unwrap()[0];
        // The browser decrypts it (RFC 8291) with its private key and secret.
        let plain = ece::decrypt(&keys.raw_components().unwrap(), &auth, &request.body).unwrap();
        let payload: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(payload["title"], "+50 баллов");
        assert_eq!(payload["body"], "Начислено 50 баллов");
        assert_eq!(payload["data"]["event"], "points_added");
        // VAPID (RFC 8292): `vapid t=<JWT>, k=<our public key>`.
        let authorization = request
            .headers
            .get("authorization")
            .unwrap()
            .to_str()
            .unwrap();
        let k = authorization.split("k=").nth(1).unwrap().trim();
        assert!(authorization.starts_with("vapid t="), "{authorization}");
        assert_eq!(URL_SAFE_NO_PAD.decode(k).unwrap(), vapid_key().1);
        // Another browser's keys cannot read it.
        let (other, other_auth) = browser();
        assert!(
            ece::decrypt(&other.raw_components().unwrap(), &other_auth, &request.body).is_err()
        );
    }

    #[tokio::test]
    async fn expired_subscriptions_are_gone_and_others_classified() {
        for (status, expect) in [
            (404, "gone"),
            (410, "gone"),
            (413, "permanent"),
            (401, "permanent"),
            (429, "transient"),
            (503, "transient"),
        ] {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .respond_with(ResponseTemplate::new(status))
                .mount(&server)
                .await;
            let (keys, auth) = browser();
            let err = transport()
                .send(&push(&format!("{}/push/x", server.uri()), &*keys, &auth))
                .await
                .unwrap_err();
            let class = match err {
                ChannelError::Gone { .. } => "gone",
                ChannelError::Permanent { .. } => "permanent",
                ChannelError::Transient { .. } => "transient",
            };
            assert_eq!(class, expect, "{status}");
        }
        let mut c = WebPushConfig {
            vapid_private_key: "nope".into(),
            subject: "mailto:ops@herald.test".into(),
            ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        };
        assert_eq!(WebPush::new(&c).unwrap_err().key, "vapid_private_key");
        c.vapid_private_key = vapid_key().0;
        c.subject = "ops".into();
        assert_eq!(WebPush::new(&c).unwrap_err().key, "subject");
    }
}
