//! Rows as Herald sees them. Serialised in the REST API's camelCase.

use herald_core::ids::DeviceId;
use herald_core::preferences::Contact;
use herald_core::{ChannelKind, DeliveryId, EventId, EventKind, NotificationId, Role, UserId};
use serde::{Deserialize, Serialize};

/// An accepted event, as its producer is told about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    pub id: EventId,
    pub event: EventKind,
    pub received_at: i64,
}

/// What ingest did with one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// New: its inbox entries and deliveries were written.
    Accepted(EventRecord),
    /// Published before with the same payload: nothing was written.
    Duplicate(EventRecord),
}

impl Ingested {
    pub fn record(&self) -> &EventRecord {
        match self {
            Ingested::Accepted(r) | Ingested::Duplicate(r) => r,
        }
    }
}

/// An event to write, with everything it owes.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: EventId,
    pub key: Option<String>,
    pub kind: EventKind,
    /// The payload, serialised once.
    pub payload: String,
    pub hash: String,
    pub received_at: i64,
    /// The W3C `traceparent` of the publish, when traces are on: delivery
    /// attempts continue its trace.
    pub traceparent: Option<String>,
    pub notifications: Vec<NewNotification>,
    /// For a scheduled event (`sendAt`): when it is released, and the
    /// rooms it then fans out to. Its open deliveries fall due then too.
    pub schedule: Option<Schedule>,
    /// An address the event names for a user who may have none on file
    /// (`guest_registered`'s guest): written with the event, only where
    /// Herald has no address for them.
    pub fill_email: Option<EmailFill>,
}

/// See [`NewEvent::fill_email`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailFill {
    pub user: UserId,
    pub email: String,
}

/// When a scheduled event is released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// `sendAt` (epoch ms).
    pub at: i64,
    /// The realtime rooms of its route.
    pub rooms: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct NewNotification {
    pub id: NotificationId,
    pub recipient: UserId,
    pub title: String,
    pub body: String,
    /// False when the user opted out of the inbox but is owed other channels.
    pub in_inbox: bool,
    pub deliveries: Vec<NewDelivery>,
}

#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: DeliveryId,
    pub channel: ChannelKind,
    pub status: DeliveryStatus,
    /// The routing decision's reason (`routing_default`, `channel_off`, …).
    pub reason: String,
    /// For deferred deliveries, no earlier than this (epoch ms).
    pub next_attempt_at: Option<i64>,
    /// The digest a deferred delivery waits for (`quiet`, a category); it
    /// goes out at `next_attempt_at`, folded with the others of its key.
    pub digest_key: Option<String>,
    /// `recipient` or `anyone`: skip it (`seen`) if the event was read by
    /// then (see the `smart_delivery` migration).
    pub seen_check: Option<String>,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for a worker.
    Pending,
    /// Held back by quiet hours until `nextAttemptAt`.
    Deferred,
    /// Not sent, by the user's preferences or for want of an address.
    Suppressed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Deferred => "deferred",
            DeliveryStatus::Suppressed => "suppressed",
        }
    }
}

/// An inbox entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub id: NotificationId,
    /// Per-recipient, strictly increasing: the inbox's sync cursor.
    pub seq: i64,
    pub event_id: EventId,
    pub event: String,
    pub category: String,
    pub title: String,
    pub body: String,
    pub data: serde_json::Value,
    pub read: bool,
    pub read_at: Option<i64>,
    pub created_at: i64,
}

/// One delivery's current state, for the decision trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    pub id: DeliveryId,
    pub recipient: String,
    pub channel: String,
    pub status: String,
    pub reason: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<i64>,
    pub provider_message_id: Option<String>,
    /// The provider that handled the last attempt.
    pub provider: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// The digest it waits for (`quiet`, a category), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest_key: Option<String>,
    /// Folded into a digest (`digested`): the delivery that carried it. On
    /// that carrier, its own id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest_id: Option<DeliveryId>,
    /// Everything that happened to the delivery, oldest first.
    pub trace: Vec<TraceEntry>,
}

/// One step in a delivery's trace (the `delivery_trace` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceEntry {
    /// When (epoch ms).
    pub at: i64,
    /// The attempt the step belongs to; 0 outside an attempt (a re-drive).
    pub attempt: i64,
    /// `attempt`, `failover`, `breaker_open`, `throttled`, `expired`,
    /// `redrive`, `scheduled`, `cancel`, `unsubscribe`.
    pub step: String,
    pub provider: Option<String>,
    /// `sent`, `retrying`, `failed`, `pending`, …
    pub outcome: Option<String>,
    /// The reason, the provider's error, or why a provider was skipped.
    pub detail: Option<String>,
    /// Who asked, for a re-drive or a cancel: `admin:{sub}`, `service:{sub}`,
    /// `user:{sub}`, `cli`; `recipient` for an unsubscribe link.
    pub actor: Option<String>,
}

/// A user's contact details and directory entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContactRecord {
    #[serde(flatten)]
    pub contact: Contact,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restaurant_id: Option<String>,
}

/// A push target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Fcm,
    Webpush,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Fcm => "fcm",
            DeviceKind::Webpush => "webpush",
        }
    }
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub id: DeviceId,
    pub kind: DeviceKind,
    /// The FCM registration token, or the Web Push endpoint.
    pub token: String,
    /// The whole Web Push subscription (`endpoint`, `keys.p256dh`, `keys.auth`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription: Option<serde_json::Value>,
    pub created_at: i64,
}
