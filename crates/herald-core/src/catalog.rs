//! The event catalog (contract §4): every event a producer may publish, as a
//! typed payload with the seed's camelCase field names.
//!
//! Validation is deserialisation plus a few rules serde cannot express
//! (amounts from 0 to 2^53 − 1, instants from 1970 to year 9999, non-empty
//! names). Unknown fields are rejected, so a typo in an optional field
//! (`descripton`) is caught instead of dropped.
//! Every error names its field relative to the envelope (`data.amount`).
//!
//! Each payload also derives its JSON Schema ([`EventKind::schema`]); the
//! `schemars` attributes on its fields state the `check` rules as schema
//! constraints, so the schema says what validation accepts.

use std::fmt;

use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::channel::ChannelKind;
use crate::error::ValidationError;
use crate::input;

pub mod introspect;

/// Longest free-text field (titles, messages, names).
const MAX_TEXT: usize = 2_000;
/// Longest embedded blob (a card's QR code as a data URI).
const MAX_BLOB: usize = 64 * 1024;

macro_rules! catalog {
    ($($variant:ident => $name:literal, $payload:ty, $category:literal;)+) => {
        /// Every event Herald knows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum EventKind { $($variant),+ }

        impl EventKind {
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant),+];

            /// The wire name (`points_added`).
            pub fn as_str(self) -> &'static str {
                match self { $(EventKind::$variant => $name),+ }
            }

            /// The category preferences can address as a group (`points`).
            pub fn category(self) -> &'static str {
                match self { $(EventKind::$variant => $category),+ }
            }

            /// The payload's field names, as producers spell them.
            pub fn fields(self) -> &'static [&'static str] {
                match self { $(EventKind::$variant => introspect::fields::<$payload>()),+ }
            }

            /// The JSON Schema of the payload: what validation accepts, as
            /// far as JSON Schema can say it (see [`introspect`]).
            pub fn schema(self) -> Value {
                let mut schema = match self { $(EventKind::$variant => introspect::schema::<$payload>()),+ };
                bound_instants(&mut schema);
                schema
            }

            fn parse_payload(self, data: Value) -> Result<Value, ValidationError> {
                match self { $(EventKind::$variant => parse::<$payload>(data)),+ }
            }
        }
    };
}

catalog! {
    PointsAdded => "points_added", PointsAdded, "points";
    PointsRedeemed => "points_redeemed", PointsRedeemed, "points";
    PointsExpired => "points_expired", PointsExpired, "points";
    CardCreated => "card_created", CardCreated, "card";
    GuestRegistered => "guest_registered", GuestRegistered, "account";
    GuestCardUpdated => "guest_card_updated", GuestCardUpdated, "card";
    RestaurantGuestJoined => "restaurant_guest_joined", RestaurantGuestJoined, "restaurant";
    RestaurantStatusChanged => "restaurant_status_changed", RestaurantStatusChanged, "restaurant";
    RestaurantTransaction => "restaurant_transaction", RestaurantTransaction, "restaurant";
    SystemAlert => "system_alert", SystemAlert, "system";
    AdminNotification => "admin_notification", AdminNotification, "system";
    DeliveryFailed => "delivery_failed", DeliveryFailed, "system";
}

