//! Email through SendGrid's v3 Mail Send API (`POST /v3/mail/send`).
//!
//! One request per message: the recipient in a single personalization,
//! the text and HTML parts as `content`, and the delivery's idempotency key
//! in `custom_args` so SendGrid's Event Webhook can name the delivery back.
//! SendGrid answers 202 with the message id in `X-Message-Id`.
//!
//! Classification follows SendGrid's documented responses: 429 (with
//! `Retry-After`) and 5xx are transient; 400 (a bad field, such as an
//! invalid address), 401/403 (the key is wrong or lacks `mail.send`) and
//! 413 (too large) are permanent.
//!
//! SendGrid's signed Event Webhook reports what became of each message:
//! `X-Twilio-Email-Event-Webhook-Signature` is an ECDSA P-256 / SHA-256
//! signature (base64 DER) over the `-Timestamp` header followed by the raw
//! body, checked with the account's verification key ([`EventWebhookKey`]).

use std::time::Duration;

use async_trait::async_trait;
use herald_core::channel::Receipt;
use herald_core::{Channel, ChannelError, ChannelKind, RenderedMessage};
use lettre::message::Mailbox;
use serde_json::{Value, json};

use crate::mask::mask;
use crate::{Error, http};

/// `custom_args` key carrying the delivery's idempotency key.
pub const DELIVERY_ARG: &str = "herald_delivery";

/// How to reach SendGrid.
#[derive(Clone)]
pub struct SendGridConfig {
    /// `https://api.sendgrid.com`, or the EU region's `https://api.eu.sendgrid.com`.
    pub base_url: String,
    pub api_key: String,
    /// The sender (`Herald <no-reply@example.com>`), a verified sender in SendGrid.
    pub from: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for SendGridConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendGridConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"[redacted]")
            .field("from", &self.from)
            .finish()
    }
}

/// The SendGrid email transport.
#[derive(Clone)]
pub struct SendGrid {
    client: reqwest::Client,
    url: String,
    api_key: String,
    from: Mailbox,
}

impl std::fmt::Debug for SendGrid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendGrid").field("url", &self.url).finish()
    }
}

impl SendGrid {
    pub fn new(config: &SendGridConfig) -> Result<SendGrid, Error> {
        if config.api_key.trim().is_empty() {
            return Err(Error::new("api_key", "is required"));
        }
        if config.api_key.contains(['\r', '\n']) {
            return Err(Error::new("api_key", "must be a single line"));
        }
        Ok(SendGrid {
            client: http::client(config.timeout, config.connect_timeout)?,
            url: format!(
                "{}/v3/mail/send",
                http::base_url("base_url", &config.base_url)?
            ),
            api_key: config.api_key.clone(),
            from: crate::email::sender(&config.from)?,
        })
    }

    /// The request body for one message.
    fn body(&self, message: &RenderedMessage) -> Result<Value, ChannelError> {
        let to = crate::email::recipient(message)?;
        let mut content = vec![json!({"type": "text/plain", "value": message.text})];
        if let Some(html) = &message.html {
            content.push(json!({"type": "text/html", "value": html}));
        }
        let mut from = json!({"email": self.from.email.to_string()});
        if let Some(name) = &self.from.name {
            from["name"] = json!(name);
        }
        let mut body = json!({
            "personalizations": [{"to": [{"email": to.email.to_string()}]}],
            "from": from,
            "subject": message.subject.clone().unwrap_or_default(),
            "content": content,
            "custom_args": {DELIVERY_ARG: message.idempotency_key},
        });
        // SendGrid passes `headers` through to the message as they are.
        if let Some(url) = &message.list_unsubscribe {
            body["headers"] = json!({
                crate::email::LIST_UNSUBSCRIBE: format!("<{url}>"),
                crate::email::LIST_UNSUBSCRIBE_POST: crate::email::ONE_CLICK,
            });
        }
        Ok(body)
    }
}

