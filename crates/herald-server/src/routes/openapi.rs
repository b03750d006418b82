//! `GET /openapi.json`: contract §7 as an OpenAPI 3.1 document.
//!
//! Built once from the same sources the server uses: every event of the
//! catalog contributes its payload's JSON Schema (derived from the type that
//! validates it, `EventKind::schema`) and its example payload
//! (`EventKind::example`, which the catalog's own tests validate); the
//! delivery states, channels, roles and limits are the server's own
//! constants. Operations are listed here by hand, next to the router in
//! `startup.rs`; a test checks the two agree, and CI runs schemathesis
//! against the document with a token of every role.
//!
//! The document says what the server accepts, as far as JSON Schema can:
//! each request body refuses unknown fields where the server does, and
//! Herald's rules for every JSON number (±(2^53−1)) and string (no NUL) are
//! applied to the whole document at the end ([`introspect::bound_numbers`],
//! [`introspect::refuse_nul`]). Rules between two fields (`to` not before
//! `from`, quiet hours that start and end at different times) are in the
//! descriptions.

use std::sync::OnceLock;

use axum::Json;
use axum::extract::State;
use herald_core::catalog::introspect::{self, text_schema};
use herald_core::ids::MAX_KEY_LEN;
use herald_core::{ChannelKind, EventKind, Locale, Role};
use herald_store::audit::AuditKind;
use herald_store::redrive::{DELIVERY_STATES, RETRYABLE_STATES};
use serde_json::{Map, Value, json};

use crate::redrive::{MAX_LIMIT as MAX_DELIVERY_PAGE, MAX_REDRIVE};
use crate::startup::AppState;

/// Every path and method the document describes, as the router serves them.
pub const OPERATIONS: &[(&str, &str)] = &[
    ("/v1/events", "post"),
    ("/v1/events/{id}/cancel", "post"),
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
    ("/v1/admin/connections", "get"),
    ("/v1/admin/deliveries", "get"),
    ("/v1/admin/deliveries/retry", "post"),
    ("/v1/admin/deliveries/{id}/retry", "post"),
    ("/v1/admin/audit", "get"),
    ("/v1/admin/routing", "get"),
    ("/v1/admin/routing", "put"),
    ("/v1/admin/routing", "delete"),
    ("/healthz", "get"),
    ("/readyz", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
    ("/console", "get"),
    ("/u/{token}", "get"),
    ("/u/{token}", "post"),
];

/// Page size limit of `GET /v1/notifications` (`routes::inbox`).
const MAX_INBOX_PAGE: u32 = 100;
/// Longest device token or Web Push field (`routes::users`).
const MAX_DEVICE_TEXT: usize = 4_096;

/// The document, with this server's batch limit (`server.max_batch`).
pub async fn document(State(state): State<AppState>) -> Json<Value> {
    Json(spec(state.settings.server.max_batch))
}

/// The document for a server whose `server.max_batch` is `max_batch`
/// (`herald openapi` prints it).
pub fn spec(max_batch: usize) -> Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    let mut doc = DOC.get_or_init(build).clone();
    doc["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
        [1]["maxItems"] = json!(max_batch);
    doc
}

/// Who may call an operation (contract §7), as the handlers check it.
#[derive(Clone, Copy)]
enum Who {
    Anyone,
    /// Any valid token; the operation acts on the caller's own inbox.
    Caller,
    /// `{user}` themselves or an admin.
    SelfOrAdmin,
    /// `{user}` themselves, a service or an admin.
    SelfOrOperator,
    /// The owner of the notification or an admin.
    OwnerOrAdmin,
    ServiceOrAdmin,
    Admin,
}

impl Who {
    fn describe(self) -> &'static str {
        match self {
            Who::Anyone => "anyone, no token",
            Who::Caller => "any role, on the caller's own inbox (the token's `sub`)",
            Who::SelfOrAdmin => "the user `{user}` themselves, or an `admin`",
            Who::SelfOrOperator => "the user `{user}` themselves, a `service`, or an `admin`",
            Who::OwnerOrAdmin => {
                "the notification's owner, or an `admin` (another's is 404, so ids cannot be probed)"
            }
            Who::ServiceOrAdmin => "`service` or `admin`",
            Who::Admin => "`admin`",
        }
    }

    /// The roles that may call at all (before the `{user}` check).
    fn roles(self) -> Vec<&'static str> {
        let all = Role::ALL.iter().map(|r| r.as_str());
        match self {
            Who::Anyone => Vec::new(),
            Who::ServiceOrAdmin => vec![Role::Service.as_str(), Role::Admin.as_str()],
            Who::Admin => vec![Role::Admin.as_str()],
            Who::Caller | Who::SelfOrAdmin | Who::SelfOrOperator | Who::OwnerOrAdmin => {
                all.collect()
            }
        }
    }
}

fn build() -> Value {
    let mut paths = Map::new();
    for &(path, method) in OPERATIONS {
        let entry = paths.entry(path).or_insert_with(|| json!({}));
        entry[method] = operation(path, method);
    }
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Herald",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Notification dispatcher: publish domain events; Herald writes inboxes, fans out over Socket.IO (/socket.io/) and WebSocket (/ws), and delivers email, SMS and push per routing and preferences.\n\nEvery `/v1` call takes `Authorization: Bearer <JWT>`: claims `sub` (the user id; `id` accepted too), `role` (admin, restaurant, cashier, guest or service), `restaurantId` (restaurant and cashier), and `exp`. Each operation says which roles may call it (also as `x-herald-roles`); another role is 403.\n\nErrors are application/problem+json with a stable `code` and the `field` at fault. JSON integers beyond ±(2^53−1) and strings holding NUL are refused. A dependency that is down answers 503 with `Retry-After`.\n\nEvery response carries `X-Request-Id`: the request's own when it sent a plain token (up to 128 characters), else a new UUID; Herald's log lines of that request carry it.",
        },
        "security": [{ "bearer": [] }],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" }
            },
            "schemas": schemas(),
            "responses": {
                "Problem": problem("The request was refused; `code` says why, `field` where."),
                "Unavailable": problem("A dependency (the database, the delivery queue) is down: retry after `Retry-After` seconds. `code` is `unavailable`."),
            }
        }
    });
    realtime(&mut doc);
    introspect::bound_numbers(&mut doc);
    // NUL is refused in what a client sends; answers are described as
    // they are (a problem's `detail` may quote a refused value).
    for op in doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|methods| methods.values_mut())
    {
        for part in ["parameters", "requestBody"] {
            if let Some(part) = op.get_mut(part) {
                introspect::refuse_nul(part);
            }
        }
    }
    for name in REQUEST_SCHEMAS {
        introspect::refuse_nul(&mut doc["components"]["schemas"][*name]);
    }
    doc
}

/// The components that describe requests (the events' payloads refuse NUL
/// already, by the catalog).
const REQUEST_SCHEMAS: &[&str] = &[
    "Envelope",
    "Preferences",
    "Contact",
    "NewDevice",
    "RedriveRequest",
    "RoutingTable",
];

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } }
    })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn json_body(schema: Value) -> Value {
    let mut content = json!({ "application/json": {} });
    content["application/json"]["schema"] = schema;
    content
}