impl EventKind {
    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.iter().copied().find(|k| k.as_str() == name)
    }

    /// Categories, deduplicated, in catalog order.
    pub fn categories() -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for kind in EventKind::ALL {
            if !out.contains(&kind.category()) {
                out.push(kind.category());
            }
        }
        out
    }

    /// Events Herald emits itself; producers may not publish them.
    pub fn is_internal(self) -> bool {
        matches!(self, EventKind::DeliveryFailed)
    }

    /// A complete, valid payload of this event, as the seed would send it.
    /// Used by the OpenAPI examples, the quick-start `curl` line, benches and tests.
    pub fn example(self) -> Value {
        let guest = "8d1f0a52-4c6e-4d0b-9a3f-2b7f1c9e0a11";
        let card = "3c2e9b7a-1f4d-4e8a-b6c5-9d0e1f2a3b4c";
        let restaurant = "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d";
        let txn = "0f1e2d3c-4b5a-4968-8776-655443322110";
        match self {
            EventKind::PointsAdded => json!({
                "guestId": guest, "cardId": card, "amount": 100, "newBalance": 500,
                "restaurantId": restaurant, "restaurantName": "Пельменная №1",
                "transactionId": txn, "timestamp": 1_764_000_000_000_i64,
                "description": "Покупка на 1 000 ₽"
            }),
            EventKind::PointsRedeemed => json!({
                "guestId": guest, "cardId": card, "amount": 200, "newBalance": 300,
                "restaurantId": restaurant, "rewardName": "Бесплатный кофе",
                "transactionId": txn, "timestamp": 1_764_000_000_000_i64
            }),
            EventKind::PointsExpired => json!({
                "guestId": guest, "amount": 50, "newBalance": 250,
                "expiryDate": "2026-02-19", "reason": "Inactivity for 6 months"
            }),
            EventKind::CardCreated => json!({
                "guestId": guest, "cardId": card, "restaurantId": restaurant,
                "restaurantName": "Пельменная №1", "qrCode": "data:image/png;base64,iVBORw0KGgo=",
                "initialPoints": 0, "timestamp": 1_764_000_000_000_i64
            }),
            EventKind::GuestRegistered => json!({
                "guestId": guest, "guestName": "Анна Иванова", "email": "anna@example.com",
                "restaurantId": restaurant, "timestamp": 1_764_000_000_000_i64
            }),
            EventKind::GuestCardUpdated => json!({
                "guestId": guest, "cardId": card,
                "changes": { "status": "active", "tier": "gold" },
                "timestamp": 1_764_000_000_000_i64
            }),
            EventKind::RestaurantGuestJoined => json!({
                "restaurantId": restaurant, "guestId": guest, "guestName": "Анна Иванова",
                "cardId": card, "timestamp": 1_764_000_000_000_i64
            }),
            EventKind::RestaurantStatusChanged => json!({
                "restaurantId": restaurant, "status": "maintenance",
                "reason": "Maintenance window", "estimatedRestore": 1_764_003_600_000_i64
            }),
            EventKind::RestaurantTransaction => json!({
                "restaurantId": restaurant, "transactionId": txn, "guestId": guest,
                "guestName": "Анна Иванова", "type": "purchase", "amount": 150,
                "totalToday": 5000, "timestamp": 1_764_000_000_000_i64
            }),
            EventKind::SystemAlert => json!({
                "level": "critical", "title": "Database failover",
                "message": "Primary database is unreachable", "source": "system",
                "timestamp": 1_764_000_000_000_i64
            }),
            EventKind::AdminNotification => json!({
                "notificationId": "7e6d5c4b-3a29-4180-9f7e-6d5c4b3a2918", "type": "fraud_detected",
                "title": "Suspicious activity", "message": "Ten redemptions in one minute",
                "actionRequired": true, "priority": "high", "timestamp": 1_764_000_000_000_i64
            }),
            EventKind::DeliveryFailed => json!({
                "notificationId": "7e6d5c4b-3a29-4180-9f7e-6d5c4b3a2918", "recipient": guest,
                "channel": "email", "reason": "Delivery service error", "retryCount": 1,
                "nextRetry": 1_764_000_060_000_i64
            }),
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event that passed validation: its kind, its normalised payload and the
/// payload's fingerprint for idempotency checks.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedEvent {
    pub kind: EventKind,
    /// The payload as Herald will store and fan it out: known fields only,
    /// with `timestamp` filled by [`ValidatedEvent::stamp`] when the producer
    /// left it out.
    pub data: Map<String, Value>,
    /// SHA-256 over the kind and the payload *as published* (before
    /// defaults), so a retried publish hashes the same.
    pub hash: String,
}

impl ValidatedEvent {
    /// Validates an envelope's `event` and `data`. Errors name the field
    /// relative to the envelope (`event`, `data.amount`).
    pub fn parse(event: &str, data: Value) -> Result<ValidatedEvent, ValidationError> {
        let kind = EventKind::parse(event)
            .ok_or_else(|| ValidationError::new("event", format!("unknown event `{event}`")))?;
        if kind.is_internal() {
            return Err(ValidationError::new(
                "event",
                format!("`{event}` is emitted by Herald and cannot be published"),
            ));
        }
        Self::parse_kind(kind, data)
    }

    /// Validates a payload of a known kind, internal kinds included.
    pub fn parse_kind(kind: EventKind, data: Value) -> Result<ValidatedEvent, ValidationError> {
        if !data.is_object() {
            return Err(ValidationError::new("data", "must be an object"));
        }
        let Value::Object(data) = kind.parse_payload(data).map_err(|e| e.within("data"))? else {
            unreachable!("payloads serialise to objects");
        };
        let mut hasher = Sha256::new();
        hasher.update(kind.as_str().as_bytes());
        hasher.update([0]);
        // serde_json's Map is ordered by key, so this is canonical.
        hasher.update(Value::Object(data.clone()).to_string().as_bytes());
        Ok(ValidatedEvent {
            kind,
            data,
            hash: hex::encode(hasher.finalize()),
        })
    }

    /// Fills `timestamp` (ms since the epoch) when the producer left it out.
    pub fn stamp(&mut self, now_ms: i64) {
        self.data
            .entry("timestamp")
            .or_insert_with(|| Value::from(now_ms));
    }

    /// A top-level payload field as a string, for room and recipient templates.
    pub fn field(&self, name: &str) -> Option<String> {
        match self.data.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

fn parse<T: Payload>(data: Value) -> Result<Value, ValidationError> {
    let payload: T = serde_path_to_error::deserialize(data).map_err(|err| {
        let path = err.path().to_string();
        ValidationError::from_serde(&path, err.into_inner().to_string())
    })?;
    payload.check()?;
    let value = serde_json::to_value(payload).expect("payloads serialise");
    for field in INSTANTS {
        if let Some(ms) = value.get(field).and_then(Value::as_i64) {
            input::check_instant(field, ms)?;
        }
    }
    Ok(value)
}

/// The payload fields that hold an instant (epoch milliseconds), whichever
/// event carries them: each must be a time from 1970 to the end of year 9999,
/// so that inboxes, templates and clients can show it as a date.
const INSTANTS: [&str; 3] = ["timestamp", "estimatedRestore", "nextRetry"];

/// A payload schema's [`INSTANTS`] get the bounds their check applies.
fn bound_instants(schema: &mut Value) {
    let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for name in INSTANTS {
        if let Some(Value::Object(field)) = properties.get_mut(name) {
            field.insert("minimum".into(), json!(0));
            field.insert("maximum".into(), json!(crate::input::MAX_INSTANT_MS));
        }
    }
}

/// A payload type: deserialised, then checked for what serde cannot say.
trait Payload: DeserializeOwned + Serialize + JsonSchema {
    fn check(&self) -> Result<(), ValidationError>;
}

/// A number of points or roubles.
trait Quantity: PartialOrd + Copy {
    const ZERO: Self;
    /// The most a JavaScript client reads exactly; far beyond any real balance.
    const MAX: Self;
}

impl Quantity for i64 {
    const ZERO: i64 = 0;
    const MAX: i64 = input::MAX_SAFE_INTEGER;
}

impl Quantity for f64 {
    const ZERO: f64 = 0.0;
    const MAX: f64 = input::MAX_SAFE_INTEGER as f64;
}

/// A quantity from 0 to [`input::MAX_SAFE_INTEGER`].
fn non_negative<T: Quantity>(field: &str, value: T) -> Result<(), ValidationError> {
    // NaN, incomparable, fails too.
    if matches!(
        value.partial_cmp(&T::ZERO),
        None | Some(std::cmp::Ordering::Less)
    ) {
        return Err(ValidationError::new(field, "must be ≥ 0"));
    }
    if value > T::MAX {
        return Err(ValidationError::new(
            field,
            format!("must be at most {}", input::MAX_SAFE_INTEGER),
        ));
    }
    Ok(())
}

/// An amount of money in roubles, kept exactly as the producer wrote it
/// (`150` stays `150`, `99.90` stays `99.9`).
pub type Money = serde_json::Number;

fn money(n: &Money) -> f64 {
    n.as_f64().unwrap_or(0.0)
}

fn text(field: &str, value: &str) -> Result<(), ValidationError> {
    bounded(field, value, MAX_TEXT)
}

fn bounded(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max} bytes"),
        ));
    }
    Ok(())
}

