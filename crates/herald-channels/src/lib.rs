//! Herald's transports: one module per provider, each implementing
//! [`herald_core::Channel`].
//!
//! | module | owns |
//! |---|---|
//! | [`outbox`] | the development outbox: every message as a file under `data/outbox` |
//! | [`smtp`] | email over SMTP (lettre, pooled; TLS, STARTTLS or plain) |
//! | [`sendgrid`] | email through SendGrid's v3 Mail Send API |
//! | [`twilio`] | SMS through Twilio's Messages API |
//! | [`fcm`] | push through Firebase Cloud Messaging's HTTP v1 API (OAuth2 service account) |
//! | [`webpush`] | push to browsers: Web Push with RFC 8291 encryption and VAPID |
//! | [`push`] | one push channel over FCM tokens and Web Push subscriptions |
//! | [`email`] | building RFC 5322 messages (shared by the outbox and SMTP) |
//! | [`http`] | the pooled HTTP client and the failure classes HTTP providers share |
//! | [`mask`] | masking of addresses for logs |
//! | [`error`] | [`Error`]: a transport whose configuration is unusable |
//!
//! A transport sends one rendered message and classifies its own failures
//! (transient, permanent, or the address is gone); retrying is the delivery
//! pipeline's business. Construction checks everything that can be checked
//! without sending, so a broken channel stops the start.

pub mod email;
pub mod error;
pub mod fcm;
pub mod http;
pub mod mask;
pub mod outbox;
pub mod push;
pub mod sendgrid;
pub mod smtp;
pub mod twilio;
pub mod webpush;

pub use error::Error;
pub use fcm::{Fcm, FcmConfig};
pub use outbox::Outbox;
pub use push::PushRouter;
pub use sendgrid::{SendGrid, SendGridConfig};
pub use smtp::{Security, Smtp, SmtpConfig};
pub use twilio::{Twilio, TwilioConfig};
pub use webpush::{WebPush, WebPushConfig};
