//! One connection's life, the same for both transports: `connected`, the
//! optional handshake resume, then a loop that writes queued events and
//! answers client messages in the order they arrived, until the client
//! leaves or the hub closes it.
//!
//! A session is the only writer to its socket. It drains the connection's
//! bounded queue (filled by the hub) and its inbound queue (filled by the
//! transport's reader, which also enforces the rate limit); the kill
//! signal (slow consumer, rate limit, shutdown) and the token's expiry are
//! checked first on every turn. Every way out ends in [`Session::finish`],
//! which tells the client why (contract §3) and closes the transport.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::SinkExt;
use futures::stream::SplitSink;
use serde::Serialize;
use serde_json::{Value, json};
use socketioxide::extract::{AckSender, SocketRef};
use socketioxide::{SendError, SocketError};
use tokio::sync::{mpsc, watch};

use crate::history::Delivery;
use crate::hub::{Conn, Hub, Registered, now_ms};
use crate::protocol::{
    ActionConfirm, CloseReason, ErrorCode, Refusal, ResumeOutcome, ResumeRequest, may_join,
    subscription_room,
};

/// Where a session writes.
pub(crate) enum Link {
    SocketIo(SocketRef),
    Ws(SplitSink<WebSocket, Message>),
}

/// How to answer one client message.
pub(crate) enum Reply {
    None,
    SocketIo(AckSender),
    Ws(u64),
}

impl Reply {
    fn wanted(&self) -> bool {
        !matches!(self, Reply::None)
    }
}

/// A client message, parsed as far as the transport can. Queued boxed:
/// a queue allocates its first block of slots when the socket connects, so
/// small slots keep an idle connection small.
pub(crate) struct Inbound {
    pub event: String,
    pub data: Result<Value, Refusal>,
    pub reply: Reply,
}

/// A token bucket: `rate` per second, bursts of `burst`.
#[derive(Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    pub fn new(rate: u32, burst: u32) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            last: Instant::now(),
            rate: f64::from(rate),
            burst: f64::from(burst),
        }
    }

    /// Takes a token; false when the connection is over its rate.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
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

/// How long a Socket.IO notice gets to be written before its socket closes.
const SOCKETIO_FLUSH: Duration = Duration::from_millis(200);

/// The second argument of every Socket.IO event: where it sits in the stream.
#[derive(Serialize)]
struct Meta {
    offset: u64,
}

pub(crate) struct Session {
    hub: Hub,
    conn: Arc<Conn>,
    link: Link,
    outbound: mpsc::Receiver<Arc<Delivery>>,
    inbound: mpsc::Receiver<Box<Inbound>>,
    kill: watch::Receiver<Option<CloseReason>>,
    rooms: HashSet<String>,
    auto: usize,
    seen: Seen,
    /// Per room, the offset a resume started from: the client had
    /// everything up to it, so a late live copy is not sent again.
    floors: HashMap<String, u64>,
    expires: tokio::time::Instant,
    /// `/ws` only: when the client last sent anything (ms).
    last_heard: Option<Arc<AtomicI64>>,
    watermark: u64,
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
    pub fn new(
        hub: Hub,
        registered: Registered,
        link: Link,
        inbound: mpsc::Receiver<Box<Inbound>>,
        exp: u64,
        last_heard: Option<Arc<AtomicI64>>,
    ) -> Session {
        let Registered {
            conn,
            outbound,
            watermark,
            rooms,
        } = registered;
        let cap = hub.config().history_max_events + hub.config().outbound_queue + 64;
        Session {
            kill: conn.kill_signal(),
            auto: rooms.len(),
            rooms: rooms.into_iter().collect(),
            hub,
            conn,
            link,
            outbound,
            inbound,
            seen: Seen::new(cap),
            floors: HashMap::new(),
            expires: expiry(exp),
            last_heard,
            watermark,
        }
    }

    /// Runs the connection to its end and unregisters it; returns why it ended.
    pub async fn run(mut self, resume: Option<Value>) -> CloseReason {
        let reason = self.serve(resume).await;
        self.finish(reason).await;
        self.hub.unregister(&self.conn, reason);
        reason
    }

    fn killed(&self) -> Option<CloseReason> {
        *self.kill.borrow()
    }