fn opt_text(field: &str, value: Option<&String>) -> Result<(), ValidationError> {
    value.map_or(Ok(()), |v| text(field, v))
}

macro_rules! payload {
    ($(#[$doc:meta])* $name:ident { $($body:tt)* } check($this:ident) $check:block) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name { $($body)* }

        impl Payload for $name {
            fn check(&self) -> Result<(), ValidationError> {
                let $this = self;
                $check
                Ok(())
            }
        }
    };
}

payload! {
    /// A guest earned points at a restaurant.
    PointsAdded {
        pub guest_id: Uuid,
        pub card_id: Uuid,
        #[schemars(range(min = 0))]
        pub amount: i64,
        #[schemars(range(min = 0))]
        pub new_balance: i64,
        pub restaurant_id: Uuid,
        #[schemars(transform = introspect::fields::text)]
        pub restaurant_name: String,
        pub transaction_id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timestamp: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(transform = introspect::fields::text)]
        pub description: Option<String>,
    }
    check(p) {
        non_negative("amount", p.amount)?;
        non_negative("newBalance", p.new_balance)?;
        text("restaurantName", &p.restaurant_name)?;
        opt_text("description", p.description.as_ref())?;
    }
}

payload! {
    /// A guest spent points on a reward.
    PointsRedeemed {
        pub guest_id: Uuid,
        pub card_id: Uuid,
        #[schemars(range(min = 0))]
        pub amount: i64,
        #[schemars(range(min = 0))]
        pub new_balance: i64,
        pub restaurant_id: Uuid,
        #[schemars(transform = introspect::fields::text)]
        pub reward_name: String,
        pub transaction_id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timestamp: Option<i64>,
    }
    check(p) {
        non_negative("amount", p.amount)?;
        non_negative("newBalance", p.new_balance)?;
        text("rewardName", &p.reward_name)?;
    }
}

