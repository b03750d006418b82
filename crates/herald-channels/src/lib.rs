//! Herald's transports: one module per provider, each implementing
//! [`herald_core::Channel`] — SMTP and SendGrid for email, Twilio for SMS,
//! FCM HTTP v1 and Web Push for push, and the development outbox.
//!
//! The crate is part of the workspace layout from the start so that the
//! dependency order (`core` ← `channels` ← `delivery` ← `server`) is fixed;
//! its transports arrive with the delivery pipeline that drives them.