fn ok(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": json_body(schema) })
}

fn path_param(name: &str, description: &str, schema: Value) -> Value {
    let mut param =
        json!({ "name": name, "in": "path", "required": true, "description": description });
    param["schema"] = schema;
    param
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    let mut param =
        json!({ "name": name, "in": "query", "required": false, "description": description });
    param["schema"] = schema;
    param
}

fn header(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "header", "required": false, "description": description, "schema": { "type": "string" } })
}

fn string() -> Value {
    json!({ "type": "string" })
}

fn uuid() -> Value {
    json!({ "type": "string", "format": "uuid" })
}

fn integer(minimum: i64, maximum: i64) -> Value {
    json!({ "type": "integer", "minimum": minimum, "maximum": maximum })
}

/// Epoch milliseconds.
fn millis() -> Value {
    json!({ "type": "integer", "description": "Epoch milliseconds." })
}

fn nullable(mut schema: Value) -> Value {
    match schema.get("type").cloned() {
        Some(Value::String(t)) => schema["type"] = json!([t, "null"]),
        _ => schema = json!({ "anyOf": [schema, { "type": "null" }] }),
    }
    schema
}

fn object(required: &[&str], properties: Value) -> Value {
    let mut schema = json!({ "type": "object", "required": required });
    schema["properties"] = properties;
    schema
}

/// An object the server reads with `deny_unknown_fields`.
fn closed(required: &[&str], properties: Value) -> Value {
    let mut schema = object(required, properties);
    schema["additionalProperties"] = json!(false);
    schema
}

