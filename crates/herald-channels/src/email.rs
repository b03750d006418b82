//! The one way Herald turns a rendered message into an RFC 5322 email:
//! multipart/alternative text + HTML (text only when there is no HTML),
//! UTF-8 headers encoded per RFC 2047, a Message-ID derived from the
//! delivery so a retried send is recognisably the same message. The
//! outbox writes it to a file; SMTP sends it.

use herald_core::channel::Address;
use herald_core::{ChannelError, RenderedMessage};
use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};

use crate::mask::mask;

/// The recipient of an email message, or a permanent error.
pub fn recipient(message: &RenderedMessage) -> Result<Mailbox, ChannelError> {
    let Address::Email { email } = &message.to else {
        return Err(ChannelError::permanent("an email needs an email address"));
    };
    email
        .parse()
        .map_err(|e| ChannelError::permanent(format!("invalid address {}: {e}", mask(&message.to))))
}

/// Builds the message. `id_domain` is the right-hand side of Message-ID.
pub fn build(
    from: &Mailbox,
    message: &RenderedMessage,
    id_domain: &str,
) -> Result<lettre::Message, ChannelError> {
    let builder = lettre::Message::builder()
        .from(from.clone())
        .to(recipient(message)?)
        .subject(message.subject.clone().unwrap_or_default())
        .message_id(Some(format!("<{}@{id_domain}>", message.idempotency_key)));
    match &message.html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(
            message.text.clone(),
            html.clone(),
        )),
        None => builder.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(message.text.clone()),
        ),
    }
    .map_err(|e| ChannelError::permanent(format!("cannot build the email: {e}")))
}

/// Parses a configured sender (`Herald <no-reply@example.com>`).
pub fn sender(from: &str) -> Result<Mailbox, crate::Error> {
    from.parse()
        .map_err(|e| crate::Error::new("email_from", format!("`{from}` is not a mailbox: {e}")))
}
