//! The realtime protocol of contract §2–§3, without I/O: which rooms a
//! caller joins on connect, which subscriptions it may make, and the shapes
//! of what goes over the wire.
//!
//! Both transports speak it: Socket.IO carries `(event, data)` with native
//! acks; `/ws` carries `{"event", "data", "ack"}` JSON frames. Everything a
//! client sends is checked here before it touches the hub, so a bad message
//! is an `error` frame, never a panic.

use std::collections::BTreeMap;

use herald_core::Role;
use herald_core::auth::Principal;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::resume::Reason;

/// Contract §3's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    Unauthorized,
    NotFound,
    ServerError,
    RateLimited,
    InvalidSubscription,
    BadRequest,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::ServerError => "SERVER_ERROR",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::InvalidSubscription => "INVALID_SUBSCRIPTION",
            ErrorCode::BadRequest => "BAD_REQUEST",
        }
    }
}

/// A refused client message: the `error` frame's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// The `error` event's payload.
    pub fn to_error(&self) -> Value {
        json!({
            "code": self.code,
            "message": self.message,
            "timestamp": chrono::Utc::now().timestamp_millis(),
        })
    }

    /// The ack of a refused request: `{ok: false, error: {code, message}}`.
    pub fn to_ack(&self) -> Value {
        json!({ "ok": false, "error": { "code": self.code, "message": self.message } })
    }
}

/// Why the server closes a connection. The first four are contract §3's
/// `disconnected.reason` values; the others are told with an `error` first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client went away (or closed the transport).
    ClientDisconnect,
    /// Herald is shutting down; the client should reconnect after `reconnectDelay`.
    ServerRestart,
    /// The client stopped answering pings.
    Timeout,
    /// The client read too slowly; its outbound buffer filled.
    SlowConsumer,
    /// The client sent messages faster than allowed.
    RateLimited,
    /// The token's `exp` passed.
    TokenExpired,
    /// A frame larger than `max_message_bytes`.
    MessageTooLarge,
    /// The transport failed (reset, protocol error).
    TransportError,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientDisconnect => "client_disconnect",
            CloseReason::ServerRestart => "server_restart",
            CloseReason::Timeout => "timeout",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::MessageTooLarge => "message_too_large",
            CloseReason::TransportError => "transport_error",
        }
    }

    pub const ALL: [CloseReason; 8] = [
        CloseReason::ClientDisconnect,
        CloseReason::ServerRestart,
        CloseReason::Timeout,
        CloseReason::SlowConsumer,
        CloseReason::RateLimited,
        CloseReason::TokenExpired,
        CloseReason::MessageTooLarge,
        CloseReason::TransportError,
    ];
}

/// The rooms a caller joins on connect (contract §2).
pub fn auto_rooms(principal: &Principal) -> Vec<String> {
    let mut rooms = vec![format!("user:{}", principal.user_id.as_str())];
    match principal.role {
        Role::Admin => rooms.push("admin".to_owned()),
        Role::Restaurant | Role::Cashier => {
            if let Some(r) = &principal.restaurant_id {
                rooms.push(format!("restaurant:{r}"));
            }
        }
        Role::Guest | Role::Service => {}
    }
    rooms
}

/// Longest id accepted in a subscription.
const MAX_ID: usize = 128;

/// The room a `subscribe` / `unsubscribe` request names, if the caller may
/// join it. Malformed → `BAD_REQUEST`, unknown type → `INVALID_SUBSCRIPTION`,
/// refused by the rules → `UNAUTHORIZED`.
pub fn subscription_room(principal: &Principal, request: &Value) -> Result<String, Refusal> {
    let Value::Object(request) = request else {
        return Err(Refusal::bad_request(
            "a subscription is an object {type, data}",
        ));
    };
    let kind = match request.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => return Err(Refusal::bad_request("`type` must be a string")),
        None => return Err(Refusal::bad_request("`type` is required")),
    };
    let empty = Map::new();
    let data = match request.get("data") {
        Some(Value::Object(data)) => data,
        None | Some(Value::Null) => &empty,
        Some(_) => return Err(Refusal::bad_request("`data` must be an object")),
    };
    let is_admin = principal.role == Role::Admin;
    let staff_of = |restaurant: &str| {
        principal.role.is_staff() && principal.restaurant_id.as_deref() == Some(restaurant)
    };
    match kind {
        "guest_card" => {
            let guest = id_field(data, "guestId")?;
            if is_admin || (principal.role == Role::Guest && principal.user_id.as_str() == guest) {
                Ok(format!("guest:{guest}"))
            } else {
                Err(Refusal::new(
                    ErrorCode::Unauthorized,
                    "a guest may follow only its own card",
                ))
            }
        }
        "points_operations" | "restaurant_transactions" => {
            let restaurant = id_field(data, "restaurantId")?;
            if is_admin || staff_of(restaurant) {
                let suffix = if kind == "points_operations" {
                    "points"
                } else {
                    "transactions"
                };
                Ok(format!("restaurant:{restaurant}:{suffix}"))
            } else {
                Err(Refusal::new(
                    ErrorCode::Unauthorized,
                    "only that restaurant's staff or an admin may follow it",
                ))
            }
        }
        "system_events" => {
            if is_admin {
                Ok("admin:events".to_owned())
            } else {
                Err(Refusal::new(
                    ErrorCode::Unauthorized,
                    "only admins can subscribe to system events",
                ))
            }
        }
        other => Err(Refusal::new(
            ErrorCode::InvalidSubscription,
            format!(
                "unknown subscription type `{}`",
                other.chars().take(64).collect::<String>()
            ),
        )),
    }
}