fn operation(path: &str, method: &str) -> Value {
    let user = || {
        path_param(
            "user",
            "A user id, as tokens name it in `sub`.",
            json!({ "type": "string", "minLength": 1 }),
        )
    };
    let id = |what: &str| {
        path_param(
            "id",
            &format!("The {what}'s id; one that is not (or not the caller's) is 404."),
            uuid(),
        )
    };
    let (summary, who, parameters, body, responses): (&str, Who, Vec<Value>, Option<Value>, Value) =
        match (path, method) {
            ("/v1/events", _) => (
                "Publish one event or an array of up to `server.max_batch`; `id` is the idempotency key",
                Who::ServiceOrAdmin,
                vec![
                    header(
                        "traceparent",
                        "A W3C trace context: with traces on (`telemetry.otlp_endpoint`), the publish and every delivery it makes join the caller's trace. A malformed one is ignored.",
                    ),
                    header(
                        "X-Request-Id",
                        "Tags every log line of the request; echoed in the response. Up to 128 of `A-Z a-z 0-9 - _ . : = + / @`; anything else is replaced by a new UUID.",
                    ),
                ],
                Some(json!({
                    "required": true,
                    "content": { "application/json": {
                        "schema": { "oneOf": [
                            schema_ref("Envelope"),
                            { "type": "array", "minItems": 1, "items": schema_ref("Envelope"),
                              "description": "A batch: validated whole, then written whole or not at all. More than `server.max_batch` is 413." }
                        ] },
                        "examples": examples(),
                    } }
                })),
                json!({
                    "202": ok(
                        "Durable: the event, its inbox entries and deliveries are committed. A repeated id with the same payload answers the same; with another payload, 409 `idempotency_conflict`.",
                        json!({ "oneOf": [
                            schema_ref("EventRecord"),
                            { "type": "array", "items": schema_ref("EventRecord") }
                        ] }),
                    ),
                }),
            ),
            ("/v1/events/{id}/cancel", _) => (
                "Cancel what an event still owes: its deliveries not yet sent, a scheduled event's inbox entries and realtime fan-out; idempotent",
                Who::ServiceOrAdmin,
                vec![path_param(
                    "id",
                    "The event's id, or the idempotency key it was published with; one Herald does not know is 404.",
                    json!({ "type": "string", "minLength": 1, "maxLength": MAX_KEY_LEN / 4 }),
                )],
                None,
                json!({ "200": ok(
                    "What became of the event's deliveries: `cancelled` now (reason `cancelled_by_publisher`, in each trace with the caller), `inFlight` (a worker held them: told to stop; what it already sent stays sent), `alreadySent` (reported, not undone), `alreadyFinal` (suppressed, failed, expired, cancelled before). A second call cancels 0 and reports the same.",
                    object(
                        &["eventId", "cancelled", "inFlight", "alreadySent", "alreadyFinal", "inboxHidden", "releaseCancelled"],
                        json!({
                            "eventId": uuid(),
                            "cancelled": integer(0, i64::MAX),
                            "inFlight": integer(0, i64::MAX),
                            "alreadySent": integer(0, i64::MAX),
                            "alreadyFinal": integer(0, i64::MAX),
                            "inboxHidden": { "type": "integer", "minimum": 0, "description": "Inbox entries of a scheduled event that will never be shown." },
                            "releaseCancelled": { "type": "boolean", "description": "A scheduled event's release (inbox and realtime at `sendAt`) was called off." },
                        }),
                    ),
                ) }),
            ),
            ("/console", _) => (
                "The browser console: notification centre and preferences for anyone with a token, connections, deliveries and routing for admins. Give the token once as `?token=`; the page keeps it in the tab and removes it from the address bar",
                Who::Anyone,
                vec![query(
                    "token",
                    "A Herald token, once: the page takes it out of the address bar and keeps it in the tab's storage.",
                    string(),
                )],
                None,
                json!({ "200": html("The console's page (its script and stylesheet are under `/console/`).") }),
            ),
            ("/u/{token}", "get") => (
                "The page an unsubscribe link opens: what it turns off, a button that does it (a GET changes nothing), a link to all settings; in the recipient's language",
                Who::Anyone,
                vec![token_param()],
                None,
                json!({
                    "200": html("The confirmation page."),
                    "403": html("The link is not valid (forged or mangled); nothing changes."),
                    "410": html("The link has expired; nothing changes."),
                }),
            ),
            ("/u/{token}", _) => (
                "Unsubscribe in one click (RFC 8058): turns the link's category × channel off in the recipient's preferences, recorded in their history and the message's trace",
                Who::Anyone,
                vec![token_param()],
                Some(json!({
                    "required": true,
                    "content": { "application/x-www-form-urlencoded": { "schema": object(
                        &["List-Unsubscribe"],
                        json!({
                            "List-Unsubscribe": { "const": "One-Click" },
                            "confirm": { "const": "page", "description": "Sent by the confirmation page's form: answer with the page (HTML) instead of JSON." },
                        }),
                    ) } }
                })),
                json!({
                    "200": or_page(ok("Unsubscribed (`changed`: false when it was already off); the page's own form gets the confirmation page.", object(
                        &["unsubscribed", "category", "channel", "changed"],
                        json!({
                            "unsubscribed": { "const": true },
                            "category": string(),
                            "channel": external_channels(),
                            "changed": { "type": "boolean" },
                        }),
                    ))),
                    "403": or_page(problem("`forbidden`: the link is not valid; nothing changes. The page's own form (`confirm=page`) gets the page instead.")),
                    "410": or_page(problem("`link_expired`: the link has expired; nothing changes. The page's own form (`confirm=page`) gets the page instead.")),
                    "422": problem("`validation_failed`: the body is not `List-Unsubscribe=One-Click` (`field`: `List-Unsubscribe`)."),
                }),
            ),
            ("/v1/notifications", _) => (
                "The caller's inbox, newest first",
                Who::Caller,
                vec![
                    query(
                        "unread",
                        "Only unread entries.",
                        json!({ "type": "string", "enum": ["true", "false", "1", "0"] }),
                    ),
                    query(
                        "cursor",
                        "`nextCursor` of the previous page.",
                        integer(1, i64::MAX),
                    ),
                    query(
                        "limit",
                        "Page size.",
                        json!({ "type": "integer", "minimum": 1, "maximum": MAX_INBOX_PAGE, "default": 20 }),
                    ),
                ],
                None,
                json!({ "200": ok("A page, newest first.", schema_ref("InboxPage")) }),
            ),
            ("/v1/notifications/unread-count", _) => (
                "How many inbox entries are unread",
                Who::Caller,
                vec![],
                None,
                json!({ "200": ok("The count.", object(&["count"], json!({ "count": integer(0, i64::MAX) }))) }),
            ),
            ("/v1/notifications/read-all", _) => (
                "Mark every inbox entry read",
                Who::Caller,
                vec![],
                None,
                json!({ "200": ok("How many entries this marked. When any, every socket of the user hears `notifications_read {all: true}` (see `x-herald-realtime`).", object(&["updated"], json!({ "updated": integer(0, i64::MAX) }))) }),
            ),
            ("/v1/notifications/{id}", "get") => (
                "One inbox entry",
                Who::Caller,
                vec![id("notification")],
                None,
                json!({ "200": ok("The entry.", schema_ref("Notification")) }),
            ),
            ("/v1/notifications/{id}", _) => (
                "Delete an inbox entry",
                Who::Caller,
                vec![id("notification")],
                None,
                json!({ "204": { "description": "Deleted; it is 404 from now on. Its deliveries not yet sent are cancelled (reason `inbox_deleted`). Every socket of the user hears `notification_deleted` (see `x-herald-realtime`)." } }),
            ),
            ("/v1/notifications/{id}/read", _) => (
                "Mark an inbox entry read (idempotent)",
                Who::Caller,
                vec![id("notification")],
                None,
                json!({ "200": ok("The entry, read. Every socket of the user hears `notifications_read` (see `x-herald-realtime`).", schema_ref("Notification")) }),
            ),
            ("/v1/notifications/{id}/deliveries", _) => (
                "Delivery status of each channel, with the decision's reason and the trace",
                Who::OwnerOrAdmin,
                vec![id("notification")],
                None,
                json!({ "200": ok("Every delivery the notification owes.", object(&["notificationId", "items"], json!({
                    "notificationId": uuid(),
                    "items": { "type": "array", "items": schema_ref("DeliveryRecord") }
                }))) }),
            ),
            ("/v1/users/{user}/preferences", "get") => (
                "A user's preferences, with their locale",
                Who::SelfOrAdmin,
                vec![user()],
                None,
                json!({ "200": ok("The preferences; absent entries defer to the routing table.", schema_ref("PreferencesView")) }),
            ),
            ("/v1/users/{user}/preferences", _) => (
                "Replace a user's preferences (and set their locale)",
                Who::SelfOrAdmin,
                vec![user()],
                Some(json!({ "required": true, "content": json_body(schema_ref("Preferences")) })),
                json!({ "200": ok("The preferences as stored.", schema_ref("PreferencesView")) }),
            ),
            ("/v1/users/{user}/contact", "get") => (
                "A user's contact: email, phone, locale, time zone, and directory entry",
                Who::SelfOrOperator,
                vec![user()],
                None,
                json!({ "200": ok("The contact; empty when none was set.", schema_ref("ContactRecord")) }),
            ),
            ("/v1/users/{user}/contact", _) => (
                "Set a user's contact (a field left out is cleared, except `role` and `restaurantId`)",
                Who::SelfOrOperator,
                vec![user()],
                Some(json!({ "required": true, "content": json_body(schema_ref("Contact")) })),
                json!({ "200": ok("The contact as stored.", schema_ref("ContactRecord")) }),
            ),
            ("/v1/users/{user}/devices", "get") => (
                "A user's push devices",
                Who::SelfOrOperator,
                vec![user()],
                None,
                json!({ "200": ok("The devices.", object(&["items"], json!({ "items": { "type": "array", "items": schema_ref("Device") } }))) }),
            ),
            ("/v1/users/{user}/devices", _) => (
                "Register an FCM token or a Web Push subscription",
                Who::SelfOrOperator,
                vec![user()],
                Some(json!({ "required": true, "content": json_body(schema_ref("NewDevice")) })),
                json!({
                    "201": ok("Registered.", schema_ref("Device")),
                    "200": ok("The token was registered already.", schema_ref("Device")),
                }),
            ),
            ("/v1/users/{user}/devices/{id}", _) => (
                "Remove a push device",
                Who::SelfOrOperator,
                vec![user(), id("device")],
                None,
                json!({ "204": { "description": "Removed." } }),
            ),
            ("/v1/users/{user}", _) => (
                "Erase a user: contact, preferences, devices, inbox, deliveries, action records, outbox files, and the values of the audit rows about them (irreversible)",
                Who::ServiceOrAdmin,
                vec![user()],
                None,
                json!({ "200": ok("What was erased, by kind; from now on the user is 404.", object(&["userId", "erased"], json!({
                    "userId": string(),
                    "erased": { "type": "object", "additionalProperties": { "type": "integer", "minimum": 0 } }
                }))) }),
            ),
            ("/v1/users/{user}/export", _) => (
                "Everything Herald keeps about a user, as JSON",
                Who::SelfOrOperator,
                vec![user()],
                None,
                json!({ "200": ok("Contact, preferences as set, devices, every inbox entry, deliveries, action records, and the audit rows about the user.", object(
                    &["userId", "contact", "preferences", "devices", "notifications", "deliveries", "actions", "audit"],
                    json!({
                        "userId": string(),
                        "contact": nullable(schema_ref("ContactRecord")),
                        "preferences": { "type": ["object", "null"] },
                        "devices": { "type": "array", "items": schema_ref("Device") },
                        "notifications": { "type": "array", "items": { "type": "object" } },
                        "deliveries": { "type": "array", "items": { "type": "object" } },
                        "actions": { "type": "array", "items": { "type": "object" } },
                        "audit": { "type": "array", "items": schema_ref("AuditEntry") }
                    }),
                )) }),
            ),
            ("/v1/admin/stats", _) => (
                "Connected users and sockets, rooms, queue depth and delivery backlog",
                Who::Admin,
                vec![],
                None,
                json!({ "200": ok("This node's sockets; the backlog shared by all nodes.", schema_ref("Stats")) }),
            ),
            ("/v1/admin/connections", _) => (
                "Connected users, their sockets and rooms (this node)",
                Who::Admin,
                vec![
                    query(
                        "after",
                        "A `nextAfter` this endpoint returned: the users after it.",
                        string(),
                    ),
                    query(
                        "limit",
                        &format!(
                            "Users per page, 1 to {} ({} by default).",
                            super::admin::CONNECTIONS_MAX_LIMIT,
                            super::admin::CONNECTIONS_DEFAULT_LIMIT
                        ),
                        integer(1, super::admin::CONNECTIONS_MAX_LIMIT as i64),
                    ),
                ],
                None,
                json!({ "200": ok("This node's connected users by user id, each socket oldest first with its rooms.", schema_ref("Connections")) }),
            ),
            ("/v1/admin/deliveries", _) => (
                "Deliveries newest first, by default the failed and expired ones",
                Who::Admin,
                delivery_filter_query(),
                None,
                json!({ "200": ok("A page, newest first.", object(&["items", "nextCursor"], json!({
                    "items": { "type": "array", "items": schema_ref("AdminDelivery") },
                    "nextCursor": nullable(string())
                }))) }),
            ),
            ("/v1/admin/deliveries/retry", _) => (
                "Re-drive deliveries by id, or the failed and expired ones a filter matches (at most `max`); idempotent",
                Who::Admin,
                vec![],
                Some(
                    json!({ "required": true, "content": json_body(schema_ref("RedriveRequest")) }),
                ),
                json!({ "202": ok(
                    "Failed and expired deliveries are pending again and queued; the others are left as they are and listed by why. A filter matching more than `max` is 422 naming `filter`, and changes nothing.",
                    schema_ref("RedriveReport"),
                ) }),
            ),
            ("/v1/admin/deliveries/{id}/retry", _) => {
                let retried = json!({ "allOf": [
                    schema_ref("AdminDelivery"),
                    object(&["alreadyQueued"], json!({ "alreadyQueued": { "type": "boolean" } }))
                ] });
                (
                    "Re-drive one failed or expired delivery; idempotent",
                    Who::Admin,
                    vec![id("delivery")],
                    None,
                    json!({
                        "202": ok("Re-driven: pending again, and queued.", retried.clone()),
                        "200": ok("Still owed an attempt (`alreadyQueued`: true): nothing was done.", retried),
                        "409": problem("`not_retryable`: the delivery is sent, delivered, suppressed or otherwise done."),
                    }),
                )
            }
            ("/v1/admin/audit", _) => (
                "Changes admins and services made to others' preferences, contact and devices, and to routing; newest first",
                Who::Admin,
                audit_query(),
                None,
                json!({ "200": ok("A page, newest first.", object(&["items", "nextCursor"], json!({
                    "items": { "type": "array", "items": schema_ref("AuditEntry") },
                    "nextCursor": nullable(string())
                }))) }),
            ),
            ("/v1/admin/routing", "get") => (
                "The routing table in force, in the routing file's shape, with its version (the `ETag`) and source",
                Who::Admin,
                vec![],
                None,
                json!({ "200": routing_answer("The table in force on this node.") }),
            ),
            ("/v1/admin/routing", "put") => (
                "Replace the routing table on every node, without a restart; checked by the routing file's rules",
                Who::Admin,
                vec![if_match()],
                Some(json!({ "required": true, "content": json_body(schema_ref("RoutingTable")) })),
                json!({
                    "200": routing_answer("Stored as a new version, audited, and in force."),
                    "412": problem("`precondition_failed`: `If-Match` names another version than the newest; nothing changed."),
                    "422": problem("`validation_failed`: the table breaks a rule of the routing file; `field` is the path at fault (`events.points_added.deliveries[0].to`). Nothing changed."),
                }),
            ),
            ("/v1/admin/routing", "delete") => (
                "Go back to the routing file (`routing.file`) on every node",
                Who::Admin,
                vec![if_match()],
                None,
                json!({
                    "200": routing_answer("The file is in force, as a new version (unchanged when it was already)."),
                    "412": problem("`precondition_failed`: `If-Match` names another version than the newest; nothing changed."),
                }),
            ),
            ("/healthz", _) => (
                "The process is up",
                Who::Anyone,
                vec![],
                None,
                json!({ "200": ok("Up.", object(&["status"], json!({ "status": { "const": "ok" } }))) }),
            ),
            ("/readyz", _) => (
                "Database, queue and realtime bus reachable; transports and breakers reported",
                Who::Anyone,
                vec![],
                None,
                json!({
                    "200": ok("Ready.", schema_ref("Readiness")),
                    "503": ok("Not ready: `checks` names what failed and why.", schema_ref("Readiness")),
                }),
            ),
            ("/metrics", _) => (
                "Prometheus metrics of this process",
                Who::Anyone,
                vec![],
                None,
                json!({
                    "200": {
                        "description": "Prometheus text exposition, version 0.0.4.",
                        "content": { "text/plain": { "schema": string() } }
                    },
                    "401": problem("`server.metrics_token` is set and the request did not send it as a Bearer token."),
                }),
            ),
            _ => (
                "This document",
                Who::Anyone,
                vec![],
                None,
                json!({ "200": ok("OpenAPI 3.1.", json!({ "type": "object" })) }),
            ),
        };
    let mut op = json!({
        "summary": summary,
        "description": format!("Who may call: {}.", who.describe()),
        "responses": responses,
    });
    if matches!(who, Who::Anyone) {
        op["security"] = json!([]);
    } else {
        op["x-herald-roles"] = json!(who.roles());
        // Any refusal is a problem document; a dependency down is 503.
        op["responses"]["4XX"] = json!({ "$ref": "#/components/responses/Problem" });
        op["responses"]["503"] = json!({ "$ref": "#/components/responses/Unavailable" });
    }
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    if let Some(body) = body {
        op["requestBody"] = body;
    }
    op
}

