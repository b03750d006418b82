//! Unsubscribe links in the messages workers send.
//!
//! Every email and SMS that is not mandatory carries a link that turns its
//! category × channel off for its recipient without signing in
//! (`{public_url}/u/{token}`, see `herald_core::unsubscribe`). The token is
//! made when the message is rendered and lives for `ttl`; push carries none.

use std::time::Duration;

use chrono::{DateTime, Utc};
use herald_core::unsubscribe::{Signer, Unsubscribe};
use herald_core::{ChannelKind, DeliveryId, UserId};

/// Where links point and how they are signed.
#[derive(Debug, Clone)]
pub struct Links {
    pub signer: Signer,
    /// Herald's public base URL (`server.public_url`), without a trailing slash.
    pub base_url: String,
    /// How long a link works.
    pub ttl: Duration,
}

impl Links {
    /// The link for one message, or `None` for a channel that carries none.
    pub fn url(
        &self,
        recipient: &UserId,
        category: &str,
        channel: ChannelKind,
        delivery: DeliveryId,
        now: DateTime<Utc>,
    ) -> Option<String> {
        if !matches!(channel, ChannelKind::Email | ChannelKind::Sms) {
            return None;
        }
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let token = self.signer.sign(&Unsubscribe {
            user: recipient.clone(),
            category: category.to_owned(),
            channel,
            delivery: Some(delivery),
            expires_at: now.timestamp().saturating_add(ttl),
        });
        Some(format!("{}/u/{token}", self.base_url.trim_end_matches('/')))
    }
}