fn id_field<'a>(data: &'a Map<String, Value>, name: &str) -> Result<&'a str, Refusal> {
    match data.get(name) {
        Some(Value::String(id))
            if !id.is_empty()
                && id.len() <= MAX_ID
                && !id.chars().any(|c| c.is_control() || c.is_whitespace()) =>
        {
            Ok(id)
        }
        Some(_) => Err(Refusal::bad_request(format!(
            "`data.{name}` must be a non-empty id of at most {MAX_ID} characters"
        ))),
        None => Err(Refusal::bad_request(format!("`data.{name}` is required"))),
    }
}

/// Whether `principal` may be in `room` at all: the rules of contract §2
/// applied to a room name (used when a resume request names rooms).
pub fn may_join(principal: &Principal, room: &str) -> bool {
    if auto_rooms(principal).iter().any(|r| r == room) {
        return true;
    }
    let request = if let Some(guest) = room.strip_prefix("guest:") {
        json!({"type": "guest_card", "data": {"guestId": guest}})
    } else if room == "admin:events" {
        json!({"type": "system_events"})
    } else if let Some(rest) = room.strip_prefix("restaurant:") {
        if let Some(r) = rest.strip_suffix(":points") {
            json!({"type": "points_operations", "data": {"restaurantId": r}})
        } else if let Some(r) = rest.strip_suffix(":transactions") {
            json!({"type": "restaurant_transactions", "data": {"restaurantId": r}})
        } else {
            return principal.role == Role::Admin;
        }
    } else {
        return principal.role == Role::Admin && (room == "admin" || room.starts_with("user:"));
    };
    subscription_room(principal, &request).is_ok_and(|r| r == room)
}

/// `action_confirm {actionId, action, amount}`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionConfirm {
    pub action_id: String,
    pub action: String,
    /// Kept as the client wrote it (JSON number).
    pub amount: serde_json::Number,
}

impl ActionConfirm {
    pub fn parse(data: &Value) -> Result<ActionConfirm, Refusal> {
        let Value::Object(data) = data else {
            return Err(Refusal::bad_request(
                "action_confirm takes {actionId, action, amount}",
            ));
        };
        if let Some(extra) = data
            .keys()
            .find(|k| !["actionId", "action", "amount"].contains(&k.as_str()))
        {
            return Err(Refusal::bad_request(format!(
                "unknown field `{}`",
                extra.chars().take(64).collect::<String>()
            )));
        }
        let text = |name: &str, max: usize| match data.get(name) {
            Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= max => Ok(s.clone()),
            Some(_) => Err(Refusal::bad_request(format!(
                "`{name}` must be a non-empty string of at most {max} bytes"
            ))),
            None => Err(Refusal::bad_request(format!("`{name}` is required"))),
        };
        let action_id = text("actionId", MAX_ID)?;
        let action = text("action", 64)?;
        let amount = match data.get("amount") {
            Some(Value::Number(n)) if n.as_f64().is_some_and(|v| v >= 0.0) => n.clone(),
            Some(_) => {
                return Err(Refusal::bad_request("`amount` must be a number ≥ 0"));
            }
            None => return Err(Refusal::bad_request("`amount` is required")),
        };
        Ok(ActionConfirm {
            action_id,
            action,
            amount,
        })
    }
}