/// What sockets receive (`/socket.io/` and `/ws`), beside the REST paths:
/// `x-herald-realtime.events` maps each server-to-client event name to its
/// payload's schema — every catalog event (its payload plus `eventId`), the
/// connection's own events, and the read-state announcements of
/// `routes::inbox`. The TypeScript client's types are generated from it.
fn realtime(doc: &mut Value) {
    use crate::routes::inbox::{NOTIFICATION_DELETED, NOTIFICATIONS_READ};
    let schemas = &mut doc["components"]["schemas"];
    let unread = json!({ "type": "integer", "minimum": 0, "description": "The user's unread count after the change." });
    let own = [
        (
            "connected",
            "On connect: who the token names, and the stream position to resume from.",
            object(
                &["userId", "role", "timestamp", "serverId", "offset", "epoch"],
                json!({
                    "userId": string(),
                    "role": roles(),
                    "timestamp": millis(),
                    "serverId": string(),
                    "offset": integer(0, i64::MAX),
                    "epoch": nullable(string()),
                }),
            ),
        ),
        (
            "resumed",
            "The answer to a resume request: `recovered` true when every missed event was replayed, in order; false (with `reason` and `rooms`) when the client should refetch its inbox.",
            object(
                &["recovered", "replayed", "offset", "epoch"],
                json!({
                    "recovered": { "type": "boolean" },
                    "replayed": integer(0, i64::MAX),
                    "reason": { "type": "string", "enum": ["too_old", "epoch_changed", "unknown_event", "unknown_offset", "unauthorized", "history_unavailable"] },
                    "offset": integer(0, i64::MAX),
                    "epoch": string(),
                    "rooms": { "type": "array", "items": string() },
                }),
            ),
        ),
        (
            "error",
            "A refused message or a close's reason.",
            object(
                &["code", "message", "timestamp"],
                json!({
                    "code": { "type": "string", "enum": ["UNAUTHORIZED", "NOT_FOUND", "SERVER_ERROR", "RATE_LIMITED", "INVALID_SUBSCRIPTION", "BAD_REQUEST"] },
                    "message": string(),
                    "timestamp": millis(),
                }),
            ),
        ),
        (
            "disconnected",
            "Before a server-initiated close: reconnect after `reconnectDelay` milliseconds.",
            object(
                &["reason", "reconnectDelay"],
                json!({
                    "reason": { "type": "string", "enum": ["client_disconnect", "server_restart", "timeout"] },
                    "reconnectDelay": integer(0, i64::MAX),
                }),
            ),
        ),
        (
            NOTIFICATIONS_READ,
            "To the user's own room (`user:{id}`) when they mark entries read on any device: `ids` (one entry), or `all` (every entry they had).",
            object(
                &["ids", "all", "unreadCount", "eventId"],
                json!({
                    "ids": { "type": "array", "items": uuid() },
                    "all": { "type": "boolean" },
                    "unreadCount": unread,
                    "eventId": uuid(),
                }),
            ),
        ),
        (
            NOTIFICATION_DELETED,
            "To the user's own room (`user:{id}`) when they delete an entry on any device.",
            object(
                &["id", "unreadCount", "eventId"],
                json!({
                    "id": uuid(),
                    "unreadCount": unread,
                    "eventId": uuid(),
                }),
            ),
        ),
    ];
    let mut events = Map::new();
    for kind in EventKind::ALL.iter().copied() {
        events.insert(
            kind.as_str().to_owned(),
            json!({
                "description": "A catalog event: its payload, as published, plus `eventId`. The second argument (Socket.IO) or the frame (`/ws`) carries its `offset`.",
                "payload": schema_ref(&payload_schema(kind)),
                "eventId": true,
            }),
        );
    }
    for (name, description, schema) in own {
        let component = format!("realtime.{name}");
        schemas[&component] = schema;
        events.insert(
            name.to_owned(),
            json!({ "description": description, "payload": schema_ref(&component) }),
        );
    }
    doc["x-herald-realtime"] = json!({
        "description": "Server-to-client events on Socket.IO (`/socket.io/`) and the JSON WebSocket (`/ws`).",
        "events": events,
    });
}

