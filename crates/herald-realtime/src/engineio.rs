//! Engine.IO v4 at `/socket.io/`: the handshake, WebSocket and HTTP
//! long-polling, the polling→WebSocket upgrade, ping/pong, and the table of
//! open sessions. What travels inside Engine.IO's message packets is
//! Socket.IO's business ([`crate::socketio`]).
//!
//! **One connection, at most one task.** A WebSocket session is one task:
//! it does its reads, its own writes, its pings and its timeouts in one
//! `select!` loop. Once the client authenticates, the socket moves into
//! the connection's [`Outbox`](crate::outbox::Outbox), where the hub's
//! fan-out writes events to it directly; the task writes only what had to
//! be queued (a slow client's backlog, events that arrived while it
//! answered), in one flush. A long-polling session has no task at all:
//! its state sits in the session table, a `GET` waits for something to
//! send (an event, an answer, a ping) and writes it, a `POST` hands the
//! client's packets to the session inline. One sweeper per node frees the sessions whose client stopped
//! polling for `ping_interval + ping_timeout`, and the unauthenticated ones
//! after the connect timeout.
//!
//! **Protocol misuse** is answered as the reference server answers it: an
//! unknown `sid` is `400 {"code":1,"message":"Session ID unknown"}`; an
//! unknown transport code 0; a handshake that is not a `GET` code 2; a
//! transport that is not the session's, and overlapping polls, code 3
//! (`400`); a second WebSocket on a session that has upgraded already is
//! accepted and closed at once; a polling body larger than `maxPayload`
//! is `413` and closes the session; a WebSocket message larger than that
//! closes it with 1009. Binary packets are refused: the session is closed
//! (WebSocket close code 1003).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::guard::Ticket;
use crate::hub::{Conn, Hub, now_ms};
use crate::outbox::Socket;
use crate::protocol::CloseReason;
use crate::session::close_code;
use crate::socketio::Conversation;

