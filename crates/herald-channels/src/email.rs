//! The one way Herald turns a rendered message into an RFC 5322 email:
//! multipart/alternative text + HTML (text only when there is no HTML),
//! UTF-8 headers encoded per RFC 2047, a Message-ID derived from the
//! delivery so a retried send is recognisably the same message, and, when
//! the message has an unsubscribe link, `List-Unsubscribe` with
//! `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 2369, RFC 8058),
//! so mail clients offer their own unsubscribe button. The outbox writes
//! it to a file; SMTP sends it.

use herald_core::channel::Address;
use herald_core::{ChannelError, RenderedMessage};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};

use crate::mask::mask;

/// RFC 2369's header: where to unsubscribe (an HTTPS URL, in angle brackets).
pub const LIST_UNSUBSCRIBE: &str = "List-Unsubscribe";
/// RFC 8058's header: the URL takes a one-click POST.
pub const LIST_UNSUBSCRIBE_POST: &str = "List-Unsubscribe-Post";
/// RFC 8058's only value of `List-Unsubscribe-Post`, and the body of the POST.
pub const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

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
    let builder = match &message.list_unsubscribe {
        Some(url) => builder
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(LIST_UNSUBSCRIBE),
                format!("<{url}>"),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str(LIST_UNSUBSCRIBE_POST),
                ONE_CLICK.to_owned(),
            )),
        None => builder,
    };
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