/// An unsubscribe link's token.
fn token_param() -> Value {
    path_param(
        "token",
        "The signed token of an email's `List-Unsubscribe` or an SMS's hint.",
        json!({ "type": "string", "minLength": 1 }),
    )
}

/// A response that is problem+json for a mail client and an HTML page for
/// the confirmation page's own form.
fn or_page(mut response: Value) -> Value {
    response["content"]["text/html"] = json!({ "schema": string() });
    response
}

/// A response that is an HTML page.
fn html(description: &str) -> Value {
    json!({ "description": description, "content": { "text/html": { "schema": string() } } })
}

/// The filter of the admin's delivery list, as query parameters.
fn delivery_filter_query() -> Vec<Value> {
    vec![
        query(
            "status",
            "Delivery states, comma-separated; default `failed,expired`.",
            json!({ "type": "array", "items": { "type": "string", "enum": DELIVERY_STATES } }),
        )
        .as_object()
        .cloned()
        .map(|mut p| {
            p.insert("style".into(), json!("form"));
            p.insert("explode".into(), json!(false));
            Value::Object(p)
        })
        .expect("an object"),
        query("channel", "The delivery's channel.", external_channels()),
        query("provider", "The provider of the last attempt.", string()),
        query("reason", "The routing reason, exactly.", string()),
        query(
            "error",
            "Text the last error contains (any case).",
            string(),
        ),
        query("recipient", "The recipient's user id.", string()),
        query("event", "The event's name.", event_names(true)),
        query("eventId", "The event's id or idempotency key.", string()),
        query(
            "from",
            "Last changed at or after: RFC 3339 or epoch milliseconds.",
            instant(),
        ),
        query(
            "to",
            "Last changed at or before: RFC 3339 or epoch milliseconds; not before `from` (422 naming `to`).",
            instant(),
        ),
        query(
            "cursor",
            "`nextCursor` of the previous page, as it was returned; any other value is 422 naming `cursor`.",
            json!({ "type": "string", "pattern": "^[A-Za-z0-9_-]+$" }),
        ),
        query(
            "limit",
            "Page size.",
            json!({ "type": "integer", "minimum": 1, "maximum": MAX_DELIVERY_PAGE, "default": crate::redrive::DEFAULT_LIMIT }),
        ),
    ]
}

/// The filter of the audit log, as query parameters.
fn audit_query() -> Vec<Value> {
    vec![
        query("actor", "The token subject that made the change.", string()),
        query("target", "The user whose data changed.", string()),
        query(
            "kind",
            "What changed.",
            json!({ "type": "string", "enum": AuditKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>() }),
        ),
        query(
            "from",
            "At or after: RFC 3339 or epoch milliseconds.",
            instant(),
        ),
        query(
            "to",
            "At or before: RFC 3339 or epoch milliseconds; not before `from` (422 naming `to`).",
            instant(),
        ),
        query(
            "cursor",
            "`nextCursor` of the previous page, as it was returned; any other value is 422 naming `cursor`.",
            json!({ "type": "string", "pattern": "^[A-Za-z0-9_-]+$" }),
        ),
        query(
            "limit",
            "Page size.",
            json!({ "type": "integer", "minimum": 1, "maximum": MAX_DELIVERY_PAGE, "default": crate::redrive::DEFAULT_LIMIT }),
        ),
    ]
}

/// `If-Match` on the routing table's changes.
fn if_match() -> Value {
    json!({
        "name": "If-Match",
        "in": "header",
        "required": false,
        "description": "The `ETag` (version) of the table as read: the change is made only if it is still the newest (412 otherwise). `*` or none: whatever is newest.",
        "schema": string(),
    })
}

/// The answer of the routing table's operations, with its `ETag`.
fn routing_answer(description: &str) -> Value {
    let mut answer = ok(description, schema_ref("RoutingView"));
    answer["headers"] = json!({ "ETag": {
        "description": "The version, quoted: send it back in `If-Match`.",
        "schema": string(),
    } });
    answer
}