/// Engine.IO's packet separator in a long-polling payload.
const SEPARATOR: char = '\x1e';
/// How long a client has to finish an upgrade it started.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// An Engine.IO packet, by its type digit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Packet<'a> {
    Open,
    Close,
    Ping(&'a str),
    Pong(&'a str),
    Message(&'a str),
    Upgrade,
    Noop,
    /// `b…`: a base64 binary message (long-polling).
    Binary,
}

/// Decodes one Engine.IO text packet.
pub(crate) fn decode(text: &str) -> Result<Packet<'_>, &'static str> {
    let rest = text.get(1..).unwrap_or("");
    match text.as_bytes().first() {
        Some(b'0') => Ok(Packet::Open),
        Some(b'1') => Ok(Packet::Close),
        Some(b'2') => Ok(Packet::Ping(rest)),
        Some(b'3') => Ok(Packet::Pong(rest)),
        Some(b'4') => Ok(Packet::Message(rest)),
        Some(b'5') => Ok(Packet::Upgrade),
        Some(b'6') => Ok(Packet::Noop),
        Some(b'b') => Ok(Packet::Binary),
        _ => Err("unknown packet type"),
    }
}

/// The reference server's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    UnknownTransport = 0,
    UnknownSid = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    UnsupportedProtocolVersion = 5,
}

impl Refused {
    fn message(self) -> &'static str {
        match self {
            Refused::UnknownTransport => "Transport unknown",
            Refused::UnknownSid => "Session ID unknown",
            Refused::BadHandshakeMethod => "Bad handshake method",
            Refused::BadRequest => "Bad request",
            Refused::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let body = json!({ "code": self as u8, "message": self.message() });
        (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
    }
}

/// A session's transport, as far as requests with its `sid` care.
const POLLING: u8 = 0;
/// A WebSocket probe succeeded; the client is finishing the upgrade.
const UPGRADING: u8 = 1;
/// The session runs over WebSocket.
const WEBSOCKET: u8 = 2;
/// Closed by the server as a whole (shutdown).
const SHUT: u8 = 3;

/// The open sessions of one node.
#[derive(Debug, Default)]
pub(crate) struct Engine {
    sessions: Mutex<HashMap<Box<str>, Entry>>,
}

#[derive(Debug)]
enum Entry {
    /// A long-polling session (possibly upgrading or upgraded).
    Polling(Arc<Slot>),
    /// A session opened over WebSocket: its task holds everything.
    WebSocket,
}

impl Engine {
    fn insert(&self, hub: &Hub, sid: &str, entry: Entry) {
        self.sessions
            .lock()
            .expect("sessions lock")
            .insert(sid.into(), entry);
        hub.metrics().engine_sessions.inc();
    }

    fn remove(&self, hub: &Hub, sid: &str) {
        if self
            .sessions
            .lock()
            .expect("sessions lock")
            .remove(sid)
            .is_some()
        {
            hub.metrics().engine_sessions.dec();
        }
    }

    fn polling(&self, sid: &str) -> Option<Option<Arc<Slot>>> {
        let sessions = self.sessions.lock().expect("sessions lock");
        sessions.get(sid).map(|entry| match entry {
            Entry::Polling(slot) => Some(slot.clone()),
            Entry::WebSocket => None,
        })
    }

    /// Shutdown: every long-polling session still open is closed (their
    /// pending polls answer with a close packet); WebSocket sessions close
    /// themselves.
    pub(crate) fn close_all(&self) {
        let sessions = self.sessions.lock().expect("sessions lock");
        for entry in sessions.values() {
            if let Entry::Polling(slot) = entry {
                slot.mode.store(SHUT, Ordering::SeqCst);
                slot.wake.notify_one();
            }
        }
    }
}

/// A long-polling session: no task, just state its requests share.
#[derive(Debug)]
struct Slot {
    sid: Box<str>,
    talk: tokio::sync::Mutex<Talk>,
    /// Something for the pending poll: output, a mode change, a feed.
    wake: Notify,
    /// The pending poll left.
    idle: Notify,
    /// A `GET` is pending.
    polling: AtomicBool,
    /// A `POST` is being read.
    posting: AtomicBool,
    /// When the client last made a request (ms).
    heard: AtomicI64,
    /// When the next ping is due (ms).
    next_ping: AtomicI64,
    mode: AtomicU8,
    /// The connection, once authenticated: the hub queues its events in
    /// its outbox, and the pending poll waits on it.
    feed: Mutex<Option<Arc<Conn>>>,
}

#[derive(Debug)]
struct Talk {
    conversation: Conversation,
}

/// `GET|POST /socket.io/?EIO=4&transport=…[&sid=…]`.
pub(crate) async fn serve(
    State(hub): State<Hub>,
    Query(query): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    request: Request,
) -> Response {
    let transport = query.get("transport").map(String::as_str);
    if !matches!(transport, Some("polling" | "websocket")) {
        return Refused::UnknownTransport.into_response();
    }
    let websocket = transport == Some("websocket");
    let method = request.method().clone();
    let Some(sid) = query.get("sid").filter(|s| !s.is_empty()) else {
        if method != Method::GET {
            return Refused::BadHandshakeMethod.into_response();
        }
        if query.get("EIO").map(String::as_str) != Some("4") {
            return Refused::UnsupportedProtocolVersion.into_response();
        }
        let bearer = crate::ws::bearer(request.headers());
        let ticket = request.extensions().get::<Arc<Ticket>>().cloned();
        if hub.is_closing() {
            return Refused::BadRequest.into_response();
        }
        let mut conversation = Conversation::new(&hub, bearer, ticket);
        return match (websocket, ws) {
            (false, _) => open_polling(&hub, conversation),
            (true, Ok(ws)) => configure(&hub, ws).on_upgrade(move |socket| {
                let mut socket = Socket::new(socket);
                async move {
                    let sid = new_sid();
                    hub.engine().insert(&hub, &sid, Entry::WebSocket);
                    let hello = handshake(&hub, &sid, false);
                    if socket.send(Message::Text(hello.into())).await.is_ok() {
                        run(&hub, socket, &mut conversation, None).await;
                    }
                    hub.engine().remove(&hub, &sid);
                }
            }),
            (true, Err(_)) => Refused::BadRequest.into_response(),
        };
    };
    let Some(entry) = hub.engine().polling(sid) else {
        return Refused::UnknownSid.into_response();
    };
    if websocket {
        let Ok(ws) = ws else {
            return Refused::BadRequest.into_response();
        };
        let slot = entry.filter(|slot| {
            slot.mode
                .compare_exchange(POLLING, UPGRADING, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        });
        return configure(&hub, ws).on_upgrade(move |socket| {
            let mut socket = Socket::new(socket);
            async move {
                match slot {
                    Some(slot) => upgrade(hub, slot, socket).await,
                    // Upgrading or upgraded already: the reference server
                    // accepts the socket and closes it.
                    None => {
                        let _ = socket.send(Message::Close(None)).await;
                    }
                }
            }
        });
    }
    let Some(slot) = entry else {
        return Refused::BadRequest.into_response();
    };
    if slot.mode.load(Ordering::SeqCst) == WEBSOCKET {
        return Refused::BadRequest.into_response();
    }
    match method {
        Method::GET => poll(&hub, &slot).await,
        Method::POST => post(&hub, &slot, request.into_body()).await,
        _ => Refused::BadRequest.into_response(),
    }
}

fn new_sid() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The open packet: `0{"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}`.
fn handshake(hub: &Hub, sid: &str, polling: bool) -> String {
    let c = hub.config();
    let upgrades: &[&str] = if polling { &["websocket"] } else { &[] };
    let open = json!({
        "sid": sid,
        "upgrades": upgrades,
        "pingInterval": c.ping_interval_ms,
        "pingTimeout": c.ping_timeout_ms,
        "maxPayload": c.max_message_bytes,
    });
    format!("0{open}")
}

/// The WebSocket's buffers and limits: a few KiB per idle socket.
fn configure(hub: &Hub, ws: WebSocketUpgrade) -> WebSocketUpgrade {
    let c = hub.config();
    ws.read_buffer_size(c.read_buffer_bytes)
        .write_buffer_size(c.write_buffer_bytes)
        .max_write_buffer_size(c.write_buffer_bytes + 2 * c.max_message_bytes)
        .max_message_size(crate::ws::hard_cap(c.max_message_bytes))
        .max_frame_size(crate::ws::hard_cap(c.max_message_bytes))
}

fn text_response(body: String) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    response
}

fn open_polling(hub: &Hub, conversation: Conversation) -> Response {
    let sid = new_sid();
    let now = now_ms();
    let slot = Arc::new(Slot {
        sid: sid.as_str().into(),
        talk: tokio::sync::Mutex::new(Talk { conversation }),
        feed: Mutex::new(None),
        wake: Notify::new(),
        idle: Notify::new(),
        polling: AtomicBool::new(false),
        posting: AtomicBool::new(false),
        heard: AtomicI64::new(now),
        next_ping: AtomicI64::new(now + hub.config().ping_interval_ms as i64),
        mode: AtomicU8::new(POLLING),
    });
    hub.engine().insert(hub, &sid, Entry::Polling(slot));
    text_response(handshake(hub, &sid, true))
}

/// Joins packets into one long-polling payload.
fn join(frames: &[Utf8Bytes]) -> String {
    let mut body = String::with_capacity(frames.iter().map(|f| f.len() + 1).sum());
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            body.push(SEPARATOR);
        }
        body.push_str(frame.as_str());
    }
    body
}

