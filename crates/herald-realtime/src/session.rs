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
//! A `/ws` connection is one task, [`WsSession`]: it puts its socket in
//! the connection's [`Outbox`](crate::outbox::Outbox), where the hub
//! writes events to it directly; the task reads client messages
//! (rate-limited) and answers them in order, writes what the hub had to
//! queue (a slow client's backlog) in one flush, and pings; the kill
//! signal (slow consumer, rate limit, shutdown) and the token's expiry are
//! checked first on every turn. Every way out ends in
//! [`WsSession::finish`], which takes the socket back, tells the client
//! why (contract §3) and closes it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::history::Delivery;
use crate::hub::{Conn, Hub, Registered, now_ms};
use crate::outbox::Socket;
pub(crate) use crate::outbox::Wire;
use crate::protocol::{
    ActionConfirm, CloseReason, ErrorCode, Refusal, ResumeOutcome, ResumeRequest, may_join,
    subscription_room,
};
use crate::resume;
use crate::socketio;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

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

/// One connection's state on either transport; see the module docs.
#[derive(Debug)]
pub(crate) struct Session {
    hub: Hub,
    pub conn: Arc<Conn>,
    wire: Wire,
    /// Its rooms, auto-joined first (a few: a list beats a set here).
    rooms: Vec<String>,
    auto: usize,
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
    /// A registered connection's session. The hub's events for it wait
    /// in (or go straight through) `conn.outbox`.
    pub fn new(hub: Hub, registered: Registered, exp: u64) -> Session {
        let Registered {
            conn,
            watermark,
            rooms,
        } = registered;
        Session {
            auto: rooms.len(),
            rooms,
            wire: conn.outbox.wire(),
            hub,
            conn,
            expires: expiry(exp),
            watermark,
            out: Vec::new(),
            closed: false,
        }
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

    /// The frames to write, taken with their buffer: a connection that
    /// is idle between events keeps none.
    pub fn take_out(&mut self) -> Vec<Utf8Bytes> {
        std::mem::take(&mut self.out)
    }

    /// Takes the connection out of the hub.
    pub fn close(&mut self, reason: CloseReason) {
        if !std::mem::replace(&mut self.closed, true) {
            self.hub.unregister(&self.conn, reason);
        }
    }

    /// Takes the live events the hub queued (those the client does not
    /// have yet) into the frames to write.
    pub fn take_queued(&mut self) {
        for d in self.conn.outbox.drain() {
            self.push(self.wire.frame(&d));
        }
    }

    fn send_delivery(&mut self, d: &Delivery) {
        self.conn.outbox.mark_sent(d.offset);
        self.push(self.wire.frame(d));
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
        if self.rooms.iter().any(|r| r == room) {
            return Ok(());
        }
        let max = self.hub.config().max_subscriptions;
        if self.rooms.len() - self.auto >= max {
            return Err(Refusal::bad_request(format!(
                "at most {max} subscriptions per connection"
            )));
        }
        self.hub.join(self.conn.id, room);
        self.rooms.push(room.to_owned());
        Ok(())
    }

    fn unsubscribe(&mut self, request: &Value) -> Result<Option<String>, Refusal> {
        match subscription_room(&self.conn.principal, request) {
            Ok(room) => {
                if let Some(at) = self.rooms.iter().position(|r| *r == room) {
                    self.rooms.remove(at);
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
            if self.conn.outbox.was_sent(d.offset) {
                continue;
            }
            self.send_delivery(d);
            replayed += 1;
        }
        self.conn.outbox.raise_floors(&replay.from);
        replay.outcome(&self.hub, self.conn.id, replayed, self.watermark)
    }
}

/// A `/ws` connection: the session in one task, its socket in the
/// connection's outbox.
pub(crate) struct WsSession {
    session: Session,
    bucket: Bucket,
    /// When the client last sent anything (ms).
    heard: i64,
    /// The last read failed on the hard cap: the socket lingers unread
    /// after the close frame (see [`crate::ws`]).
    linger: bool,
}

/// Resolves with the reason once the hub asks the connection to close.
pub(crate) async fn kill_signal(conn: &Conn) -> CloseReason {
    loop {
        if let Some(reason) = conn.killed() {
            return reason;
        }
        // A wake-up between the check and the wait is kept as a permit.
        conn.outbox.notified().await;
    }
}

/// Writes `frames` and whatever the hub queued meanwhile, in one flush per
/// round, until the outbox lets the hub write directly again. Gives up if
/// the hub closes the connection meanwhile or the client does not take a
/// round within `timeout`.
pub(crate) async fn write_through(
    session: &mut Session,
    mut extra: Option<Message>,
    timeout: Duration,
) -> Result<(), CloseReason> {
    let conn = session.conn.clone();
    let outbox = &conn.outbox;
    loop {
        outbox.hold();
        session.take_queued();
        let frames: Vec<Message> = extra
            .take()
            .into_iter()
            .chain(session.take_out().into_iter().map(Message::Text))
            .collect();
        tokio::select! {
            biased;
            reason = kill_signal(&conn) => return Err(reason),
            sent = tokio::time::timeout(timeout, outbox.write(frames)) => match sent {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(CloseReason::TransportError),
                Err(_) => return Err(CloseReason::SlowConsumer),
            },
        }
        if outbox.release() {
            return Ok(());
        }
    }
}

impl WsSession {
    pub fn new(hub: Hub, registered: Registered, socket: Socket, exp: u64) -> WsSession {
        let bucket = crate::admission::rate_limit(&hub);
        let session = Session::new(hub, registered, exp);
        session.conn.outbox.attach(socket);
        WsSession {
            session,
            bucket,
            heard: now_ms(),
            linger: false,
        }
    }

    /// Runs the connection to its end and unregisters it; returns why it ended.
    pub async fn run(&mut self, resume: Option<Value>) -> CloseReason {
        let reason = self.serve(resume).await;
        self.session.close(reason);
        // Boxed, like the flushes below: the task keeps room only for its
        // idle loop.
        Box::pin(self.finish(reason)).await;
        reason
    }

    async fn serve(&mut self, resume: Option<Value>) -> CloseReason {
        // Boxed, like a message's handling: the task need not keep room for
        // a resume's futures for the connection's whole life.
        Box::pin(self.session.open(resume)).await;
        if let Err(reason) = self.flush(None).await {
            return reason;
        }
        let config = self.session.hub.config();
        let ping_every = config.ping_interval();
        let silence = (ping_every + config.ping_timeout()).as_millis() as i64;
        let max = config.max_message_bytes;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let conn = self.session.conn.clone();
        loop {
            if let Some(reason) = conn.killed() {
                return reason;
            }
            let mut extra = None;
            let step = tokio::select! {
                biased;
                // The kill signal (checked above), or a queue or a flush
                // the hub left to this task (written below).
                () = conn.outbox.notified() => Ok(()),
                () = tokio::time::sleep_until(self.session.expires) => Err(CloseReason::TokenExpired),
                _ = ping.tick() => {
                    if now_ms() - self.heard > silence {
                        Err(CloseReason::Timeout)
                    } else {
                        extra = Some(Message::Ping(Default::default()));
                        Ok(())
                    }
                }
                frame = conn.outbox.next() => {
                    self.heard = now_ms();
                    match crate::ws::interpret(frame, max) {
                        crate::ws::Read::Message(message) => {
                            if self.bucket.take() {
                                // Events queue while the answer is made, so
                                // none overtakes it (a resume's replay).
                                conn.outbox.hold();
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
            };
            if let Err(reason) = step {
                return reason;
            }
            if let Err(reason) = self.flush(extra).await {
                return reason;
            }
        }
    }

    /// Writes what the session and the hub queued. Boxed: a flush waits
    /// on a write with a timeout, a larger future than the idle loop's,
    /// which the connection's task would otherwise keep room for all its
    /// life.
    async fn flush(&mut self, extra: Option<Message>) -> Result<(), CloseReason> {
        let timeout = self.session.hub.config().ping_timeout();
        Box::pin(write_through(&mut self.session, extra, timeout)).await
    }

    /// Tells the client why it is being closed, closes the socket and
    /// finishes the closing handshake: dropping a socket with unread input
    /// would reset the connection and could lose the close frame on the
    /// client's side. A client that left or stopped reading gets no wait.
    async fn finish(&mut self, reason: CloseReason) {
        // The hub writes to it no more.
        let Some(mut socket) = self.session.conn.outbox.detach() else {
            return;
        };
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
        let socket = &mut socket;
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
