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
    ("/v1/admin/stats", "get"),
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
        ("/v1/admin/stats", _) => (
            "Connected users and sockets, rooms, queue depth and delivery backlog",
            "admin",
            "200",
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
    op
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
                    "method_not_allowed", "idempotency_conflict", "payload_too_large",
                    "batch_too_large", "unsupported_media_type", "validation_failed",
                    "unknown_event", "unavailable", "internal"
                ] },
                "field": { "type": "string", "description": "The field at fault, e.g. `[3].data.amount`." }
            }
        }
    })
}