fn payload(frames: &[Utf8Bytes]) -> Response {
    text_response(join(frames))
}

/// Closes a long-polling session from one of its requests.
async fn end_polling(hub: &Hub, slot: &Slot, reason: CloseReason) {
    slot.talk.lock().await.conversation.finish(reason);
    hub.engine().remove(hub, &slot.sid);
    slot.wake.notify_one();
}

/// Marks the pending poll gone when the request ends, however it ends.
struct Polling<'a>(&'a Slot);

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.0.polling.store(false, Ordering::SeqCst);
        self.0.idle.notify_one();
    }
}

/// A long-polling `GET`: waits for something to send, then sends all of it.
async fn poll(hub: &Hub, slot: &Arc<Slot>) -> Response {
    if slot.polling.swap(true, Ordering::SeqCst) {
        // The reference server closes a session whose polls overlap.
        end_polling(hub, slot, CloseReason::TransportError).await;
        return Refused::BadRequest.into_response();
    }
    let _polling = Polling(slot);
    slot.heard.store(now_ms(), Ordering::Relaxed);
    let ping_every = hub.config().ping_interval_ms as i64;
    loop {
        let deadline;
        let conn;
        {
            let mut talk = slot.talk.lock().await;
            let conversation = &mut talk.conversation;
            conversation.take_queued();
            conn = slot.feed.lock().expect("feed lock").clone();
            let killed = conn.as_ref().and_then(|c| c.killed());
            let mode = slot.mode.load(Ordering::SeqCst);
            if !conversation.is_closed() {
                let reason = if mode == SHUT {
                    Some(CloseReason::ServerRestart)
                } else {
                    killed.or_else(|| conversation.due())
                };
                if let Some(reason) = reason {
                    conversation.finish(reason);
                }
            }
            let now = now_ms();
            let mut out = std::mem::take(&mut conversation.out);
            if conversation.is_closed() {
                out.push(Utf8Bytes::from_static("1"));
                drop(talk);
                hub.engine().remove(hub, &slot.sid);
                return payload(&out);
            }
            if now >= slot.next_ping.load(Ordering::Relaxed) {
                out.push(Utf8Bytes::from_static("2"));
                slot.next_ping.store(now + ping_every, Ordering::Relaxed);
            }
            if mode != POLLING {
                // Upgrading: the pending poll answers at once so the
                // client can pause polling (`6`, noop, when there is
                // nothing else to say).
                if out.is_empty() {
                    out.push(Utf8Bytes::from_static("6"));
                }
                return payload(&out);
            }
            if !out.is_empty() {
                return payload(&out);
            }
            let ping_at = Instant::now()
                + Duration::from_millis(
                    (slot.next_ping.load(Ordering::Relaxed) - now).max(0) as u64
                );
            deadline = talk
                .conversation
                .deadline()
                .map_or(ping_at, |d| d.min(ping_at));
        }
        // An event queued or a kill after the look above left a permit:
        // no wake-up is lost between the look and the wait.
        match conn {
            Some(c) => {
                tokio::select! {
                    () = c.outbox.notified() => {}
                    () = slot.wake.notified() => {}
                    () = tokio::time::sleep_until(deadline) => {}
                }
            }
            None => {
                tokio::select! {
                    () = slot.wake.notified() => {}
                    () = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
    }
}

/// A long-polling `POST`: the client's packets, handled in order.
async fn post(hub: &Hub, slot: &Arc<Slot>, body: Body) -> Response {
    if slot.posting.swap(true, Ordering::SeqCst) {
        end_polling(hub, slot, CloseReason::TransportError).await;
        return Refused::BadRequest.into_response();
    }
    struct Posting<'a>(&'a Slot);
    impl Drop for Posting<'_> {
        fn drop(&mut self) {
            self.0.posting.store(false, Ordering::SeqCst);
        }
    }
    let _posting = Posting(slot);
    slot.heard.store(now_ms(), Ordering::Relaxed);
    let max = hub.config().max_message_bytes;
    let bytes = match axum::body::to_bytes(body, max).await {
        Ok(bytes) => bytes,
        Err(_) => {
            end_polling(hub, slot, CloseReason::MessageTooLarge).await;
            return StatusCode::PAYLOAD_TOO_LARGE.into_response();
        }
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        end_polling(hub, slot, CloseReason::TransportError).await;
        return Refused::BadRequest.into_response();
    };
    let mut talk = slot.talk.lock().await;
    if talk.conversation.is_closed() {
        return Refused::UnknownSid.into_response();
    }
    let mut ended = None;
    for packet in text.split(SEPARATOR) {
        let step = match decode(packet) {
            Ok(Packet::Message(message)) => match talk.conversation.receive(hub, message).await {
                Ok(Some(feed)) => {
                    *slot.feed.lock().expect("feed lock") = Some(feed);
                    Ok(())
                }
                Ok(None) => Ok(()),
                Err(reason) => Err(reason),
            },
            Ok(Packet::Pong(_) | Packet::Noop) => Ok(()),
            Ok(Packet::Ping(data)) => {
                talk.conversation.out.push(format!("3{data}").into());
                Ok(())
            }
            Ok(Packet::Close) => Err(CloseReason::ClientDisconnect),
            Ok(Packet::Binary) => Err(CloseReason::TransportError),
            Ok(Packet::Open | Packet::Upgrade) | Err(_) => Err(CloseReason::TransportError),
        };
        if let Err(reason) = step {
            ended = Some(reason);
            break;
        }
    }
    if let Some(reason) = ended {
        talk.conversation.finish(reason);
        if reason == CloseReason::ClientDisconnect {
            drop(talk);
            hub.engine().remove(hub, &slot.sid);
        }
    }
    slot.wake.notify_one();
    let mut response = (StatusCode::OK, "ok").into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    response
}

/// Reads the next text frame within `timeout`.
async fn next_text(socket: &mut WebSocket, timeout: Duration) -> Option<Utf8Bytes> {
    loop {
        match tokio::time::timeout(timeout, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return Some(text),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            _ => return None,
        }
    }
}

/// The polling→WebSocket upgrade: `2probe`/`3probe` on the new socket, the
/// pending poll answered, `5`, then the session moves to the socket.
async fn upgrade(hub: Hub, slot: Arc<Slot>, mut socket: Socket) {
    let probed = match next_text(&mut socket, UPGRADE_TIMEOUT).await {
        Some(text) if text.as_str() == "2probe" => {
            socket.send(Message::Text("3probe".into())).await.is_ok()
        }
        _ => false,
    };
    let upgraded = probed && {
        slot.wake.notify_one();
        matches!(next_text(&mut socket, UPGRADE_TIMEOUT).await, Some(text) if text.as_str() == "5")
    };
    if !upgraded {
        let _ = slot
            .mode
            .compare_exchange(UPGRADING, POLLING, Ordering::SeqCst, Ordering::SeqCst);
        let _ = socket.send(Message::Close(None)).await;
        return;
    }
    if slot
        .mode
        .compare_exchange(UPGRADING, WEBSOCKET, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        // Shut down meanwhile.
        let _ = socket.send(Message::Close(None)).await;
        return;
    }
    // The pending poll (if any) answers and leaves; nothing polls after.
    while slot.polling.load(Ordering::SeqCst) {
        slot.wake.notify_one();
        let _ = tokio::time::timeout(Duration::from_millis(50), slot.idle.notified()).await;
    }
    let (mut conversation, feed) = {
        let mut talk = slot.talk.lock().await;
        let moved = Conversation::moved();
        let conversation = std::mem::replace(&mut talk.conversation, moved);
        let feed = slot.feed.lock().expect("feed lock").take();
        (conversation, feed)
    };
    // The session is the socket's now: the table keeps just its sid.
    {
        let mut sessions = hub.engine().sessions.lock().expect("sessions lock");
        if let Some(entry) = sessions.get_mut(&*slot.sid) {
            *entry = Entry::WebSocket;
        }
    }
    let sid = slot.sid.clone();
    drop(slot);
    run(&hub, socket, &mut conversation, feed).await;
    hub.engine().remove(&hub, &sid);
}

/// Why a WebSocket session's loop ended, and whether the socket can still
/// take a goodbye.
struct Ending {
    reason: CloseReason,
    /// The close code, when the socket still works.
    close: Option<u16>,
}

impl From<CloseReason> for Ending {
    fn from(reason: CloseReason) -> Ending {
        let writable = !matches!(
            reason,
            CloseReason::ClientDisconnect | CloseReason::SlowConsumer
        );
        Ending {
            reason,
            close: writable.then(|| close_code(reason)),
        }
    }
}

/// What woke a WebSocket session.
enum Wake {
    /// The connection's outbox: the kill signal, or a queue or a flush the
    /// hub left to the task.
    Hub,
    Frame(Option<Result<Message, axum::Error>>),
    Ping,
    Due,
    Stop,
}

/// The hub's next word for a connection (never, before it authenticates).
async fn from_hub(conn: &Option<Arc<Conn>>) {
    match conn {
        Some(c) => c.outbox.notified().await,
        None => std::future::pending().await,
    }
}

/// The client's next message: from the task's own socket until the
/// connection authenticates, from its outbox after.
async fn next_frame(
    own: &mut Option<Socket>,
    conn: &Option<Arc<Conn>>,
) -> Option<Result<Message, axum::Error>> {
    match (own, conn) {
        (Some(socket), _) => socket.next().await,
        (None, Some(c)) => c.outbox.next().await,
        (None, None) => None,
    }
}

/// Writes what the conversation queued, and once the connection is in
/// the hub what the hub queued meanwhile, in one flush per round, until
/// the outbox lets the hub write directly again.
async fn write_out(
    own: &mut Option<Socket>,
    conn: &Option<Arc<Conn>>,
    conversation: &mut Conversation,
    timeout: Duration,
) -> Result<(), Ending> {
    let failed = |sent: Result<Result<(), axum::Error>, _>| match sent {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ending {
            reason: CloseReason::TransportError,
            close: None,
        }),
        Err(_) => Err(CloseReason::SlowConsumer.into()),
    };
    match (own.as_mut(), conn) {
        (Some(socket), _) => {
            for frame in std::mem::take(&mut conversation.out) {
                failed(tokio::time::timeout(timeout, socket.send(Message::Text(frame))).await)?;
            }
            Ok(())
        }
        (None, Some(c)) => loop {
            c.outbox.hold();
            conversation.take_queued();
            let frames = std::mem::take(&mut conversation.out)
                .into_iter()
                .map(Message::Text)
                .collect();
            failed(tokio::time::timeout(timeout, c.outbox.write(frames)).await)?;
            if c.outbox.release() {
                return Ok(());
            }
        },
        (None, None) => Ok(()),
    }
}