/// The routing file's shape, as JSON (`PUT /v1/admin/routing`): every
/// event of the catalog with its own entry, whose `{field}` placeholders,
/// recipients and conditions may name only that event's payload fields,
/// as the file's rules require.
fn routing_table() -> Value {
    let roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
    let mut events = Map::new();
    for kind in EventKind::ALL.iter().copied() {
        let fields = kind.fields().join("|");
        // Text whose every `{…}` names one of the event's fields.
        // No NUL, as in every string Herald reads.
        let template = format!("([^{{\\x00]|\\{{({fields})\\}})*");
        let text = |pattern: String, description: &str| json!({ "type": "string", "pattern": pattern, "description": description });
        let room = text(
            format!("^{template}$"),
            "A realtime room; `{field}` is a payload field.",
        );
        let recipient = text(
            format!(
                "^(role:({})|staff:{template}|\\{{({fields})\\}}{template})$",
                roles.join("|")
            ),
            "`{field}` (the user a payload field names), `role:NAME` or `staff:{field}`.",
        );
        let condition = json!({
            "type": "object",
            "description": "Payload field → the values it must have (every field listed must match).",
            "propertyNames": { "enum": kind.fields() },
            "additionalProperties": { "type": "array", "items": string() },
        });
        events.insert(
            kind.as_str().to_owned(),
            closed(
                &[],
                json!({
                    "rooms": { "type": "array", "items": room },
                    "inbox": { "type": "array", "items": recipient.clone() },
                    "deliveries": { "type": "array", "items": closed(&["to", "channels"], json!({
                        "to": recipient,
                        "channels": { "type": "array", "items": external_channels() },
                        "when": condition.clone(),
                        "mandatory": { "type": "boolean" },
                    })) },
                    "critical_when": condition,
                }),
            ),
        );
    }
    let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    let mut all = closed(&names, Value::Object(events));
    all["description"] =
        json!("Every event of the catalog, each with an entry (an empty one is fine).");
    let mut table = closed(&["events"], json!({ "events": all }));
    table["description"] = json!(
        "A routing table, in the shape of `config/routing.toml`, checked by the file's rules."
    );
    table
}

/// An instant: RFC 3339, or epoch milliseconds.
fn instant() -> Value {
    json!({ "anyOf": [
        { "type": "string", "format": "date-time" },
        { "type": "integer", "description": "Epoch milliseconds." }
    ] })
}

fn external_channels() -> Value {
    let names: Vec<&str> = ChannelKind::ALL
        .iter()
        .filter(|c| c.is_external())
        .map(|c| c.as_str())
        .collect();
    json!({ "type": "string", "enum": names })
}