payload! {
    /// Points lapsed.
    PointsExpired {
        pub guest_id: Uuid,
        #[schemars(range(min = 0))]
        pub amount: i64,
        #[schemars(range(min = 0))]
        pub new_balance: i64,
        pub expiry_date: NaiveDate,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(transform = introspect::fields::text)]
        pub reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timestamp: Option<i64>,
    }
    check(p) {
        non_negative("amount", p.amount)?;
        non_negative("newBalance", p.new_balance)?;
        opt_text("reason", p.reason.as_ref())?;
    }
}

payload! {
    /// A guest got a loyalty card at a restaurant.
    CardCreated {
        pub guest_id: Uuid,
        pub card_id: Uuid,
        pub restaurant_id: Uuid,
        #[schemars(transform = introspect::fields::text)]
        pub restaurant_name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(transform = introspect::fields::blob)]
        pub qr_code: Option<String>,
        #[serde(default)]
        #[schemars(range(min = 0))]
        pub initial_points: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timestamp: Option<i64>,
    }
    check(p) {
        text("restaurantName", &p.restaurant_name)?;
        if let Some(qr) = &p.qr_code {
            bounded("qrCode", qr, MAX_BLOB)?;
        }
        non_negative("initialPoints", p.initial_points)?;
    }
}

payload! {
    /// A new guest signed up.
    GuestRegistered {
        pub guest_id: Uuid,
        #[schemars(transform = introspect::fields::text)]
        pub guest_name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(transform = introspect::fields::email)]
        pub email: Option<String>,
        pub restaurant_id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timestamp: Option<i64>,
    }
    check(p) {
        text("guestName", &p.guest_name)?;
        if let Some(email) = &p.email
            && !crate::preferences::looks_like_email(email)
        {
                return Err(ValidationError::new("email", "must be an email address"));
        }
    }
}

/// A card's status.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CardStatus {
    Active,
    Suspended,
    Blocked,
}

/// A card's loyalty tier.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Bronze,
    Silver,
    Gold,
    Platinum,
}

/// What changed on a card; at least one of the two.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("minProperties" = 1))]
pub struct CardChanges {
    // (A null counts as absent, so the schema leaves null out: `minProperties`
    // could not tell `{"status": null}` from a change.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "CardStatus")]
    pub status: Option<CardStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Tier")]
    pub tier: Option<Tier>,
}

payload! {
    /// A card's status or tier changed.
    GuestCardUpdated {
        pub guest_id: Uuid,
        pub card_id: Uuid,
        pub changes: CardChanges,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timestamp: Option<i64>,
    }
    check(p) {
        if p.changes.status.is_none() && p.changes.tier.is_none() {
            return Err(ValidationError::new("changes", "must name a `status` or a `tier`"));
        }
    }
}