/// SendGrid's error body: `{"errors": [{"message", "field", "help"}]}`.
fn describe(status: reqwest::StatusCode, body: &str) -> String {
    let messages: Vec<String> = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["errors"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|e| match e["field"].as_str() {
            Some(field) => format!("{field}: {}", e["message"].as_str().unwrap_or("")),
            None => e["message"].as_str().unwrap_or("").to_owned(),
        })
        .collect();
    if messages.is_empty() {
        format!("sendgrid: HTTP {status}")
    } else {
        format!("sendgrid: HTTP {status}: {}", messages.join("; "))
    }
}

#[async_trait]
impl Channel for SendGrid {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Email
    }

    fn provider(&self) -> &str {
        "sendgrid"
    }

    #[tracing::instrument(skip_all, fields(provider = "sendgrid", to = %mask(&message.to)))]
    async fn send(&self, message: &RenderedMessage) -> Result<Receipt, ChannelError> {
        let body = self.body(message)?;
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(&self.api_key)
            .json(&body)
            .send()
            .await
            .map_err(|e| http::request_failed("sendgrid", &e))?;
        let status = response.status();
        if status.is_success() {
            let id = response
                .headers()
                .get("x-message-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            tracing::info!(message_id = ?id, "accepted by sendgrid");
            return Ok(Receipt {
                provider_message_id: id,
            });
        }
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        Err(http::by_status(status, &headers, describe(status, &text)))
    }
}

/// The verification key of SendGrid's signed Event Webhook: the base64
/// DER public key SendGrid shows under Mail Settings → Signed Event Webhook.
#[derive(Debug, Clone)]
pub struct EventWebhookKey(p256::ecdsa::VerifyingKey);

impl EventWebhookKey {
    pub fn parse(base64_der: &str) -> Result<EventWebhookKey, Error> {
        use base64::Engine as _;
        use p256::pkcs8::DecodePublicKey as _;
        let pem_body: String = base64_der
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .join("");
        let der = base64::engine::general_purpose::STANDARD
            .decode(pem_body.trim())
            .map_err(|e| Error::new("webhook_public_key", format!("not base64: {e}")))?;
        p256::ecdsa::VerifyingKey::from_public_key_der(&der)
            .map(EventWebhookKey)
            .map_err(|e| Error::new("webhook_public_key", format!("not a P-256 public key: {e}")))
    }

    /// Whether `signature` (the header, base64 DER) signs `timestamp ‖ body`.
    pub fn verify(&self, signature: &str, timestamp: &str, body: &[u8]) -> bool {
        use base64::Engine as _;
        use p256::ecdsa::signature::Verifier as _;
        let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
            return false;
        };
        let Ok(signature) = p256::ecdsa::Signature::from_der(&raw) else {
            return false;
        };
        let mut signed = Vec::with_capacity(timestamp.len() + body.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.extend_from_slice(body);
        self.0.verify(&signed, &signature).is_ok()
    }
}

