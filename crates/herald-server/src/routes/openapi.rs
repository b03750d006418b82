//! `GET /openapi.json`: contract §7 as an OpenAPI 3.1 document.
//!
//! Built once from the same sources the server uses: every event of the
//! catalog becomes a publishable schema with its example payload
//! (`EventKind::example`, which the catalog's own tests validate), and the
//! error shape is the one `problem` writes. Operations are listed here by
//! hand, next to the router in `startup.rs`; a test checks the two agree.

use std::sync::OnceLock;

use axum::Json;
use herald_core::EventKind;
use serde_json::{Map, Value, json};

/// Every path and method the document describes, as the router serves them.
pub const OPERATIONS: &[(&str, &str)] = &[
    ("/v1/events", "post"),
    ("/v1/notifications", "get"),
    ("/v1/notifications/unread-count", "get"),
    ("/v1/notifications/read-all", "post"),
    ("/v1/notifications/{id}", "get"),
    ("/v1/notifications/{id}", "delete"),
    ("/v1/notifications/{id}/read", "post"),
    ("/v1/notifications/{id}/deliveries", "get"),
    ("/v1/users/{user}/preferences", "get"),
    ("/v1/users/{user}/preferences", "put"),
    ("/v1/users/{user}/contact", "get"),
    ("/v1/users/{user}/contact", "put"),
    ("/v1/users/{user}/devices", "get"),
    ("/v1/users/{user}/devices", "post"),
    ("/v1/users/{user}/devices/{id}", "delete"),
    ("/v1/users/{user}", "delete"),
    ("/v1/users/{user}/export", "get"),
    ("/v1/admin/stats", "get"),
    ("/v1/admin/deliveries", "get"),
    ("/v1/admin/deliveries/retry", "post"),
    ("/v1/admin/deliveries/{id}/retry", "post"),
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
];

pub async fn document() -> Json<Value> {
    static DOC: OnceLock<Value> = OnceLock::new();
    Json(DOC.get_or_init(build).clone())
}

fn build() -> Value {
    let mut paths = Map::new();
    for &(path, method) in OPERATIONS {
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        entry[method] = operation(path, method);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Herald",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Notification dispatcher: publish domain events; Herald writes inboxes, fans out over Socket.IO (/socket.io/) and WebSocket (/ws), and delivers email, SMS and push per routing and preferences. Errors are application/problem+json with a stable `code` and the `field` at fault.",
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" }
            },
            "schemas": schemas(),
            "responses": {
                "Problem": {
                    "description": "The request was refused; `code` says why, `field` where.",
                    "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
                }
            }
        }
    })
}