/// A session over WebSocket, to its end: the one task of the connection.
/// The conversation is borrowed from the caller's future, not moved into
/// this one: moved, it would be held by both for the connection's life.
async fn run(
    hub: &Hub,
    socket: Socket,
    conversation: &mut Conversation,
    mut conn: Option<Arc<Conn>>,
) {
    let config = hub.config();
    let ping_every = config.ping_interval();
    let silence = (ping_every + config.ping_timeout()).as_millis() as i64;
    let max = config.max_message_bytes;
    let write_timeout = config.ping_timeout();
    let mut heard = now_ms();
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let mut stop = hub.stop_signal();
    // The socket is the task's own until the connection is in the hub.
    let mut own = Some(socket);
    if let Some(c) = &conn
        && let Some(socket) = own.take()
    {
        c.outbox.attach(socket);
    }
    let ending: Ending = 'session: loop {
        // Write what is queued.
        if let Err(ending) = write_out(&mut own, &conn, conversation, write_timeout).await {
            break 'session ending;
        }
        if let Some(c) = &conn
            && let Some(reason) = c.killed()
        {
            break reason.into();
        }
        if let Some(reason) = conversation.due() {
            break reason.into();
        }
        let deadline = conversation
            .deadline()
            .unwrap_or_else(|| Instant::now() + ping_every);
        let waiting = !conversation.is_live();
        let wake = tokio::select! {
            biased;
            () = from_hub(&conn) => Wake::Hub,
            _ = stop.wait_for(|s| *s), if waiting => Wake::Stop,
            () = tokio::time::sleep_until(deadline) => Wake::Due,
            _ = ping.tick() => Wake::Ping,
            frame = next_frame(&mut own, &conn) => Wake::Frame(frame),
        };
        let step: Result<(), Ending> = match wake {
            Wake::Hub | Wake::Due => Ok(()),
            Wake::Stop => Err(CloseReason::ServerRestart.into()),
            Wake::Ping => {
                if now_ms() - heard > silence {
                    Err(CloseReason::Timeout.into())
                } else {
                    conversation.out.push(Utf8Bytes::from_static("2"));
                    Ok(())
                }
            }
            Wake::Frame(frame) => {
                heard = now_ms();
                match frame {
                    Some(Ok(Message::Text(text))) if text.len() > max => {
                        Err(CloseReason::MessageTooLarge.into())
                    }
                    Some(Ok(Message::Text(text))) => match decode(text.as_str()) {
                        // Boxed: a message's handling (a database write, a
                        // resume) needs a much larger future than the idle
                        // loop, and the task would otherwise keep room for
                        // it for the connection's whole life.
                        Ok(Packet::Message(m)) => {
                            // Events queue while the answer is made, so
                            // none overtakes it (a resume's replay).
                            if let Some(c) = &conn {
                                c.outbox.hold();
                            }
                            match Box::pin(conversation.receive(hub, m)).await {
                                Ok(Some(c)) => {
                                    // In the hub now: the socket moves to
                                    // the outbox, where the hub writes too
                                    // once the opening frames are out.
                                    if let Some(socket) = own.take() {
                                        c.outbox.attach(socket);
                                    }
                                    conn = Some(c);
                                    Ok(())
                                }
                                Ok(None) => Ok(()),
                                Err(reason) => Err(reason.into()),
                            }
                        }
                        Ok(Packet::Ping(data)) => {
                            conversation.out.push(format!("3{data}").into());
                            Ok(())
                        }
                        Ok(Packet::Pong(_) | Packet::Noop | Packet::Upgrade) => Ok(()),
                        Ok(Packet::Close) => Err(CloseReason::ClientDisconnect.into()),
                        Ok(Packet::Binary | Packet::Open) | Err(_) => {
                            Err(CloseReason::TransportError.into())
                        }
                    },
                    // Binary packets are refused: 1003, unsupported data.
                    Some(Ok(Message::Binary(_))) => Err(Ending {
                        reason: CloseReason::TransportError,
                        close: Some(1003),
                    }),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                    Some(Ok(Message::Close(_))) | None => Err(CloseReason::ClientDisconnect.into()),
                    Some(Err(e)) if crate::ws::too_large(&e) => {
                        Err(CloseReason::MessageTooLarge.into())
                    }
                    Some(Err(_)) => Err(Ending {
                        reason: CloseReason::TransportError,
                        close: None,
                    }),
                }
            }
        };
        if let Err(ending) = step {
            break ending;
        }
    };
    // What is still queued (a refusal, say) goes out before the goodbye.
    conversation.finish(ending.reason);
    // The hub writes to the socket no more.
    let socket = own.or_else(|| conn.as_ref().and_then(|c| c.outbox.detach()));
    let (Some(code), Some(mut socket)) = (ending.close, socket) else {
        return;
    };
    // The goodbye, a close frame, and the client's answer to it: a socket
    // dropped with unread input would reset, and the reset could overtake
    // the close frame.
    let grace = config.ping_timeout();
    let goodbye = async {
        for frame in std::mem::take(&mut conversation.out) {
            socket.send(Message::Text(frame)).await?;
        }
        socket
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: ending.reason.as_str().into(),
            })))
            .await?;
        while let Some(Ok(frame)) = socket.next().await {
            if matches!(frame, Message::Close(_)) {
                break;
            }
        }
        Ok::<(), axum::Error>(())
    };
    let _ = tokio::time::timeout(grace, goodbye).await;
}