/// Event names: those a producer may publish, or (`all`) every one,
/// Herald's own `delivery_failed` included.
fn event_names(all: bool) -> Value {
    let names: Vec<&str> = EventKind::ALL
        .iter()
        .filter(|k| all || !k.is_internal())
        .map(|k| k.as_str())
        .collect();
    json!({ "type": "string", "enum": names })
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

/// The name of an event's payload schema under `components/schemas`.
fn payload_schema(kind: EventKind) -> String {
    format!("event.{kind}")
}

fn schemas() -> Value {
    let mut schemas = Map::new();
    // Per event: its payload (derived from the catalog's type) and the
    // envelope that publishes it.
    let mut envelopes = Vec::new();
    for kind in EventKind::ALL.iter().copied() {
        let mut schema = kind.schema();
        schema["example"] = kind.example();
        schemas.insert(payload_schema(kind), schema);
        if kind.is_internal() {
            continue;
        }
        envelopes.push(closed(
            &["event", "data"],
            json!({
                "id": {
                    "type": ["string", "null"],
                    "minLength": 1,
                    // The key is bounded in bytes; a character is four at most.
                    "maxLength": MAX_KEY_LEN / 4,
                    "description": format!("Idempotency key (at most {MAX_KEY_LEN} bytes): the same id is one event, however often sent. Absent, Herald makes one."),
                },
                "event": { "const": kind.as_str() },
                "data": schema_ref(&payload_schema(kind)),
                "sendAt": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "description": "RFC 3339: deliver then — the deliveries fall due, the inbox entry appears and the realtime event goes out at `sendAt`. At most `scheduling.past_tolerance_seconds` in the past (sent at once) and `scheduling.max_ahead_days` ahead; otherwise 422 naming `sendAt` (`[i].sendAt` in an array). Cancel with `POST /v1/events/{id}/cancel`.",
                },
            }),
        ));
    }
    schemas.insert(
        "Envelope".into(),
        json!({
            "description": "One event: its name, its payload, and an optional idempotency key. Unknown fields are refused (422, `field` names them).",
            "oneOf": envelopes,
        }),
    );
    let rest = json!({
        "EventRecord": object(&["id", "event", "receivedAt"], json!({
            "id": uuid(),
            "event": event_names(false),
            "receivedAt": millis(),
        })),
        "Notification": object(
            &["id", "seq", "eventId", "event", "category", "title", "body", "data", "read", "readAt", "createdAt"],
            json!({
                "id": uuid(),
                "seq": { "type": "integer", "description": "Per recipient, strictly increasing: the inbox's cursor." },
                "eventId": uuid(),
                "event": event_names(true),
                "category": { "type": "string", "enum": EventKind::categories() },
                "title": string(),
                "body": string(),
                "data": { "type": "object", "description": "The event's payload, as published (with `timestamp`)." },
                "read": { "type": "boolean" },
                "readAt": nullable(millis()),
                "createdAt": millis(),
            }),
        ),
        "InboxPage": object(&["items", "nextCursor"], json!({
            "items": { "type": "array", "items": schema_ref("Notification") },
            "nextCursor": nullable(json!({ "type": "string", "description": "Pass as `cursor` for the next (older) page; null on the last page." })),
        })),
        "DeliveryRecord": object(
            &["id", "recipient", "channel", "status", "reason", "attempts", "lastError", "nextAttemptAt", "providerMessageId", "provider", "createdAt", "updatedAt", "trace"],
            json!({
                "id": uuid(),
                "recipient": string(),
                "channel": external_channels(),
                "status": { "type": "string", "enum": DELIVERY_STATES },
                "reason": string(),
                "attempts": integer(0, i64::MAX),
                "lastError": nullable(string()),
                "nextAttemptAt": nullable(millis()),
                "providerMessageId": nullable(string()),
                "provider": nullable(string()),
                "createdAt": millis(),
                "updatedAt": millis(),
                "digestKey": { "type": "string", "description": "The digest it goes out in: `quiet` (held by quiet hours) or a category (`points`). Absent when none." },
                "digestId": { "type": "string", "format": "uuid", "description": "On a `digested` delivery, the delivery that carried its digest; on that carrier, its own id. Absent otherwise." },
                "trace": { "type": "array", "items": object(&["at", "attempt", "step", "provider", "outcome", "detail", "actor"], json!({
                    "at": millis(),
                    "attempt": integer(0, i64::MAX),
                    "step": string(),
                    "provider": nullable(string()),
                    "outcome": nullable(string()),
                    "detail": nullable(string()),
                    "actor": nullable(string()),
                })) },
            }),
        ),
        "TimeZone": {
            "type": "string",
            "description": "An IANA time zone.",
            "enum": chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect::<Vec<_>>(),
        },
        "Preferences": preferences(),
        "PreferencesView": preferences_view(),
        "Contact": contact(),
        "ContactRecord": object(&[], json!({
            "email": string(),
            "phone": string(),
            "locale": locales(),
            "timezone": string(),
            "role": roles(),
            "restaurantId": string(),
        })),
        "NewDevice": new_device(),
        "Device": object(&["id", "kind", "token", "createdAt"], json!({
            "id": uuid(),
            "kind": { "type": "string", "enum": ["fcm", "webpush"] },
            "token": { "type": "string", "description": "The FCM registration token, or the Web Push endpoint." },
            "subscription": { "type": "object", "description": "The whole Web Push subscription." },
            "createdAt": millis(),
        })),
        "Stats": object(&["serverId", "connectedUsers", "totalSockets", "rooms", "transports", "queue"], json!({
            "serverId": string(),
            "connectedUsers": integer(0, i64::MAX),
            "totalSockets": integer(0, i64::MAX),
            "rooms": { "type": "integer", "minimum": 0, "description": "Rooms with a socket on this node." },
            "transports": object(&["socketio", "ws"], json!({
                "socketio": integer(0, i64::MAX),
                "ws": integer(0, i64::MAX),
            })),
            "queue": object(&["jobs", "deliveries"], json!({
                "jobs": { "type": "integer", "minimum": 0, "description": "Jobs waiting in the delivery queue." },
                "deliveries": {
                    "type": "object",
                    "description": "Deliveries owed an attempt, by status.",
                    "propertyNames": { "enum": DELIVERY_STATES },
                    "additionalProperties": integer(0, i64::MAX),
                },
            })),
        })),
        "Connections": object(&["serverId", "totalUsers", "users", "nextAfter"], json!({
            "serverId": string(),
            "totalUsers": { "type": "integer", "minimum": 0, "description": "Distinct users with a socket on this node." },
            "users": { "type": "array", "items": object(&["userId", "role", "restaurantId", "sockets"], json!({
                "userId": string(),
                "role": { "type": "string", "enum": ["admin", "restaurant", "cashier", "guest", "service"] },
                "restaurantId": nullable(string()),
                "sockets": { "type": "array", "items": object(&["id", "transport", "connectedAt", "rooms"], json!({
                    "id": { "type": "integer", "minimum": 0, "description": "This node's number for the socket." },
                    "transport": { "type": "string", "enum": ["socketio", "ws"] },
                    "connectedAt": millis(),
                    "rooms": { "type": "array", "items": string() },
                })) },
            })) },
            "nextAfter": { "type": ["string", "null"], "description": "Pass as `after` for the next page; null on the last page." },
        })),
        "AdminDelivery": object(
            &["id", "notificationId", "eventId", "event", "recipient", "channel", "provider", "status", "reason", "attempts", "lastError", "nextAttemptAt", "redrivenAt", "createdAt", "updatedAt"],
            json!({
                "id": uuid(),
                "notificationId": uuid(),
                "eventId": uuid(),
                "event": event_names(true),
                "recipient": string(),
                "channel": external_channels(),
                "provider": nullable(string()),
                "status": { "type": "string", "enum": DELIVERY_STATES },
                "reason": string(),
                "attempts": integer(0, i64::MAX),
                "lastError": nullable(string()),
                "nextAttemptAt": nullable(millis()),
                "redrivenAt": nullable(millis()),
                "createdAt": millis(),
                "updatedAt": millis(),
            }),
        ),
        "RedriveRequest": redrive_request(),
        "RoutingTable": routing_table(),
        "RoutingView": object(&["version", "etag", "source", "file", "updatedBy", "updatedAt", "table"], json!({
            "version": { "type": "integer", "minimum": 0, "description": "0: the routing file, nothing ever stored." },
            "etag": string(),
            "source": { "type": "string", "enum": ["file", "api"] },
            "file": { "type": "string", "description": "The routing file this node falls back on." },
            "updatedBy": nullable(schema_ref("Actor")),
            "updatedAt": nullable(millis()),
            "table": schema_ref("RoutingTable"),
        })),
        "Actor": object(&["subject", "role"], json!({
            "subject": string(),
            "role": { "type": "string", "enum": Role::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>() },
        })),
        "AuditEntry": object(&["id", "at", "actor", "target", "kind", "action", "before", "after", "erasedAt"], json!({
            "id": uuid(),
            "at": millis(),
            "actor": schema_ref("Actor"),
            "target": nullable(json!({ "type": "string", "description": "The user whose data changed; null for routing." })),
            "kind": { "type": "string", "enum": AuditKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>() },
            "action": { "type": "string", "enum": ["update", "add", "remove", "replace", "revert"] },
            "before": { "description": "The record before (null: none); device tokens masked. Null once the target was erased." },
            "after": { "description": "The record after (null: removed); device tokens masked. Null once the target was erased." },
            "erasedAt": nullable(millis()),
        })),
        "RedriveReport": object(&["requeued", "alreadyQueued", "notRetryable", "unknown"], json!({
            "requeued": { "type": "array", "items": uuid() },
            "alreadyQueued": { "type": "array", "items": uuid() },
            "notRetryable": { "type": "array", "items": object(&["id", "status"], json!({
                "id": uuid(),
                "status": { "type": "string", "enum": DELIVERY_STATES },
            })) },
            "unknown": { "type": "array", "items": uuid() },
        })),
        "Readiness": object(&["status", "checks"], json!({
            "status": { "type": "string", "enum": ["ready", "unavailable"] },
            "checks": object(&["database", "queue", "realtime", "channels", "providers"], json!({
                "database": readiness_word(),
                "queue": readiness_word(),
                "realtime": readiness_word(),
                "channels": { "type": "object", "description": "Each transport's own check, by channel (informational).", "additionalProperties": readiness_word() },
                "providers": { "type": "object", "description": "Each provider's circuit breaker (informational).", "additionalProperties": { "type": "string", "enum": ["closed", "open", "half_open"] } },
            })),
        })),
        "Problem": {
            "type": "object",
            "required": ["type", "title", "status", "detail", "code"],
            "properties": {
                "type": { "type": "string", "description": "`urn:herald:problem:{code}`." },
                "title": string(),
                "status": { "type": "integer", "minimum": 400, "maximum": 599 },
                "detail": string(),
                "code": { "type": "string", "enum": herald_core::problem::Code::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>() },
                "field": { "type": "string", "description": "The field at fault, e.g. `[3].data.amount`." }
            }
        }
    });
    if let Value::Object(rest) = rest {
        schemas.extend(rest);
    }
    Value::Object(schemas)
}

fn readiness_word() -> Value {
    json!({ "type": "string", "description": "`ok`, or `unavailable: <why>`.", "pattern": "^(ok|unavailable: [\\s\\S]*)$" })
}

fn locales() -> Value {
    let names: Vec<&str> = Locale::ALL.iter().map(|l| l.as_str()).collect();
    json!({ "type": "string", "enum": names })
}

fn roles() -> Value {
    let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
    json!({ "type": "string", "enum": names })
}

/// A switch per channel preferences can address.
fn channel_switches() -> Value {
    let properties: Map<String, Value> = ChannelKind::PREFERENCE
        .iter()
        .map(|c| (c.as_str().to_owned(), json!({ "type": "boolean" })))
        .collect();
    closed(&[], Value::Object(properties))
}

