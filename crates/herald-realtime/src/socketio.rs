//! Socket.IO v4 at `/socket.io/` (socketioxide), WebSocket and
//! long-polling, so the platform's `socket.io-client` connects unchanged.
//!
//! The connect middleware does all the work that can refuse a client —
//! token (`auth.token`, or a Bearer header on the handshake request),
//! registration — before socketioxide answers the CONNECT packet, so a bad
//! token is a `connect_error` whose message starts with `UNAUTHORIZED`.
//! Client events do not go through socketioxide's per-event handlers
//! (each would be a spawned task, and messages could overtake each other):
//! one [`Inlet`] takes every event inline, in arrival order, applies the
//! rate limit and queues it for the session.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use socketioxide::adapter::LocalAdapter;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use socketioxide::handler::{ConnectHandler, FromMessageParts, MessageHandler};
use socketioxide::socket::{DisconnectReason, Socket};
use socketioxide::{SocketIo, TransportType};
use tokio::sync::{mpsc, oneshot};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::guard::Ticket;
use crate::hub::{Conn, Hub, Transport};
use crate::protocol::{CloseReason, Refusal};
use crate::session::{Bucket, Inbound, Link, Reply, Session};

/// The `/socket.io/` route, with the hub's limits, and its engine.
pub(crate) fn router<S: Clone + Send + Sync + 'static>(hub: &Hub) -> (axum::Router<S>, SocketIo) {
    let c = hub.config();
    let (svc, io) = SocketIo::builder()
        .ping_interval(c.ping_interval())
        .ping_timeout(c.ping_timeout())
        .connect_timeout(c.connect_timeout())
        .max_buffer_size(c.outbound_queue)
        .max_payload(c.max_message_bytes as u64)
        .ws_read_buffer_size(c.read_buffer_bytes)
        .ws_max_message_size(c.max_message_bytes)
        .ws_max_frame_size(c.max_message_bytes)
        .transports([TransportType::Polling, TransportType::Websocket])
        .build_svc();
    let admit_hub = hub.clone();
    io.ns(
        "/",
        start.with(move |socket: SocketRef, TryData(auth): TryData<Value>| {
            let hub = admit_hub.clone();
            async move { admit(hub, socket, auth.ok()).await }
        }),
    );
    // Long-polling from a browser page is a cross-origin XHR when the page
    // is served elsewhere: answer CORS for the origins the allowlist admits
    // (the Origin check in front has refused the others already).
    let origins = c.allowed_origins.clone();
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin, parts| {
            let host = parts
                .headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok());
            origin
                .to_str()
                .is_ok_and(|o| crate::origin::allowed(o, host, &origins))
        }))
        .allow_credentials(true)
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
        ]);
    (
        axum::Router::new()
            .route_service("/socket.io/", svc)
            .layer(cors),
        io,
    )
}

/// Lets the session start once socketioxide has sent the CONNECT answer
/// (before that, emits are refused).
#[derive(Clone)]
struct Starter(Arc<Mutex<Option<oneshot::Sender<()>>>>);

async fn start(socket: SocketRef) {
    if let Some(Starter(tx)) = socket.extensions.get::<Starter>()
        && let Some(tx) = tx.lock().expect("starter lock").take()
    {
        let _ = tx.send(());
    }
}

/// Why a handshake was refused; socketioxide sends it as `connect_error`.
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bearer(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(|t| t.trim().to_owned())
}

