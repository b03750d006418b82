//! The seam between Herald and the outside world's transports.
//!
//! A [`Channel`] sends one already-rendered message to one address and says
//! how it went. It classifies its own failures: only the transport knows that
//! an HTTP 429 means "later" and a 400 means "never". What to do about a
//! failure (retry, give up, tell the user) is the delivery pipeline's call.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A way of reaching a person.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// The notification centre (inbox).
    InApp,
    /// A live socket. Rooms, not preferences, decide who gets it.
    Realtime,
    Email,
    Sms,
    Push,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 5] = [
        ChannelKind::InApp,
        ChannelKind::Realtime,
        ChannelKind::Email,
        ChannelKind::Sms,
        ChannelKind::Push,
    ];

    /// The channels a user's preferences can switch (contract §5).
    pub const PREFERENCE: [ChannelKind; 4] = [
        ChannelKind::InApp,
        ChannelKind::Email,
        ChannelKind::Sms,
        ChannelKind::Push,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::InApp => "in_app",
            ChannelKind::Realtime => "realtime",
            ChannelKind::Email => "email",
            ChannelKind::Sms => "sms",
            ChannelKind::Push => "push",
        }
    }

    pub fn parse(s: &str) -> Option<ChannelKind> {
        ChannelKind::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Channels that leave Herald through a provider, and so go through the
    /// delivery queue.
    pub fn is_external(self) -> bool {
        matches!(
            self,
            ChannelKind::Email | ChannelKind::Sms | ChannelKind::Push
        )
    }

    /// Channels that wake a person up; quiet hours hold them back.
    pub fn is_intrusive(self) -> bool {
        matches!(self, ChannelKind::Sms | ChannelKind::Push)
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Address {
    Email {
        email: String,
    },
    Phone {
        phone: String,
    },
    /// An FCM registration token.
    Fcm {
        token: String,
    },
    /// A Web Push subscription (RFC 8030 endpoint with RFC 8291 keys).
    WebPush {
        endpoint: String,
        p256dh: String,
        auth: String,
    },
}

/// A message rendered for one recipient in their locale, ready to send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenderedMessage {
    pub channel: ChannelKind,
    pub to: Address,
    /// Email subject or push title.
    pub subject: Option<String>,
    /// Plain text: the email's text part, the SMS, the push body.
    pub text: String,
    /// The email's HTML part.
    pub html: Option<String>,
    /// Structured data for push payloads.
    pub data: serde_json::Value,
    /// Stable per delivery, so a provider that supports it can dedupe retries.
    pub idempotency_key: String,
    /// For an email: the one-click unsubscribe URL, sent as
    /// `List-Unsubscribe` with `List-Unsubscribe-Post` (RFC 8058). `None`
    /// for mandatory messages and for other channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_unsubscribe: Option<String>,
}

/// What a provider said when it accepted a message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The provider's id for the message, for status webhooks and support.
    pub provider_message_id: Option<String>,
}

/// Why a send failed, classified where the failure is understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Worth trying again: rate limits, 5xx, timeouts, resets.
    #[error("transient: {reason}")]
    Transient {
        reason: String,
        /// The provider's own hint (`Retry-After`), if it gave one.
        retry_after: Option<Duration>,
    },
    /// Never going to work: bad address, unregistered token, misconfiguration.
    #[error("permanent: {reason}")]
    Permanent { reason: String },
    /// Permanent, and the address itself no longer exists: an FCM token
    /// that is unregistered, a Web Push subscription that expired. The
    /// pipeline forgets the device so no later message tries it again.
    #[error("address gone: {reason}")]
    Gone { reason: String },
}

impl ChannelError {
    pub fn transient(reason: impl Into<String>) -> Self {
        ChannelError::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }

    pub fn permanent(reason: impl Into<String>) -> Self {
        ChannelError::Permanent {
            reason: reason.into(),
        }
    }

    pub fn gone(reason: impl Into<String>) -> Self {
        ChannelError::Gone {
            reason: reason.into(),
        }
    }

    /// The reason, whatever the class.
    pub fn reason(&self) -> &str {
        match self {
            ChannelError::Transient { reason, .. }
            | ChannelError::Permanent { reason }
            | ChannelError::Gone { reason } => reason,
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, ChannelError::Transient { .. })
    }
}

/// A transport. Implementations are cheap to share (`Arc<dyn Channel>`) and
/// reuse their connections across sends.
#[async_trait]
pub trait Channel: Send + Sync + fmt::Debug {
    /// Which kind of channel this transport serves.
    fn kind(&self) -> ChannelKind;

    /// The provider's name for logs and traces (`smtp`, `twilio`, `outbox`).
    fn provider(&self) -> &str;

    /// Sends one message.
    async fn send(&self, message: &RenderedMessage) -> Result<Receipt, ChannelError>;

    /// Whether the transport can work right now (a server answers, the
    /// credentials are accepted), without sending anything. Herald asks at
    /// start and on `/readyz`, so a broken provider shows before the first
    /// send. Transports with no cheap probe say yes.
    async fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Null;

    #[async_trait]
    impl Channel for Null {
        fn kind(&self) -> ChannelKind {
            ChannelKind::Email
        }
        fn provider(&self) -> &str {
            "null"
        }
        async fn send(&self, _: &RenderedMessage) -> Result<Receipt, ChannelError> {
            Err(ChannelError::permanent("nowhere to send"))
        }
    }

    #[test]
    fn channel_is_object_safe_and_kinds_round_trip() {
        let channel: std::sync::Arc<dyn Channel> = std::sync::Arc::new(Null);
        assert_eq!(channel.kind(), ChannelKind::Email);
        for kind in ChannelKind::ALL {
            assert_eq!(ChannelKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
        }
        assert!(!ChannelError::permanent("x").is_transient());
    }
}