/// Frees the long-polling sessions nobody polls any more: whose client has
/// made no request for `ping_interval + ping_timeout`, or that were closed
/// (by the hub, the connect timeout or the token's expiry) while no poll
/// was pending. One task per node.
pub(crate) async fn sweep(hub: Hub) {
    let config = hub.config();
    let silence = (config.ping_interval() + config.ping_timeout()).as_millis() as i64;
    let every = (config.ping_interval().min(config.connect_timeout()) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut stop = hub.stop_signal();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let slots: Vec<Arc<Slot>> = {
            let sessions = hub.engine().sessions.lock().expect("sessions lock");
            sessions
                .values()
                .filter_map(|entry| match entry {
                    Entry::Polling(slot) => Some(slot.clone()),
                    Entry::WebSocket => None,
                })
                .collect()
        };
        let now = now_ms();
        for slot in slots {
            if slot.polling.load(Ordering::SeqCst) || slot.mode.load(Ordering::SeqCst) != POLLING {
                continue;
            }
            let Ok(mut talk) = slot.talk.try_lock() else {
                continue;
            };
            let abandoned = now - slot.heard.load(Ordering::Relaxed) > silence;
            if abandoned {
                talk.conversation.finish(CloseReason::Timeout);
                drop(talk);
                hub.engine().remove(&hub, &slot.sid);
                continue;
            }
            let killed = slot
                .feed
                .lock()
                .expect("feed lock")
                .as_ref()
                .and_then(|c| c.killed());
            if let Some(reason) = killed.or_else(|| talk.conversation.due()) {
                let live = talk.conversation.is_live();
                talk.conversation.finish(reason);
                if !live {
                    // Never authenticated: nothing to say, nothing kept.
                    drop(talk);
                    hub.engine().remove(&hub, &slot.sid);
                }
                // Otherwise the next poll gets the goodbye and the close
                // packet (or the session is abandoned, above).
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_decode() {
        assert_eq!(decode("0"), Ok(Packet::Open));
        assert_eq!(decode("1"), Ok(Packet::Close));
        assert_eq!(decode("2"), Ok(Packet::Ping("")));
        assert_eq!(decode("2probe"), Ok(Packet::Ping("probe")));
        assert_eq!(decode("3"), Ok(Packet::Pong("")));
        assert_eq!(decode(r#"42["x"]"#), Ok(Packet::Message(r#"2["x"]"#)));
        assert_eq!(decode("5"), Ok(Packet::Upgrade));
        assert_eq!(decode("6"), Ok(Packet::Noop));
        assert_eq!(decode("bAQID"), Ok(Packet::Binary));
        assert!(decode("").is_err());
        assert!(decode("9").is_err());
    }

    #[test]
    fn payloads_join_with_the_record_separator() {
        let frames = vec![
            Utf8Bytes::from_static("2"),
            Utf8Bytes::from_static(r#"42["a"]"#),
        ];
        assert_eq!(join(&frames), "2\u{1e}42[\"a\"]");
        assert_eq!(join(&frames[..1]), "2");
        let response = payload(&frames);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; charset=UTF-8"
        );
    }

    #[test]
    fn refusals_are_the_reference_servers() {
        assert_eq!(Refused::UnknownSid as u8, 1);
        assert_eq!(Refused::UnknownSid.message(), "Session ID unknown");
        assert_eq!(Refused::BadRequest as u8, 3);
        let response = Refused::UnknownTransport.into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
}