async fn admit(hub: Hub, socket: SocketRef, auth: Option<Value>) -> Result<(), Refused> {
    let auth = auth.unwrap_or(Value::Null);
    let token = match auth.get("token") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => bearer(&socket.req_parts().headers)
            .ok_or_else(|| Refused("UNAUTHORIZED: missing token (send it as auth.token)".into()))?,
    };
    let (principal, exp) = hub
        .inner
        .verifier
        .verify(&token)
        .map_err(|e| Refused(format!("UNAUTHORIZED: {e}")))?;
    let registered = hub
        .register(principal, Transport::SocketIo)
        .map_err(|r| Refused(format!("{}: {}", r.code.as_str(), r.message)))?;
    // Authenticated: the session no longer counts against the pending cap.
    if let Some(ticket) = socket.req_parts().extensions.get::<Arc<Ticket>>() {
        ticket.settle();
    }
    let conn = registered.conn.clone();
    tracing::info!(
        conn = conn.id,
        user = %conn.principal.user_id.as_str(),
        role = conn.principal.role.as_str(),
        transport = "socketio",
        "realtime connection opened"
    );
    let config = hub.config();
    let (tx, rx) = mpsc::channel(config.rate_limit_burst as usize * 2 + 8);
    socket.on_fallback(Inlet {
        tx,
        conn: conn.clone(),
        bucket: Arc::new(Mutex::new(Bucket::new(
            config.rate_limit_per_second,
            config.rate_limit_burst,
        ))),
    });
    let on_close = conn.clone();
    socket.on_disconnect(move |reason: DisconnectReason| async move {
        on_close.kill(match reason {
            DisconnectReason::TransportClose | DisconnectReason::ClientNSDisconnect => {
                CloseReason::ClientDisconnect
            }
            DisconnectReason::HeartbeatTimeout => CloseReason::Timeout,
            DisconnectReason::ClosingServer => CloseReason::ServerRestart,
            DisconnectReason::ServerNSDisconnect => CloseReason::ClientDisconnect,
            _ => CloseReason::TransportError,
        });
    });
    let (started, ready) = oneshot::channel();
    socket
        .extensions
        .insert(Starter(Arc::new(Mutex::new(Some(started)))));
    let resume = auth.get("resume").filter(|r| !r.is_null()).cloned();
    let session = Session::new(
        hub.clone(),
        registered,
        Link::SocketIo(socket),
        rx,
        exp,
        None,
    );
    let handshake = config.ping_timeout();
    tokio::spawn(async move {
        if let Ok(Ok(())) = tokio::time::timeout(handshake, ready).await {
            session.run(resume).await;
        } else {
            // socketioxide could not complete the handshake.
            hub.unregister(&conn, CloseReason::TransportError);
        }
    });
    Ok(())
}

/// Takes every client event of one socket, inline and in order.
#[derive(Clone)]
struct Inlet {
    tx: mpsc::Sender<Box<Inbound>>,
    conn: Arc<Conn>,
    bucket: Arc<Mutex<Bucket>>,
}

/// [`MessageHandler`]'s type parameter for [`Inlet`].
#[derive(Debug)]
struct InletMarker;

impl MessageHandler<LocalAdapter, InletMarker> for Inlet {
    fn call(
        &self,
        s: Arc<Socket<LocalAdapter>>,
        mut v: socketioxide::handler::Value,
        ack: Option<i64>,
    ) {
        // A connection on its way out takes nothing more.
        if self.conn.is_killed() {
            return;
        }
        if !self.bucket.lock().expect("bucket lock").take() {
            self.conn.kill(CloseReason::RateLimited);
            return;
        }
        let event = Event::from_message_parts(&s, &mut v, &ack)
            .map(|e| e.0)
            .unwrap_or_default();
        let data = match TryData::<Value>::from_message_parts(&s, &mut v, &ack) {
            Ok(TryData(Ok(data))) => Ok(data),
            _ => Err(Refusal::bad_request("the event's data is not JSON")),
        };
        let reply = match ack {
            Some(_) => match AckSender::from_message_parts(&s, &mut v, &ack) {
                Ok(sender) => Reply::SocketIo(sender),
                Err(never) => match never {},
            },
            None => Reply::None,
        };
        if self
            .tx
            .try_send(Box::new(Inbound { event, data, reply }))
            .is_err()
        {
            self.conn.kill(CloseReason::RateLimited);
        }
    }
}
