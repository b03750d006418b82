//! The development outbox: instead of sending, write each message to a
//! file under a directory (`data/outbox` by default) so a newcomer can open
//! everything Herald would have sent.
//!
//! Email becomes an `.eml` file (a complete RFC 5322 message, multipart
//! text + HTML, that any mail client opens); SMS and push become JSON.
//! Files are written to a temporary name and renamed, so a reader never
//! sees half a message. The file name is the provider message id:
//! `{UTC stamp}-{channel}-{delivery id}[.{address index}].{eml|json}`, so
//! the files of a delivery are found by name alone ([`delivery_of`]), which
//! is how a user's erase finds theirs ([`remove_deliveries`]); old files go
//! by age ([`remove_older_than`]).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

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

/// The delivery a file of the outbox belongs to, read from its name;
/// `None` for a name the outbox does not write.
pub fn delivery_of(name: &str) -> Option<&str> {
    let stem = name
        .strip_suffix(".eml")
        .or_else(|| name.strip_suffix(".json"))?;
    let (_stamp, rest) = stem.split_once('-')?;
    let (_channel, key) = rest.split_once('-')?;
    // `{delivery}.{i}` when the message went to several addresses.
    let delivery = key.split('.').next()?;
    (!delivery.is_empty()).then_some(delivery)
}

/// Deletes the outbox files of `deliveries` in `dir` (one pass over the
/// directory); how many went. A missing directory holds nothing.
pub fn remove_deliveries(
    dir: &Path,
    deliveries: &std::collections::HashSet<String>,
) -> std::io::Result<u64> {
    if deliveries.is_empty() {
        return Ok(0);
    }
    remove_where(dir, usize::MAX, |name, _| {
        delivery_of(name).is_some_and(|d| deliveries.contains(d))
    })
}

/// Deletes at most `limit` outbox files in `dir` last written before
/// `before` (and temporary files a crash left behind); how many went.
pub fn remove_older_than(dir: &Path, before: SystemTime, limit: usize) -> std::io::Result<u64> {
    remove_where(dir, limit, |name, meta| {
        let ours = delivery_of(name).is_some() || (name.starts_with('.') && name.ends_with(".tmp"));
        ours && meta.modified().is_ok_and(|at| at < before)
    })
}

fn remove_where(
    dir: &Path,
    limit: usize,
    mut matches: impl FnMut(&str, &std::fs::Metadata) -> bool,
) -> std::io::Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        if removed as usize >= limit {
            break;
        }
        let entry = entry?;
        let meta = entry.metadata()?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if meta.is_file() && matches(name, &meta) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                // Another node (or an erase) took it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::channel::Address;

    #[test]
    fn file_names_say_their_delivery() {
        let d = "0193a0c2-7c1e-7e3a-9a55-1b2c3d4e5f60";
        assert_eq!(
            delivery_of(&format!("20261126T203000.123Z-email-{d}.eml")),
            Some(d)
        );
        assert_eq!(
            delivery_of(&format!("20261126T203000.123Z-push-{d}.1.json")),
            Some(d)
        );
        assert_eq!(delivery_of("notes.txt"), None);
        assert_eq!(
            delivery_of(&format!(".20261126T203000.123Z-sms-{d}.json.tmp")),
            None
        );
    }

    #[tokio::test]
    async fn files_go_by_delivery_and_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::new(dir.path(), ChannelKind::Sms, "h@herald.test").unwrap();
        let mut sms = message(
            ChannelKind::Sms,
            Address::Phone {
                phone: "+79161234567".into(),
            },
        );
        for key in ["d-1", "d-2", "d-3.0", "d-3.1"] {
            sms.idempotency_key = key.into();
            outbox.send(&sms).await.unwrap();
        }
        std::fs::write(dir.path().join("README"), "not ours").unwrap();
        let erase = ["d-3".to_owned()].into_iter().collect();
        assert_eq!(remove_deliveries(dir.path(), &erase).unwrap(), 2);
        assert_eq!(remove_deliveries(dir.path(), &erase).unwrap(), 0);
        let past = SystemTime::now() - std::time::Duration::from_secs(3600);
        assert_eq!(remove_older_than(dir.path(), past, 10).unwrap(), 0);
        let future = SystemTime::now() + std::time::Duration::from_secs(3600);
        assert_eq!(remove_older_than(dir.path(), future, 1).unwrap(), 1);
        assert_eq!(remove_older_than(dir.path(), future, 10).unwrap(), 1);
        // Only the file that is not the outbox's is left.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
        assert_eq!(
            remove_older_than(&dir.path().join("missing"), future, 10).unwrap(),
            0
        );
    }

    fn message(channel: ChannelKind, to: Address) -> RenderedMessage {
        RenderedMessage {
            channel,
            to,
            subject: Some("Списано 200 баллов".into()),
            text: "Вы получили «Бесплатный кофе».".into(),
            html: Some("<p>Вы получили «Бесплатный кофе».</p>".into()),
            data: json!({"event": "points_redeemed"}),
            idempotency_key: "d-1".into(),
            list_unsubscribe: None,
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