fn operation(path: &str, method: &str) -> Value {
    let (summary, who, ok) = match (path, method) {
        ("/v1/events", _) => (
            "Publish one event or an array of up to server.max_batch; `id` is the idempotency key",
            "service, admin",
            "202",
        ),
        ("/v1/notifications", _) => (
            "The caller's inbox, newest first (`unread`, `cursor`, `limit`)",
            "the user",
            "200",
        ),
        ("/v1/notifications/unread-count", _) => {
            ("How many inbox entries are unread", "the user", "200")
        }
        ("/v1/notifications/read-all", _) => ("Mark every inbox entry read", "the user", "200"),
        ("/v1/notifications/{id}", "get") => ("One inbox entry", "the user", "200"),
        ("/v1/notifications/{id}", _) => ("Delete an inbox entry", "the user", "204"),
        ("/v1/notifications/{id}/read", _) => ("Mark an inbox entry read", "the user", "200"),
        ("/v1/notifications/{id}/deliveries", _) => (
            "Delivery status of each channel, with the decision's reason",
            "the owner, admin",
            "200",
        ),
        ("/v1/users/{user}/preferences", "get") => {
            ("A user's preferences", "the user, admin", "200")
        }
        ("/v1/users/{user}/preferences", _) => {
            ("Replace a user's preferences", "the user, admin", "200")
        }
        ("/v1/users/{user}/contact", "get") => (
            "A user's contact: email, phone, locale, time zone",
            "the user, service, admin",
            "200",
        ),
        ("/v1/users/{user}/contact", _) => {
            ("Set a user's contact", "the user, service, admin", "200")
        }
        ("/v1/users/{user}/devices", "get") => {
            ("A user's push devices", "the user, service, admin", "200")
        }
        ("/v1/users/{user}/devices", _) => (
            "Register an FCM token or a Web Push subscription",
            "the user, service, admin",
            "201",
        ),
        ("/v1/users/{user}/devices/{id}", _) => {
            ("Remove a push device", "the user, service, admin", "204")
        }
        ("/v1/users/{user}", _) => (
            "Erase a user: contact, preferences, devices, inbox, deliveries, action records, outbox files; answers what went, by kind (404: Herald knows nothing of the user)",
            "service, admin",
            "200",
        ),
        ("/v1/users/{user}/export", _) => (
            "Everything Herald keeps about a user, as JSON (404: nothing)",
            "the user, service, admin",
            "200",
        ),
        ("/v1/admin/stats", _) => (
            "Connected users and sockets, rooms, queue depth and delivery backlog",
            "admin",
            "200",
        ),
        ("/v1/admin/deliveries", _) => (
            "Deliveries newest first, by default the failed and expired ones; filter by status, channel, provider, reason, error text, recipient, event and time; page with `cursor`",
            "admin",
            "200",
        ),
        ("/v1/admin/deliveries/retry", _) => (
            "Re-drive deliveries by id, or the failed and expired ones a filter matches (at most `max`, 1,000); idempotent",
            "admin",
            "202",
        ),
        ("/v1/admin/deliveries/{id}/retry", _) => (
            "Re-drive one failed or expired delivery; idempotent",
            "admin",
            "202",
        ),
        ("/healthz", _) => ("The process is up", "anyone", "200"),
        ("/readyz", _) => (
            "Database, queue and realtime bus reachable (503 otherwise); transports reported",
            "anyone",
            "200",
        ),
        ("/metrics", _) => ("Prometheus metrics", "anyone", "200"),
        _ => ("This document", "anyone", "200"),
    };
    let mut op = json!({
        "summary": summary,
        "description": format!("Who may call: {who}."),
        "responses": {
            ok: { "description": "Done." },
            "4XX": { "$ref": "#/components/responses/Problem" },
        },
    });
    if who == "anyone" {
        op["security"] = json!([]);
    }
    let params: Vec<Value> = ["user", "id"]
        .iter()
        .filter(|p| path.contains(&format!("{{{p}}}")))
        .map(|p| json!({ "name": p, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect();
    if !params.is_empty() {
        op["parameters"] = Value::Array(params);
    }
    if path == "/v1/events" {
        op["requestBody"] = json!({
            "required": true,
            "content": { "application/json": {
                "schema": { "oneOf": [
                    { "$ref": "#/components/schemas/Envelope" },
                    { "type": "array", "minItems": 1, "items": { "$ref": "#/components/schemas/Envelope" } }
                ] },
                "examples": examples(),
            } }
        });
        op["responses"]["202"] = json!({
            "description": "Durable: the event, its inbox entries and deliveries are committed. A repeated id with the same payload answers the same; with another payload, 409.",
            "content": { "application/json": { "schema": { "oneOf": [
                { "$ref": "#/components/schemas/EventRecord" },
                { "type": "array", "items": { "$ref": "#/components/schemas/EventRecord" } }
            ] } } }
        });
    }
    redrive(path, &mut op);
    op
}

/// Parameters, bodies and answers of the re-drive operations.
fn redrive(path: &str, op: &mut Value) {
    let problem = |description: &str| {
        json!({
            "description": description,
            "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
        })
    };
    match path {
        "/v1/admin/deliveries" => {
            let query = |name: &str, description: &str| json!({ "name": name, "in": "query", "required": false, "description": description, "schema": { "type": "string" } });
            op["parameters"] = json!([
                query("status", "Delivery states, comma-separated; default `failed,expired`."),
                query("channel", "`email`, `sms` or `push`."),
                query("provider", "The provider of the last attempt."),
                query("reason", "The routing reason, exactly."),
                query("error", "Text the last error contains (any case)."),
                query("recipient", "The recipient's user id."),
                query("event", "The event's name."),
                query("eventId", "The event's id or idempotency key."),
                query("from", "Last changed at or after: RFC 3339 or epoch milliseconds."),
                query("to", "Last changed at or before: RFC 3339 or epoch milliseconds."),
                query("cursor", "`nextCursor` of the previous page."),
                { "name": "limit", "in": "query", "required": false, "schema": { "type": "integer", "minimum": 1, "maximum": 500, "default": 50 } },
            ]);
            op["responses"]["200"] = json!({
                "description": "A page, newest first.",
                "content": { "application/json": { "schema": {
                    "type": "object",
                    "properties": {
                        "items": { "type": "array", "items": { "$ref": "#/components/schemas/AdminDelivery" } },
                        "nextCursor": { "type": ["string", "null"] }
                    }
                } } }
            });
            op["responses"]["422"] = problem(
                "`field` names the input at fault: an unknown `status` or `channel`, `to` before `from`, a `cursor` this API did not return, `limit` outside 1 to 500.",
            );
        }
        "/v1/admin/deliveries/retry" => {
            op["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": { "oneOf": [
                    {
                        "type": "object",
                        "required": ["ids"],
                        "additionalProperties": false,
                        "properties": { "ids": { "type": "array", "minItems": 1, "maxItems": 1000, "items": { "type": "string", "format": "uuid" } } }
                    },
                    {
                        "type": "object",
                        "required": ["filter"],
                        "additionalProperties": false,
                        "properties": {
                            "filter": { "$ref": "#/components/schemas/RedriveFilter" },
                            "max": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 1000 }
                        }
                    }
                ] } } }
            });
            op["responses"]["202"] = json!({
                "description": "Failed and expired deliveries are pending again and queued; the others are left as they are and listed by why.",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/RedriveReport" } } }
            });
            op["responses"]["422"] = problem(
                "`field` names the input at fault: `ids` (over 1,000, or one that is not an id), `max` (over 1,000), `filter.status` (not failed or expired), `filter` (matches more than `max`; nothing was changed).",
            );
        }
        "/v1/admin/deliveries/{id}/retry" => {
            let retried = json!({ "allOf": [
                { "$ref": "#/components/schemas/AdminDelivery" },
                { "type": "object", "properties": { "alreadyQueued": { "type": "boolean" } } }
            ] });
            op["responses"]["202"] = json!({
                "description": "Re-driven: pending again, and queued.",
                "content": { "application/json": { "schema": retried } }
            });
            op["responses"]["200"] = json!({
                "description": "Still owed an attempt (`alreadyQueued`: true): nothing was done.",
                "content": { "application/json": { "schema": retried } }
            });
            op["responses"]["404"] = problem("No such delivery.");
            op["responses"]["409"] = problem(
                "`not_retryable`: the delivery is sent, delivered, suppressed or otherwise done.",
            );
        }
        _ => {}
    }
}

