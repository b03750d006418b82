//! One connection's life, the same for both transports: `connected`, the
//! optional handshake resume, then client messages answered in the order
//! they arrived and events delivered, until the client leaves or the hub
//! closes it.
//!
//! [`Session`] is the transport-independent part: rooms, subscriptions,
//! resume, `action_confirm`, `seen`/`read`, and what to tell the client when it closes.
//! It does no I/O of its own: everything it has to say is encoded for the
//! connection's [`Wire`] into its outbox, which the transport writes. So
//! one piece of code serves a `/ws` socket, a Socket.IO WebSocket and a
//! Socket.IO long-polling session alike, and the transport decides how and
//! when bytes move: [`WsSession`] here for `/ws`, [`crate::engineio`] for
//! Socket.IO.
//!
//! A `/ws` connection is one task, [`WsSession`]: it owns the socket, reads
//! client messages (rate-limited) and answers them in order, drains the
//! connection's bounded queue (filled by the hub), and pings; the kill
//! signal (slow consumer, rate limit, shutdown) and the token's expiry are
//! checked first on every turn. Every way out ends in
//! [`WsSession::finish`], which tells the client why (contract §3) and
//! closes the socket.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::history::Delivery;
use crate::hub::{Conn, Hub, Registered, now_ms};
use crate::protocol::{
    ActionConfirm, CloseReason, ErrorCode, Refusal, ResumeOutcome, ResumeRequest, may_join,
    subscription_room,
};
use crate::resume;
use crate::socketio;

/// How a connection's frames are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// `/ws`: `{"event", "data"}` text frames.
    Json,
    /// Socket.IO packets in Engine.IO message packets (`42[…]`, `43n[…]`).
    SocketIo,
}

/// How to answer one client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    None,
    /// A Socket.IO ack id.
    SocketIo(u64),
    /// A `/ws` frame's `ack`.
    Ws(u64),
}

impl Reply {
    fn wanted(&self) -> bool {
        !matches!(self, Reply::None)
    }
}

/// A client message, parsed as far as the transport can.
#[derive(Debug)]
pub(crate) struct Inbound {
    pub event: String,
    pub data: Result<Value, Refusal>,
    pub reply: Reply,
}

/// A token bucket: `rate` per second, bursts of `burst`.
#[derive(Debug)]
pub(crate) struct Bucket {
    tokens: f32,
    last: Instant,
    rate: f32,
    burst: f32,
}

impl Bucket {
    pub fn new(rate: u32, burst: u32) -> Bucket {
        Bucket {
            tokens: burst as f32,
            last: Instant::now(),
            rate: rate as f32,
            burst: burst as f32,
        }
    }

    /// Takes a token; false when the connection is over its rate.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f32() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Offsets this connection has been sent, so a replay never repeats one.
/// Bounded: it needs to cover one replay plus the queue.
#[derive(Debug)]
struct Seen {
    order: VecDeque<u64>,
    set: HashSet<u64>,
    cap: usize,
}

impl Seen {
    fn new(cap: usize) -> Seen {
        Seen {
            order: VecDeque::new(),
            set: HashSet::new(),
            cap,
        }
    }

    fn contains(&self, offset: u64) -> bool {
        self.set.contains(&offset)
    }