fn quiet_hours() -> Value {
    let time = json!({ "type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$", "description": "A time of day, HH:MM." });
    let mut schema = closed(
        &["start", "end"],
        json!({
            "start": time,
            "end": time,
            "timezone": nullable(schema_ref("TimeZone")),
        }),
    );
    schema["description"] = json!(
        "A nightly window in which push and SMS wait, unless the event is critical. `end` must differ from `start` (422 naming `quietHours.end`). Without `timezone`, the contact's, then UTC."
    );
    schema
}

/// The body of `PUT …/preferences`.
fn preferences() -> Value {
    let overrides: Map<String, Value> = EventKind::ALL
        .iter()
        .map(|k| k.as_str())
        .chain(EventKind::categories())
        .map(|key| (key.to_owned(), channel_switches()))
        .collect();
    let mut schema = closed(
        &[],
        json!({
            "enabled": { "type": "boolean", "default": true, "description": "The global switch: off silences everything but mandatory events." },
            "channels": channel_switches(),
            "overrides": {
                "type": "object",
                "description": "Per event name or category, per channel; the event's word beats the category's.",
                "properties": overrides,
                "additionalProperties": false,
            },
            "quietHours": nullable(quiet_hours()),
            "digests": digests(),
            "locale": nullable(json!({
                "type": "string",
                "pattern": "^([Rr][Uu]|[Ee][Nn])([-_][^\\u0000]*)?$",
                "description": "ru or en; a region is ignored (`ru-RU`, `en_GB`). Stored with the contact.",
            })),
        }),
    );
    schema["description"] =
        json!("A user's preferences, replaced whole; an absent entry defers to the routing table.");
    schema
}

/// What `GET`/`PUT …/preferences` answer.
fn preferences_view() -> Value {
    object(
        &["enabled", "channels", "overrides", "quietHours", "locale"],
        json!({
            "enabled": { "type": "boolean" },
            "channels": { "type": "object", "additionalProperties": { "type": "boolean" } },
            "overrides": { "type": "object", "additionalProperties": { "type": "object", "additionalProperties": { "type": "boolean" } } },
            "quietHours": nullable(object(&["start", "end"], json!({
                "start": string(),
                "end": string(),
                "timezone": string(),
            }))),
            "locale": nullable(locales()),
            "digests": { "type": "object", "additionalProperties": object(&["at"], json!({ "at": string(), "timezone": string() })) },
        }),
    )
}

/// `digests` of the preferences: per category, daily at a local time.
fn digests() -> Value {
    let time = json!({ "type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$", "description": "A time of day, HH:MM." });
    let daily = closed(
        &["at"],
        json!({ "at": time, "timezone": nullable(schema_ref("TimeZone")) }),
    );
    let categories: Map<String, Value> = EventKind::categories()
        .into_iter()
        .map(|c| (c.to_owned(), daily.clone()))
        .collect();
    json!({
        "type": "object",
        "description": "Per category: its email, SMS and push go out as one digest a day at `at` (local time: `timezone`, else the contact's, else UTC) instead of one message per event. Inbox entries still appear at once; critical events are never digested. An unknown category is 422 naming `digests.NAME`.",
        "properties": categories,
        "additionalProperties": false,
    })
}

/// The body of `PUT …/contact`.
fn contact() -> Value {
    let staff: Vec<&str> = Role::ALL
        .iter()
        .filter(|r| r.is_staff())
        .map(|r| r.as_str())
        .collect();
    let mut schema = closed(
        &[],
        json!({
            "email": nullable(introspect::email_schema()),
            "phone": nullable(json!({ "type": "string", "pattern": "^\\+[1-9][0-9]{7,14}$", "description": "E.164." })),
            "locale": nullable(locales()),
            "timezone": nullable(schema_ref("TimeZone")),
            "role": nullable(json!({ "type": "string", "enum": Role::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>(), "description": "A service or an admin only (403 otherwise): puts the user in the groups routing addresses." })),
            "restaurantId": nullable(json!({ "type": "string", "description": "A service or an admin only (403 otherwise)." })),
        }),
    );
    // Staff belong to a restaurant: a staff role comes with its restaurant
    // (or the one already on file).
    schema["anyOf"] = json!([
        { "properties": { "role": { "not": { "enum": staff } } } },
        { "required": ["restaurantId"], "properties": { "restaurantId": { "type": "string" } } },
    ]);
    schema["description"] = json!(
        "A field left out is cleared, except `role` and `restaurantId`, which are kept. A user's own role and restaurant come from their token."
    );
    schema
}

/// The body of `POST …/devices`.
fn new_device() -> Value {
    let token = text_schema(MAX_DEVICE_TEXT);
    let endpoint = json!({
        "type": "string",
        "pattern": "^https://[^\\x00]*$",
        "maxLength": MAX_DEVICE_TEXT / 4,
        "description": format!("An https URL, at most {MAX_DEVICE_TEXT} bytes."),
    });
    json!({
        "description": "An FCM registration token, or a Web Push subscription as the browser's `PushSubscription.toJSON()` gives it.",
        "oneOf": [
            closed(&["kind", "token"], json!({
                "kind": { "const": "fcm" },
                "token": token,
            })),
            closed(&["kind", "subscription"], json!({
                "kind": { "const": "webpush" },
                "subscription": closed(&["endpoint", "keys"], json!({
                    "endpoint": endpoint,
                    "expirationTime": nullable(millis()),
                    "keys": closed(&["p256dh", "auth"], json!({
                        "p256dh": token,
                        "auth": token,
                    })),
                })),
            })),
        ]
    })
}

/// The body of `POST /v1/admin/deliveries/retry`.
fn redrive_request() -> Value {
    let retryable = json!({ "type": "string", "enum": RETRYABLE_STATES });
    let filter = closed(
        &[],
        json!({
            "status": {
                "description": "`failed`, `expired` or both (the default): one, comma-separated, or a list.",
                "anyOf": [
                    { "type": "string", "enum": ["failed", "expired", "failed,expired", "expired,failed"] },
                    { "type": "array", "items": retryable }
                ]
            },
            "channel": external_channels(),
            "provider": string(),
            "reason": string(),
            "error": string(),
            "recipient": string(),
            "event": event_names(true),
            "eventId": string(),
            "from": instant(),
            "to": { "allOf": [instant()], "description": "Not before `from` (422 naming `filter.to`)." },
        }),
    );
    json!({
        "description": format!("`ids` (at most {MAX_REDRIVE}), or a `filter` with `max` (1 to {MAX_REDRIVE}, default {MAX_REDRIVE}); not both."),
        "oneOf": [
            closed(&["ids"], json!({
                "ids": { "type": "array", "minItems": 1, "maxItems": MAX_REDRIVE, "items": uuid() }
            })),
            closed(&["filter"], json!({
                "filter": filter,
                "max": { "type": "integer", "minimum": 1, "maximum": MAX_REDRIVE, "default": MAX_REDRIVE }
            })),
        ]
    })
}