payload! {
    /// A guest joined a restaurant's programme.
    RestaurantGuestJoined {
        pub restaurant_id: Uuid,
        pub guest_id: Uuid,
        #[schemars(transform = introspect::fields::text)]
        pub guest_name: String,
        pub card_id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timestamp: Option<i64>,
    }
    check(p) {
        text("guestName", &p.guest_name)?;
    }
}

/// A restaurant's operating status.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RestaurantStatus {
    Active,
    Inactive,
    Maintenance,
}

payload! {
    /// A restaurant opened, closed or went into maintenance.
    RestaurantStatusChanged {
        pub restaurant_id: Uuid,
        pub status: RestaurantStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(transform = introspect::fields::text)]
        pub reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub estimated_restore: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timestamp: Option<i64>,
    }
    check(p) {
        opt_text("reason", p.reason.as_ref())?;
    }
}

/// Whether a transaction earned or spent.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransactionType {
    Purchase,
    Redemption,
}

payload! {
    /// A transaction at a restaurant's till; `amount` and `totalToday` are in roubles.
    RestaurantTransaction {
        pub restaurant_id: Uuid,
        pub transaction_id: Uuid,
        pub guest_id: Uuid,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(transform = introspect::fields::text)]
        pub guest_name: Option<String>,
        #[serde(rename = "type")]
        pub kind: TransactionType,
        #[schemars(range(min = 0))]
        pub amount: Money,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schemars(range(min = 0))]
        pub total_today: Option<Money>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timestamp: Option<i64>,
    }
    check(p) {
        non_negative("amount", money(&p.amount))?;
        if let Some(total) = &p.total_today {
            non_negative("totalToday", money(total))?;
        }
        opt_text("guestName", p.guest_name.as_ref())?;
    }
}

/// How serious a system alert is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertLevel {
    Info,
    Warning,
    Error,
    Critical,
}

/// Where a system alert comes from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertSource {
    System,
    Restaurant,
    Guest,
    Cashier,
}

payload! {
    /// Something operators must know about.
    SystemAlert {
        pub level: AlertLevel,
        #[schemars(transform = introspect::fields::text)]
        pub title: String,
        #[schemars(transform = introspect::fields::text)]
        pub message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub source: Option<AlertSource>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timestamp: Option<i64>,
    }
    check(p) {
        text("title", &p.title)?;
        text("message", &p.message)?;
    }
}

/// What an admin notification is about.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdminNotificationType {
    UserCreated,
    RestaurantJoined,
    FraudDetected,
    HighVolume,
}

/// How urgent an admin notification is.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Medium,
    High,
    Critical,
}

payload! {
    /// A note for the admins' notification centre.
    AdminNotification {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub notification_id: Option<Uuid>,
        #[serde(rename = "type")]
        pub kind: AdminNotificationType,
        #[schemars(transform = introspect::fields::text)]
        pub title: String,
        #[schemars(transform = introspect::fields::text)]
        pub message: String,
        #[serde(default)]
        pub action_required: bool,
        pub priority: Priority,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timestamp: Option<i64>,
    }
    check(p) {
        text("title", &p.title)?;
        text("message", &p.message)?;
    }
}