/// A resume request (contract §6): where the client left off, and the
/// subscriptions to restore before replaying.
///
/// ```json
/// {"epoch": "…", "offset": 1732600000123004,
///  "offsets": {"guest:…": 1732600000123004},
///  "lastEventId": "…",
///  "subscriptions": [{"type": "guest_card", "data": {"guestId": "…"}}]}
/// ```
///
/// A room's starting point is `offsets[room]`, else `offset`, else the
/// offset of `lastEventId`; rooms with none are not replayed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResumeRequest {
    pub epoch: Option<String>,
    pub offset: Option<u64>,
    pub offsets: BTreeMap<String, u64>,
    pub last_event_id: Option<String>,
    pub subscriptions: Vec<Value>,
}

/// Most subscriptions or rooms one resume request may name.
const MAX_RESUME_ITEMS: usize = 256;

impl ResumeRequest {
    pub fn parse(data: &Value) -> Result<ResumeRequest, Refusal> {
        let Value::Object(data) = data else {
            return Err(Refusal::bad_request(
                "resume takes {offset | offsets | lastEventId, epoch?, subscriptions?}",
            ));
        };
        let mut request = ResumeRequest::default();
        for (key, value) in data {
            match (key.as_str(), value) {
                ("epoch", Value::String(e)) if e.len() <= 64 => request.epoch = Some(e.clone()),
                ("epoch", Value::Null) => {}
                ("offset", v) if v.is_u64() => request.offset = v.as_u64(),
                ("offset", Value::Null) => {}
                ("offsets", Value::Object(map)) if map.len() <= MAX_RESUME_ITEMS => {
                    for (room, offset) in map {
                        let offset = offset.as_u64().ok_or_else(|| {
                            Refusal::bad_request("`offsets` values must be non-negative integers")
                        })?;
                        request.offsets.insert(room.clone(), offset);
                    }
                }
                ("lastEventId", Value::String(id)) if !id.is_empty() && id.len() <= MAX_ID => {
                    request.last_event_id = Some(id.clone())
                }
                ("lastEventId", Value::Null) => {}
                ("subscriptions", Value::Array(items)) if items.len() <= MAX_RESUME_ITEMS => {
                    request.subscriptions = items.clone()
                }
                ("epoch" | "offset" | "offsets" | "lastEventId" | "subscriptions", _) => {
                    return Err(Refusal::bad_request(format!("`{key}` has the wrong type")));
                }
                (other, _) => {
                    return Err(Refusal::bad_request(format!(
                        "unknown field `{}`",
                        other.chars().take(64).collect::<String>()
                    )));
                }
            }
        }
        if request.offset.is_none() && request.offsets.is_empty() && request.last_event_id.is_none()
        {
            return Err(Refusal::bad_request(
                "resume needs `offset`, `offsets` or `lastEventId`",
            ));
        }
        Ok(request)
    }
}

/// The answer to a resume request (the `resumed` event, or the ack).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResumeOutcome {
    /// True: every missed event was replayed, in order.
    pub recovered: bool,
    /// How many events were replayed.
    pub replayed: usize,
    /// Why not, when `recovered` is false; see [`Reason::as_str`] for
    /// the wire strings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// The stream position after the replay: the offset to resume from next.
    pub offset: u64,
    /// The history's identity; a different epoch means history was lost.
    pub epoch: String,
    /// Rooms that could not be recovered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
}

#[cfg(test)]
mod tests {
    use herald_core::UserId;

    use super::*;

    fn who(role: Role, id: &str, restaurant: Option<&str>) -> Principal {
        Principal {
            user_id: UserId(id.into()),
            role,
            restaurant_id: restaurant.map(Into::into),
        }
    }

    #[test]
    fn auto_rooms_follow_the_role() {
        assert_eq!(auto_rooms(&who(Role::Guest, "g", None)), ["user:g"]);
        assert_eq!(
            auto_rooms(&who(Role::Cashier, "c", Some("r"))),
            ["user:c", "restaurant:r"]
        );
        assert_eq!(
            auto_rooms(&who(Role::Admin, "a", None)),
            ["user:a", "admin"]
        );
    }

