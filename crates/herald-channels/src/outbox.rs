//! The development outbox: instead of sending, write each message to a
//! file under a directory (`data/outbox` by default) so a newcomer can open
//! everything Herald would have sent.
//!
//! Email becomes an `.eml` file (a complete RFC 5322 message, multipart
//! text + HTML, that any mail client opens); SMS and push become JSON.
//! Files are written to a temporary name and renamed, so a reader never
//! sees half a message. The file name is the provider message id.

use std::path::PathBuf;

use async_trait::async_trait;
use herald_core::channel::Receipt;
use herald_core::{Channel, ChannelError, ChannelKind, RenderedMessage};
use lettre::message::Mailbox;
use serde_json::json;

use crate::mask::mask;

/// One outbox per channel kind; all may share a directory.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
    kind: ChannelKind,
    from: Mailbox,
}

impl Outbox {
    /// `from` is the sender shown on outbox emails (`Herald <no-reply@…>`).
    pub fn new(dir: impl Into<PathBuf>, kind: ChannelKind, from: &str) -> Result<Outbox, String> {
        let from = crate::email::sender(from).map_err(|e| e.message)?;
        Ok(Outbox {
            dir: dir.into(),
            kind,
            from,
        })
    }

    fn email(&self, message: &RenderedMessage) -> Result<Vec<u8>, ChannelError> {
        Ok(crate::email::build(&self.from, message, "herald.outbox")?.formatted())
    }
}

#[async_trait]
impl Channel for Outbox {
    /// The directory exists (or can be made).
    async fn check(&self) -> Result<(), String> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| format!("outbox {}: {e}", self.dir.display()))
    }

    fn kind(&self) -> ChannelKind {
        self.kind
    }

    fn provider(&self) -> &str {
        "outbox"
    }

    async fn send(&self, message: &RenderedMessage) -> Result<Receipt, ChannelError> {
        let (bytes, ext) = match self.kind {
            ChannelKind::Email => (self.email(message)?, "eml"),
            _ => {
                let doc = json!({
                    "channel": message.channel,
                    "to": message.to,
                    "subject": message.subject,
                    "text": message.text,
                    "data": message.data,
                    "idempotencyKey": message.idempotency_key,
                });
                (
                    serde_json::to_vec_pretty(&doc).expect("JSON serialises"),
                    "json",
                )
            }
        };
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let name = format!("{stamp}-{}-{}.{ext}", self.kind, message.idempotency_key);
        let io = |e: std::io::Error| {
            ChannelError::transient(format!("outbox {}: {e}", self.dir.display()))
        };
        tokio::fs::create_dir_all(&self.dir).await.map_err(io)?;
        let tmp = self.dir.join(format!(".{name}.tmp"));
        tokio::fs::write(&tmp, &bytes).await.map_err(io)?;
        tokio::fs::rename(&tmp, self.dir.join(&name))
            .await
            .map_err(io)?;
        tracing::info!(channel = %self.kind, to = %mask(&message.to), file = %name, "written to the outbox");
        Ok(Receipt {
            provider_message_id: Some(name),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::channel::Address;

    fn message(channel: ChannelKind, to: Address) -> RenderedMessage {
        RenderedMessage {
            channel,
            to,
            subject: Some("Списано 200 баллов".into()),
            text: "Вы получили «Бесплатный кофе».".into(),
            html: Some("<p>Вы получили «Бесплатный кофе».</p>".into()),
            data: json!({"event": "points_redeemed"}),
            idempotency_key: "d-1".into(),
        }
    }

    #[tokio::test]
    async fn emails_become_eml_files_with_encoded_headers() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(
            dir.path(),
            ChannelKind::Email,
            "Herald <no-reply@herald.test>",
        )
        .unwrap();
        let receipt = outbox
            .send(&message(
                ChannelKind::Email,
                Address::Email {
                    email: "anna@example.com".into(),
                },
            ))
            .await
            .unwrap();
        let name = receipt.provider_message_id.unwrap();
        assert!(name.ends_with("-email-d-1.eml"));
        let eml = std::fs::read_to_string(dir.path().join(&name)).unwrap();
        assert!(eml.contains("To: anna@example.com"), "{eml}");
        // RFC 2047: the Cyrillic subject is encoded, not raw.
        assert!(eml.contains("Subject: =?utf-8?b?"), "{eml}");
        assert!(eml.contains("multipart/alternative"));
        assert!(eml.contains("Message-ID: <d-1@herald.outbox>"));
    }

    #[tokio::test]
    async fn sms_and_push_become_json_and_bad_addresses_are_permanent() {
        let dir = tempfile::tempdir().unwrap();
        let sms = Outbox::new(dir.path(), ChannelKind::Sms, "h@herald.test").unwrap();
        let receipt = sms
            .send(&message(
                ChannelKind::Sms,
                Address::Phone {
                    phone: "+79161234567".into(),
                },
            ))
            .await
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(receipt.provider_message_id.unwrap())).unwrap(),
        )
        .unwrap();
        assert_eq!(doc["to"]["phone"], "+79161234567");
        let email = Outbox::new(dir.path(), ChannelKind::Email, "h@herald.test").unwrap();
        let err = email
            .send(&message(
                ChannelKind::Email,
                Address::Email {
                    email: "not an address".into(),
                },
            ))
            .await
            .unwrap_err();
        assert!(!err.is_transient());
        // Nothing half-written is left behind.
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp"))
        );
    }
}