payload! {
    /// Herald's own report that a delivery attempt failed. `nextRetry` is null
    /// once Herald has given up.
    DeliveryFailed {
        pub notification_id: Uuid,
        #[schemars(transform = introspect::fields::text)]
        pub recipient: String,
        pub channel: ChannelKind,
        #[schemars(transform = introspect::fields::text)]
        pub reason: String,
        pub retry_count: u32,
        pub next_retry: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub timestamp: Option<i64>,
    }
    check(p) {
        text("recipient", &p.recipient)?;
        text("reason", &p.reason)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(kind: &str, data: Value) -> ValidationError {
        ValidatedEvent::parse(kind, data).unwrap_err()
    }

    #[test]
    fn every_example_is_valid_and_its_fields_are_known() {
        for &kind in EventKind::ALL {
            let ev = ValidatedEvent::parse_kind(kind, kind.example())
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
            for key in ev.data.keys() {
                assert!(kind.fields().contains(&key.as_str()), "{kind}: {key}");
            }
        }
    }

    #[test]
    fn unknown_and_internal_events_are_refused_at_the_event_field() {
        assert_eq!(err("points_subtracted", json!({})).field, "event");
        assert_eq!(err("delivery_failed", json!({})).field, "event");
    }

    #[test]
    fn a_missing_field_is_named() {
        let mut data = EventKind::PointsAdded.example();
        data.as_object_mut().unwrap().remove("guestId");
        let e = err("points_added", data);
        assert_eq!(e.field, "data.guestId");
        assert_eq!(e.message, "is required");
    }

    #[test]
    fn a_missing_nested_field_keeps_its_path() {
        let e = err(
            "guest_card_updated",
            json!({"guestId": Uuid::nil(), "cardId": Uuid::nil(), "changes": {"tier": "wood"}}),
        );
        assert_eq!(e.field, "data.changes.tier");
        assert!(e.message.contains("unknown variant"), "{e}");
    }

    #[test]
    fn amounts_must_not_be_negative() {
        let mut data = EventKind::PointsRedeemed.example();
        data["amount"] = json!(-1);
        assert_eq!(err("points_redeemed", data).field, "data.amount");
        let mut data = EventKind::RestaurantTransaction.example();
        data["totalToday"] = json!(-0.5);
        assert_eq!(err("restaurant_transaction", data).field, "data.totalToday");
    }

    #[test]
    fn uuids_enums_and_unknown_fields_are_checked() {
        let mut data = EventKind::PointsAdded.example();
        data["cardId"] = json!("not-a-uuid");
        assert_eq!(err("points_added", data).field, "data.cardId");
        let mut data = EventKind::SystemAlert.example();
        data["level"] = json!("apocalyptic");
        assert_eq!(err("system_alert", data).field, "data.level");
        let mut data = EventKind::PointsAdded.example();
        data["descripton"] = json!("typo");
        assert!(err("points_added", data).message.contains("descripton"));
        assert_eq!(err("points_added", json!([1])).field, "data");
    }

    #[test]
    fn instants_and_quantities_are_bounded() {
        let mut data = EventKind::RestaurantStatusChanged.example();
        data["estimatedRestore"] = json!(i64::MIN);
        let e = err("restaurant_status_changed", data.clone());
        assert_eq!(e.field, "data.estimatedRestore");
        assert!(e.message.contains("year 9999"), "{e}");
        data["estimatedRestore"] = json!(input::MAX_INSTANT_MS + 1);
        assert_eq!(
            err("restaurant_status_changed", data.clone()).field,
            "data.estimatedRestore"
        );
        data["estimatedRestore"] = json!(input::MAX_INSTANT_MS);
        assert!(ValidatedEvent::parse("restaurant_status_changed", data).is_ok());

        let mut data = EventKind::PointsAdded.example();
        data["timestamp"] = json!(-1);
        assert_eq!(err("points_added", data).field, "data.timestamp");
        let mut data = EventKind::DeliveryFailed.example();
        data["nextRetry"] = json!(i64::MAX);
        let e = ValidatedEvent::parse_kind(EventKind::DeliveryFailed, data.clone()).unwrap_err();
        assert_eq!(e.field, "data.nextRetry");
        data["nextRetry"] = Value::Null;
        assert!(ValidatedEvent::parse_kind(EventKind::DeliveryFailed, data).is_ok());

        let mut data = EventKind::PointsAdded.example();
        data["newBalance"] = json!(i64::MAX);
        let e = err("points_added", data);
        assert_eq!(e.field, "data.newBalance");
        assert!(e.message.contains("at most"), "{e}");
        let mut data = EventKind::RestaurantTransaction.example();
        data["amount"] = json!(1e300);
        assert_eq!(err("restaurant_transaction", data).field, "data.amount");
    }

    #[test]
    fn the_hash_ignores_defaults_filled_later() {
        let mut data = EventKind::PointsExpired.example();
        data.as_object_mut().unwrap().remove("timestamp");
        let mut a = ValidatedEvent::parse("points_expired", data.clone()).unwrap();
        let b = ValidatedEvent::parse("points_expired", data).unwrap();
        a.stamp(42);
        assert_eq!(a.hash, b.hash);
        assert_eq!(a.data["timestamp"], json!(42));
    }
}
