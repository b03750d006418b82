//! Herald's domain, with no I/O.
//!
//! Everything here is pure: given the same inputs it answers the same way, so
//! the rest of Herald (storage, HTTP, queues, sockets) can be tested around it
//! and the policy itself can be tested with properties.
//!
//! | module | owns |
//! |---|---|
//! | [`ids`] | id newtypes and how an idempotency key becomes an event id |
//! | [`catalog`] | the event catalog: typed payloads with the seed's field names, validation |
//! | [`channel`] | the [`Channel`] trait every transport implements, [`RenderedMessage`], [`ChannelError`] |
//! | [`preferences`] | a user's notification preferences and quiet hours |
//! | [`smart`] | digests, throttles, holds and escalation steps: when a delivery falls due, and why |
//! | [`routing`] | the routing table (`config/routing.toml`) and the policy that turns an event plus preferences into rooms, inbox entries and deliveries |
//! | [`auth`] | roles and the claims a token carries |
//! | [`input`] | limits every input obeys whatever its shape: no NUL in text, integers JavaScript reads exactly, instants up to year 9999 |
//! | [`problem`] | the table of HTTP error codes ([`problem::Code`]), with their statuses and titles |
//! | [`realtime`] | the [`realtime::Broadcast`] seam through which events reach live sockets |
//! | [`unsubscribe`] | signed, expiring one-click unsubscribe tokens: one recipient × category × channel |
//! | [`retry`] | the one backoff policy of every retry (exponential, full jitter, optional attempt limit) and `Retry-After` |
//! | [`error`] | the crate's error type |

pub mod auth;
pub mod catalog;
pub mod channel;
pub mod error;
pub mod ids;
pub mod input;
pub mod preferences;
pub mod problem;
pub mod realtime;
pub mod retry;
pub mod routing;
pub mod smart;
pub mod unsubscribe;

pub use auth::Role;
pub use catalog::{EventKind, ValidatedEvent};
pub use channel::{Channel, ChannelError, ChannelKind, RenderedMessage};
pub use error::{Error, ValidationError};
pub use ids::{DeliveryId, EventId, NotificationId, UserId};
pub use preferences::{Locale, Preferences, QuietHours};
pub use retry::Backoff;
pub use routing::{Decision, Reason, RoutingTable, SharedRouting};