/// The events a producer may publish (not Herald's own `delivery_failed`).
fn publishable() -> impl Iterator<Item = EventKind> {
    EventKind::ALL.iter().copied().filter(|k| !k.is_internal())
}

fn examples() -> Value {
    publishable()
        .map(|k| {
            let value =
                json!({ "id": format!("{k}-0001"), "event": k.as_str(), "data": k.example() });
            (
                k.as_str().to_owned(),
                json!({ "summary": k.as_str(), "value": value }),
            )
        })
        .collect::<Map<_, _>>()
        .into()
}

fn schemas() -> Value {
    let events: Vec<Value> = publishable().map(|k| json!(k.as_str())).collect();
    json!({
        "Envelope": {
            "type": "object",
            "required": ["event", "data"],
            "additionalProperties": false,
            "properties": {
                "id": { "type": "string", "minLength": 1, "description": "Idempotency key: the same id is one event." },
                "event": { "type": "string", "enum": events },
                "data": { "type": "object", "description": "The event's payload, as the seed defines it; see the examples. Unknown fields are refused (422, `field` names them)." }
            }
        },
        "EventRecord": {
            "type": "object",
            "properties": {
                "id": { "type": "string", "format": "uuid" },
                "event": { "type": "string" },
                "receivedAt": { "type": "integer", "description": "Epoch milliseconds." }
            }
        },
        "AdminDelivery": {
            "type": "object",
            "properties": {
                "id": { "type": "string", "format": "uuid" },
                "notificationId": { "type": "string", "format": "uuid" },
                "eventId": { "type": "string", "format": "uuid" },
                "event": { "type": "string" },
                "recipient": { "type": "string" },
                "channel": { "type": "string", "enum": ["email", "sms", "push"] },
                "provider": { "type": ["string", "null"] },
                "status": { "type": "string" },
                "reason": { "type": "string" },
                "attempts": { "type": "integer" },
                "lastError": { "type": ["string", "null"] },
                "nextAttemptAt": { "type": ["integer", "null"] },
                "redrivenAt": { "type": ["integer", "null"] },
                "createdAt": { "type": "integer" },
                "updatedAt": { "type": "integer" }
            }
        },
        "RedriveFilter": {
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "status": {
                    "description": "`failed`, `expired` or both (the default).",
                    "oneOf": [
                        { "type": "string" },
                        { "type": "array", "items": { "type": "string", "enum": ["failed", "expired"] } }
                    ]
                },
                "channel": { "type": "string" },
                "provider": { "type": "string" },
                "reason": { "type": "string" },
                "error": { "type": "string" },
                "recipient": { "type": "string" },
                "event": { "type": "string" },
                "eventId": { "type": "string" },
                "from": { "type": ["string", "integer"], "description": "RFC 3339 or epoch milliseconds." },
                "to": { "type": ["string", "integer"], "description": "RFC 3339 or epoch milliseconds." }
            }
        },
        "RedriveReport": {
            "type": "object",
            "properties": {
                "requeued": { "type": "array", "items": { "type": "string", "format": "uuid" } },
                "alreadyQueued": { "type": "array", "items": { "type": "string", "format": "uuid" } },
                "notRetryable": { "type": "array", "items": {
                    "type": "object",
                    "properties": { "id": { "type": "string", "format": "uuid" }, "status": { "type": "string" } }
                } },
                "unknown": { "type": "array", "items": { "type": "string", "format": "uuid" } }
            }
        },
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status", "detail", "code"],
            "properties": {
                "type": { "type": "string" },
                "title": { "type": "string" },
                "status": { "type": "integer" },
                "detail": { "type": "string" },
                "code": { "type": "string", "enum": [
                    "bad_request", "invalid_json", "unauthorized", "forbidden", "not_found",
                    "method_not_allowed", "idempotency_conflict", "not_retryable", "payload_too_large",
                    "batch_too_large", "unsupported_media_type", "validation_failed",
                    "unknown_event", "unavailable", "internal"
                ] },
                "field": { "type": "string", "description": "The field at fault, e.g. `[3].data.amount`." }
            }
        }
    })
}
