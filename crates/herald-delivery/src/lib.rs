//! Herald's delivery pipeline: email, SMS and push, from scheduled to sent.
//!
//! | module | owns |
//! |---|---|
//! | [`queue`] | apalis jobs over SQLite (embedded) or Redis (scale-out); running workers |
//! | [`dispatch`] | attempts a batch at a time: claim, expire, decide again, render, send, record with the trace, report failures |
//! | [`providers`] | provider chains per channel: failover, circuit breakers, rate limits (per node or shared through Redis) |
//! | [`retry`] | the `[delivery.retry]` settings, per channel, of the backoff policy in `herald_core::retry` |
//! | [`sweeper`] | re-enqueues what the queue lost and what dead workers left; purges finished jobs |
//! | [`templates`] | localized message templates, rendered with minijinja |
//! | [`unsubscribe`] | the signed unsubscribe link of each email and SMS that is not mandatory |
//! | [`sms`] | SMS segment counting (GSM-7 / UCS-2) |
//! | [`metrics`] | delivery outcomes as Prometheus metrics |
//! | [`clock`] | injectable time |
//! | [`tracecontext`] | the W3C traceparent that carries a publish's trace across the queue |
//!
//! The database is the source of truth: ingest writes each delivery in the
//! same transaction as its event, the queue only carries ids, and every
//! state change is a compare-and-set on the delivery row. The inbox text
//! of every notification is also rendered here, at ingest, in the
//! recipient's locale.

pub mod clock;
pub mod dispatch;
pub mod metrics;
pub mod providers;
pub mod queue;
pub mod retry;
pub mod sms;
pub mod sweeper;
pub mod templates;
pub mod tracecontext;
pub mod unsubscribe;

pub use clock::{Clock, ManualClock, SystemClock};
pub use dispatch::{Channels, Dispatcher, Outcome};
pub use metrics::DeliveryMetrics;
pub use providers::ProviderChain;
pub use queue::Queue;
pub use retry::{RetryPolicy, RetrySettings};
pub use sweeper::Sweeper;
pub use templates::{DigestText, InboxText, Rendered, Templates};

/// Errors of the delivery pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A template is missing, does not parse, or failed to render.
    #[error("template {name}: {source}")]
    Template {
        name: String,
        #[source]
        source: minijinja::Error,
    },
    #[error("templates directory {dir}: {source}")]
    TemplateDir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Store(#[from] herald_store::Error),
    #[error("queue: {0}")]
    Queue(String),
}