    async fn serve(&mut self, resume: Option<Value>) -> CloseReason {
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
        if let Err(r) = self.emit("connected", &connected).await {
            return r;
        }
        if let Some(resume) = resume {
            let result = match ResumeRequest::parse(&resume) {
                Ok(request) => self.resume(request).await,
                Err(refusal) => self.refuse(Reply::None, refusal).await.map(|()| None),
            };
            match result {
                Ok(Some(outcome)) => {
                    if let Err(r) = self.emit("resumed", &outcome).await {
                        return r;
                    }
                }
                Ok(None) => {}
                Err(r) => return r,
            }
        }
        let ping_every = self.hub.config().ping_interval();
        let silence = ping_every + self.hub.config().ping_timeout();
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        loop {
            if let Some(reason) = self.killed() {
                return reason;
            }
            let step = tokio::select! {
                biased;
                _ = self.kill.changed() => continue,
                () = tokio::time::sleep_until(self.expires) => Err(CloseReason::TokenExpired),
                _ = ping.tick(), if self.last_heard.is_some() => {
                    let heard = self.last_heard.as_ref().map_or(0, |h| h.load(Ordering::Relaxed));
                    if now_ms() - heard > silence.as_millis() as i64 {
                        Err(CloseReason::Timeout)
                    } else {
                        self.write_ws(Message::Ping(Default::default())).await
                    }
                }
                message = self.inbound.recv() => match message {
                    Some(message) => self.handle(message).await,
                    None => Err(CloseReason::ClientDisconnect),
                },
                delivery = self.outbound.recv() => match delivery {
                    Some(delivery) => self.deliver(&delivery).await,
                    None => Err(CloseReason::ClientDisconnect),
                },
            };
            if let Err(reason) = step {
                return reason;
            }
        }
    }

