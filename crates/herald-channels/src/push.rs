//! One push channel over both kinds of device: a user may have a phone
//! (an FCM token) and a browser (a Web Push subscription), and the
//! delivery pipeline sends to every device through the one push transport.
//! [`PushRouter`] hands each address to the transport for its kind.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::channel::{Address, Receipt};
use herald_core::{Channel, ChannelError, ChannelKind, RenderedMessage};

/// Routes FCM tokens to one transport and Web Push subscriptions to another.
#[derive(Debug, Clone)]
pub struct PushRouter {
    pub fcm: Option<Arc<dyn Channel>>,
    pub webpush: Option<Arc<dyn Channel>>,
    name: String,
}

impl PushRouter {
    pub fn new(fcm: Option<Arc<dyn Channel>>, webpush: Option<Arc<dyn Channel>>) -> PushRouter {
        let name = [fcm.as_ref(), webpush.as_ref()]
            .into_iter()
            .flatten()
            .map(|c| c.provider().to_owned())
            .collect::<Vec<_>>()
            .join("+");
        PushRouter { fcm, webpush, name }
    }
}

#[async_trait]
impl Channel for PushRouter {
    fn kind(&self) -> ChannelKind {
        ChannelKind::Push
    }

    fn provider(&self) -> &str {
        &self.name
    }

    async fn check(&self) -> Result<(), String> {
        for transport in [&self.fcm, &self.webpush].into_iter().flatten() {
            transport.check().await?;
        }
        Ok(())
    }

    async fn send(&self, message: &RenderedMessage) -> Result<Receipt, ChannelError> {
        let transport = match &message.to {
            Address::Fcm { .. } => self.fcm.as_ref(),
            Address::WebPush { .. } => self.webpush.as_ref(),
            _ => return Err(ChannelError::permanent("push needs a device address")),
        };
        match transport {
            Some(t) => t.send(message).await,
            None => Err(ChannelError::permanent(format!(
                "no push transport is configured for this device ({})",
                match &message.to {
                    Address::Fcm { .. } => "FCM; add fcm to channels.push",
                    _ => "Web Push; add webpush to channels.push",
                }
            ))),
        }
    }
}