    fn insert(&mut self, offset: u64) {
        if self.set.insert(offset) {
            self.order.push_back(offset);
            while self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// What reaches a connection from the hub: its event queue and the kill
/// signal. The transport waits on both; [`Session`] does not hold them, so
/// a long-polling session can wait for events in one request while another
/// request hands the session a message.
#[derive(Debug)]
pub(crate) struct Feed {
    pub outbound: mpsc::Receiver<Arc<Delivery>>,
    pub kill: watch::Receiver<Option<CloseReason>>,
}

/// One connection's state on either transport; see the module docs.
#[derive(Debug)]
pub(crate) struct Session {
    hub: Hub,
    pub conn: Arc<Conn>,
    wire: Wire,
    rooms: HashSet<String>,
    auto: usize,
    seen: Seen,
    /// Per room, the offset a resume started from: the client had
    /// everything up to it, so a late live copy is not sent again.
    floors: HashMap<String, u64>,
    /// When the token expires.
    pub expires: tokio::time::Instant,
    watermark: u64,
    /// Frames to write, in order, encoded for the wire.
    pub out: Vec<Utf8Bytes>,
    /// Taken out of the hub already.
    closed: bool,
}

/// A session dropped without [`Session::close`] — its request was cancelled
/// mid-way, say — still leaves the hub.
impl Drop for Session {
    fn drop(&mut self) {
        self.close(CloseReason::TransportError);
    }
}

/// The time a connection authenticated with `exp` (Unix seconds) must close.
fn expiry(exp: u64) -> tokio::time::Instant {
    let left_ms = (exp as i64)
        .saturating_mul(1000)
        .saturating_sub(now_ms())
        .max(0);
    tokio::time::Instant::now() + Duration::from_millis(left_ms as u64)
}

impl Session {
    /// A registered connection's session, and what the hub sends it.
    pub fn new(hub: Hub, registered: Registered, exp: u64, wire: Wire) -> (Session, Feed) {
        let Registered {
            conn,
            outbound,
            watermark,
            rooms,
        } = registered;
        let cap = hub.config().history_max_events + hub.config().outbound_queue + 64;
        let feed = Feed {
            outbound,
            kill: conn.kill_signal(),
        };
        let session = Session {
            auto: rooms.len(),
            rooms: rooms.into_iter().collect(),
            hub,
            conn,
            wire,
            seen: Seen::new(cap),
            floors: HashMap::new(),
            expires: expiry(exp),
            watermark,
            out: Vec::new(),
            closed: false,
        };
        (session, feed)
    }

    /// Why the connection must close now, if it must: the hub's kill
    /// signal, or the token's expiry.
    pub fn due(&self) -> Option<CloseReason> {
        if let Some(reason) = self.conn.killed() {
            return Some(reason);
        }
        (tokio::time::Instant::now() >= self.expires).then_some(CloseReason::TokenExpired)
    }

    /// `connected`, then the handshake resume's replay and `resumed`.
    pub async fn open(&mut self, resume: Option<Value>) {
        let epoch = match self.hub.position().await {
            Ok((epoch, _)) => Value::String(epoch),
            Err(_) => Value::Null,
        };
        let connected = json!({
            "userId": self.conn.principal.user_id.as_str(),
            "role": self.conn.principal.role.as_str(),
            "timestamp": now_ms(),
            "serverId": self.hub.server_id(),
            "offset": self.watermark,
            "epoch": epoch,
        });
        self.emit("connected", &connected);
        if let Some(resume) = resume {
            match ResumeRequest::parse(&resume) {
                Ok(request) => {
                    let outcome = self.resume(request).await;
                    self.emit("resumed", &outcome);
                }
                Err(refusal) => self.refuse(Reply::None, &refusal),
            }
        }
    }

    /// What the client is told as it is closed for `reason`, if anything:
    /// `(event, data)`.
    pub fn notice(&self, reason: CloseReason) -> Option<(&'static str, Value)> {
        let hub = &self.hub;
        match reason {
            CloseReason::ServerRestart | CloseReason::Timeout => Some((
                "disconnected",
                json!({ "reason": reason.as_str(), "reconnectDelay": hub.reconnect_delay() }),
            )),
            CloseReason::RateLimited => Some((
                "error",
                Refusal::new(
                    ErrorCode::RateLimited,
                    format!(
                        "more than {} messages per second",
                        hub.config().rate_limit_per_second
                    ),
                )
                .to_error(),
            )),
            CloseReason::TokenExpired => Some((
                "error",
                Refusal::new(ErrorCode::Unauthorized, "token expired").to_error(),
            )),
            CloseReason::MessageTooLarge => Some((
                "error",
                Refusal::bad_request(format!(
                    "a message may be at most {} bytes",
                    hub.config().max_message_bytes
                ))
                .to_error(),
            )),
            CloseReason::SlowConsumer
            | CloseReason::ClientDisconnect
            | CloseReason::TransportError => None,
        }
    }

    /// Queues the closing notice for `reason`, when the client can still
    /// take one.
    pub fn say_goodbye(&mut self, reason: CloseReason) {
        if let Some((event, data)) = self.notice(reason) {
            self.emit(event, &data);
        }
    }

    /// Takes the connection out of the hub.
    pub fn close(&mut self, reason: CloseReason) {
        if !std::mem::replace(&mut self.closed, true) {
            self.hub.unregister(&self.conn, reason);
        }
    }

    fn skip(&self, d: &Delivery) -> bool {
        self.seen.contains(d.offset)
            || d.rooms
                .iter()
                .any(|r| self.floors.get(r).is_some_and(|f| d.offset <= *f))
    }

    /// Queues a live event, unless the client has it already.
    pub fn deliver(&mut self, d: &Delivery) {
        if !self.skip(d) {
            self.send_delivery(d);
        }
    }

    fn send_delivery(&mut self, d: &Delivery) {
        self.seen.insert(d.offset);
        let frame = match self.wire {
            Wire::Json => d.ws_text.clone(),
            Wire::SocketIo => d.socketio_text(),
        };
        self.push(frame);
    }

    fn push(&mut self, frame: Utf8Bytes) {
        self.out.push(frame);
        self.hub
            .metrics()
            .messages_sent
            .with_label_values(&[self.conn.transport.as_str()])
            .inc();
    }

    /// Queues a server event (`connected`, `error`, `resumed`, …).
    pub fn emit<T: Serialize>(&mut self, event: &str, data: &T) {
        let frame = match self.wire {
            Wire::Json => json!({ "event": event, "data": data }).to_string(),
            Wire::SocketIo => socketio::event_text(event, data),
        };
        self.push(frame.into());
    }

    fn reply<T: Serialize>(&mut self, reply: Reply, data: &T) {
        let frame = match reply {
            Reply::None => return,
            Reply::SocketIo(id) => socketio::ack_text(id, data),
            Reply::Ws(ack) => json!({ "event": "ack", "ack": ack, "data": data }).to_string(),
        };
        self.push(frame.into());
    }

    /// `error {code, message, timestamp}`, and the ack when one was asked for.
    pub fn refuse(&mut self, reply: Reply, refusal: &Refusal) {
        tracing::debug!(conn = self.conn.id, code = refusal.code.as_str(), message = %refusal.message, "client message refused");
        self.emit("error", &refusal.to_error());
        self.reply(reply, &refusal.to_ack());
    }

    /// Answers one client message.
    pub async fn handle(&mut self, message: Inbound) {
        let Inbound { event, data, reply } = message;
        let data = match data {
            Ok(data) => data,
            Err(refusal) => return self.refuse(reply, &refusal),
        };
        // The limits every REST body is held to (no NUL, integers within
        // ±(2^53−1)): a value the database cannot store is refused here,
        // not answered with a server error the client would retry forever.
        if let Err(e) = herald_core::input::check_json(&data) {
            return self.refuse(reply, &Refusal::bad_request(e.to_string()));
        }
        match event.as_str() {
            "subscribe" => match self.subscribe(&data) {
                Ok(room) => self.reply(reply, &json!({ "ok": true, "room": room })),
                Err(refusal) => self.refuse(reply, &refusal),
            },
            "unsubscribe" => match self.unsubscribe(&data) {
                Ok(room) => self.reply(reply, &json!({ "ok": true, "room": room })),
                Err(refusal) => self.refuse(reply, &refusal),
            },
            "action_confirm" => {
                let action = match ActionConfirm::parse(&data) {
                    Ok(action) => action,
                    Err(refusal) => return self.refuse(reply, &refusal),
                };
                match self
                    .hub
                    .actions()
                    .record(&self.conn.principal, &action)
                    .await
                {
                    Ok(ack) => self.reply(reply, &ack),
                    Err(refusal) => self.refuse(reply, &refusal),
                }
            }
            "seen" | "read" => {
                let user = self.conn.principal.user_id.clone();
                let hub = self.hub.clone();
                let store = hub.store();
                match crate::receipts::receipt(&hub, store, &user, &event, &data).await {
                    Ok(ack) => self.reply(reply, &ack),
                    Err(refusal) => self.refuse(reply, &refusal),
                }
            }
            "resume" => {
                let request = match ResumeRequest::parse(&data) {
                    Ok(request) => request,
                    Err(refusal) => return self.refuse(reply, &refusal),
                };
                let outcome = self.resume(request).await;
                if reply.wanted() {
                    self.reply(reply, &outcome)
                } else {
                    self.emit("resumed", &outcome)
                }
            }
            other => {
                let name: String = other.chars().take(64).collect();
                self.refuse(
                    reply,
                    &Refusal::bad_request(format!(
                        "unknown event `{name}`; send subscribe, unsubscribe, action_confirm, seen, read or resume"
                    )),
                )
            }
        }
    }

    fn subscribe(&mut self, request: &Value) -> Result<String, Refusal> {
        let room = subscription_room(&self.conn.principal, request)?;
        self.join(&room)?;
        Ok(room)
    }

    fn join(&mut self, room: &str) -> Result<(), Refusal> {
        if self.rooms.contains(room) {
            return Ok(());
        }
        let max = self.hub.config().max_subscriptions;
        if self.rooms.len() - self.auto >= max {
            return Err(Refusal::bad_request(format!(
                "at most {max} subscriptions per connection"
            )));
        }
        self.hub.join(self.conn.id, room);
        self.rooms.insert(room.to_owned());
        Ok(())
    }

    fn unsubscribe(&mut self, request: &Value) -> Result<Option<String>, Refusal> {
        match subscription_room(&self.conn.principal, request) {
            Ok(room) => {
                if self.rooms.remove(&room) {
                    self.hub.leave(self.conn.id, &room);
                }
                Ok(Some(room))
            }
            // A room the caller may not join is one it is not in.
            Err(refusal) if refusal.code == ErrorCode::Unauthorized => Ok(None),
            Err(refusal) => Err(refusal),
        }
    }

    /// Restores subscriptions, then replays what the client missed in
    /// every room it is in — all of it, in offset order, nothing it was
    /// already sent — or says why not (see [`crate::resume`]).
    async fn resume(&mut self, request: ResumeRequest) -> ResumeOutcome {
        for subscription in &request.subscriptions {
            if let Err(refusal) = self.subscribe(subscription) {
                self.refuse(Reply::None, &refusal);
            }
        }
        let mut refused = Vec::new();
        for room in request.offsets.keys() {
            let joined = self.rooms.contains(room)
                || (may_join(&self.conn.principal, room) && self.join(room).is_ok());
            if !joined {
                refused.push(room.clone());
            }
        }
        let replay =
            match resume::find(&self.hub, &request, &self.rooms, refused, self.watermark).await {
                Ok(replay) => replay,
                Err(not) => return not.outcome(&self.hub, self.conn.id),
            };
        let mut replayed = 0;
        for d in &replay.missed {
            if self.seen.contains(d.offset) {
                continue;
            }
            self.send_delivery(d);
            replayed += 1;
        }
        for (room, offset) in &replay.from {
            let floor = self.floors.entry(room.clone()).or_default();
            *floor = (*floor).max(*offset);
        }
        replay.outcome(&self.hub, self.conn.id, replayed, self.watermark)
    }
}

/// A `/ws` connection: the session and its socket, in one task.
pub(crate) struct WsSession {
    session: Session,
    feed: Feed,
    socket: WebSocket,
    bucket: Bucket,
    /// When the client last sent anything (ms).
    heard: i64,
    /// The last read failed on the hard cap: the socket lingers unread
    /// after the close frame (see [`crate::ws`]).
    linger: bool,
}

impl WsSession {
    pub fn new(hub: Hub, registered: Registered, socket: WebSocket, exp: u64) -> WsSession {
        let bucket = crate::admission::rate_limit(&hub);
        let (session, feed) = Session::new(hub, registered, exp, Wire::Json);
        WsSession {
            session,
            feed,
            socket,
            bucket,
            heard: now_ms(),
            linger: false,
        }
    }

    /// Runs the connection to its end and unregisters it; returns why it ended.
    pub async fn run(mut self, resume: Option<Value>) -> CloseReason {
        let reason = self.serve(resume).await;
        self.session.close(reason);
        self.finish(reason).await;
        reason
    }

    async fn serve(&mut self, resume: Option<Value>) -> CloseReason {
        // Boxed, like a message's handling: the task need not keep room for
        // a resume's futures for the connection's whole life.
        Box::pin(self.session.open(resume)).await;
        if let Err(reason) = self.flush().await {
            return reason;
        }
        let config = self.session.hub.config();
        let ping_every = config.ping_interval();
        let silence = (ping_every + config.ping_timeout()).as_millis() as i64;
        let max = config.max_message_bytes;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        loop {
            if let Some(reason) = *self.feed.kill.borrow_and_update() {
                return reason;
            }
            let step = tokio::select! {
                biased;
                _ = self.feed.kill.changed() => continue,
                () = tokio::time::sleep_until(self.session.expires) => Err(CloseReason::TokenExpired),
                _ = ping.tick() => {
                    if now_ms() - self.heard > silence {
                        Err(CloseReason::Timeout)
                    } else {
                        self.write(Message::Ping(Default::default())).await
                    }
                }
                frame = self.socket.next() => {
                    self.heard = now_ms();
                    match crate::ws::interpret(frame, max) {
                        crate::ws::Read::Message(message) => {
                            if self.bucket.take() {
                                // Boxed: handling needs a much larger future
                                // than the idle loop (see engineio's `run`).
                                Box::pin(self.session.handle(message)).await;
                                Ok(())
                            } else {
                                Err(CloseReason::RateLimited)
                            }
                        }
                        crate::ws::Read::Nothing => Ok(()),
                        crate::ws::Read::End { reason, linger } => {
                            self.linger = linger;
                            Err(reason)
                        }
                    }
                }
                delivery = self.feed.outbound.recv() => match delivery {
                    Some(delivery) => {
                        self.session.deliver(&delivery);
                        Ok(())
                    }
                    None => Err(CloseReason::ClientDisconnect),
                },
            };
            if let Err(reason) = step {
                return reason;
            }
            if let Err(reason) = self.flush().await {
                return reason;
            }
        }
    }

    /// Writes what the session queued.
    async fn flush(&mut self) -> Result<(), CloseReason> {
        for frame in std::mem::take(&mut self.session.out) {
            self.write(Message::Text(frame)).await?;
        }
        Ok(())
    }

    /// Writes one frame, giving up if the hub closes the connection
    /// meanwhile or the client does not take it within the ping timeout.
    async fn write(&mut self, message: Message) -> Result<(), CloseReason> {
        let timeout = self.session.hub.config().ping_timeout();
        tokio::select! {
            biased;
            _ = self.feed.kill.changed() => Err(self.feed.kill.borrow().unwrap_or(CloseReason::ClientDisconnect)),
            sent = tokio::time::timeout(timeout, self.socket.send(message)) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(CloseReason::TransportError),
                Err(_) => Err(CloseReason::SlowConsumer),
            },
        }
    }

    /// Tells the client why it is being closed, closes the socket and
    /// finishes the closing handshake: dropping a socket with unread input
    /// would reset the connection and could lose the close frame on the
    /// client's side. A client that left or stopped reading gets no wait.
    async fn finish(&mut self, reason: CloseReason) {
        if matches!(
            reason,
            CloseReason::ClientDisconnect | CloseReason::TransportError | CloseReason::SlowConsumer
        ) {
            return;
        }
        self.session.out.clear();
        self.session.say_goodbye(reason);
        let close = Message::Close(Some(CloseFrame {
            code: close_code(reason),
            reason: reason.as_str().into(),
        }));
        let grace = self.session.hub.config().ping_timeout();
        let frames = std::mem::take(&mut self.session.out);
        let linger = self.linger;
        let socket = &mut self.socket;
        let goodbye = async {
            for frame in frames {
                socket.send(Message::Text(frame)).await?;
            }
            socket.send(close).await?;
            if linger {
                // The read failed: the socket stays open, unread, long
                // enough for the close frame to arrive before the reset.
                tokio::time::sleep(crate::ws::LINGER).await;
                return Ok(());
            }
            // Input is read only to reach the client's close frame.
            while let Some(Ok(frame)) = socket.next().await {
                if matches!(frame, Message::Close(_)) {
                    break;
                }
            }
            Ok::<(), axum::Error>(())
        };
        let _ = tokio::time::timeout(grace, goodbye).await;
    }
}

/// The WebSocket close code for a connection closed for `reason`.
pub(crate) fn close_code(reason: CloseReason) -> u16 {
    match reason {
        CloseReason::ServerRestart => 1012,
        CloseReason::MessageTooLarge => 1009,
        CloseReason::Timeout => 1001,
        CloseReason::SlowConsumer => 1013,
        CloseReason::ClientDisconnect => 1000,
        _ => 1008,
    }
}