    /// Tells the client why it is being closed, then closes the transport.
    async fn finish(&mut self, reason: CloseReason) {
        let hub = self.hub.clone();
        let notice = match reason {
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
        };
        // A slow consumer cannot take more; anything else gets a bounded
        // attempt at the notice and a close frame.
        let grace = self.hub.config().ping_timeout();
        match &mut self.link {
            Link::SocketIo(socket) => {
                if let Some((event, data)) = &notice
                    && socket.emit(*event, data).is_ok()
                {
                    // socketioxide closes the engine (dropping what is
                    // still queued) as soon as a closed socket receives
                    // another packet, and it offers no flush: give the
                    // notice a moment to be written first. The inlet
                    // ignores the client meanwhile.
                    tokio::time::sleep(SOCKETIO_FLUSH.min(grace)).await;
                }
                // On restart the engine is closed as a whole afterwards, so
                // clients see a transport close and reconnect by themselves.
                if !matches!(
                    reason,
                    CloseReason::ServerRestart | CloseReason::ClientDisconnect
                ) {
                    let _ = socket.clone().disconnect();
                }
            }
            Link::Ws(sink) => {
                // Nothing more can be written to a client that left, or
                // that stopped reading.
                if matches!(
                    reason,
                    CloseReason::ClientDisconnect
                        | CloseReason::TransportError
                        | CloseReason::SlowConsumer
                ) {
                    return;
                }
                let code: u16 = match reason {
                    CloseReason::ServerRestart => 1012,
                    CloseReason::MessageTooLarge => 1009,
                    CloseReason::Timeout => 1001,
                    CloseReason::SlowConsumer => 1013,
                    _ => 1008,
                };
                let close = async {
                    if let Some((event, data)) = &notice {
                        let frame = json!({ "event": event, "data": data }).to_string();
                        sink.send(Message::Text(frame.into())).await?;
                    }
                    sink.send(Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.as_str().into(),
                    })))
                    .await?;
                    sink.close().await
                };
                let _ = tokio::time::timeout(grace, close).await;
            }
        }
    }

    fn skip(&self, d: &Delivery) -> bool {
        self.seen.contains(d.offset)
            || d.rooms
                .iter()
                .any(|r| self.floors.get(r).is_some_and(|f| d.offset <= *f))
    }

    async fn deliver(&mut self, d: &Delivery) -> Result<(), CloseReason> {
        if self.skip(d) {
            return Ok(());
        }
        self.send_delivery(d).await
    }

    async fn send_delivery(&mut self, d: &Delivery) -> Result<(), CloseReason> {
        self.seen.insert(d.offset);
        match &mut self.link {
            Link::SocketIo(socket) => {
                let sent = socket.emit(&d.event, &(&*d.data, Meta { offset: d.offset }));
                sio_result(sent)?;
            }
            Link::Ws(_) => {
                self.write_ws(Message::Text(d.ws_text.clone())).await?;
            }
        }
        self.count_sent();
        Ok(())
    }

    fn count_sent(&self) {
        self.hub
            .metrics()
            .messages_sent
            .with_label_values(&[self.conn.transport.as_str()])
            .inc();
    }

    /// Writes one `/ws` frame, giving up if the hub closes the connection
    /// meanwhile or the client does not take it within the ping timeout.
    async fn write_ws(&mut self, message: Message) -> Result<(), CloseReason> {
        let Link::Ws(sink) = &mut self.link else {
            return Ok(());
        };
        let timeout = self.hub.config().ping_timeout();
        tokio::select! {
            biased;
            _ = self.kill.changed() => Err(self.kill.borrow().unwrap_or(CloseReason::ClientDisconnect)),
            sent = tokio::time::timeout(timeout, sink.send(message)) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(CloseReason::TransportError),
                Err(_) => Err(CloseReason::SlowConsumer),
            },
        }
    }

    /// Sends a server event (`connected`, `error`, `resumed`, …).
    async fn emit<T: Serialize>(&mut self, event: &str, data: &T) -> Result<(), CloseReason> {
        match &mut self.link {
            Link::SocketIo(socket) => sio_result(socket.emit(event, data))?,
            Link::Ws(_) => {
                let frame = json!({ "event": event, "data": data }).to_string();
                self.write_ws(Message::Text(frame.into())).await?;
            }
        }
        self.count_sent();
        Ok(())
    }

    async fn reply<T: Serialize>(&mut self, reply: Reply, data: &T) -> Result<(), CloseReason> {
        match reply {
            Reply::None => return Ok(()),
            Reply::SocketIo(ack) => sio_result(ack.send(data))?,
            Reply::Ws(ack) => {
                let frame = json!({ "event": "ack", "ack": ack, "data": data }).to_string();
                self.write_ws(Message::Text(frame.into())).await?;
            }
        }
        self.count_sent();
        Ok(())
    }

    /// `error {code, message, timestamp}`, and the ack when one was asked for.
    async fn refuse(&mut self, reply: Reply, refusal: Refusal) -> Result<(), CloseReason> {
        tracing::debug!(conn = self.conn.id, code = refusal.code.as_str(), message = %refusal.message, "client message refused");
        self.emit("error", &refusal.to_error()).await?;
        self.reply(reply, &refusal.to_ack()).await
    }

    async fn handle(&mut self, message: Box<Inbound>) -> Result<(), CloseReason> {
        let Inbound { event, data, reply } = *message;
        let data = match data {
            Ok(data) => data,
            Err(refusal) => return self.refuse(reply, refusal).await,
        };
        match event.as_str() {
            "subscribe" => match self.subscribe(&data) {
                Ok(room) => {
                    self.reply(reply, &json!({ "ok": true, "room": room }))
                        .await
                }
                Err(refusal) => self.refuse(reply, refusal).await,
            },
            "unsubscribe" => match self.unsubscribe(&data) {
                Ok(room) => {
                    self.reply(reply, &json!({ "ok": true, "room": room }))
                        .await
                }
                Err(refusal) => self.refuse(reply, refusal).await,
            },
            "action_confirm" => {
                let action = match ActionConfirm::parse(&data) {
                    Ok(action) => action,
                    Err(refusal) => return self.refuse(reply, refusal).await,
                };
                match self
                    .hub
                    .inner
                    .actions
                    .record(&self.conn.principal, &action)
                    .await
                {
                    Ok(ack) => self.reply(reply, &ack).await,
                    Err(refusal) => self.refuse(reply, refusal).await,
                }
            }
            "resume" => {
                let request = match ResumeRequest::parse(&data) {
                    Ok(request) => request,
                    Err(refusal) => return self.refuse(reply, refusal).await,
                };
                let Some(outcome) = self.resume(request).await? else {
                    return Ok(());
                };
                if reply.wanted() {
                    self.reply(reply, &outcome).await
                } else {
                    self.emit("resumed", &outcome).await
                }
            }
            other => {
                let name: String = other.chars().take(64).collect();
                self.refuse(
                    reply,
                    Refusal::bad_request(format!(
                        "unknown event `{name}`; send subscribe, unsubscribe, action_confirm or resume"
                    )),
                )
                .await
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

    /// The history could not be read (Redis or the database is down).
    fn history_unavailable(&self, e: &crate::Error, epoch: String, head: u64) -> ResumeOutcome {
        tracing::warn!(error = %e, "resume: history unavailable");
        self.not_recovered("history_unavailable", epoch, head, Vec::new())
    }

    fn not_recovered(
        &self,
        reason: &'static str,
        epoch: String,
        head: u64,
        rooms: Vec<String>,
    ) -> ResumeOutcome {
        self.hub
            .metrics()
            .resumes
            .with_label_values(&["not_recovered"])
            .inc();
        tracing::info!(conn = self.conn.id, reason, "resume: not recovered");
        ResumeOutcome {
            recovered: false,
            replayed: 0,
            reason: Some(reason),
            offset: head,
            epoch,
            rooms,
        }
    }

    /// Restores subscriptions, then replays what the client missed in
    /// every room it is in — all of it, in offset order, nothing it was
    /// already sent — or says why not. `None` when the connection closed.
    async fn resume(
        &mut self,
        request: ResumeRequest,
    ) -> Result<Option<ResumeOutcome>, CloseReason> {
        for subscription in &request.subscriptions {
            if let Err(refusal) = self.subscribe(subscription) {
                self.refuse(Reply::None, refusal).await?;
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
        let (epoch, head) = match self.hub.position().await {
            Ok(position) => position,
            Err(e) => {
                return Ok(Some(self.history_unavailable(
                    &e,
                    String::new(),
                    self.watermark,
                )));
            }
        };
        if !refused.is_empty() {
            return Ok(Some(self.not_recovered(
                "unauthorized",
                epoch,
                head,
                refused,
            )));
        }
        let base = match &request.last_event_id {
            Some(id) => match self.hub.offset_of(id).await {
                Ok(Some(offset)) => Some(offset),
                Ok(None) => {
                    return Ok(Some(self.not_recovered(
                        "unknown_event",
                        epoch,
                        head,
                        Vec::new(),
                    )));
                }
                Err(e) => {
                    return Ok(Some(self.history_unavailable(&e, epoch, head)));
                }
            },
            None => request.offset,
        };
        let mut from: Vec<(String, u64)> = self
            .rooms
            .iter()
            .filter_map(|room| {
                request
                    .offsets
                    .get(room)
                    .copied()
                    .or(base)
                    .map(|o| (room.clone(), o))
            })
            .collect();
        from.sort();
        let (epoch, head, missed) = match request.epoch.filter(|e| *e != epoch) {
            // The history changed epoch since the client's offsets: served
            // from the database when only Redis restarts lie between.
            Some(old) => match self.hub.recover_across_epochs(&old, &from).await {
                Ok(Some(recovered)) => recovered,
                Ok(None) => {
                    // Every room the client is in may miss something.
                    let rooms = from.iter().map(|(room, _)| room.clone()).collect();
                    return Ok(Some(self.not_recovered(
                        "epoch_changed",
                        epoch,
                        head,
                        rooms,
                    )));
                }
                Err(e) => {
                    return Ok(Some(self.history_unavailable(&e, epoch, head)));
                }
            },
            None => match self.snapshot(&from, epoch, head).await {
                Ok(found) => found,
                Err(outcome) => return Ok(Some(outcome)),
            },
        };
        let mut replayed = 0;
        for d in &missed {
            if self.seen.contains(d.offset) {
                continue;
            }
            self.send_delivery(d).await?;
            replayed += 1;
        }
        for (room, offset) in from {
            let floor = self.floors.entry(room).or_default();
            *floor = (*floor).max(offset);
        }
        self.hub
            .metrics()
            .resumes
            .with_label_values(&["recovered"])
            .inc();
        tracing::info!(conn = self.conn.id, replayed, "resume: recovered");
        Ok(Some(ResumeOutcome {
            recovered: true,
            replayed,
            reason: None,
            offset: head.max(self.watermark),
            epoch,
            rooms: Vec::new(),
        }))
    }

    /// The events after `from` in the current epoch's history, or the
    /// answer that says why they cannot be had.
    async fn snapshot(
        &self,
        from: &[(String, u64)],
        epoch: String,
        head: u64,
    ) -> Result<(String, u64, Vec<Arc<Delivery>>), ResumeOutcome> {
        let snapshot = match self.hub.snapshot(from).await {
            Ok(snapshot) => snapshot,
            Err(e) => return Err(self.history_unavailable(&e, epoch, head)),
        };
        if snapshot.epoch != epoch {
            let rooms = from.iter().map(|(room, _)| room.clone()).collect();
            return Err(self.not_recovered("epoch_changed", snapshot.epoch, snapshot.head, rooms));
        }
        let lost: Vec<String> = snapshot
            .rooms
            .iter()
            .filter(|(_, events)| events.is_none())
            .map(|(room, _)| room.clone())
            .collect();
        if !lost.is_empty() {
            let too_far = from.iter().any(|(_, o)| *o > snapshot.head);
            let reason = if too_far { "unknown_offset" } else { "too_old" };
            return Err(self.not_recovered(reason, epoch, snapshot.head, lost));
        }
        let mut missed: Vec<Arc<Delivery>> = snapshot
            .rooms
            .into_iter()
            .flat_map(|(_, events)| events.unwrap_or_default())
            .collect();
        missed.sort_by_key(|d| d.offset);
        missed.dedup_by_key(|d| d.offset);
        Ok((epoch, snapshot.head, missed))
    }
}

fn sio_result(sent: Result<(), SendError>) -> Result<(), CloseReason> {
    match sent {
        Ok(()) => Ok(()),
        Err(SendError::Socket(SocketError::InternalChannelFull)) => Err(CloseReason::SlowConsumer),
        Err(SendError::Socket(SocketError::Closed)) => Err(CloseReason::ClientDisconnect),
        Err(e) => {
            tracing::error!(error = %e, "socket.io message did not serialise");
            Ok(())
        }
    }
}