    #[test]
    fn subscriptions_follow_contract_rules() {
        let guest = who(Role::Guest, "g1", None);
        let staff = who(Role::Restaurant, "s", Some("r1"));
        let admin = who(Role::Admin, "a", None);
        let sub = |p: &Principal, v: Value| subscription_room(p, &v);
        let code = |r: Result<String, Refusal>| r.unwrap_err().code;

        assert_eq!(
            sub(
                &guest,
                json!({"type": "guest_card", "data": {"guestId": "g1"}})
            )
            .unwrap(),
            "guest:g1"
        );
        assert_eq!(
            code(sub(
                &guest,
                json!({"type": "guest_card", "data": {"guestId": "g2"}})
            )),
            ErrorCode::Unauthorized
        );
        assert_eq!(
            code(sub(
                &staff,
                json!({"type": "guest_card", "data": {"guestId": "g1"}})
            )),
            ErrorCode::Unauthorized
        );
        assert_eq!(
            sub(
                &admin,
                json!({"type": "guest_card", "data": {"guestId": "g2"}})
            )
            .unwrap(),
            "guest:g2"
        );
        assert_eq!(
            sub(
                &staff,
                json!({"type": "points_operations", "data": {"restaurantId": "r1"}})
            )
            .unwrap(),
            "restaurant:r1:points"
        );
        assert_eq!(
            sub(
                &staff,
                json!({"type": "restaurant_transactions", "data": {"restaurantId": "r1"}})
            )
            .unwrap(),
            "restaurant:r1:transactions"
        );
        assert_eq!(
            code(sub(
                &staff,
                json!({"type": "points_operations", "data": {"restaurantId": "r2"}})
            )),
            ErrorCode::Unauthorized
        );
        assert_eq!(
            code(sub(
                &guest,
                json!({"type": "points_operations", "data": {"restaurantId": "r1"}})
            )),
            ErrorCode::Unauthorized
        );
        assert_eq!(
            sub(&admin, json!({"type": "system_events", "data": {}})).unwrap(),
            "admin:events"
        );
        assert_eq!(
            code(sub(&staff, json!({"type": "system_events"}))),
            ErrorCode::Unauthorized
        );
        assert_eq!(
            code(sub(&admin, json!({"type": "everything"}))),
            ErrorCode::InvalidSubscription
        );
        for bad in [
            json!("guest_card"),
            json!({"data": {}}),
            json!({"type": 5}),
            json!({"type": "guest_card", "data": []}),
            json!({"type": "guest_card", "data": {}}),
            json!({"type": "guest_card", "data": {"guestId": ""}}),
            json!({"type": "guest_card", "data": {"guestId": "a b"}}),
            json!({"type": "guest_card", "data": {"guestId": "x".repeat(200)}}),
        ] {
            assert_eq!(
                code(sub(&admin, bad.clone())),
                ErrorCode::BadRequest,
                "{bad}"
            );
        }
    }

    #[test]
    fn rooms_by_name_follow_the_same_rules() {
        let guest = who(Role::Guest, "g1", None);
        let staff = who(Role::Cashier, "s", Some("r1"));
        let admin = who(Role::Admin, "a", None);
        assert!(may_join(&guest, "user:g1"));
        assert!(may_join(&guest, "guest:g1"));
        assert!(!may_join(&guest, "guest:g2"));
        assert!(!may_join(&guest, "user:g2"));
        assert!(may_join(&staff, "restaurant:r1"));
        assert!(may_join(&staff, "restaurant:r1:points"));
        assert!(!may_join(&staff, "restaurant:r2:transactions"));
        assert!(!may_join(&staff, "admin:events"));
        assert!(may_join(&admin, "admin:events"));
        assert!(may_join(&admin, "restaurant:r9"));
        assert!(may_join(&admin, "user:anyone"));
    }

    #[test]
    fn action_confirm_is_checked() {
        let ok = ActionConfirm::parse(
            &json!({"actionId": "a-1", "action": "points_redeem", "amount": 500}),
        )
        .unwrap();
        assert_eq!(ok.amount.to_string(), "500");
        for bad in [
            json!({"action": "x", "amount": 1}),
            json!({"actionId": "a", "action": "", "amount": 1}),
            json!({"actionId": "a", "action": "x", "amount": -1}),
            json!({"actionId": "a", "action": "x", "amount": "1"}),
            json!({"actionId": "a", "action": "x", "amount": 1, "extra": true}),
            json!([1, 2]),
        ] {
            assert_eq!(
                ActionConfirm::parse(&bad).unwrap_err().code,
                ErrorCode::BadRequest,
                "{bad}"
            );
        }
    }

    #[test]
    fn resume_requests_are_checked() {
        let r = ResumeRequest::parse(
            &json!({"offset": 5, "epoch": "e", "subscriptions": [{"type": "system_events"}]}),
        )
        .unwrap();
        assert_eq!((r.offset, r.epoch.as_deref()), (Some(5), Some("e")));
        assert_eq!(r.subscriptions.len(), 1);
        let r = ResumeRequest::parse(&json!({"offsets": {"user:a": 7}})).unwrap();
        assert_eq!(r.offsets["user:a"], 7);
        for bad in [
            json!({}),
            json!({"offset": -1}),
            json!({"offset": "5"}),
            json!({"offsets": {"a": "x"}}),
            json!({"offset": 1, "what": 1}),
            json!(null),
        ] {
            assert!(ResumeRequest::parse(&bad).is_err(), "{bad}");
        }
    }
}
