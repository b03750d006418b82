//! Herald's transports: one module per provider, each implementing
//! [`herald_core::Channel`].
//!
//! | module | owns |
//! |---|---|
//! | [`outbox`] | the development outbox: every message as a file under `data/outbox` |
//! | [`mask`] | masking of addresses for logs |
//!
//! A transport sends one rendered message and classifies its own failures
//! (transient or permanent); retrying is the delivery pipeline's business.

pub mod mask;
pub mod outbox;

pub use outbox::Outbox;