/// The X-Message-Id a SendGrid event's `sg_message_id` belongs to: the
/// id SendGrid returned, then `.filter…` and the processing server's suffix.
pub fn message_id_of(sg_message_id: &str) -> &str {
    match sg_message_id.find(".filter") {
        Some(end) => &sg_message_id[..end],
        None => sg_message_id.split('.').next().unwrap_or(sg_message_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::channel::Address;
    use wiremock::matchers::{body_partial_json, header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    fn config(base: &str) -> SendGridConfig {
        SendGridConfig {
            base_url: base.to_owned(),
            api_key: "SG.test-key".to_owned(),
            from: "Herald <no-reply@herald.test>".to_owned(),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }

    fn message(email: &str) -> RenderedMessage {
        RenderedMessage {
            channel: ChannelKind::Email,
            to: Address::Email {
                email: email.to_owned(),
            },
            subject: Some("Списано 200 баллов".into()),
            text: "Вы получили «Бесплатный кофе».".into(),
            html: Some("<p>Вы получили «Бесплатный кофе».</p>".into()),
            data: json!({}),
            idempotency_key: "d-42".into(),
            list_unsubscribe: None,
        }
    }

    #[tokio::test]
    async fn sends_the_documented_request_and_reads_the_message_id() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v3/mail/send"))
            .and(header("authorization", "Bearer SG.test-key"))
            .and(header("content-type", "application/json"))
            .and(body_partial_json(json!({
                "personalizations": [{"to": [{"email": "anna@example.com"}]}],
                "from": {"email": "no-reply@herald.test", "name": "Herald"},
                "subject": "Списано 200 баллов",
                "content": [
                    {"type": "text/plain", "value": "Вы получили «Бесплатный кофе»."},
                    {"type": "text/html", "value": "<p>Вы получили «Бесплатный кофе».</p>"}
                ],
                "custom_args": {"herald_delivery": "d-42"}
            })))
            .respond_with(ResponseTemplate::new(202).insert_header("X-Message-Id", "sg-abc123"))
            .expect(1)
            .mount(&server)
            .await;
        let sendgrid = SendGrid::new(&config(&server.uri())).unwrap();
        let receipt = sendgrid.send(&message("anna@example.com")).await.unwrap();
        assert_eq!(receipt.provider_message_id.as_deref(), Some("sg-abc123"));
    }

    async fn answer(status: u16, body: Value, retry_after: Option<&str>) -> ChannelError {
        let server = MockServer::start().await;
        let mut response = ResponseTemplate::new(status).set_body_json(body);
        if let Some(after) = retry_after {
            response = response.insert_header("Retry-After", after);
        }
        Mock::given(method("POST"))
            .and(path("/v3/mail/send"))
            .respond_with(response)
            .mount(&server)
            .await;
        SendGrid::new(&config(&server.uri()))
            .unwrap()
            .send(&message("anna@example.com"))
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn documented_errors_are_classified() {
        // 400 with SendGrid's error body: a field is wrong, never retried.
        let err = answer(
            400,
            json!({"errors": [{
                "message": "Does not contain a valid address.",
                "field": "personalizations.0.to.0.email",
                "help": "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html#message.personalizations.to"
            }]}),
            None,
        )
        .await;
        assert_eq!(
            err,
            ChannelError::permanent(
                "sendgrid: HTTP 400 Bad Request: personalizations.0.to.0.email: Does not contain a valid address."
            )
        );
        // 401: the key is wrong — misconfiguration, permanent.
        let err = answer(
            401,
            json!({"errors": [{"message": "The provided authorization grant is invalid, expired, or revoked", "field": null, "help": null}]}),
            None,
        )
        .await;
        assert!(matches!(err, ChannelError::Permanent { .. }), "{err:?}");
        assert!(err.reason().contains("authorization grant is invalid"));
        for status in [403, 413] {
            let err = answer(
                status,
                json!({"errors": [{"message": "no", "field": null, "help": null}]}),
                None,
            )
            .await;
            assert!(
                matches!(err, ChannelError::Permanent { .. }),
                "{status}: {err:?}"
            );
        }
        // 429 honours Retry-After.
        let err = answer(
            429,
            json!({"errors": [{"message": "too many requests", "field": null, "help": null}]}),
            Some("30"),
        )
        .await;
        assert_eq!(
            err,
            ChannelError::Transient {
                reason: "sendgrid: HTTP 429 Too Many Requests: too many requests".into(),
                retry_after: Some(Duration::from_secs(30)),
            }
        );
        let err = answer(503, json!({}), None).await;
        assert!(err.is_transient());
    }

    /// A key pair standing in for SendGrid's (it publishes no signed
    /// sample), and the signature it would send.
    pub(crate) fn signer() -> (p256::ecdsa::SigningKey, String) {
        use base64::Engine as _;
        use p256::pkcs8::EncodePublicKey as _;
        let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let der = key.verifying_key().to_public_key_der().unwrap();
        (
            key,
            base64::engine::general_purpose::STANDARD.encode(der.as_bytes()),
        )
    }

    pub(crate) fn sign(key: &p256::ecdsa::SigningKey, timestamp: &str, body: &[u8]) -> String {
        use base64::Engine as _;
        use p256::ecdsa::signature::Signer as _;
        let mut signed = timestamp.as_bytes().to_vec();
        signed.extend_from_slice(body);
        let signature: p256::ecdsa::Signature = key.sign(&signed);
        base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
    }

    #[test]
    fn event_webhook_signatures_are_verified() {
        let (key, public) = signer();
        let verifier = EventWebhookKey::parse(&public).unwrap();
        let body = br#"[{"email":"example@test.com","event":"delivered","sg_event_id":"rbtnWrG1DVDGGGFHFyun0A==","sg_message_id":"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0","timestamp":1600112492}]"#;
        let signature = sign(&key, "1600112502", body);
        assert!(verifier.verify(&signature, "1600112502", body));
        assert!(
            !verifier.verify(&signature, "1600112503", body),
            "timestamp is signed"
        );
        let mut tampered = body.to_vec();
        tampered[30] ^= 1;
        assert!(!verifier.verify(&signature, "1600112502", &tampered));
        assert!(!verifier.verify("bm90IGEgc2lnbmF0dXJl", "1600112502", body));
        // PEM-wrapped keys are accepted too.
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{public}\n-----END PUBLIC KEY-----\n");
        assert!(
            EventWebhookKey::parse(&pem)
                .unwrap()
                .verify(&signature, "1600112502", body)
        );
        assert_eq!(
            EventWebhookKey::parse("AAAA").unwrap_err().key,
            "webhook_public_key"
        );
        assert_eq!(
            message_id_of("14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0"),
            "14c5d75ce93.dfd.64b469"
        );
        assert_eq!(
            message_id_of("W86EgYT6SQKk0lRflfLRsA.filter0425p1las1-4566-5B2C3D22-1.0"),
            "W86EgYT6SQKk0lRflfLRsA"
        );
    }

    #[tokio::test]
    async fn no_answer_is_transient_and_bad_input_is_refused_before_sending() {
        // A port nobody listens on: connection refused.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let sendgrid = SendGrid::new(&config(&dead)).unwrap();
        assert!(
            sendgrid
                .send(&message("anna@example.com"))
                .await
                .unwrap_err()
                .is_transient()
        );
        let err = sendgrid.send(&message("not an address")).await.unwrap_err();
        assert!(matches!(err, ChannelError::Permanent { .. }));
        assert!(
            !err.reason().contains("not an address"),
            "addresses are masked"
        );

        let mut bad = config("https://api.sendgrid.com");
        bad.api_key = String::new();
        assert_eq!(SendGrid::new(&bad).unwrap_err().key, "api_key");
        let mut bad = config("mailto:x");
        bad.api_key = "k".into();
        assert_eq!(SendGrid::new(&bad).unwrap_err().key, "base_url");
        assert!(!format!("{:?}", config("http://x")).contains("SG.test-key"));
    }
}

#[cfg(test)]
mod unsubscribe_tests {
    use super::*;
    use herald_core::channel::Address;

    #[test]
    fn an_unsubscribe_link_travels_as_both_headers() {
        let sendgrid = SendGrid::new(&SendGridConfig {
            base_url: "https://api.sendgrid.com".to_owned(),
            api_key: "SG.test-key".to_owned(),
            from: "Herald <no-reply@herald.test>".to_owned(),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        })
        .unwrap();
        let mut message = RenderedMessage {
            channel: ChannelKind::Email,
            to: Address::Email {
                email: "anna@example.com".to_owned(),
            },
            subject: Some("s".into()),
            text: "t".into(),
            html: None,
            data: json!({}),
            idempotency_key: "d-42".into(),
            list_unsubscribe: None,
        };
        assert!(sendgrid.body(&message).unwrap().get("headers").is_none());
        message.list_unsubscribe = Some("https://herald.test/u/abc".into());
        assert_eq!(
            sendgrid.body(&message).unwrap()["headers"],
            json!({
                "List-Unsubscribe": "<https://herald.test/u/abc>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            })
        );
    }
}
